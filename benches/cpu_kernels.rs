//! The CPU reference backend's kernels at small shapes: BF16 and FP8 (per-channel, dequantised) GEMMs, paged
//! attention (prefill chunk and decode step), an MoE block, a vision block's attention over one image, and the demo
//! model's whole vision tower (2 ViT blocks + merger at hidden 64).
//! `cargo bench --bench cpu_kernels`. The CPU backend is the correctness reference, not the product's fast path.
use std::{hint::black_box, path::PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use glmv_runtime::{
    backend::{
        AttentionShape, Backend, CpuBackend, ExpertsSource, ForwardBatch, KvCacheSpec, KvDtype, MlpSource, Rope,
        Routing, SeqSpan,
    },
    config::{ModelConfig, RopeLayout},
    model::{Grid, VisionTower},
    weights::WeightStore,
};

#[path = "../tests/common/safetensors_writer.rs"]
mod writer;
use writer::{fp8_bytes, tensor, write, Data, Rng};

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("glmv-bench-{name}-{}.safetensors", std::process::id()))
}

fn gemm(c: &mut Criterion) {
    let b = CpuBackend;
    let (out, inp) = (2048, 2048);
    let mut rng = Rng::new(1);
    let store = write(
        &scratch("gemm"),
        &[
            tensor("bf16.weight", &[out, inp], Data::Bf16(rng.vec(out * inp, 0.02))),
            tensor("fp8.weight", &[out, inp], Data::Fp8(fp8_bytes(&mut rng, out * inp))),
            tensor("fp8.weight_scale", &[out, 1], Data::F32(rng.vec(out, 0.01))),
        ],
    );
    let bf16 = b.linear(&[store.linear("bf16", out, inp, false, None).unwrap()]).unwrap();
    let fp8 = b.linear(&[store.linear("fp8", out, inp, false, None).unwrap()]).unwrap();
    for rows in [1, 64] {
        let x = b.upload(rows, inp, &rng.vec(rows * inp, 1.0)).unwrap();
        c.bench_function(&format!("gemm bf16 {rows}x{inp} . {inp}x{out}"), |bn| {
            bn.iter(|| b.linear_forward(black_box(&x), &bf16).unwrap())
        });
        c.bench_function(&format!("gemm fp8 per-channel {rows}x{inp} . {inp}x{out}"), |bn| {
            bn.iter(|| b.linear_forward(black_box(&x), &fp8).unwrap())
        });
    }
}

fn rope(rot: usize, layout: RopeLayout) -> Rope {
    let section = [rot / 8, rot * 3 / 16, rot * 3 / 16];
    Rope {
        rot_dim: rot,
        layout,
        inv_freq: (0..rot / 2).map(|i| 10000f32.powf(-((2 * i) as f32) / rot as f32)).collect(),
        axis: section.iter().enumerate().flat_map(|(k, &n)| std::iter::repeat_n(k as u8, n)).collect(),
    }
}

fn attention(c: &mut Criterion) {
    let b = CpuBackend;
    // GLM-4.1V's 32:2 heads at head_dim 128 would be slow on the CPU; 12:1 keeps GLM-4.5V's group ratio.
    let shape = AttentionShape { num_heads: 12, num_kv_heads: 1, head_dim: 128, scale: 128f32.powf(-0.5) };
    let rope = rope(64, RopeLayout::NeoxHalves);
    let width = shape.q_width() + 2 * shape.kv_width();
    let spec = KvCacheSpec {
        num_layers: 1,
        num_blocks: 80,
        block_size: 16,
        num_kv_heads: 1,
        head_dim: 128,
        dtype: KvDtype::Bf16,
    };
    let table: Vec<u32> = (0..80).collect();
    let mut rng = Rng::new(2);
    let batch = |rows: usize, context: usize| ForwardBatch {
        seqs: vec![SeqSpan { rows: 0..rows, context_len: context, block_table: table.clone() }],
        positions: (context..context + rows).map(|p| [p as u32; 3]).collect(),
    };
    let prefill = b.upload(256, width, &rng.vec(256 * width, 1.0)).unwrap();
    let mut cache = b.kv_cache(&spec).unwrap();
    c.bench_function("attention prefill 256 tokens, 12:1 heads, d128", |bn| {
        bn.iter(|| b.attention(black_box(&prefill), &shape, &rope, &batch(256, 0), &mut cache, 0).unwrap())
    });
    // A decode step over 1K cached tokens.
    let mut cache = b.kv_cache(&spec).unwrap();
    for chunk in 0..4 {
        b.attention(&prefill, &shape, &rope, &batch(256, chunk * 256), &mut cache, 0).unwrap();
    }
    let one = b.upload(1, width, &rng.vec(width, 1.0)).unwrap();
    c.bench_function("attention decode over 1024 cached tokens, 12:1 heads, d128", |bn| {
        bn.iter(|| b.attention(black_box(&one), &shape, &rope, &batch(1, 1024), &mut cache, 0).unwrap())
    });
    // A vision block's attention: 16 heads d64 over one 32x32-patch image (non-causal, 2D rotary).
    let vshape = AttentionShape { num_heads: 16, num_kv_heads: 16, head_dim: 64, scale: 64f32.powf(-0.5) };
    let vrope = Rope {
        rot_dim: 32,
        layout: RopeLayout::NeoxHalves,
        inv_freq: (0..16).map(|i| 10000f32.powf(-((2 * (i % 8)) as f32) / 16.0)).collect(),
        axis: std::iter::repeat_n(1u8, 8).chain(std::iter::repeat_n(2u8, 8)).collect(),
    };
    let patches = 1024;
    let x = b.upload(patches, 3 * 16 * 64, &rng.vec(patches * 3 * 16 * 64, 1.0)).unwrap();
    let positions: Vec<[u32; 3]> = (0..patches).map(|p| [0, (p / 32) as u32, (p % 32) as u32]).collect();
    // One temporal segment covering every patch (a single image).
    let segments = [std::ops::Range { start: 0, end: patches }];
    c.bench_function("vision attention, 1024 patches, 16 heads d64", |bn| {
        bn.iter(|| b.segment_attention(black_box(&x), &vshape, &vrope, &positions, &segments).unwrap())
    });
}

fn moe(c: &mut Criterion) {
    let b = CpuBackend;
    let (experts, hidden, inter) = (32, 1024, 256);
    let mut rng = Rng::new(3);
    let mut tensors = vec![
        tensor("gate.weight", &[experts, hidden], Data::Bf16(rng.vec(experts * hidden, 0.1))),
        tensor("gate.e_score_correction_bias", &[experts], Data::F32(rng.vec(experts, 0.05))),
    ];
    let names: Vec<String> = (0..experts).map(|e| format!("experts.{e}")).chain(["shared".to_string()]).collect();
    for p in &names {
        for (proj, o, i) in [("gate_proj", inter, hidden), ("up_proj", inter, hidden), ("down_proj", hidden, inter)] {
            tensors.push(tensor(&format!("{p}.{proj}.weight"), &[o, i], Data::Bf16(rng.vec(o * i, 0.05))));
        }
    }
    let store: WeightStore = write(&scratch("moe"), &tensors);
    let mlp = |p: &str| MlpSource {
        gate_up: vec![
            store.linear(&format!("{p}.gate_proj"), inter, hidden, false, None).unwrap(),
            store.linear(&format!("{p}.up_proj"), inter, hidden, false, None).unwrap(),
        ],
        down: store.linear(&format!("{p}.down_proj"), hidden, inter, false, None).unwrap(),
    };
    let src = ExpertsSource {
        router: store.get("gate.weight").unwrap(),
        correction_bias: Some(store.get("gate.e_score_correction_bias").unwrap()),
        experts: (0..experts).map(|e| mlp(&format!("experts.{e}"))).collect(),
        shared: Some(mlp("shared")),
        routing: Routing { top_k: 8, n_group: 1, topk_group: 1, norm_topk_prob: true, routed_scaling_factor: 1.0 },
    };
    let block = b.experts(&src).unwrap();
    for tokens in [1, 32] {
        let x = b.upload(tokens, hidden, &rng.vec(tokens * hidden, 1.0)).unwrap();
        c.bench_function(
            &format!("moe block {experts} experts top-8 + shared, hidden {hidden}, {tokens} tokens"),
            |bn| bn.iter(|| b.moe_forward(black_box(&x), &block).unwrap()),
        );
    }
}

/// ViT blocks at small shapes: the demo checkpoint's vision tower (2 blocks, hidden 64, 2 heads; patch embedding,
/// 2D rotary, blocks, downsample and merger) over one 224x224 image (16x16 patches).
fn vision_tower(c: &mut Criterion) {
    let b = CpuBackend;
    let dir = std::env::temp_dir().join(format!("glmv-bench-demo-{}", std::process::id()));
    glmv_runtime::demo::write_demo_checkpoint(&dir).unwrap();
    let config = ModelConfig::from_dir(&dir).unwrap();
    let store = WeightStore::open(&dir, &mut |_| {}).unwrap();
    let tower = VisionTower::load(&b, &config.vision, &store).unwrap();
    let grid = Grid { t: 1, h: 16, w: 16 };
    let pixels = Rng::new(5).vec(grid.patches() * tower.patch_width(), 1.0);
    c.bench_function("vision tower (demo: 2 ViT blocks, hidden 64, + merger), 256 patches", |bn| {
        bn.iter(|| tower.forward(&b, black_box(&pixels), &[grid]).unwrap())
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

// The reference kernels take up to a second per call at these shapes: criterion's smallest sample keeps a run of
// scripts/bench/cpu.sh to minutes.
criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = gemm, attention, moe, vision_tower
}
criterion_main!(benches);
