//! The config.json of each GLM-V model `glmv config` plans for, embedded (`known/*.json`), so that memory plans and
//! dummy checkpoints come from the numbers the runtime reads from a real checkpoint, through the same parser
//! ([`ModelConfig::from_json`]). The files are written from reference/model.md §1; its legend applies:
//! **[V]** verified against a checkpoint dump, **[I]** inferred from code defaults or indirect evidence,
//! **[U]** unverified. What is [I]/[U] is listed next to each file below; a real checkpoint's config.json wins
//! over these wherever they differ (`glmv serve` reads the checkpoint's own file, never these).
use serde_json::Value;

use super::ModelConfig;
use crate::{Error, Result};

/// GLM-4.5V, `Glm4vMoeForConditionalGeneration`: **[V]** every value, from the dump of the real checkpoint
/// (model.md §1.1; its parameter count, 107,710,933,120, is reproduced from these shapes in §8).
const GLM_45V: &str = include_str!("known/glm-4.5v.json");
/// GLM-4.6V: GLM-4.5V's shapes **[I]** (vLLM recipes: "moe 107B / 12B"; same architecture class);
/// `max_position_embeddings` 131072 **[I]** (vLLM recipe: "131,072 ctx"); `rope_theta` 10000 **[U]** (not read from
/// the real json; it does not change memory); token ids as GLM-4.5V **[U]**.
const GLM_46V: &str = include_str!("known/glm-4.6v.json");
/// GLM-4.1V-9B-Thinking, `Glm4vForConditionalGeneration` (model.md §1.3): all shapes **[I]** (transformers'
/// `Glm4vConfig` defaults, whose docstring names this checkpoint, and a third-party port's constants; the count
/// they give, 10.29 B, matches the published "10B"); `max_position_embeddings` 32768 is the class default **[I]**
/// (the model card claims 64K **[U]**); `eos_token_id` [151329, 151336, 151338] **[U]**.
const GLM_41V: &str = include_str!("known/glm-4.1v.json");
/// GLM-4.6V-Flash (model.md §1.4): GLM-4.1V's shapes **[I]**: the 2 kv heads (a GGUF card claims 8 **[U]**) are
/// supported by the 20.6 GB BF16 size on disk (10.29 B params x 2 B; 8 kv heads would make it 21.6 GB);
/// `max_position_embeddings` 131072 from the card's "128K context" **[U]**; architecture name, rope_theta and
/// token ids (`Glm4vConfig` defaults; `Glm46VConfig` would put the video start/end at 151361/151362) **[U]**.
const GLM_46V_FLASH: &str = include_str!("known/glm-4.6v-flash.json");
/// Glyph, a GLM-4.1V-9B-Base fine-tune with the same class: GLM-4.1V's values **[I]** (model.md §1.3),
/// `max_position_embeddings` 32768 **[I]**.
const GLYPH: &str = include_str!("known/glyph.json");
/// The FP8 checkpoints' `quantization_config` **[I]** (model.md §7, performance.md §0): compressed-tensors
/// `float-quantized`, FP8 E4M3 weights with one scale per output channel, dynamic per-token FP8 activations,
/// `ignore` = lm_head, the vision tower and the MoE router (embeddings are not `Linear`, so not targeted).
/// That GLM-4.5V-FP8 loads through compressed-tensors is **[V]** (zai-org/GLM-V#178); the rest is the GLM-4.5
/// FP8 family's convention, not read from these checkpoints' json.
const FP8_QUANTIZATION: &str = include_str!("known/fp8-compressed-tensors.json");

/// The models `glmv config` knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownModel {
    Glm45v,
    Glm46v,
    Glm41v,
    Glm46vFlash,
    Glyph,
}

/// The precision of the checkpoint to plan for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Bf16,
    /// The FP8 checkpoint (see [`FP8_QUANTIZATION`]).
    Fp8,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Bf16 => "bf16",
            Precision::Fp8 => "fp8",
        }
    }
}

impl KnownModel {
    pub const ALL: [KnownModel; 5] =
        [KnownModel::Glm45v, KnownModel::Glm46v, KnownModel::Glm41v, KnownModel::Glm46vFlash, KnownModel::Glyph];

    /// The name `glmv config --model` takes.
    pub fn name(self) -> &'static str {
        match self {
            KnownModel::Glm45v => "glm-4.5v",
            KnownModel::Glm46v => "glm-4.6v",
            KnownModel::Glm41v => "glm-4.1v",
            KnownModel::Glm46vFlash => "glm-4.6v-flash",
            KnownModel::Glyph => "glyph",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// The Hugging Face repository of the BF16 checkpoint.
    fn repo(self) -> &'static str {
        match self {
            KnownModel::Glm45v => "zai-org/GLM-4.5V",
            KnownModel::Glm46v => "zai-org/GLM-4.6V",
            KnownModel::Glm41v => "zai-org/GLM-4.1V-9B-Thinking",
            KnownModel::Glm46vFlash => "zai-org/GLM-4.6V-Flash",
            KnownModel::Glyph => "zai-org/Glyph",
        }
    }

    /// The checkpoint's repository: the BF16 one, or its `-FP8` sibling as the SGLang cookbooks name them.
    pub fn checkpoint(self, precision: Precision) -> String {
        match precision {
            Precision::Bf16 => self.repo().to_string(),
            Precision::Fp8 => format!("{}-FP8", self.repo()),
        }
    }

    /// Whether the seeds (the SGLang cookbooks and docs, vLLM's recipe) name this checkpoint; the others follow
    /// their naming but may not exist.
    pub fn checkpoint_is_published(self, precision: Precision) -> bool {
        match precision {
            Precision::Bf16 => true,
            Precision::Fp8 => matches!(self, KnownModel::Glm45v | KnownModel::Glm46v | KnownModel::Glyph),
        }
    }

    /// The checkpoint's config.json; the FP8 one carries the `quantization_config`.
    pub fn config_json(self, precision: Precision) -> Result<Value> {
        let text = match self {
            KnownModel::Glm45v => GLM_45V,
            KnownModel::Glm46v => GLM_46V,
            KnownModel::Glm41v => GLM_41V,
            KnownModel::Glm46vFlash => GLM_46V_FLASH,
            KnownModel::Glyph => GLYPH,
        };
        let mut config = parse_embedded(self.name(), text)?;
        if precision == Precision::Fp8 {
            let quant = parse_embedded("fp8-compressed-tensors", FP8_QUANTIZATION)?;
            if let Some(object) = config.as_object_mut() {
                object.insert("quantization_config".into(), quant);
            }
        }
        Ok(config)
    }

    /// The parsed configuration, as `glmv serve` would read it from the checkpoint's config.json.
    pub fn config(self, precision: Precision) -> Result<ModelConfig> {
        ModelConfig::from_json(&self.config_json(precision)?, None)
    }
}

fn parse_embedded(name: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::Config(format!("the embedded {name} config is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glmv-codegen lists the models' shapes by hand (it is built before the runtime); they must be these
    /// checkpoints', or the specialised kernels would silently never run.
    #[test]
    fn codegen_specialises_for_every_known_model() {
        for model in KnownModel::ALL {
            let c = model.config(Precision::Bf16).unwrap();
            let t = &c.text;
            let decoder = glmv_codegen::DecoderShape {
                what: "",
                hidden: t.hidden_size as u32,
                attention_width: (t.num_attention_heads * t.head_dim) as u32,
                intermediate: t.intermediate_size as u32,
                expert_intermediate: t.moe.as_ref().map(|m| m.moe_intermediate_size as u32),
            };
            assert!(
                glmv_codegen::DECODER_SHAPES.iter().any(|s| glmv_codegen::DecoderShape { what: "", ..*s } == decoder),
                "{}: {decoder:?}",
                model.name()
            );
            let v = &c.vision;
            for (heads, kv_heads, head_dim) in [
                (t.num_attention_heads, t.num_key_value_heads, t.head_dim),
                (v.num_heads, v.num_heads, v.hidden_size / v.num_heads),
            ] {
                let found = glmv_codegen::ATTENTION_SHAPES.iter().any(|s| {
                    (s.heads as usize, s.kv_heads as usize, s.head_dim as usize) == (heads, kv_heads, head_dim)
                });
                assert!(found, "{}: attention {heads}:{kv_heads} d{head_dim}", model.name());
            }
        }
    }
}
