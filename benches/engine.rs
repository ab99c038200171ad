//! Host-side hot paths of the engine: one scheduler step with 64 running decodes, and sampling over GLM-V's
//! 151552-entry vocabulary. `cargo bench --bench engine`.
use std::{
    collections::BTreeMap,
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, Criterion};
use glmv_runtime::engine::{
    blocks::BlockPool,
    sampler::{apply_penalties, sample, Rng, SamplingParams},
    scheduler::{Schedule, Scheduler, SchedulerConfig},
};

const VOCAB: usize = 151552;

/// 64 sequences with 1K-token prompts, prefilled, the last plan (64 single-token decodes) completed.
fn decoding_scheduler() -> (Scheduler, Schedule) {
    let mut s = Scheduler::new(
        SchedulerConfig { max_running: 64, prefill_budget: 8192, max_context: 1 << 20 },
        BlockPool::new(64 * 200, 16),
    );
    for id in 0..64u64 {
        s.submit(id, (0..1024).map(|t| t + id * 10_000).collect(), 1 << 16, 0).unwrap();
    }
    let mut plan = s.schedule();
    loop {
        s.complete(&plan);
        for ch in plan.chunks.iter().filter(|ch| ch.samples) {
            s.append(ch.seq, 7);
        }
        plan = s.schedule();
        if plan.chunks.len() == 64 && plan.chunks.iter().all(|ch| ch.len == 1) {
            s.complete(&plan);
            return (s, plan);
        }
    }
}

fn scheduler_step(c: &mut Criterion) {
    // Sequences grow by one token a step; a fresh scheduler every 1000 steps (set-up not timed) keeps them within
    // the pool, so every timed step is 64 decodes without preemption.
    c.bench_function("scheduler step, 64 running decodes (append + schedule + complete)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let (mut s, mut plan) = decoding_scheduler();
                let n = left.min(1000);
                let start = Instant::now();
                for i in 0..n {
                    for ch in &plan.chunks {
                        s.append(ch.seq, i);
                    }
                    plan = s.schedule();
                    s.complete(black_box(&plan));
                }
                total += start.elapsed();
                assert_eq!(plan.chunks.len(), 64);
                left -= n;
            }
            total
        })
    });
}

fn logits() -> Vec<f32> {
    let mut rng = Rng::new(1);
    (0..VOCAB).map(|_| rng.next_f32() * 20.0 - 10.0).collect()
}

fn sampling(c: &mut Criterion) {
    let l = logits();
    let mut rng = Rng::new(2);
    let greedy = SamplingParams { temperature: 0.0, ..Default::default() };
    c.bench_function("sample greedy, 151552 vocab", |b| b.iter(|| sample(black_box(&l), &greedy, &mut rng)));
    let plain = SamplingParams { temperature: 0.7, ..Default::default() };
    c.bench_function("sample temperature, 151552 vocab", |b| b.iter(|| sample(black_box(&l), &plain, &mut rng)));
    let top = SamplingParams { temperature: 0.7, top_p: 0.9, top_k: 50, ..Default::default() };
    c.bench_function("sample top-k 50 + top-p 0.9, 151552 vocab", |b| b.iter(|| sample(black_box(&l), &top, &mut rng)));
    let nucleus = SamplingParams { temperature: 0.7, top_p: 0.9, ..Default::default() };
    c.bench_function("sample top-p 0.9, 151552 vocab", |b| b.iter(|| sample(black_box(&l), &nucleus, &mut rng)));
    let pen = SamplingParams { repetition_penalty: 1.1, frequency_penalty: 0.2, ..Default::default() };
    let prompt: Vec<u32> = (0..1024).map(|i| i * 97 % VOCAB as u32).collect();
    let counts: BTreeMap<u32, u32> = (0..256u32).map(|i| (i * 31, 1 + i % 3)).collect();
    c.bench_function("penalties (1K prompt, 256 output tokens), 151552 vocab", |b| {
        b.iter(|| {
            let mut x = l.clone();
            apply_penalties(&mut x, &pen, &prompt, &counts);
            black_box(x)
        })
    });
}

criterion_group!(benches, scheduler_step, sampling);
criterion_main!(benches);
