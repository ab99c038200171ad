use alloc::{vec, vec::Vec};

use super::*;

fn sched(blocks: usize, bs: usize, max_running: usize, budget: usize) -> Scheduler {
    Scheduler::new(
        SchedulerConfig { max_running, prefill_budget: budget, max_context: 1 << 20 },
        BlockPool::new(blocks, bs),
    )
}

/// Runs steps until every sequence has `target` tokens, appending token key 1000 + step each time a chunk samples.
fn run_to_completion(s: &mut Scheduler, targets: &[(SeqId, usize)]) -> Vec<Schedule> {
    let mut lens: BTreeMap<SeqId, usize> = BTreeMap::new();
    let mut steps = Vec::new();
    for _ in 0..10_000 {
        if s.is_idle() {
            return steps;
        }
        let plan = s.schedule();
        s.check_invariants();
        assert!(!plan.chunks.is_empty(), "no progress");
        s.complete(&plan);
        for c in plan.chunks.iter().filter(|c| c.samples) {
            let len = lens.entry(c.seq).or_insert(0);
            *len += 1;
            let target = targets.iter().find(|t| t.0 == c.seq).unwrap().1;
            if *len >= target {
                s.remove(c.seq);
            } else {
                s.append(c.seq, 1000 + *len as u64);
            }
        }
        s.check_invariants();
        steps.push(plan);
    }
    panic!("did not finish");
}

#[test]
fn decodes_run_every_step_and_prefill_is_chunked() {
    let mut s = sched(64, 4, 4, 8);
    s.submit(1, (0..3).collect(), 10, 0).unwrap();
    let first = s.schedule();
    assert_eq!(first.chunks, vec![Chunk { seq: 1, start: 0, len: 3, samples: true }]);
    s.complete(&first);
    s.append(1, 99);
    s.submit(2, (0..20).collect(), 10, 0).unwrap();
    let second = s.schedule();
    // The decode of 1 goes first, then 8 prefill tokens of 2.
    assert_eq!(second.chunks[0], Chunk { seq: 1, start: 3, len: 1, samples: true });
    assert_eq!(second.chunks[1], Chunk { seq: 2, start: 0, len: 8, samples: false });
    s.check_invariants();
}

#[test]
fn submit_rejects_what_cannot_fit() {
    let mut s =
        Scheduler::new(SchedulerConfig { max_running: 2, prefill_budget: 8, max_context: 10 }, BlockPool::new(2, 4));
    assert_eq!(
        s.submit(1, vec![1; 8], 3, 0),
        Err(SubmitError::ContextTooLong { prompt: 8, max_new_tokens: 3, max_context: 10 })
    );
    assert_eq!(s.submit(1, vec![1; 8], 1, 0), Err(SubmitError::TooLargeForPool { tokens: 9, pool_tokens: 8 }));
    assert_eq!(s.submit(1, vec![], 1, 0), Err(SubmitError::EmptyPrompt));
    s.submit(1, vec![1; 4], 2, 0).unwrap();
    assert_eq!(s.submit(1, vec![1; 4], 2, 0), Err(SubmitError::DuplicateId(1)));
}

#[test]
fn prefix_blocks_are_reused_but_the_last_token_is_computed() {
    let mut s = sched(32, 4, 4, 64);
    let prompt: Vec<u64> = (0..10).collect();
    s.submit(1, prompt.clone(), 1, 0).unwrap();
    run_to_completion(&mut s, &[(1, 1)]);
    s.submit(2, prompt.clone(), 1, 0).unwrap();
    let plan = s.schedule();
    assert_eq!(s.cached_tokens(2), 8);
    assert_eq!(plan.chunks, vec![Chunk { seq: 2, start: 8, len: 2, samples: true }]);
    s.complete(&plan);
    s.remove(2);
    // A prompt that is exactly whole blocks keeps its last block to compute.
    s.submit(3, (0..8).collect(), 1, 0).unwrap();
    s.schedule();
    assert_eq!(s.cached_tokens(3), 4);
    // Another key in the first block (another image, say) gets nothing.
    let mut other = prompt.clone();
    other[1] = 777;
    s.submit(4, other, 1, 0).unwrap();
    s.schedule();
    assert_eq!(s.cached_tokens(4), 0);
    s.check_invariants();
}

#[test]
fn preemption_frees_the_newest_and_everyone_finishes() {
    // 6 blocks of 4 tokens: three sequences growing to 12 tokens each cannot all stay.
    let mut s = sched(6, 4, 3, 64);
    for id in 0..3 {
        s.submit(id, (0..4).map(|t| t + 10 * id).collect(), 8, 0).unwrap();
    }
    let steps = run_to_completion(&mut s, &[(0, 8), (1, 8), (2, 8)]);
    let preempted: Vec<SeqId> = steps.iter().flat_map(|p| p.preempted.iter().copied()).collect();
    assert!(!preempted.is_empty(), "the pool is too small for all three");
    assert!(!preempted.contains(&0), "the oldest is never the victim while newer ones run");
    assert!(s.stats().preemptions > 0);
}

#[test]
fn priority_then_arrival_order() {
    let mut s = sched(64, 4, 1, 64);
    s.submit(1, vec![1], 1, 0).unwrap();
    s.submit(2, vec![2], 1, 5).unwrap();
    s.submit(3, vec![3], 1, 5).unwrap();
    let order: Vec<SeqId> = run_to_completion(&mut s, &[(1, 1), (2, 1), (3, 1)])
        .iter()
        .flat_map(|p| p.chunks.iter().map(|c| c.seq))
        .collect();
    assert_eq!(order, vec![2, 3, 1]);
}

/// A deterministic xorshift for the randomised test.
struct Rand(u64);
impl Rand {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn random_submit_abort_finish_never_leaks() {
    let (mut preemptions, mut hits) = (0, 0);
    for seed in 1..40u64 {
        let mut r = Rand(seed * 0x9e37_79b9);
        let bs = 1 + r.below(8) as usize;
        let mut s = sched(4 + r.below(40) as usize, bs, 1 + r.below(6) as usize, 1 + r.below(40) as usize);
        let mut next_id = 0;
        let mut live: Vec<(SeqId, usize)> = Vec::new();
        let mut produced: BTreeMap<SeqId, usize> = BTreeMap::new();
        for _ in 0..300 {
            match r.below(10) {
                0..=2 => {
                    // Shared prefixes make prefix hits likely.
                    let len = 1 + r.below(20) as usize;
                    let base = r.below(3);
                    let keys: Vec<u64> = (0..len as u64).map(|t| base * 100 + t).collect();
                    let max_new = 1 + r.below(10) as usize;
                    if s.submit(next_id, keys, max_new, r.below(3) as i32).is_ok() {
                        live.push((next_id, max_new));
                    }
                    next_id += 1;
                }
                3 if !live.is_empty() => {
                    let (id, _) = live.swap_remove(r.below(live.len() as u64) as usize);
                    s.remove(id);
                }
                _ => {
                    let plan = s.schedule();
                    s.check_invariants();
                    if !live.is_empty() {
                        assert!(!plan.chunks.is_empty(), "seed {seed}: no progress with work pending");
                    }
                    s.complete(&plan);
                    for c in plan.chunks.iter().filter(|c| c.samples) {
                        let n = produced.entry(c.seq).or_insert(0);
                        *n += 1;
                        let max_new = live.iter().find(|l| l.0 == c.seq).unwrap().1;
                        if *n >= max_new {
                            s.remove(c.seq);
                            live.retain(|l| l.0 != c.seq);
                        } else {
                            s.append(c.seq, 5000 + *n as u64);
                        }
                    }
                }
            }
            s.check_invariants();
        }
        for (id, _) in live.drain(..) {
            s.remove(id);
        }
        s.check_invariants();
        assert_eq!(s.stats().used_blocks, 0, "seed {seed}: blocks leaked");
        preemptions += s.stats().preemptions;
        hits += s.stats().prefix_hits;
    }
    // The runs must have exercised the interesting paths.
    assert!(preemptions > 0 && hits > 0, "preemptions {preemptions}, prefix hits {hits}");
}

#[test]
fn many_decode_steps_stay_decodes() {
    let mut s = sched(64 * 5000, 16, 64, 8192);
    for id in 0..64u64 {
        s.submit(id, (0..1024).map(|t| t + id * 10_000).collect(), 1 << 16, 0).unwrap();
    }
    let mut token = 0u64;
    let mut plan = s.schedule();
    let mut decode_steps = 0;
    for _ in 0..3000 {
        s.complete(&plan);
        for ch in plan.chunks.iter().filter(|ch| ch.samples) {
            token += 1;
            s.append(ch.seq, token);
        }
        plan = s.schedule();
        if plan.chunks.len() == 64 && plan.chunks.iter().all(|c| c.len == 1) {
            decode_steps += 1;
        }
    }
    assert_eq!(s.stats().preemptions, 0);
    assert!(decode_steps > 2900, "{decode_steps} {:?}", s.stats());
}
