//! The engine on the reference checkpoints: batching never changes a request's output, preemption and chunked
//! prefill are invisible, seeded sampling is reproducible, prefix reuse is reported and exact, aborts free
//! everything.
mod common;

use std::collections::BTreeMap;

use common::*;
use glmv_runtime::{
    backend::{CpuBackend, KvDtype},
    engine::{sampler::SamplingParams, Engine, EngineConfig, EventKind, FinishReason, Request, RequestId},
    model::{Grid, MediaKind},
    pipeline::{MediaInput, Pipeline, Prompt},
};

fn engine(fixture: &str, config: EngineConfig) -> Engine<CpuBackend> {
    let dir = fixtures_root().join(fixture).join("checkpoint");
    Engine::new(Pipeline::load(&dir, CpuBackend, &mut |_| {}).unwrap(), config).unwrap()
}

fn config() -> EngineConfig {
    EngineConfig {
        max_running: 64,
        prefill_budget: 512,
        max_context: 4096,
        block_size: 4,
        num_blocks: 2048,
        mm_cache_bytes: 1 << 20,
        kv_dtype: KvDtype::Bf16,
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Outcome {
    tokens: Vec<u32>,
    text: String,
    reason: Option<FinishReason>,
    cached: usize,
}

/// Runs until idle and gathers each request's completion 0.
fn run(e: &mut Engine<CpuBackend>) -> BTreeMap<RequestId, Outcome> {
    let mut out: BTreeMap<RequestId, Outcome> = BTreeMap::new();
    let mut steps = 0;
    while e.has_work() {
        steps += 1;
        assert!(steps < 100_000, "engine does not finish");
        for ev in e.step().unwrap() {
            let o = out.entry(ev.request).or_default();
            match ev.kind {
                EventKind::Token { token, text } => {
                    o.tokens.push(token.id);
                    o.text += &text;
                }
                EventKind::Finished { reason, usage, .. } => {
                    o.reason = Some(reason);
                    o.cached = usage.cached_tokens;
                    assert_eq!(usage.completion_tokens, o.tokens.len());
                }
            }
        }
    }
    out
}

/// Ordinary tokens of a checkpoint: ids below its first special token.
fn plain_tokens(e: &Engine<CpuBackend>) -> u32 {
    e.pipeline.tokenizer.token_to_id("<|endoftext|>").expect("GLM-V tokenizers have <|endoftext|>")
}

/// 32 requests of mixed prompt lengths and stop conditions, some with an image. Text ids are below `plain`.
fn requests(plain: u32, image: Option<(u32, u32)>) -> Vec<Request> {
    let mut rng = safetensors_writer::Rng::new(42);
    (0..32)
        .map(|i| {
            let len = 1 + (rng.next_u32() % 40) as usize;
            let mut ids: Vec<u32> = (0..len).map(|_| rng.next_u32() % plain).collect();
            let mut media = Vec::new();
            if let (Some((start, image)), true) = (image, i % 5 == 0) {
                // A 4x4 patch grid: 4 placeholder tokens after 2x2 merge.
                ids.splice(1..1, [start, image, image, image, image]);
                media.push(MediaInput {
                    kind: MediaKind::Image,
                    grid: Grid { t: 1, h: 4, w: 4 },
                    pixel_values: Vec::new(),
                });
            }
            let mut r = Request::new(Prompt { ids, media }, 1 + (i % 13));
            r.sampling = SamplingParams { temperature: 0.0, ..Default::default() };
            // Most requests are plain greedy (the backend picks their tokens); the others need their logits on the
            // host, so that steps mix both kinds of rows.
            match i % 8 {
                1 => r.logprobs = Some(2),
                3 => r.sampling = SamplingParams { temperature: 0.8, top_k: 20, seed: i as u64, ..Default::default() },
                5 => r.sampling.repetition_penalty = 1.3,
                _ => {}
            }
            r.ignore_eos = i % 3 != 0;
            if i % 4 == 0 {
                r.stop_token_ids = vec![ids_of(&r)[0]];
            }
            r
        })
        .collect()
}

fn ids_of(r: &Request) -> &[u32] {
    &r.prompt.ids
}

/// Fills in pixel values sized for the checkpoint's vision tower.
fn with_pixels(mut reqs: Vec<Request>, patch_width: usize) -> Vec<Request> {
    let mut rng = safetensors_writer::Rng::new(9);
    for r in &mut reqs {
        for m in &mut r.prompt.media {
            m.pixel_values = rng.vec(m.grid.patches() * patch_width, 1.0);
        }
    }
    reqs
}

fn alone(fixture: &str, reqs: &[Request]) -> Vec<Outcome> {
    reqs.iter()
        .map(|r| {
            let mut e = engine(fixture, config());
            e.submit(r.clone()).unwrap();
            run(&mut e).into_values().next().unwrap()
        })
        .collect()
}

fn batched(fixture: &str, config: EngineConfig, reqs: &[Request]) -> (Vec<Outcome>, u64) {
    let mut e = engine(fixture, config);
    let ids: Vec<RequestId> = reqs.iter().map(|r| e.submit(r.clone()).unwrap()).collect();
    let out = run(&mut e);
    assert_eq!(e.stats().used_blocks, 0, "blocks leaked");
    (ids.iter().map(|id| out[id].clone()).collect(), e.stats().preemptions)
}

#[test]
fn batching_chunking_and_preemption_do_not_change_outputs() {
    for fixture in ["moe_bf16", "dense_fp8_channel"] {
        let probe = engine(fixture, config());
        let tokens = &probe.pipeline.config.tokens;
        let patch = probe.pipeline.vision.patch_width();
        let reqs = with_pixels(requests(plain_tokens(&probe), Some((tokens.image_start, tokens.image))), patch);
        let want = alone(fixture, &reqs);
        for o in &want {
            assert!(o.reason.is_some() && !o.tokens.is_empty());
        }
        let (got, _) = batched(fixture, config(), &reqs);
        assert_eq!(got, want, "{fixture}: batched differs from alone");
        let (got, _) = batched(fixture, EngineConfig { prefill_budget: 7, ..config() }, &reqs);
        assert_eq!(got, want, "{fixture}: small prefill chunks change outputs");
        let tight = EngineConfig { num_blocks: 40, max_running: 16, prefill_budget: 16, ..config() };
        let (got, preemptions) = batched(fixture, tight, &reqs);
        assert!(preemptions > 0, "{fixture}: the tight pool should force preemption");
        assert_eq!(got, want, "{fixture}: preemption changes outputs");
    }
}

#[test]
fn seeded_sampling_is_reproducible_across_batches() {
    let fixture = "moe_bf16";
    let mut reqs = requests(plain_tokens(&engine(fixture, config())), None);
    for (i, r) in reqs.iter_mut().enumerate() {
        r.sampling =
            SamplingParams { temperature: 0.9, top_p: 0.95, top_k: 50, seed: 1000 + i as u64, ..Default::default() };
        r.ignore_eos = true;
        r.stop_token_ids.clear();
    }
    let (a, _) = batched(fixture, config(), &reqs);
    let (b, _) = batched(fixture, config(), &reqs[..]);
    assert_eq!(a, b, "same seeds, same batch");
    let (c, _) = batched(fixture, EngineConfig { max_running: 3, prefill_budget: 5, ..config() }, &reqs);
    assert_eq!(a, c, "other batch composition");
    let solo = alone(fixture, &reqs[..4]);
    assert_eq!(&a[..4], &solo[..], "alone");
}

#[test]
fn prefix_reuse_is_reported_and_exact() {
    let fixture = "dense_bf16";
    let mut e = engine(fixture, config());
    let tokens = e.pipeline.config.tokens.clone();
    let patch = e.pipeline.vision.patch_width();
    let system: Vec<u32> = (0..24).map(|i| 10 + i).collect();
    let image = |seed: u64| MediaInput {
        kind: MediaKind::Image,
        grid: Grid { t: 1, h: 4, w: 4 },
        pixel_values: safetensors_writer::Rng::new(seed).vec(16 * patch, 1.0),
    };
    let with_image = |img: MediaInput, tail: u32| {
        let mut ids = system.clone();
        ids.extend([
            tokens.image_start,
            tokens.image,
            tokens.image,
            tokens.image,
            tokens.image,
            tokens.image_end,
            tail,
            tail,
        ]);
        let mut r = Request::new(Prompt { ids, media: vec![img] }, 5);
        r.sampling.temperature = 0.0;
        r.ignore_eos = true;
        r
    };
    let first = with_image(image(1), 50);
    let cold = alone(fixture, std::slice::from_ref(&first))[0].clone();
    assert_eq!(cold.cached, 0);

    e.submit(first.clone()).unwrap();
    run(&mut e);
    // Same text and image: the full blocks before the last token come from the cache, output unchanged.
    let id = e.submit(first.clone()).unwrap();
    let warm = run(&mut e)[&id].clone();
    // 32 prompt tokens in blocks of 4: the 7 full blocks before the last token, image blocks included.
    assert_eq!(warm.cached, 28);
    assert_eq!(warm.tokens, cold.tokens);
    // Same text, another image: only the text before the image can be reused.
    let id = e.submit(with_image(image(2), 50)).unwrap();
    let other = run(&mut e)[&id].clone();
    assert_eq!(other.cached, 24, "another image must not reuse image blocks");
    assert!(e.stats().prefix_hits > 0);
    // The repeated image skipped the vision tower; the new one did not.
    assert_eq!(e.mm_cache_hits(), 1);
}

#[test]
fn abort_and_overflow() {
    let mut e = engine("moe_bf16", EngineConfig { max_context: 64, ..config() });
    let r = Request::new(Prompt::text(vec![5; 60]), 10);
    let err = e.submit(r).unwrap_err().to_string();
    assert!(err.contains("64") && err.contains("60") && err.contains("10"), "{err}");
    let mut r = Request::new(Prompt::text(vec![5; 10]), 20);
    r.ignore_eos = true;
    r.n = 3;
    let id = e.submit(r).unwrap();
    e.step().unwrap();
    e.step().unwrap();
    let events = e.abort(id);
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|ev| matches!(ev.kind, EventKind::Finished { reason: FinishReason::Abort, .. })));
    assert!(!e.has_work());
    assert_eq!(e.stats().used_blocks, 0);
    assert_eq!(e.stats().running + e.stats().waiting, 0);
}

#[test]
fn handle_streams_events_and_dropping_a_stream_aborts() {
    use glmv_runtime::engine::EngineHandle;
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    let fixture = "moe_fp8_channel";
    let plain = plain_tokens(&engine(fixture, config()));
    let reqs: Vec<Request> = requests(plain, None).into_iter().take(6).collect();
    let want = alone(fixture, &reqs);
    let wakes = Arc::new(AtomicUsize::new(0));
    let counter = wakes.clone();
    let handle = EngineHandle::spawn(
        engine(fixture, config()),
        Box::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        }),
    );
    let mut streams: Vec<_> = reqs.iter().map(|r| handle.submit(r.clone()).unwrap()).collect();
    for (stream, want) in streams.iter_mut().zip(&want) {
        let mut got = Outcome::default();
        while let Some(ev) = stream.recv() {
            match ev.kind {
                EventKind::Token { token, text } => {
                    got.tokens.push(token.id);
                    got.text += &text;
                }
                EventKind::Finished { reason, usage, .. } => {
                    got.reason = Some(reason);
                    got.cached = usage.cached_tokens;
                }
            }
        }
        assert_eq!(&got, want);
    }
    assert!(wakes.load(Ordering::Relaxed) > 0);

    // A long request whose client goes away after its first token.
    let mut long = Request::new(Prompt::text(vec![3; 20]), 4000);
    long.ignore_eos = true;
    let mut stream = handle.submit(long).unwrap();
    assert!(matches!(stream.recv().unwrap().kind, EventKind::Token { .. }));
    drop(stream);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while handle.stats().used_blocks > 0 || handle.stats().running > 0 {
        assert!(std::time::Instant::now() < deadline, "aborted request still holds {:?}", handle.stats());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let err = handle.submit(Request::new(Prompt::text(vec![]), 1)).err().unwrap().to_string();
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn stop_strings_logprobs_and_pool_sizing() {
    let fixture = "dense_fp8_block";
    let mut e = engine(fixture, config());
    let plain = plain_tokens(&e);
    let prompt: Vec<u32> = (0..12).map(|i| (i * 7) % plain).collect();
    let mut r = Request::new(Prompt::text(prompt.clone()), 24);
    r.sampling.temperature = 0.0;
    r.ignore_eos = true;
    r.logprobs = Some(3);
    let id = e.submit(r.clone()).unwrap();
    let mut tokens = Vec::new();
    let mut text = String::new();
    while e.has_work() {
        for ev in e.step().unwrap() {
            assert_eq!(ev.request, id);
            if let EventKind::Token { token, text: t } = ev.kind {
                // Greedy picks the most likely token, and the top list is sorted, best first.
                let top = &token.top_logprobs;
                assert_eq!(top.len(), 3);
                assert_eq!(top[0].0, token.id);
                assert_eq!(token.logprob, Some(top[0].1));
                assert!(top.windows(2).all(|w| w[0].1 >= w[1].1) && top[0].1 <= 0.0);
                tokens.push(token.id);
                text += &t;
            }
        }
    }
    assert_eq!(text, e.pipeline.tokenizer.decode(&tokens, true).unwrap());

    // Stop at a string from the middle of that text: the content ends right before it, streamed or not.
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 6, "greedy text too short to cut: {text:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = text.find(&stop).unwrap();
    r.stop_strings = vec![stop.clone()];
    r.logprobs = None;
    e.submit(r).unwrap();
    let out = run(&mut e).into_values().next().unwrap();
    assert_eq!(out.text, text[..cut], "stop string {stop:?}");
    assert_eq!(out.reason, Some(FinishReason::Stop));

    // Pool sizing from a memory budget: 1 MiB of BF16 KV for this model.
    let blocks = Engine::blocks_for_budget(&e.pipeline, 1 << 20, 16, KvDtype::Bf16);
    let c = &e.pipeline.model.config;
    let per_token = c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * 2;
    assert_eq!(blocks, (1 << 20) / (per_token * 16));
}

/// Decode steps run ahead before serving (how the CUDA backend records its graphs at start-up; the CPU backend
/// names none) change nothing: the same requests give the same tokens, nothing stays allocated, and once requests
/// have run it is refused.
#[test]
fn decode_steps_run_ahead_change_nothing() {
    for fixture in ["moe_bf16", "dense_fp8_block"] {
        let run_requests = |e: &mut Engine<CpuBackend>| {
            for k in 0..3 {
                let mut r = Request::new(Prompt::text(vec![5 + k, 17, 9, 33]), 6);
                r.sampling = SamplingParams { temperature: 0.0, ..Default::default() };
                e.submit(r).unwrap();
            }
            run(e)
        };
        let mut plain = engine(fixture, config());
        let mut ahead = engine(fixture, config());
        ahead.run_decode_steps(&[1, 2, 4, 8]).unwrap();
        assert_eq!(ahead.stats().used_blocks, 0, "{fixture}");
        assert_eq!(run_requests(&mut ahead), run_requests(&mut plain), "{fixture}");
        // Block 0 may now hold a cached prefix.
        assert!(ahead.run_decode_steps(&[1]).is_err(), "{fixture}: run ahead after requests");
    }
}
