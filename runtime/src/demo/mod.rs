//! The built-in demo model: a small GLM-4.5V-architecture checkpoint (Glm4vMoe text decoder with MoE layers and
//! the vision tower) with random weights from a fixed seed, the GLM-V chat template and a tiny byte-level BPE
//! tokenizer with GLM-V's special tokens. `glmv serve` without `--model-path` serves it, so that a first command
//! exercises the whole API on any machine. Its answers are random text: it is for trying the server, not a model.
use std::path::Path;

mod shapes;
pub use shapes::write_shapes_checkpoint;

use serde_json::json;

use crate::{
    config::ModelConfig,
    engine::sampler::Rng,
    text::Tokenizer,
    weights::{
        layout::{bf16_layout, TensorKind},
        writer::{write_safetensors, RawTensor},
    },
    Error, Result,
};

pub const DEMO_MODEL_NAME: &str = "glmv-demo-random";
const SEED: u64 = 0x0611_2026;
/// A 388-token byte-level BPE: 352 merges over bytes plus GLM-V's 36 special tokens (`<|image|>` = 386).
const TOKENIZER: &str = include_str!("tokenizer.json");
const CHAT_TEMPLATE: &str = include_str!("chat_template.jinja");

fn config() -> serde_json::Value {
    json!({
        "architectures": ["Glm4vMoeForConditionalGeneration"],
        "model_type": "glm4v_moe",
        "image_token_id": 386, "video_token_id": 387,
        "image_start_token_id": 362, "image_end_token_id": 363,
        "video_start_token_id": 364, "video_end_token_id": 365,
        "tie_word_embeddings": false,
        "text_config": {
            "model_type": "glm4v_moe_text",
            "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": 32, "intermediate_size": 256, "moe_intermediate_size": 64, "vocab_size": 388,
            "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 1,
            "n_group": 2, "topk_group": 1, "norm_topk_prob": true, "routed_scaling_factor": 1.0,
            "attention_bias": true, "rms_norm_eps": 1e-5, "max_position_embeddings": 8192,
            "tie_word_embeddings": false, "eos_token_id": [352, 359, 361], "pad_token_id": 352,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                "mrope_section": [2, 3, 3]}
        },
        "vision_config": {
            "model_type": "glm4v_moe_vision", "depth": 2, "hidden_size": 64, "num_heads": 2, "patch_size": 14,
            "temporal_patch_size": 2, "spatial_merge_size": 2, "in_channels": 3, "image_size": 336,
            "out_hidden_size": 128, "intermediate_size": 160, "rms_norm_eps": 1e-5, "attention_bias": false
        }
    })
}

/// The demo model's tokenizer (what a client of a demo server, such as `glmv bench`, tokenises with).
pub fn tokenizer() -> Result<Tokenizer> {
    Tokenizer::from_json(TOKENIZER)
}

/// Writes the demo checkpoint (config, weights, tokenizer, template, processor config) into `dir`.
pub fn write_demo_checkpoint(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let config_json = config();
    write_file(dir, "config.json", &config_json.to_string())?;
    write_file(dir, "tokenizer.json", TOKENIZER)?;
    write_support_files(dir, &[352, 359, 361], 8192)?;
    let config = ModelConfig::from_json(&config_json, None)?;
    let mut rng = Rng::new(SEED);
    let tensors: Vec<RawTensor> = bf16_layout(&config)
        .into_iter()
        .map(|t| {
            let n: usize = t.shape.iter().product();
            // Scaled like an initialised model (std ~ 1/sqrt(fan_in)) so activations stay in range.
            let fan_in = t.shape[1..].iter().product::<usize>().max(1);
            let scale = 1.0 / (fan_in as f32).sqrt();
            match t.kind {
                TensorKind::NormWeight => RawTensor::bf16(t.name, &t.shape, &vec![1.0; n]),
                TensorKind::RouterBias => RawTensor::f32(t.name, &t.shape, &vec![0.0; n]),
                TensorKind::Bias => RawTensor::bf16(t.name, &t.shape, &vec![0.0; n]),
                TensorKind::Weight => {
                    let values: Vec<f32> = (0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * scale * 1.7).collect();
                    RawTensor::bf16(t.name, &t.shape, &values)
                }
            }
        })
        .collect();
    write_safetensors(&dir.join("model.safetensors"), &tensors)
}

fn write_file(dir: &Path, name: &str, text: &str) -> Result<()> {
    std::fs::write(dir.join(name), text).map_err(|e| Error::io(dir.join(name), e))
}

/// What a checkpoint directory holds besides config, tokenizer and weights: generation config (stop ids), the GLM-V
/// chat template, tokenizer config and GLM-4.5V's image processor config.
fn write_support_files(dir: &Path, eos: &[u32], max_length: usize) -> Result<()> {
    write_file(dir, "generation_config.json", &json!({"eos_token_id": eos, "pad_token_id": eos[0]}).to_string())?;
    write_file(dir, "chat_template.jinja", CHAT_TEMPLATE)?;
    write_file(
        dir,
        "tokenizer_config.json",
        &json!({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "model_max_length": max_length})
            .to_string(),
    )?;
    write_file(
        dir,
        "preprocessor_config.json",
        &json!({
            "image_processor_type": "Glm4vImageProcessor", "processor_class": "Glm4vProcessor",
            "do_convert_rgb": true, "do_normalize": true, "do_rescale": true, "do_resize": true, "resample": 3,
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
            "merge_size": 2, "patch_size": 14, "temporal_patch_size": 2, "rescale_factor": 0.00392156862745098,
            "size": {"shortest_edge": 12544, "longest_edge": 1003520}
        })
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_checkpoint_loads_and_generates() {
        let dir = std::env::temp_dir().join(format!("glmv-demo-test-{}", std::process::id()));
        write_demo_checkpoint(&dir).unwrap();
        let p = crate::pipeline::Pipeline::load(&dir, crate::backend::CpuBackend, &mut |_| {}).unwrap();
        let ids = p.tokenizer.encode("Hello world").unwrap();
        let options = crate::pipeline::GenerateOptions {
            max_tokens: 4,
            sampling: crate::engine::sampler::SamplingParams { temperature: 0.0, ..Default::default() },
            ignore_eos: true,
        };
        let out = p.generate(&crate::pipeline::Prompt::text(ids), &[], &options, &mut |_, _| {}).unwrap();
        assert_eq!(out.len(), 4);
        // The same seed gives the same weights: the bytes are reproducible.
        let first = std::fs::read(dir.join("model.safetensors")).unwrap();
        write_demo_checkpoint(&dir).unwrap();
        assert_eq!(first, std::fs::read(dir.join("model.safetensors")).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
