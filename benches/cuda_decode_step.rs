//! Per-operation timings of one GLM-4.5V-FP8 decode step (batch 1) on the CUDA backend, with random weights of the
//! real shapes, and the whole-step estimate against the weight-bandwidth floor. Run on a GPU machine:
//! `cargo bench --features cuda --bench cuda_decode_step` (or the built binary). Prints a Markdown table.
use std::time::Instant;

use glmv_runtime::{
    backend::{
        cuda::{CudaBackend, CudaBatch, CudaExperts, CudaKvCache, CudaLinear, CudaMlp, CudaTensor},
        AttentionShape, Backend, ExpertsSource, ForwardBatch, KvCacheSpec, KvDtype, MlpSource, Rope, Routing, SeqSpan,
    },
    config::{
        known::{KnownModel, Precision},
        InputQuant, ModelConfig, RopeLayout,
    },
    engine::sampler::Draw,
    weights::WeightStore,
};

fn time<F: FnMut()>(be: &CudaBackend, iters: usize, mut f: F) -> f64 {
    f();
    be.synchronize().unwrap();
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    be.synchronize().unwrap();
    t.elapsed().as_secs_f64() * 1e3 / iters as f64
}

fn main() {
    let mut be = match CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("no CUDA device: {e}");
            return;
        }
    };
    // GLM-4.5V-FP8's config cut to two text layers (layer 0 dense, layer 1 MoE), its weights made on the device as
    // `--load-format dummy` makes them: the real shapes, dtypes and scale layout, without a pass through the host.
    let mut json = KnownModel::Glm45v.config_json(Precision::Fp8).unwrap();
    json["text_config"]["num_hidden_layers"] = 2.into();
    let config = ModelConfig::from_json(&json, None).unwrap();
    let text = &config.text;
    let m = text.moe.as_ref().expect("GLM-4.5V's layers past the first are MoE");
    let (h, heads, kv, d) = (text.hidden_size, text.num_attention_heads, text.num_key_value_heads, text.head_dim);
    let (inter, moe_inter, experts, vocab) =
        (text.intermediate_size, m.moe_intermediate_size, m.n_routed_experts, text.vocab_size);
    let store = WeightStore::dummy(&config, 1);
    let dense_layer = "model.language_model.layers.0";
    let moe_layer = "model.language_model.layers.1";
    // The layer's projections, their inputs exact or quantised to FP8 per token (`--fp8-activations checkpoint`).
    let layer = |input: InputQuant| {
        let lin = |name: &str, o: usize, i: usize, bias: bool| {
            store.linear(name, o, i, bias, None).unwrap().with_input(input)
        };
        let mlp = |name: &str, i: usize| MlpSource {
            gate_up: vec![lin(&format!("{name}.gate_proj"), i, h, false), lin(&format!("{name}.up_proj"), i, h, false)],
            down: lin(&format!("{name}.down_proj"), h, i, false),
        };
        let attn = format!("{moe_layer}.self_attn");
        let qkv = be.linear(&[
            lin(&format!("{attn}.q_proj"), heads * d, h, true),
            lin(&format!("{attn}.k_proj"), kv * d, h, true),
            lin(&format!("{attn}.v_proj"), kv * d, h, true),
        ]);
        let moe = be.experts(&ExpertsSource {
            router: store.get(&format!("{moe_layer}.mlp.gate.weight")).unwrap(),
            correction_bias: Some(store.get(&format!("{moe_layer}.mlp.gate.e_score_correction_bias")).unwrap()),
            experts: (0..experts).map(|e| mlp(&format!("{moe_layer}.mlp.experts.{e}"), moe_inter)).collect(),
            shared: Some(mlp(&format!("{moe_layer}.mlp.shared_experts"), moe_inter * m.n_shared_experts)),
            routing: Routing {
                top_k: m.num_experts_per_tok,
                n_group: m.n_group,
                topk_group: m.topk_group,
                norm_topk_prob: m.norm_topk_prob,
                routed_scaling_factor: m.routed_scaling_factor as f32,
            },
        });
        (
            qkv.unwrap(),
            be.linear(&[lin(&format!("{attn}.o_proj"), h, heads * d, false)]).unwrap(),
            be.mlp(&mlp(&format!("{dense_layer}.mlp"), inter)).unwrap(),
            moe.unwrap(),
        )
    };
    let started = Instant::now();
    let (qkv, o_proj, dense, moe) = layer(InputQuant::Exact);
    let quantized = layer(InputQuant::Fp8 { group: None });
    let lin = |name: &str, o: usize, i: usize, bias: bool| store.linear(name, o, i, bias, None).unwrap();
    let lm_head = be.linear(&[lin("lm_head", vocab, h, false)]).unwrap();
    let norm = be.vector(&store.get("model.language_model.norm.weight").unwrap()).unwrap();
    be.synchronize().unwrap();
    eprintln!(
        "weights (a dense and a MoE layer, twice, and lm_head) made on the device in {:.2} s, {:.2} GB on the host",
        started.elapsed().as_secs_f64(),
        store.dummy_bytes_made_on_host().unwrap_or(0) as f64 / 1e9
    );

    let shape = AttentionShape { num_heads: heads, num_kv_heads: kv, head_dim: d, scale: (d as f32).powf(-0.5) };
    let rope = Rope {
        rot_dim: 64,
        layout: RopeLayout::NeoxHalves,
        inv_freq: (0..32).map(|i| 10000f32.powf(-((2 * i) as f32) / 64.0)).collect(),
        axis: [0u8; 8].iter().chain(&[1u8; 12]).chain(&[2u8; 12]).copied().collect(),
    };
    let x = be.upload(1, h, &vec![0.5; h]).unwrap();
    let iters = 20;
    let mut rows: Vec<(String, f64, f64, usize)> = Vec::new(); // (op, ms, bytes read, count per step)
    let fp8_bytes = |o: usize, i: usize| (o * i + o * 4) as f64;
    let ms = time(&be, iters, || drop(be.rms_norm(&x, &norm, 1e-5).unwrap()));
    rows.push(("rms_norm (x2 per layer)".into(), ms, (h * 8) as f64, 2 * 46 + 1));
    let ms = time(&be, iters, || drop(be.linear_forward(&x, &qkv).unwrap()));
    rows.push(("qkv projection FP8 4096->14336".into(), ms, fp8_bytes(14336, h), 46));
    let a_in = be.upload(1, heads * d, &vec![0.1; heads * d]).unwrap();
    let ms = time(&be, iters, || drop(be.linear_forward(&a_in, &o_proj).unwrap()));
    rows.push(("o_proj FP8 12288->4096".into(), ms, fp8_bytes(h, heads * d), 46));
    for ctx in [1024usize, 8192] {
        let spec = glmv_runtime::backend::KvCacheSpec {
            num_layers: 1,
            num_blocks: ctx / 16 + 1,
            block_size: 16,
            num_kv_heads: kv,
            head_dim: d,
            dtype: glmv_runtime::backend::KvDtype::Bf16,
        };
        let mut cache = be.kv_cache(&spec).unwrap();
        let qkv_x = be.upload(1, (heads + 2 * kv) * d, &vec![0.1; (heads + 2 * kv) * d]).unwrap();
        let batch = ForwardBatch {
            seqs: vec![SeqSpan {
                rows: 0..1,
                context_len: ctx - 1,
                block_table: (0..spec.num_blocks as u32).collect(),
            }],
            positions: vec![[(ctx - 1) as u32; 3]],
        };
        let batch = be.batch(&batch, &mut cache).unwrap();
        let ms = time(&be, iters, || drop(be.attention(&qkv_x, &shape, &rope, &batch, &mut cache, 0).unwrap()));
        rows.push((
            format!("paged attention 96:8 d128, context {ctx}"),
            ms,
            (ctx * kv * d * 2 * 4) as f64,
            if ctx == 1024 { 46 } else { 0 },
        ));
    }
    let ms = time(&be, iters, || drop(be.mlp_forward(&x, &dense).unwrap()));
    rows.push(("dense MLP FP8 (layer 0)".into(), ms, 3.0 * fp8_bytes(inter, h), 1));
    let ms = time(&be, iters, || drop(be.moe_forward(&x, &moe).unwrap()));
    rows.push(("MoE block FP8, 128 experts top-8 + shared".into(), ms, 9.0 * 3.0 * fp8_bytes(moe_inter, h), 45));
    let ms = time(&be, iters, || drop(be.linear_forward(&x, &lm_head).unwrap()));
    rows.push(("lm_head BF16 4096->151552".into(), ms, (vocab * h * 2) as f64, 1));
    let logits = be.upload(1, vocab, &(0..vocab).map(|i| (i % 977) as f32 * 1e-3).collect::<Vec<_>>()).unwrap();
    let ms = time(&be, iters, || drop(be.argmax_rows(&logits).unwrap()));
    rows.push(("greedy token on the device (argmax of 151552 logits)".into(), ms, (vocab * 4) as f64, 1));
    // GLM-4.5V's generation_config.json defaults (top_k 2, top_p 0.6, temperature 0.8), drawn where the logits are.
    let draw = [Draw { temperature: 0.8, top_k: 2, top_p: 0.6, min_p: 0.0, uniform: 0.4 }];
    let ms = time(&be, iters, || drop(be.sample_rows(&logits, &draw).unwrap()));
    rows.push(("sampled token on the device (top-k 2, top-p 0.6)".into(), ms, (vocab * 4) as f64, 0));

    println!("| operation (batch 1) | ms | weight/KV bytes read | achieved GB/s | per decode step |");
    println!("|---|---:|---:|---:|---:|");
    let mut step = 0.0;
    for (op, ms, bytes, count) in &rows {
        println!("| {op} | {ms:.3} | {:.1} MB | {:.0} | x{count} |", bytes / 1e6, bytes / (ms * 1e-3) / 1e9);
        step += ms * *count as f64;
    }
    println!("\nestimated decode step (sum of the above x count, context 1024): {step:.1} ms");
    println!("device: {}", be.device_name());
    // reference/performance.md: 13.46 GB of FP8 weights per token; H100 3.35 TB/s, H200 4.8 TB/s.
    for (gpu, floor) in [("H100", 4.0), ("H200", 2.84)] {
        println!("bandwidth floor on an {gpu}: {floor} ms per token; ratio {:.1}x", step / floor);
    }
    let layers = DecodeLayers { qkv: &qkv, o_proj: &o_proj, dense: &dense, moe: &moe, norm: &norm, shape, rope: &rope };
    whole_step(&mut be, &layers, &lm_head);
    prefill_chunk(&be, &layers, "exact activations");
    let (qkv, o_proj, dense, moe) = &quantized;
    let layers = DecodeLayers { qkv, o_proj, dense, moe, norm: &norm, shape, rope: &rope };
    prefill_chunk(&be, &layers, "FP8 activations per token, --fp8-activations checkpoint");
}

/// One GLM-4.5V layer's weights, run 46 times as the model's layers (layer 0 dense, then MoE): every step reads as
/// many weight bytes as the real model minus the per-layer differences, and launches as many kernels.
struct DecodeLayers<'a> {
    qkv: &'a CudaLinear,
    o_proj: &'a CudaLinear,
    dense: &'a CudaMlp,
    moe: &'a CudaExperts,
    norm: &'a <CudaBackend as Backend>::Vector,
    shape: AttentionShape,
    rope: &'a Rope,
}

impl DecodeLayers<'_> {
    fn run(&self, be: &CudaBackend, hidden: CudaTensor, batch: &CudaBatch, cache: &mut CudaKvCache) -> CudaTensor {
        let mut residual = hidden;
        let mut x = be.rms_norm(&residual, self.norm, 1e-5).unwrap();
        for layer in 0..46 {
            let qkv = be.linear_forward(&x, self.qkv).unwrap();
            let attn = be.attention(&qkv, &self.shape, self.rope, batch, cache, layer).unwrap();
            let attn = be.linear_forward(&attn, self.o_proj).unwrap();
            x = be.add_rms_norm(&mut residual, &attn, self.norm, 1e-5).unwrap();
            let mlp = if layer == 0 { be.mlp_forward(&x, self.dense) } else { be.moe_forward(&x, self.moe) }.unwrap();
            x = be.add_rms_norm(&mut residual, &mlp, self.norm, 1e-5).unwrap();
        }
        x
    }
}

/// Whole decode steps at batch 1 and 16 over 1,024 cached tokens: the 46 layers through `run_decoder` kernel by
/// kernel and replayed from a CUDA graph, then lm_head and the device argmax: what a token costs, against the floor.
fn whole_step(be: &mut CudaBackend, layers: &DecodeLayers, lm_head: &CudaLinear) {
    let (h, ctx, iters) = (4096usize, 1024usize, 10);
    println!("\n| whole decode step, 46 layers, context {ctx} | batch | ms per step | ratio to the H200 floor |");
    println!("|---|---:|---:|---:|");
    for rows in [1usize, 16] {
        let blocks_per_seq = ctx / 16 + 1;
        let spec = KvCacheSpec {
            num_layers: 46,
            num_blocks: rows * blocks_per_seq,
            block_size: 16,
            num_kv_heads: layers.shape.num_kv_heads,
            head_dim: layers.shape.head_dim,
            dtype: KvDtype::Bf16,
        };
        let batch = ForwardBatch {
            seqs: (0..rows)
                .map(|r| SeqSpan {
                    rows: r..r + 1,
                    context_len: ctx - 1,
                    block_table: (r * blocks_per_seq..(r + 1) * blocks_per_seq).map(|b| b as u32).collect(),
                })
                .collect(),
            positions: vec![[(ctx - 1) as u32; 3]; rows],
        };
        let x = be.upload(rows, h, &vec![0.5; rows * h]).unwrap();
        let all_rows: Vec<usize> = (0..rows).collect();
        for (how, max_rows) in [("kernel by kernel", 0), ("CUDA graph", 256)] {
            be.set_graph_max_rows(max_rows);
            let be = &*be;
            let mut cache = be.kv_cache(&spec).unwrap();
            let mut step = || {
                let prepared = be.batch(&batch, &mut cache).unwrap();
                // As the engine's embedding gather: a fresh input each step.
                let hidden = be.select_rows(&x, &all_rows).unwrap();
                let out = be
                    .run_decoder(hidden, &prepared, &mut cache, &mut |hid, b, c| Ok(layers.run(be, hid, b, c)))
                    .unwrap();
                let logits = be.linear_forward(&out, lm_head).unwrap();
                drop(be.argmax_rows(&logits).unwrap());
            };
            let ms = time(be, iters, &mut step);
            println!("| {how} | {rows} | {ms:.2} | {:.2}x |", ms / 2.84);
            if max_rows > 0 {
                println!("(recordings held: {})", cache.recorded_graphs());
            }
        }
    }
}

/// One 1024-token prefill chunk of the same layer, operation by operation (tensor-core GEMMs, the grouped expert
/// GEMMs, tensor-core attention), with the FLOP rate each achieves: where a 1K prompt's TTFT goes. `label` says how
/// the layer's projections take their inputs.
fn prefill_chunk(be: &CudaBackend, layer: &DecodeLayers, label: &str) {
    let (qkv, o_proj, dense, moe, shape, rope) =
        (layer.qkv, layer.o_proj, layer.dense, layer.moe, &layer.shape, layer.rope);
    let (t, h, heads, kv, d, inter, moe_inter) = (1024usize, 4096usize, 96usize, 8usize, 128usize, 10944, 1408);
    let iters = 5;
    let x = be.upload(t, h, &(0..t * h).map(|i| ((i % 61) as f32 - 30.0) * 1e-2).collect::<Vec<_>>()).unwrap();
    let a_in = be.upload(t, heads * d, &vec![0.05; t * heads * d]).unwrap();
    let spec = glmv_runtime::backend::KvCacheSpec {
        num_layers: 1,
        num_blocks: t / 16,
        block_size: 16,
        num_kv_heads: kv,
        head_dim: d,
        dtype: glmv_runtime::backend::KvDtype::Bf16,
    };
    let mut cache = be.kv_cache(&spec).unwrap();
    let qkv_x = be.upload(t, (heads + 2 * kv) * d, &vec![0.1; t * (heads + 2 * kv) * d]).unwrap();
    let batch = ForwardBatch {
        seqs: vec![SeqSpan { rows: 0..t, context_len: 0, block_table: (0..spec.num_blocks as u32).collect() }],
        positions: (0..t).map(|p| [p as u32; 3]).collect(),
    };
    let batch = be.batch(&batch, &mut cache).unwrap();
    let gemm = |o: usize, i: usize| 2.0 * (t * o * i) as f64;
    let rows: Vec<(&str, f64, f64)> = vec![
        (
            "qkv projection FP8 4096->14336",
            time(be, iters, || drop(be.linear_forward(&x, qkv).unwrap())),
            gemm(14336, h),
        ),
        (
            "causal attention 96:8 d128 over the chunk",
            time(be, iters, || drop(be.attention(&qkv_x, shape, rope, &batch, &mut cache, 0).unwrap())),
            // QK^T and PV over the causal half: 2 x 2 x t^2 / 2 x d per head.
            2.0 * (t * t * d * heads) as f64,
        ),
        (
            "o_proj FP8 12288->4096",
            time(be, iters, || drop(be.linear_forward(&a_in, o_proj).unwrap())),
            gemm(h, heads * d),
        ),
        ("dense MLP FP8 (layer 0)", time(be, iters, || drop(be.mlp_forward(&x, dense).unwrap())), 3.0 * gemm(inter, h)),
        (
            "MoE block FP8, 128 experts top-8 + shared (grouped GEMMs)",
            time(be, iters, || drop(be.moe_forward(&x, moe).unwrap())),
            9.0 * 3.0 * gemm(moe_inter, h),
        ),
    ];
    println!("\n| operation (prefill chunk of {t} tokens, {label}) | ms | TFLOP/s |");
    println!("|---|---:|---:|");
    for (op, ms, flops) in rows {
        println!("| {op} | {ms:.2} | {:.1} |", flops / (ms * 1e-3) / 1e12);
    }
}
