//! One choice of a chat completion as it streams: generated text split into reasoning, content and tool calls by
//! the glm45 parsers, with the token accounting usage needs. The non-streaming response uses the same parsers
//! over the whole text, so both APIs split an output the same way.
use glmv_runtime::{
    engine::{FinishReason, MatchedStop, TokenInfo},
    text::{ReasoningOptions, ReasoningParser, ToolCall, ToolCallDelta, ToolCallParser, ToolEvent, ToolSchemas},
};

/// A piece of a streamed delta, in output order.
#[derive(Debug, Clone, PartialEq)]
pub enum DeltaPiece {
    Reasoning(String),
    Content(String),
    ToolCall(ToolCallDelta),
}

/// How a request's output is parsed (from the server flags and the request).
#[derive(Debug, Clone)]
pub struct ParseOptions {
    /// `--reasoning-parser glm45` was given.
    pub reasoning: Option<ReasoningOptions>,
    /// `--tool-call-parser glm45` was given and the request's tool_choice parses calls.
    pub tools: Option<ToolSchemas>,
    /// Seeds the tool-call ids.
    pub id_seed: u64,
    /// Id of `</think>`, for `reasoning_tokens`.
    pub think_end: Option<u32>,
}

pub struct ChoiceState {
    reasoning: Option<ReasoningParser>,
    tools: Option<ToolCallParser>,
    think_end: Option<u32>,
    /// Everything generated, for the non-streaming parse.
    pub text: String,
    pub tokens: Vec<TokenInfo>,
    /// Output tokens up to and including `</think>`, once it came.
    reasoning_tokens: Option<usize>,
    /// The output ended inside reasoning without being promoted to content (cut by the length limit).
    ended_in_reasoning: bool,
    opts: ParseOptions,
    pub finish: Option<(FinishReason, Option<MatchedStop>)>,
    pub has_tool_calls: bool,
}

impl ChoiceState {
    pub fn new(opts: &ParseOptions) -> Self {
        ChoiceState {
            reasoning: opts.reasoning.map(ReasoningParser::new),
            tools: opts.tools.clone().map(|schemas| ToolCallParser::new(schemas, opts.id_seed)),
            think_end: opts.think_end,
            text: String::new(),
            tokens: Vec::new(),
            reasoning_tokens: None,
            ended_in_reasoning: false,
            opts: opts.clone(),
            finish: None,
            has_tool_calls: false,
        }
    }

    /// A generated token and its text: the delta pieces ready to stream.
    pub fn push(&mut self, token: TokenInfo, text: &str) -> Vec<DeltaPiece> {
        if self.reasoning_tokens.is_none() && Some(token.id) == self.think_end {
            self.reasoning_tokens = Some(self.tokens.len() + 1);
        }
        self.tokens.push(token);
        self.text.push_str(text);
        let (reasoning, content) = match &mut self.reasoning {
            Some(p) => {
                let d = p.push(text);
                (d.reasoning, d.content)
            }
            None => (String::new(), text.to_string()),
        };
        self.pieces(reasoning, content, false)
    }

    /// End of output: what the parsers still held. `stopped` is a normal stop (EOS, stop token or string), after
    /// which an answer that never left reasoning is content (the model skipped thinking).
    pub fn finish(&mut self, reason: FinishReason, matched_stop: Option<MatchedStop>) -> Vec<DeltaPiece> {
        self.finish = Some((reason, matched_stop));
        let (reasoning, content) = match &mut self.reasoning {
            Some(p) => {
                self.ended_in_reasoning = p.in_reasoning() && reason != FinishReason::Stop;
                let d = p.finish(reason == FinishReason::Stop);
                (d.reasoning, d.content)
            }
            None => (String::new(), String::new()),
        };
        self.pieces(reasoning, content, true)
    }

    fn pieces(&mut self, reasoning: String, content: String, last: bool) -> Vec<DeltaPiece> {
        let mut out = Vec::new();
        if !reasoning.is_empty() {
            out.push(DeltaPiece::Reasoning(reasoning));
        }
        let events = match &mut self.tools {
            Some(parser) => {
                let mut events = if content.is_empty() { Vec::new() } else { parser.push(&content) };
                if last {
                    events.extend(parser.finish());
                }
                events
            }
            None if content.is_empty() => Vec::new(),
            None => vec![ToolEvent::Content(content)],
        };
        for event in events {
            match event {
                ToolEvent::Content(c) if c.is_empty() => {}
                ToolEvent::Content(c) => out.push(DeltaPiece::Content(c)),
                ToolEvent::Call(call) => {
                    self.has_tool_calls = true;
                    out.push(DeltaPiece::ToolCall(call));
                }
            }
        }
        out
    }

    /// SGLang's `reasoning_tokens`: output tokens up to and including `</think>`; all of them when the output
    /// was cut inside reasoning.
    pub fn reasoning_tokens(&self) -> usize {
        match self.reasoning_tokens {
            Some(n) => n,
            None if self.ended_in_reasoning => self.tokens.len(),
            None => 0,
        }
    }

    /// The non-streaming message: (reasoning_content, content, tool calls), parsed from the whole output.
    pub fn message(&self) -> (Option<String>, String, Vec<ToolCall>) {
        let promote = matches!(self.finish, Some((FinishReason::Stop, _)));
        let (reasoning, content) = match self.opts.reasoning {
            Some(opts) => {
                let out = ReasoningParser::parse(opts, &self.text, promote);
                (out.reasoning, out.content)
            }
            None => (None, self.text.clone()),
        };
        match &self.opts.tools {
            Some(schemas) => {
                let parsed = ToolCallParser::parse(schemas.clone(), self.opts.id_seed, &content);
                (reasoning, parsed.content, parsed.calls)
            }
            None => (reasoning, content, Vec::new()),
        }
    }

    /// `finish_reason` as the API reports it.
    pub fn finish_reason(&self) -> Option<&'static str> {
        self.finish.as_ref().map(|(reason, _)| match reason {
            FinishReason::Stop if self.has_tool_calls => "tool_calls",
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        })
    }

    /// SGLang's `matched_stop`: the stop token's id or the stop string.
    pub fn matched_stop(&self) -> serde_json::Value {
        match self.finish.as_ref().and_then(|(_, m)| m.as_ref()) {
            None => serde_json::Value::Null,
            Some(MatchedStop::Token(id)) => (*id).into(),
            Some(MatchedStop::Text(s)) => s.clone().into(),
        }
    }
}
