//! The text decoder of both GLM-V families.
//!
//! Glm4vMoe (GLM-4.5V/4.6V) layer: `h = x + attn(norm1(x)); out = h + mlp(norm2(h))`, mlp dense for the first
//! `first_k_dense_replace` layers, MoE after. Glm4v (GLM-4.1V/Glyph/4.6V-Flash) layer adds a norm after attention
//! and one after the MLP: `h = x + norm_a(attn(norm1(x))); out = h + norm_m(mlp(norm2(h)))`.
use crate::{
    backend::{AttentionShape, Backend, ExpertsSource, ForwardBatch, KvCacheSpec, KvDtype, MlpSource, Rope, Routing},
    config::{Family, InputQuant, ModelConfig, TextConfig},
    weights::WeightStore,
    Error, Result,
};

enum Mlp<B: Backend> {
    Dense(B::Mlp),
    Moe(B::Experts),
}

struct Layer<B: Backend> {
    input_norm: B::Vector,
    qkv: B::Linear,
    o_proj: B::Linear,
    /// Glm4v only.
    post_self_attn_norm: Option<B::Vector>,
    post_attention_norm: B::Vector,
    mlp: Mlp<B>,
    /// Glm4v only.
    post_mlp_norm: Option<B::Vector>,
}

pub struct TextModel<B: Backend> {
    pub config: TextConfig,
    pub attention: AttentionShape,
    pub rope: Rope,
    embed: B::Linear,
    layers: Vec<Layer<B>>,
    norm: B::Vector,
    lm_head: B::Linear,
    eps: f32,
}

/// Where the text decoder's tensors sit: transformers >= 4.54 saves `model.language_model.*`, older saves `model.*`.
fn text_prefix(store: &WeightStore) -> &'static str {
    if store.contains("model.language_model.embed_tokens.weight") {
        "model.language_model"
    } else {
        "model"
    }
}

impl<B: Backend> TextModel<B> {
    /// Builds the text decoder from a checkpoint. Layers beyond `num_hidden_layers` (MTP) are never read. The FP8
    /// projections treat their inputs as `input` says (`QuantConfig::input_quant`).
    pub fn load(
        backend: &B,
        config: &ModelConfig,
        store: &WeightStore,
        input: InputQuant,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Self> {
        let c = &config.text;
        let block = config.quantization.as_ref().and_then(|q| q.block());
        let p = text_prefix(store);
        let (h, d) = (c.hidden_size, c.head_dim);
        let embed_name = format!("{p}.embed_tokens");
        let embed_src = store.linear(&embed_name, c.vocab_size, h, false, block)?;
        let embed = backend.linear(std::slice::from_ref(&embed_src))?;
        let lm_head = if store.contains("lm_head.weight") || !c.tie_word_embeddings {
            backend.linear(&[store.linear("lm_head", c.vocab_size, h, false, block)?])?
        } else {
            backend.linear(&[embed_src])?
        };
        let vector =
            |name: String, len: usize| -> Result<B::Vector> { backend.vector(&store.get_shaped(&name, &[len])?) };
        // The language model's projections; embeddings and lm_head stay exact, as the checkpoints' `ignore` lists have.
        let linear = |name: &str, out: usize, inp: usize, bias: bool| {
            store.linear(name, out, inp, bias, block).map(|l| l.with_input(input))
        };
        let mlp_source = |prefix: &str, inter: usize| -> Result<MlpSource> {
            let gate_up = if store.contains(&format!("{prefix}.gate_up_proj.weight")) {
                vec![linear(&format!("{prefix}.gate_up_proj"), 2 * inter, h, false)?]
            } else {
                vec![
                    linear(&format!("{prefix}.gate_proj"), inter, h, false)?,
                    linear(&format!("{prefix}.up_proj"), inter, h, false)?,
                ]
            };
            Ok(MlpSource { gate_up, down: linear(&format!("{prefix}.down_proj"), h, inter, false)? })
        };

        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = format!("{p}.layers.{i}");
            let attn = |name: &str, out: usize| linear(&format!("{l}.self_attn.{name}"), out, h, c.attention_bias);
            let qkv = backend.linear(&[
                attn("q_proj", c.num_attention_heads * d)?,
                attn("k_proj", c.num_key_value_heads * d)?,
                attn("v_proj", c.num_key_value_heads * d)?,
            ])?;
            let o_proj =
                backend.linear(&[linear(&format!("{l}.self_attn.o_proj"), h, c.num_attention_heads * d, false)?])?;
            let mlp = match &c.moe {
                Some(moe) if c.is_moe_layer(i) => {
                    let experts = (0..moe.n_routed_experts)
                        .map(|e| mlp_source(&format!("{l}.mlp.experts.{e}"), moe.moe_intermediate_size))
                        .collect::<Result<Vec<_>>>()?;
                    let shared = (moe.n_shared_experts > 0)
                        .then(|| {
                            mlp_source(
                                &format!("{l}.mlp.shared_experts"),
                                moe.moe_intermediate_size * moe.n_shared_experts,
                            )
                        })
                        .transpose()?;
                    let bias_name = format!("{l}.mlp.gate.e_score_correction_bias");
                    let src = ExpertsSource {
                        router: store.get_shaped(&format!("{l}.mlp.gate.weight"), &[moe.n_routed_experts, h])?,
                        correction_bias: store.contains(&bias_name).then(|| store.get(&bias_name)).transpose()?,
                        experts,
                        shared,
                        routing: Routing {
                            top_k: moe.num_experts_per_tok,
                            n_group: moe.n_group,
                            topk_group: moe.topk_group,
                            norm_topk_prob: moe.norm_topk_prob,
                            routed_scaling_factor: moe.routed_scaling_factor as f32,
                        },
                    };
                    Mlp::Moe(backend.experts(&src)?)
                }
                _ => Mlp::Dense(backend.mlp(&mlp_source(&format!("{l}.mlp"), c.intermediate_size)?)?),
            };
            let four_norms = config.family == Family::Glm4v;
            let optional_norm = |name: &str| four_norms.then(|| vector(format!("{l}.{name}.weight"), h)).transpose();
            layers.push(Layer {
                input_norm: vector(format!("{l}.input_layernorm.weight"), h)?,
                qkv,
                o_proj,
                post_self_attn_norm: optional_norm("post_self_attn_layernorm")?,
                post_attention_norm: vector(format!("{l}.post_attention_layernorm.weight"), h)?,
                mlp,
                post_mlp_norm: optional_norm("post_mlp_layernorm")?,
            });
            progress(&format!("loaded text layer {}/{}", i + 1, c.num_hidden_layers));
        }
        Ok(TextModel {
            attention: AttentionShape {
                num_heads: c.num_attention_heads,
                num_kv_heads: c.num_key_value_heads,
                head_dim: d,
                scale: 1.0 / (d as f32).sqrt(),
            },
            rope: Rope::new(c),
            embed,
            layers,
            norm: vector(format!("{p}.norm.weight"), h)?,
            lm_head,
            eps: c.rms_norm_eps as f32,
            config: c.clone(),
        })
    }

    /// A KV cache of `num_blocks` blocks of `block_size` tokens for this model.
    pub fn kv_cache_spec(&self, num_blocks: usize, block_size: usize, dtype: KvDtype) -> KvCacheSpec {
        KvCacheSpec {
            dtype,
            num_layers: self.layers.len(),
            num_blocks,
            block_size,
            num_kv_heads: self.attention.num_kv_heads,
            head_dim: self.attention.head_dim,
        }
    }

    pub fn embed(&self, backend: &B, ids: &[u32]) -> Result<B::Tensor> {
        backend.embed(&self.embed, ids)
    }

    /// Runs the decoder over `hidden` (one embedding row per batch row) and returns the final-normed hidden states.
    pub fn forward(
        &self,
        backend: &B,
        hidden: B::Tensor,
        batch: &ForwardBatch,
        cache: &mut B::KvCache,
    ) -> Result<B::Tensor> {
        if self.layers.is_empty() {
            return Err(Error::InvalidInput("the model has no layers".into()));
        }
        let batch = backend.batch(batch, cache)?;
        backend.run_decoder(hidden, &batch, cache, &mut |hidden, batch, cache| {
            self.layers_forward(backend, hidden, batch, cache)
        })
    }

    /// The decoder layers and the final norm: what [`Backend::run_decoder`] runs (and may record).
    fn layers_forward(
        &self,
        backend: &B,
        hidden: B::Tensor,
        batch: &B::Batch,
        cache: &mut B::KvCache,
    ) -> Result<B::Tensor> {
        let mut residual = hidden;
        let mut x = backend.rms_norm(&residual, &self.layers[0].input_norm, self.eps)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let qkv = backend.linear_forward(&x, &layer.qkv)?;
            let attn = backend.attention(&qkv, &self.attention, &self.rope, batch, cache, i)?;
            let mut attn = backend.linear_forward(&attn, &layer.o_proj)?;
            if let Some(norm) = &layer.post_self_attn_norm {
                attn = backend.rms_norm(&attn, norm, self.eps)?;
            }
            x = backend.add_rms_norm(&mut residual, &attn, &layer.post_attention_norm, self.eps)?;
            let mut mlp = match &layer.mlp {
                Mlp::Dense(m) => backend.mlp_forward(&x, m)?,
                Mlp::Moe(e) => backend.moe_forward(&x, e)?,
            };
            if let Some(norm) = &layer.post_mlp_norm {
                mlp = backend.rms_norm(&mlp, norm, self.eps)?;
            }
            let next_norm = self.layers.get(i + 1).map_or(&self.norm, |l| &l.input_norm);
            x = backend.add_rms_norm(&mut residual, &mlp, next_norm, self.eps)?;
        }
        Ok(x)
    }

    /// Logits [rows.len(), vocab] of the given rows of the final hidden states, on the host.
    pub fn logits(&self, backend: &B, hidden: &B::Tensor, rows: &[usize]) -> Result<Vec<f32>> {
        backend.to_host(&self.logits_on_device(backend, hidden, rows)?)
    }

    /// The same, left on the backend's device (for choosing tokens there).
    pub fn logits_on_device(&self, backend: &B, hidden: &B::Tensor, rows: &[usize]) -> Result<B::Tensor> {
        let selected = backend.select_rows(hidden, rows)?;
        backend.linear_forward(&selected, &self.lm_head)
    }

    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
}

/// A [`ForwardBatch`] of one sequence's next `num_tokens` text tokens (t = h = w = position).
pub fn text_batch(context_len: usize, num_tokens: usize, block_table: Vec<u32>) -> ForwardBatch {
    let positions = (context_len..context_len + num_tokens).map(|p| [p as u32; 3]).collect();
    ForwardBatch { seqs: vec![crate::backend::SeqSpan { rows: 0..num_tokens, context_len, block_table }], positions }
}
