//! Choosing the next token from logits: greedy, or temperature / top-k / top-p sampling from a seeded generator.
use alloc::vec::Vec;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 (or below) means greedy.
    pub temperature: f32,
    /// 1.0 disables nucleus filtering.
    pub top_p: f32,
    /// 0 disables top-k filtering.
    pub top_k: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, seed: 0 }
    }
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
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut Rng) -> u32 {
    if params.temperature <= 0.0 || logits.len() <= 1 {
        return argmax(logits);
    }
    // Candidates sorted by logit, best first, cut to top-k.
    let mut cand: Vec<(u32, f32)> =
        logits.iter().enumerate().filter(|(_, v)| !v.is_nan()).map(|(i, &v)| (i as u32, v)).collect();
    cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if params.top_k > 0 {
        cand.truncate(params.top_k);
    }
    let Some(&(_, max)) = cand.first() else { return argmax(logits) };
    let mut probs: Vec<f32> = cand.iter().map(|&(_, v)| libm::expf((v - max) / params.temperature)).collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
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
    let mut r = rng.next_f32() * total;
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
    fn top_p_cuts_the_tail() {
        let logits = [5.0, 4.9, -10.0];
        let p = SamplingParams { top_p: 0.5, ..Default::default() };
        let mut rng = Rng::new(5);
        assert!((0..200).all(|_| sample(&logits, &p, &mut rng) == 0));
    }
}
