//! The `glm45` reasoning parser: splits generated text into `reasoning_content` and `content`.
//!
//! GLM-4.5V/4.6V think inside `<think>…</think>`. With thinking on, the template leaves the turn open after
//! `<|assistant|>\n` and the model writes `<think>` itself, but a request may also start mid-thought (the tag came
//! from the prompt, or the model skipped it), so the parser *starts* in reasoning whenever thinking is on, as
//! SGLang's forced `Glm45Detector` does. A `<tool_call>` also ends reasoning: the model sometimes calls a tool
//! without closing its thought, and the call must reach the tool parser as content.
//!
//! One state machine serves both the streaming and the non-streaming API ([`ReasoningParser::parse`] is `push` of
//! the whole text then `finish`), so both give the same split for any chunking of the output. Bytes that could
//! still turn into a tag are held back until the next delta decides.
use alloc::string::String;

use super::tags::{find_first, is_strict_prefix, partial_tag_len};

pub const THINK_START: &str = "<think>";
pub const THINK_END: &str = "</think>";
pub const TOOL_CALL_START: &str = "<tool_call>";

/// Per-request settings, as derived from the request by [`ReasoningOptions::from_request`] or set directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReasoningOptions {
    /// Thinking is on for this request (the default): output is reasoning until `</think>` or `<tool_call>`, even
    /// without an opening `<think>`. When off, output is content unless it *begins* with `<think>`.
    pub thinking: bool,
    /// `separate_reasoning` (default true). When false nothing is parsed: all text, tags included, is content.
    pub separate_reasoning: bool,
    /// `stream_reasoning` (default true). When false, reasoning is held back and released in one piece when it ends.
    pub stream_reasoning: bool,
}

impl Default for ReasoningOptions {
    fn default() -> Self {
        ReasoningOptions { thinking: true, separate_reasoning: true, stream_reasoning: true }
    }
}

impl ReasoningOptions {
    /// Whether a request has thinking on, by SGLang's rules: off when `chat_template_kwargs.enable_thinking` or
    /// `.thinking` is exactly `false`, or when `reasoning_effort` is `"none"` and neither key is set; on otherwise.
    pub fn thinking_enabled(chat_template_kwargs: Option<&serde_json::Value>, reasoning_effort: Option<&str>) -> bool {
        let explicit = chat_template_kwargs.and_then(|kw| {
            let get = |k: &str| kw.get(k).and_then(serde_json::Value::as_bool);
            match (get("enable_thinking"), get("thinking")) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), _) | (_, Some(true)) => Some(true),
                _ => None,
            }
        });
        explicit.unwrap_or(reasoning_effort != Some("none"))
    }

    pub fn from_request(
        chat_template_kwargs: Option<&serde_json::Value>,
        reasoning_effort: Option<&str>,
        separate_reasoning: Option<bool>,
        stream_reasoning: Option<bool>,
    ) -> Self {
        ReasoningOptions {
            thinking: Self::thinking_enabled(chat_template_kwargs, reasoning_effort),
            separate_reasoning: separate_reasoning.unwrap_or(true),
            stream_reasoning: stream_reasoning.unwrap_or(true),
        }
    }
}

/// What one `push` or `finish` releases. Reasoning text always precedes content text in the output, so a delta that
/// carries both is sent as a reasoning chunk followed by a content chunk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReasoningDelta {
    pub reasoning: String,
    pub content: String,
}

impl ReasoningDelta {
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.content.is_empty()
    }
}

/// The non-streaming result. `reasoning` is `None` when there was none, as `message.reasoning_content` is null then.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReasoningOutput {
    pub reasoning: Option<String>,
    pub content: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Thinking off, nothing decided yet: the output may still open with `<think>`.
    Undecided,
    /// In reasoning before any non-whitespace: a `<think>` here is the model's own opening tag and is dropped.
    ReasoningStart,
    Reasoning,
    Content,
    /// `separate_reasoning: false`.
    Passthrough,
}

/// Streaming reasoning/content splitter for one choice of one request.
#[derive(Clone, Debug)]
pub struct ReasoningParser {
    opts: ReasoningOptions,
    state: State,
    /// Input not yet released: a possible partial tag, or (in `Undecided`) the possible start of `<think>`.
    held: String,
    /// Reasoning withheld because `stream_reasoning` is off.
    unsent_reasoning: String,
    /// All reasoning so far, kept for [`finish`](Self::finish)'s promotion to content.
    all_reasoning: String,
    content_seen: bool,
    reasoning_ended: bool,
}

impl ReasoningParser {
    pub fn new(opts: ReasoningOptions) -> Self {
        let state = match (opts.separate_reasoning, opts.thinking) {
            (false, _) => State::Passthrough,
            (true, true) => State::ReasoningStart,
            (true, false) => State::Undecided,
        };
        ReasoningParser {
            opts,
            state,
            held: String::new(),
            unsent_reasoning: String::new(),
            all_reasoning: String::new(),
            content_seen: false,
            reasoning_ended: false,
        }
    }

    /// Whether the parser is currently inside reasoning (e.g. for a thinking budget or for grammar activation).
    pub fn in_reasoning(&self) -> bool {
        matches!(self.state, State::ReasoningStart | State::Reasoning)
    }

    /// Whether reasoning was closed by `</think>` or interrupted by `<tool_call>`.
    pub fn reasoning_ended(&self) -> bool {
        self.reasoning_ended
    }

    /// Feed the next piece of decoded text.
    pub fn push(&mut self, text: &str) -> ReasoningDelta {
        let mut out = ReasoningDelta::default();
        self.held.push_str(text);
        self.advance(&mut out);
        out
    }

    /// End of output: release whatever was held. With `promote_unterminated`, an answer that never left reasoning
    /// (no `</think>`, no `<tool_call>`) and produced no content is returned as content instead: the model skipped
    /// thinking and wrote its answer straight away (sglang#37645). The server should ask for this when generation
    /// stopped on EOS/stop rather than on the length limit. A streaming client has then already seen that text as
    /// reasoning deltas; the final delta repeats it as content.
    pub fn finish(&mut self, promote_unterminated: bool) -> ReasoningDelta {
        let mut out = ReasoningDelta::default();
        let held = core::mem::take(&mut self.held);
        match self.state {
            State::Undecided | State::Content | State::Passthrough => self.emit_content(&mut out, &held),
            State::ReasoningStart | State::Reasoning => {
                self.emit_reasoning(&mut out, &held);
                self.flush_unsent(&mut out);
                if promote_unterminated && !self.content_seen {
                    out.content = core::mem::take(&mut self.all_reasoning);
                    self.content_seen = !out.content.is_empty();
                }
            }
        }
        self.state = State::Content;
        out
    }

    /// Non-streaming split of a complete output.
    pub fn parse(opts: ReasoningOptions, text: &str, promote_unterminated: bool) -> ReasoningOutput {
        let mut p = ReasoningParser::new(opts);
        let mut first = p.push(text);
        let was_reasoning = p.in_reasoning();
        let last = p.finish(promote_unterminated);
        let promoted = was_reasoning && promote_unterminated && !last.content.is_empty() && first.content.is_empty();
        if promoted {
            return ReasoningOutput { reasoning: None, content: last.content };
        }
        first.reasoning.push_str(&last.reasoning);
        first.content.push_str(&last.content);
        ReasoningOutput {
            reasoning: if first.reasoning.is_empty() { None } else { Some(first.reasoning) },
            content: first.content,
        }
    }

    fn advance(&mut self, out: &mut ReasoningDelta) {
        loop {
            match self.state {
                State::Passthrough | State::Content => {
                    let held = core::mem::take(&mut self.held);
                    self.emit_content(out, &held);
                    return;
                }
                State::Undecided => {
                    if self.held.starts_with(THINK_START) {
                        self.held.drain(..THINK_START.len());
                        self.state = State::Reasoning;
                    } else if is_strict_prefix(&self.held, THINK_START) {
                        return;
                    } else {
                        self.state = State::Content;
                    }
                }
                State::ReasoningStart => {
                    // Leading whitespace is reasoning either way; only the first non-blank text decides whether
                    // there is an opening tag to drop.
                    let blank = self.held.len() - self.held.trim_start().len();
                    let ws: String = self.held.drain(..blank).collect();
                    self.emit_reasoning(out, &ws);
                    if self.held.starts_with(THINK_START) {
                        self.held.drain(..THINK_START.len());
                        self.state = State::Reasoning;
                    } else if is_strict_prefix(&self.held, THINK_START) {
                        return;
                    } else {
                        self.state = State::Reasoning;
                    }
                }
                State::Reasoning => {
                    match find_first(&self.held, &[THINK_END, TOOL_CALL_START]) {
                        Some((pos, tag)) => {
                            let before: String = self.held.drain(..pos).collect();
                            self.emit_reasoning(out, &before);
                            if tag == 0 {
                                self.held.drain(..THINK_END.len());
                            }
                            // A `<tool_call>` stays in `held` and goes out as content for the tool parser.
                            self.flush_unsent(out);
                            self.reasoning_ended = true;
                            self.state = State::Content;
                        }
                        None => {
                            let keep = partial_tag_len(&self.held, &[THINK_END, TOOL_CALL_START]);
                            let cut = self.held.len() - keep;
                            let before: String = self.held.drain(..cut).collect();
                            self.emit_reasoning(out, &before);
                            return;
                        }
                    }
                }
            }
        }
    }

    fn emit_reasoning(&mut self, out: &mut ReasoningDelta, text: &str) {
        if text.is_empty() {
            return;
        }
        self.all_reasoning.push_str(text);
        if self.opts.stream_reasoning {
            out.reasoning.push_str(text);
        } else {
            self.unsent_reasoning.push_str(text);
        }
    }

    fn flush_unsent(&mut self, out: &mut ReasoningDelta) {
        out.reasoning.push_str(&core::mem::take(&mut self.unsent_reasoning));
    }

    fn emit_content(&mut self, out: &mut ReasoningDelta, text: &str) {
        if !text.is_empty() {
            self.content_seen = true;
            out.content.push_str(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> ReasoningOptions {
        ReasoningOptions::default()
    }

    fn off() -> ReasoningOptions {
        ReasoningOptions { thinking: false, ..ReasoningOptions::default() }
    }

    fn split(opts: ReasoningOptions, text: &str) -> (Option<String>, String) {
        let out = ReasoningParser::parse(opts, text, false);
        (out.reasoning, out.content)
    }

    fn r(s: &str) -> Option<String> {
        Some(s.into())
    }

    #[test]
    fn glm_shapes() {
        assert_eq!(split(on(), "<think>I think.</think>\nAnswer"), (r("I think."), "\nAnswer".into()));
        assert_eq!(split(on(), "no open tag</think>Answer"), (r("no open tag"), "Answer".into()));
        assert_eq!(split(on(), "\n<think>x</think>y"), (r("\nx"), "y".into()));
        assert_eq!(split(on(), "<think>truncated"), (r("truncated"), String::new()));
        assert_eq!(
            split(on(), "<think>plan<tool_call>f\n</tool_call>"),
            (r("plan"), "<tool_call>f\n</tool_call>".into())
        );
        assert_eq!(split(off(), "plain answer"), (None, "plain answer".into()));
        assert_eq!(split(off(), "<think>a</think>b"), (r("a"), "b".into()));
        assert_eq!(split(off(), "b <think>a</think>"), (None, "b <think>a</think>".into()));
        let pass = ReasoningOptions { separate_reasoning: false, ..on() };
        assert_eq!(split(pass, "<think>a</think>b"), (None, "<think>a</think>b".into()));
    }

    #[test]
    fn promotion_when_thinking_was_skipped() {
        let out = ReasoningParser::parse(on(), "The answer is 4.", true);
        assert_eq!(out, ReasoningOutput { reasoning: None, content: "The answer is 4.".into() });
        let out = ReasoningParser::parse(on(), "<think>a</think>", true);
        assert_eq!(out, ReasoningOutput { reasoning: Some("a".into()), content: String::new() });
    }

    #[test]
    fn stream_reasoning_off_releases_at_end_tag() {
        let opts = ReasoningOptions { stream_reasoning: false, ..on() };
        let mut p = ReasoningParser::new(opts);
        assert!(p.push("<think>abc").is_empty());
        let d = p.push("d</think>x");
        assert_eq!(d, ReasoningDelta { reasoning: "abcd".into(), content: "x".into() });
    }

    #[test]
    fn thinking_switches() {
        use serde_json::json;
        assert!(ReasoningOptions::thinking_enabled(None, None));
        assert!(!ReasoningOptions::thinking_enabled(Some(&json!({"enable_thinking": false})), None));
        assert!(!ReasoningOptions::thinking_enabled(Some(&json!({"thinking": false})), Some("high")));
        assert!(!ReasoningOptions::thinking_enabled(None, Some("none")));
        assert!(ReasoningOptions::thinking_enabled(Some(&json!({"enable_thinking": true})), Some("none")));
    }
}
