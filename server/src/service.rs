//! The routes: which handler answers which method and path, API-key checks, CORS, and the hand-off of
//! generation requests to the worker pool and the engine.
use std::{
    sync::{mpsc::channel, Arc},
    time::Instant,
};

use glmv_runtime::{
    config::GenerationDefaults,
    engine::{EngineHandle, Request as EngineRequest},
    text::{SpecialTokens, Tokenizer, ToolSchemas},
};
use mio::Waker;
use serde_json::{json, Value};

use crate::{
    event_loop::{Reply, Service},
    http::{Request, Response},
    metrics::{Capacity, Metrics},
    openai::{
        choice::ParseOptions,
        prompt::{BuiltPrompt, PromptBuilder},
        reply::{Api, GenerationReply, ReplyContext, ReplySpec, StartResult, Started},
        request::{ChatRequest, CompletionRequest, Generation},
        ApiError,
    },
    workers::Workers,
};

/// Facts about the served model and the server's settings that the routes report or apply.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub served_model_name: String,
    pub model_path: String,
    pub api_key: Option<String>,
    /// `--reasoning-parser glm45`.
    pub reasoning_parser: bool,
    /// `--tool-call-parser glm45`.
    pub tool_call_parser: bool,
    pub enable_metrics: bool,
    pub context_length: usize,
    pub generation_defaults: GenerationDefaults,
    pub architecture: String,
    pub model_type: String,
    pub load_format: String,
    pub capacity_tokens: usize,
    pub block_size: usize,
}

pub struct App {
    pub options: ServeOptions,
    pub engine: Arc<EngineHandle>,
    pub builder: Arc<PromptBuilder>,
    pub reply: Arc<ReplyContext>,
    pub workers: Workers,
    pub waker: Arc<Waker>,
    pub started_at: u64,
    next_id: u64,
}

/// CORS headers on every response, so browser clients on other origins can call the API.
fn with_cors(mut r: Response) -> Response {
    r.headers.push(("Access-Control-Allow-Origin".into(), "*".into()));
    r
}

fn json_response(status: u16, body: Value) -> Response {
    Response::json(status, body.to_string())
}

impl App {
    pub fn new(
        options: ServeOptions,
        engine: Arc<EngineHandle>,
        builder: Arc<PromptBuilder>,
        reply: Arc<ReplyContext>,
        workers: Workers,
        waker: Arc<Waker>,
    ) -> Self {
        let started_at =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        App { options, engine, builder, reply, workers, waker, started_at, next_id: 0 }
    }

    fn tokenizer(&self) -> &Tokenizer {
        &self.reply.tokenizer
    }

    fn metrics(&self) -> &Metrics {
        &self.reply.metrics
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some(key) = &self.options.api_key else { return true };
        req.header("authorization").and_then(|v| v.strip_prefix("Bearer ")).is_some_and(|given| given.trim() == key)
    }

    /// A request id unique in this process and unlikely to repeat across restarts.
    fn request_id(&mut self, prefix: &str) -> (String, u64) {
        self.next_id += 1;
        let seed = (self.started_at << 20) ^ self.next_id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (format!("{prefix}-{seed:016x}"), seed)
    }

    fn check_model(&self, model: Option<&str>) -> Result<String, ApiError> {
        match model {
            None | Some("") | Some("default") => Ok(self.options.served_model_name.clone()),
            Some(m) if m == self.options.served_model_name || m == self.options.model_path => Ok(m.to_string()),
            Some(m) => Err(ApiError::new(404, format!("The model `{m}` does not exist.")).with_param("model")),
        }
    }

    fn models(&self) -> Response {
        json_response(
            200,
            json!({"object": "list", "data": [{
                "id": self.options.served_model_name,
                "object": "model",
                "created": self.started_at,
                "owned_by": "glmv",
                "root": self.options.model_path,
                "parent": null,
                "max_model_len": self.options.context_length,
            }]}),
        )
    }

    fn model_info(&self) -> Response {
        let o = &self.options;
        json_response(
            200,
            json!({
                "model_path": o.model_path,
                "tokenizer_path": o.model_path,
                "served_model_name": o.served_model_name,
                "is_generation": true,
                "preferred_sampling_params": null,
                "weight_version": "default",
                "load_format": o.load_format,
                "reasoning_parser": o.reasoning_parser.then_some("glm45"),
                "tool_call_parser": o.tool_call_parser.then_some("glm45"),
                "has_image_understanding": true,
                "has_audio_understanding": false,
                "model_type": o.model_type,
                "architectures": [o.architecture],
            }),
        )
    }

    fn metrics_text(&self) -> Response {
        if !self.options.enable_metrics {
            return ApiError::new(404, "metrics are off: start the server with --enable-metrics").to_response();
        }
        let capacity = Capacity {
            context_len: self.options.context_length,
            kv_tokens: self.options.capacity_tokens,
            block_size: self.options.block_size,
        };
        let body = self.metrics().render(&self.engine.stats(), &capacity);
        Response::text(200, "text/plain; version=0.0.4; charset=utf-8", body)
    }

    /// An engine request from the request's generation fields and its built prompt; checks the context length.
    fn engine_request(
        options: &ServeOptions,
        generation: &Generation,
        built: BuiltPrompt,
        seed: u64,
        special_tokens: SpecialTokens,
    ) -> Result<EngineRequest, ApiError> {
        let prompt_len = built.prompt.ids.len();
        let context = options.context_length;
        if prompt_len >= context {
            return Err(ApiError::bad_request(format!(
                "The input ({prompt_len} tokens) is longer than the model's context length ({context} tokens)."
            )));
        }
        let max_tokens = match generation.max_tokens {
            Some(m) if prompt_len + m > context => {
                return Err(ApiError::bad_request(format!(
                    "This model's maximum context length is {context} tokens. However, you requested {} tokens ({prompt_len} in the messages, {m} in the completion). Please reduce the length of the messages or completion.",
                    prompt_len + m
                ))
                .with_param("max_tokens"))
            }
            Some(m) => m,
            None => context - prompt_len,
        };
        let mut req = EngineRequest::new(built.prompt, max_tokens);
        req.sampling = generation.sampling(&options.generation_defaults, seed);
        req.n = generation.n;
        req.stop_strings = generation.stop.clone();
        req.stop_token_ids = generation.stop_token_ids.clone();
        req.ignore_eos = generation.ignore_eos;
        req.logprobs = generation.logprobs;
        req.priority = generation.priority;
        req.special_tokens = special_tokens;
        Ok(req)
    }

    /// Queues prompt building and submission on a worker; the reply waits for its result.
    fn start(
        &self,
        build: impl FnOnce(&PromptBuilder) -> Result<BuiltPrompt, ApiError> + Send + 'static,
        make: impl FnOnce(BuiltPrompt) -> Result<EngineRequest, ApiError> + Send + 'static,
    ) -> std::sync::mpsc::Receiver<StartResult> {
        let (tx, rx) = channel();
        let builder = self.builder.clone();
        let engine = self.engine.clone();
        let waker = self.waker.clone();
        let queued = self.workers.run(move || {
            let result = build(&builder).and_then(|built| {
                let (images, videos) = (built.image_tokens, built.video_tokens);
                let req = make(built)?;
                let prompt_tokens = req.prompt.ids.len();
                let stream = engine.submit(req).map_err(|e| ApiError::bad_request(e.to_string()))?;
                Ok(Started { stream, prompt_tokens, image_tokens: images, video_tokens: videos })
            });
            let _ = tx.send(result);
            let _ = waker.wake();
        });
        if !queued {
            let (tx, rx) = channel();
            let _ = tx.send(Err(ApiError::new(503, "the server is shutting down")));
            return rx;
        }
        rx
    }

    fn chat(&mut self, req: &Request, arrived: Instant) -> Result<Reply, ApiError> {
        let chat = ChatRequest::parse(&req.body, self.tokenizer().vocab_size())?;
        let model = self.check_model(chat.model.as_deref())?;
        let (id, seed) = self.request_id("chatcmpl");
        let tools = (self.options.tool_call_parser && chat.tool_choice.parses_calls())
            .then(|| ToolSchemas::from_openai_tools(&chat.tools));
        let parse = ParseOptions {
            reasoning: self.options.reasoning_parser.then_some(chat.reasoning),
            tools,
            id_seed: seed,
            think_end: self.tokenizer().token_to_id("</think>"),
        };
        let spec = ReplySpec {
            id,
            model,
            api: Api::Chat(parse),
            n: chat.generation.n,
            stream: chat.stream,
            include_usage: chat.include_usage,
            continuous_usage_stats: chat.continuous_usage_stats,
            logprobs: chat.generation.logprobs,
        };
        let special = self.special_tokens(chat.generation.skip_special_tokens);
        let options = self.options.clone();
        let chat = Arc::new(chat);
        let for_make = chat.clone();
        let started = self.start(
            move |b| b.chat(&chat),
            move |built| {
                let mut r = Self::engine_request(&options, &for_make.generation, built, seed, special)?;
                r.thinking_budget = for_make.thinking_budget;
                Ok(r)
            },
        );
        Ok(Reply::Later(Box::new(GenerationReply::new(self.reply.clone(), spec, started, arrived))))
    }

    fn completion(&mut self, req: &Request, arrived: Instant) -> Result<Reply, ApiError> {
        let completion = CompletionRequest::parse(&req.body, self.tokenizer().vocab_size())?;
        let model = self.check_model(completion.model.as_deref())?;
        let (id, seed) = self.request_id("cmpl");
        let echo = match (&completion.prompt, completion.echo) {
            (_, false) => None,
            (crate::openai::request::CompletionPrompt::Text(t), true) => Some(t.clone()),
            (crate::openai::request::CompletionPrompt::Ids(ids), true) => {
                Some(self.tokenizer().decode(ids, false).map_err(|e| ApiError::new(500, e.to_string()))?)
            }
        };
        let spec = ReplySpec {
            id,
            model,
            api: Api::Completion { echo },
            n: completion.generation.n,
            stream: completion.stream,
            include_usage: completion.include_usage,
            continuous_usage_stats: false,
            logprobs: completion.generation.logprobs,
        };
        let special = self.special_tokens(completion.generation.skip_special_tokens);
        let options = self.options.clone();
        let completion = Arc::new(completion);
        let for_make = completion.clone();
        let started = self.start(
            move |b| b.completion(&completion),
            move |built| Self::engine_request(&options, &for_make.generation, built, seed, special),
        );
        Ok(Reply::Later(Box::new(GenerationReply::new(self.reply.clone(), spec, started, arrived))))
    }

    /// `skip_special_tokens: true` keeps GLM's reasoning, tool-call and box tags, which the parsers and clients
    /// read (SGLang turns skipping off whenever tools are active for the same reason).
    fn special_tokens(&self, skip: bool) -> SpecialTokens {
        if skip {
            SpecialTokens::glm_output_tags(self.tokenizer())
        } else {
            SpecialTokens::Keep
        }
    }

    /// `/health_generate`: a one-token generation through the whole path.
    fn health_generate(&mut self, arrived: Instant) -> Reply {
        let body = br#"{"prompt": [0], "max_tokens": 1, "temperature": 0}"#;
        let req = Request {
            method: "POST".into(),
            target: "/v1/completions".into(),
            headers: Vec::new(),
            body: body.to_vec(),
            keep_alive: true,
        };
        match self.completion(&req, arrived) {
            Ok(reply) => reply,
            Err(e) => Reply::Now(e.to_response()),
        }
    }

    fn route(&mut self, req: &Request, arrived: Instant) -> Result<Reply, ApiError> {
        let path = req.path().trim_end_matches('/');
        let method = req.method.as_str();
        if method == "OPTIONS" {
            let mut r = Response::text(204, "text/plain", Vec::new());
            r.headers.push(("Access-Control-Allow-Methods".into(), "GET, POST, OPTIONS".into()));
            r.headers.push(("Access-Control-Allow-Headers".into(), "Authorization, Content-Type".into()));
            r.headers.push(("Access-Control-Max-Age".into(), "86400".into()));
            return Ok(Reply::Now(r));
        }
        let public = matches!(path, "/health" | "/health_generate" | "/ping" | "/metrics");
        if !public && !self.authorized(req) {
            return Err(ApiError::new(401, "Incorrect API key provided."));
        }
        let now = |r: Response| Ok(Reply::Now(r));
        match (method, path) {
            ("POST", "/v1/chat/completions") => self.chat(req, arrived),
            ("POST", "/v1/completions") => self.completion(req, arrived),
            ("GET", "/v1/models") => now(self.models()),
            ("GET", p) if p.starts_with("/v1/models/") => {
                let id = &p["/v1/models/".len()..];
                if id == self.options.served_model_name {
                    let all = self.models();
                    let body: Value = serde_json::from_slice(&all.body).unwrap_or(Value::Null);
                    now(json_response(200, body["data"][0].clone()))
                } else {
                    Err(ApiError::new(404, format!("The model `{id}` does not exist.")).with_param("model"))
                }
            }
            ("GET", "/health") | ("GET", "/ping") => now(Response::text(200, "text/plain", Vec::new())),
            ("GET", "/health_generate") => Ok(self.health_generate(arrived)),
            ("GET", "/get_model_info") | ("GET", "/model_info") => now(self.model_info()),
            ("GET", "/metrics") => now(self.metrics_text()),
            (_, "/v1/chat/completions" | "/v1/completions") => {
                Err(ApiError::new(405, format!("{method} is not allowed here; use POST")))
            }
            _ => Err(ApiError::new(404, format!("no route for {method} {path}"))),
        }
    }
}

impl Service for App {
    fn handle(&mut self, request: Request) -> Reply {
        let arrived = Instant::now();
        Metrics::add(&self.metrics().http_requests, 1);
        match self.route(&request, arrived) {
            Ok(Reply::Now(r)) => {
                self.metrics().response(r.status);
                Reply::Now(with_cors(r))
            }
            Ok(Reply::Later(l)) => Reply::Later(l),
            Err(e) => {
                self.metrics().response(e.status);
                crate::log::log(crate::log::Level::Debug, &format!("{} {} -> {}", request.method, request.target, e));
                Reply::Now(with_cors(e.to_response()))
            }
        }
    }
}
