//! Per-operation timings of one GLM-4.5V-FP8 decode step (batch 1) on the CUDA backend, with random weights of the
//! real shapes, and the whole-step estimate against the weight-bandwidth floor. Run on a GPU machine:
//! `cargo bench --features cuda --bench cuda_decode_step` (or the built binary). Prints a Markdown table.
use std::{path::PathBuf, time::Instant};

use glmv_runtime::{
    backend::{
        cuda::CudaBackend, AttentionShape, Backend, ExpertsSource, ForwardBatch, MlpSource, Rope, Routing, SeqSpan,
    },
    config::RopeLayout,
    weights::WeightStore,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// FP8 bytes of small magnitude, never NaN.
    fn fp8(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend((self.next() & 0xb7b7_b7b7_b7b7_b7b7).to_le_bytes());
        }
        v.truncate(n);
        v
    }
    fn bf16(&mut self, n: usize, scale: f32) -> Vec<u8> {
        let mut v = Vec::with_capacity(2 * n);
        for _ in 0..n {
            let x = ((self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale;
            v.extend_from_slice(&((x.to_bits() >> 16) as u16).to_le_bytes());
        }
        v
    }
    fn f32(&mut self, n: usize, scale: f32) -> Vec<u8> {
        (0..n).flat_map(|_| (((self.next() >> 40) as f32 / (1u64 << 24) as f32) * scale).to_le_bytes()).collect()
    }
}

/// Writes tensors (name, dtype, shape, bytes) as one safetensors file and opens it.
fn write(path: &PathBuf, tensors: Vec<(String, &str, Vec<usize>, Vec<u8>)>) -> WeightStore {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, dtype, shape, bytes) in &tensors {
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    use std::io::Write;
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&header).unwrap();
    for (_, _, _, bytes) in &tensors {
        f.write_all(bytes).unwrap();
    }
    drop(f);
    WeightStore::open_file(path).unwrap()
}

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
    let be = match CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("no CUDA device: {e}");
            return;
        }
    };
    let (h, heads, kv, d, inter, moe_inter, experts, vocab) = (4096, 96, 8, 128, 10944, 1408, 128, 151552);
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let fp8 = |rng: &mut Rng, name: &str, o: usize, i: usize| {
        vec![
            (format!("{name}.weight"), "F8_E4M3", vec![o, i], rng.fp8(o * i)),
            (format!("{name}.weight_scale"), "F32", vec![o, 1], rng.f32(o, 0.01)),
        ]
    };
    let mut t = Vec::new();
    for (n, o) in [("q", heads * d), ("k", kv * d), ("v", kv * d)] {
        t.extend(fp8(&mut rng, n, o, h));
        t.push((format!("{n}.bias"), "BF16", vec![o], rng.bf16(o, 0.1)));
    }
    t.extend(fp8(&mut rng, "o", h, heads * d));
    for (n, i) in [("dense", inter), ("shared", moe_inter)] {
        t.extend(fp8(&mut rng, &format!("{n}.gate_proj"), i, h));
        t.extend(fp8(&mut rng, &format!("{n}.up_proj"), i, h));
        t.extend(fp8(&mut rng, &format!("{n}.down_proj"), h, i));
    }
    for e in 0..experts {
        t.extend(fp8(&mut rng, &format!("e{e}.gate_proj"), moe_inter, h));
        t.extend(fp8(&mut rng, &format!("e{e}.up_proj"), moe_inter, h));
        t.extend(fp8(&mut rng, &format!("e{e}.down_proj"), h, moe_inter));
    }
    t.push(("router".into(), "BF16", vec![experts, h], rng.bf16(experts * h, 0.1)));
    t.push(("bias".into(), "F32", vec![experts], rng.f32(experts, 0.01)));
    t.push(("lm_head.weight".into(), "BF16", vec![vocab, h], rng.bf16(vocab * h, 0.05)));
    t.push(("norm".into(), "BF16", vec![h], rng.bf16(h, 2.0)));
    let path = std::env::temp_dir().join("glmv-decode-bench.safetensors");
    let store = write(&path, t);
    let lin = |name: &str, o: usize, i: usize, bias: bool| store.linear(name, o, i, bias, None).unwrap();
    let mlp = |name: &str, i: usize| MlpSource {
        gate_up: vec![lin(&format!("{name}.gate_proj"), i, h, false), lin(&format!("{name}.up_proj"), i, h, false)],
        down: lin(&format!("{name}.down_proj"), h, i, false),
    };
    let qkv = be.linear(&[lin("q", heads * d, h, true), lin("k", kv * d, h, true), lin("v", kv * d, h, true)]).unwrap();
    let o_proj = be.linear(&[lin("o", h, heads * d, false)]).unwrap();
    let dense = be.mlp(&mlp("dense", inter)).unwrap();
    let moe = be
        .experts(&ExpertsSource {
            router: store.get("router").unwrap(),
            correction_bias: Some(store.get("bias").unwrap()),
            experts: (0..experts).map(|e| mlp(&format!("e{e}"), moe_inter)).collect(),
            shared: Some(mlp("shared", moe_inter)),
            routing: Routing { top_k: 8, n_group: 1, topk_group: 1, norm_topk_prob: true, routed_scaling_factor: 1.0 },
        })
        .unwrap();
    let lm_head = be.linear(&[lin("lm_head", vocab, h, false)]).unwrap();
    let norm = be.vector(&store.get("norm").unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);

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

    println!("| operation (batch 1) | ms | weight/KV bytes read | achieved GB/s | per decode step |");
    println!("|---|---:|---:|---:|---:|");
    let mut step = 0.0;
    for (op, ms, bytes, count) in &rows {
        println!("| {op} | {ms:.3} | {:.1} MB | {:.0} | x{count} |", bytes / 1e6, bytes / (ms * 1e-3) / 1e9);
        step += ms * *count as f64;
    }
    println!("\nestimated decode step (sum of the above x count, context 1024): {step:.1} ms");
    println!("bandwidth floor (13.46 GB of FP8 weights per token at 3.35 TB/s, reference/performance.md): 4.0 ms");
    println!("ratio to the floor: {:.1}x", step / 4.0);
}
