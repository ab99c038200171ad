//! A generation request's reply while the engine produces it: SSE chunks as events arrive (stream) or one JSON
//! body at the end, for chat completions and completions. The reply owns the engine stream, so a client that
//! disconnects drops it and the engine aborts the request.
use std::{
    sync::{
        mpsc::{Receiver, TryRecvError},
        Arc,
    },
    time::Instant,
};

use glmv_runtime::{
    engine::{EventKind, FinishReason, RequestStream, TokenInfo, Usage},
    text::Tokenizer,
};
use serde_json::{json, Map, Value};

use super::{
    choice::{ChoiceState, DeltaPiece, ParseOptions},
    ApiError,
};
use crate::{
    event_loop::{Later, Piece},
    http::Response,
    log::{log, Level},
    metrics::Metrics,
};

/// What the worker that built the prompt hands over once the engine accepted the request.
pub struct Started {
    pub stream: RequestStream,
    pub prompt_tokens: usize,
    pub image_tokens: usize,
    pub video_tokens: usize,
}

pub type StartResult = Result<Started, ApiError>;

/// Server-wide things a reply needs.
pub struct ReplyContext {
    pub tokenizer: Arc<Tokenizer>,
    pub metrics: Arc<Metrics>,
    /// `--enable-cache-report`: `usage.prompt_tokens_details.cached_tokens`.
    pub cache_report: bool,
}

pub enum Api {
    Chat(ParseOptions),
    /// `echo` puts the prompt text before the completion.
    Completion {
        echo: Option<String>,
    },
}

/// The request's settings a reply follows.
pub struct ReplySpec {
    pub id: String,
    pub model: String,
    pub api: Api,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub continuous_usage_stats: bool,
    pub logprobs: Option<usize>,
}

enum Stage {
    Preparing(Receiver<StartResult>),
    Running { started: Started },
    Done,
}

pub struct GenerationReply {
    ctx: Arc<ReplyContext>,
    spec: ReplySpec,
    created: u64,
    stage: Stage,
    choices: Vec<ChoiceState>,
    usage: Usage,
    arrived: Instant,
    first_token: Option<Instant>,
    last_token: Vec<Option<Instant>>,
    finished: usize,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn sse_head() -> Response {
    let mut head = Response::text(200, "text/event-stream", Vec::new());
    head.headers.push(("Cache-Control".into(), "no-cache".into()));
    head
}

fn sse(data: &str) -> Piece {
    Piece::Chunk(format!("data: {data}\n\n").into_bytes())
}

impl GenerationReply {
    pub fn new(ctx: Arc<ReplyContext>, spec: ReplySpec, started: Receiver<StartResult>, arrived: Instant) -> Self {
        let parse = match &spec.api {
            Api::Chat(opts) => opts.clone(),
            Api::Completion { .. } => ParseOptions { reasoning: None, tools: None, id_seed: 0, think_end: None },
        };
        let choices = (0..spec.n).map(|_| ChoiceState::new(&parse)).collect();
        GenerationReply {
            ctx,
            created: unix_now(),
            stage: Stage::Preparing(started),
            choices,
            usage: Usage::default(),
            arrived,
            first_token: None,
            last_token: vec![None; spec.n],
            finished: 0,
            spec,
        }
    }

    fn is_chat(&self) -> bool {
        matches!(self.spec.api, Api::Chat(_))
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.is_chat(), chunk) {
            (true, true) => "chat.completion.chunk",
            (true, false) => "chat.completion",
            (false, _) => "text_completion",
        }
    }

    fn envelope(&self, choices: Value, chunk: bool) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("id".into(), self.spec.id.clone().into());
        m.insert("object".into(), self.object(chunk).into());
        m.insert("created".into(), self.created.into());
        m.insert("model".into(), self.spec.model.clone().into());
        m.insert("choices".into(), choices);
        m
    }

    fn chunk(&self, choice: Value) -> Piece {
        let mut m = self.envelope(Value::Array(vec![choice]), true);
        if self.spec.continuous_usage_stats {
            m.insert("usage".into(), self.usage_json());
        }
        sse(&Value::Object(m).to_string())
    }

    fn token_text(&self, id: u32) -> String {
        self.ctx.tokenizer.decode(&[id], false).unwrap_or_default()
    }

    /// Chat logprobs of some tokens: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
    fn chat_logprobs(&self, tokens: &[TokenInfo]) -> Value {
        let entry = |id: u32, lp: f32| {
            let token = self.token_text(id);
            json!({"token": token, "logprob": lp, "bytes": token.as_bytes()})
        };
        let content: Vec<Value> = tokens
            .iter()
            .map(|t| {
                let mut e = entry(t.id, t.logprob.unwrap_or(0.0));
                e["top_logprobs"] = t.top_logprobs.iter().map(|&(id, lp)| entry(id, lp)).collect();
                e
            })
            .collect();
        json!({ "content": content })
    }

    /// Completions logprobs: parallel arrays, `text_offset` counted from `offset`.
    fn completion_logprobs(&self, tokens: &[TokenInfo], mut offset: usize) -> Value {
        let mut texts = Vec::new();
        let mut offsets = Vec::new();
        for t in tokens {
            let text = self.token_text(t.id);
            offsets.push(offset);
            offset += text.len();
            texts.push(text);
        }
        let top: Vec<Value> = tokens
            .iter()
            .map(|t| {
                let m: Map<String, Value> =
                    t.top_logprobs.iter().map(|&(id, lp)| (self.token_text(id), json!(lp))).collect();
                Value::Object(m)
            })
            .collect();
        json!({
            "tokens": texts,
            "token_logprobs": tokens.iter().map(|t| t.logprob.unwrap_or(0.0)).collect::<Vec<_>>(),
            "top_logprobs": top,
            "text_offset": offsets,
        })
    }

    fn usage_json(&self) -> Value {
        let reasoning: usize = self.choices.iter().map(ChoiceState::reasoning_tokens).sum();
        let u = &self.usage;
        let mut m = Map::new();
        m.insert("prompt_tokens".into(), u.prompt_tokens.into());
        m.insert("completion_tokens".into(), u.completion_tokens.into());
        m.insert("total_tokens".into(), (u.prompt_tokens + u.completion_tokens).into());
        m.insert("reasoning_tokens".into(), reasoning.into());
        let mut prompt_details = Map::new();
        if self.ctx.cache_report {
            prompt_details.insert("cached_tokens".into(), u.cached_tokens.into());
        }
        if let Stage::Running { started } = &self.stage {
            if started.image_tokens > 0 {
                prompt_details.insert("image_tokens".into(), started.image_tokens.into());
            }
            if started.video_tokens > 0 {
                prompt_details.insert("video_tokens".into(), started.video_tokens.into());
            }
        }
        m.insert(
            "prompt_tokens_details".into(),
            if prompt_details.is_empty() { Value::Null } else { Value::Object(prompt_details) },
        );
        if reasoning > 0 {
            m.insert("completion_tokens_details".into(), json!({ "reasoning_tokens": reasoning }));
        }
        Value::Object(m)
    }

    fn on_token(&mut self, index: usize, token: TokenInfo, text: String, out: &mut Vec<Piece>) {
        let now = Instant::now();
        match self.first_token {
            None => {
                self.first_token = Some(now);
                self.ctx.metrics.ttft.observe((now - self.arrived).as_secs_f64());
            }
            Some(_) => {
                if let Some(last) = self.last_token[index] {
                    self.ctx.metrics.itl.observe((now - last).as_secs_f64());
                }
            }
        }
        self.last_token[index] = Some(now);
        self.usage.completion_tokens += 1;
        let with_logprobs = self.spec.logprobs.is_some();
        let logprob_token = token.clone();
        let pieces = self.choices[index].push(token, &text);
        if !self.spec.stream {
            return;
        }
        match &self.spec.api {
            Api::Chat(_) => {
                let logprobs = with_logprobs.then(|| self.chat_logprobs(std::slice::from_ref(&logprob_token)));
                self.chat_pieces(index, pieces, logprobs, out);
            }
            Api::Completion { .. } => {
                let offset = self.choices[index].text.len() - text.len();
                let logprobs = if with_logprobs {
                    self.completion_logprobs(std::slice::from_ref(&logprob_token), offset)
                } else {
                    Value::Null
                };
                if !text.is_empty() || with_logprobs {
                    let choice = json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": null});
                    out.push(self.chunk(choice));
                }
            }
        }
    }

    /// One chunk per delta piece; logprobs ride on the first (an empty content delta carries them if the token
    /// released no text yet).
    fn chat_pieces(&self, index: usize, pieces: Vec<DeltaPiece>, mut logprobs: Option<Value>, out: &mut Vec<Piece>) {
        if pieces.is_empty() {
            if let Some(lp) = logprobs.take() {
                let choice = json!({"index": index, "delta": {"content": ""}, "logprobs": lp, "finish_reason": null});
                out.push(self.chunk(choice));
            }
            return;
        }
        for piece in pieces {
            let delta = match piece {
                DeltaPiece::Reasoning(r) => json!({ "reasoning_content": r }),
                DeltaPiece::Content(c) => json!({ "content": c }),
                DeltaPiece::ToolCall(call) => json!({ "tool_calls": [call.to_openai()] }),
            };
            let lp = logprobs.take().unwrap_or(Value::Null);
            out.push(self.chunk(json!({"index": index, "delta": delta, "logprobs": lp, "finish_reason": null})));
        }
    }

    fn on_finished(
        &mut self,
        index: usize,
        reason: FinishReason,
        matched: Option<glmv_runtime::engine::MatchedStop>,
        usage: Usage,
        out: &mut Vec<Piece>,
    ) {
        self.usage.prompt_tokens = usage.prompt_tokens;
        self.usage.cached_tokens = self.usage.cached_tokens.max(usage.cached_tokens);
        self.finished += 1;
        let pieces = self.choices[index].finish(reason, matched);
        if !self.spec.stream {
            return;
        }
        let state = &self.choices[index];
        let (finish_reason, matched_stop) = (state.finish_reason(), state.matched_stop());
        match &self.spec.api {
            Api::Chat(_) => {
                self.chat_pieces(index, pieces, None, out);
                let choice = json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": finish_reason, "matched_stop": matched_stop});
                out.push(self.chunk(choice));
            }
            Api::Completion { .. } => {
                let choice = json!({"index": index, "text": "", "logprobs": null, "finish_reason": finish_reason, "matched_stop": matched_stop});
                out.push(self.chunk(choice));
            }
        }
    }

    fn complete(&mut self, out: &mut Vec<Piece>) {
        if self.spec.stream {
            if self.spec.include_usage {
                let mut m = self.envelope(Value::Array(Vec::new()), true);
                m.insert("usage".into(), self.usage_json());
                out.push(sse(&Value::Object(m).to_string()));
            }
            out.push(sse("[DONE]"));
            out.push(Piece::End);
        } else {
            let body = self.final_body();
            out.push(Piece::Full(Response::json(200, body.to_string())));
        }
        self.record(200);
        self.stage = Stage::Done;
    }

    fn final_body(&self) -> Value {
        let choices: Vec<Value> = self
            .choices
            .iter()
            .enumerate()
            .map(|(index, c)| match &self.spec.api {
                Api::Chat(_) => {
                    let (reasoning, content, calls) = c.message();
                    let mut message = Map::new();
                    message.insert("role".into(), "assistant".into());
                    let content_value = if content.is_empty() && !calls.is_empty() { Value::Null } else { content.into() };
                    message.insert("content".into(), content_value);
                    message.insert("reasoning_content".into(), reasoning.map_or(Value::Null, Value::from));
                    if !calls.is_empty() {
                        message.insert("tool_calls".into(), calls.iter().map(|t| t.to_openai()).collect());
                    }
                    let finish = if calls.is_empty() { c.finish_reason() } else { c.finish_reason().map(|r| if r == "stop" { "tool_calls" } else { r }) };
                    let logprobs = self.spec.logprobs.map_or(Value::Null, |_| self.chat_logprobs(&c.tokens));
                    json!({"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish, "matched_stop": c.matched_stop()})
                }
                Api::Completion { echo } => {
                    let prefix = echo.clone().unwrap_or_default();
                    let logprobs =
                        self.spec.logprobs.map_or(Value::Null, |_| self.completion_logprobs(&c.tokens, prefix.len()));
                    json!({"index": index, "text": prefix + &c.text, "logprobs": logprobs, "finish_reason": c.finish_reason(), "matched_stop": c.matched_stop()})
                }
            })
            .collect();
        let mut m = self.envelope(Value::Array(choices), false);
        m.insert("usage".into(), self.usage_json());
        Value::Object(m)
    }

    /// Metrics and the request's log line.
    fn record(&self, status: u16) {
        let m = &self.ctx.metrics;
        let e2e = self.arrived.elapsed().as_secs_f64();
        m.response(status);
        if status == 200 {
            Metrics::add(&m.requests, 1);
            Metrics::add(&m.prompt_tokens, self.usage.prompt_tokens as u64);
            Metrics::add(&m.generation_tokens, self.usage.completion_tokens as u64);
            Metrics::add(&m.cached_tokens, self.usage.cached_tokens as u64);
            m.e2e.observe(e2e);
            m.prompt_tokens_histogram.observe(self.usage.prompt_tokens as f64);
            m.generation_tokens_histogram.observe(self.usage.completion_tokens as f64);
            if let Some(first) = self.first_token {
                let per_choice = self.usage.completion_tokens / self.spec.n.max(1);
                if per_choice > 1 {
                    m.tpot.observe(first.elapsed().as_secs_f64() / (per_choice - 1) as f64);
                }
            }
        }
        let ttft =
            self.first_token.map_or("-".to_string(), |t| format!("{:.1}ms", (t - self.arrived).as_secs_f64() * 1e3));
        log(
            Level::Info,
            &format!(
                "{} status={status} prompt_tokens={} completion_tokens={} cached_tokens={} ttft={ttft} total={:.1}ms",
                self.spec.id,
                self.usage.prompt_tokens,
                self.usage.completion_tokens,
                self.usage.cached_tokens,
                e2e * 1e3
            ),
        );
    }

    fn fail(&mut self, error: ApiError, out: &mut Vec<Piece>) {
        out.push(Piece::Full(error.to_response()));
        self.record(error.status);
        self.stage = Stage::Done;
    }
}

impl Drop for GenerationReply {
    fn drop(&mut self) {
        if let Stage::Running { .. } = self.stage {
            // The client went away mid-generation; dropping the stream aborts the request.
            Metrics::add(&self.ctx.metrics.aborted_requests, 1);
            log(Level::Info, &format!("{} aborted: the client disconnected", self.spec.id));
        }
    }
}

impl Later for GenerationReply {
    fn poll(&mut self, out: &mut Vec<Piece>) {
        if let Stage::Preparing(rx) = &self.stage {
            match rx.try_recv() {
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    return self.fail(ApiError::new(500, "the request was lost while its prompt was built"), out)
                }
                Ok(Err(e)) => return self.fail(e, out),
                Ok(Ok(started)) => {
                    self.usage.prompt_tokens = started.prompt_tokens;
                    self.stage = Stage::Running { started };
                    if self.spec.stream {
                        out.push(Piece::Head(sse_head()));
                        if self.is_chat() {
                            for index in 0..self.spec.n {
                                let choice = json!({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null});
                                out.push(self.chunk(choice));
                            }
                        }
                    }
                }
            }
        }
        loop {
            let Stage::Running { started } = &mut self.stage else { return };
            let Some(event) = started.stream.try_recv() else { break };
            match event.kind {
                EventKind::Token { token, text } => self.on_token(event.index, token, text, out),
                EventKind::Finished { reason, matched_stop, usage } => {
                    self.on_finished(event.index, reason, matched_stop, usage, out)
                }
            }
            if self.finished == self.spec.n {
                return self.complete(out);
            }
        }
    }
}
