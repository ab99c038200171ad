//! One benchmark request against an OpenAI-compatible server: a streamed `/v1/chat/completions` (or
//! `/v1/completions`) POST, timed line by line as `sglang.bench_serving` times it.
use std::time::{Duration, Instant};

use glmv_runtime::text::Tokenizer;
use serde_json::{json, Value};

use super::{
    dataset::{BenchRequest, Content},
    http::{self, Origin},
    metrics::RequestOutcome,
};

/// Where and how requests are sent.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub origin: Origin,
    /// `/v1/chat/completions` or `/v1/completions`.
    pub path: String,
    /// Bounds connecting and each read of a request (None: wait forever; an 8K-token answer takes minutes).
    pub timeout: Option<Duration>,
    pub model: String,
    pub api_key: Option<String>,
    /// Ask the server to ignore EOS so that every request produces its full `max_tokens` (bench_serving's default).
    pub ignore_eos: bool,
    /// Fields merged into every request body (`--extra-request-body`).
    pub extra: serde_json::Map<String, Value>,
    /// Count `reasoning_content` deltas as output (vLLM's TTFT definition); by default only `content` counts, as in
    /// bench_serving's openai-chat client, so with thinking on TTFT includes the thinking.
    pub count_reasoning: bool,
}

impl Endpoint {
    /// The JSON body of one request: greedy, streamed, with usage in the last chunk.
    pub fn body(&self, req: &BenchRequest) -> Value {
        let mut body = json!({
            "model": self.model,
            "max_tokens": req.output_len,
            "temperature": 0.0,
            "stream": true,
            "stream_options": {"include_usage": true},
            "ignore_eos": self.ignore_eos,
        });
        match &req.content {
            Content::Chat(messages) => body["messages"] = json!(messages),
            Content::Text(prompt) => body["prompt"] = json!(prompt),
        }
        let fields = body.as_object_mut().expect("the body is an object");
        fields.extend(self.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        body
    }
}

/// What a stream said, fed one line at a time with the time it arrived (seconds after the request was sent).
#[derive(Debug, Default)]
pub struct StreamTimeline {
    count_reasoning: bool,
    first_output: Option<f64>,
    last_output: f64,
    itl: Vec<f64>,
    text: String,
    last_line: f64,
    done: bool,
    error: Option<String>,
    prompt_tokens: Option<usize>,
    vision_tokens: usize,
    completion_tokens: Option<usize>,
}

impl StreamTimeline {
    pub fn new(count_reasoning: bool) -> Self {
        StreamTimeline { count_reasoning, ..Default::default() }
    }

    pub fn line(&mut self, t: f64, line: &str) {
        self.last_line = t;
        let Some(data) = line.strip_prefix("data:").map(str::trim) else { return };
        if data == "[DONE]" {
            self.done = true;
            return;
        }
        let chunk: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => return self.fail(format!("an SSE line is not JSON ({e}): {data:.80}")),
        };
        if let Some(err) = chunk.get("error") {
            let message = err.get("message").and_then(Value::as_str).unwrap_or("error in the stream");
            return self.fail(message.to_string());
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            let count = |v: Option<&Value>| v.and_then(Value::as_u64).map(|n| n as usize);
            self.prompt_tokens = count(usage.get("prompt_tokens"));
            self.completion_tokens = count(usage.get("completion_tokens"));
            let details = usage.get("prompt_tokens_details");
            self.vision_tokens =
                ["image_tokens", "video_tokens"].iter().filter_map(|k| count(details.and_then(|d| d.get(*k)))).sum();
        }
        let choice = &chunk["choices"][0];
        let delta = &choice["delta"];
        let mut output = String::new();
        for piece in [&delta["content"], &choice["text"]] {
            output.push_str(piece.as_str().unwrap_or(""));
        }
        if self.count_reasoning {
            output.push_str(delta["reasoning_content"].as_str().unwrap_or(""));
            if delta.get("tool_calls").is_some_and(|c| !c.is_null()) && output.is_empty() {
                output.push_str(&delta["tool_calls"].to_string());
            }
        }
        if output.is_empty() {
            return;
        }
        match self.first_output {
            None => self.first_output = Some(t),
            Some(_) => self.itl.push(t - self.last_output),
        }
        self.last_output = t;
        self.text.push_str(&output);
    }

    fn fail(&mut self, message: String) {
        self.error.get_or_insert(message);
    }

    /// The request's figures; `requested` is the request as sent (its lengths stand in for a missing usage).
    pub fn finish(self, requested: &BenchRequest, start: f64, tokenizer: &Tokenizer) -> RequestOutcome {
        let error = self.error.or_else(|| {
            if !self.done {
                Some("the stream ended before data: [DONE]".into())
            } else if self.first_output.is_none() {
                Some("the stream carried no output text (thinking on? see --count-reasoning)".into())
            } else {
                None
            }
        });
        let retokenized_len = tokenizer.encode_prompt(&self.text).map_or(0, |ids| ids.len());
        RequestOutcome {
            error,
            start,
            ttft: self.first_output.unwrap_or(0.0),
            itl: self.itl,
            latency: self.last_line,
            prompt_len: self.prompt_tokens.unwrap_or(requested.prompt_len),
            vision_prompt_len: self.vision_tokens,
            output_len: self.completion_tokens.unwrap_or(requested.output_len),
            retokenized_len,
            generated_text: self.text,
        }
    }
}

/// Sends one request and times its stream; `bench_start` is the benchmark's time origin.
pub fn send(endpoint: &Endpoint, req: &BenchRequest, bench_start: Instant, tokenizer: &Tokenizer) -> RequestOutcome {
    let body = endpoint.body(req).to_string();
    let sent = Instant::now();
    let start = sent.duration_since(bench_start).as_secs_f64();
    let failed = |error: String| RequestOutcome {
        error: Some(error),
        start,
        latency: sent.elapsed().as_secs_f64(),
        prompt_len: req.prompt_len,
        ..Default::default()
    };
    let auth = endpoint.api_key.as_ref().map(|key| format!("Bearer {key}"));
    let mut headers = vec![("Content-Type", "application/json"), ("Accept", "text/event-stream")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth));
    }
    let response =
        match http::request(&endpoint.origin, "POST", &endpoint.path, &headers, body.as_bytes(), endpoint.timeout) {
            Ok(r) => r,
            Err(e) => return failed(e.to_string()),
        };
    if response.status != 200 {
        let status = response.status;
        let text = response.text().unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        return failed(format!("HTTP {status}: {message}"));
    }
    let mut timeline = StreamTimeline::new(endpoint.count_reasoning);
    let mut reader = response.body;
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => timeline.line(sent.elapsed().as_secs_f64(), line.trim_end()),
            Err(e) => {
                timeline.fail(format!("reading the stream: {e}"));
                break;
            }
        }
    }
    timeline.finish(req, start, tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_chunk(content: &str) -> String {
        format!("data: {}", json!({"choices": [{"index": 0, "delta": {"content": content}}]}))
    }

    fn request() -> BenchRequest {
        BenchRequest { content: Content::Text("hi".into()), prompt_len: 7, output_len: 3 }
    }

    #[test]
    fn timeline_of_a_stream() {
        let tok = glmv_runtime::demo::tokenizer().unwrap();
        let mut t = StreamTimeline::new(false);
        // A role-only first chunk does not count as the first token.
        t.line(0.05, r#"data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}"#);
        t.line(0.10, &chat_chunk("Hello"));
        t.line(0.10, "");
        t.line(0.25, &chat_chunk(" wor"));
        t.line(0.30, &chat_chunk("ld"));
        t.line(0.31, r#"data: {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": {"image_tokens": 4}}}"#);
        t.line(0.32, "data: [DONE]");
        let o = t.finish(&request(), 1.5, &tok);
        assert_eq!(o.error, None);
        assert_eq!((o.start, o.ttft, o.latency), (1.5, 0.10, 0.32));
        assert_eq!(o.itl.len(), 2);
        assert!((o.itl[0] - 0.15).abs() < 1e-12 && (o.itl[1] - 0.05).abs() < 1e-12);
        assert_eq!((o.prompt_len, o.vision_prompt_len, o.output_len), (12, 4, 3));
        assert_eq!(o.generated_text, "Hello world");
        assert_eq!(o.retokenized_len, tok.encode_prompt("Hello world").unwrap().len());
    }

    #[test]
    fn reasoning_counts_only_when_asked() {
        let tok = glmv_runtime::demo::tokenizer().unwrap();
        let reasoning = r#"data: {"choices": [{"index": 0, "delta": {"reasoning_content": "hmm"}}]}"#;
        for (count, ttft) in [(false, 0.4), (true, 0.2)] {
            let mut t = StreamTimeline::new(count);
            t.line(0.2, reasoning);
            t.line(0.4, &chat_chunk("A"));
            t.line(0.5, "data: [DONE]");
            let o = t.finish(&request(), 0.0, &tok);
            // Without usage the requested lengths stand in.
            assert_eq!((o.ttft, o.prompt_len, o.output_len), (ttft, 7, 3));
        }
    }

    #[test]
    fn broken_streams_are_failures() {
        let tok = glmv_runtime::demo::tokenizer().unwrap();
        let mut cut = StreamTimeline::new(false);
        cut.line(0.1, &chat_chunk("A"));
        assert!(cut.finish(&request(), 0.0, &tok).error.unwrap().contains("[DONE]"));
        let mut err = StreamTimeline::new(false);
        err.line(0.1, r#"data: {"error": {"message": "aborted: out of memory"}}"#);
        err.line(0.2, "data: [DONE]");
        assert_eq!(err.finish(&request(), 0.0, &tok).error.as_deref(), Some("aborted: out of memory"));
        let mut empty = StreamTimeline::new(false);
        empty.line(0.2, "data: [DONE]");
        assert!(empty.finish(&request(), 0.0, &tok).error.unwrap().contains("no output"));
    }

    #[test]
    fn body_has_bench_serving_fields() {
        let mut extra = serde_json::Map::new();
        extra.insert("top_k".into(), json!(1));
        let e = Endpoint {
            origin: Origin { host: "x".into(), port: 80 },
            path: "/v1/completions".into(),
            timeout: None,
            model: "m".into(),
            api_key: None,
            ignore_eos: true,
            extra,
            count_reasoning: false,
        };
        let b = e.body(&request());
        assert_eq!(b["prompt"], "hi");
        assert_eq!((b["max_tokens"].as_u64(), b["temperature"].as_f64()), (Some(3), Some(0.0)));
        assert_eq!((b["stream"].as_bool(), b["ignore_eos"].as_bool()), (Some(true), Some(true)));
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["top_k"], 1);
    }
}
