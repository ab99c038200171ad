//! Choosing the next token from logits: penalties and biases, then greedy, or temperature / top-k / top-p / min-p
//! sampling from a per-request seeded generator (so a request samples the same tokens whatever it is batched with).
use alloc::{collections::BTreeMap, vec::Vec};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 (or below) means greedy.
    pub temperature: f32,
    /// 1.0 disables nucleus filtering.
    pub top_p: f32,
    /// 0 disables top-k filtering.
    pub top_k: usize,
    /// 0 disables; else tokens below `min_p` x the top probability are dropped.
    pub min_p: f32,
    pub seed: u64,
    /// 1.0 disables; else logits of tokens seen in the prompt or output are divided (positive) or multiplied
    /// (negative) by it.
    pub repetition_penalty: f32,
    /// OpenAI's: subtracted once per occurrence in the output.
    pub frequency_penalty: f32,
    /// OpenAI's: subtracted once if the token occurs in the output.
    pub presence_penalty: f32,
    /// Added to the logits of the given tokens.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: 0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Whether [`apply_penalties`] leaves the logits as they are (no bias, no penalty): [`sample`] then reads the raw
    /// logits, and a backend can choose the token where they are.
    pub fn samples_raw_logits(&self) -> bool {
        let no_repetition_penalty = self.repetition_penalty == 1.0 || self.repetition_penalty <= 0.0;
        self.logit_bias.is_empty()
            && no_repetition_penalty
            && self.frequency_penalty == 0.0
            && self.presence_penalty == 0.0
    }

    /// Whether [`sample`] after [`apply_penalties`] is [`argmax`] of the raw logits: greedy, no bias, no penalty.
    pub fn is_greedy_on_raw_logits(&self) -> bool {
        self.temperature <= 0.0 && self.samples_raw_logits()
    }
}

/// One row's draw as a backend makes it: [`sample_with_uniform`] with these filters and this uniform number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    /// In [0, 1): the request generator's next number.
    pub uniform: f32,
}

impl Draw {
    pub fn new(params: &SamplingParams, uniform: f32) -> Self {
        Draw { temperature: params.temperature, top_p: params.top_p, top_k: params.top_k, min_p: params.min_p, uniform }
    }

    /// The token [`sample`] draws from `logits` with these filters when its generator yields `uniform`.
    pub fn sample(&self, logits: &[f32]) -> u32 {
        let params = SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            ..SamplingParams::default()
        };
        sample_with_uniform(logits, &params, self.uniform)
    }
}

/// Applies logit bias and the three penalties in place. `seen` holds every prompt token, `output_counts` the
/// occurrences of each output token.
pub fn apply_penalties(
    logits: &mut [f32],
    params: &SamplingParams,
    prompt: &[u32],
    output_counts: &BTreeMap<u32, u32>,
) {
    for &(t, b) in &params.logit_bias {
        if let Some(l) = logits.get_mut(t as usize) {
            *l += b;
        }
    }
    if params.repetition_penalty != 1.0 && params.repetition_penalty > 0.0 {
        let p = params.repetition_penalty;
        let mut penalise = |t: u32| {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 { *l / p } else { *l * p };
            }
        };
        let mut seen: Vec<u32> = prompt.iter().copied().chain(output_counts.keys().copied()).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.into_iter().for_each(&mut penalise);
    }
    if params.frequency_penalty != 0.0 || params.presence_penalty != 0.0 {
        for (&t, &n) in output_counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= n as f32 * params.frequency_penalty + params.presence_penalty;
            }
        }
    }
}

/// Log-probabilities of all tokens (log-softmax of the logits).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| libm::expf(l - max)).sum();
    let log_sum = max + libm::logf(sum);
    logits.iter().map(|&l| l - log_sum).collect()
}

/// SplitMix64: small, fast and reproducible everywhere, which is all sampling needs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Index of the largest logit; the lowest index wins ties, NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let (mut best, mut best_value) = (0usize, f32::NEG_INFINITY);
    let mut found = false;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_value || (!found && !v.is_nan()) {
            (best, best_value, found) = (i, v, true);
        }
    }
    best as u32
}

/// Candidates examined before falling back to sorting the whole vocabulary.
const PARTIAL_CANDIDATES: usize = 1024;

pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut Rng) -> u32 {
    sample_drawing(logits, params, || rng.next_f32())
}

/// [`sample`] with the generator's number given: what a backend that draws on its device must match.
pub fn sample_with_uniform(logits: &[f32], params: &SamplingParams, uniform: f32) -> u32 {
    sample_drawing(logits, params, || uniform)
}

/// [`sample`], taking its one uniform number from `draw` (called at most once, only when the draw is random).
fn sample_drawing(logits: &[f32], params: &SamplingParams, draw: impl FnOnce() -> f32) -> u32 {
    if params.temperature <= 0.0 || logits.len() <= 1 {
        return argmax(logits);
    }
    let max = logits.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return argmax(logits);
    }
    let inv_t = 1.0 / params.temperature;
    let weight = |v: f32| if v.is_nan() { 0.0 } else { libm::expf((v - max) * inv_t) };
    let filtered = params.top_k > 0 || params.top_p < 1.0 || params.min_p > 0.0;
    if !filtered {
        // Plain temperature sampling: one pass for the total, one to find the draw. Both sum in f64: an f32 running
        // sum over a 151552-token vocabulary drifts by several tokens' mass from the exact draw point.
        let total: f64 = logits.iter().map(|&v| weight(v) as f64).sum();
        let mut r = draw() as f64 * total;
        let mut last = 0;
        for (i, &v) in logits.iter().enumerate() {
            let w = weight(v) as f64;
            if w > 0.0 {
                if r < w {
                    return i as u32;
                }
                r -= w;
                last = i;
            }
        }
        return last as u32;
    }
    let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut cand: Vec<(u32, f32)> =
        logits.iter().enumerate().filter(|(_, v)| !v.is_nan()).map(|(i, &v)| (i as u32, v)).collect();
    let total_all: f32 = cand.iter().map(|&(_, v)| weight(v)).sum();
    let keep = if params.top_k > 0 { params.top_k.min(cand.len()) } else { cand.len() };
    // Most of the vocabulary is irrelevant: look at the best candidates first, and sort everything only when they
    // cannot decide the result.
    let partial = keep.min(PARTIAL_CANDIDATES);
    if partial < cand.len() {
        cand.select_nth_unstable_by(partial - 1, by_logit);
        let head_mass: f32 = cand[..partial].iter().map(|&(_, v)| weight(v)).sum();
        // The head holds the result when it is the whole top-k set, or (no top-k) when it covers the nucleus and
        // every token outside it is below the min-p floor (weights are relative to the best token's, which is 1).
        let is_top_k_set = partial == keep;
        let covers_nucleus = params.top_p >= 1.0 || head_mass >= params.top_p * total_all;
        let rest_below_min_p = params.min_p <= 0.0 || weight(cand[partial - 1].1) < params.min_p;
        if is_top_k_set || (params.top_k == 0 && covers_nucleus && rest_below_min_p) {
            cand.truncate(partial);
        }
    }
    cand.sort_unstable_by(by_logit);
    cand.truncate(keep);
    // Probabilities over the top-k set (the whole vocabulary without top-k).
    let denominator = if params.top_k > 0 { cand.iter().map(|&(_, v)| weight(v)).sum() } else { total_all };
    let mut probs: Vec<f32> = cand.iter().map(|&(_, v)| weight(v) / denominator).collect();
    if params.min_p > 0.0 {
        // Sorted descending, so the kept tokens are a prefix.
        let floor = probs[0] * params.min_p;
        let keep = probs.iter().take_while(|&&p| p >= floor).count().max(1);
        probs.truncate(keep);
    }
    if params.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs
            .iter()
            .position(|&p| {
                acc += p;
                acc >= params.top_p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
    }
    let total: f32 = probs.iter().sum();
    let mut r = draw() * total;
    for (i, p) in probs.iter().enumerate() {
        if r < *p {
            return cand[i].0;
        }
        r -= p;
    }
    cand[probs.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_ties() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, 1.0]), 1);
        let p = SamplingParams { temperature: 0.0, ..Default::default() };
        assert_eq!(sample(&[0.0, 1.0, 5.0], &p, &mut Rng::new(1)), 2);
    }

    /// The engine lets the backend pick tokens (argmax of the raw logits) exactly when this says so: then the host
    /// path (penalties, then `sample`) must pick the same token, and must be able to differ otherwise.
    #[test]
    fn greedy_on_raw_logits_is_the_argmax() {
        let prompt = [0u32];
        let counts: BTreeMap<u32, u32> = [(1, 2), (3, 1)].into_iter().collect();
        let host = |logits: &[f32], p: &SamplingParams| {
            let mut processed = logits.to_vec();
            apply_penalties(&mut processed, p, &prompt, &counts);
            sample(&processed, p, &mut Rng::new(5))
        };
        let mut rng = Rng::new(9);
        let greedy = [
            SamplingParams { temperature: 0.0, ..Default::default() },
            SamplingParams { temperature: -1.0, top_k: 3, top_p: 0.5, min_p: 0.2, ..Default::default() },
            SamplingParams { temperature: 0.0, repetition_penalty: 0.0, ..Default::default() },
        ];
        for p in &greedy {
            assert!(p.is_greedy_on_raw_logits(), "{p:?}");
            for _ in 0..200 {
                let logits: Vec<f32> = (0..6).map(|_| (rng.next_f32() * 4.0).round()).collect();
                assert_eq!(host(&logits, p), argmax(&logits), "{logits:?} {p:?}");
            }
            assert_eq!(host(&[f32::NAN, 1.0, f32::NAN], p), argmax(&[f32::NAN, 1.0, f32::NAN]));
        }
        // Each of these changes the logits (or samples): token 1 is the raw argmax, and the host picks another.
        let logits = [1.0, 3.0, 2.9, 0.0];
        let not_greedy = [
            SamplingParams { temperature: 1.0, top_k: 2, ..Default::default() },
            SamplingParams { temperature: 0.0, logit_bias: vec![(2, 1.0)], ..Default::default() },
            SamplingParams { temperature: 0.0, repetition_penalty: 2.0, ..Default::default() },
            SamplingParams { temperature: 0.0, frequency_penalty: 0.5, ..Default::default() },
            SamplingParams { temperature: 0.0, presence_penalty: 0.5, ..Default::default() },
        ];
        for p in &not_greedy {
            assert!(!p.is_greedy_on_raw_logits(), "{p:?}");
        }
        for p in &not_greedy[1..] {
            assert_ne!(host(&logits, p), 1, "{p:?}");
        }
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_reproduces() {
        let logits = [0.5, 2.0, 1.9, -1.0];
        let p = SamplingParams { temperature: 1.0, top_k: 1, ..Default::default() };
        assert_eq!(sample(&logits, &p, &mut Rng::new(7)), 1);
        let p = SamplingParams { temperature: 1.0, seed: 3, ..Default::default() };
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..32).map(|_| sample(&logits, &p, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn distribution_follows_softmax() {
        // p = softmax([0, ln 3]) = [0.25, 0.75]
        let logits = [0.0, libm::logf(3.0)];
        let p = SamplingParams::default();
        let mut rng = Rng::new(11);
        let ones = (0..20000).filter(|_| sample(&logits, &p, &mut rng) == 1).count();
        assert!((ones as f32 / 20000.0 - 0.75).abs() < 0.02, "{ones}");
    }

    #[test]
    fn penalties_and_bias() {
        let mut logits = [2.0, -2.0, 1.0, 0.5];
        let p = SamplingParams {
            repetition_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            logit_bias: alloc::vec![(3, 10.0)],
            ..Default::default()
        };
        let counts: BTreeMap<u32, u32> = [(2, 2)].into_iter().collect();
        apply_penalties(&mut logits, &p, &[0, 1], &counts);
        assert_eq!(logits, [1.0, -4.0, 0.5 - 1.0 - 0.25, 10.5]);
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let logits = [5.0, 4.0, 0.0];
        let p = SamplingParams { min_p: 0.3, ..Default::default() };
        let mut rng = Rng::new(3);
        assert!((0..500).all(|_| sample(&logits, &p, &mut rng) != 2));
        let lp = log_softmax(&logits);
        assert!((lp.iter().map(|l| libm::expf(*l)).sum::<f32>() - 1.0).abs() < 1e-6);
    }

    /// The partial-selection shortcut must draw exactly what sorting the whole vocabulary draws.
    #[test]
    fn shortcut_matches_full_sort() {
        let mut rng = Rng::new(17);
        let logits: Vec<f32> = (0..5000).map(|_| rng.next_f32() * 12.0 - 6.0).collect();
        for params in [
            SamplingParams { top_k: 40, ..Default::default() },
            SamplingParams { top_k: 3000, top_p: 0.8, ..Default::default() },
            SamplingParams { top_p: 0.05, temperature: 0.5, ..Default::default() },
            SamplingParams { top_p: 0.99, ..Default::default() },
            SamplingParams { min_p: 0.5, ..Default::default() },
            SamplingParams { min_p: 0.001, temperature: 2.0, ..Default::default() },
        ] {
            // Reference: the same semantics with every token sorted.
            let reference = |r: &mut Rng| {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
                cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let w: Vec<f32> = cand.iter().map(|c| libm::expf((c.1 - max) / params.temperature)).collect();
                let keep = if params.top_k > 0 { params.top_k } else { w.len() };
                let den: f32 = if params.top_k > 0 { w[..keep].iter().sum() } else { w.iter().sum() };
                let mut probs: Vec<f32> = w[..keep].iter().map(|x| x / den).collect();
                if params.min_p > 0.0 {
                    let floor = probs[0] * params.min_p;
                    let k = probs.iter().take_while(|&&p| p >= floor).count().max(1);
                    probs.truncate(k);
                }
                if params.top_p < 1.0 {
                    let mut acc = 0.0;
                    let k = probs
                        .iter()
                        .position(|&p| {
                            acc += p;
                            acc >= params.top_p
                        })
                        .map_or(probs.len(), |i| i + 1);
                    probs.truncate(k);
                }
                let total: f32 = probs.iter().sum();
                let mut x = r.next_f32() * total;
                for (i, p) in probs.iter().enumerate() {
                    if x < *p {
                        return cand[i].0;
                    }
                    x -= p;
                }
                cand[probs.len() - 1].0
            };
            let (mut a, mut b) = (Rng::new(5), Rng::new(5));
            for _ in 0..200 {
                assert_eq!(sample(&logits, &params, &mut a), reference(&mut b), "{params:?}");
            }
        }
    }

    /// A backend's draw ([`Draw::sample`], the engine's host fallback too) is [`sample`] given the generator's
    /// number, for every filter, and a row sampled that way takes exactly one number.
    #[test]
    fn draws_with_the_generators_number_are_sample() {
        let mut rng = Rng::new(3);
        let logits: Vec<f32> = (0..3000).map(|_| (rng.next_f32() - 0.5) * 12.0).collect();
        for params in [
            SamplingParams { temperature: 0.7, ..Default::default() },
            SamplingParams { temperature: 1.3, top_k: 40, ..Default::default() },
            SamplingParams { temperature: 1.0, top_p: 0.6, ..Default::default() },
            SamplingParams { temperature: 0.8, top_k: 2000, top_p: 0.9, min_p: 0.05, ..Default::default() },
            SamplingParams { temperature: 1.0, min_p: 0.2, ..Default::default() },
        ] {
            let (mut by_sample, mut by_draw) = (Rng::new(17), Rng::new(17));
            for _ in 0..50 {
                let draw = Draw::new(&params, by_draw.next_f32());
                assert_eq!(sample(&logits, &params, &mut by_sample), draw.sample(&logits), "{params:?}");
            }
            assert_eq!(by_sample.next_u64(), by_draw.next_u64(), "{params:?}: one number per draw");
        }
    }

    #[test]
    fn top_p_cuts_the_tail() {
        let logits = [5.0, 4.9, -10.0];
        let p = SamplingParams { top_p: 0.5, ..Default::default() };
        let mut rng = Rng::new(5);
        assert!((0..200).all(|_| sample(&logits, &p, &mut rng) == 0));
    }
}
