//! The benchmark's outputs: the result block `sglang.bench_serving` prints (same lines, same order, so the two
//! compare side by side), a summary of failures, and the JSON line of `--output-file`.
use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::{json, Value};

use super::metrics::{BenchMetrics, Distribution, RequestOutcome};

/// How the benchmark was run, as the header of the block and the JSON record say it.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub backend: String,
    pub dataset: String,
    pub model: String,
    /// Requests per second; infinite for "all at once".
    pub request_rate: f64,
    pub max_concurrency: Option<usize>,
    pub num_prompts: usize,
}

fn rate_text(rate: f64) -> String {
    if rate.is_finite() {
        format!("{rate}")
    } else {
        "inf".into()
    }
}

/// The result block, line for line as bench_serving prints it.
pub fn result_block(info: &RunInfo, m: &BenchMetrics) -> String {
    let mut s = String::new();
    let line = |s: &mut String, label: &str, value: String| {
        let _ = writeln!(s, "{:<40} {:<10}", format!("{label}:"), value);
    };
    let f2 = |v: f64| format!("{v:.2}");
    let mut lines = vec![
        ("Backend", info.backend.clone()),
        ("Traffic request rate", rate_text(info.request_rate)),
        ("Max request concurrency", info.max_concurrency.map_or("not set".into(), |c| c.to_string())),
        ("Successful requests", m.completed.to_string()),
    ];
    if m.failed > 0 {
        lines.push(("Failed requests", m.failed.to_string()));
    }
    lines.extend([
        ("Benchmark duration (s)", f2(m.duration_s)),
        ("Total input tokens", m.total_input.to_string()),
        ("Total input text tokens", (m.total_input - m.total_input_vision).to_string()),
        ("Total input vision tokens", m.total_input_vision.to_string()),
        ("Total generated tokens", m.total_output.to_string()),
        ("Total generated tokens (retokenized)", m.total_output_retokenized.to_string()),
        ("Request throughput (req/s)", f2(m.request_throughput)),
        ("Input token throughput (tok/s)", f2(m.input_throughput)),
        ("Output token throughput (tok/s)", f2(m.output_throughput)),
        ("Peak output token throughput (tok/s)", f2(m.peak_output_throughput)),
        ("Peak concurrent requests", m.peak_concurrent_requests.to_string()),
        ("Total token throughput (tok/s)", f2(m.total_throughput)),
        ("Concurrency", f2(m.concurrency)),
    ]);
    let _ = writeln!(s, "{:=^50}", " Serving Benchmark Result ");
    for (label, value) in lines {
        line(&mut s, label, value);
    }
    let section = |s: &mut String, title: &str, rows: &[(&str, f64)]| {
        let _ = writeln!(s, "{title:-^50}");
        for (label, v) in rows {
            let _ = writeln!(s, "{:<40} {:<10.2}", format!("{label}:"), v);
        }
    };
    let d = |d: &Distribution| (d.mean_ms, d.median_ms, d.p99_ms);
    let (e_mean, e_median, _) = d(&m.e2e);
    section(&mut s, "End-to-End Latency", &[("Mean E2E Latency (ms)", e_mean), ("Median E2E Latency (ms)", e_median)]);
    let (t_mean, t_median, t_p99) = d(&m.ttft);
    section(
        &mut s,
        "Time to First Token",
        &[("Mean TTFT (ms)", t_mean), ("Median TTFT (ms)", t_median), ("P99 TTFT (ms)", t_p99)],
    );
    let (p_mean, p_median, p_p99) = d(&m.tpot);
    section(
        &mut s,
        "Time per Output Token (excl. 1st token)",
        &[("Mean TPOT (ms)", p_mean), ("Median TPOT (ms)", p_median), ("P99 TPOT (ms)", p_p99)],
    );
    let i = &m.itl;
    section(
        &mut s,
        "Inter-Token Latency",
        &[
            ("Mean ITL (ms)", i.mean_ms),
            ("Median ITL (ms)", i.median_ms),
            ("P95 ITL (ms)", i.p95_ms),
            ("P99 ITL (ms)", i.p99_ms),
            ("Max ITL (ms)", i.max_ms),
        ],
    );
    let _ = writeln!(s, "{}", "=".repeat(50));
    s
}

/// Failed requests grouped by error message, most frequent first: `None` when every request succeeded.
pub fn failure_summary(outcomes: &[RequestOutcome]) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in outcomes.iter().filter_map(|o| o.error.as_deref()) {
        *counts.entry(e).or_default() += 1;
    }
    if counts.is_empty() {
        return None;
    }
    let mut rows: Vec<(&str, usize)> = counts.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    let failed: usize = rows.iter().map(|r| r.1).sum();
    let mut s = format!("{failed} of {} requests failed:\n", outcomes.len());
    for (message, n) in rows {
        let _ = writeln!(s, "  {n:>5} x {message}");
    }
    Some(s)
}

/// The `--output-file` record: run settings, every aggregate (bench_serving's keys) and every per-request figure
/// (bench_serving's per-request arrays, times in seconds).
pub fn json_record(info: &RunInfo, m: &BenchMetrics, outcomes: &[RequestOutcome]) -> Value {
    let mut record = serde_json::Map::new();
    record.insert("backend".into(), json!(info.backend));
    record.insert("dataset_name".into(), json!(info.dataset));
    record.insert("model_id".into(), json!(info.model));
    let rate = if info.request_rate.is_finite() { json!(info.request_rate) } else { json!("inf") };
    record.insert("request_rate".into(), rate);
    record.insert("max_concurrency".into(), json!(info.max_concurrency));
    record.insert("num_prompts".into(), json!(info.num_prompts));
    record.extend(m.to_json());
    let per = |f: &dyn Fn(&RequestOutcome) -> Value| Value::Array(outcomes.iter().map(f).collect());
    record.insert("input_lens".into(), per(&|o| json!(o.prompt_len)));
    record.insert("vision_input_lens".into(), per(&|o| json!(o.vision_prompt_len)));
    record.insert("output_lens".into(), per(&|o| json!(o.output_len)));
    record.insert("retokenized_output_lens".into(), per(&|o| json!(o.retokenized_len)));
    record.insert("start_times".into(), per(&|o| json!(o.start)));
    record.insert("ttfts".into(), per(&|o| json!(o.ttft)));
    record.insert("latencies".into(), per(&|o| json!(o.latency)));
    record.insert("tpots".into(), per(&|o| json!(o.tpot())));
    record.insert("itls".into(), per(&|o| json!(o.itl)));
    record.insert("generated_texts".into(), per(&|o| json!(o.generated_text)));
    record.insert("errors".into(), per(&|o| json!(o.error.as_deref().unwrap_or(""))));
    Value::Object(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_has_bench_serving_lines() {
        let info = RunInfo {
            backend: "openai-chat".into(),
            dataset: "random".into(),
            model: "m".into(),
            request_rate: f64::INFINITY,
            max_concurrency: Some(1),
            num_prompts: 1,
        };
        let o = RequestOutcome { ttft: 0.1, itl: vec![0.2], latency: 0.3, output_len: 2, ..Default::default() };
        let m = BenchMetrics::compute(&[o], 1.0);
        let block = result_block(&info, &m);
        for needle in [
            "============ Serving Benchmark Result ============",
            "Traffic request rate:                    inf",
            "Max request concurrency:                 1",
            "Successful requests:                     1",
            "Mean TTFT (ms):                          100.00",
            "Mean TPOT (ms):                          200.00",
            "Max ITL (ms):                            200.00",
            "----------------End-to-End Latency----------------",
            "-----Time per Output Token (excl. 1st token)------",
        ] {
            assert!(block.contains(needle), "{needle:?} missing in\n{block}");
        }
        assert!(!block.contains("Failed requests"));
        assert_eq!(failure_summary(&[RequestOutcome::default()]), None);
        let failed = RequestOutcome { error: Some("HTTP 400: no".into()), ..Default::default() };
        let summary = failure_summary(&[failed.clone(), failed, RequestOutcome::default()]).unwrap();
        assert!(summary.contains("2 of 3 requests failed") && summary.contains("2 x HTTP 400: no"), "{summary}");
    }
}
