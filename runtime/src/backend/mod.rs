//! The backend boundary. The model graph (`crate::model`) is written once against [`Backend`]; a backend implements
//! coarse, fusable operations (fused add+RMSNorm, a linear of stacked checkpoint tensors, rotary + KV-cache write +
//! paged attention, the whole MoE block) rather than scalar ones, so that GPU backends can fuse freely.
//! [`cpu::CpuBackend`] is the reference every other backend is checked against.
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod rope;

use std::ops::Range;

pub use cpu::CpuBackend;
pub use rope::Rope;

use rayon::prelude::*;

use crate::{
    config::InputQuant,
    engine::sampler::Draw,
    weights::{HostTensor, LinearSource},
    Error, Result,
};

/// Heads of one attention layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Softmax scale, 1/sqrt(head_dim) for GLM-V.
    pub scale: f32,
}

impl AttentionShape {
    pub fn q_width(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_width(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

/// Sigmoid routing with a correction bias and group-limited top-k (GLM-4.5V's router).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Routing {
    pub top_k: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f32,
}

/// A SwiGLU MLP: `down(silu(gate(x)) * up(x))`. `gate_up` stacks the gate rows then the up rows, from one fused
/// checkpoint tensor or from two.
pub struct MlpSource {
    pub gate_up: Vec<LinearSource>,
    pub down: LinearSource,
}

/// One MoE block: router, routed experts and the (ungated) shared expert.
pub struct ExpertsSource {
    /// [n_experts, hidden]
    pub router: HostTensor,
    /// [n_experts], added to the sigmoid scores for choosing experts only.
    pub correction_bias: Option<HostTensor>,
    pub experts: Vec<MlpSource>,
    pub shared: Option<MlpSource>,
    pub routing: Routing,
}

/// How the KV cache stores keys and values. Every backend rounds the same way, so they agree on the numbers:
/// BF16 rounds each value to nearest even; FP8 keeps one f32 scale per (token, kv head), `absmax / 448` (1 when
/// the head is all zeros), and stores `e4m3(value / scale)` rounded to nearest even with saturation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    /// Exact; the reference for parity with transformers in float32.
    F32,
    #[default]
    Bf16,
    Fp8E4m3,
}

impl KvDtype {
    /// Bytes per stored element (FP8 adds 4 bytes of scale per token and kv head).
    pub fn element_bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::Bf16 => 2,
            KvDtype::Fp8E4m3 => 1,
        }
    }

    /// Bytes one token's keys (or values) take in one kv head of `head_dim` dims, FP8's f32 scale included.
    pub fn head_bytes(self, head_dim: usize) -> usize {
        head_dim * self.element_bytes() + if self == KvDtype::Fp8E4m3 { 4 } else { 0 }
    }

    /// One head's values as the cache will give them back.
    pub fn round_trip(self, head: &mut [f32]) {
        use crate::weights::{bf16_to_f32, f32_to_bf16_rne};
        match self {
            KvDtype::F32 => {}
            KvDtype::Bf16 => head.iter_mut().for_each(|v| *v = bf16_to_f32(f32_to_bf16_rne(*v))),
            KvDtype::Fp8E4m3 => fp8_round_trip(head),
        }
    }
}

/// `values` rounded to FP8 E4M3 on the scale of their absmax ([`fp8_scale`]) and back, as an FP8 KV cache head or
/// a dynamically quantised activation group holds them.
pub fn fp8_round_trip(values: &mut [f32]) {
    use crate::weights::{f32_to_f8e4m3_rne, F8E4M3_TABLE};
    let scale = fp8_scale(values);
    values.iter_mut().for_each(|v| *v = F8E4M3_TABLE[f32_to_f8e4m3_rne(*v / scale) as usize] * scale);
}

/// The input rows of an FP8 linear as `quant` has them (vLLM's and SGLang's dynamic FP8 activations): each row of
/// `cols` values, or each group of columns within it, rounded to FP8 on a scale of its own. Every backend computes
/// exactly this, so its GEMMs see the same inputs.
pub fn quantize_rows(data: &mut [f32], cols: usize, quant: InputQuant) {
    let Some(group) = quant.group_cols(cols) else { return };
    data.par_chunks_mut(cols.max(1)).for_each(|row| row.chunks_mut(group).for_each(fp8_round_trip));
}

/// The FP8 KV scale of one head's values: absmax / 448, or 1 for an all-zero head.
pub fn fp8_scale(head: &[f32]) -> f32 {
    let absmax = head.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if absmax > 0.0 {
        absmax / 448.0
    } else {
        1.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvCacheSpec {
    pub num_layers: usize,
    pub num_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub dtype: KvDtype,
}

/// The tokens of one sequence inside a forward batch.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqSpan {
    /// Rows of this sequence in the flattened batch.
    pub rows: Range<usize>,
    /// Tokens of this sequence already in the KV cache; the span's tokens occupy positions
    /// `context_len .. context_len + rows.len()` of the sequence.
    pub context_len: usize,
    /// KV blocks of the sequence, in order; must cover `context_len + rows.len()` tokens.
    pub block_table: Vec<u32>,
}

/// What one forward step computes: token rows of several sequences, each with its 3D (t, h, w) rotary position.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ForwardBatch {
    pub seqs: Vec<SeqSpan>,
    /// One (t, h, w) per row; text tokens have t = h = w.
    pub positions: Vec<[u32; 3]>,
}

impl ForwardBatch {
    pub fn num_rows(&self) -> usize {
        self.positions.len()
    }
}

/// The decoder layers as [`Backend::run_decoder`] runs them: (hidden, batch, cache) to the layers' output.
pub type DecoderLayers<'a, B> = dyn FnMut(
        <B as Backend>::Tensor,
        &<B as Backend>::Batch,
        &mut <B as Backend>::KvCache,
    ) -> Result<<B as Backend>::Tensor>
    + 'a;

pub trait Backend: Send + Sync {
    /// Activations: a row-major [rows, cols] matrix on the device.
    type Tensor: Send;
    /// A parameter vector (norm weight).
    type Vector: Send + Sync;
    /// A linear layer, with its bias if it has one.
    type Linear: Send + Sync;
    type Mlp: Send + Sync;
    type Experts: Send + Sync;
    type KvCache: Send;
    /// A forward batch in this backend's form for one cache, built once per step and read by every layer's
    /// attention (on a GPU: each row's position, cache slot, key count and block table uploaded once per step).
    type Batch: Send;

    fn name(&self) -> &'static str;

    /// (available, total) bytes of the memory this backend allocates from: what `--mem-fraction-static` divides.
    fn memory_info(&self) -> Result<(usize, usize)>;

    // Weight upload.
    fn vector(&self, t: &HostTensor) -> Result<Self::Vector>;
    /// One linear layer whose output rows are those of `parts`, stacked in order (q|k|v, gate|up).
    fn linear(&self, parts: &[LinearSource]) -> Result<Self::Linear>;
    fn mlp(&self, src: &MlpSource) -> Result<Self::Mlp>;
    fn experts(&self, src: &ExpertsSource) -> Result<Self::Experts>;
    fn kv_cache(&self, spec: &KvCacheSpec) -> Result<Self::KvCache>;
    /// `batch` prepared for `cache` (checked against it: rows in order, enough blocks, blocks inside the pool).
    fn batch(&self, batch: &ForwardBatch, cache: &mut Self::KvCache) -> Result<Self::Batch>;

    // Operations.
    /// Rows of an embedding table (a linear's weight, [vocab, hidden]) for each id.
    fn embed(&self, table: &Self::Linear, ids: &[u32]) -> Result<Self::Tensor>;
    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Vector, eps: f32) -> Result<Self::Tensor>;
    /// `residual += delta`, then returns `rms_norm(residual)`.
    fn add_rms_norm(
        &self,
        residual: &mut Self::Tensor,
        delta: &Self::Tensor,
        w: &Self::Vector,
        eps: f32,
    ) -> Result<Self::Tensor>;
    fn linear_forward(&self, x: &Self::Tensor, w: &Self::Linear) -> Result<Self::Tensor>;
    fn mlp_forward(&self, x: &Self::Tensor, mlp: &Self::Mlp) -> Result<Self::Tensor>;
    /// The whole MoE block: route, run the chosen experts, combine, add the shared expert.
    fn moe_forward(&self, x: &Self::Tensor, experts: &Self::Experts) -> Result<Self::Tensor>;
    /// `qkv` is [rows, q | k | v] after projection and bias. Applies the rotary embedding to q and k, writes k and v
    /// into `layer` of the cache at each sequence's positions, and returns causal attention over each sequence's
    /// cached context, [rows, num_heads * head_dim].
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        qkv: &Self::Tensor,
        shape: &AttentionShape,
        rope: &Rope,
        batch: &Self::Batch,
        cache: &mut Self::KvCache,
        layer: usize,
    ) -> Result<Self::Tensor>;
    /// Runs `layers` (the decoder over `hidden`, one row per row of `batch`) and returns its output. A backend may
    /// record the work the first time a batch of its shape comes and replay the recording after (CUDA graphs of
    /// decode steps); `layers` must then read the step's inputs only from `hidden`, `batch` and `cache`.
    fn run_decoder(
        &self,
        hidden: Self::Tensor,
        batch: &Self::Batch,
        cache: &mut Self::KvCache,
        layers: &mut DecoderLayers<'_, Self>,
    ) -> Result<Self::Tensor> {
        layers(hidden, batch, cache)
    }

    /// Row counts of the decode steps whose recordings `run_decoder` makes at their first run, smallest first: the
    /// engine runs one step of each before serving (as SGLang captures its CUDA graphs at start-up), so that no
    /// request pays for a recording. Default: none.
    fn decode_rows_to_record(&self) -> Vec<usize> {
        Vec::new()
    }
    /// Full (non-causal) attention within each segment of consecutive rows, no KV cache: the vision tower's
    /// attention, with the rotary embedding at each row's `positions`.
    fn segment_attention(
        &self,
        qkv: &Self::Tensor,
        shape: &AttentionShape,
        rope: &Rope,
        positions: &[[u32; 3]],
        segments: &[Range<usize>],
    ) -> Result<Self::Tensor>;
    /// `x += delta`.
    fn add(&self, x: &mut Self::Tensor, delta: &Self::Tensor) -> Result<()>;
    /// LayerNorm (with weight and bias) followed by the exact (erf) GELU.
    fn layer_norm_gelu(
        &self,
        x: &Self::Tensor,
        weight: &Self::Vector,
        bias: &Self::Vector,
        eps: f32,
    ) -> Result<Self::Tensor>;
    /// Groups of `window` consecutive rows become one row, channel-major: `out[r][c * window + k] =
    /// x[r * window + k][c]` (the input layout of a stride-2 2x2 convolution over merge windows).
    fn merge_windows(&self, x: &Self::Tensor, window: usize) -> Result<Self::Tensor>;
    fn select_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Result<Self::Tensor>;
    /// `dst[rows[i]] = src[i]`.
    fn scatter_rows(&self, dst: &mut Self::Tensor, rows: &[usize], src: &Self::Tensor) -> Result<()>;
    /// Copies a row-major [rows, cols] f32 matrix from the host.
    fn upload(&self, rows: usize, cols: usize, data: &[f32]) -> Result<Self::Tensor>;
    /// Copies a tensor to the host as row-major f32.
    fn to_host(&self, x: &Self::Tensor) -> Result<Vec<f32>>;
    /// The greedy choice of each row (the index of its largest value), by the rule of
    /// [`crate::engine::sampler::argmax`]: a step's greedy tokens without copying its logits to the host.
    fn argmax_rows(&self, x: &Self::Tensor) -> Result<Vec<u32>>;
    /// Each row's token as [`Draw::sample`] draws it from that row of `x` (temperature, top-k, top-p and min-p over
    /// the raw logits, with the draw's uniform number), or `None` where the backend leaves the row to the host (a
    /// nucleus its candidates cannot decide). One draw per row. Default: on the host, every row decided.
    fn sample_rows(&self, x: &Self::Tensor, draws: &[Draw]) -> Result<Vec<Option<u32>>> {
        sample_rows_on_host(self, x, draws)
    }
}

/// [`Backend::sample_rows`] on the host: the logits copied, every row drawn by [`Draw::sample`].
pub fn sample_rows_on_host<B: Backend + ?Sized>(be: &B, x: &B::Tensor, draws: &[Draw]) -> Result<Vec<Option<u32>>> {
    if draws.is_empty() {
        return Ok(Vec::new());
    }
    let host = be.to_host(x)?;
    if host.len() % draws.len() != 0 {
        return Err(Error::InvalidInput(format!("{} draws for {} logits", draws.len(), host.len())));
    }
    let cols = host.len() / draws.len();
    Ok(draws.iter().zip(host.chunks(cols.max(1))).map(|(d, row)| Some(d.sample(row))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_round_trip_error_is_bounded() {
        let head: Vec<f32> = (0..128).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
        let absmax = head.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (dtype, rel) in [(KvDtype::F32, 0.0), (KvDtype::Bf16, 1.0 / 256.0), (KvDtype::Fp8E4m3, 1.0 / 16.0)] {
            let mut x = head.clone();
            dtype.round_trip(&mut x);
            for (a, b) in x.iter().zip(&head) {
                // Relative to the value, or to the scale's resolution for the smallest FP8 values.
                assert!((a - b).abs() <= rel * b.abs().max(absmax / 64.0) + f32::EPSILON, "{dtype:?}: {a} vs {b}");
            }
        }
        let mut zeros = vec![0.0f32; 8];
        KvDtype::Fp8E4m3.round_trip(&mut zeros);
        assert!(zeros.iter().all(|&v| v == 0.0));
    }
}
