//! The memory plan of `glmv config`: from a [`ModelConfig`] (never from tables), how many parameters and weight
//! bytes a checkpoint holds, what each GPU holds under tensor parallelism, the KV cache bytes per token, and the
//! KV tokens, context and concurrency that fit a GPU's memory as `glmv serve` budgets it.
//!
//! Weight dtypes follow the FP8 checkpoints (reference/model.md §7) as the dummy loader does: in an FP8 checkpoint
//! the language model's attention, dense-MLP, expert and shared-expert projections are FP8 with an F32 scale per
//! output channel (or per block, for block-FP8 schemes); embeddings, lm_head, the router gate, norms, biases and
//! the whole vision tower stay BF16; the router's correction bias is F32 in every checkpoint.
//!
//! Tensor-parallel layout (SGLang's): attention is split by heads (q/o by query heads, k/v by kv heads, and a
//! kv head is replicated when tp exceeds the kv heads), MLPs and experts by their intermediate width, embeddings
//! and lm_head by vocabulary rows. Replicated on every GPU: norms, the router gate and its bias, the per-channel
//! scales of row-parallel projections (o_proj, down_proj: their output channels are not split), and the vision
//! tower (a data-parallel encoder, as SGLang's `--mm-enable-dp-encoder`; 12 vision heads do not split 8 ways).
use serde_json::{json, Value};

use super::{Family, ModelConfig, QuantConfig, WeightQuant};
use crate::{backend::KvDtype, weights::Dtype};

/// `glmv serve`'s `--mem-fraction-static` default (SGLang's meaning: weights and KV cache together take this
/// fraction of the GPU's memory; the rest is left for activations).
pub const MEM_FRACTION_STATIC: f64 = 0.85;
/// Tokens per KV cache block in `glmv serve`.
pub const KV_BLOCK_SIZE: usize = 16;
/// `glmv serve`'s `--chunked-prefill-size` default.
pub const CHUNKED_PREFILL_SIZE: usize = 2048;
/// `glmv serve`'s `--max-running-requests` default.
pub const MAX_RUNNING_REQUESTS: usize = 64;
/// Memory in use on a GPU before `glmv serve` sizes its KV cache, besides the weights: the CUDA context, the
/// loaded kernel images and allocator slack. `glmv serve` measures it (device memory in use after loading comes
/// off the KV share); a plan has to assume it: ~1 GB, reference/performance.md §3e.
pub const RUNTIME_RESERVE_BYTES: u64 = 1_000_000_000;
/// The smallest context a plan must hold when none is asked for: 1K prompt + 1K output, the smallest of the
/// seeds' benchmark workloads.
pub const MIN_CONTEXT: usize = 2048;
/// Tensor-parallel degrees a plan considers (one node).
pub const TP_DEGREES: [usize; 4] = [1, 2, 4, 8];

/// GPUs `glmv config` plans for, with the memory their vendors state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hardware {
    H100,
    H200,
    B200,
    Mi300x,
    Mi325x,
    Mi355x,
}

impl Hardware {
    pub const ALL: [Hardware; 6] =
        [Hardware::H100, Hardware::H200, Hardware::B200, Hardware::Mi300x, Hardware::Mi325x, Hardware::Mi355x];

    /// The name `glmv config --hardware` takes.
    pub fn name(self) -> &'static str {
        match self {
            Hardware::H100 => "h100",
            Hardware::H200 => "h200",
            Hardware::B200 => "b200",
            Hardware::Mi300x => "mi300x",
            Hardware::Mi325x => "mi325x",
            Hardware::Mi355x => "mi355x",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Hardware::H100 => "H100",
            Hardware::H200 => "H200",
            Hardware::B200 => "B200",
            Hardware::Mi300x => "MI300X",
            Hardware::Mi325x => "MI325X",
            Hardware::Mi355x => "MI355X",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.name().eq_ignore_ascii_case(name))
    }

    /// The memory per GPU as its vendor states it, in bytes (GB = 1e9 B). The drivers report somewhat more (an
    /// H200 shows 143,771 MiB = 150.8e9 B, reference/performance.md §3b), so these plans err on the safe side.
    pub fn memory_bytes(self) -> u64 {
        let gb = match self {
            Hardware::H100 => 80,
            Hardware::H200 => 141,
            Hardware::B200 => 180,
            Hardware::Mi300x => 192,
            Hardware::Mi325x => 256,
            Hardware::Mi355x => 288,
        };
        gb * 1_000_000_000
    }
}

/// How a group of tensors is laid out over tensor-parallel GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Each GPU holds 1/tp of it (heads, vocabulary rows or MLP columns).
    Sharded,
    /// Split by kv heads: 1/tp while tp <= kv heads, else one kv head per GPU.
    KvHeads,
    /// Every GPU holds all of it.
    Replicated,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Sharded => "sharded",
            Split::KvHeads => "by kv head",
            Split::Replicated => "replicated",
        }
    }
}

/// Tensors of one kind and dtype in the checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightGroup {
    pub name: &'static str,
    pub dtype: Dtype,
    /// Stored elements (for the scale groups: scales, which are not parameters).
    pub elements: u64,
    pub split: Split,
    /// Part of the vision tower (else the text model).
    pub vision: bool,
    /// FP8 scales rather than parameters.
    pub scales: bool,
}

impl WeightGroup {
    pub fn bytes(&self) -> u64 {
        self.elements * self.dtype.size().unwrap_or(1) as u64
    }

    fn bytes_per_gpu(&self, kv_heads: usize, tp: usize) -> u64 {
        let per_gpu = match self.split {
            Split::Sharded => self.elements / tp as u64,
            Split::KvHeads => self.elements / kv_heads as u64 * kv_heads_per_gpu(kv_heads, tp) as u64,
            Split::Replicated => self.elements,
        };
        per_gpu * self.dtype.size().unwrap_or(1) as u64
    }
}

/// Kv heads each GPU holds at tensor-parallel degree `tp`.
pub fn kv_heads_per_gpu(kv_heads: usize, tp: usize) -> usize {
    (kv_heads / tp.max(1)).max(1)
}

/// Every tensor of the checkpoint `config` describes, in groups by kind, dtype and tensor-parallel split.
pub fn weight_groups(config: &ModelConfig) -> Vec<WeightGroup> {
    let mut g = Groups { out: Vec::new(), quant: config.quantization.clone() };
    let t = &config.text;
    let (h, layers) = (t.hidden_size as u64, t.num_hidden_layers as u64);
    let (q, kv) = ((t.num_attention_heads * t.head_dim) as u64, (t.num_key_value_heads * t.head_dim) as u64);
    let vocab = t.vocab_size as u64;
    g.add("embed_tokens", Dtype::BF16, vocab * h, Split::Sharded);
    if !t.tie_word_embeddings {
        g.add("lm_head", Dtype::BF16, vocab * h, Split::Sharded);
    }
    g.linear("attention q, o", layers, q, h, Split::Sharded, Parallel::Column);
    g.linear("attention q, o", layers, h, q, Split::Sharded, Parallel::Row);
    g.linear("attention k, v", 2 * layers, kv, h, Split::KvHeads, Parallel::Column);
    if t.attention_bias || config.family == Family::Glm4v {
        g.add("q biases", Dtype::BF16, layers * q, Split::Sharded);
        g.add("k, v biases", Dtype::BF16, 2 * layers * kv, Split::KvHeads);
    }
    let norms_per_layer = match config.family {
        Family::Glm4vMoe => 2,
        Family::Glm4v => 4,
    };
    g.add("norms", Dtype::BF16, h + layers * norms_per_layer * h, Split::Replicated);
    let dense_layers = (0..t.num_hidden_layers).filter(|&l| !t.is_moe_layer(l)).count() as u64;
    let inter = t.intermediate_size as u64;
    match config.family {
        // Glm4v stores gate and up as one fused [2I, h] tensor.
        Family::Glm4v => g.linear("dense MLP", dense_layers, 2 * inter, h, Split::Sharded, Parallel::Column),
        Family::Glm4vMoe => g.linear("dense MLP", 2 * dense_layers, inter, h, Split::Sharded, Parallel::Column),
    }
    g.linear("dense MLP", dense_layers, h, inter, Split::Sharded, Parallel::Row);
    if let Some(moe) = &t.moe {
        let moe_layers = layers - dense_layers;
        let (experts, mi) = (moe.n_routed_experts as u64, moe.moe_intermediate_size as u64);
        g.linear("routed experts", 2 * moe_layers * experts, mi, h, Split::Sharded, Parallel::Column);
        g.linear("routed experts", moe_layers * experts, h, mi, Split::Sharded, Parallel::Row);
        let shared = mi * moe.n_shared_experts as u64;
        if shared > 0 {
            g.linear("shared experts", 2 * moe_layers, shared, h, Split::Sharded, Parallel::Column);
            g.linear("shared experts", moe_layers, h, shared, Split::Sharded, Parallel::Row);
        }
        g.add("router gates", Dtype::BF16, moe_layers * experts * h, Split::Replicated);
        g.add("router correction biases", Dtype::F32, moe_layers * experts, Split::Replicated);
    }
    let v = &config.vision;
    let (vh, out, merge) = (v.hidden_size as u64, v.out_hidden_size as u64, v.spatial_merge_size as u64);
    let side = (v.image_size / v.patch_size.max(1)) as u64;
    let patch = (v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size) as u64;
    let block = 2 * vh + 4 * vh * vh + 3 * vh * out; // norm1, norm2, qkv, proj, SwiGLU vh -> out -> vh
    let vision = vh * patch + vh // patch_embed (Conv3d + bias)
        + vh // post_conv_layernorm
        + side * side * vh // learned position embedding
        + v.depth as u64 * block
        + vh // post_layernorm
        + out * vh * merge * merge + out // downsample (Conv2d + bias)
        + out * out + 2 * out // merger proj, post_projection_norm (LayerNorm weight + bias)
        + 3 * out * v.intermediate_size as u64; // merger SwiGLU
    g.out.push(WeightGroup {
        name: "vision tower",
        dtype: Dtype::BF16,
        elements: vision,
        split: Split::Replicated,
        vision: true,
        scales: false,
    });
    // Parameters of the text model, then the FP8 scales, then the vision tower.
    g.out.sort_by_key(|w| (w.vision, w.scales));
    g.out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Parallel {
    /// Output channels split (q, k, v, gate, up): per-channel scales split with them.
    Column,
    /// Input channels split (o, down): per-channel scales belong to unsplit output channels.
    Row,
}

struct Groups {
    out: Vec<WeightGroup>,
    quant: Option<QuantConfig>,
}

impl Groups {
    fn push(&mut self, name: &'static str, dtype: Dtype, elements: u64, split: Split, scales: bool) {
        if elements == 0 {
            return;
        }
        let same = |w: &&mut WeightGroup| w.name == name && w.dtype == dtype && w.split == split;
        match self.out.iter_mut().find(same) {
            Some(w) => w.elements += elements,
            None => self.out.push(WeightGroup { name, dtype, elements, split, vision: false, scales }),
        }
    }

    fn add(&mut self, name: &'static str, dtype: Dtype, elements: u64, split: Split) {
        self.push(name, dtype, elements, split, false);
    }

    /// `count` language-model projections of shape [rows, cols]: FP8 plus scales in an FP8 checkpoint.
    fn linear(&mut self, name: &'static str, count: u64, rows: u64, cols: u64, split: Split, parallel: Parallel) {
        let Some(quant) = self.quant.clone() else {
            return self.add(name, Dtype::BF16, count * rows * cols, split);
        };
        self.add(name, Dtype::F8E4M3, count * rows * cols, split);
        let (scales, scale_split) = match quant.weights {
            WeightQuant::PerChannel => (rows, if parallel == Parallel::Column { split } else { Split::Replicated }),
            WeightQuant::Block { block } => (rows.div_ceil(block[0] as u64) * cols.div_ceil(block[1] as u64), split),
        };
        let label = match scale_split {
            Split::Sharded => "FP8 scales (split)",
            Split::KvHeads => "FP8 scales (k, v)",
            Split::Replicated => "FP8 scales (o, down)",
        };
        self.push(label, Dtype::F32, count * scales, scale_split, true);
    }
}

/// Parameters of the checkpoint (the FP8 scales aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCount {
    pub text: u64,
    pub vision: u64,
}

impl ParamCount {
    pub fn of(groups: &[WeightGroup]) -> Self {
        let sum = |vision: bool| groups.iter().filter(|g| !g.scales && g.vision == vision).map(|g| g.elements).sum();
        ParamCount { text: sum(false), vision: sum(true) }
    }

    pub fn total(&self) -> u64 {
        self.text + self.vision
    }
}

/// Why a tensor-parallel degree cannot split this model, if it cannot.
pub fn tp_problem(config: &ModelConfig, tp: usize) -> Option<String> {
    let t = &config.text;
    let (heads, kv) = (t.num_attention_heads, t.num_key_value_heads);
    // The vocabulary is not checked: SGLang pads it to a multiple of the GPUs.
    let mut widths = vec![("attention heads", heads), ("intermediate_size", t.intermediate_size)];
    if let Some(moe) = &t.moe {
        widths.push(("moe_intermediate_size", moe.moe_intermediate_size));
    }
    if tp == 0 {
        return Some("the GPU count must be at least 1".into());
    }
    if heads.is_multiple_of(tp) && !kv.is_multiple_of(tp) && !tp.is_multiple_of(kv) {
        return Some(format!("{tp} GPUs neither divide nor are a multiple of the {kv} kv heads"));
    }
    let (what, n) = widths.into_iter().find(|&(_, n)| !n.is_multiple_of(tp))?;
    Some(format!("{tp} GPUs do not divide the {n} {what}"))
}

/// What the plan is asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanOptions {
    pub gpus: usize,
    pub gpu_bytes: u64,
    pub mem_fraction_static: f64,
    pub kv_dtype: KvDtype,
    /// `--context-length`: the longest sequence that must fit (default: the model's, shrunk to what fits).
    pub context_length: Option<usize>,
    pub chunked_prefill_size: usize,
}

/// One workload of the concurrency table: sequences of `prompt + output` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    pub prompt: usize,
    pub output: usize,
    /// Sequences whose KV cache fits at once (0 where one is longer than the context).
    pub sequences: usize,
}

/// The memory plan of one model on `gpus` GPUs of one kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub options: PlanOptions,
    pub groups: Vec<WeightGroup>,
    pub params: ParamCount,
    pub weight_bytes: u64,
    pub weight_bytes_per_gpu: u64,
    pub kv_layers: usize,
    pub kv_heads: usize,
    pub kv_heads_per_gpu: usize,
    pub head_dim: usize,
    /// KV bytes of one token over all GPUs (kv heads counted once) and on each GPU.
    pub kv_bytes_per_token: u64,
    pub kv_bytes_per_token_per_gpu: u64,
    /// `mem_fraction_static x gpu_bytes`: weights, runtime reserve and KV cache.
    pub static_budget: u64,
    /// What the static budget leaves for weights: `static_budget - RUNTIME_RESERVE_BYTES`.
    pub weight_room: u64,
    pub kv_cache_bytes: u64,
    pub kv_blocks: u64,
    pub kv_tokens: u64,
    /// Left outside the static budget for activations: `gpu_bytes - static_budget`.
    pub activation_headroom: u64,
    /// Estimated activations of one prefill chunk (see [`activation_bytes`]).
    pub activation_estimate: u64,
    /// Estimated activations of the largest decode step recorded as a CUDA graph ([`DECODE_GRAPH_ROWS`] rows):
    /// recordings allocate from the graph memory pool, apart from the chunk's, and keep it between replays.
    pub graph_pool_estimate: u64,
    /// The model's context, or `--context-length`.
    pub context_limit: usize,
    /// The longest sequence that fits: `context_limit`, or less where the KV cache holds fewer tokens.
    pub max_context: usize,
    pub concurrency: Vec<Concurrency>,
    /// Why it does not fit, if it does not.
    pub problem: Option<String>,
}

impl Plan {
    pub fn fits(&self) -> bool {
        self.problem.is_none()
    }

    pub fn new(config: &ModelConfig, options: PlanOptions) -> Self {
        let t = &config.text;
        let tp = options.gpus.max(1);
        let groups = weight_groups(config);
        let params = ParamCount::of(&groups);
        let kv = t.num_key_value_heads;
        let weight_bytes = groups.iter().map(WeightGroup::bytes).sum();
        let weight_bytes_per_gpu = groups.iter().map(|g| g.bytes_per_gpu(kv, tp)).sum();
        let head_bytes = options.kv_dtype.head_bytes(t.head_dim) as u64;
        let per_layer_head = t.num_hidden_layers as u64 * 2 * head_bytes;
        let kv_heads_per_gpu = kv_heads_per_gpu(kv, tp);
        let kv_bytes_per_token_per_gpu = per_layer_head * kv_heads_per_gpu as u64;
        let static_budget = (options.mem_fraction_static * options.gpu_bytes as f64).round() as u64;
        let weight_room = static_budget.saturating_sub(RUNTIME_RESERVE_BYTES);
        let kv_cache_bytes = weight_room.saturating_sub(weight_bytes_per_gpu);
        let kv_blocks = kv_cache_bytes / (kv_bytes_per_token_per_gpu * KV_BLOCK_SIZE as u64).max(1);
        let kv_tokens = kv_blocks * KV_BLOCK_SIZE as u64;
        let context_limit = options.context_length.unwrap_or(t.max_position_embeddings);
        let max_context = context_limit.min(usize::try_from(kv_tokens).unwrap_or(usize::MAX));
        let sequences = |tokens: usize| {
            if tokens > max_context {
                0
            } else {
                (kv_blocks / tokens.div_ceil(KV_BLOCK_SIZE).max(1) as u64) as usize
            }
        };
        let concurrency = [(1024, 1024), (8192, 1024), (max_context, 0)]
            .into_iter()
            .map(|(prompt, output)| Concurrency { prompt, output, sequences: sequences(prompt + output) })
            .collect();
        let gb = |b: u64| b as f64 / 1e9;
        let required = options.context_length.unwrap_or(MIN_CONTEXT.min(t.max_position_embeddings));
        let problem = if let Some(p) = tp_problem(config, tp) {
            Some(p)
        } else if weight_bytes_per_gpu > weight_room {
            Some(format!(
                "needs {:.2} GB per GPU for weights, has {:.2} ({} x {:.0} GB budget - {:.2} GB runtime reserve)",
                gb(weight_bytes_per_gpu),
                gb(weight_room),
                options.mem_fraction_static,
                gb(options.gpu_bytes),
                gb(RUNTIME_RESERVE_BYTES)
            ))
        } else if (kv_tokens as usize) < required {
            Some(format!(
                "the KV cache left after the weights ({:.2} GB per GPU) holds {kv_tokens} tokens, one sequence of \
                 {required} needs {}",
                gb(kv_cache_bytes),
                required.div_ceil(KV_BLOCK_SIZE) * KV_BLOCK_SIZE
            ))
        } else {
            None
        };
        Plan {
            options,
            groups,
            params,
            weight_bytes,
            weight_bytes_per_gpu,
            kv_layers: t.num_hidden_layers,
            kv_heads: kv,
            kv_heads_per_gpu,
            head_dim: t.head_dim,
            kv_bytes_per_token: per_layer_head * kv as u64,
            kv_bytes_per_token_per_gpu,
            static_budget,
            weight_room,
            kv_cache_bytes,
            kv_blocks,
            kv_tokens,
            activation_headroom: options.gpu_bytes.saturating_sub(static_budget),
            activation_estimate: activation_bytes(config, tp, options.chunked_prefill_size),
            graph_pool_estimate: activation_bytes(config, tp, DECODE_GRAPH_ROWS),
            context_limit,
            max_context,
            concurrency,
            problem,
        }
    }

    /// Per-GPU bytes of a weight group under this plan's tensor-parallel degree.
    pub fn group_bytes_per_gpu(&self, group: &WeightGroup) -> u64 {
        group.bytes_per_gpu(self.kv_heads, self.options.gpus.max(1))
    }

    pub fn to_json(&self) -> Value {
        let o = &self.options;
        let groups: Vec<Value> = self
            .groups
            .iter()
            .map(|g| {
                json!({"name": g.name, "dtype": g.dtype.to_string(), "elements": g.elements, "bytes": g.bytes(),
                       "bytes_per_gpu": self.group_bytes_per_gpu(g), "split": g.split.name(),
                       "part": if g.vision { "vision" } else { "text" }, "fp8_scales": g.scales})
            })
            .collect();
        let concurrency: Vec<Value> = self
            .concurrency
            .iter()
            .map(|c| json!({"prompt": c.prompt, "output": c.output, "sequences": c.sequences}))
            .collect();
        json!({
            "gpus": o.gpus, "tp": o.gpus, "fits": self.fits(), "does_not_fit": self.problem,
            "parameters": {"total": self.params.total(), "text": self.params.text, "vision": self.params.vision},
            "weights": {"bytes": self.weight_bytes, "bytes_per_gpu": self.weight_bytes_per_gpu, "groups": groups},
            "kv_cache": {
                "dtype": kv_dtype_name(o.kv_dtype), "layers": self.kv_layers, "kv_heads": self.kv_heads,
                "kv_heads_per_gpu": self.kv_heads_per_gpu, "head_dim": self.head_dim,
                "bytes_per_token": self.kv_bytes_per_token, "bytes_per_token_per_gpu": self.kv_bytes_per_token_per_gpu,
                "bytes_per_gpu": self.kv_cache_bytes, "block_size": KV_BLOCK_SIZE, "blocks": self.kv_blocks,
                "tokens": self.kv_tokens,
            },
            "memory": {
                "unit": "bytes", "gpu_bytes": o.gpu_bytes, "mem_fraction_static": o.mem_fraction_static,
                "static_budget_bytes": self.static_budget, "runtime_reserve_bytes": RUNTIME_RESERVE_BYTES,
                "weight_room_bytes": self.weight_room, "activation_headroom_bytes": self.activation_headroom,
                "activation_estimate_bytes": self.activation_estimate,
                "graph_pool_estimate_bytes": self.graph_pool_estimate,
                "chunked_prefill_size": o.chunked_prefill_size,
            },
            "context_limit": self.context_limit, "max_context": self.max_context, "concurrency": concurrency,
        })
    }
}

/// `--kv-cache-dtype` spelling of a KV dtype.
pub fn kv_dtype_name(dtype: KvDtype) -> &'static str {
    match dtype {
        KvDtype::F32 => "f32",
        KvDtype::Bf16 => "bf16",
        KvDtype::Fp8E4m3 => "fp8_e4m3",
    }
}

/// An estimate of the activations one forward step of `tokens` tokens keeps live on each GPU in glmv's backends,
/// which hold activations in f32: the residual stream, its normed copy and the layer's output (3 x hidden, not
/// split), plus the widest of attention (the fused q/k/v output, rotated q and k, the attention output), the
/// dense MLP (gate/up output and the SwiGLU product) and the MoE block (per routed pair the SwiGLU product and
/// the expert's output row before the weighted sum, as the grouped expert GEMMs keep them; the shared expert's
/// gate/up output and product, router logits, ids and weights), each split over `tp` but the expert's output rows
/// (partial sums of the full width under tensor parallelism). The weights are
/// not counted (they are resident), nor the logits of the sampled rows (made after the layers' buffers are free
/// and far smaller at `--max-running-requests` rows).
pub fn activation_bytes(config: &ModelConfig, tp: usize, tokens: usize) -> u64 {
    let t = &config.text;
    let tp = tp.max(1);
    let q = t.num_attention_heads * t.head_dim / tp;
    let kv = kv_heads_per_gpu(t.num_key_value_heads, tp) * t.head_dim;
    let attention = (q + 2 * kv) + q + kv + q;
    let dense = 3 * t.intermediate_size / tp;
    let moe = t.moe.as_ref().map_or(0, |m| {
        let mi = m.moe_intermediate_size / tp;
        m.num_experts_per_tok * (mi + t.hidden_size)
            + 3 * mi * m.n_shared_experts
            + m.n_routed_experts
            + 2 * m.num_experts_per_tok
    });
    let per_token = 3 * t.hidden_size + attention.max(dense).max(moe);
    (tokens * per_token * 4) as u64
}

/// Decode steps of up to this many sequences run as CUDA graphs by default (SGLang's `--cuda-graph-max-bs`).
pub const DECODE_GRAPH_ROWS: usize = 256;

/// The plan at each tensor-parallel degree from `from` up, the first that fits.
pub fn smallest_fit(config: &ModelConfig, options: PlanOptions, from: usize) -> Option<Plan> {
    TP_DEGREES
        .into_iter()
        .filter(|&tp| tp >= from && tp_problem(config, tp).is_none())
        .map(|gpus| Plan::new(config, PlanOptions { gpus, ..options }))
        .find(Plan::fits)
}

#[cfg(test)]
mod tests;
