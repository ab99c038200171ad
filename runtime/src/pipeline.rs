//! A loaded checkpoint ready to run one sequence at a time: what `glmv generate` and `glmv logits` use. The
//! serving engine batches many sequences over the same model and backend.
use std::path::Path;

use crate::{
    backend::Backend,
    config::ModelConfig,
    engine::sampler::{sample, Rng, SamplingParams},
    model::{text_batch, TextModel},
    text::Tokenizer,
    weights::WeightStore,
    Error, Result,
};

/// KV block size of single-sequence runs.
const BLOCK_SIZE: usize = 16;

pub struct Pipeline<B: Backend> {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub model: TextModel<B>,
    pub backend: B,
}

pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Keep generating past end-of-sequence tokens.
    pub ignore_eos: bool,
}

impl<B: Backend> Pipeline<B> {
    pub fn load(dir: &Path, backend: B, progress: &mut dyn FnMut(&str)) -> Result<Self> {
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
        let store = WeightStore::open(dir, progress)?;
        let model = TextModel::load(&backend, &config, &store, progress)?;
        Ok(Pipeline { config, tokenizer, model, backend })
    }

    fn new_cache(&self, tokens: usize) -> Result<(B::KvCache, Vec<u32>)> {
        let blocks = tokens.div_ceil(BLOCK_SIZE).max(1);
        let cache = self.backend.kv_cache(&self.model.kv_cache_spec(blocks, BLOCK_SIZE))?;
        Ok((cache, (0..blocks as u32).collect()))
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::InvalidInput("the prompt is empty".into()));
        }
        let vocab = self.model.vocab_size();
        match ids.iter().find(|&&id| id as usize >= vocab) {
            Some(id) => Err(Error::InvalidInput(format!("token id {id} is outside the vocabulary of {vocab}"))),
            None => Ok(()),
        }
    }

    /// Logits of every position of `ids` ([ids.len(), vocab], row-major), computed in prefill chunks of
    /// `chunk` tokens (the whole prompt at once when `chunk` is 0).
    pub fn prompt_logits(&self, ids: &[u32], chunk: usize) -> Result<Vec<f32>> {
        self.check_ids(ids)?;
        let (mut cache, blocks) = self.new_cache(ids.len())?;
        let chunk = if chunk == 0 { ids.len() } else { chunk };
        let mut logits = Vec::with_capacity(ids.len() * self.model.vocab_size());
        for (c, piece) in ids.chunks(chunk).enumerate() {
            let start = c * chunk;
            let hidden = self.model.embed(&self.backend, piece)?;
            let batch = text_batch(start, piece.len(), blocks.clone());
            let out = self.model.forward(&self.backend, hidden, &batch, &mut cache)?;
            let rows: Vec<usize> = (0..piece.len()).collect();
            logits.extend(self.model.logits(&self.backend, &out, &rows)?);
        }
        Ok(logits)
    }

    /// Prefills `prompt`, then decodes one token at a time with the KV cache, feeding `forced` tokens instead of the
    /// sampled ones while there are any (teacher forcing). Calls `on_step(token, logits)` for each new position.
    /// Returns the generated ids.
    pub fn generate(
        &self,
        prompt: &[u32],
        forced: &[u32],
        options: &GenerateOptions,
        on_step: &mut dyn FnMut(u32, &[f32]),
    ) -> Result<Vec<u32>> {
        self.check_ids(prompt)?;
        self.check_ids(forced).or_else(|e| if forced.is_empty() { Ok(()) } else { Err(e) })?;
        let (mut cache, blocks) = self.new_cache(prompt.len() + options.max_tokens)?;
        let mut rng = Rng::new(options.sampling.seed);
        let mut out = Vec::new();
        let mut context = 0;
        let mut next_input: Vec<u32> = prompt.to_vec();
        while out.len() < options.max_tokens {
            let hidden = self.model.embed(&self.backend, &next_input)?;
            let batch = text_batch(context, next_input.len(), blocks.clone());
            let h = self.model.forward(&self.backend, hidden, &batch, &mut cache)?;
            context += next_input.len();
            let logits = self.model.logits(&self.backend, &h, &[next_input.len() - 1])?;
            let token = match forced.get(out.len()) {
                Some(&t) => t,
                None => sample(&logits, &options.sampling, &mut rng),
            };
            on_step(token, &logits);
            out.push(token);
            if !options.ignore_eos && self.config.tokens.eos.contains(&token) {
                break;
            }
            next_input = vec![token];
        }
        Ok(out)
    }
}
