//! Text processing between an OpenAI request and token ids, and between generated ids and the response.
//!
//! The output parsers ([`reasoning`], [`tool_call`], [`tool_choice`], [`grounding`]) use only `core` and `alloc`,
//! so they build without the `std` feature, as the engine core does. The tokenizer, the chat template and the
//! incremental detokenizer need files or the `tokenizers` crate and sit behind `std`.
pub mod grounding;
pub mod pyjson;
pub mod reasoning;
mod tags;
pub mod tool_call;
pub mod tool_choice;

#[cfg(feature = "std")]
mod detokenizer;
#[cfg(feature = "std")]
pub mod template;
#[cfg(feature = "std")]
mod tokenizer;

#[cfg(feature = "std")]
pub use detokenizer::{Detokenizer, SpecialTokens};
pub use reasoning::{ReasoningDelta, ReasoningOptions, ReasoningOutput, ReasoningParser};
#[cfg(feature = "std")]
pub use template::{ChatTemplate, RenderOptions, TemplateError};
#[cfg(feature = "std")]
pub use tokenizer::Tokenizer;
pub use tool_call::{ParsedToolCalls, ToolCall, ToolCallDelta, ToolCallParser, ToolEvent, ToolSchemas};
pub use tool_choice::{ToolChoice, ToolChoiceError};
