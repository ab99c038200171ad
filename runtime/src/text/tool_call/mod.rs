//! The `glm45` tool-call parser: GLM's XML-ish calls in the content stream become OpenAI `tool_calls`.
//!
//! ```text
//! <tool_call>get_weather
//! <arg_key>city</arg_key>
//! <arg_value>北京</arg_value>
//! </tool_call>
//! ```
//!
//! Newlines (or a literal `\n`) between the parts are optional, several blocks may follow each other (parallel
//! calls), and text may precede them. Values are typed by the request's JSON schema ([`schema`]); `arguments` is
//! the JSON text Python's `json.dumps(args, ensure_ascii=False)` would give, as SGLang returns it.
//!
//! Streaming and non-streaming share one state machine ([`ToolCallParser`]), so the streamed argument fragments
//! concatenate to exactly the non-streaming `arguments`. Whitespace between text and a block, and between blocks,
//! is dropped (it only separates them); every other byte is either content or part of a call.
mod parser;
pub mod schema;

use alloc::string::String;
use alloc::vec::Vec;

pub use parser::ToolCallParser;
pub use schema::{ParamTypes, ToolSchemas};

pub const TOOL_CALL_START: &str = "<tool_call>";
pub const TOOL_CALL_END: &str = "</tool_call>";
pub const ARG_KEY_START: &str = "<arg_key>";
pub const ARG_KEY_END: &str = "</arg_key>";
pub const ARG_VALUE_START: &str = "<arg_value>";
pub const ARG_VALUE_END: &str = "</arg_value>";

/// One parsed call, as `message.tool_calls[i]` of a non-streaming response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// 0-based ordinal of the call in the response.
    pub index: usize,
    /// `call_` and 24 hex digits, derived from the parser's seed.
    pub id: String,
    pub name: String,
    /// A JSON object, as text.
    pub arguments: String,
}

impl ToolCall {
    /// The OpenAI shape: `{"index", "id", "type": "function", "function": {"name", "arguments"}}`.
    pub fn to_openai(&self) -> serde_json::Value {
        serde_json::json!({
            "index": self.index,
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        })
    }
}

/// One streamed piece of a call, as `delta.tool_calls[0]` of a chunk. The first delta of each call carries `id`
/// and `name` with empty `arguments`; the following ones carry only argument fragments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCallDelta {
    pub index: usize,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

impl ToolCallDelta {
    /// The OpenAI chunk shape; `id` and `name` are omitted (not null) when absent, which all SDKs accumulate.
    pub fn to_openai(&self) -> serde_json::Value {
        let mut function = serde_json::Map::new();
        if let Some(name) = &self.name {
            function.insert("name".into(), name.clone().into());
        }
        function.insert("arguments".into(), self.arguments.clone().into());
        let mut call = serde_json::Map::new();
        call.insert("index".into(), self.index.into());
        if let Some(id) = &self.id {
            call.insert("id".into(), id.clone().into());
            call.insert("type".into(), "function".into());
        }
        call.insert("function".into(), function.into());
        call.into()
    }
}

/// What the parser releases, in output order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolEvent {
    Content(String),
    Call(ToolCallDelta),
}

/// The non-streaming result: the content and the complete, well-formed calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedToolCalls {
    pub content: String,
    pub calls: Vec<ToolCall>,
}

/// `finish_reason` once calls were returned: a turn that stopped normally after calls reports `tool_calls`;
/// `length` and the others are kept, as SGLang does.
pub fn finish_reason(base: &str, has_tool_calls: bool) -> &str {
    if has_tool_calls && base == "stop" {
        "tool_calls"
    } else {
        base
    }
}
