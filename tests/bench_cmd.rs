//! `glmv bench` against the real `glmv serve` (demo model): the run completes, the printed block has
//! bench_serving's lines, and every field of the `--output-file` record is present and consistent.
mod common;

use std::process::Command;

use common::server::ServerProcess;
use serde_json::Value;

fn bench(addr: &str, extra: &[&str]) -> (std::process::Output, Option<Value>) {
    let out_file = std::env::temp_dir().join(format!("glmv-bench-{}-{}.jsonl", std::process::id(), extra.len()));
    let _ = std::fs::remove_file(&out_file);
    let output = Command::new(env!("CARGO_BIN_EXE_glmv"))
        .args(["bench", "--base-url", &format!("http://{addr}"), "--disable-tqdm", "--output-file"])
        .arg(&out_file)
        .args(extra)
        .output()
        .expect("run glmv bench");
    let record = std::fs::read_to_string(&out_file).ok().map(|s| {
        let last = s.lines().last().expect("one JSON line");
        serde_json::from_str(last).expect("JSON record")
    });
    let _ = std::fs::remove_file(&out_file);
    (output, record)
}

fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} missing or not a number: {v}"))
}

fn list(v: &Value, key: &str) -> Vec<Value> {
    v[key].as_array().unwrap_or_else(|| panic!("{key} missing or not an array")).clone()
}

#[test]
fn random_text_against_the_demo_server() {
    let server = ServerProcess::start(None, &["--max-running-requests", "4"]);
    let (output, record) = bench(
        &server.addr,
        &[
            "--num-prompts",
            "8",
            "--max-concurrency",
            "4",
            "--random-input-len",
            "48",
            "--random-output-len",
            "12",
            "--random-range-ratio",
            "0.5",
            "--seed",
            "5",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for line in [
        "============ Serving Benchmark Result ============",
        "Backend:                                 openai-chat",
        "Max request concurrency:                 4",
        "Successful requests:                     8",
        "Total input vision tokens:               0",
        "Peak concurrent requests:",
        "Mean TTFT (ms):",
        "P99 TPOT (ms):",
        "P95 ITL (ms):",
    ] {
        assert!(stdout.contains(line), "{line:?} missing in\n{stdout}");
    }
    let r = record.expect("--output-file written");
    assert_eq!(r["backend"], "openai-chat");
    assert_eq!(r["dataset_name"], "random");
    assert_eq!(r["model_id"], "glmv-demo-random");
    assert_eq!(r["request_rate"], "inf");
    assert_eq!((r["max_concurrency"].as_u64(), r["num_prompts"].as_u64()), (Some(4), Some(8)));
    assert_eq!((r["completed"].as_u64(), r["failed"].as_u64()), (Some(8), Some(0)));

    // Per-request figures: one entry per request, all successful, lengths from the server's usage.
    let n = 8;
    let (inputs, outputs) = (list(&r, "input_lens"), list(&r, "output_lens"));
    let (ttfts, latencies, itls) = (list(&r, "ttfts"), list(&r, "latencies"), list(&r, "itls"));
    for key in ["vision_input_lens", "retokenized_output_lens", "start_times", "tpots", "generated_texts", "errors"] {
        assert_eq!(list(&r, key).len(), n, "{key}");
    }
    assert_eq!((inputs.len(), outputs.len(), ttfts.len(), latencies.len(), itls.len()), (n, n, n, n, n));
    assert!(list(&r, "errors").iter().all(|e| e == ""));
    for i in 0..n {
        let out = outputs[i].as_u64().unwrap();
        // ignore_eos: every request generates its sampled length, in [6, 12] (ratio 0.5 of 12).
        assert!((6..=12).contains(&out), "output_len {out}");
        // The chat template wraps the random text, so the server counts more prompt tokens than were drawn.
        assert!(inputs[i].as_u64().unwrap() > 24, "{}", inputs[i]);
        let (ttft, latency) = (ttfts[i].as_f64().unwrap(), latencies[i].as_f64().unwrap());
        assert!(ttft > 0.0 && ttft <= latency, "ttft {ttft} latency {latency}");
        let gaps: f64 = itls[i].as_array().unwrap().iter().map(|g| g.as_f64().unwrap()).sum();
        assert!(ttft + gaps <= latency + 1e-9);
        let tpot = r["tpots"][i].as_f64().unwrap();
        assert!((tpot - (latency - ttft) / (out - 1) as f64).abs() < 1e-9);
    }

    // Aggregates agree with the per-request lists.
    let total_in: u64 = inputs.iter().map(|v| v.as_u64().unwrap()).sum();
    let total_out: u64 = outputs.iter().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(
        (r["total_input_tokens"].as_u64(), r["total_output_tokens"].as_u64()),
        (Some(total_in), Some(total_out))
    );
    assert_eq!(r["total_input_text_tokens"].as_u64(), Some(total_in));
    assert_eq!(r["total_input_vision_tokens"].as_u64(), Some(0));
    assert!(r["total_output_tokens_retokenized"].as_u64().unwrap() > 0);
    let duration = f(&r, "duration");
    assert!(duration > 0.0);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
    assert!(close(f(&r, "request_throughput"), n as f64 / duration));
    assert!(close(f(&r, "input_throughput"), total_in as f64 / duration));
    assert!(close(f(&r, "output_throughput"), total_out as f64 / duration));
    assert!(close(f(&r, "total_throughput"), (total_in + total_out) as f64 / duration));
    assert!(f(&r, "output_throughput_retokenized") > 0.0);
    let e2e_sum: f64 = latencies.iter().map(|v| v.as_f64().unwrap()).sum();
    assert!(close(f(&r, "concurrency"), e2e_sum / duration));
    // Requests in flight during the busiest one-second bin (bench_serving's definition): with a run this short all
    // 8 may share one bin even though at most 4 run at any instant.
    let peak = r["max_concurrent_requests"].as_u64().unwrap();
    assert!((1..=8).contains(&peak), "{peak}");
    assert!(f(&r, "max_output_tokens_per_s") >= 1.0);
    let mean_ttft = ttfts.iter().map(|v| v.as_f64().unwrap()).sum::<f64>() / n as f64 * 1000.0;
    assert!(close(f(&r, "mean_ttft_ms"), mean_ttft));
    for metric in ["e2e_latency", "ttft", "tpot", "itl"] {
        let stat = |s: &str| f(&r, &format!("{s}_{metric}_ms"));
        assert!(stat("mean") > 0.0, "{metric}");
        assert!(stat("median") <= stat("p99") && stat("p95") <= stat("p99") && stat("p99") <= stat("max"), "{metric}");
        assert!(stat("std") >= 0.0);
    }
}

#[test]
fn images_through_the_completions_and_error_paths() {
    let server = ServerProcess::start(None, &[]);
    // Two 64x48 images per request: the server's usage reports their vision tokens.
    let (output, record) = bench(
        &server.addr,
        &[
            "--dataset-name",
            "random-image",
            "--image-count",
            "2",
            "--image-resolution",
            "48x64",
            "--num-prompts",
            "2",
            "--random-input-len",
            "16",
            "--random-output-len",
            "4",
            "--random-range-ratio",
            "1",
        ],
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let r = record.unwrap();
    // 64x48 is under the demo's pixel budget (shortest_edge 12544 over 2 temporal frames): smart_resize scales by
    // sqrt(12544 / (64 * 48 * 2)) = 1.429 and rounds up to multiples of 28, giving 112x84 = 8x6 patches, 2x2 merged
    // = 12 image tokens per image, 24 per request.
    assert_eq!(list(&r, "vision_input_lens"), vec![Value::from(24), Value::from(24)]);
    assert_eq!(r["total_input_vision_tokens"].as_u64(), Some(48));

    // Plain completions endpoint.
    let (output, record) =
        bench(&server.addr, &["--backend", "openai", "--num-prompts", "3", "--random-output-len", "5"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(record.unwrap()["completed"].as_u64(), Some(3));

    // Requests the server refuses are counted and summarised, not dropped; the warm-up would stop the run, so it
    // is off here.
    let (output, record) = bench(
        &server.addr,
        &[
            "--num-prompts",
            "3",
            "--random-output-len",
            "4",
            "--warmup-requests",
            "0",
            "--extra-request-body",
            r#"{"response_format": {"type": "json_object"}}"#,
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "no request succeeded: the exit status says so");
    assert!(stdout.contains("Failed requests:                         3"), "{stdout}");
    assert!(stdout.contains("3 of 3 requests failed") && stdout.contains("3 x HTTP 400"), "{stdout}");
    let r = record.unwrap();
    assert_eq!((r["completed"].as_u64(), r["failed"].as_u64()), (Some(0), Some(3)));
    assert!(list(&r, "errors").iter().all(|e| e.as_str().unwrap().starts_with("HTTP 400")));

    // A warm-up failure stops the benchmark before anything is timed.
    let (output, _) = bench(&server.addr, &["--num-prompts", "1", "--model", "no-such-model"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("warm-up request failed"));
}

#[test]
fn unusable_flags_are_refused_before_anything_is_sent() {
    // Port 9 (discard): nothing listens there, so an error about the flag proves no request was attempted first.
    for (flag, value, message) in [
        ("--request-rate", "0", "--request-rate must be positive"),
        ("--max-concurrency", "0", "--max-concurrency must be at least 1"),
        ("--random-range-ratio", "1.5", "--random-range-ratio must be in [0, 1]"),
        ("--num-prompts", "0", "--num-prompts must be at least 1"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_glmv"))
            .args(["bench", "--port", "9", flag, value])
            .output()
            .expect("run glmv bench");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{flag} {value}: {stderr}");
    }
    let output =
        Command::new(env!("CARGO_BIN_EXE_glmv")).args(["bench", "--base-url", "https://example.com"]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("plain http://"));
}

#[test]
fn a_server_that_is_down_or_silent_is_named() {
    // Nothing listens: the error names the request and the refusal.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port().to_string();
    drop(free);
    let output = Command::new(env!("CARGO_BIN_EXE_glmv")).args(["bench", "--port", &port]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&format!("GET http://127.0.0.1:{port}/v1/models:")), "{stderr}");
    // Something listens but never answers (a server still starting): said so after the 10 s wait.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_glmv")).args(["bench", "--port", &port]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/v1/models: no answer within 10 s (is the server still starting?)"), "{stderr}");
    drop(silent);
}
