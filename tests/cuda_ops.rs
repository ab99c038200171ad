//! Every CUDA backend operation against the CPU backend on the same inputs and weights, at real GLM-4.5V /
//! GLM-4.1V / vision shapes and at odd ones, then whole fixture models (greedy generation token for token).
//! Needs a CUDA device: without one each test says so and returns.
#![cfg(feature = "cuda")]

mod common;

use std::path::PathBuf;

use common::{rel_l2, safetensors_writer::*};
use glmv_runtime::{
    backend::{
        cuda::CudaBackend, AttentionShape, Backend, CpuBackend, ExpertsSource, ForwardBatch, KvCacheSpec, KvDtype,
        MlpSource, Rope, Routing, SeqSpan,
    },
    config::{InputQuant, ModelConfig, RopeLayout, WeightQuant},
    engine::sampler::Draw,
    weights::{LinearSource, WeightStore},
};

fn device() -> Option<CudaBackend> {
    match CudaBackend::new_poisoned(0) {
        Ok(b) => Some(b),
        Err(e) => {
            common::skip_without_device(format!("no usable CUDA device ({e})"));
            None
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("glmv-cuda-{name}-{}.safetensors", std::process::id()))
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    let err = rel_l2(got, want);
    eprintln!("{what}: relative L2 {err:.2e}");
    assert!(err <= tol, "{what}: relative L2 {err:.2e} > {tol:.0e}");
}

/// f32 math on both sides, so only summation order differs.
const TOL: f64 = 1e-4;
/// Where FP8 activations are rounded from values computed on each backend (an FP8 step apart at a rounding
/// boundary): the CUDA issue's FP8 bar.
const FP8_ACTIVATIONS_TOL: f64 = 3e-2;

fn linear_out<B: Backend>(b: &B, parts: &[LinearSource], x: &[f32], rows: usize) -> Vec<f32> {
    let lin = b.linear(parts).unwrap();
    let xt = b.upload(rows, x.len() / rows, x).unwrap();
    b.to_host(&b.linear_forward(&xt, &lin).unwrap()).unwrap()
}

#[test]
fn linear_matches_cpu() {
    let Some(gpu) = device() else { return };
    let mut rng = Rng::new(1);
    // (name, out, in, dtype): GLM-4.5V q_proj in BF16, an FP8 per-channel expert, FP8 block-128 at odd sizes.
    let store = write(
        &scratch("linear"),
        &[
            tensor("q.weight", &[12288, 4096], Data::Bf16(rng.vec(12288 * 4096, 0.02))),
            tensor("q.bias", &[12288], Data::Bf16(rng.vec(12288, 0.1))),
            tensor("k.weight", &[1024, 4096], Data::Bf16(rng.vec(1024 * 4096, 0.02))),
            tensor("e.weight", &[1408, 4096], Data::Fp8(fp8_bytes(&mut rng, 1408 * 4096))),
            tensor("e.weight_scale", &[1408, 1], Data::F32(rng.vec(1408, 0.01))),
            tensor("b.weight", &[1000, 1500], Data::Fp8(fp8_bytes(&mut rng, 1000 * 1500))),
            tensor("b.weight_scale_inv", &[8, 12], Data::F32(rng.vec(96, 0.01))),
        ],
    );
    let qk = [store.linear("q", 12288, 4096, true, None).unwrap(), store.linear("k", 1024, 4096, false, None).unwrap()];
    let expert = [store.linear("e", 1408, 4096, false, None).unwrap()];
    let block = [store.linear("b", 1000, 1500, false, Some([128, 128])).unwrap()];
    for rows in [1, 5, 8, 9, 64, 300] {
        let x = rng.vec(rows * 4096, 1.0);
        close(
            &format!("bf16 q|k linear, {rows} rows"),
            &linear_out(&gpu, &qk, &x, rows),
            &linear_out(&CpuBackend, &qk, &x, rows),
            TOL,
        );
        close(
            &format!("fp8 per-channel linear, {rows} rows"),
            &linear_out(&gpu, &expert, &x, rows),
            &linear_out(&CpuBackend, &expert, &x, rows),
            TOL,
        );
        // Dynamic FP8 activations: the same input rows round the same way on both backends.
        let per_token = [expert[0].clone().with_input(InputQuant::Fp8 { group: None })];
        close(
            &format!("fp8 per-channel linear, per-token FP8 inputs, {rows} rows"),
            &linear_out(&gpu, &per_token, &x, rows),
            &linear_out(&CpuBackend, &per_token, &x, rows),
            TOL,
        );
        let x = rng.vec(rows * 1500, 1.0);
        close(
            &format!("fp8 block linear, {rows} rows"),
            &linear_out(&gpu, &block, &x, rows),
            &linear_out(&CpuBackend, &block, &x, rows),
            TOL,
        );
        let per_group = [block[0].clone().with_input(InputQuant::Fp8 { group: Some(128) })];
        close(
            &format!("fp8 block linear, FP8 inputs per 128 columns, {rows} rows"),
            &linear_out(&gpu, &per_group, &x, rows),
            &linear_out(&CpuBackend, &per_group, &x, rows),
            TOL,
        );
    }
}

/// FP8 weights times FP8-quantised activations on the FP8 tensor-core GEMM (gemm_fp8_tc: enough tiles that K is not
/// split, K a multiple of 16): per-channel weights with per-token inputs, block-128 weights with 128-column input
/// groups (windows that end at each block), K not a multiple of 32, rows and columns not multiples of 64, a bias.
/// The same quantised inputs on both backends, so only summation order differs.
#[test]
fn fp8_activation_gemm_matches_cpu() {
    let Some(gpu) = device() else { return };
    let mut rng = Rng::new(5);
    let store = write(
        &scratch("fp8-gemm"),
        &[
            tensor("c.weight", &[1408, 4096], Data::Fp8(fp8_bytes(&mut rng, 1408 * 4096))),
            tensor("c.weight_scale", &[1408, 1], Data::F32(rng.vec(1408, 0.01))),
            tensor("b.weight", &[2048, 1024], Data::Fp8(fp8_bytes(&mut rng, 2048 * 1024))),
            tensor("b.weight_scale_inv", &[16, 8], Data::F32(rng.vec(128, 0.01))),
            tensor("o.weight", &[1000, 1040], Data::Fp8(fp8_bytes(&mut rng, 1000 * 1040))),
            tensor("o.weight_scale", &[1000, 1], Data::F32(rng.vec(1000, 0.01))),
            tensor("o.bias", &[1000], Data::Bf16(rng.vec(1000, 0.1))),
        ],
    );
    let per_token = InputQuant::Fp8 { group: None };
    let cases = [
        (
            "per-channel 1408 x 4096, per-token inputs",
            store.linear("c", 1408, 4096, false, None).unwrap(),
            per_token,
            1024,
        ),
        (
            "block-128 2048 x 1024, inputs per 128 columns",
            store.linear("b", 2048, 1024, false, Some([128, 128])).unwrap(),
            InputQuant::Fp8 { group: Some(128) },
            600,
        ),
        (
            "per-channel 1000 x 1040 with bias, per-token inputs",
            store.linear("o", 1000, 1040, true, None).unwrap(),
            per_token,
            1100,
        ),
    ];
    for (what, linear, input, rows) in cases {
        let parts = [linear.with_input(input)];
        let k = parts[0].weight.in_features();
        let mut x = rng.vec(rows * k, 1.0);
        x[..k].iter_mut().for_each(|v| *v = 0.0); // an all-zero row (scale 1)
        close(what, &linear_out(&gpu, &parts, &x, rows), &linear_out(&CpuBackend, &parts, &x, rows), TOL);
    }
}

/// Every GEMV glmv-codegen specialises (each width of the models' linears, BF16 and FP8 per-channel) against the
/// CPU, at decode row counts.
#[test]
fn specialised_gemvs_match_cpu() {
    use glmv_codegen::{row_kernels, RowOp, WeightKind};
    let Some(gpu) = device() else { return };
    let mut rng = Rng::new(5);
    for k in row_kernels().into_iter().filter(|k| k.op == RowOp::Gemv) {
        let (n, width) = (200, k.width as usize);
        let mut tensors = vec![];
        match k.weight {
            WeightKind::Bf16 => tensors.push(tensor("w.weight", &[n, width], Data::Bf16(rng.vec(n * width, 0.05)))),
            WeightKind::Fp8 => {
                tensors.push(tensor("w.weight", &[n, width], Data::Fp8(fp8_bytes(&mut rng, n * width))));
                tensors.push(tensor("w.weight_scale", &[n, 1], Data::F32(rng.vec(n, 0.01))));
            }
        }
        let store = write(&scratch(&k.symbol()), &tensors);
        let parts = [store.linear("w", n, width, false, None).unwrap()];
        for rows in [1, 3, 8] {
            let x = rng.vec(rows * width, 1.0);
            close(
                &format!("{}, {rows} rows", k.symbol()),
                &linear_out(&gpu, &parts, &x, rows),
                &linear_out(&CpuBackend, &parts, &x, rows),
                TOL,
            );
        }
    }
}

fn norms_out<B: Backend>(b: &B, store: &WeightStore, x: &[f32], d: &[f32], rows: usize) -> Vec<Vec<f32>> {
    let cols = x.len() / rows;
    let w = b.vector(&store.get("norm").unwrap()).unwrap();
    let bias = b.vector(&store.get("bias").unwrap()).unwrap();
    let table = b.linear(&[store.linear("embed", 1000, cols, false, None).unwrap()]).unwrap();
    let xt = b.upload(rows, cols, x).unwrap();
    let dt = b.upload(rows, cols, d).unwrap();
    let mut res = b.upload(rows, cols, x).unwrap();
    let normed = b.add_rms_norm(&mut res, &dt, &w, 1e-5).unwrap();
    let mut scattered = b.upload(rows, cols, x).unwrap();
    let picked = b.select_rows(&dt, &[3, 0, 3]).unwrap();
    b.scatter_rows(&mut scattered, &[1, 2, 0], &picked).unwrap();
    let mut added = b.upload(rows, cols, x).unwrap();
    b.add(&mut added, &dt).unwrap();
    let ids: Vec<u32> = (0..rows as u32).map(|i| (i * 37) % 1000).collect();
    vec![
        b.to_host(&b.rms_norm(&xt, &w, 1e-5).unwrap()).unwrap(),
        b.to_host(&normed).unwrap(),
        b.to_host(&res).unwrap(),
        b.to_host(&b.layer_norm_gelu(&xt, &w, &bias, 1e-5).unwrap()).unwrap(),
        b.to_host(&b.merge_windows(&xt, 4).unwrap()).unwrap(),
        b.to_host(&scattered).unwrap(),
        b.to_host(&added).unwrap(),
        b.to_host(&b.embed(&table, &ids).unwrap()).unwrap(),
    ]
}

#[test]
fn elementwise_ops_match_cpu() {
    let Some(gpu) = device() else { return };
    for (cols, rows) in [(4096, 8), (1536, 12), (100, 4)] {
        let mut rng = Rng::new(cols as u64);
        let store = write(
            &scratch(&format!("norms{cols}")),
            &[
                tensor("norm", &[cols], Data::Bf16(rng.vec(cols, 1.0))),
                tensor("bias", &[cols], Data::Bf16(rng.vec(cols, 0.5))),
                tensor("embed.weight", &[1000, cols], Data::Bf16(rng.vec(1000 * cols, 1.0))),
            ],
        );
        let x = rng.vec(rows * cols, 2.0);
        let d = rng.vec(rows * cols, 1.0);
        let names =
            ["rms_norm", "add_rms_norm", "residual", "layer_norm_gelu", "merge_windows", "scatter", "add", "embed"];
        let got = norms_out(&gpu, &store, &x, &d, rows);
        let want = norms_out(&CpuBackend, &store, &x, &d, rows);
        for ((name, g), w) in names.iter().zip(&got).zip(&want) {
            close(&format!("{name} [{rows}, {cols}]"), g, w, TOL);
        }
    }
}

/// `--load-format dummy` weights are made on the device, not on the host and copied, and are the very bytes the
/// host makes (the CPU backend reads those): every linear weight of dummy stores of three fixture configs and of one
/// with odd widths (the last random word of a tensor only partly used), read back through the embedding gather.
#[test]
fn dummy_weights_made_on_the_device_match_the_host() {
    let Some(gpu) = device() else { return };
    // $GLMV_FIXTURES on a GPU machine, where the test binary runs away from this checkout.
    let read = |name: &str| common::read_json(&common::fixture_checkpoint(name).join("config.json"));
    let mut odd = read("moe_fp8_channel");
    for (key, value) in [("hidden_size", 99), ("vocab_size", 449), ("intermediate_size", 161)] {
        odd["text_config"][key] = value.into();
    }
    odd["vision_config"]["out_hidden_size"] = 99.into();
    let configs = ["dense_bf16", "moe_fp8_block", "moe_fp8_channel"].map(|n| (n.to_string(), read(n)));
    for (name, json) in configs.into_iter().chain([("odd widths".to_string(), odd)]) {
        let config = ModelConfig::from_json(&json, None).unwrap();
        let block = config.quantization.as_ref().and_then(|q| match q.weights {
            WeightQuant::Block { block } => Some(block),
            WeightQuant::PerChannel => None,
        });
        let store = WeightStore::dummy(&config, 11);
        let mut names: Vec<String> = store
            .names()
            .filter(|n| n.ends_with(".weight") && store.get(n).unwrap().shape.len() == 2)
            .map(String::from)
            .collect();
        names.sort();
        let (mut fp8, mut odd_tails) = (0, 0);
        for weight in &names {
            let t = store.get(weight).unwrap();
            let (out, inp) = (t.shape[0], t.shape[1]);
            let src = store.linear(weight.strip_suffix(".weight").unwrap(), out, inp, false, block).unwrap();
            let is_fp8 = t.dtype == glmv_runtime::weights::Dtype::F8E4M3;
            fp8 += usize::from(is_fp8);
            // A random word makes 8 FP8 codes or 2 BF16 values.
            odd_tails += usize::from(!t.bytes.len().is_multiple_of(if is_fp8 { 8 } else { 4 }));
            let on_gpu = gpu.linear(std::slice::from_ref(&src)).unwrap();
            assert!(src.weight.tensor().bytes.is_pending(), "{name}: {weight} was made on the host for the device");
            let ids: Vec<u32> = (0..out as u32).collect();
            let got = gpu.to_host(&gpu.embed(&on_gpu, &ids).unwrap()).unwrap();
            let on_cpu = CpuBackend.linear(&[src]).unwrap();
            let want = CpuBackend.to_host(&CpuBackend.embed(&on_cpu, &ids).unwrap()).unwrap();
            let same = got.iter().zip(&want).filter(|(g, w)| g.to_bits() == w.to_bits()).count();
            assert_eq!(same, want.len(), "{name}: {weight} {:?}: {same} of {} values equal", t.shape, want.len());
        }
        eprintln!("{name}: {} weights ({fp8} FP8, {odd_tails} with a partial last word) equal", names.len());
        assert!(names.len() > 10 && (fp8 > 0) == (name != "dense_bf16"), "{name}: {} weights, {fp8} FP8", names.len());
        assert!(name != "odd widths" || odd_tails > 0, "no tensor ends inside a random word");
    }
}

/// Prefill in chunks and decode steps, one sequence per block table (scrambled), 3D positions.
fn attention_out<B: Backend>(
    b: &B,
    shape: &AttentionShape,
    rope: &Rope,
    qkv: &[f32],
    chunks: &[usize],
    dtype: KvDtype,
    tables: &[Vec<u32>],
) -> Vec<f32> {
    let width = shape.q_width() + 2 * shape.kv_width();
    let spec = KvCacheSpec {
        num_layers: 2,
        num_blocks: 64,
        block_size: 16,
        num_kv_heads: shape.num_kv_heads,
        head_dim: shape.head_dim,
        dtype,
    };
    let mut cache = b.kv_cache(&spec).unwrap();
    let seqs = tables.len();
    let mut out = Vec::new();
    let mut done = 0;
    for &len in chunks {
        // Every sequence advances by `len` tokens; sequence s reuses sequence 0's qkv rows shifted by s.
        let mut rows = Vec::new();
        for s in 0..seqs {
            rows.extend_from_slice(&qkv[(done + s) * width..(done + s + len) * width]);
        }
        let batch = ForwardBatch {
            seqs: (0..seqs)
                .map(|s| SeqSpan { rows: s * len..(s + 1) * len, context_len: done, block_table: tables[s].clone() })
                .collect(),
            positions: (0..seqs)
                .flat_map(|_| (done..done + len).map(|p| [p as u32, (p / 3) as u32, (p % 5) as u32]))
                .collect(),
        };
        let x = b.upload(seqs * len, width, &rows).unwrap();
        let batch = b.batch(&batch, &mut cache).unwrap();
        out.extend(b.to_host(&b.attention(&x, shape, rope, &batch, &mut cache, 1).unwrap()).unwrap());
        done += len;
    }
    out
}

#[test]
fn paged_attention_matches_cpu() {
    let Some(gpu) = device() else { return };
    // GLM-4.5V (96:8, NeoX halves), GLM-4.1V (32:2, interleaved), and an odd small shape.
    let cases = [
        (96, 8, 128, RopeLayout::NeoxHalves, vec![8, 12, 12]),
        (32, 2, 128, RopeLayout::InterleavedPairs, vec![8, 12, 12]),
        (6, 3, 48, RopeLayout::NeoxHalves, vec![4, 4, 4]),
    ];
    for (heads, kv, d, layout, section) in cases {
        let shape = AttentionShape { num_heads: heads, num_kv_heads: kv, head_dim: d, scale: (d as f32).powf(-0.5) };
        let rot: usize = section.iter().sum::<usize>() * 2;
        let rope = Rope {
            rot_dim: rot,
            layout,
            inv_freq: (0..rot / 2).map(|i| 10000f32.powf(-((2 * i) as f32) / rot as f32)).collect(),
            axis: section.iter().enumerate().flat_map(|(k, &n)| std::iter::repeat_n(k as u8, n)).collect(),
        };
        let mut rng = Rng::new(d as u64 + heads as u64);
        // Prefill chunks of 16 rows or more run the tensor-core kernel (BF16/FP8 KV, head_dim 128): 37 rows over one key
        // tile, then 70 rows (two row tiles) over three key tiles (64 + 64 + 3) behind a context of 60.
        let chunks = [37, 20, 1, 1, 1, 70, 1];
        let total: usize = chunks.iter().sum::<usize>() + 1;
        let qkv = rng.vec(total * (shape.q_width() + 2 * shape.kv_width()), 1.0);
        // The same rounding on both sides, so FP8 and BF16 caches agree as closely as f32 ones.
        let tables =
            [vec![7u32, 3, 60, 12, 9, 33, 1, 2, 50, 51, 13, 14], vec![40u32, 41, 0, 5, 6, 20, 21, 22, 8, 63, 4, 30]];
        for dtype in [KvDtype::F32, KvDtype::Bf16, KvDtype::Fp8E4m3] {
            close(
                &format!("paged attention {heads}:{kv} d{d} {layout:?} {dtype:?} KV"),
                &attention_out(&gpu, &shape, &rope, &qkv, &chunks, dtype, &tables),
                &attention_out(&CpuBackend, &shape, &rope, &qkv, &chunks, dtype, &tables),
                TOL,
            );
        }
    }
}

/// Decode rows over long contexts split their keys (256 per split) when a step has few (row, head) blocks: one
/// sequence prefilled with 700 tokens, then 3 decode steps whose 701..703 keys span 3 splits, for each KV dtype;
/// at head_dim 128 on tensor cores a kv head's query heads at a time (GLM-4.5V's 12, GLM-4.1V's 16), else the
/// generic kernel.
#[test]
fn long_context_decode_matches_cpu() {
    let Some(gpu) = device() else { return };
    for (heads, kv, d) in [(96, 8, 128), (32, 2, 128), (6, 3, 48)] {
        let shape = AttentionShape { num_heads: heads, num_kv_heads: kv, head_dim: d, scale: (d as f32).powf(-0.5) };
        let rope = Rope {
            rot_dim: d,
            layout: RopeLayout::NeoxHalves,
            inv_freq: (0..d / 2).map(|i| 10000f32.powf(-((2 * i) as f32) / d as f32)).collect(),
            axis: vec![0; d / 2],
        };
        let chunks = [700, 1, 1, 1];
        let rows: usize = chunks.iter().sum();
        let qkv = Rng::new(heads as u64).vec(rows * (shape.q_width() + 2 * shape.kv_width()), 1.0);
        // One sequence over a scrambled table of all 64 blocks of 16.
        let tables = [(0..64u32).map(|b| (b * 37 + 11) % 64).collect::<Vec<_>>()];
        for dtype in [KvDtype::F32, KvDtype::Bf16, KvDtype::Fp8E4m3] {
            close(
                &format!("long-context attention {heads}:{kv} d{d} {dtype:?} KV"),
                &attention_out(&gpu, &shape, &rope, &qkv, &chunks, dtype, &tables),
                &attention_out(&CpuBackend, &shape, &rope, &qkv, &chunks, dtype, &tables),
                TOL,
            );
        }
    }
}

#[test]
fn segment_attention_matches_cpu() {
    let Some(gpu) = device() else { return };
    let (heads, d) = (12, 128);
    let shape = AttentionShape { num_heads: heads, num_kv_heads: heads, head_dim: d, scale: (d as f32).powf(-0.5) };
    let inv: Vec<f32> = (0..32).map(|i| 10000f32.powf(-((2 * i) as f32) / 64.0)).collect();
    let rope = Rope {
        rot_dim: d,
        layout: RopeLayout::NeoxHalves,
        inv_freq: inv.iter().chain(&inv).copied().collect(),
        axis: std::iter::repeat_n(1u8, 32).chain(std::iter::repeat_n(2u8, 32)).collect(),
    };
    // Segments of 64, 144 and 5 patches: the tensor-core kernel (f32 keys and values in steps of 32) takes tiles
    // of 64, 64 + 64 + 16 and 5 rows.
    let rows = 64 + 144 + 5;
    let mut rng = Rng::new(5);
    let qkv = rng.vec(rows * 3 * heads * d, 1.0);
    let positions: Vec<[u32; 3]> = (0..rows).map(|r| [0, (r / 8) as u32 % 12, (r % 8) as u32]).collect();
    let segments = [0..64, 64..208, 208..rows];
    let run = |b: &dyn Fn(&[f32]) -> Vec<f32>| b(&qkv);
    let gpu_out = run(&|q| {
        let x = gpu.upload(rows, 3 * heads * d, q).unwrap();
        gpu.to_host(&gpu.segment_attention(&x, &shape, &rope, &positions, &segments).unwrap()).unwrap()
    });
    let x = CpuBackend.upload(rows, 3 * heads * d, &qkv).unwrap();
    let cpu_out =
        CpuBackend.to_host(&CpuBackend.segment_attention(&x, &shape, &rope, &positions, &segments).unwrap()).unwrap();
    close("vision segment attention 12 heads d128", &gpu_out, &cpu_out, TOL);
}

/// How the expert weights of a MoE case are stored.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ExpertWeights {
    Bf16,
    /// FP8 with one scale per output channel (compressed-tensors).
    Fp8Channel,
    /// FP8 with one scale per 128 x 128 block (`weight_scale_inv`).
    Fp8Block,
}

impl ExpertWeights {
    fn block(self) -> Option<[usize; 2]> {
        (self == ExpertWeights::Fp8Block).then_some([128, 128])
    }
}

#[allow(clippy::too_many_arguments)]
fn moe_out<B: Backend>(
    b: &B,
    store: &WeightStore,
    experts: usize,
    hidden: usize,
    inter: usize,
    routing: Routing,
    kind: ExpertWeights,
    input: InputQuant,
    x: &[f32],
) -> Vec<f32> {
    let linear =
        |name: String, o: usize, i: usize| store.linear(&name, o, i, false, kind.block()).unwrap().with_input(input);
    let mlp = |p: &str, i: usize| MlpSource {
        gate_up: vec![linear(format!("{p}.gate_proj"), i, hidden), linear(format!("{p}.up_proj"), i, hidden)],
        down: linear(format!("{p}.down_proj"), hidden, i),
    };
    let src = ExpertsSource {
        router: store.get("gate.weight").unwrap(),
        correction_bias: Some(store.get("gate.e_score_correction_bias").unwrap()),
        experts: (0..experts).map(|e| mlp(&format!("experts.{e}"), inter)).collect(),
        shared: Some(mlp("shared_experts", inter)),
        routing,
    };
    let e = b.experts(&src).unwrap();
    let xt = b.upload(x.len() / hidden, hidden, x).unwrap();
    b.to_host(&b.moe_forward(&xt, &e).unwrap()).unwrap()
}

#[test]
fn moe_matches_cpu() {
    let Some(gpu) = device() else { return };
    // (experts, top_k, n_group, topk_group, hidden, inter, weights). Up to 512 (token, expert) pairs run the
    // warp-per-row kernels, more the grouped tensor-core GEMMs: 90 and 300 tokens cover both, and at 300 tokens
    // over 16 experts each expert's rows span several 64-row tiles.
    let cases = [
        (64, 6, 8, 3, 512, 256, ExpertWeights::Bf16),
        (128, 8, 1, 1, 1024, 352, ExpertWeights::Fp8Channel),
        (16, 4, 2, 1, 160, 96, ExpertWeights::Fp8Channel),
        (32, 8, 4, 2, 384, 208, ExpertWeights::Fp8Block),
    ];
    for (experts, top_k, n_group, topk_group, hidden, inter, kind) in cases {
        let mut rng = Rng::new(experts as u64 * 7 + hidden as u64);
        let mut tensors = vec![
            tensor("gate.weight", &[experts, hidden], Data::Bf16(rng.vec(experts * hidden, 0.1))),
            tensor("gate.e_score_correction_bias", &[experts], Data::F32(rng.vec(experts, 0.05))),
        ];
        let names: Vec<String> =
            (0..experts).map(|e| format!("experts.{e}")).chain(["shared_experts".to_string()]).collect();
        for p in &names {
            for (proj, o, i) in [("gate_proj", inter, hidden), ("up_proj", inter, hidden), ("down_proj", hidden, inter)]
            {
                let name = format!("{p}.{proj}");
                match kind {
                    ExpertWeights::Bf16 => {
                        tensors.push(tensor(&format!("{name}.weight"), &[o, i], Data::Bf16(rng.vec(o * i, 0.05))))
                    }
                    ExpertWeights::Fp8Channel => {
                        tensors.push(tensor(&format!("{name}.weight"), &[o, i], Data::Fp8(fp8_bytes(&mut rng, o * i))));
                        tensors.push(tensor(&format!("{name}.weight_scale"), &[o, 1], Data::F32(rng.vec(o, 0.01))));
                    }
                    ExpertWeights::Fp8Block => {
                        let blocks = [o.div_ceil(128), i.div_ceil(128)];
                        tensors.push(tensor(&format!("{name}.weight"), &[o, i], Data::Fp8(fp8_bytes(&mut rng, o * i))));
                        let scales = Data::F32(rng.vec(blocks[0] * blocks[1], 0.01));
                        tensors.push(tensor(&format!("{name}.weight_scale_inv"), &blocks, scales));
                    }
                }
            }
        }
        let store = write(&scratch(&format!("moe{experts}")), &tensors);
        let routing = Routing { top_k, n_group, topk_group, norm_topk_prob: n_group > 1, routed_scaling_factor: 2.5 };
        let what = format!("moe {experts} experts top-{top_k} groups {n_group}/{topk_group} {kind:?}");
        for tokens in [1, 7, 90, 300] {
            let x = rng.vec(tokens * hidden, 1.0);
            let exact = InputQuant::Exact;
            close(
                &format!("{what}, {tokens} tokens"),
                &moe_out(&gpu, &store, experts, hidden, inter, routing, kind, exact, &x),
                &moe_out(&CpuBackend, &store, experts, hidden, inter, routing, kind, exact, &x),
                TOL,
            );
            if kind == ExpertWeights::Bf16 {
                continue;
            }
            // Dynamic FP8 activations (fused and grouped kernels, shared expert): x rounds identically on both
            // backends, but the SwiGLU rows fed to down_proj differ by summation order, and a value that lies on an
            // FP8 rounding boundary may round one step apart, hence the FP8 bar of the CUDA issue.
            let dynamic = InputQuant::Fp8 { group: kind.block().map(|b| b[1]) };
            close(
                &format!("{what}, FP8 activations, {tokens} tokens"),
                &moe_out(&gpu, &store, experts, hidden, inter, routing, kind, dynamic, &x),
                &moe_out(&CpuBackend, &store, experts, hidden, inter, routing, kind, dynamic, &x),
                FP8_ACTIVATIONS_TOL,
            );
        }
    }
}

/// Greedy tokens picked on the device are the CPU's, exactly: lowest index on ties, NaN never, all-NaN rows 0.
#[test]
fn argmax_rows_match_cpu() {
    let Some(gpu) = device() else { return };
    let mut rng = Rng::new(17);
    for cols in [1, 7, 1000, 151552] {
        let mut rows: Vec<Vec<f32>> = (0..10).map(|_| rng.vec(cols, 8.0)).collect();
        let mut tie = rng.vec(cols, 1.0);
        tie[cols / 3] = 5.0;
        tie[cols - 1] = 5.0;
        let mut last = rng.vec(cols, 1.0);
        last[cols - 1] = 2.0;
        let mut nan = vec![f32::NAN; cols];
        nan[cols / 2] = -3.0;
        let mut mixed = rng.vec(cols, 1.0);
        mixed.iter_mut().step_by(3).for_each(|v| *v = f32::NAN);
        rows.extend([tie, last, nan, mixed, vec![f32::NAN; cols], vec![f32::NEG_INFINITY; cols]]);
        let data: Vec<f32> = rows.concat();
        let got = gpu.argmax_rows(&gpu.upload(rows.len(), cols, &data).unwrap()).unwrap();
        let want = CpuBackend.argmax_rows(&CpuBackend.upload(rows.len(), cols, &data).unwrap()).unwrap();
        eprintln!("argmax over {} rows of {cols}: {got:?}", rows.len());
        assert_eq!(got, want, "argmax_rows, {cols} columns");
        assert_eq!(want[10], if cols == 1 { 0 } else { (cols / 3) as u32 }, "the first of two equal maxima");
        // Row 13 (every third value NaN) is checked by the comparison above only.
        assert_eq!([want[12], want[14], want[15]], [(cols / 2) as u32, 0, 0], "NaN and -inf rows");
    }
}

/// Whether plain temperature sampling (no filter) may draw `token` with `d.uniform` once rounding is allowed for:
/// the draw point u x total, summed exactly (f64), lies within the token's share of the running mass widened by
/// 2e-6 of the total. The host walks the row in f64, the device sums f32 as a tree of chunks (and CUDA's expf is not
/// libm's), so where the point sits within the device's rounding of a boundary they may land a token apart.
fn plain_draw_within_rounding(row: &[f32], d: &Draw, token: u32) -> bool {
    if d.top_k > 0 || d.top_p < 1.0 || d.min_p > 0.0 {
        return false;
    }
    let top = row.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    let weight = |v: f32| if v.is_nan() { 0.0 } else { ((v - top) as f64 / d.temperature as f64).exp() };
    let total: f64 = row.iter().map(|&v| weight(v)).sum();
    let before: f64 = row[..token as usize].iter().map(|&v| weight(v)).sum();
    let (point, share, slack) = (d.uniform as f64 * total, weight(row[token as usize]), 2e-6 * total);
    share > 0.0 && point >= before - slack && point < before + share + slack
}

/// Tokens drawn on the device are the host's (`Draw::sample`, what `sample` does with the same generator number) for
/// every filter: plain temperature, top-k, top-p, min-p and their mixes, over the real vocabulary and an odd one, with
/// ties, NaN and -inf. Rows whose 1,024 best candidates cannot decide (top-k over 1,024; a nucleus reaching past
/// them) come back `None` for the host, and only those.
#[test]
fn sample_rows_match_host() {
    let Some(gpu) = device() else { return };
    let mut rng = Rng::new(23);
    let filters: [(f32, usize, f32, f32); 9] = [
        (1.0, 0, 1.0, 0.0),
        (0.6, 0, 1.0, 0.0),
        (0.8, 2, 0.6, 0.0), // GLM-4.5V's generation_config.json: top_k 2, top_p 0.6
        (1.0, 50, 1.0, 0.0),
        (1.2, 1024, 0.95, 0.0),
        (1.0, 0, 0.7, 0.0),
        (0.9, 0, 1.0, 0.1),
        (1.0, 40, 0.9, 0.05),
        (1.0, 2000, 1.0, 0.0), // top-k beyond the head: the host's
    ];
    for cols in [1000usize, 151552] {
        let (mut rows, mut draws) = (Vec::new(), Vec::new());
        for (n, &(temperature, top_k, top_p, min_p)) in filters.iter().enumerate() {
            for k in 0..6 {
                // Peaked rows (a few large logits) and flat ones (the nucleus spreads over the vocabulary).
                let spread = if k % 2 == 0 { 12.0 } else { 2.0 };
                let mut row = rng.vec(cols, spread);
                if k == 2 {
                    row[cols / 5] = row.iter().copied().fold(f32::MIN, f32::max);
                    row[cols / 2] = row[cols / 5]; // a tie at the top
                }
                if k == 3 {
                    row.iter_mut().step_by(7).for_each(|v| *v = f32::NAN);
                    row.iter_mut().skip(3).step_by(11).for_each(|v| *v = f32::NEG_INFINITY);
                }
                rows.push(row);
                let uniform = ((n * 6 + k) as f32 * 0.137 + 0.01).fract();
                draws.push(Draw { temperature, top_k, top_p, min_p, uniform });
            }
        }
        rows.push(vec![f32::NEG_INFINITY; cols]);
        draws.push(Draw { temperature: 1.0, top_k: 0, top_p: 0.9, min_p: 0.0, uniform: 0.5 });
        let data: Vec<f32> = rows.concat();
        let got = gpu.sample_rows(&gpu.upload(rows.len(), cols, &data).unwrap(), &draws).unwrap();
        let mut left = 0;
        for (i, (row, d)) in rows.iter().zip(&draws).enumerate() {
            let want = d.sample(row);
            match got[i] {
                Some(token) if token != want && plain_draw_within_rounding(row, d, token) => {
                    eprintln!("row {i} of {cols}: device {token}, host {want}, a boundary apart within f32 rounding")
                }
                Some(token) => assert_eq!(token, want, "row {i} of {cols} columns, {d:?}"),
                None => {
                    left += 1;
                    let flat_nucleus = d.top_k == 0 && d.top_p < 1.0;
                    assert!(d.top_k > 1024 || flat_nucleus || d.min_p > 0.0, "row {i}: left to the host, {d:?}");
                }
            }
        }
        eprintln!("sample_rows over {} rows of {cols}: {left} left to the host", rows.len());
        if !gpu.kernel_paths().device_sampling {
            // GLMV_CUDA_GENERIC=device-sampling (gpu_check.sh's bisection): every row drawn on the host, checked above.
            continue;
        }
        assert!(got.iter().filter(|t| t.is_some()).count() >= rows.len() - 6 - 12, "most rows decided on the device");
        if cols > 1024 {
            assert!(draws.iter().zip(&got).all(|(d, t)| d.top_k <= 1024 || t.is_none()), "top-k over the head");
        }
        // The GLM-4.5V defaults and every plain-temperature row are decided on the device.
        assert!(got[..18].iter().all(Option::is_some));
    }
}
