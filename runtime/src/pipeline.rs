//! A loaded checkpoint ready to run one sequence at a time: what `glmv generate` and `glmv logits` use. The
//! serving engine batches many sequences over the same model and backend.
use std::path::Path;

use crate::{
    backend::{Backend, ForwardBatch, KvDtype, SeqSpan},
    config::{Fp8Activations, InputQuant, ModelConfig},
    engine::sampler::{sample, Rng, SamplingParams},
    model::{mrope_positions, Grid, MediaGrid, MediaKind, TextModel, VisionTower},
    text::Tokenizer,
    weights::WeightStore,
    Error, Result,
};

/// KV block size of single-sequence runs.
const BLOCK_SIZE: usize = 16;

pub struct Pipeline<B: Backend> {
    /// KV cache storage of single-sequence runs; F32 (exact) unless set, since these runs are the checks against
    /// transformers.
    pub kv_dtype: KvDtype,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub model: TextModel<B>,
    pub vision: VisionTower<B>,
    pub backend: B,
}

/// One preprocessed image or video: its patch rows (merge-window order) and grid.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaInput {
    pub kind: MediaKind,
    pub grid: Grid,
    /// [grid.patches(), channels * temporal_patch * patch * patch]
    pub pixel_values: Vec<f32>,
}

impl MediaInput {
    /// A content hash of what the vision tower sees (grid and pixels): equal media share KV blocks and vision
    /// embeddings, different media never do.
    pub fn content_hash(&self) -> u64 {
        let mut h = crate::engine::blocks::block_hash(
            self.kind as u64,
            &[self.grid.t as u64, self.grid.h as u64, self.grid.w as u64],
        );
        for chunk in self.pixel_values.chunks(64) {
            let words: Vec<u64> = chunk.iter().map(|v| v.to_bits() as u64).collect();
            h = crate::engine::blocks::block_hash(h, &words);
        }
        h
    }
}

/// Token ids with their placeholder runs already expanded, and the media that fill them, in prompt order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Prompt {
    pub ids: Vec<u32>,
    pub media: Vec<MediaInput>,
}

impl Prompt {
    pub fn text(ids: Vec<u32>) -> Self {
        Prompt { ids, media: Vec::new() }
    }
}

pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Keep generating past end-of-sequence tokens.
    pub ignore_eos: bool,
}

/// A prompt turned into what the decoder consumes: input embeddings and 3D positions of every token.
/// Embeddings travel through the host so that prefill chunks can take any row range of them.
struct Prepared {
    embeddings: Vec<f32>,
    positions: Vec<[u32; 3]>,
    rope_delta: i64,
}

/// Where the weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadFormat {
    /// The checkpoint's safetensors.
    Safetensors,
    /// Seeded random weights of the shapes and dtypes the checkpoint's config implies (SGLang's `dummy`): for
    /// benchmarks without the weights; only config.json, the tokenizer and the template are read from disk.
    Dummy { seed: u64 },
}

/// How a model is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    pub format: LoadFormat,
    /// Whether an FP8 checkpoint's linears quantise their inputs as it declares.
    pub fp8_activations: Fp8Activations,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { format: LoadFormat::Safetensors, fp8_activations: Fp8Activations::Exact }
    }
}

impl<B: Backend> Pipeline<B> {
    pub fn load(dir: &Path, backend: B, progress: &mut dyn FnMut(&str)) -> Result<Self> {
        Self::load_with(dir, LoadOptions::default(), backend, progress)
    }

    pub fn load_with(dir: &Path, options: LoadOptions, backend: B, progress: &mut dyn FnMut(&str)) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        let tokenizer = Tokenizer::from_dir(dir)?;
        let image = tokenizer.token_to_id("<|image|>");
        if image.is_some_and(|id| id != config.tokens.image) {
            return Err(Error::Config(format!(
                "image_token_id {} differs from the tokenizer's <|image|> id {}",
                config.tokens.image,
                image.unwrap_or_default()
            )));
        }
        let store = match options.format {
            LoadFormat::Safetensors => WeightStore::open(dir, progress)?,
            LoadFormat::Dummy { seed } => {
                let store = WeightStore::dummy(&config, seed);
                progress(&format!(
                    "dummy weights: {:.2} GB of random values, each tensor made where it is used",
                    store.total_bytes() as f64 / 1e9
                ));
                store
            }
        };
        let input = match &config.quantization {
            Some(q) => q.input_quant(options.fp8_activations)?,
            None => InputQuant::Exact,
        };
        if options.fp8_activations == Fp8Activations::Checkpoint {
            progress(&match (&config.quantization, input) {
                (None, _) => "--fp8-activations checkpoint: no quantization_config, nothing to quantise".to_string(),
                (Some(_), InputQuant::Fp8 { group: None }) => "FP8 projections quantise their inputs per token".into(),
                (Some(_), InputQuant::Fp8 { group: Some(cols) }) => {
                    format!("FP8 projections quantise their inputs per token and {cols} columns")
                }
                (Some(_), InputQuant::Exact) => "the checkpoint declares weight-only FP8: inputs stay exact".into(),
            });
        }
        let model = TextModel::load(&backend, &config, &store, input, progress)?;
        let vision = VisionTower::load(&backend, &config.vision, &store)?;
        progress("loaded vision tower");
        if let Some(host) = store.dummy_bytes_made_on_host() {
            progress(&format!(
                "dummy weights: {:.2} GB made on the host, {:.2} GB by the {} backend itself",
                host as f64 / 1e9,
                store.total_bytes().saturating_sub(host) as f64 / 1e9,
                backend.name()
            ));
        }
        Ok(Pipeline { kv_dtype: KvDtype::F32, config, tokenizer, model, vision, backend })
    }

    fn new_cache(&self, tokens: usize) -> Result<(B::KvCache, Vec<u32>)> {
        let blocks = tokens.div_ceil(BLOCK_SIZE).max(1);
        let cache = self.backend.kv_cache(&self.model.kv_cache_spec(blocks, BLOCK_SIZE, self.kv_dtype))?;
        Ok((cache, (0..blocks as u32).collect()))
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.model.vocab_size();
        match ids.iter().find(|&&id| id as usize >= vocab) {
            Some(id) => Err(Error::InvalidInput(format!("token id {id} is outside the vocabulary of {vocab}"))),
            None => Ok(()),
        }
    }

    /// Vision embeddings [placeholder tokens, hidden] of `media`, in prompt order, on the host.
    pub fn vision_embeddings(&self, media: &[MediaInput]) -> Result<Vec<f32>> {
        if media.is_empty() {
            return Ok(Vec::new());
        }
        let pixels: Vec<f32> = media.iter().flat_map(|m| m.pixel_values.iter().copied()).collect();
        let grids: Vec<Grid> = media.iter().map(|m| m.grid).collect();
        self.backend.to_host(&self.vision.forward(&self.backend, &pixels, &grids)?)
    }

    /// 3D positions of every prompt token and the decode offset.
    pub fn positions(&self, prompt: &Prompt) -> Result<(Vec<[u32; 3]>, i64)> {
        let grids: Vec<MediaGrid> = prompt.media.iter().map(|m| MediaGrid { kind: m.kind, grid: m.grid }).collect();
        mrope_positions(&prompt.ids, &self.config.tokens, &grids, self.config.vision.spatial_merge_size)
    }

    pub(crate) fn check_prompt_ids(&self, ids: &[u32]) -> Result<()> {
        self.check_ids(ids)
    }

    /// Embeddings of the vision tower's output for every media item, scattered over the placeholder tokens.
    fn prepare(&self, prompt: &Prompt) -> Result<Prepared> {
        if prompt.ids.is_empty() {
            return Err(Error::InvalidInput("the prompt is empty".into()));
        }
        self.check_ids(&prompt.ids)?;
        let tokens = &self.config.tokens;
        let (positions, rope_delta) = self.positions(prompt)?;
        let mut hidden = self.model.embed(&self.backend, &prompt.ids)?;
        if !prompt.media.is_empty() {
            let embeds = self.vision_embeddings(&prompt.media)?;
            let rows: Vec<usize> =
                prompt.ids.iter().enumerate().filter(|(_, &t)| t == tokens.image).map(|(i, _)| i).collect();
            let width = self.model.config.hidden_size;
            let embeds = self.backend.upload(embeds.len() / width, width, &embeds)?;
            self.backend.scatter_rows(&mut hidden, &rows, &embeds)?;
        }
        Ok(Prepared { embeddings: self.backend.to_host(&hidden)?, positions, rope_delta })
    }

    /// Runs rows `range` of a prepared prompt through the decoder, after `range.start` cached tokens.
    fn forward_rows(
        &self,
        prep: &Prepared,
        range: std::ops::Range<usize>,
        cache: &mut B::KvCache,
        blocks: &[u32],
    ) -> Result<B::Tensor> {
        let width = self.model.config.hidden_size;
        let hidden =
            self.backend.upload(range.len(), width, &prep.embeddings[range.start * width..range.end * width])?;
        let batch = ForwardBatch {
            seqs: vec![SeqSpan { rows: 0..range.len(), context_len: range.start, block_table: blocks.to_vec() }],
            positions: prep.positions[range.clone()].to_vec(),
        };
        self.model.forward(&self.backend, hidden, &batch, cache)
    }

    /// Logits of every prompt position ([ids.len(), vocab], row-major), computed in prefill chunks of `chunk`
    /// tokens (the whole prompt at once when `chunk` is 0).
    pub fn prompt_logits(&self, prompt: &Prompt, chunk: usize) -> Result<Vec<f32>> {
        let prep = self.prepare(prompt)?;
        let n = prompt.ids.len();
        let (mut cache, blocks) = self.new_cache(n)?;
        let chunk = if chunk == 0 { n } else { chunk };
        let mut logits = Vec::with_capacity(n * self.model.vocab_size());
        for start in (0..n).step_by(chunk) {
            let end = (start + chunk).min(n);
            let out = self.forward_rows(&prep, start..end, &mut cache, &blocks)?;
            let rows: Vec<usize> = (0..end - start).collect();
            logits.extend(self.model.logits(&self.backend, &out, &rows)?);
        }
        Ok(logits)
    }

    /// Prefills the prompt, then decodes one token at a time with the KV cache, feeding `forced` tokens instead of
    /// sampled ones while there are any (teacher forcing). Calls `on_step(token, logits)` for each new position and
    /// returns the generated ids.
    pub fn generate(
        &self,
        prompt: &Prompt,
        forced: &[u32],
        options: &GenerateOptions,
        on_step: &mut dyn FnMut(u32, &[f32]),
    ) -> Result<Vec<u32>> {
        let prep = self.prepare(prompt)?;
        self.check_ids(forced)?;
        let n = prompt.ids.len();
        let (mut cache, blocks) = self.new_cache(n + options.max_tokens)?;
        let mut rng = Rng::new(options.sampling.seed);
        let mut out = Vec::new();
        let mut h = self.forward_rows(&prep, 0..n, &mut cache, &blocks)?;
        let mut last_row = n - 1;
        while out.len() < options.max_tokens {
            let logits = self.model.logits(&self.backend, &h, &[last_row])?;
            let token = match forced.get(out.len()) {
                Some(&t) => t,
                None => sample(&logits, &options.sampling, &mut rng),
            };
            on_step(token, &logits);
            out.push(token);
            if out.len() == options.max_tokens || (!options.ignore_eos && self.config.tokens.eos.contains(&token)) {
                break;
            }
            // The new token sits at index n + generated - 1 and decodes at that index + rope_delta.
            let index = n + out.len() - 1;
            let pos = (index as i64 + prep.rope_delta).max(0) as u32;
            let batch = ForwardBatch {
                seqs: vec![SeqSpan { rows: 0..1, context_len: index, block_table: blocks.clone() }],
                positions: vec![[pos; 3]],
            };
            h = self.model.forward(&self.backend, self.model.embed(&self.backend, &[token])?, &batch, &mut cache)?;
            last_row = 0;
        }
        Ok(out)
    }
}
