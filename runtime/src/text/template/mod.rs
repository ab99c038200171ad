//! Chat templates: the checkpoint's own Jinja template, rendered as transformers' `apply_chat_template` does.
//!
//! The prompt must match transformers token for token, so this reproduces what transformers sets up around Jinja2:
//! `trim_blocks` and `lstrip_blocks` on, `keep_trailing_newline` off; a `tojson` filter that is Python's
//! `json.dumps` (non-ASCII kept unless `ensure_ascii=True`, `", "`/`": "` separators, key order preserved);
//! `raise_exception`, `strftime_now`, loop controls, `namespace`; Python's `str()` for printed values; Python
//! str/dict methods through minijinja-contrib's pycompat. Before rendering it applies transformers' input
//! normalisation: keys whose value is null are dropped from each message (so `content: null` reads as absent),
//! and the reasoning aliases (`reasoning_content`, `thinking`, `reasoning`) are filled from whichever is set.
//! The template receives `messages`, `tools`, `documents`, `add_generation_prompt`, the tokenizer's special tokens
//! (`eos_token`, ...) and every `chat_template_kwargs` entry (`enable_thinking`, ...).
//!
//! OpenAI wire messages go through [`to_template_messages`] first.
mod openai;
mod python;
mod strftime;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use minijinja::value::{Kwargs, Value as JValue};
use minijinja::{Environment, Error as JError, ErrorKind};
use serde_json::{Map, Value};

pub use openai::to_template_messages;
pub use strftime::strftime;

use crate::text::pyjson;

const TEMPLATE_NAME: &str = "chat_template";
/// Marks errors raised by the template itself, so they reach the client as the template's message.
const RAISE_PREFIX: &str = "raise_exception: ";
/// transformers' marker for `continue_final_message`: appended to the final message, cut from the output.
const CONTINUE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";
/// The special-token attributes transformers passes to templates.
const SPECIAL_TOKEN_KEYS: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];
/// `clock` value meaning "use the system time".
const SYSTEM_TIME: i64 = i64::MIN;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{0}: no chat_template.jinja, and no chat_template in tokenizer_config.json")]
    Missing(PathBuf),
    #[error("chat template does not compile: {0}")]
    Syntax(String),
    #[error("chat template failed: {0}")]
    Render(String),
    /// The template called `raise_exception(message)`; a client error, typically.
    #[error("{0}")]
    Raised(String),
    #[error("messages[{index}]: {reason}")]
    InvalidMessage { index: usize, reason: String },
    #[error("{0}")]
    InvalidRequest(String),
}

/// Everything besides `messages` that `apply_chat_template` takes.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// OpenAI `tools` entries, passed as they are (`None`: the template sees `tools` as None).
    pub tools: Option<Vec<Value>>,
    pub documents: Option<Vec<Value>>,
    pub add_generation_prompt: bool,
    /// Leave the final (assistant) message open for the model to continue; excludes `add_generation_prompt`.
    pub continue_final_message: bool,
    /// `chat_template_kwargs`: extra template variables (`enable_thinking`, ...); they override special tokens.
    pub kwargs: Map<String, Value>,
}

/// A compiled chat template with the tokenizer's special tokens.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    special_tokens: Map<String, Value>,
    clock: Arc<AtomicI64>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("special_tokens", &self.special_tokens).finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The template of a checkpoint directory: `chat_template.jinja`, else `chat_template` in
    /// `tokenizer_config.json` (a string, or a list of named templates of which `default` is taken). Special tokens
    /// come from `tokenizer_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, TemplateError> {
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = if config_path.exists() {
            let text = read(&config_path)?;
            serde_json::from_str(&text).map_err(|source| TemplateError::Json { path: config_path.clone(), source })?
        } else {
            Value::Null
        };
        let jinja_path = dir.join("chat_template.jinja");
        let source = if jinja_path.exists() {
            read(&jinja_path)?
        } else {
            match config.get("chat_template") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(named)) => named
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template").and_then(Value::as_str))
                    .ok_or_else(|| TemplateError::Missing(dir.into()))?
                    .into(),
                _ => return Err(TemplateError::Missing(dir.into())),
            }
        };
        let mut special = Map::new();
        for key in SPECIAL_TOKEN_KEYS {
            // Either "<tok>" or an AddedToken object {"content": "<tok>", ...}.
            let token = match config.get(key) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(obj @ Value::Object(_)) => obj.get("content").and_then(Value::as_str).map(String::from),
                _ => None,
            };
            if let Some(token) = token {
                special.insert(key.into(), token.into());
            }
        }
        Self::new(source, special)
    }

    /// Compiles `source`; `special_tokens` become template variables (`{"eos_token": "<|endoftext|>"}`).
    pub fn new(source: impl Into<String>, special_tokens: Map<String, Value>) -> Result<Self, TemplateError> {
        let source = source.into();
        let clock = Arc::new(AtomicI64::new(SYSTEM_TIME));
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| TemplateError::Syntax(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(|out, _state, value| {
            let mut text = String::new();
            python::py_str(&mut text, value);
            out.write_str(&text).map_err(|_| JError::new(ErrorKind::WriteFailure, "output failed"))
        });
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", |message: String| -> Result<JValue, JError> {
            Err(JError::new(ErrorKind::InvalidOperation, format!("{RAISE_PREFIX}{message}")))
        });
        let now = Arc::clone(&clock);
        env.add_function("strftime_now", move |format: String| -> String {
            let fixed = now.load(Ordering::Relaxed);
            let secs = if fixed == SYSTEM_TIME { unix_now() } else { fixed };
            strftime(&format, secs)
        });
        env.add_template_owned(TEMPLATE_NAME, source.clone()).map_err(|e| TemplateError::Syntax(describe(&e)))?;
        Ok(ChatTemplate { env, source, special_tokens, clock })
    }

    /// Pins `strftime_now` to a Unix time (tests, reproducible prompts); `None` returns to the system clock.
    pub fn set_fixed_time(&self, unix_seconds: Option<i64>) {
        self.clock.store(unix_seconds.unwrap_or(SYSTEM_TIME), Ordering::Relaxed);
    }

    /// The special tokens passed to the template.
    pub fn special_tokens(&self) -> &Map<String, Value> {
        &self.special_tokens
    }

    /// Renders template-format `messages` (see [`to_template_messages`] for OpenAI's format).
    pub fn render(&self, messages: &[Value], opts: &RenderOptions) -> Result<String, TemplateError> {
        if messages.is_empty() {
            return Err(TemplateError::InvalidRequest(
                "Cannot apply chat template to an empty conversation. Provide at least one message.".into(),
            ));
        }
        if opts.continue_final_message && opts.add_generation_prompt {
            return Err(TemplateError::InvalidRequest(
                "continue_final_message and add_generation_prompt are not compatible.".into(),
            ));
        }
        let mut chat = normalise_messages(messages)?;
        let continued = if opts.continue_final_message { Some(self.mark_final_message(&mut chat)?) } else { None };

        let mut ctx = self.special_tokens.clone();
        for (k, v) in &opts.kwargs {
            ctx.insert(k.clone(), v.clone());
        }
        ctx.insert("messages".into(), Value::Array(chat));
        ctx.insert("tools".into(), opts.tools.clone().map_or(Value::Null, Value::Array));
        ctx.insert("documents".into(), opts.documents.clone().map_or(Value::Null, Value::Array));
        ctx.insert("add_generation_prompt".into(), opts.add_generation_prompt.into());

        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| TemplateError::Syntax(describe(&e)))?;
        let rendered = template.render(JValue::from(minijinja::value::Serde(&ctx))).map_err(|e| match e.detail() {
            Some(d) if d.starts_with(RAISE_PREFIX) => TemplateError::Raised(d[RAISE_PREFIX.len()..].into()),
            _ => TemplateError::Render(describe(&e)),
        })?;
        match continued {
            Some(final_text) => cut_at_continue_tag(rendered, &final_text),
            None => Ok(rendered),
        }
    }

    /// transformers' `continue_final_message`: tags the final message's content (or its last text part) so the
    /// output can be cut right after it. Returns the untagged text, which must appear in the output.
    fn mark_final_message(&self, chat: &mut [Value]) -> Result<String, TemplateError> {
        let err = |why: &str| TemplateError::InvalidRequest(format!("continue_final_message is set but {why}"));
        let Some(Value::Object(last)) = chat.last_mut() else { return Err(err("the conversation is empty")) };
        if !self.source.contains("content") {
            return Err(err("the chat template does not read message content"));
        }
        match last.get_mut("content") {
            Some(Value::String(s)) => {
                let original = s.clone();
                s.push_str(CONTINUE_TAG);
                Ok(original)
            }
            Some(Value::Array(parts)) => {
                for part in parts.iter_mut().rev() {
                    if let Some(Value::String(text)) = part.get_mut("text") {
                        let original = text.clone();
                        text.push_str(CONTINUE_TAG);
                        return Ok(original);
                    }
                }
                Err(err("the final message has no text to continue"))
            }
            _ => Err(err("the final message has no content to continue")),
        }
    }
}

fn cut_at_continue_tag(rendered: String, final_text: &str) -> Result<String, TemplateError> {
    let tag = CONTINUE_TAG.trim();
    if !rendered.contains(final_text.trim()) {
        return Err(TemplateError::InvalidRequest(
            "continue_final_message is set but the final message does not appear in the rendered chat".into(),
        ));
    }
    let Some(at) = rendered.rfind(tag) else {
        return Err(TemplateError::InvalidRequest(
            "continue_final_message is set but the template dropped the final message's end".into(),
        ));
    };
    if rendered[at..].starts_with(CONTINUE_TAG) {
        Ok(rendered[..at].to_string())
    } else {
        Ok(rendered[..at].trim_end().to_string())
    }
}

/// transformers' normalisation: drop null-valued keys, then fill the reasoning aliases
/// (`{"thinking": r, **message, "reasoning_content": r}` where `r` is the first non-null of `reasoning_content`,
/// `thinking`, `reasoning`).
fn normalise_messages(messages: &[Value]) -> Result<Vec<Value>, TemplateError> {
    const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];
    messages
        .iter()
        .enumerate()
        .map(|(index, m)| {
            let Value::Object(fields) = m else {
                return Err(TemplateError::InvalidMessage { index, reason: "a message must be an object".into() });
            };
            let fields: Map<String, Value> =
                fields.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect();
            let reasoning = REASONING_FIELDS.iter().find_map(|k| fields.get(*k)).cloned();
            let Some(reasoning) = reasoning else { return Ok(Value::Object(fields)) };
            let mut out = Map::new();
            out.insert("thinking".into(), reasoning.clone());
            for (k, v) in fields {
                out.insert(k, v);
            }
            out.insert("reasoning_content".into(), reasoning);
            Ok(Value::Object(out))
        })
        .collect()
}

/// Python's `json.dumps` with transformers' `tojson` signature: `tojson(ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`.
fn tojson(value: &JValue, ensure_ascii: Option<bool>, kwargs: Kwargs) -> Result<JValue, JError> {
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.or(ensure_ascii).unwrap_or(false);
    let indent: Option<JValue> = kwargs.get("indent")?;
    let separators: Option<JValue> = kwargs.get("separators")?;
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => Some(" ".repeat(usize::try_from(v)?)),
        },
    };
    let mut opts = pyjson::DumpOptions { ensure_ascii, indent, sort_keys, ..pyjson::DumpOptions::python(ensure_ascii) };
    if opts.indent.is_some() {
        opts.item_separator = ",".into();
    }
    if let Some(seps) = separators.filter(|s| !s.is_none()) {
        let parts: Vec<String> =
            seps.try_iter()?.map(|s| s.as_str().map(String::from)).collect::<Option<_>>().unwrap_or_default();
        let [item, key] = <[String; 2]>::try_from(parts)
            .map_err(|_| JError::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings"))?;
        opts.item_separator = item;
        opts.key_separator = key;
    }
    let json =
        serde_json::to_value(value).map_err(|e| JError::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(JValue::from_safe_string(pyjson::dumps(&json, &opts)))
}

fn describe(e: &JError) -> String {
    match (e.detail(), e.line()) {
        (Some(d), Some(line)) => format!("{} (line {line})", d),
        (Some(d), None) => d.to_string(),
        _ => e.to_string(),
    }
}

fn read(path: &Path) -> Result<String, TemplateError> {
    std::fs::read_to_string(path).map_err(|source| TemplateError::Io { path: path.into(), source })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(src: &str, messages: Value, opts: RenderOptions) -> Result<String, TemplateError> {
        let t = ChatTemplate::new(src, Map::new())?;
        t.set_fixed_time(Some(1_709_211_909));
        t.render(messages.as_array().unwrap(), &opts)
    }

    #[test]
    fn python_compatible_builtins() {
        let msgs = json!([{"role": "user", "content": "hi", "x": null, "data": {"b": "é", "a": [1, 2.5, true, null]}}]);
        let src = "{{ messages[0].data | tojson }}|{{ messages[0].data | tojson(ensure_ascii=True) }}|\
                   {{ messages[0].data | tojson(indent=2, sort_keys=True) }}|{{ messages[0].x is defined }}|\
                   {{ none }}|{{ messages[0].data.a }}|{{ strftime_now('%d %b %Y') }}|{{ 'A,B'.split(',') }}";
        let out = render(src, msgs, RenderOptions::default()).unwrap();
        assert_eq!(
            out,
            "{\"b\": \"é\", \"a\": [1, 2.5, true, null]}|{\"b\": \"\\u00e9\", \"a\": [1, 2.5, true, null]}|\
             {\n  \"a\": [\n    1,\n    2.5,\n    true,\n    null\n  ],\n  \"b\": \"é\"\n}|False|None|[1, 2.5, True, None]|\
             29 Feb 2024|['A', 'B']"
        );
    }

    #[test]
    fn raise_exception_and_errors() {
        let err =
            render("{{ raise_exception('no system role') }}", json!([{"role": "user"}]), RenderOptions::default());
        assert!(matches!(err, Err(TemplateError::Raised(m)) if m == "no system role"));
        assert!(matches!(ChatTemplate::new("{% if %}", Map::new()), Err(TemplateError::Syntax(_))));
        assert!(matches!(render("x", json!([]), RenderOptions::default()), Err(TemplateError::InvalidRequest(_))));
    }

    #[test]
    fn reasoning_aliases_and_continue() {
        let src = "{% for m in messages %}{{ m.role }}:{{ m.reasoning_content }}|{{ m.content }}\n{% endfor %}";
        let msgs = json!([{"role": "assistant", "reasoning": "r1", "content": "partial answer"}]);
        let opts = RenderOptions { continue_final_message: true, ..RenderOptions::default() };
        assert_eq!(render(src, msgs, opts).unwrap(), "assistant:r1|partial answer");
    }

    #[test]
    fn kwargs_reach_the_template() {
        let mut kwargs = Map::new();
        kwargs.insert("enable_thinking".into(), false.into());
        let opts = RenderOptions { kwargs, add_generation_prompt: true, ..RenderOptions::default() };
        let src = "{% if add_generation_prompt %}G{% endif %}{{ enable_thinking }}{{ tools }}";
        assert_eq!(render(src, json!([{"role": "user", "content": "x"}]), opts).unwrap(), "GFalseNone");
    }
}
