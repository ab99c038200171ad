//! The streaming state machine behind both tool-call APIs.
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use super::schema::{type_value, ParamTypes, ToolSchemas};
use super::*;
use crate::text::pyjson;
use crate::text::tags::{find_first, is_strict_prefix, partial_tag_len};

/// Longest function name accepted; a longer "name line" is not a call, and bounding it bounds how much content
/// the parser can hold back while deciding.
const MAX_NAME: usize = 256;
/// Longest argument key accepted, for the same reason.
const MAX_KEY: usize = 256;
/// A literal backslash-n, which GLM sometimes writes instead of a newline between the parts of a call.
const LITERAL_NEWLINE: &str = "\\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Text,
    /// After `<tool_call>`: the function name, up to a newline.
    Name,
    /// Between arguments: `<arg_key>` or `</tool_call>` expected.
    BeforeKey,
    Key,
    /// After `</arg_key>`: `<arg_value>` expected.
    BeforeValue,
    Value,
}

/// Whether the parser needs more input before it can go on.
enum Step {
    Continue,
    NeedMore,
}

/// The call being parsed, announced to the client once its name was complete.
#[derive(Clone, Debug)]
struct OpenCall {
    index: usize,
    id: String,
    name: String,
    arguments: String,
    n_args: usize,
    /// Inside a string value whose opening quote was already sent.
    in_string: bool,
}

/// Streaming glm45 tool-call parser for one choice of one request. Feed it the *content* stream (after the
/// reasoning parser) with [`push`](Self::push), then call [`finish`](Self::finish) once.
///
/// A block that turns out not to be a well-formed call (bad name, missing tags, truncated by the end of output) is
/// released as content, verbatim. When that happens after the call was already announced to a streaming client,
/// the announced call is also closed with the arguments parsed so far, so that its `arguments` stay valid JSON;
/// the non-streaming [`parse`](Self::parse) leaves such a call out.
#[derive(Clone, Debug)]
pub struct ToolCallParser {
    tools: ToolSchemas,
    id_seed: u64,
    state: State,
    /// Input received but not yet consumed.
    buf: String,
    /// Text state: trailing whitespace of the content, released only if more text follows.
    pending_ws: String,
    /// Text state: drop whitespace, because a block just ended.
    skip_ws: bool,
    /// The raw text of the current block so far, restored as content if the block fails.
    block_raw: String,
    call: Option<OpenCall>,
    key: String,
    value_types: ParamTypes,
    value_raw: String,
    next_index: usize,
    events: Vec<ToolEvent>,
    /// Every call that was closed, with whether it was complete and well-formed.
    finished: Vec<(ToolCall, bool)>,
}

impl ToolCallParser {
    /// `id_seed` makes call ids unique per request (pass something random); the same seed gives the same ids.
    pub fn new(tools: ToolSchemas, id_seed: u64) -> Self {
        ToolCallParser {
            tools,
            id_seed,
            state: State::Text,
            buf: String::new(),
            pending_ws: String::new(),
            skip_ws: false,
            block_raw: String::new(),
            call: None,
            key: String::new(),
            value_types: ParamTypes::UNKNOWN,
            value_raw: String::new(),
            next_index: 0,
            events: Vec::new(),
            finished: Vec::new(),
        }
    }

    /// Feed the next content delta; returns what can be released now, in order.
    pub fn push(&mut self, text: &str) -> Vec<ToolEvent> {
        self.buf.push_str(text);
        self.run();
        core::mem::take(&mut self.events)
    }

    /// End of output: a block still open is released as content (and, if announced, closed).
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        loop {
            self.run();
            if self.state == State::Text {
                break;
            }
            self.fail();
        }
        let rest = core::mem::take(&mut self.buf);
        self.emit_text(&rest);
        if !self.skip_ws {
            let ws = core::mem::take(&mut self.pending_ws);
            self.emit_content(&ws);
        }
        core::mem::take(&mut self.events)
    }

    /// Whether any call was announced so far (for `finish_reason`).
    pub fn has_calls(&self) -> bool {
        self.next_index > 0
    }

    /// Non-streaming parse of a complete output. Calls are numbered 0.. in order; blocks that did not parse are
    /// part of `content`.
    pub fn parse(tools: ToolSchemas, id_seed: u64, text: &str) -> ParsedToolCalls {
        let mut p = ToolCallParser::new(tools, id_seed);
        let mut events = p.push(text);
        events.extend(p.finish());
        let mut content = String::new();
        for e in events {
            if let ToolEvent::Content(c) = e {
                content.push_str(&c);
            }
        }
        let calls = p
            .finished
            .into_iter()
            .filter(|(_, complete)| *complete)
            .enumerate()
            .map(|(i, (call, _))| ToolCall { index: i, ..call })
            .collect();
        ParsedToolCalls { content, calls }
    }

    fn run(&mut self) {
        while let Step::Continue = self.step() {}
    }

    fn step(&mut self) -> Step {
        match self.state {
            State::Text => self.step_text(),
            State::Name => self.step_name(),
            State::BeforeKey => self.step_before_key(),
            State::Key => self.step_key(),
            State::BeforeValue => self.step_before_value(),
            State::Value => self.step_value(),
        }
    }

    fn step_text(&mut self) -> Step {
        if self.buf.is_empty() {
            return Step::NeedMore;
        }
        match self.buf.find(TOOL_CALL_START) {
            Some(pos) => {
                let text: String = self.buf.drain(..pos).collect();
                self.emit_text(&text);
                self.block_raw = core::mem::take(&mut self.pending_ws);
                self.skip_ws = false;
                self.consume(TOOL_CALL_START.len());
                self.state = State::Name;
                Step::Continue
            }
            None => {
                let keep = partial_tag_len(&self.buf, &[TOOL_CALL_START]);
                let text: String = self.buf.drain(..self.buf.len() - keep).collect();
                self.emit_text(&text);
                Step::NeedMore
            }
        }
    }

    fn step_name(&mut self) -> Step {
        const ENDS: [&str; 4] = ["\n", LITERAL_NEWLINE, ARG_KEY_START, TOOL_CALL_END];
        let found = find_first(&self.buf, &ENDS);
        let region_end = found.map_or(self.buf.len(), |(pos, _)| pos);
        // A `<` that cannot start a terminator means this is not a name line (e.g. a repeated `<tool_call>`).
        if let Some(lt) = self.buf[..region_end].find('<') {
            if found.is_some() || !ENDS.iter().any(|t| is_strict_prefix(&self.buf[lt..], t)) {
                return self.fail();
            }
        }
        let Some((pos, which)) = found else {
            return if self.buf.len() > MAX_NAME { self.fail() } else { Step::NeedMore };
        };
        let name = self.buf[..pos].trim();
        if name.is_empty() || name.len() > MAX_NAME || name.contains(|c: char| c.is_whitespace() || "<>\"'".contains(c))
        {
            return self.fail();
        }
        let name = String::from(name);
        // Newlines are consumed here; tags are left for the next state.
        self.consume(if which < 2 { pos + ENDS[which].len() } else { pos });
        self.announce(name);
        self.state = State::BeforeKey;
        Step::Continue
    }

    fn step_before_key(&mut self) -> Step {
        if !self.skip_separators() {
            return Step::NeedMore;
        }
        if self.buf.starts_with(ARG_KEY_START) {
            self.consume(ARG_KEY_START.len());
            self.key.clear();
            self.state = State::Key;
            Step::Continue
        } else if self.buf.starts_with(TOOL_CALL_END) {
            self.consume(TOOL_CALL_END.len());
            self.complete_call();
            Step::Continue
        } else if is_strict_prefix(&self.buf, ARG_KEY_START) || is_strict_prefix(&self.buf, TOOL_CALL_END) {
            Step::NeedMore
        } else {
            self.fail()
        }
    }

    fn step_key(&mut self) -> Step {
        let found = self.buf.find(ARG_KEY_END);
        let region_end = found.unwrap_or(self.buf.len());
        if let Some(lt) = self.buf[..region_end].find('<') {
            if found.is_some() || !is_strict_prefix(&self.buf[lt..], ARG_KEY_END) {
                return self.fail();
            }
        }
        let Some(pos) = found else {
            return if self.buf.len() > MAX_KEY + ARG_KEY_END.len() { self.fail() } else { Step::NeedMore };
        };
        if pos > MAX_KEY {
            return self.fail();
        }
        self.key = String::from(self.buf[..pos].trim());
        self.consume(pos + ARG_KEY_END.len());
        self.state = State::BeforeValue;
        Step::Continue
    }

    fn step_before_value(&mut self) -> Step {
        if !self.skip_separators() {
            return Step::NeedMore;
        }
        if self.buf.starts_with(ARG_VALUE_START) {
            self.consume(ARG_VALUE_START.len());
            self.begin_value();
            self.state = State::Value;
            Step::Continue
        } else if is_strict_prefix(&self.buf, ARG_VALUE_START) {
            Step::NeedMore
        } else {
            self.fail()
        }
    }

    fn step_value(&mut self) -> Step {
        const ENDS: [&str; 2] = [ARG_VALUE_END, TOOL_CALL_END];
        match find_first(&self.buf, &ENDS) {
            Some((pos, 0)) => {
                self.value_chunk(pos);
                self.consume(ARG_VALUE_END.len());
                self.end_value();
                self.state = State::BeforeKey;
                Step::Continue
            }
            Some((pos, _)) => {
                // `</tool_call>` before `</arg_value>`: the value was never closed.
                self.value_chunk(pos);
                self.fail()
            }
            None => {
                let keep = partial_tag_len(&self.buf, &ENDS);
                self.value_chunk(self.buf.len() - keep);
                Step::NeedMore
            }
        }
    }

    /// Skips whitespace and literal `\n` between tags. False when the buffer ran out (or ends in a lone `\`).
    fn skip_separators(&mut self) -> bool {
        loop {
            let blank = self.buf.len() - self.buf.trim_start().len();
            if blank > 0 {
                self.consume(blank);
            }
            if self.buf.starts_with(LITERAL_NEWLINE) {
                self.consume(LITERAL_NEWLINE.len());
                continue;
            }
            return !(self.buf.is_empty() || self.buf == "\\");
        }
    }

    /// Moves `n` bytes from the input to the current block's raw text.
    fn consume(&mut self, n: usize) {
        self.block_raw.extend(self.buf.drain(..n));
    }

    fn announce(&mut self, name: String) {
        let index = self.next_index;
        self.next_index += 1;
        let id = call_id(self.id_seed, index);
        self.events.push(ToolEvent::Call(ToolCallDelta {
            index,
            id: Some(id.clone()),
            name: Some(name.clone()),
            arguments: String::new(),
        }));
        self.call = Some(OpenCall { index, id, name, arguments: String::new(), n_args: 0, in_string: false });
    }

    fn begin_value(&mut self) {
        let Some(call) = &self.call else { return };
        self.value_types = self.tools.param_types(&call.name, &self.key);
        self.value_raw.clear();
        if self.value_types.is_string() {
            let mut frag = self.key_fragment();
            frag.push('"');
            self.fragment(frag);
            if let Some(call) = &mut self.call {
                call.in_string = true;
            }
        }
    }

    /// Takes `n` bytes of value text from the input: streamed now for a string parameter, kept for typing otherwise.
    fn value_chunk(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let chunk: String = self.buf[..n].into();
        self.consume(n);
        if self.call.as_ref().is_some_and(|c| c.in_string) {
            let mut frag = String::new();
            pyjson::escape_into(&mut frag, &chunk, false);
            self.fragment(frag);
        } else {
            self.value_raw.push_str(&chunk);
        }
    }

    fn end_value(&mut self) {
        let in_string = self.call.as_ref().is_some_and(|c| c.in_string);
        let frag = if in_string {
            String::from("\"")
        } else {
            let value = type_value(&self.value_raw, self.value_types);
            let mut frag = self.key_fragment();
            frag.push_str(&pyjson::dumps(&value, &pyjson::DumpOptions::python(false)));
            frag
        };
        self.fragment(frag);
        if let Some(call) = &mut self.call {
            call.in_string = false;
        }
    }

    /// `{"key": ` before the first argument, `, "key": ` before the others; counts the argument as started.
    fn key_fragment(&mut self) -> String {
        let first = self.call.as_ref().is_none_or(|c| c.n_args == 0);
        if let Some(call) = &mut self.call {
            call.n_args += 1;
        }
        let mut frag = String::from(if first { "{" } else { ", " });
        pyjson::write_string(&mut frag, &self.key, false);
        frag.push_str(": ");
        frag
    }

    fn complete_call(&mut self) {
        self.close_call(true);
        self.block_raw.clear();
        self.state = State::Text;
        self.skip_ws = true;
    }

    /// Closes the announced call so its arguments are a JSON object.
    fn close_call(&mut self, complete: bool) {
        let Some(call) = &self.call else { return };
        let mut frag = String::new();
        if call.in_string {
            frag.push('"');
        }
        frag.push_str(if call.n_args == 0 { "{}" } else { "}" });
        self.fragment(frag);
        if let Some(call) = self.call.take() {
            let done = ToolCall { index: call.index, id: call.id, name: call.name, arguments: call.arguments };
            self.finished.push((done, complete));
        }
    }

    /// The block is not a call: what was consumed of it becomes content and the rest is read again as text.
    fn fail(&mut self) -> Step {
        self.close_call(false);
        let raw = core::mem::take(&mut self.block_raw);
        self.state = State::Text;
        self.skip_ws = false;
        self.emit_text(&raw);
        Step::Continue
    }

    fn fragment(&mut self, frag: String) {
        let Some(call) = &mut self.call else { return };
        call.arguments.push_str(&frag);
        let index = call.index;
        if let Some(ToolEvent::Call(last)) = self.events.last_mut() {
            if last.index == index && last.id.is_none() {
                last.arguments.push_str(&frag);
                return;
            }
        }
        self.events.push(ToolEvent::Call(ToolCallDelta { index, id: None, name: None, arguments: frag }));
    }

    /// Content text, holding back trailing whitespace (dropped if a block follows) and dropping leading whitespace
    /// after a block.
    fn emit_text(&mut self, text: &str) {
        let mut t = text;
        if self.skip_ws {
            t = t.trim_start();
            if t.is_empty() {
                return;
            }
            self.skip_ws = false;
        }
        let body = t.trim_end().len();
        if body == 0 {
            self.pending_ws.push_str(t);
            return;
        }
        let mut out = core::mem::take(&mut self.pending_ws);
        out.push_str(&t[..body]);
        self.pending_ws.push_str(&t[body..]);
        self.emit_content(&out);
    }

    fn emit_content(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if let Some(ToolEvent::Content(last)) = self.events.last_mut() {
            last.push_str(text);
        } else {
            self.events.push(ToolEvent::Content(text.into()));
        }
    }
}

/// `call_` + 24 hex digits from a seed and the call's ordinal (splitmix64, so nearby seeds give unrelated ids).
fn call_id(seed: u64, index: usize) -> String {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let a = mix(seed ^ (index as u64).wrapping_mul(0xd6e8_feb8_6659_fd93));
    let b = mix(a);
    let mut id = String::from("call_");
    let _ = write!(id, "{a:016x}{:08x}", b >> 32);
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn weather_tools() -> ToolSchemas {
        ToolSchemas::from_openai_tools(&[json!({"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}})])
    }

    #[test]
    fn glm_shape() {
        let text = "Let me check.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>北京</arg_value>\n\
                    <arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>";
        let out = ToolCallParser::parse(weather_tools(), 1, text);
        assert_eq!(out.content, "Let me check.");
        assert_eq!(out.calls.len(), 1);
        assert_eq!(out.calls[0].name, "get_weather");
        assert_eq!(out.calls[0].arguments, r#"{"city": "北京", "days": 3}"#);
        assert!(out.calls[0].id.starts_with("call_") && out.calls[0].id.len() == 29);
    }

    #[test]
    fn ids_differ_per_call_and_seed() {
        assert_ne!(call_id(1, 0), call_id(1, 1));
        assert_ne!(call_id(1, 0), call_id(2, 0));
        assert_eq!(call_id(7, 3), call_id(7, 3));
    }
}
