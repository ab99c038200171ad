use serde_json::json;

use super::*;

/// GLM-4.5V's config.json as the original (pre-transformers-5) save spells it: rope under `rope_scaling`.
fn glm45v() -> Value {
    json!({
        "architectures": ["Glm4vMoeForConditionalGeneration"],
        "model_type": "glm4v_moe",
        "image_token_id": 151363, "video_token_id": 151364,
        "image_start_token_id": 151339, "image_end_token_id": 151340,
        "video_start_token_id": 151341, "video_end_token_id": 151342,
        "text_config": {
            "hidden_size": 4096, "num_hidden_layers": 46, "num_attention_heads": 96,
            "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 10944,
            "moe_intermediate_size": 1408, "n_routed_experts": 128, "num_experts_per_tok": 8,
            "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1,
            "routed_scaling_factor": 1.0, "norm_topk_prob": true, "partial_rotary_factor": 0.5,
            "rope_theta": 10000.0, "rope_scaling": {"type": "default", "mrope_section": [8, 12, 12]},
            "vocab_size": 151552, "rms_norm_eps": 1e-5, "attention_bias": true,
            "max_position_embeddings": 65536, "eos_token_id": [151329, 151336, 151338]
        },
        "vision_config": {
            "depth": 24, "hidden_size": 1536, "num_heads": 12, "patch_size": 14, "temporal_patch_size": 2,
            "spatial_merge_size": 2, "in_channels": 3, "image_size": 336, "out_hidden_size": 4096,
            "intermediate_size": 10944, "rms_norm_eps": 1e-5
        }
    })
}

#[test]
fn parses_glm45v_with_rope_scaling() {
    let c = ModelConfig::from_json(&glm45v(), None).unwrap();
    assert_eq!(c.family, Family::Glm4vMoe);
    assert_eq!(c.text.rot_dim(), 64);
    assert_eq!(c.text.rope.mrope_section, vec![8, 12, 12]);
    assert_eq!(c.text.rope.layout, RopeLayout::NeoxHalves);
    assert_eq!(c.tokens.eos, vec![151329, 151336, 151338]);
    assert_eq!(c.tokens.image, 151363);
    let moe = c.text.moe.as_ref().unwrap();
    assert_eq!((moe.n_routed_experts, moe.num_experts_per_tok), (128, 8));
    assert!(!c.text.is_moe_layer(0) && c.text.is_moe_layer(1));
    assert_eq!(c.vision.intermediate_size, 10944);
}

#[test]
fn parses_rope_parameters_spelling() {
    let mut v = glm45v();
    let t = v["text_config"].as_object_mut().unwrap();
    t.remove("rope_scaling");
    t.remove("rope_theta");
    t.remove("partial_rotary_factor");
    t.insert(
        "rope_parameters".into(),
        json!({"rope_type": "default", "rope_theta": 500000.0, "mrope_section": [8, 12, 12], "partial_rotary_factor": 0.5}),
    );
    let c = ModelConfig::from_json(&v, None).unwrap();
    assert_eq!(c.text.rope.theta, 500000.0);
    assert_eq!(c.text.rot_dim(), 64);
}

#[test]
fn generation_config_eos_wins() {
    let c = ModelConfig::from_json(&glm45v(), Some(&json!({"eos_token_id": 7, "temperature": 0.8}))).unwrap();
    assert_eq!(c.tokens.eos, vec![7]);
    assert_eq!(c.generation.temperature, Some(0.8));
}

#[test]
fn rejects_unknown_architecture_and_bad_sections() {
    let mut v = glm45v();
    v["architectures"] = json!(["LlamaForCausalLM"]);
    assert!(matches!(ModelConfig::from_json(&v, None), Err(Error::UnsupportedArchitecture(_))));

    let mut v = glm45v();
    v["text_config"]["rope_scaling"]["mrope_section"] = json!([8, 12, 8]);
    let err = ModelConfig::from_json(&v, None).unwrap_err().to_string();
    assert!(err.contains("mrope_section"), "{err}");

    let mut v = glm45v();
    v["text_config"]["hidden_size"] = json!("4096");
    let err = ModelConfig::from_json(&v, None).unwrap_err().to_string();
    assert!(err.contains("text_config.hidden_size"), "{err}");
}

#[test]
fn parses_quantization_schemes() {
    let mut v = glm45v();
    v["quantization_config"] = json!({"quant_method": "fp8", "weight_block_size": [128, 128]});
    let c = ModelConfig::from_json(&v, None).unwrap();
    assert_eq!(c.quantization.map(|q| q.weights), Some(WeightQuant::Block { block: [128, 128] }));

    v["quantization_config"] = json!({"quant_method": "compressed-tensors", "format": "float-quantized"});
    let c = ModelConfig::from_json(&v, None).unwrap();
    assert_eq!(c.quantization.map(|q| q.weights), Some(WeightQuant::PerChannel));

    v["quantization_config"] = json!({"quant_method": "awq"});
    assert!(matches!(ModelConfig::from_json(&v, None), Err(Error::UnsupportedQuantization(_))));
}
