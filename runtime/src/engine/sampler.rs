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

    #[test]
    fn top_p_cuts_the_tail() {
        let logits = [5.0, 4.9, -10.0];
        let p = SamplingParams { top_p: 0.5, ..Default::default() };
        let mut rng = Rng::new(5);
        assert!((0..200).all(|_| sample(&logits, &p, &mut rng) == 0));
    }
}
