//! Whole fixture models on the CUDA backend against the CPU backend: logits of every prompt position, greedy
//! generation token for token, and prompts with images through the vision tower; then the decoder layers of both
//! families at their real shapes. Needs a CUDA device.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use glmv_runtime::{
    backend::{
        cuda::{CudaBackend, KernelPaths},
        Backend, CpuBackend, ForwardBatch, KvDtype, SeqSpan,
    },
    config::{
        known::{KnownModel, Precision},
        Fp8Activations, InputQuant, ModelConfig,
    },
    engine::{sampler::SamplingParams, Engine, EngineConfig, EventKind, Request, RequestId},
    model::{text_batch, Grid, MediaKind, TextModel},
    pipeline::{GenerateOptions, LoadOptions, MediaInput, Pipeline, Prompt},
    weights::WeightStore,
};

#[test]
fn fixture_models_match_cpu() {
    if let Err(e) = CudaBackend::new(0) {
        common::skip_without_device(format!("no usable CUDA device ({e})"));
        return;
    }
    for dir in text_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let ckpt = dir.join("checkpoint");
        let gpu = Pipeline::load(&ckpt, CudaBackend::new_poisoned(0).unwrap(), &mut |_| {}).unwrap();
        let cpu = Pipeline::load(&ckpt, CpuBackend, &mut |_| {}).unwrap();
        let t = cpu.config.tokens.clone();
        let patch = cpu.vision.patch_width();
        for exp in expected_prompts(&dir) {
            // Text: every position, then against transformers too.
            let prompt = Prompt::text(exp.all_ids());
            let g = gpu.prompt_logits(&prompt, 0).unwrap();
            let c = cpu.prompt_logits(&prompt, 0).unwrap();
            let err = rel_l2(&g, &c);
            eprintln!("{name}: GPU vs CPU logits relative L2 {err:.2e}");
            assert!(err < 1e-4, "{name}: {err}");
            for i in 0..exp.all_ids().len() {
                check_row(&format!("{name} GPU position {i}"), &g[i * exp.vocab..(i + 1) * exp.vocab], exp.row(i));
            }
            // BF16 and FP8 KV caches. The backends' keys and values differ by ~1e-5 before rounding (the tensor-core
            // GEMMs carry x as BF16 hi + lo, about 16 bits), so a value near a rounding boundary lands a BF16 or an
            // E4M3 step apart (0.4% / 6%): measured on the CUDA emulator up to 5.3e-4 (BF16) and 4.5e-3 (FP8) over
            // these fixtures, hence bars of 5e-3 and 2e-2, inside the CUDA issue's 1e-2 and 3e-2.
            for dtype in [KvDtype::Bf16, KvDtype::Fp8E4m3] {
                let (mut g8, mut c8) = (
                    Pipeline::load(&ckpt, CudaBackend::new(0).unwrap(), &mut |_| {}).unwrap(),
                    Pipeline::load(&ckpt, CpuBackend, &mut |_| {}).unwrap(),
                );
                g8.kv_dtype = dtype;
                c8.kv_dtype = dtype;
                let err = rel_l2(&g8.prompt_logits(&prompt, 0).unwrap(), &c8.prompt_logits(&prompt, 0).unwrap());
                eprintln!("{name}: {dtype:?} KV, GPU vs CPU logits relative L2 {err:.2e}");
                let bar = if dtype == KvDtype::Fp8E4m3 { 2e-2 } else { 5e-3 };
                assert!(err < bar, "{name} {dtype:?}: {err}");
            }
            // Greedy generation, token for token.
            let options = GenerateOptions {
                max_tokens: 24,
                sampling: SamplingParams { temperature: 0.0, ..Default::default() },
                ignore_eos: true,
            };
            let p = Prompt::text(exp.prompt_ids.clone());
            let go = gpu.generate(&p, &[], &options, &mut |_, _| {}).unwrap();
            let co = cpu.generate(&p, &[], &options, &mut |_, _| {}).unwrap();
            assert_eq!(go, co, "{name}: greedy generation differs");
            // With an image and a two-frame video: the vision tower, placeholder scatter and 3D positions.
            let mut rng = safetensors_writer::Rng::new(7);
            let mut ids = vec![exp.prompt_ids[0], t.image_start];
            ids.extend(std::iter::repeat_n(t.image, 6));
            ids.extend([t.image_end, t.video_start, t.image_start]);
            ids.extend(std::iter::repeat_n(t.image, 4));
            ids.extend([t.image_end, t.image_start]);
            ids.extend(std::iter::repeat_n(t.image, 4));
            ids.extend([t.image_end, t.video_end, exp.prompt_ids[0]]);
            let media = vec![
                MediaInput {
                    kind: MediaKind::Image,
                    grid: Grid { t: 1, h: 4, w: 6 },
                    pixel_values: rng.vec(24 * patch, 1.0),
                },
                MediaInput {
                    kind: MediaKind::Video,
                    grid: Grid { t: 2, h: 4, w: 4 },
                    pixel_values: rng.vec(32 * patch, 1.0),
                },
            ];
            let mm = Prompt { ids, media };
            let err = rel_l2(&gpu.prompt_logits(&mm, 0).unwrap(), &cpu.prompt_logits(&mm, 0).unwrap());
            eprintln!("{name}: GPU vs CPU logits with image and video, relative L2 {err:.2e}");
            assert!(err < 1e-4, "{name}: {err}");
            let go = gpu.generate(&mm, &[], &options, &mut |_, _| {}).unwrap();
            let co = cpu.generate(&mm, &[], &options, &mut |_, _| {}).unwrap();
            assert_eq!(go, co, "{name}: greedy generation with media differs");
        }
    }
}

/// The FP8 fixtures with `--fp8-activations checkpoint` on the device against the CPU backend, every position.
/// Each projection's input is rounded to FP8 from values each backend computed in its own summation order, so a value
/// lying on a rounding boundary can round one FP8 step apart, and these tiny random models amplify that in the
/// positions that attend to it (the CPU against transformers does the same: tests/text_parity.rs, where most rows
/// agree to 1e-6). The op-level tests (tests/cuda_ops.rs) hold the rounding itself to 1e-4; here: each prompt's
/// first position within 1e-2, and the whole logits within 0.3 (quantised and exact activations are 5e-2 .. 2e-1
/// apart on these models), with the share of rows that agree to 1e-4 logged.
#[test]
fn fp8_activations_match_cpu() {
    if let Err(e) = CudaBackend::new(0) {
        common::skip_without_device(format!("no usable CUDA device ({e})"));
        return;
    }
    let options = LoadOptions { fp8_activations: Fp8Activations::Checkpoint, ..Default::default() };
    let mut checked = 0;
    for dir in text_fixtures() {
        if !dir.join("text_logits_fp8_activations.safetensors").exists() {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let ckpt = dir.join("checkpoint");
        let gpu = Pipeline::load_with(&ckpt, options, CudaBackend::new_poisoned(0).unwrap(), &mut |_| {}).unwrap();
        let cpu = Pipeline::load_with(&ckpt, options, CpuBackend, &mut |_| {}).unwrap();
        let (mut agreeing, mut rows) = (0, 0);
        for (k, exp) in expected_prompts(&dir).iter().enumerate() {
            let prompt = Prompt::text(exp.all_ids());
            let g = gpu.prompt_logits(&prompt, 0).unwrap();
            let c = cpu.prompt_logits(&prompt, 0).unwrap();
            assert!(g.iter().all(|v| v.is_finite()), "{name} prompt {k}: non-finite logits");
            let errors: Vec<f64> = g.chunks(exp.vocab).zip(c.chunks(exp.vocab)).map(|(a, b)| rel_l2(a, b)).collect();
            let whole = rel_l2(&g, &c);
            let listed: Vec<String> = errors.iter().map(|e| format!("{e:.0e}")).collect();
            eprintln!("{name} prompt {k}: GPU vs CPU, FP8 activations: {whole:.2e}; rows {}", listed.join(" "));
            assert!(errors[0] <= 1e-2, "{name} prompt {k}: first position {:.2e}", errors[0]);
            assert!(whole <= 0.3, "{name} prompt {k}: {whole:.2e}");
            agreeing += errors.iter().filter(|&&e| e <= 1e-4).count();
            rows += errors.len();
        }
        eprintln!("{name}: {agreeing} of {rows} rows within 1e-4 of the CPU with FP8 activations");
        checked += 1;
    }
    assert_eq!(checked, 4, "the four FP8 fixtures");
}

/// Logits of the last prompt row and of each decode step of a model over `ids`: the prompt in two chunks (the second
/// attends to the first through the paged cache), then one token per step.
fn chunked_logits<B: Backend>(
    backend: B,
    config: &ModelConfig,
    store: &WeightStore,
    ids: &[u32],
    prompt: usize,
) -> Vec<f32> {
    let model = TextModel::load(&backend, config, store, InputQuant::Exact, &mut |_| {}).unwrap();
    let block = 16;
    let blocks = ids.len().div_ceil(block);
    let mut cache = backend.kv_cache(&model.kv_cache_spec(blocks, block, KvDtype::Bf16)).unwrap();
    let table: Vec<u32> = (0..blocks as u32).collect();
    let first = prompt * 2 / 3;
    let mut steps = vec![0..first, first..prompt];
    steps.extend((prompt..ids.len()).map(|i| i..i + 1));
    let mut logits = Vec::new();
    for rows in steps {
        let hidden = model.embed(&backend, &ids[rows.clone()]).unwrap();
        let batch = text_batch(rows.start, rows.len(), table.clone());
        let out = model.forward(&backend, hidden, &batch, &mut cache).unwrap();
        if rows.end >= prompt {
            logits.extend(model.logits(&backend, &out, &[rows.len() - 1]).unwrap());
        }
    }
    logits
}

/// The decoder layers of GLM-4.5V (FP8: its dense first layer and a MoE layer of 128 experts, top-8) and of GLM-4.1V
/// (BF16, dense) at their real shapes, with seeded dummy weights (`--load-format dummy`'s), GPU against CPU: a
/// 300-token prompt (the MoE layer's 2,400 (token, expert) pairs run the grouped expert GEMMs) and decode steps
/// (the warp-per-row kernels). The vocabulary is cut to 8,192 rows: it is not a layer shape, and the full
/// embeddings would only slow the test.
#[test]
fn real_shape_layers_match_cpu() {
    if let Err(e) = CudaBackend::new(0) {
        common::skip_without_device(format!("no usable CUDA device ({e})"));
        return;
    }
    // Both backends compute in f32 from the same dequantised weights and round the BF16 cache alike, so the gap is
    // summation order and the GEMMs' split BF16 operands: far below the 1e-2 (BF16) / 3e-2 (FP8) bars, which
    // allow for activation quantisation that this backend does not do yet. The fixture models above meet 1e-4.
    const TOL: f64 = 1e-3;
    for (model, precision, layers) in
        [(KnownModel::Glm45v, Precision::Fp8, 2), (KnownModel::Glm41v, Precision::Bf16, 1)]
    {
        let mut json = model.config_json(precision).unwrap();
        let text = &mut json["text_config"];
        text["num_hidden_layers"] = layers.into();
        text["vocab_size"] = 8192.into();
        let config = ModelConfig::from_json(&json, None).unwrap();
        let store = WeightStore::dummy(&config, 11);
        let mut rng = safetensors_writer::Rng::new(3);
        let ids: Vec<u32> = (0..303).map(|_| (rng.vec(1, 0.5)[0].abs() * 16000.0) as u32 % 8192).collect();
        let started = std::time::Instant::now();
        let gpu = chunked_logits(CudaBackend::new_poisoned(0).unwrap(), &config, &store, &ids, 300);
        let cpu = chunked_logits(CpuBackend, &config, &store, &ids, 300);
        let err = rel_l2(&gpu, &cpu);
        eprintln!(
            "{} {precision:?}, {layers} layers: GPU vs CPU logits relative L2 {err:.2e} ({:.1} s)",
            model.name(),
            started.elapsed().as_secs_f64()
        );
        assert!(gpu.iter().all(|v| v.is_finite()), "{}: non-finite logits", model.name());
        assert!(err <= TOL, "{}: relative L2 {err:.2e} > {TOL:.0e}", model.name());
    }
}

/// Logits of three sequences decoding together for `steps` steps after prompts of 5, 45 and 85 tokens (every step
/// one row per sequence: a 4-row graph bucket with one padding row), and the decode-step recordings the cache holds.
fn decode_together(p: &Pipeline<CudaBackend>, steps: usize) -> (Vec<f32>, usize) {
    let (model, be) = (&p.model, &p.backend);
    let vocab = model.vocab_size() as u32;
    let prompts = [5usize, 45, 85];
    let block = 16;
    let per_seq = (prompts[2] + steps).div_ceil(block);
    let mut cache = be.kv_cache(&model.kv_cache_spec(3 * per_seq, block, KvDtype::Bf16)).unwrap();
    let tables: Vec<Vec<u32>> = (0..3).map(|s| (s * per_seq..(s + 1) * per_seq).map(|b| b as u32).collect()).collect();
    let token = |s: usize, i: usize| ((s * 31 + i * 7) as u32) % vocab;
    let mut logits = Vec::new();
    // The prompts, one chunk each, in one batch.
    let mut batch = ForwardBatch::default();
    let mut ids = Vec::new();
    for (s, &len) in prompts.iter().enumerate() {
        batch.seqs.push(SeqSpan { rows: ids.len()..ids.len() + len, context_len: 0, block_table: tables[s].clone() });
        ids.extend((0..len).map(|i| token(s, i)));
        batch.positions.extend((0..len).map(|i| [i as u32; 3]));
    }
    let hidden = model.embed(be, &ids).unwrap();
    model.forward(be, hidden, &batch, &mut cache).unwrap();
    for step in 0..steps {
        let contexts: Vec<usize> = prompts.iter().map(|&len| len + step).collect();
        let batch = ForwardBatch {
            seqs: (0..3)
                .map(|s| SeqSpan { rows: s..s + 1, context_len: contexts[s], block_table: tables[s].clone() })
                .collect(),
            positions: contexts.iter().map(|&c| [c as u32; 3]).collect(),
        };
        let ids: Vec<u32> = (0..3).map(|s| token(s, contexts[s])).collect();
        let hidden = model.embed(be, &ids).unwrap();
        let out = model.forward(be, hidden, &batch, &mut cache).unwrap();
        logits.extend(model.logits(be, &out, &[0, 1, 2]).unwrap());
    }
    (logits, cache.recorded_graphs())
}

/// Decode steps replayed from CUDA graphs give what running them kernel by kernel gives, on every fixture model:
/// three sequences for 300 steps, across the 256-key boundary where a second recording (two key splits) takes over.
/// They differ only where the recording rounds the key splits up (summation order), hence 1e-5, not equality.
#[test]
fn decode_graphs_match_eager_steps() {
    let Ok(probe) = CudaBackend::new(0) else {
        common::skip_without_device("no usable CUDA device");
        return;
    };
    if !probe.kernel_paths().cuda_graphs {
        eprintln!("skipped: no graphs (GLMV_CUDA_GENERIC=cuda-graphs, or no stream-ordered allocation)");
        return;
    }
    let eager_paths = KernelPaths { cuda_graphs: false, ..KernelPaths::default() };
    for dir in text_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let ckpt = dir.join("checkpoint");
        let graphs = Pipeline::load(&ckpt, CudaBackend::new(0).unwrap(), &mut |_| {}).unwrap();
        let eager = Pipeline::load(&ckpt, CudaBackend::with_paths(0, eager_paths).unwrap(), &mut |_| {}).unwrap();
        let started = std::time::Instant::now();
        let (g, recorded) = decode_together(&graphs, 300);
        let graph_s = started.elapsed().as_secs_f64();
        let (e, none) = decode_together(&eager, 300);
        let err = rel_l2(&g, &e);
        eprintln!(
            "{name}: graph vs eager decode logits relative L2 {err:.2e}, {recorded} recordings, {graph_s:.2} s vs {:.2} s",
            started.elapsed().as_secs_f64() - graph_s
        );
        // Experts whose rows are not whole 16-byte chunks (moe_fp8_channel: 24 FP8 columns of down_proj) run the
        // host-planned dispatch, which a graph cannot hold: those steps run kernel by kernel, with a log line.
        let text = &graphs.config.text;
        let element = if name.contains("fp8") { 1 } else { 2 };
        let device_experts = text
            .moe
            .as_ref()
            .is_none_or(|m| [text.hidden_size, m.moe_intermediate_size].iter().all(|k| k * element % 16 == 0));
        let expected = if device_experts { 2 } else { 0 };
        assert_eq!((recorded, none), (expected, 0), "{name}: one recording per key-split count (1, 2), none when off");
        assert!(g.iter().all(|v| v.is_finite()), "{name}: non-finite logits");
        assert!(err <= 1e-5, "{name}: {err:.2e}");
    }
}

/// Tokens of each request served by an engine on `backend` (up to 8 sequences per step, so decode steps run as
/// recorded graphs of up to 8 rows): greedy, plain-temperature, top-k/top-p and min-p draws (on the device), and
/// logprob and penalty requests (on the host).
fn engine_tokens<B: Backend>(backend: B, dir: &std::path::Path) -> Vec<Vec<u32>> {
    let pipeline = Pipeline::load(dir, backend, &mut |_| {}).unwrap();
    let plain = pipeline.tokenizer.token_to_id("<|endoftext|>").unwrap();
    let config = EngineConfig {
        max_running: 8,
        prefill_budget: 64,
        max_context: 1024,
        block_size: 16,
        num_blocks: 256,
        mm_cache_bytes: 1 << 20,
        kv_dtype: KvDtype::F32,
    };
    // The CUDA backend's decode steps of up to 8 rows (max_running) are recorded before the first request (none
    // with GLMV_CUDA_GENERIC=cuda-graphs, as gpu_check.sh's bisection runs it).
    let records = pipeline.backend.name() != CpuBackend.name() && !pipeline.backend.decode_rows_to_record().is_empty();
    let mut engine = Engine::new(pipeline, config).unwrap();
    let ahead: &[usize] = if records { &[1, 2, 4, 8] } else { &[] };
    assert_eq!(engine.decode_steps_ahead, ahead);
    let mut rng = safetensors_writer::Rng::new(5);
    let ids: Vec<RequestId> = (0..12u64)
        .map(|i| {
            let len = 3 + (rng.next_u32() % 30) as usize;
            let prompt: Vec<u32> = (0..len).map(|_| rng.next_u32() % plain).collect();
            let mut r = Request::new(Prompt::text(prompt), 40);
            r.ignore_eos = true;
            r.sampling = match i % 6 {
                0 => SamplingParams { temperature: 0.0, ..Default::default() },
                1 => SamplingParams { temperature: 1.0, seed: i, ..Default::default() },
                2 => SamplingParams { temperature: 0.8, top_k: 2, top_p: 0.6, seed: i, ..Default::default() },
                3 => SamplingParams { temperature: 0.7, top_p: 0.9, min_p: 0.05, seed: i, ..Default::default() },
                4 => SamplingParams { temperature: 0.9, repetition_penalty: 1.2, seed: i, ..Default::default() },
                _ => SamplingParams { temperature: 0.0, ..Default::default() },
            };
            if i % 6 == 5 {
                r.logprobs = Some(3);
            }
            engine.submit(r).unwrap()
        })
        .collect();
    let mut tokens: std::collections::BTreeMap<RequestId, Vec<u32>> = Default::default();
    while engine.has_work() {
        for ev in engine.step().unwrap() {
            if let EventKind::Token { token, .. } = ev.kind {
                tokens.entry(ev.request).or_default().push(token.id);
            }
        }
    }
    ids.iter().map(|id| tokens.remove(id).unwrap_or_default()).collect()
}

/// The engine on the GPU serves what it serves on the CPU, token for token: batched decode steps replayed from
/// graphs, tokens drawn on the device with each request's own generator numbers, and the host's rows (logprobs,
/// penalties) alongside. A draw flips where its number falls within the backends' difference of a probability
/// boundary, so the cache is f32: with a BF16 cache, keys a BF16 step apart move logits by ~1e-4, and on the CUDA
/// emulator moe_bf16's penalty request drew token 60 for 61 at its 20th token (its number 1e-5 from the boundary).
#[test]
fn engine_on_the_device_matches_the_cpu() {
    if let Err(e) = CudaBackend::new(0) {
        common::skip_without_device(format!("no usable CUDA device ({e})"));
        return;
    }
    for fixture in ["moe_bf16", "dense_bf16", "moe_fp8_block"] {
        let dir = fixtures_root().join(fixture).join("checkpoint");
        let gpu = engine_tokens(CudaBackend::new_poisoned(0).unwrap(), &dir);
        let cpu = engine_tokens(CpuBackend, &dir);
        for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            assert_eq!(g.len(), 40, "{fixture} request {i}: length");
            assert_eq!(g, c, "{fixture} request {i}: tokens differ");
        }
        eprintln!("{fixture}: 12 requests x 40 tokens equal on both backends");
    }
}
