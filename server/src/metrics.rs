//! Prometheus metrics under SGLang's names (`sglang:...`), so that dashboards and alerts written for SGLang read
//! glmv unchanged. Counters are atomics; histograms take a short lock per observation.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use glmv_runtime::engine::scheduler::SchedulerStats;

/// Latency buckets in seconds (SGLang's TTFT/e2e spread: milliseconds to minutes).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0,
];
/// Per-token latency buckets in seconds.
const TOKEN_BUCKETS: &[f64] =
    &[0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5];

pub struct Histogram {
    buckets: &'static [f64],
    state: Mutex<HistogramState>,
}

#[derive(Default)]
struct HistogramState {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(buckets: &'static [f64]) -> Self {
        Histogram {
            buckets,
            state: Mutex::new(HistogramState { counts: vec![0; buckets.len()], ..Default::default() }),
        }
    }

    pub fn observe(&self, value: f64) {
        if let Ok(mut s) = self.state.lock() {
            if let Some(i) = self.buckets.iter().position(|&b| value <= b) {
                s.counts[i] += 1;
            }
            s.sum += value;
            s.count += 1;
        }
    }

    pub fn count(&self) -> u64 {
        self.state.lock().map(|s| s.count).unwrap_or(0)
    }

    fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let Ok(s) = self.state.lock() else { return };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.buckets.iter().zip(&s.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", s.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", s.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", s.count);
    }
}

pub struct Metrics {
    model_name: String,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub requests: AtomicU64,
    pub aborted_requests: AtomicU64,
    pub http_requests: AtomicU64,
    http_responses: Mutex<BTreeMap<u16, u64>>,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub tpot: Histogram,
    pub e2e: Histogram,
    pub prompt_tokens_histogram: Histogram,
    pub generation_tokens_histogram: Histogram,
}

const TOKEN_COUNT_BUCKETS: &[f64] =
    &[1.0, 8.0, 32.0, 128.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0, 131072.0];

/// Fixed facts of the running server the gauges report.
pub struct Capacity {
    pub context_len: usize,
    pub kv_tokens: usize,
    pub block_size: usize,
}

impl Metrics {
    pub fn new(model_name: &str) -> Self {
        Metrics {
            model_name: model_name.replace(['"', '\\', '\n'], "_"),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            cached_tokens: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            aborted_requests: AtomicU64::new(0),
            http_requests: AtomicU64::new(0),
            http_responses: Mutex::new(BTreeMap::new()),
            ttft: Histogram::new(LATENCY_BUCKETS),
            itl: Histogram::new(TOKEN_BUCKETS),
            tpot: Histogram::new(TOKEN_BUCKETS),
            e2e: Histogram::new(LATENCY_BUCKETS),
            prompt_tokens_histogram: Histogram::new(TOKEN_COUNT_BUCKETS),
            generation_tokens_histogram: Histogram::new(TOKEN_COUNT_BUCKETS),
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn response(&self, status: u16) {
        if let Ok(mut r) = self.http_responses.lock() {
            *r.entry(status).or_insert(0) += 1;
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, stats: &SchedulerStats, capacity: &Capacity) -> String {
        let labels = format!("model_name=\"{}\"", self.model_name);
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP sglang:{name} {help}\n# TYPE sglang:{name} gauge\nsglang:{name}{{{labels}}} {value}"
            );
        };
        let used_tokens = stats.used_blocks * capacity.block_size;
        gauge("num_running_reqs", "The number of running requests.", stats.running as f64);
        gauge("num_queue_reqs", "The number of requests waiting in the queue.", stats.waiting as f64);
        gauge("num_used_tokens", "The number of KV-cache tokens in use.", used_tokens as f64);
        gauge("kv_used_tokens", "The number of KV-cache tokens in use.", used_tokens as f64);
        gauge(
            "kv_available_tokens",
            "The number of free KV-cache tokens.",
            capacity.kv_tokens.saturating_sub(used_tokens) as f64,
        );
        gauge("max_total_num_tokens", "The KV-cache capacity in tokens.", capacity.kv_tokens as f64);
        gauge(
            "token_usage",
            "The fraction of the KV cache in use.",
            ratio(stats.used_blocks as u64, stats.total_blocks as u64),
        );
        gauge("cache_hit_rate", "The prefix-cache hit rate (blocks).", ratio(stats.prefix_hits, stats.prefix_lookups));
        gauge("context_len", "The context length.", capacity.context_len as f64);
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP sglang:{name} {help}\n# TYPE sglang:{name} counter\nsglang:{name}{{{labels}}} {value}"
            );
        };
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter("prompt_tokens_total", "Prompt tokens processed.", load(&self.prompt_tokens));
        counter("generation_tokens_total", "Tokens generated.", load(&self.generation_tokens));
        counter("cached_tokens_total", "Prompt tokens served from the prefix cache.", load(&self.cached_tokens));
        counter("num_requests_total", "Generation requests finished.", load(&self.requests));
        counter("num_aborted_requests_total", "Generation requests aborted.", load(&self.aborted_requests));
        counter("num_retracted_requests_total", "Sequences preempted for KV space.", stats.preemptions);
        counter("http_requests_total", "HTTP requests received.", load(&self.http_requests));
        if let Ok(r) = self.http_responses.lock() {
            let _ = writeln!(out, "# HELP sglang:http_responses_total HTTP responses by status.\n# TYPE sglang:http_responses_total counter");
            for (status, n) in r.iter() {
                let _ = writeln!(out, "sglang:http_responses_total{{{labels},status_code=\"{status}\"}} {n}");
            }
        }
        let histograms = [
            (&self.ttft, "time_to_first_token_seconds", "Time to first token."),
            (&self.itl, "inter_token_latency_seconds", "Time between consecutive tokens."),
            (&self.tpot, "request_time_per_output_token_seconds", "Decode time per output token of a request."),
            (&self.e2e, "e2e_request_latency_seconds", "End-to-end request latency."),
            (&self.prompt_tokens_histogram, "prompt_tokens_histogram", "Prompt tokens per request."),
            (&self.generation_tokens_histogram, "generation_tokens_histogram", "Generated tokens per request."),
        ];
        for (h, name, help) in histograms {
            h.render(&mut out, &format!("sglang:{name}"), help, &labels);
        }
        out
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new("m");
        for v in [0.0005, 0.003, 0.003, 1000.0] {
            m.ttft.observe(v);
        }
        let text = m.render(&SchedulerStats::default(), &Capacity { context_len: 8, kv_tokens: 64, block_size: 16 });
        assert!(text.contains("sglang:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"0.001\"} 1\n"));
        assert!(text.contains("sglang:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"0.005\"} 3\n"));
        assert!(text.contains("sglang:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"640\"} 3\n"));
        assert!(text.contains("sglang:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"+Inf\"} 4\n"));
        assert!(text.contains("sglang:time_to_first_token_seconds_count{model_name=\"m\"} 4\n"));
        assert!(text.contains("sglang:kv_available_tokens{model_name=\"m\"} 64\n"));
    }
}
