//! `glmv bench`: a serving benchmark against any OpenAI-compatible server (glmv, SGLang, vLLM) that reports the
//! figures of `sglang.bench_serving` with its definitions, so that a user can compare the two line by line.
//!
//! - `dataset`: the requests (random text, random images, a JSONL file of chat requests).
//! - `client`: one streamed request, timed line by line.
//! - `metrics`: TTFT, TPOT, ITL, throughputs and their statistics.
//! - `report`: the printed block and the `--output-file` record.
use std::{
    io::Write as _,
    path::PathBuf,
    sync::{mpsc, Condvar, Mutex},
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};
use glmv_runtime::{engine::sampler::Rng, text::Tokenizer};
use serde_json::Value;

mod client;
mod dataset;
mod http;
mod metrics;
mod report;

use client::Endpoint;
use dataset::{BenchRequest, ImageSpec, RandomLengths};
use metrics::{BenchMetrics, RequestOutcome};
use report::RunInfo;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ApiKind {
    /// `/v1/chat/completions` (the chat template applies; images and videos allowed).
    OpenaiChat,
    /// `/v1/completions` (the prompt is sent as is).
    Openai,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatasetName {
    /// Random token ids decoded to text that re-encodes to the asked length.
    Random,
    /// `--image-count` synthetic images of `--image-resolution`, then random text.
    RandomImage,
    /// `--dataset-path FILE.jsonl`: one chat request per line.
    Jsonl,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageFormat {
    Jpeg,
    Png,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageContent {
    /// Uniform noise (the worst case for JPEG size).
    Random,
    /// White.
    Blank,
}

/// Flags as `python -m sglang.bench_serving` names them.
#[derive(Args)]
pub struct BenchArgs {
    /// `openai-chat` or `openai` (completions).
    #[arg(long, value_enum, default_value_t = ApiKind::OpenaiChat)]
    backend: ApiKind,
    /// The server's base URL; default http://{host}:{port}.
    #[arg(long)]
    base_url: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 30000)]
    port: u16,
    /// Model name sent in requests; default the first of the server's /v1/models.
    #[arg(long)]
    model: Option<String>,
    /// tokenizer.json (or a directory holding it) for the random prompts and retokenized counts; default the
    /// server's model directory when it is local, or the demo tokenizer when the server runs the demo model.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Sent as `Authorization: Bearer ...`.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[arg(long, value_enum, default_value_t = DatasetName::Random)]
    dataset_name: DatasetName,
    /// The JSONL file of `--dataset-name jsonl`.
    #[arg(long)]
    dataset_path: Option<PathBuf>,
    #[arg(long, default_value_t = 1024)]
    random_input_len: usize,
    /// Output tokens per request (also for JSONL lines that do not say).
    #[arg(long, default_value_t = 1024)]
    random_output_len: usize,
    /// Lengths are uniform in [max(len * ratio, 1), len]: 0 (bench_serving's default) for [1, len], 1 for exactly
    /// len.
    #[arg(long, default_value_t = 0.0)]
    random_range_ratio: f64,
    #[arg(long, default_value_t = 1)]
    image_count: usize,
    /// 4k, 1080p, 720p, 360p or HxW.
    #[arg(long, default_value = "1080p")]
    image_resolution: String,
    #[arg(long, value_enum, default_value_t = ImageFormat::Jpeg)]
    image_format: ImageFormat,
    #[arg(long, value_enum, default_value_t = ImageContent::Random)]
    image_content: ImageContent,
    #[arg(long, default_value_t = 1000)]
    num_prompts: usize,
    /// At most this many requests in flight (the arrival process still runs).
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Poisson arrivals at this many requests per second; `inf` sends everything at once.
    #[arg(long, default_value_t = f64::INFINITY)]
    request_rate: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Requests sent one by one before the measured run (not counted).
    #[arg(long, default_value_t = 1)]
    warmup_requests: usize,
    /// Appends one JSON line with every aggregate and every per-request figure.
    #[arg(long)]
    output_file: Option<PathBuf>,
    /// Let the server stop at EOS (by default `ignore_eos` makes every request produce its full length).
    #[arg(long)]
    disable_ignore_eos: bool,
    /// A JSON object merged into every request body, e.g. '{"chat_template_kwargs": {"enable_thinking": false}}'.
    #[arg(long)]
    extra_request_body: Option<String>,
    /// Count `reasoning_content` (and tool-call) deltas as output for TTFT/ITL, as vLLM does; by default only
    /// `content` counts, as in bench_serving.
    #[arg(long)]
    count_reasoning: bool,
    /// Give up on a request after this many seconds (default: never).
    #[arg(long)]
    request_timeout: Option<f64>,
    /// No progress bar.
    #[arg(long)]
    disable_tqdm: bool,
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Flag values no run can use, refused before anything is sent.
fn check_args(args: &BenchArgs) -> BenchResult<()> {
    if args.num_prompts == 0 {
        return Err("--num-prompts must be at least 1".into());
    }
    if args.request_rate.is_nan() || args.request_rate <= 0.0 {
        return Err("--request-rate must be positive (or inf)".into());
    }
    if !(0.0..=1.0).contains(&args.random_range_ratio) {
        return Err("--random-range-ratio must be in [0, 1]".into());
    }
    if args.max_concurrency == Some(0) {
        return Err("--max-concurrency must be at least 1".into());
    }
    Ok(())
}

pub fn run(args: &BenchArgs) -> BenchResult<()> {
    check_args(args)?;
    let base = args.base_url.clone().unwrap_or_else(|| format!("http://{}:{}", args.host, args.port));
    let origin = http::Origin::parse(&base)?;
    let timeout = args.request_timeout.map(Duration::from_secs_f64);
    let model = match &args.model {
        Some(m) => m.clone(),
        None => first_served_model(&origin)?,
    };
    let tokenizer = load_tokenizer(&origin, args.tokenizer.as_deref())?;
    let requests = build_dataset(args, &tokenizer)?;
    let extra = match &args.extra_request_body {
        Some(s) => match serde_json::from_str::<Value>(s)? {
            Value::Object(m) => m,
            _ => return Err("--extra-request-body must be a JSON object".into()),
        },
        None => Default::default(),
    };
    let path = if args.backend == ApiKind::OpenaiChat { "chat/completions" } else { "completions" };
    let endpoint = Endpoint {
        origin,
        path: format!("/v1/{path}"),
        timeout,
        model: model.clone(),
        api_key: args.api_key.clone(),
        ignore_eos: !args.disable_ignore_eos,
        extra,
        count_reasoning: args.count_reasoning,
    };
    let info = RunInfo {
        backend: ApiKind::to_possible_value(&args.backend).map_or_else(String::new, |v| v.get_name().to_string()),
        dataset: DatasetName::to_possible_value(&args.dataset_name)
            .map_or_else(String::new, |v| v.get_name().to_string()),
        model,
        request_rate: args.request_rate,
        max_concurrency: args.max_concurrency,
        num_prompts: requests.len(),
    };
    eprintln!(
        "[glmv bench] {} requests to {}{} (model {}), request rate {}, max concurrency {}",
        requests.len(),
        base.trim_end_matches('/'),
        endpoint.path,
        info.model,
        info.request_rate,
        args.max_concurrency.map_or("not set".into(), |c| c.to_string())
    );
    warm_up(&endpoint, &requests, args.warmup_requests, &tokenizer)?;
    let schedule = Schedule { request_rate: args.request_rate, max_concurrency: args.max_concurrency, seed: args.seed };
    let (outcomes, duration) = run_requests(&endpoint, &requests, &schedule, &tokenizer, !args.disable_tqdm);
    let m = BenchMetrics::compute(&outcomes, duration);
    print!("\n{}", report::result_block(&info, &m));
    if let Some(summary) = report::failure_summary(&outcomes) {
        print!("{summary}");
    }
    if let Some(path) = &args.output_file {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        writeln!(file, "{}", report::json_record(&info, &m, &outcomes))?;
    }
    if m.completed == 0 {
        return Err("no request succeeded".into());
    }
    Ok(())
}

fn get_json(origin: &http::Origin, path: &str) -> BenchResult<Value> {
    const WAIT: Duration = Duration::from_secs(10);
    let at = format!("GET http://{}:{}{path}", origin.host, origin.port);
    let failed = |e: std::io::Error| match e.kind() {
        // A read timeout (EAGAIN on Linux): something listens but does not answer, e.g. a server still starting.
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("{at}: no answer within {} s (is the server still starting?)", WAIT.as_secs())
        }
        _ => format!("{at}: {e}"),
    };
    let response = http::request(origin, "GET", path, &[], b"", Some(WAIT)).map_err(failed)?;
    let status = response.status;
    let body = response.text().map_err(failed)?;
    if status != 200 {
        return Err(format!("{at}: HTTP {status}: {body}").into());
    }
    Ok(serde_json::from_str(&body)?)
}

fn first_served_model(origin: &http::Origin) -> BenchResult<String> {
    let models = get_json(origin, "/v1/models")?;
    models["data"][0]["id"].as_str().map(str::to_string).ok_or_else(|| "/v1/models lists no model; pass --model".into())
}

/// `--tokenizer`, else the server's own when `/get_model_info` names a local directory (glmv, SGLang), else the
/// demo tokenizer when the server is glmv's demo model.
fn load_tokenizer(origin: &http::Origin, path: Option<&std::path::Path>) -> BenchResult<Tokenizer> {
    if let Some(path) = path {
        return Ok(if path.is_dir() {
            Tokenizer::from_dir(path)?
        } else {
            Tokenizer::from_json(&std::fs::read_to_string(path)?)?
        });
    }
    let info = get_json(origin, "/get_model_info").ok();
    let model_path = info.as_ref().and_then(|i| i["tokenizer_path"].as_str().or(i["model_path"].as_str()));
    match model_path {
        Some(p) if std::path::Path::new(p).join("tokenizer.json").exists() => {
            Ok(Tokenizer::from_dir(std::path::Path::new(p))?)
        }
        Some(glmv_runtime::demo::DEMO_MODEL_NAME) => Ok(glmv_runtime::demo::tokenizer()?),
        _ => {
            Err("cannot find the server's tokenizer here; pass --tokenizer PATH (tokenizer.json or its directory)"
                .into())
        }
    }
}

fn build_dataset(args: &BenchArgs, tokenizer: &Tokenizer) -> BenchResult<Vec<BenchRequest>> {
    let lengths = RandomLengths {
        input_len: args.random_input_len,
        output_len: args.random_output_len,
        range_ratio: args.random_range_ratio,
    };
    let chat = args.backend == ApiKind::OpenaiChat;
    Ok(match args.dataset_name {
        DatasetName::Random => dataset::random(tokenizer, lengths, args.num_prompts, args.seed, chat)?,
        DatasetName::RandomImage => {
            if !chat {
                return Err("--dataset-name random-image needs --backend openai-chat".into());
            }
            let (width, height) = dataset::parse_resolution(&args.image_resolution)?;
            let spec = ImageSpec {
                count: args.image_count,
                width,
                height,
                png: args.image_format == ImageFormat::Png,
                noise: args.image_content == ImageContent::Random,
            };
            dataset::random_image(tokenizer, lengths, spec, args.num_prompts, args.seed)?
        }
        DatasetName::Jsonl => {
            let path = args.dataset_path.as_deref().ok_or("--dataset-name jsonl needs --dataset-path")?;
            if !chat {
                return Err("--dataset-name jsonl needs --backend openai-chat".into());
            }
            dataset::jsonl(path, tokenizer, args.random_output_len, args.num_prompts)?
        }
    })
}

/// Sends the first request(s) one by one, shortened, before anything is timed; a failure stops the benchmark
/// (bench_serving's "initial test run").
fn warm_up(endpoint: &Endpoint, requests: &[BenchRequest], count: usize, tokenizer: &Tokenizer) -> BenchResult<()> {
    for req in requests.iter().cycle().take(count) {
        let short = BenchRequest { output_len: req.output_len.min(16), ..req.clone() };
        let outcome = client::send(endpoint, &short, Instant::now(), tokenizer);
        if let Some(e) = outcome.error {
            return Err(format!("the warm-up request failed: {e}").into());
        }
    }
    Ok(())
}

/// How requests are released: Poisson arrivals (or all at once), and a cap on those in flight.
struct Schedule {
    request_rate: f64,
    max_concurrency: Option<usize>,
    seed: u64,
}

impl Schedule {
    /// Seconds to wait before each request: exponential gaps with mean 1/rate, none for an infinite rate.
    /// The first request goes at once and each later one after its gap, as bench_serving sleeps after each send.
    fn gaps(&self, n: usize) -> Vec<f64> {
        let mut rng = Rng::new(self.seed ^ 0x5eed_a221_7a15);
        (0..n)
            .map(|i| {
                if i > 0 && self.request_rate.is_finite() {
                    -(1.0 - rng.next_f32() as f64).ln() / self.request_rate
                } else {
                    0.0
                }
            })
            .collect()
    }
}

/// A counting semaphore for `--max-concurrency`.
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    fn acquire(&self) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
    }

    fn release(&self) {
        *self.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.freed.notify_one();
    }
}

/// Runs every request on its own thread as the schedule releases them; returns the outcomes in dataset order and
/// the benchmark's wall time.
fn run_requests(
    endpoint: &Endpoint,
    requests: &[BenchRequest],
    schedule: &Schedule,
    tokenizer: &Tokenizer,
    progress: bool,
) -> (Vec<RequestOutcome>, f64) {
    let slots = Slots { free: Mutex::new(schedule.max_concurrency.unwrap_or(usize::MAX)), freed: Condvar::new() };
    let gaps = schedule.gaps(requests.len());
    let (tx, rx) = mpsc::channel::<(usize, RequestOutcome)>();
    let start = Instant::now();
    let mut outcomes = vec![RequestOutcome::default(); requests.len()];
    std::thread::scope(|scope| {
        let slots = &slots;
        scope.spawn(move || {
            for (i, (req, gap)) in requests.iter().zip(&gaps).enumerate() {
                std::thread::sleep(Duration::from_secs_f64(*gap));
                slots.acquire();
                let sender = tx.clone();
                let spawned = std::thread::Builder::new().stack_size(256 << 10).spawn_scoped(scope, move || {
                    let outcome = client::send(endpoint, req, start, tokenizer);
                    slots.release();
                    let _ = sender.send((i, outcome));
                });
                if let Err(e) = spawned {
                    slots.release();
                    let failed =
                        RequestOutcome { error: Some(format!("could not start a thread: {e}")), ..Default::default() };
                    let _ = tx.send((i, failed));
                }
            }
        });
        for done in 1..=requests.len() {
            let Ok((i, outcome)) = rx.recv() else { break };
            outcomes[i] = outcome;
            if progress {
                progress_bar(done, requests.len(), start.elapsed());
            }
        }
    });
    let duration = start.elapsed().as_secs_f64();
    if progress {
        eprintln!();
    }
    (outcomes, duration)
}

fn progress_bar(done: usize, total: usize, elapsed: Duration) {
    const WIDTH: usize = 40;
    let filled = done * WIDTH / total.max(1);
    eprint!(
        "\r{:>3}% |{}{}| {done}/{total} [{:.1}s]",
        done * 100 / total.max(1),
        "#".repeat(filled),
        " ".repeat(WIDTH - filled),
        elapsed.as_secs_f64()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_gaps_have_the_asked_mean() {
        let s = Schedule { request_rate: 4.0, max_concurrency: None, seed: 3 };
        let gaps = s.gaps(20_001);
        assert_eq!(gaps[0], 0.0);
        let mean = gaps[1..].iter().sum::<f64>() / (gaps.len() - 1) as f64;
        assert!((mean - 0.25).abs() < 0.01, "{mean}");
        assert!(gaps.iter().all(|g| *g >= 0.0));
        let inf = Schedule { request_rate: f64::INFINITY, max_concurrency: None, seed: 3 };
        assert!(inf.gaps(5).iter().all(|g| *g == 0.0));
    }
}
