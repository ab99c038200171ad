//! The checkpoint's configuration: config.json of both GLM-V families, generation_config.json and the FP8 scheme.
//! Every model number the rest of the runtime uses comes from here; nothing model-specific is a constant in code.
mod json;
pub mod known;
pub mod plan;
mod quant;

use std::path::Path;

use serde_json::Value;

pub use quant::{ActivationScheme, Fp8Activations, InputQuant, QuantConfig, WeightQuant};

use crate::{Error, Result};
use json::{first, Obj};

/// The two GLM-V model families, which differ in decoder layer shape and RoPE layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// GLM-4.5V, GLM-4.6V: MoE text decoder, two norms per layer, NeoX-halves rotary.
    Glm4vMoe,
    /// GLM-4.1V, Glyph, GLM-4.6V-Flash: dense text decoder, four norms per layer, interleaved-pairs rotary.
    Glm4v,
}

/// How the rotary dims of a head are paired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs (j, j + rot_dim/2): transformers' `rotate_half`.
    NeoxHalves,
    /// Pairs (2i, 2i + 1): transformers' `rotate_half_llm`.
    InterleavedPairs,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    pub partial_rotary_factor: f64,
    /// Frequencies per M-RoPE axis (t, h, w); sums to rot_dim / 2.
    pub mrope_section: Vec<usize>,
    pub layout: RopeLayout,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub n_routed_experts: usize,
    pub num_experts_per_tok: usize,
    pub n_shared_experts: usize,
    pub moe_intermediate_size: usize,
    pub first_k_dense_replace: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// Width of the dense MLP (every Glm4v layer; the first `first_k_dense_replace` Glm4vMoe layers).
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub attention_bias: bool,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub rope: RopeConfig,
    /// Present for Glm4vMoe only.
    pub moe: Option<MoeConfig>,
}

impl TextConfig {
    pub fn rot_dim(&self) -> usize {
        (self.head_dim as f64 * self.rope.partial_rotary_factor) as usize
    }

    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.moe.as_ref().is_some_and(|m| layer >= m.first_k_dense_replace)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    pub in_channels: usize,
    pub image_size: usize,
    pub out_hidden_size: usize,
    pub intermediate_size: usize,
    pub rms_norm_eps: f64,
}

/// Token ids the model graph and the prompt path need; all read from config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenIds {
    pub image: u32,
    pub video: u32,
    pub image_start: u32,
    pub image_end: u32,
    pub video_start: u32,
    pub video_end: u32,
    /// Generation stops at any of these (generation_config.json first, then config.json).
    pub eos: Vec<u32>,
}

/// Sampling defaults the checkpoint ships in generation_config.json.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    pub family: Family,
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub tokens: TokenIds,
    pub generation: GenerationDefaults,
    pub quantization: Option<QuantConfig>,
}

impl ModelConfig {
    /// Reads `config.json` and, when present, `generation_config.json` from a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config = read_json(&dir.join("config.json"))?;
        let gen_path = dir.join("generation_config.json");
        let generation = if gen_path.exists() { Some(read_json(&gen_path)?) } else { None };
        Self::from_json(&config, generation.as_ref())
    }

    pub fn from_json(config: &Value, generation: Option<&Value>) -> Result<Self> {
        let top = Obj::new(config, "");
        let architecture = top
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Error::Config("architectures is missing".into()))?;
        let family = match architecture.as_str() {
            "Glm4vMoeForConditionalGeneration" => Family::Glm4vMoe,
            "Glm4vForConditionalGeneration" | "Glm46VForConditionalGeneration" => Family::Glm4v,
            other => return Err(Error::UnsupportedArchitecture(other.to_string())),
        };
        let text_obj = top.child("text_config").ok_or_else(|| Error::Config("text_config is missing".into()))?;
        let vision_obj = top.child("vision_config").ok_or_else(|| Error::Config("vision_config is missing".into()))?;
        let text = parse_text(family, text_obj, top)?;
        let vision = parse_vision(vision_obj)?;
        let tokens = parse_tokens(top, text_obj, generation)?;
        let generation = match generation {
            Some(g) => parse_generation(Obj::new(g, "generation_config"))?,
            None => GenerationDefaults::default(),
        };
        let quantization = match top.child("quantization_config") {
            Some(q) => Some(QuantConfig::parse(q)?),
            None => None,
        };
        Ok(ModelConfig { architecture, family, text, vision, tokens, generation, quantization })
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| Error::Json { path: path.to_path_buf(), source })
}

fn parse_text(family: Family, text: Obj, top: Obj) -> Result<TextConfig> {
    let hidden_size = text.usize("hidden_size")?;
    let num_attention_heads = text.usize("num_attention_heads")?;
    let num_key_value_heads = text.opt_usize("num_key_value_heads")?.unwrap_or(num_attention_heads);
    let head_dim = text.opt_usize("head_dim")?.unwrap_or(hidden_size / num_attention_heads.max(1));
    if num_attention_heads == 0 || num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
        return Err(Error::Config(format!(
            "text_config.num_attention_heads ({num_attention_heads}) must be a positive multiple of num_key_value_heads ({num_key_value_heads})"
        )));
    }
    let rope = parse_rope(family, text, top, head_dim)?;
    let moe = match family {
        Family::Glm4v => None,
        Family::Glm4vMoe => Some(parse_moe(text)?),
    };
    let tie_word_embeddings = first(&[text, top], "tie_word_embeddings", |o, k| o.opt_bool(k))?.unwrap_or(false);
    Ok(TextConfig {
        hidden_size,
        num_hidden_layers: text.usize("num_hidden_layers")?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        intermediate_size: text.usize("intermediate_size")?,
        vocab_size: text.usize("vocab_size")?,
        rms_norm_eps: text.opt_f64("rms_norm_eps")?.unwrap_or(1e-5),
        // Glm4v's attention hard-codes q/k/v biases; Glm4vMoe reads attention_bias.
        attention_bias: match family {
            Family::Glm4v => true,
            Family::Glm4vMoe => text.opt_bool("attention_bias")?.unwrap_or(false),
        },
        max_position_embeddings: text.opt_usize("max_position_embeddings")?.unwrap_or(32768),
        tie_word_embeddings,
        rope,
        moe,
    })
}

/// Rope settings live under `rope_parameters` (transformers >= 5) or `rope_theta` + `rope_scaling` (older saves).
fn parse_rope(family: Family, text: Obj, top: Obj, head_dim: usize) -> Result<RopeConfig> {
    let params: Vec<Obj> =
        ["rope_parameters", "rope_scaling"].into_iter().flat_map(|k| [text.child(k), top.child(k)]).flatten().collect();
    let mut search = params.clone();
    search.extend([text, top]);
    let rope_type = first(&params, "rope_type", |o, k| o.opt_str(k))?
        .or(first(&params, "type", |o, k| o.opt_str(k))?)
        .unwrap_or("default");
    if rope_type != "default" && rope_type != "mrope" {
        return Err(Error::Config(format!("rope_type {rope_type:?} is not supported (only default M-RoPE)")));
    }
    let theta = first(&search, "rope_theta", |o, k| o.opt_f64(k))?.unwrap_or(10000.0);
    // sglang and the Glm4vMoe config default the factor to 0.5; the dense config has no default, so do the same.
    let partial_rotary_factor = first(&search, "partial_rotary_factor", |o, k| o.opt_f64(k))?.unwrap_or(0.5);
    let mrope_section = first(&search, "mrope_section", |o, k| o.opt_usize_list(k))?
        .ok_or_else(|| Error::Config("mrope_section is missing (looked in rope_parameters and rope_scaling)".into()))?;
    let rot_dim = (head_dim as f64 * partial_rotary_factor) as usize;
    if !rot_dim.is_multiple_of(2) || mrope_section.iter().sum::<usize>() * 2 != rot_dim {
        return Err(Error::Config(format!(
            "mrope_section {mrope_section:?} must sum to half the rotary dims ({rot_dim} = head_dim {head_dim} x partial_rotary_factor {partial_rotary_factor})"
        )));
    }
    let layout = match family {
        Family::Glm4vMoe => RopeLayout::NeoxHalves,
        Family::Glm4v => RopeLayout::InterleavedPairs,
    };
    Ok(RopeConfig { theta, partial_rotary_factor, mrope_section, layout })
}

fn parse_moe(text: Obj) -> Result<MoeConfig> {
    let n_routed_experts = text.usize("n_routed_experts")?;
    let n_group = text.opt_usize("n_group")?.unwrap_or(1);
    let topk_group = text.opt_usize("topk_group")?.unwrap_or(1);
    let num_experts_per_tok = text.usize("num_experts_per_tok")?;
    if n_group == 0 || n_routed_experts % n_group != 0 || topk_group == 0 || topk_group > n_group {
        return Err(Error::Config(format!(
            "text_config: n_group {n_group} / topk_group {topk_group} do not divide n_routed_experts {n_routed_experts}"
        )));
    }
    if num_experts_per_tok == 0 || num_experts_per_tok > topk_group * (n_routed_experts / n_group) {
        return Err(Error::Config(format!(
            "text_config.num_experts_per_tok {num_experts_per_tok} exceeds the experts the group limit leaves"
        )));
    }
    Ok(MoeConfig {
        n_routed_experts,
        num_experts_per_tok,
        n_shared_experts: text.opt_usize("n_shared_experts")?.unwrap_or(0),
        moe_intermediate_size: text.usize("moe_intermediate_size")?,
        first_k_dense_replace: text.opt_usize("first_k_dense_replace")?.unwrap_or(0),
        n_group,
        topk_group,
        norm_topk_prob: text.opt_bool("norm_topk_prob")?.unwrap_or(true),
        routed_scaling_factor: text.opt_f64("routed_scaling_factor")?.unwrap_or(1.0),
    })
}

fn parse_vision(v: Obj) -> Result<VisionConfig> {
    Ok(VisionConfig {
        depth: v.usize("depth")?,
        hidden_size: v.usize("hidden_size")?,
        num_heads: v.usize("num_heads")?,
        patch_size: v.usize("patch_size")?,
        temporal_patch_size: v.opt_usize("temporal_patch_size")?.unwrap_or(2),
        spatial_merge_size: v.opt_usize("spatial_merge_size")?.unwrap_or(2),
        in_channels: v.opt_usize("in_channels")?.unwrap_or(3),
        image_size: v.usize("image_size")?,
        out_hidden_size: v.usize("out_hidden_size")?,
        intermediate_size: v.usize("intermediate_size")?,
        rms_norm_eps: v.opt_f64("rms_norm_eps")?.unwrap_or(1e-5),
    })
}

fn parse_tokens(top: Obj, text: Obj, generation: Option<&Value>) -> Result<TokenIds> {
    let id = |key: &str| -> Result<u32> {
        first(&[top, text], key, |o, k| o.opt_usize(k))?
            .map(|n| n as u32)
            .ok_or_else(|| Error::Config(format!("{key} is missing")))
    };
    let mut eos = None;
    if let Some(g) = generation {
        eos = Obj::new(g, "generation_config").opt_id_list("eos_token_id")?;
    }
    if eos.is_none() {
        eos = first(&[text, top], "eos_token_id", |o, k| o.opt_id_list(k))?;
    }
    Ok(TokenIds {
        image: id("image_token_id")?,
        video: id("video_token_id")?,
        image_start: id("image_start_token_id")?,
        image_end: id("image_end_token_id")?,
        video_start: id("video_start_token_id")?,
        video_end: id("video_end_token_id")?,
        eos: eos.unwrap_or_default(),
    })
}

fn parse_generation(g: Obj) -> Result<GenerationDefaults> {
    Ok(GenerationDefaults {
        temperature: g.opt_f64("temperature")?,
        top_p: g.opt_f64("top_p")?,
        top_k: g.opt_usize("top_k")?,
    })
}

#[cfg(test)]
mod tests;
