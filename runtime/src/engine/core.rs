//! The engine: requests in, events out, one batched forward per step over the scheduler's plan.
//!
//! Single-threaded and step-driven so that it is testable as it is; the server runs it on its own thread.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
};

use super::{
    blocks::{block_hash, BlockPool},
    sampler::{apply_penalties, log_softmax, sample, Draw, Rng, SamplingParams},
    scheduler::{Chunk, Scheduler, SchedulerConfig, SchedulerStats, SeqId, SubmitError},
};
use crate::{
    backend::{Backend, ForwardBatch, KvDtype, SeqSpan},
    pipeline::{Pipeline, Prompt},
    text::{Detokenizer, SpecialTokens},
    Error, Result,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    pub max_running: usize,
    /// Prefill tokens per step.
    pub prefill_budget: usize,
    pub max_context: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    /// Bytes of vision embeddings kept for repeated media.
    pub mm_cache_bytes: usize,
    pub kv_dtype: KvDtype,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub prompt: Prompt,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    /// Completions sampled from the prompt (seeds seed, seed + 1, ...).
    pub n: usize,
    pub stop_strings: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Log-probability of each sampled token plus this many top alternatives.
    pub logprobs: Option<usize>,
    /// After this many tokens of an open `<think>`, force `\n</think>`.
    pub thinking_budget: Option<usize>,
    /// Which special tokens appear in the text (ids are reported either way).
    pub special_tokens: SpecialTokens,
    /// Higher runs first.
    pub priority: i32,
}

impl Request {
    /// Where the next token is chosen. When only the choice reads the raw logits (no logprobs, bias or penalty), the
    /// backend makes it where the logits are: the argmax, or a draw with the generator's next number (taken here, so
    /// that a request consumes its generator the same way whatever it is batched with); else on the host.
    fn pick(&self, rng: &mut Rng) -> Pick {
        if self.logprobs.is_some() || !self.sampling.samples_raw_logits() {
            Pick::Host
        } else if self.sampling.temperature <= 0.0 {
            Pick::Greedy
        } else {
            Pick::Draw(Draw::new(&self.sampling, rng.next_f32()))
        }
    }

    pub fn new(prompt: Prompt, max_tokens: usize) -> Self {
        Request {
            prompt,
            sampling: SamplingParams::default(),
            max_tokens,
            n: 1,
            stop_strings: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            thinking_budget: None,
            special_tokens: SpecialTokens::Skip,
            priority: 0,
        }
    }
}

pub type RequestId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token or a stop string.
    Stop,
    /// max_tokens or the context length.
    Length,
    Abort,
}

/// What ended a completion that stopped: a stop or end-of-sequence token, or a stop string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchedStop {
    Token(u32),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    pub id: u32,
    pub logprob: Option<f32>,
    pub top_logprobs: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// A generated token and the text it completes (possibly empty while a character or a possible stop string is
    /// incomplete).
    Token {
        token: TokenInfo,
        text: String,
    },
    Finished {
        reason: FinishReason,
        matched_stop: Option<MatchedStop>,
        usage: Usage,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub request: RequestId,
    /// Which of the request's n completions.
    pub index: usize,
    pub kind: EventKind,
}

/// Token ids the thinking budget needs, from the tokenizer.
#[derive(Debug, Clone, Copy)]
struct ThinkTokens {
    open: u32,
    close: u32,
    newline: u32,
}

/// One completion being generated.
struct SeqRun {
    request: RequestId,
    index: usize,
    req: Arc<Request>,
    ids: Vec<u32>,
    prompt_len: usize,
    positions: Arc<Vec<[u32; 3]>>,
    rope_delta: i64,
    /// For each prompt position holding a placeholder, its row in `vision`.
    vision_rows: Arc<Vec<(usize, usize)>>,
    vision: Arc<Vec<f32>>,
    rng: Rng,
    counts: BTreeMap<u32, u32>,
    detok: Detokenizer,
    /// Decoded output so far.
    text: String,
    /// Bytes of `text` already sent.
    emitted: usize,
    cached_tokens: Option<usize>,
}

/// Vision embeddings of recently seen media, bounded in bytes, least recently used out first.
struct MmCache {
    limit: usize,
    bytes: usize,
    entries: HashMap<u64, Arc<Vec<f32>>>,
    order: VecDeque<u64>,
    hits: u64,
}

impl MmCache {
    fn get(&mut self, hash: u64) -> Option<Arc<Vec<f32>>> {
        let hit = self.entries.get(&hash).cloned()?;
        self.hits += 1;
        self.order.retain(|&h| h != hash);
        self.order.push_back(hash);
        Some(hit)
    }

    fn put(&mut self, hash: u64, rows: Arc<Vec<f32>>) {
        let size = rows.len() * 4;
        if size > self.limit || self.entries.contains_key(&hash) {
            return;
        }
        while self.bytes + size > self.limit {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(e) = self.entries.remove(&old) {
                self.bytes -= e.len() * 4;
            }
        }
        self.bytes += size;
        self.entries.insert(hash, rows);
        self.order.push_back(hash);
    }
}

pub struct Engine<B: Backend> {
    pub pipeline: Pipeline<B>,
    cache: B::KvCache,
    scheduler: Scheduler,
    seqs: HashMap<SeqId, SeqRun>,
    mm_cache: MmCache,
    think: Option<ThinkTokens>,
    next_request: RequestId,
    pub config: EngineConfig,
    /// The decode step sizes run ahead at start-up (the backend's recordings).
    pub decode_steps_ahead: Vec<usize>,
}

/// Sequence ids pack the request id and the completion index.
const MAX_N: u64 = 1 << 8;

impl<B: Backend> Engine<B> {
    pub fn new(pipeline: Pipeline<B>, config: EngineConfig) -> Result<Self> {
        let spec = pipeline.model.kv_cache_spec(config.num_blocks, config.block_size, config.kv_dtype);
        let cache = pipeline.backend.kv_cache(&spec)?;
        let scheduler = Scheduler::new(
            SchedulerConfig {
                max_running: config.max_running,
                prefill_budget: config.prefill_budget.max(1),
                max_context: config.max_context,
            },
            BlockPool::new(config.num_blocks, config.block_size),
        );
        let tk = &pipeline.tokenizer;
        let newline = tk.encode("\n").ok().filter(|v| v.len() == 1).map(|v| v[0]);
        let think = match (tk.token_to_id("<think>"), tk.token_to_id("</think>"), newline) {
            (Some(open), Some(close), Some(newline)) => Some(ThinkTokens { open, close, newline }),
            _ => None,
        };
        let mm_cache = MmCache {
            limit: config.mm_cache_bytes,
            bytes: 0,
            entries: HashMap::new(),
            order: VecDeque::new(),
            hits: 0,
        };
        let mut sizes = pipeline.backend.decode_rows_to_record();
        // Steps of more sequences than may run at once never come.
        if let Some(last) = sizes.iter().position(|&rows| rows >= config.max_running) {
            sizes.truncate(last + 1);
        }
        let mut engine = Engine {
            pipeline,
            cache,
            scheduler,
            seqs: HashMap::new(),
            mm_cache,
            think,
            next_request: 0,
            config,
            decode_steps_ahead: Vec::new(),
        };
        engine.run_decode_steps(&sizes)?;
        engine.decode_steps_ahead = sizes;
        Ok(engine)
    }

    /// One decode step of each of `sizes` rows, outputs discarded: how a backend that records decode steps at their
    /// first run (CUDA graphs) records them before serving; [`Engine::new`] runs the sizes the backend names. Every
    /// row is a one-token sequence at position 0 in KV block 0 (its table padded with block 0 to the longest a
    /// sequence can have), which nothing holds before the first request and whose contents are overwritten before
    /// they are read by whoever gets it.
    pub fn run_decode_steps(&mut self, sizes: &[usize]) -> Result<()> {
        // Later, block 0 may hold a request's keys or a cached prefix.
        if self.next_request > 0 {
            return Err(Error::InvalidInput("decode steps are run ahead only before the first request".into()));
        }
        let p = &self.pipeline;
        // Block tables as long as a sequence's can get, so that the buffers a recording reads them from never have
        // to grow (which would drop the recording).
        let table = vec![0; self.config.max_context.div_ceil(self.config.block_size).max(1)];
        for &rows in sizes {
            let batch = ForwardBatch {
                seqs: (0..rows)
                    .map(|i| SeqSpan { rows: i..i + 1, context_len: 0, block_table: table.clone() })
                    .collect(),
                positions: vec![[0; 3]; rows],
            };
            let hidden = p.model.embed(&p.backend, &vec![0; rows])?;
            p.model.forward(&p.backend, hidden, &batch, &mut self.cache)?;
        }
        Ok(())
    }

    /// Queues a request; its events come out of [`Engine::step`]. Rejects what can never run, with the numbers.
    pub fn submit(&mut self, req: Request) -> Result<RequestId> {
        let p = &self.pipeline;
        if req.n == 0 || req.n as u64 > MAX_N {
            return Err(Error::InvalidInput(format!("n must be between 1 and {MAX_N}")));
        }
        if req.max_tokens == 0 {
            return Err(Error::InvalidInput("max_tokens must be at least 1".into()));
        }
        if req.prompt.ids.is_empty() {
            return Err(Error::InvalidInput("the prompt is empty".into()));
        }
        p.check_prompt_ids(&req.prompt.ids)?;
        let (positions, rope_delta) = p.positions(&req.prompt)?;
        let (vision, vision_rows, keys) = self.vision_for(&req.prompt)?;
        let id = self.next_request;
        self.next_request += 1;
        let req = Arc::new(req);
        let (positions, vision, vision_rows) = (Arc::new(positions), Arc::new(vision), Arc::new(vision_rows));
        for index in 0..req.n {
            let seq = id * MAX_N + index as u64;
            let submitted = self.scheduler.submit(seq, keys.clone(), req.max_tokens, req.priority);
            if let Err(e) = submitted {
                (0..index).for_each(|i| self.remove_seq(id * MAX_N + i as u64));
                return Err(submit_error(e));
            }
            self.seqs.insert(
                seq,
                SeqRun {
                    request: id,
                    index,
                    req: req.clone(),
                    ids: req.prompt.ids.clone(),
                    prompt_len: req.prompt.ids.len(),
                    positions: positions.clone(),
                    rope_delta,
                    vision_rows: vision_rows.clone(),
                    vision: vision.clone(),
                    rng: Rng::new(req.sampling.seed.wrapping_add(index as u64)),
                    counts: BTreeMap::new(),
                    detok: Detokenizer::new(&self.pipeline.tokenizer, req.special_tokens.clone()),
                    text: String::new(),
                    emitted: 0,
                    cached_tokens: None,
                },
            );
        }
        Ok(id)
    }

    /// Vision embeddings (through the cache), which placeholder position takes which row, and every prompt token's
    /// prefix-cache key (a placeholder's key is its media's content hash and its index in it).
    #[allow(clippy::type_complexity)]
    fn vision_for(&mut self, prompt: &Prompt) -> Result<(Vec<f32>, Vec<(usize, usize)>, Vec<u64>)> {
        let image = self.pipeline.config.tokens.image;
        let mut rows = Vec::new();
        let mut media_keys = Vec::new();
        for m in &prompt.media {
            let hash = m.content_hash();
            let embeds = match self.mm_cache.get(hash) {
                Some(e) => e,
                None => {
                    let e = Arc::new(self.pipeline.vision_embeddings(std::slice::from_ref(m))?);
                    self.mm_cache.put(hash, e.clone());
                    e
                }
            };
            let width = self.pipeline.model.config.hidden_size;
            for k in 0..embeds.len() / width {
                media_keys.push((1u64 << 63) | block_hash(hash, &[k as u64]) >> 1);
            }
            rows.extend_from_slice(&embeds);
        }
        let placeholders: Vec<usize> =
            prompt.ids.iter().enumerate().filter(|(_, &t)| t == image).map(|(i, _)| i).collect();
        if placeholders.len() != media_keys.len() {
            return Err(Error::InvalidInput(format!(
                "{} placeholder tokens for {} vision embeddings",
                placeholders.len(),
                media_keys.len()
            )));
        }
        let mut keys: Vec<u64> = prompt.ids.iter().map(|&t| t as u64).collect();
        for (row, &pos) in placeholders.iter().enumerate() {
            keys[pos] = media_keys[row];
        }
        Ok((rows, placeholders.into_iter().enumerate().map(|(row, pos)| (pos, row)).collect(), keys))
    }

    /// Stops a request wherever it is and frees its slots and KV blocks.
    pub fn abort(&mut self, request: RequestId) -> Vec<Event> {
        let seqs: Vec<SeqId> = self.seqs.iter().filter(|(_, s)| s.request == request).map(|(&id, _)| id).collect();
        let mut events = Vec::new();
        for seq in seqs {
            let usage = self.usage(seq);
            let index = self.seqs[&seq].index;
            self.remove_seq(seq);
            events.push(Event {
                request,
                index,
                kind: EventKind::Finished { reason: FinishReason::Abort, matched_stop: None, usage },
            });
        }
        events
    }

    pub fn has_work(&self) -> bool {
        !self.seqs.is_empty()
    }

    /// Whether any completion of `request` is still generating.
    pub fn is_running(&self, request: RequestId) -> bool {
        self.seqs.values().any(|s| s.request == request)
    }

    pub fn stats(&self) -> SchedulerStats {
        self.scheduler.stats()
    }

    /// Media whose vision embeddings came from the cache instead of the vision tower.
    pub fn mm_cache_hits(&self) -> u64 {
        self.mm_cache.hits
    }

    /// KV blocks of `block_size` tokens that fit in `bytes` of cache memory for this model and `dtype`
    /// (how `--mem-fraction-static` becomes a pool size).
    pub fn blocks_for_budget(pipeline: &Pipeline<B>, bytes: usize, block_size: usize, dtype: KvDtype) -> usize {
        let spec = pipeline.model.kv_cache_spec(1, block_size, dtype);
        let per_token = spec.num_layers * 2 * spec.num_kv_heads * dtype.head_bytes(spec.head_dim);
        bytes / (per_token * block_size).max(1)
    }

    fn remove_seq(&mut self, seq: SeqId) {
        self.scheduler.remove(seq);
        self.seqs.remove(&seq);
    }

    fn usage(&self, seq: SeqId) -> Usage {
        let s = &self.seqs[&seq];
        Usage {
            prompt_tokens: s.prompt_len,
            completion_tokens: s.ids.len() - s.prompt_len,
            cached_tokens: s.cached_tokens.unwrap_or(0),
        }
    }

    /// Runs one step: the scheduler's plan as one batched forward, then sampling and stop checks.
    pub fn step(&mut self) -> Result<Vec<Event>> {
        let plan = self.scheduler.schedule();
        if plan.chunks.is_empty() {
            return Ok(Vec::new());
        }
        for c in &plan.chunks {
            let cached = self.scheduler.cached_tokens(c.seq);
            self.seqs.get_mut(&c.seq).expect("planned sequence exists").cached_tokens.get_or_insert(cached);
        }
        let (rows, host_logits) = self.forward(&plan.chunks)?;
        self.scheduler.complete(&plan);
        let vocab = self.pipeline.model.vocab_size();
        let mut events = Vec::new();
        let sampling: Vec<&Chunk> = plan.chunks.iter().filter(|c| c.samples).collect();
        for (c, row) in sampling.iter().zip(rows) {
            let choice = match row {
                SampledRow::Chosen(token) => Choice::Token(token),
                SampledRow::OnHost(j, uniform) => Choice::Logits(&host_logits[j * vocab..(j + 1) * vocab], uniform),
            };
            self.advance(c.seq, choice, &mut events);
        }
        Ok(events)
    }

    /// One forward over all planned chunks. For the last row of each sampling chunk: its token, chosen on the
    /// backend's device, or the index of its logits in the returned host rows (when its request needs them, or the
    /// device left a draw to the host).
    fn forward(&mut self, chunks: &[Chunk]) -> Result<(Vec<SampledRow>, Vec<f32>)> {
        let p = &self.pipeline;
        let be = &p.backend;
        let width = p.model.config.hidden_size;
        let mut ids = Vec::new();
        let mut batch = ForwardBatch::default();
        let (mut vision_rows, mut vision_data) = (Vec::new(), Vec::new());
        let (mut sample_rows, mut picks) = (Vec::new(), Vec::new());
        for c in chunks {
            let s = self.seqs.get_mut(&c.seq).expect("planned sequence exists");
            let first = ids.len();
            for i in c.start..c.start + c.len {
                ids.push(s.ids[i]);
                batch.positions.push(if i < s.prompt_len {
                    s.positions[i]
                } else {
                    [(i as i64 + s.rope_delta).max(0) as u32; 3]
                });
            }
            for &(pos, row) in s.vision_rows.iter().filter(|(pos, _)| (c.start..c.start + c.len).contains(pos)) {
                vision_rows.push(first + pos - c.start);
                vision_data.extend_from_slice(&s.vision[row * width..(row + 1) * width]);
            }
            batch.seqs.push(SeqSpan {
                rows: first..ids.len(),
                context_len: c.start,
                block_table: self.scheduler.block_table(c.seq).to_vec(),
            });
            if c.samples {
                sample_rows.push(ids.len() - 1);
                picks.push(s.req.pick(&mut s.rng));
            }
        }
        let mut hidden = p.model.embed(be, &ids)?;
        if !vision_rows.is_empty() {
            let v = be.upload(vision_rows.len(), width, &vision_data)?;
            be.scatter_rows(&mut hidden, &vision_rows, &v)?;
        }
        let out = p.model.forward(be, hidden, &batch, &mut self.cache)?;
        if sample_rows.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let logits = p.model.logits_on_device(be, &out, &sample_rows)?;
        let mut chosen: Vec<Option<u32>> = vec![None; picks.len()];
        if picks.contains(&Pick::Greedy) {
            let greedy = be.argmax_rows(&logits)?;
            for (i, _) in picks.iter().enumerate().filter(|(_, p)| **p == Pick::Greedy) {
                chosen[i] = Some(greedy[i]);
            }
        }
        let (draw_rows, draws): (Vec<usize>, Vec<Draw>) = picks
            .iter()
            .enumerate()
            .filter_map(|(i, p)| if let Pick::Draw(d) = p { Some((i, *d)) } else { None })
            .unzip();
        if !draws.is_empty() {
            let drawn = match draw_rows.len() {
                n if n == picks.len() => be.sample_rows(&logits, &draws)?,
                _ => be.sample_rows(&be.select_rows(&logits, &draw_rows)?, &draws)?,
            };
            for (&i, token) in draw_rows.iter().zip(drawn) {
                chosen[i] = token;
            }
        }
        // Rows still open: their requests read the logits, or the device left the draw to the host.
        let host_rows: Vec<usize> = (0..picks.len()).filter(|&i| chosen[i].is_none()).collect();
        let host_logits = match host_rows.len() {
            0 => Vec::new(),
            n if n == picks.len() => be.to_host(&logits)?,
            _ => be.to_host(&be.select_rows(&logits, &host_rows)?)?,
        };
        let mut next_host = 0;
        let rows = picks
            .iter()
            .zip(chosen)
            .map(|(pick, token)| match token {
                Some(token) => SampledRow::Chosen(token),
                None => {
                    next_host += 1;
                    let uniform = if let Pick::Draw(d) = pick { Some(d.uniform) } else { None };
                    SampledRow::OnHost(next_host - 1, uniform)
                }
            })
            .collect();
        Ok((rows, host_logits))
    }

    /// Picks the next token of `seq` from its logits, emits it, and finishes the sequence if it should stop.
    fn advance(&mut self, seq: SeqId, logits: Choice<'_>, events: &mut Vec<Event>) {
        let eos = &self.pipeline.config.tokens.eos;
        let s = self.seqs.get_mut(&seq).expect("sampled sequence exists");
        let req = s.req.clone();
        let token = match forced_think_token(self.think, req.thinking_budget, &s.ids) {
            Some(t) => t,
            None => match logits {
                Choice::Token(token) => token,
                // A draw the device left to the host: its number was taken when the step was planned.
                Choice::Logits(logits, Some(uniform)) => Draw::new(&req.sampling, uniform).sample(logits),
                Choice::Logits(logits, None) => {
                    let mut processed = logits.to_vec();
                    apply_penalties(&mut processed, &req.sampling, &s.ids[..s.prompt_len], &s.counts);
                    sample(&processed, &req.sampling, &mut s.rng)
                }
            },
        };
        let info = match (req.logprobs, logits) {
            (None, _) => TokenInfo { id: token, logprob: None, top_logprobs: Vec::new() },
            (Some(_), Choice::Token(_)) => unreachable!("requests with logprobs keep their logits (Request::pick)"),
            (Some(k), Choice::Logits(logits, _)) => {
                let lp = log_softmax(logits);
                let mut order: Vec<u32> = (0..lp.len() as u32).collect();
                order.sort_by(|&a, &b| lp[b as usize].total_cmp(&lp[a as usize]).then(a.cmp(&b)));
                let top = order.iter().take(k).map(|&t| (t, lp[t as usize])).collect();
                TokenInfo { id: token, logprob: Some(lp[token as usize]), top_logprobs: top }
            }
        };
        s.ids.push(token);
        *s.counts.entry(token).or_insert(0) += 1;
        let generated = s.ids.len() - s.prompt_len;

        // Text so far; the stop checks look at it.
        let tokenizer = &self.pipeline.tokenizer;
        s.text.push_str(&s.detok.push(tokenizer, token).unwrap_or_default());
        let mut finish = None;
        let mut matched_stop = None;
        if (!req.ignore_eos && eos.contains(&token)) || req.stop_token_ids.contains(&token) {
            finish = Some(FinishReason::Stop);
            matched_stop = Some(MatchedStop::Token(token));
        }
        let mut text_end = None;
        if finish.is_none() {
            if let Some((at, stop)) = find_stop(&s.text, &req.stop_strings, s.emitted) {
                finish = Some(FinishReason::Stop);
                matched_stop = Some(MatchedStop::Text(stop));
                text_end = Some(at);
            }
        }
        if finish.is_none() && (generated >= req.max_tokens || s.ids.len() >= self.config.max_context) {
            finish = Some(FinishReason::Length);
        }
        let text_end = match (finish, text_end) {
            (_, Some(at)) => at,
            // Finished otherwise: whatever the decoder still holds (an incomplete character) goes out too.
            (Some(_), None) => {
                s.text.push_str(&s.detok.finish(tokenizer).unwrap_or_default());
                s.text.len()
            }
            // Hold back a suffix that may still grow into a stop string.
            (None, None) => held_back(&s.text, &req.stop_strings),
        };
        let text_end = text_end.max(s.emitted);
        let delta = s.text.get(s.emitted..text_end).unwrap_or_default().to_string();
        s.emitted = text_end;
        let (request, index) = (s.request, s.index);
        events.push(Event { request, index, kind: EventKind::Token { token: info, text: delta } });
        match finish {
            Some(reason) => {
                let usage = self.usage(seq);
                self.remove_seq(seq);
                events.push(Event { request, index, kind: EventKind::Finished { reason, matched_stop, usage } });
            }
            None => {
                let key = token as u64;
                self.scheduler.append(seq, key);
            }
        }
    }
}

/// Where a sampling row's token is chosen (see [`Request::pick`]).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pick {
    Greedy,
    Draw(Draw),
    Host,
}

/// How a step chose (or will choose) one sampling row's token.
enum SampledRow {
    /// On the backend's device.
    Chosen(u32),
    /// Its logits are row j of the step's host logits; with the uniform number of a draw left to the host.
    OnHost(usize, Option<f32>),
}

/// What `advance` gets for one sequence.
#[derive(Clone, Copy)]
enum Choice<'a> {
    Token(u32),
    Logits(&'a [f32], Option<f32>),
}

fn submit_error(e: SubmitError) -> Error {
    Error::InvalidInput(match e {
        SubmitError::ContextTooLong { prompt, max_new_tokens, max_context } => format!(
            "this model's maximum context length is {max_context} tokens; the request has {prompt} prompt tokens and asks for {max_new_tokens} completion tokens"
        ),
        SubmitError::TooLargeForPool { tokens, pool_tokens } => {
            format!("the request needs {tokens} tokens of KV cache but the pool holds {pool_tokens}")
        }
        SubmitError::EmptyPrompt => "the prompt is empty".into(),
        SubmitError::DuplicateId(id) => format!("duplicate sequence {id}"),
    })
}

/// The first stop string that occurs in `text` (searching from a little before `from`), and where.
fn find_stop(text: &str, stops: &[String], from: usize) -> Option<(usize, String)> {
    let longest = stops.iter().map(String::len).max()?;
    let mut start = from.saturating_sub(longest);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text[start..].find(s.as_str()).map(|at| (start + at, s.clone())))
        .min_by_key(|(at, _)| *at)
}

/// The end of the text that can be sent: everything but a suffix that may still grow into a stop string.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut end = text.len();
    for stop in stops.iter().filter(|s| !s.is_empty()) {
        for (i, _) in stop.char_indices().skip(1) {
            if text.ends_with(&stop[..i]) {
                end = end.min(text.len() - i);
            }
        }
    }
    end
}

/// The token the thinking budget forces next, if any: inside an open `<think>` that has run `budget` tokens,
/// a newline, then `</think>` (SGLang's Glm4MoeThinkingBudgetLogitProcessor).
fn forced_think_token(think: Option<ThinkTokens>, budget: Option<usize>, ids: &[u32]) -> Option<u32> {
    let (t, budget) = (think?, budget?);
    let open = ids.iter().rposition(|&i| i == t.open)?;
    if ids[open..].contains(&t.close) || ids.len() - open - 1 < budget {
        return None;
    }
    Some(if ids.last() == Some(&t.newline) { t.close } else { t.newline })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_and_held_back() {
        let stops = vec!["END".to_string(), "</s>".to_string()];
        assert_eq!(find_stop("abc END x", &stops, 0), Some((4, "END".into())));
        assert_eq!(find_stop("abc", &stops, 0), None);
        assert_eq!(held_back("hello E", &stops), 6);
        assert_eq!(held_back("hello </", &stops), 6);
        assert_eq!(held_back("hello", &stops), 5);
    }

    #[test]
    fn thinking_budget_forces_newline_then_close() {
        let t = Some(ThinkTokens { open: 1, close: 2, newline: 3 });
        assert_eq!(forced_think_token(t, Some(2), &[9, 1, 5]), None);
        assert_eq!(forced_think_token(t, Some(2), &[9, 1, 5, 6]), Some(3));
        assert_eq!(forced_think_token(t, Some(2), &[9, 1, 5, 3]), Some(2));
        assert_eq!(forced_think_token(t, Some(2), &[9, 1, 5, 6, 2]), None);
        assert_eq!(forced_think_token(t, None, &[1, 5, 6, 7]), None);
    }
}
