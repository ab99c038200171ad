//! The request bodies of `/v1/chat/completions` and `/v1/completions`, read into typed values. Validation that
//! needs only the body happens here; what needs the model (context length, media) happens when the prompt is built.
use glmv_runtime::{
    engine::sampler::SamplingParams,
    text::{ReasoningOptions, ToolChoice},
};
use serde_json::{Map, Value};

use super::{fields::Fields, ApiError};

/// The most completions one request may ask for.
pub const MAX_N: i64 = 16;
/// The most alternatives `top_logprobs` may ask for.
pub const MAX_TOP_LOGPROBS: i64 = 20;

/// Sampling and stopping fields shared by both endpoints. `None` means "the checkpoint's default".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generation {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
    pub max_tokens: Option<usize>,
    pub n: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub skip_special_tokens: bool,
    /// Sampled token log-probabilities, with this many alternatives.
    pub logprobs: Option<usize>,
    pub priority: i32,
}

impl Generation {
    fn read(f: &Fields, vocab: usize) -> Result<Self, ApiError> {
        for unsupported in ["regex", "ebnf", "json_schema"] {
            if f.get(unsupported).is_some() {
                return Err(ApiError::invalid_field(unsupported, "constrained decoding is not supported yet"));
            }
        }
        let mut logit_bias = Vec::new();
        if let Some(bias) = f.object("logit_bias")? {
            for (k, v) in bias {
                let id = k.parse::<u32>().ok().filter(|&id| (id as usize) < vocab);
                let value = v.as_f64().filter(|x| (-100.0..=100.0).contains(x));
                match (id, value) {
                    (Some(id), Some(value)) => logit_bias.push((id, value as f32)),
                    _ => {
                        return Err(ApiError::invalid_field(
                            "logit_bias",
                            format!("{k:?}: keys must be token ids below {vocab} and values between -100 and 100"),
                        ))
                    }
                }
            }
        }
        // top_k: -1 and 0 both mean off, as in SGLang.
        let top_k = f.int_in("top_k", -1, i64::from(u32::MAX))?.map(|k| k.max(0) as usize);
        let seed = match f.get("seed") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .or_else(|| v.as_i64().map(|s| s as u64))
                    .ok_or_else(|| ApiError::invalid_field("seed", "must be an integer"))?,
            ),
        };
        Ok(Generation {
            temperature: f.f64_in("temperature", 0.0, 100.0)?.map(|x| x as f32),
            top_p: f.f64_in("top_p", f64::MIN_POSITIVE, 1.0)?.map(|x| x as f32),
            top_k,
            min_p: f.f64_in("min_p", 0.0, 1.0)?.map(|x| x as f32),
            repetition_penalty: f.f64_in("repetition_penalty", f64::MIN_POSITIVE, 10.0)?.map(|x| x as f32),
            frequency_penalty: f.f64_in("frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
            presence_penalty: f.f64_in("presence_penalty", -2.0, 2.0)?.unwrap_or(0.0) as f32,
            logit_bias,
            seed,
            max_tokens: None,
            n: f.int_in("n", 1, MAX_N)?.unwrap_or(1) as usize,
            stop: f.strings("stop")?,
            stop_token_ids: f.ids("stop_token_ids", vocab)?,
            ignore_eos: f.bool("ignore_eos")?.unwrap_or(false),
            skip_special_tokens: f.bool("skip_special_tokens")?.unwrap_or(true),
            logprobs: None,
            priority: f.int_in("priority", i64::from(i32::MIN), i64::from(i32::MAX))?.unwrap_or(0) as i32,
        })
    }

    /// Fills what the request left unset from the checkpoint's `generation_config.json`, then the OpenAI defaults.
    pub fn sampling(&self, defaults: &glmv_runtime::config::GenerationDefaults, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature.or(defaults.temperature.map(|t| t as f32)).unwrap_or(1.0),
            top_p: self.top_p.or(defaults.top_p.map(|t| t as f32)).unwrap_or(1.0),
            top_k: self.top_k.or(defaults.top_k).unwrap_or(0),
            min_p: self.min_p.unwrap_or(0.0),
            seed: self.seed.unwrap_or(seed),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            logit_bias: self.logit_bias.clone(),
        }
    }
}

/// Where a media part sits in the request, for error messages (`messages[1].content[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPart {
    pub kind: MediaKind,
    pub url: String,
    pub param: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: Option<String>,
    /// As the client sent them; the template layer converts them.
    pub messages: Vec<Value>,
    /// Every image and video part, in prompt order.
    pub media: Vec<MediaPart>,
    pub stream: bool,
    pub include_usage: bool,
    pub continuous_usage_stats: bool,
    pub generation: Generation,
    pub tools: Vec<Value>,
    pub tool_choice: ToolChoice,
    pub reasoning: ReasoningOptions,
    pub chat_template_kwargs: Map<String, Value>,
    pub add_generation_prompt: bool,
    pub continue_final_message: bool,
    /// After this many tokens of an open thought, the model is made to close it (`thinking.budget_tokens`).
    pub thinking_budget: Option<usize>,
}

/// The top-level object of a body, with a client's `extra_body` object merged in: the OpenAI SDKs merge it
/// themselves, raw-HTTP users who copy SDK examples send it literally and would otherwise lose their
/// `chat_template_kwargs` silently.
fn body_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    if let Some(Value::Object(extra)) = obj.remove("extra_body") {
        for (k, v) in extra {
            obj.entry(k).or_insert(v);
        }
    }
    Ok(obj)
}

fn reject_response_format(f: &Fields) -> Result<(), ApiError> {
    if let Some(format) = f.object("response_format")? {
        match format.get("type").and_then(Value::as_str) {
            None | Some("text") => {}
            Some(other) => {
                return Err(ApiError::invalid_field(
                    "response_format",
                    format!(
                        "{other:?} (structured output) is not supported by this server yet; send \"text\" or omit it"
                    ),
                ))
            }
        }
    }
    Ok(())
}

fn stream_options(f: &Fields, stream: bool) -> Result<(bool, bool), ApiError> {
    let Some(opts) = f.object("stream_options")? else { return Ok((false, false)) };
    if !stream {
        return Err(ApiError::invalid_field("stream_options", "is only allowed when stream is true"));
    }
    let o = Fields::new(opts);
    Ok((
        o.bool("include_usage").map_err(|e| e.with_param("stream_options.include_usage"))?.unwrap_or(false),
        o.bool("continuous_usage_stats")?.unwrap_or(false),
    ))
}

const ROLES: [&str; 6] = ["system", "developer", "user", "assistant", "tool", "function"];

impl ChatRequest {
    pub fn parse(body: &[u8], vocab: usize) -> Result<Self, ApiError> {
        let obj = body_object(body)?;
        let f = Fields::new(&obj);
        reject_response_format(&f)?;
        let messages = f.array("messages")?.ok_or_else(|| ApiError::invalid_field("messages", "is required"))?;
        if messages.is_empty() {
            return Err(ApiError::invalid_field("messages", "Messages cannot be empty."));
        }
        let mut media = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let param = format!("messages[{i}]");
            let Value::Object(m) = m else { return Err(ApiError::invalid_field(&param, "must be an object")) };
            let role = m.get("role").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
            if !ROLES.contains(&role.as_str()) {
                return Err(ApiError::invalid_field(
                    &format!("{param}.role"),
                    format!("must be one of {}", ROLES.join(", ")),
                ));
            }
            match m.get("content") {
                None | Some(Value::Null) | Some(Value::String(_)) => {}
                Some(Value::Array(parts)) => {
                    for (j, part) in parts.iter().enumerate() {
                        if let Some(p) = media_part(part, &format!("{param}.content[{j}]"))? {
                            media.push(p);
                        }
                    }
                }
                Some(_) => {
                    return Err(ApiError::invalid_field(
                        &format!("{param}.content"),
                        "must be a string or an array of content parts",
                    ))
                }
            }
        }
        let stream = f.bool("stream")?.unwrap_or(false);
        let (include_usage, continuous_usage_stats) = stream_options(&f, stream)?;
        let mut generation = Generation::read(&f, vocab)?;
        let max_tokens = match f.int_in("max_completion_tokens", 1, i64::MAX)? {
            Some(m) => Some(m),
            None => f.int_in("max_tokens", 1, i64::MAX)?,
        };
        generation.max_tokens = max_tokens.map(|m| m as usize);
        if f.bool("logprobs")?.unwrap_or(false) {
            generation.logprobs = Some(f.int_in("top_logprobs", 0, MAX_TOP_LOGPROBS)?.unwrap_or(0) as usize);
        }
        let tools = f.array("tools")?.cloned().unwrap_or_default();
        let tool_choice = ToolChoice::from_request(f.get("tool_choice"), &tools)
            .map_err(|e| ApiError::bad_request(e.to_string()).with_param("tool_choice"))?;
        let chat_template_kwargs = f.object("chat_template_kwargs")?.cloned().unwrap_or_default();
        let kwargs_value = Value::Object(chat_template_kwargs.clone());
        let reasoning_effort = match f.get("reasoning_effort") {
            Some(Value::String(s)) => Some(s.as_str()),
            _ => None,
        };
        let reasoning = ReasoningOptions::from_request(
            Some(&kwargs_value),
            reasoning_effort,
            f.bool("separate_reasoning")?,
            f.bool("stream_reasoning")?,
        );
        let thinking_budget = match f.object("thinking")? {
            Some(t) => Fields::new(t).int_in("budget_tokens", 1, i64::MAX)?.map(|b| b as usize),
            None => f.int_in("thinking_budget", 1, i64::MAX)?.map(|b| b as usize),
        };
        let continue_final_message = f.bool("continue_final_message")?.unwrap_or(false);
        Ok(ChatRequest {
            model: f.str("model")?.map(str::to_string),
            messages: messages.clone(),
            media,
            stream,
            include_usage,
            continuous_usage_stats,
            generation,
            tools,
            tool_choice,
            reasoning,
            chat_template_kwargs,
            add_generation_prompt: f.bool("add_generation_prompt")?.unwrap_or(!continue_final_message),
            continue_final_message,
            thinking_budget,
        })
    }
}

/// An `image_url` / `video_url` part's URL, or None for other parts; unknown part types are refused.
fn media_part(part: &Value, param: &str) -> Result<Option<MediaPart>, ApiError> {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
    let (kind, key) = match kind {
        "text" => return Ok(None),
        "image_url" | "image" => (MediaKind::Image, "image_url"),
        "video_url" | "video" => (MediaKind::Video, "video_url"),
        other => return Err(ApiError::invalid_field(param, format!("unknown content part type {other:?}"))),
    };
    let holder = part.get(key).or_else(|| part.get(kind_key(kind)));
    let url = match holder {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => match o.get("url") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(ApiError::invalid_field(&format!("{param}.{key}.url"), "is required and must be a string"))
            }
        },
        _ => return Err(ApiError::invalid_field(&format!("{param}.{key}"), "is required")),
    };
    Ok(Some(MediaPart { kind, url, param: param.to_string() }))
}

fn kind_key(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Image => "image",
        MediaKind::Video => "video",
    }
}

/// `/v1/completions`: a prompt as text or token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: CompletionPrompt,
    pub stream: bool,
    pub include_usage: bool,
    pub echo: bool,
    pub generation: Generation,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CompletionPrompt {
    Text(String),
    Ids(Vec<u32>),
}

impl CompletionRequest {
    pub fn parse(body: &[u8], vocab: usize) -> Result<Self, ApiError> {
        let obj = body_object(body)?;
        let f = Fields::new(&obj);
        reject_response_format(&f)?;
        if f.get("suffix").is_some() {
            return Err(ApiError::invalid_field("suffix", "is not supported (GLM-V has no fill-in-the-middle)"));
        }
        let prompt = match f.get("prompt") {
            None => return Err(ApiError::invalid_field("prompt", "is required")),
            Some(Value::String(s)) => CompletionPrompt::Text(s.clone()),
            Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
                CompletionPrompt::Text(items[0].as_str().unwrap_or_default().to_string())
            }
            Some(Value::Array(items)) if items.len() == 1 && items[0].is_array() => {
                let wrapped: Map<String, Value> = [("prompt".to_string(), items[0].clone())].into_iter().collect();
                CompletionPrompt::Ids(Fields::new(&wrapped).ids("prompt", vocab)?)
            }
            Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
                CompletionPrompt::Ids(f.ids("prompt", vocab)?)
            }
            Some(_) => {
                return Err(ApiError::invalid_field(
                    "prompt",
                    "must be a string or an array of token ids (one prompt per request)",
                ))
            }
        };
        let stream = f.bool("stream")?.unwrap_or(false);
        let (include_usage, _) = stream_options(&f, stream)?;
        let mut generation = Generation::read(&f, vocab)?;
        // OpenAI's completions default.
        generation.max_tokens = Some(f.int_in("max_tokens", 1, i64::MAX)?.unwrap_or(16) as usize);
        generation.logprobs = f.int_in("logprobs", 0, MAX_TOP_LOGPROBS)?.map(|k| k as usize);
        Ok(CompletionRequest {
            model: f.str("model")?.map(str::to_string),
            prompt,
            stream,
            include_usage,
            echo: f.bool("echo")?.unwrap_or(false),
            generation,
        })
    }
}
