//! The tensors a BF16 checkpoint of a model holds, by name and shape, derived from its config: what a demo
//! model or a dummy load (random weights of the real shapes) must provide.
use crate::config::{Family, ModelConfig};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorLayout {
    pub name: String,
    pub shape: Vec<usize>,
    /// Norm weights start at one so that random models stay numerically tame.
    pub kind: TensorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    Weight,
    NormWeight,
    Bias,
    /// The MoE router's correction bias (F32 in the checkpoints).
    RouterBias,
}

/// Every tensor of the text decoder and vision tower, in checkpoint naming.
pub fn bf16_layout(c: &ModelConfig) -> Vec<TensorLayout> {
    let mut out = Vec::new();
    let mut add =
        |name: String, shape: &[usize], kind: TensorKind| out.push(TensorLayout { name, shape: shape.to_vec(), kind });
    use TensorKind::*;
    let t = &c.text;
    let (h, hd) = (t.hidden_size, t.head_dim);
    let (q, kv) = (t.num_attention_heads * hd, t.num_key_value_heads * hd);
    let lm = "model.language_model";
    add(format!("{lm}.embed_tokens.weight"), &[t.vocab_size, h], Weight);
    add(format!("{lm}.norm.weight"), &[h], NormWeight);
    if !t.tie_word_embeddings {
        add("lm_head.weight".into(), &[t.vocab_size, h], Weight);
    }
    for l in 0..t.num_hidden_layers {
        let p = format!("{lm}.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), &[h], NormWeight);
        add(format!("{p}.post_attention_layernorm.weight"), &[h], NormWeight);
        for (name, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            add(format!("{p}.self_attn.{name}.weight"), &[rows, h], Weight);
            if t.attention_bias || c.family == Family::Glm4v {
                add(format!("{p}.self_attn.{name}.bias"), &[rows], Bias);
            }
        }
        add(format!("{p}.self_attn.o_proj.weight"), &[h, q], Weight);
        match (&t.moe, c.family) {
            (Some(moe), _) if t.is_moe_layer(l) => {
                let mi = moe.moe_intermediate_size;
                add(format!("{p}.mlp.gate.weight"), &[moe.n_routed_experts, h], Weight);
                add(format!("{p}.mlp.gate.e_score_correction_bias"), &[moe.n_routed_experts], RouterBias);
                for e in 0..moe.n_routed_experts {
                    mlp(&mut add, &format!("{p}.mlp.experts.{e}"), h, mi);
                }
                mlp(&mut add, &format!("{p}.mlp.shared_experts"), h, mi * moe.n_shared_experts);
            }
            (_, Family::Glm4v) => {
                add(format!("{p}.post_self_attn_layernorm.weight"), &[h], NormWeight);
                add(format!("{p}.post_mlp_layernorm.weight"), &[h], NormWeight);
                add(format!("{p}.mlp.gate_up_proj.weight"), &[2 * t.intermediate_size, h], Weight);
                add(format!("{p}.mlp.down_proj.weight"), &[h, t.intermediate_size], Weight);
            }
            _ => mlp(&mut add, &format!("{p}.mlp"), h, t.intermediate_size),
        }
    }
    let v = &c.vision;
    let (vh, p, tp) = (v.hidden_size, v.patch_size, v.temporal_patch_size);
    let vis = "model.visual";
    add(format!("{vis}.patch_embed.proj.weight"), &[vh, v.in_channels, tp, p, p], Weight);
    add(format!("{vis}.patch_embed.proj.bias"), &[vh], Bias);
    add(format!("{vis}.post_conv_layernorm.weight"), &[vh], NormWeight);
    let side = v.image_size / p;
    add(format!("{vis}.embeddings.position_embedding.weight"), &[side * side, vh], Weight);
    for b in 0..v.depth {
        let pre = format!("{vis}.blocks.{b}");
        add(format!("{pre}.norm1.weight"), &[vh], NormWeight);
        add(format!("{pre}.norm2.weight"), &[vh], NormWeight);
        add(format!("{pre}.attn.qkv.weight"), &[3 * vh, vh], Weight);
        add(format!("{pre}.attn.proj.weight"), &[vh, vh], Weight);
        mlp(&mut add, &format!("{pre}.mlp"), vh, v.out_hidden_size);
    }
    add(format!("{vis}.post_layernorm.weight"), &[vh], NormWeight);
    let (o, m) = (v.out_hidden_size, v.spatial_merge_size);
    add(format!("{vis}.downsample.weight"), &[o, vh, m, m], Weight);
    add(format!("{vis}.downsample.bias"), &[o], Bias);
    add(format!("{vis}.merger.proj.weight"), &[o, o], Weight);
    add(format!("{vis}.merger.post_projection_norm.weight"), &[o], NormWeight);
    add(format!("{vis}.merger.post_projection_norm.bias"), &[o], Bias);
    mlp(&mut add, &format!("{vis}.merger"), o, v.intermediate_size);
    out
}

/// A SwiGLU MLP's three projections.
fn mlp(add: &mut impl FnMut(String, &[usize], TensorKind), prefix: &str, hidden: usize, inter: usize) {
    add(format!("{prefix}.gate_proj.weight"), &[inter, hidden], TensorKind::Weight);
    add(format!("{prefix}.up_proj.weight"), &[inter, hidden], TensorKind::Weight);
    add(format!("{prefix}.down_proj.weight"), &[hidden, inter], TensorKind::Weight);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout derived from each fixture's config names exactly the tensors transformers saved, with their
    /// shapes (MTP layers aside, which the loader skips).
    #[test]
    fn layout_matches_the_fixture_checkpoints() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        for fixture in ["moe_bf16", "dense_bf16"] {
            let dir = root.join(fixture).join("checkpoint");
            let config = ModelConfig::from_dir(&dir).unwrap();
            let store = crate::weights::WeightStore::open(&dir, &mut |_| {}).unwrap();
            let layout = bf16_layout(&config);
            let mut names: Vec<&str> = store.names().collect();
            names.sort_unstable();
            let mut expected: Vec<&str> = layout.iter().map(|t| t.name.as_str()).collect();
            expected.sort_unstable();
            assert_eq!(names, expected, "{fixture}");
            for t in &layout {
                assert_eq!(store.get(&t.name).unwrap().shape, t.shape, "{fixture}: {}", t.name);
            }
        }
    }
}
