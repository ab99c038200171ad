//! The glm45 reasoning and tool-call parsers: GLM-4.5V output shapes, every split point of each test string
//! (streaming must equal non-streaming), and randomised inputs (no panic, no lost byte).
use glmv_runtime::text::reasoning::{ReasoningOptions, ReasoningOutput, ReasoningParser};
use glmv_runtime::text::tool_call::{ParsedToolCalls, ToolCallParser, ToolEvent, ToolSchemas};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------------------------
// Helpers

/// Char-boundary split points of `s`, both ends included.
fn split_points(s: &str) -> Vec<usize> {
    (0..=s.len()).filter(|&i| s.is_char_boundary(i)).collect()
}

fn chars(s: &str) -> Vec<&str> {
    let pts = split_points(s);
    pts.windows(2).map(|w| &s[w[0]..w[1]]).collect()
}

fn stream_reasoning(opts: ReasoningOptions, chunks: &[&str], promote: bool) -> (String, String) {
    let mut p = ReasoningParser::new(opts);
    let (mut r, mut c) = (String::new(), String::new());
    for ch in chunks {
        let d = p.push(ch);
        r += &d.reasoning;
        c += &d.content;
    }
    let d = p.finish(promote);
    r += &d.reasoning;
    c += &d.content;
    (r, c)
}

fn nonstream_pair(out: &ReasoningOutput) -> (String, String) {
    (out.reasoning.clone().unwrap_or_default(), out.content.clone())
}

/// What a streaming client accumulates: content, and per call index (id, name, arguments).
#[derive(Debug, Default, PartialEq)]
struct Accumulated {
    content: String,
    calls: Vec<(String, String, String)>,
}

fn accumulate(events: impl IntoIterator<Item = ToolEvent>, acc: &mut Accumulated) {
    for e in events {
        match e {
            ToolEvent::Content(c) => acc.content += &c,
            ToolEvent::Call(d) => {
                if d.index == acc.calls.len() {
                    // The first delta of a call names it, with empty arguments.
                    let (id, name) = (d.id.expect("first delta has an id"), d.name.expect("first delta has a name"));
                    assert!(d.arguments.is_empty(), "first delta carries no arguments");
                    acc.calls.push((id, name, String::new()));
                } else {
                    assert!(d.index + 1 == acc.calls.len(), "deltas arrive for the newest call only");
                    assert!(d.id.is_none() && d.name.is_none(), "only the first delta has id and name");
                    acc.calls[d.index].2 += &d.arguments;
                }
            }
        }
    }
}

fn stream_tools(tools: &ToolSchemas, chunks: &[&str]) -> Accumulated {
    let mut p = ToolCallParser::new(tools.clone(), 42);
    let mut acc = Accumulated::default();
    for ch in chunks {
        accumulate(p.push(ch), &mut acc);
    }
    accumulate(p.finish(), &mut acc);
    acc
}

/// Streaming must give the non-streaming content, and every non-streaming call (streaming may also have announced
/// calls that later failed, which non-streaming leaves in content).
fn assert_tools_consistent(tools: &ToolSchemas, text: &str, chunks: &[&str], whole: &ParsedToolCalls) {
    let acc = stream_tools(tools, chunks);
    assert_eq!(acc.content, whole.content, "content differs for chunks {chunks:?}");
    let mut it = acc.calls.iter();
    for call in &whole.calls {
        let found = it.find(|(id, _, _)| *id == call.id);
        let Some((_, name, args)) = found else { panic!("call {call:?} not streamed for {text:?} / {chunks:?}") };
        assert_eq!((name, args), (&call.name, &call.arguments), "chunks {chunks:?}");
    }
    for (_, _, args) in &acc.calls {
        let v: Value = serde_json::from_str(args).unwrap_or_else(|e| panic!("streamed arguments {args:?}: {e}"));
        assert!(v.is_object());
    }
}

fn check_all_splits_tools(tools: &ToolSchemas, text: &str) -> ParsedToolCalls {
    let whole = ToolCallParser::parse(tools.clone(), 42, text);
    for i in split_points(text) {
        assert_tools_consistent(tools, text, &[&text[..i], &text[i..]], &whole);
    }
    assert_tools_consistent(tools, text, &chars(text), &whole);
    whole
}

fn check_all_splits_reasoning(opts: ReasoningOptions, text: &str) -> ReasoningOutput {
    for promote in [false, true] {
        let whole = ReasoningParser::parse(opts, text, promote);
        let want = nonstream_pair(&whole);
        let promoted = promote && whole.reasoning.is_none() && opts.thinking && !whole.content.is_empty();
        for i in split_points(text) {
            let got = stream_reasoning(opts, &[&text[..i], &text[i..]], promote);
            if promoted {
                // Streaming already sent the text as reasoning; the final delta repeats it as content.
                assert_eq!(got.1, want.1, "{text:?} split at {i}");
            } else {
                assert_eq!(got, want, "{text:?} split at {i} with {opts:?}");
            }
        }
        if !promoted {
            assert_eq!(stream_reasoning(opts, &chars(text), promote), want, "{text:?} char by char");
        }
    }
    ReasoningParser::parse(opts, text, false)
}

fn on() -> ReasoningOptions {
    ReasoningOptions::default()
}
fn off() -> ReasoningOptions {
    ReasoningOptions { thinking: false, ..ReasoningOptions::default() }
}

fn weather_tools() -> ToolSchemas {
    ToolSchemas::from_openai_tools(&[
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "date": {"type": "string"}, "days": {"type": "integer"},
            "units": {"enum": ["c", "f"]}, "detail": {"type": "boolean"}}}}}),
        json!({"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {
            "query": {"type": "string"}, "filters": {"type": "object", "properties": {"year": {"type": "integer"}}},
            "tags": {"type": "array", "items": {"type": "string"}}, "limit": {"type": ["integer", "null"]}}}}}),
        json!({"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}),
    ])
}

// ---------------------------------------------------------------------------------------------------------------
// Reasoning

#[test]
fn reasoning_glm_shapes_every_split() {
    let cases: &[(ReasoningOptions, &str, Option<&str>, &str)] = &[
        (
            on(),
            "<think>The user asks for 6*7.\nThat is 42.</think>\nThe answer is <|begin_of_box|>42<|end_of_box|>.",
            Some("The user asks for 6*7.\nThat is 42."),
            "\nThe answer is <|begin_of_box|>42<|end_of_box|>.",
        ),
        (on(), "Thinking began in the prompt.</think>Answer", Some("Thinking began in the prompt."), "Answer"),
        (on(), "<think></think>\nJust the answer.", None, "\nJust the answer."),
        (on(), "<think>still thinking 😀 北京", Some("still thinking 😀 北京"), ""),
        (
            on(),
            "<think>I need the weather.<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>北京</arg_value>\n</tool_call>",
            Some("I need the weather."),
            "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>北京</arg_value>\n</tool_call>",
        ),
        (on(), "<think>a <thinking> b </thin c</think>d </think> e", Some("a <thinking> b </thin c"), "d </think> e"),
        (on(), "\n\n<think>x</think>y", Some("\n\nx"), "y"),
        (off(), "Direct answer, 你好 👋", None, "Direct answer, 你好 👋"),
        (off(), "<think>model thought anyway</think>answer", Some("model thought anyway"), "answer"),
        (off(), "answer then <think>not reasoning</think>", None, "answer then <think>not reasoning</think>"),
        (off(), "<thin", None, "<thin"),
        (
            ReasoningOptions { separate_reasoning: false, ..on() },
            "<think>kept</think>all content",
            None,
            "<think>kept</think>all content",
        ),
        (ReasoningOptions { stream_reasoning: false, ..on() }, "<think>held</think>then", Some("held"), "then"),
    ];
    for (opts, text, reasoning, content) in cases {
        let out = check_all_splits_reasoning(*opts, text);
        assert_eq!(out.reasoning.as_deref(), *reasoning, "{text:?}");
        assert_eq!(out.content, *content, "{text:?}");
    }
}

#[test]
fn reasoning_promotion_for_skipped_thinking() {
    // sglang#37645: the model answered without thinking and stopped; the answer must not hide in reasoning.
    let out = ReasoningParser::parse(on(), "The capital is Paris.", true);
    assert_eq!((out.reasoning, out.content.as_str()), (None, "The capital is Paris."));
    // Truncated by max_tokens: the server does not promote.
    let out = ReasoningParser::parse(on(), "<think>long thought", false);
    assert_eq!((out.reasoning.as_deref(), out.content.as_str()), (Some("long thought"), ""));
}

// ---------------------------------------------------------------------------------------------------------------
// Tool calls

#[test]
fn tool_calls_glm_shapes_every_split() {
    let tools = weather_tools();
    let call = |name: &str, args: &str| (name.to_string(), args.to_string());
    // (model output, expected content, expected (name, arguments) calls)
    type Case<'a> = (&'a str, &'a str, Vec<(String, String)>);
    let cases: Vec<Case> = vec![
        (
            "I'll look that up.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>北京</arg_value>\n\
             <arg_key>date</arg_key>\n<arg_value>2024-06-27</arg_value>\n</tool_call>",
            "I'll look that up.",
            vec![call("get_weather", r#"{"city": "北京", "date": "2024-06-27"}"#)],
        ),
        (
            "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n</tool_call>\n\
             <tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>London</arg_value>\n<arg_key>days</arg_key>\n\
             <arg_value>3</arg_value>\n</tool_call>",
            "",
            vec![call("get_weather", r#"{"city": "Paris"}"#), call("get_weather", r#"{"city": "London", "days": 3}"#)],
        ),
        (
            // GLM-4.7 style, no newlines; literal \n separators.
            "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call>\
             <tool_call>search\\n<arg_key>query</arg_key>\\n<arg_value>x</arg_value>\\n</tool_call>",
            "",
            vec![call("get_weather", r#"{"city": "Rome"}"#), call("search", r#"{"query": "x"}"#)],
        ),
        ("<tool_call>get_time\n</tool_call>", "", vec![call("get_time", "{}")]),
        ("<tool_call>get_time</tool_call>", "", vec![call("get_time", "{}")]),
        (
            // A string parameter keeps text that looks like JSON; escaping is JSON's.
            "<tool_call>search\n<arg_key>query</arg_key>\n<arg_value>123</arg_value>\n<arg_key>tags</arg_key>\n\
             <arg_value>[\"a\", \"b\"]</arg_value>\n<arg_key>filters</arg_key>\n<arg_value>{\"year\": 2024}</arg_value>\n\
             <arg_key>limit</arg_key>\n<arg_value>null</arg_value>\n</tool_call>",
            "",
            vec![call("search", r#"{"query": "123", "tags": ["a", "b"], "filters": {"year": 2024}, "limit": null}"#)],
        ),
        (
            "<tool_call>search\n<arg_key>query</arg_key>\n<arg_value>say \"hi\"\\path\n<b>bold</b> 😀\t</arg_value>\n</tool_call>",
            "",
            vec![call("search", r#"{"query": "say \"hi\"\\path\n<b>bold</b> 😀\t"}"#)],
        ),
        (
            // Undeclared parameters and unknown tools are kept, typed as JSON when they parse.
            "<tool_call>unknown_tool\n<arg_key>n</arg_key>\n<arg_value>123</arg_value>\n<arg_key>s</arg_key>\n\
             <arg_value>123abc</arg_value>\n<arg_key>b</arg_key>\n<arg_value>true</arg_value>\n</tool_call>",
            "",
            vec![call("unknown_tool", r#"{"n": 123, "s": "123abc", "b": true}"#)],
        ),
        (
            "<tool_call>get_weather\n<arg_key>days</arg_key>\n<arg_value>five</arg_value>\n<arg_key>detail</arg_key>\n\
             <arg_value>True</arg_value>\n<arg_key>units</arg_key>\n<arg_value>c</arg_value>\n</tool_call> trailing text",
            "trailing text",
            vec![call("get_weather", r#"{"days": "five", "detail": true, "units": "c"}"#)],
        ),
        ("no calls here </tool_call> <tool_ca", "no calls here </tool_call> <tool_ca", vec![]),
        // Malformed and truncated blocks are content, verbatim.
        ("Text <tool_call>not a name line", "Text <tool_call>not a name line", vec![]),
        ("<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Par", "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Par", vec![]),
        (
            "<tool_call>get_weather\n<arg_key>city</arg_key>oops</tool_call>",
            "<tool_call>get_weather\n<arg_key>city</arg_key>oops</tool_call>",
            vec![],
        ),
        (
            "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</tool_call>",
            "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</tool_call>",
            vec![],
        ),
        (
            // A stuttered opening tag: the first is text, the second opens the call.
            "<tool_call><tool_call>get_time\n</tool_call>",
            "<tool_call>",
            vec![call("get_time", "{}")],
        ),
        ("<tool_call>\n</tool_call>", "<tool_call>\n</tool_call>", vec![]),
    ];
    for (text, content, calls) in cases {
        let out = check_all_splits_tools(&tools, text);
        assert_eq!(out.content, content, "{text:?}");
        let got: Vec<(String, String)> = out.calls.iter().map(|c| (c.name.clone(), c.arguments.clone())).collect();
        assert_eq!(got, calls, "{text:?}");
        for (i, c) in out.calls.iter().enumerate() {
            assert_eq!(c.index, i);
            assert!(c.id.starts_with("call_") && c.id.len() == 29);
        }
    }
}

#[test]
fn tool_calls_stream_name_first_then_string_fragments() {
    let text = "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>北京市</arg_value>\n</tool_call>";
    let mut p = ToolCallParser::new(weather_tools(), 7);
    let mut events = Vec::new();
    for ch in chars(text) {
        events.extend(p.push(ch));
    }
    events.extend(p.finish());
    let deltas: Vec<_> = events
        .into_iter()
        .map(|e| match e {
            ToolEvent::Call(d) => d,
            ToolEvent::Content(c) => panic!("unexpected content {c:?}"),
        })
        .collect();
    assert_eq!(deltas[0].name.as_deref(), Some("get_weather"));
    let args: Vec<&str> = deltas[1..].iter().map(|d| d.arguments.as_str()).collect();
    // The string value streams character by character as it is generated.
    assert_eq!(args, ["{\"city\": \"", "北", "京", "市", "\"", "}"]);
    assert_eq!(deltas[0].to_openai()["type"], "function");
    assert!(deltas[1].to_openai().get("id").is_none());
}

#[test]
fn truncated_announced_call_stays_valid_json_when_streamed() {
    let text = "<tool_call>search\n<arg_key>query</arg_key>\n<arg_value>half a que";
    let acc = stream_tools(&weather_tools(), &chars(text));
    assert_eq!(acc.content, text);
    assert_eq!(acc.calls.len(), 1);
    assert_eq!(acc.calls[0].2, r#"{"query": "half a que"}"#);
    assert!(ToolCallParser::parse(weather_tools(), 42, text).calls.is_empty());
}

#[test]
fn reasoning_then_tools_pipeline() {
    let text = "<think>Need weather for two cities.</think>\nChecking both.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n\
                <arg_value>Paris</arg_value>\n</tool_call>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n\
                <arg_value>Oslo</arg_value>\n</tool_call>";
    for i in split_points(text) {
        let mut rp = ReasoningParser::new(on());
        let mut tp = ToolCallParser::new(weather_tools(), 3);
        let (mut reasoning, mut acc) = (String::new(), Accumulated::default());
        for chunk in [&text[..i], &text[i..]] {
            let d = rp.push(chunk);
            reasoning += &d.reasoning;
            accumulate(tp.push(&d.content), &mut acc);
        }
        let d = rp.finish(false);
        reasoning += &d.reasoning;
        accumulate(tp.push(&d.content), &mut acc);
        accumulate(tp.finish(), &mut acc);
        assert_eq!(reasoning, "Need weather for two cities.");
        assert_eq!(acc.content, "\nChecking both.");
        let args: Vec<&str> = acc.calls.iter().map(|c| c.2.as_str()).collect();
        assert_eq!(args, [r#"{"city": "Paris"}"#, r#"{"city": "Oslo"}"#]);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Randomised

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    /// Splits `s` at random char boundaries.
    fn chunks<'a>(&mut self, s: &'a str) -> Vec<&'a str> {
        let pts = split_points(s);
        let mut cuts: Vec<usize> = (0..self.below(6)).map(|_| pts[self.below(pts.len())]).collect();
        cuts.push(0);
        cuts.push(s.len());
        cuts.sort_unstable();
        cuts.windows(2).map(|w| &s[w[0]..w[1]]).collect()
    }
}

const PIECES: &[&str] = &[
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
    "<think",
    "</thi",
    "<tool_",
    "</tool_call",
    "<arg_",
    "</arg_v",
    "<",
    ">",
    "/",
    "\n",
    "\\n",
    "\\",
    " ",
    "a",
    "city",
    "get_weather",
    "search",
    "北京",
    "😀",
    "\"",
    "{",
    "}",
    "[1, 2]",
    "123",
    "true",
    "x y",
];

/// Whether `out` is `input` with some occurrences of `tags` deleted (memoised search over positions).
fn is_input_minus_tags(input: &str, out: &str, tags: &[&str]) -> bool {
    let (a, b) = (input.as_bytes(), out.as_bytes());
    let mut memo = vec![vec![None; b.len() + 1]; a.len() + 1];
    fn go(a: &[u8], b: &[u8], i: usize, j: usize, tags: &[&str], memo: &mut Vec<Vec<Option<bool>>>) -> bool {
        if let Some(v) = memo[i][j] {
            return v;
        }
        let r = if i == a.len() {
            j == b.len()
        } else {
            (j < b.len() && a[i] == b[j] && go(a, b, i + 1, j + 1, tags, memo))
                || tags.iter().any(|t| a[i..].starts_with(t.as_bytes()) && go(a, b, i + t.len(), j, tags, memo))
        };
        memo[i][j] = Some(r);
        r
    }
    go(a, b, 0, 0, tags, &mut memo)
}

#[test]
fn random_interleavings_never_panic_or_lose_bytes() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let tools = weather_tools();
    let option_sets = [
        on(),
        off(),
        ReasoningOptions { stream_reasoning: false, ..on() },
        ReasoningOptions { separate_reasoning: false, ..on() },
    ];
    for _ in 0..10_000 {
        let n = rng.below(24);
        let text: String = (0..n).map(|_| rng.pick(PIECES)).collect();
        let chunks = rng.chunks(&text);

        for opts in option_sets {
            let whole = ReasoningParser::parse(opts, &text, false);
            let (r, c) = nonstream_pair(&whole);
            assert_eq!(stream_reasoning(opts, &chunks, false), (r.clone(), c.clone()), "{text:?} {chunks:?} {opts:?}");
            let joined = format!("{r}{c}");
            if opts.separate_reasoning {
                assert!(
                    is_input_minus_tags(&text, &joined, &["<think>", "</think>"]),
                    "lost bytes: {text:?} -> {r:?} | {c:?}"
                );
            } else {
                assert_eq!(joined, text);
            }
        }

        let whole = ToolCallParser::parse(tools.clone(), 42, &text);
        assert_tools_consistent(&tools, &text, &chunks, &whole);
        if whole.calls.is_empty() {
            // Without a complete call nothing may be dropped, whitespace included.
            assert_eq!(whole.content, text, "tool parser lost bytes");
        }
    }
}

/// One generated call: name, GLM text of its arguments, expected arguments.
fn random_call(rng: &mut Rng) -> (String, Value) {
    let seps = ["\n", "", "\\n", " \n"];
    let sep = rng.pick(&seps);
    let words = ["北京", "a<b", "say \"hi\"", "x\\y", "😀", "123", "true", "line\nbreak", "", "{\"k\": 1}"];
    let (name, params): (&str, Vec<(&str, u8)>) = match rng.below(3) {
        0 => ("get_weather", vec![("city", 0), ("days", 1), ("detail", 2), ("extra", 3)]),
        1 => ("search", vec![("query", 0), ("filters", 4), ("tags", 5), ("limit", 1)]),
        _ => ("get_time", vec![]),
    };
    let mut text = format!("<tool_call>{name}{sep}");
    let mut args = serde_json::Map::new();
    for (key, kind) in params {
        if rng.below(3) == 0 {
            continue;
        }
        let (raw, value) = match kind {
            0 => {
                let w = rng.pick(&words);
                (w.to_string(), json!(w))
            }
            1 => {
                let n = rng.below(100_000) as i64 - 50;
                (n.to_string(), json!(n))
            }
            2 => {
                let b = rng.pick(&["true", "false"]);
                (b.to_string(), json!(b == "true"))
            }
            3 => {
                // Undeclared: JSON if it parses, else text.
                let w = rng.pick(&["7", "word", "[1, 2]", "null"]);
                (w.to_string(), serde_json::from_str(w).unwrap_or(json!(w)))
            }
            4 => (
                "{\"year\": 2020, \"nested\": {\"a\": [1, \"二\"]}}".into(),
                json!({"year": 2020, "nested": {"a": [1, "二"]}}),
            ),
            _ => ("[\"x\", \"y\"]".into(), json!(["x", "y"])),
        };
        text += &format!("<arg_key>{key}</arg_key>{sep}<arg_value>{raw}</arg_value>{sep}");
        args.insert(key.into(), value);
    }
    text += "</tool_call>";
    (text, json!({"name": name, "arguments": Value::Object(args)}))
}

#[test]
fn random_calls_and_text_parse_exactly() {
    let mut rng = Rng(12345);
    let tools = weather_tools();
    let texts = ["Sure.", "Let me check 北京 😀", "a < b and \"quotes\"", "x", "</tool_call> stray"];
    for _ in 0..1500 {
        let mut text = String::new();
        let mut want_content = String::new();
        let mut want_calls = Vec::new();
        let mut last_was_text = false;
        for _ in 0..rng.below(5) + 1 {
            if !last_was_text && rng.below(2) == 0 {
                let t = rng.pick(&texts);
                text += t;
                want_content += t;
                last_was_text = true;
            } else {
                let (call, expected) = random_call(&mut rng);
                text += rng.pick(&["", "\n", "\n\n", " "]);
                text += &call;
                text += rng.pick(&["", "\n"]);
                want_calls.push(expected);
                last_was_text = false;
            }
        }
        let whole = ToolCallParser::parse(tools.clone(), 42, &text);
        assert_eq!(whole.content, want_content, "{text:?}");
        let got: Vec<Value> = whole
            .calls
            .iter()
            .map(|c| json!({"name": c.name, "arguments": serde_json::from_str::<Value>(&c.arguments).unwrap()}))
            .collect();
        assert_eq!(got, want_calls, "{text:?}");
        let chunks = rng.chunks(&text);
        assert_tools_consistent(&tools, &text, &chunks, &whole);
        assert_eq!(stream_tools(&tools, &chunks).calls.len(), whole.calls.len());
    }
}
