//! The figures of `sglang.bench_serving`, computed from per-request timelines with its definitions
//! (reference/serving.md §5.1), so that glmv's numbers compare line by line with SGLang's:
//!
//! - TTFT: send to the first chunk carrying output text; ITL: the gaps between consecutive output chunks (a chunk
//!   may hold several tokens); E2E latency: send to the last line received (`[DONE]` included).
//! - TPOT = (latency - TTFT) / (output_len - 1), only for requests with output_len > 1.
//! - Throughputs divide totals by the benchmark's wall time; concurrency = sum of E2E latencies / wall time.
//! - Peaks: over one-second bins from the benchmark start, the most output chunks that arrived in one bin, and the
//!   most requests in flight during one bin.
//! - Percentiles interpolate linearly between order statistics (numpy's default); std is the population std.
use serde_json::{json, Value};

/// What one request of the benchmark did. Times are seconds; `start` is relative to the benchmark's start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestOutcome {
    /// None when the request succeeded; else why it failed (HTTP status and message, or the transport error).
    pub error: Option<String>,
    pub start: f64,
    pub ttft: f64,
    pub itl: Vec<f64>,
    pub latency: f64,
    /// Prompt tokens: the server's `usage.prompt_tokens` when it reported them, else the client's count.
    pub prompt_len: usize,
    /// Of `prompt_len`, the tokens standing for images and videos (from `usage.prompt_tokens_details`).
    pub vision_prompt_len: usize,
    /// Output tokens: the server's `usage.completion_tokens` when it reported them, else the requested length.
    pub output_len: usize,
    /// The generated text re-encoded with the benchmark's tokenizer (checks `output_len`).
    pub retokenized_len: usize,
    pub generated_text: String,
}

impl RequestOutcome {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }

    /// TPOT of this request, when it has more than one output token.
    pub fn tpot(&self) -> Option<f64> {
        (self.output_len > 1).then(|| (self.latency - self.ttft) / (self.output_len - 1) as f64)
    }

    /// When this request's output chunks arrived, relative to the benchmark's start.
    fn chunk_times(&self) -> impl Iterator<Item = f64> + '_ {
        let first = self.start + self.ttft;
        std::iter::once(first).chain(self.itl.iter().scan(first, |t, gap| {
            *t += gap;
            Some(*t)
        }))
    }
}

/// Mean, median, std and tail percentiles of one latency series, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Distribution {
    pub mean_ms: f64,
    pub median_ms: f64,
    pub std_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Distribution {
    /// Of a series in seconds; all zeros for an empty series (as numpy's nan-free fallbacks in bench_serving).
    pub fn of_seconds(values: &[f64]) -> Self {
        if values.is_empty() {
            return Distribution::default();
        }
        let mut ms: Vec<f64> = values.iter().map(|v| v * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len() as f64;
        let mean = ms.iter().sum::<f64>() / n;
        let var = ms.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        Distribution {
            mean_ms: mean,
            median_ms: percentile(&ms, 50.0),
            std_ms: var.sqrt(),
            p95_ms: percentile(&ms, 95.0),
            p99_ms: percentile(&ms, 99.0),
            max_ms: ms[ms.len() - 1],
        }
    }

    fn to_json(self, name: &str) -> Vec<(String, Value)> {
        let stats = [
            ("mean", self.mean_ms),
            ("median", self.median_ms),
            ("std", self.std_ms),
            ("p95", self.p95_ms),
            ("p99", self.p99_ms),
            ("max", self.max_ms),
        ];
        stats.into_iter().map(|(stat, v)| (format!("{stat}_{name}_ms"), json!(v))).collect()
    }
}

/// numpy's `percentile(..., method="linear")` of an ascending, non-empty slice.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// The benchmark's aggregate figures: the block `sglang.bench_serving` prints.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BenchMetrics {
    pub completed: usize,
    pub failed: usize,
    pub duration_s: f64,
    pub total_input: usize,
    pub total_input_vision: usize,
    pub total_output: usize,
    pub total_output_retokenized: usize,
    pub request_throughput: f64,
    pub input_throughput: f64,
    pub output_throughput: f64,
    pub output_throughput_retokenized: f64,
    pub total_throughput: f64,
    pub peak_output_throughput: f64,
    pub peak_concurrent_requests: usize,
    pub concurrency: f64,
    pub e2e: Distribution,
    pub ttft: Distribution,
    pub tpot: Distribution,
    pub itl: Distribution,
}

impl BenchMetrics {
    /// Aggregates of the successful requests; `duration_s` is the benchmark's wall time (first send to last
    /// response), failed requests only count in `failed`.
    pub fn compute(outcomes: &[RequestOutcome], duration_s: f64) -> Self {
        let ok: Vec<&RequestOutcome> = outcomes.iter().filter(|o| o.succeeded()).collect();
        let sum = |f: fn(&RequestOutcome) -> usize| ok.iter().map(|o| f(o)).sum::<usize>();
        let (total_input, total_output) = (sum(|o| o.prompt_len), sum(|o| o.output_len));
        let total_output_retokenized = sum(|o| o.retokenized_len);
        let per_s = |x: f64| if duration_s > 0.0 { x / duration_s } else { 0.0 };
        let series = |f: fn(&RequestOutcome) -> f64| ok.iter().map(|o| f(o)).collect::<Vec<f64>>();
        let tpots: Vec<f64> = ok.iter().filter_map(|o| o.tpot()).collect();
        let itls: Vec<f64> = ok.iter().flat_map(|o| o.itl.iter().copied()).collect();
        let (peak_output_throughput, peak_concurrent_requests) = peaks(&ok);
        BenchMetrics {
            completed: ok.len(),
            failed: outcomes.len() - ok.len(),
            duration_s,
            total_input,
            total_input_vision: sum(|o| o.vision_prompt_len),
            total_output,
            total_output_retokenized,
            request_throughput: per_s(ok.len() as f64),
            input_throughput: per_s(total_input as f64),
            output_throughput: per_s(total_output as f64),
            output_throughput_retokenized: per_s(total_output_retokenized as f64),
            total_throughput: per_s((total_input + total_output) as f64),
            peak_output_throughput,
            peak_concurrent_requests,
            concurrency: per_s(series(|o| o.latency).iter().sum()),
            e2e: Distribution::of_seconds(&series(|o| o.latency)),
            ttft: Distribution::of_seconds(&series(|o| o.ttft)),
            tpot: Distribution::of_seconds(&tpots),
            itl: Distribution::of_seconds(&itls),
        }
    }

    /// Every aggregate as a flat JSON object, with bench_serving's key names.
    pub fn to_json(&self) -> serde_json::Map<String, Value> {
        let fields = [
            ("completed", json!(self.completed)),
            ("failed", json!(self.failed)),
            ("duration", json!(self.duration_s)),
            ("total_input_tokens", json!(self.total_input)),
            ("total_input_text_tokens", json!(self.total_input - self.total_input_vision)),
            ("total_input_vision_tokens", json!(self.total_input_vision)),
            ("total_output_tokens", json!(self.total_output)),
            ("total_output_tokens_retokenized", json!(self.total_output_retokenized)),
            ("request_throughput", json!(self.request_throughput)),
            ("input_throughput", json!(self.input_throughput)),
            ("output_throughput", json!(self.output_throughput)),
            ("output_throughput_retokenized", json!(self.output_throughput_retokenized)),
            ("total_throughput", json!(self.total_throughput)),
            ("max_output_tokens_per_s", json!(self.peak_output_throughput)),
            ("max_concurrent_requests", json!(self.peak_concurrent_requests)),
            ("concurrency", json!(self.concurrency)),
        ];
        let mut m: serde_json::Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        for (name, d) in [("e2e_latency", self.e2e), ("ttft", self.ttft), ("tpot", self.tpot), ("itl", self.itl)] {
            m.extend(d.to_json(name));
        }
        m
    }
}

/// The most output chunks that arrived within one second, and the most requests in flight during one second, over
/// one-second bins from the benchmark's start.
fn peaks(ok: &[&RequestOutcome]) -> (f64, usize) {
    let bin = |t: f64| t.max(0.0).floor() as usize;
    let last = ok.iter().map(|o| bin(o.start + o.latency)).max().unwrap_or(0);
    let (mut tokens, mut running) = (vec![0usize; last + 1], vec![0usize; last + 1]);
    for o in ok {
        o.chunk_times().for_each(|t| tokens[bin(t).min(last)] += 1);
        running[bin(o.start)..=bin(o.start + o.latency)].iter_mut().for_each(|r| *r += 1);
    }
    (tokens.into_iter().max().unwrap_or(0) as f64, running.into_iter().max().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(start: f64, ttft: f64, itl: &[f64], tail: f64, output_len: usize) -> RequestOutcome {
        RequestOutcome {
            start,
            ttft,
            itl: itl.to_vec(),
            // The `[DONE]` line arrives `tail` seconds after the last chunk.
            latency: ttft + itl.iter().sum::<f64>() + tail,
            prompt_len: 100,
            output_len,
            retokenized_len: output_len,
            ..Default::default()
        }
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    /// Two requests on a hand-drawn timeline:
    /// A starts at 0.0, first chunk at 0.2, then chunks 0.1 and 0.3 later, [DONE] 0.1 after: latency 0.7, 3 tokens.
    /// B starts at 0.5, first chunk at 0.9 (TTFT 0.4), one more chunk 0.2 later, [DONE] at once: latency 0.6.
    /// Wall time 1.2 s.
    #[test]
    fn hand_computed_timeline() {
        let a = outcome(0.0, 0.2, &[0.1, 0.3], 0.1, 3);
        let b = outcome(0.5, 0.4, &[0.2], 0.0, 2);
        close(a.latency, 0.7);
        close(b.latency, 0.6);
        // TPOT: A (0.7 - 0.2) / 2 = 0.25; B (0.6 - 0.4) / 1 = 0.2.
        close(a.tpot().unwrap(), 0.25);
        close(b.tpot().unwrap(), 0.2);
        let m = BenchMetrics::compute(&[a, b], 1.2);
        assert_eq!((m.completed, m.failed, m.total_input, m.total_output), (2, 0, 200, 5));
        close(m.request_throughput, 2.0 / 1.2);
        close(m.input_throughput, 200.0 / 1.2);
        close(m.output_throughput, 5.0 / 1.2);
        close(m.total_throughput, 205.0 / 1.2);
        // Concurrency: (0.7 + 0.6) / 1.2.
        close(m.concurrency, 1.3 / 1.2);
        // TTFT 200 and 400 ms: mean 300, median 300, std 100, p99 = 200 + 0.99 * 200 = 398.
        close(m.ttft.mean_ms, 300.0);
        close(m.ttft.median_ms, 300.0);
        close(m.ttft.std_ms, 100.0);
        close(m.ttft.p99_ms, 398.0);
        close(m.ttft.max_ms, 400.0);
        // TPOT 250 and 200 ms.
        close(m.tpot.mean_ms, 225.0);
        close(m.tpot.p99_ms, 200.0 + 0.99 * 50.0);
        // ITL over both requests: 100, 300, 200 ms -> sorted 100, 200, 300.
        close(m.itl.mean_ms, 200.0);
        close(m.itl.median_ms, 200.0);
        close(m.itl.p95_ms, 200.0 + 0.9 * 100.0);
        close(m.itl.max_ms, 300.0);
        // E2E 700 and 600 ms.
        close(m.e2e.mean_ms, 650.0);
        // Chunks arrive at 0.2, 0.3, 0.6 (A) and 0.9, 1.1 (B): 4 in second 0, 1 in second 1.
        close(m.peak_output_throughput, 4.0);
        // Both requests are in flight during second 0; only B during second 1 (it ends at 1.1).
        assert_eq!(m.peak_concurrent_requests, 2);
    }

    #[test]
    fn failed_requests_are_counted_not_averaged() {
        let ok = outcome(0.0, 0.1, &[0.1], 0.0, 2);
        let failed = RequestOutcome { error: Some("HTTP 400: bad".into()), latency: 5.0, ..Default::default() };
        let m = BenchMetrics::compute(&[ok, failed], 1.0);
        assert_eq!((m.completed, m.failed), (1, 1));
        close(m.e2e.mean_ms, 200.0);
        close(m.concurrency, 0.2);
    }

    #[test]
    fn single_token_outputs_have_no_tpot() {
        let one = outcome(0.0, 0.3, &[], 0.0, 1);
        assert_eq!(one.tpot(), None);
        let m = BenchMetrics::compute(&[one], 0.5);
        assert_eq!(m.tpot, Distribution::default());
        close(m.ttft.mean_ms, 300.0);
    }

    #[test]
    fn percentiles_match_numpy_linear() {
        // numpy.percentile([1, 2, 3, 4, 10], [50, 95, 99]) = [3.0, 8.8, 9.76]
        let v = [1.0, 2.0, 3.0, 4.0, 10.0];
        close(percentile(&v, 50.0), 3.0);
        close(percentile(&v, 95.0), 8.8);
        close(percentile(&v, 99.0), 9.76);
        close(percentile(&[7.0], 99.0), 7.0);
    }
}
