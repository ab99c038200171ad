//! The `glmv` command line. Thin: parses flags and calls the runtime.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Args, Parser, Subcommand};
use glmv_runtime::{
    backend::{Backend, CpuBackend},
    config::Fp8Activations,
    engine::sampler::SamplingParams,
    pipeline::{GenerateOptions, LoadFormat, LoadOptions, Pipeline, Prompt},
};
use serde_json::json;

mod bench;
mod config_cmd;
mod request_file;
mod serve_cmd;

#[derive(Parser)]
#[command(name = "glmv", version = concat!(env!("CARGO_PKG_VERSION"), " (backends: ", env!("GLMV_BACKENDS"), ")"))]
#[command(about = "Serve and run GLM-V vision-language models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a completion of a plain prompt.
    Generate(GenerateArgs),
    /// Print the logits of every prompt position.
    Logits(LogitsArgs),
    /// Serve the OpenAI-compatible API (drop-in for `python -m sglang.launch_server`).
    Serve(Box<serve_cmd::ServeArgs>),
    /// Benchmark an OpenAI-compatible server (glmv, SGLang, vLLM) with `sglang.bench_serving`'s figures.
    Bench(Box<bench::BenchArgs>),
    /// Print the launch command and memory plan of a model on a kind of GPU.
    Config(Box<config_cmd::ConfigArgs>),
}

/// `--kv-cache-dtype` as SGLang spells it (`glmv serve`, and `glmv config` which plans for it).
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum KvCacheDtype {
    /// BF16.
    Auto,
    Bf16,
    #[value(name = "fp8_e4m3", alias = "fp8")]
    Fp8E4m3,
}

impl KvCacheDtype {
    pub(crate) fn kv_dtype(self) -> glmv_runtime::backend::KvDtype {
        match self {
            KvCacheDtype::Auto | KvCacheDtype::Bf16 => glmv_runtime::backend::KvDtype::Bf16,
            KvCacheDtype::Fp8E4m3 => glmv_runtime::backend::KvDtype::Fp8E4m3,
        }
    }
}

/// `--fp8-activations`: what an FP8 checkpoint's linears do with their inputs.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Fp8ActivationsArg {
    /// Multiply the exact activations by the dequantised FP8 weights (what transformers computes).
    Exact,
    /// Quantise the activations to FP8 as the checkpoint's quantization_config declares (dynamic per token for
    /// compressed-tensors, per token and 128 columns for block FP8): what vLLM and SGLang compute.
    Checkpoint,
}

impl Fp8ActivationsArg {
    pub(crate) fn mode(self) -> Fp8Activations {
        match self {
            Fp8ActivationsArg::Exact => Fp8Activations::Exact,
            Fp8ActivationsArg::Checkpoint => Fp8Activations::Checkpoint,
        }
    }
}

#[derive(Args)]
struct ModelArgs {
    /// Checkpoint directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model_path: PathBuf,
    /// Where to run: `auto` takes the first CUDA device when this build has kernels and a driver is present,
    /// else the CPU.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// FP8 checkpoints: `exact` activations, or quantised as the `checkpoint` declares.
    #[arg(long, value_enum, default_value_t = Fp8ActivationsArg::Exact)]
    fp8_activations: Fp8ActivationsArg,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Device {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text, tokenised as is (no chat template).
    #[arg(long, conflicts_with = "request", required_unless_present = "request")]
    prompt: Option<String>,
    /// An OpenAI chat completion request body (messages with images and videos, tools, sampling fields), run
    /// through the chat template and media preprocessing as `glmv serve` does. Flags given explicitly override
    /// its sampling fields.
    #[arg(long)]
    request: Option<PathBuf>,
    /// Defaults to the request's `max_tokens`, else 128.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Sampling temperature; 0 is greedy. Defaults to generation_config.json's, else 1.0.
    #[arg(long)]
    temperature: Option<f32>,
    /// Defaults to generation_config.json's, else 1.0.
    #[arg(long)]
    top_p: Option<f32>,
    /// Defaults to generation_config.json's, else 0 (off).
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print {"prompt_token_ids", "output_token_ids", "text"} as JSON instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, conflicts_with_all = ["input_ids", "request"], required_unless_present_any = ["input_ids", "request"])]
    prompt: Option<String>,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',', conflicts_with = "request")]
    input_ids: Option<Vec<u32>>,
    /// An OpenAI chat completion request body, run through the chat template and media preprocessing as
    /// `glmv serve` does (see `glmv generate --request`).
    #[arg(long)]
    request: Option<PathBuf>,
    /// Prefill chunk size in tokens (0: the whole prompt in one step).
    #[arg(long, default_value_t = 0)]
    chunk: usize,
    /// Print {"prompt_token_ids", "logits"} as JSON instead of the top tokens of each position.
    #[arg(long)]
    json: bool,
    /// Without --json: how many top tokens to show per position.
    #[arg(long, default_value_t = 5)]
    top: usize,
}

/// Calls the generic command `$f(backend, $args)` on the backend `$device` selects.
#[macro_export]
macro_rules! on_backend {
    ($device:expr, $f:ident, $args:expr) => {
        on_backend!($device, None, $f, $args)
    };
    ($device:expr, $graph_max_rows:expr, $f:ident, $args:expr) => {
        match pick_backend($device, $graph_max_rows) {
            Err(e) => Err(e),
            Ok(AnyBackend::Cpu(b)) => $f(b, $args),
            #[cfg(feature = "cuda")]
            Ok(AnyBackend::Cuda(b)) => $f(*b, $args),
        }
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => on_backend!(args.model.device, generate, &args),
        Command::Logits(args) => on_backend!(args.model.device, logits, &args),
        Command::Serve(args) => serve_cmd::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Config(args) => config_cmd::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) type CliResult = Result<(), Box<dyn std::error::Error>>;

/// The backends this binary can run on.
pub(crate) enum AnyBackend {
    Cpu(CpuBackend),
    #[cfg(feature = "cuda")]
    Cuda(Box<glmv_runtime::backend::cuda::CudaBackend>),
}

/// The backend for `device`. `graph_max_rows`: the largest decode step recorded as a CUDA graph (`Some(0)`: none;
/// `None`: the backend's default).
pub(crate) fn pick_backend(
    device: Device,
    graph_max_rows: Option<usize>,
) -> Result<AnyBackend, Box<dyn std::error::Error>> {
    #[cfg(feature = "cuda")]
    if device != Device::Cpu {
        match glmv_runtime::backend::cuda::CudaBackend::new(0) {
            Ok(mut b) => {
                eprintln!("[glmv] using CUDA device 0: {}", b.device_name());
                if let Some(rows) = graph_max_rows {
                    b.set_graph_max_rows(rows);
                }
                if !b.kernel_paths().cuda_graphs || graph_max_rows == Some(0) {
                    eprintln!("[glmv] decode steps run without CUDA graphs");
                }
                let generic = b.kernel_paths().generic();
                if !generic.is_empty() {
                    let env = glmv_runtime::backend::cuda::GENERIC_ENV;
                    eprintln!("[glmv] {env}: generic CUDA kernels instead of {}", generic.join(", "));
                }
                return Ok(AnyBackend::Cuda(Box::new(b)));
            }
            Err(e) if device == Device::Cuda => return Err(e.into()),
            Err(e) => eprintln!("[glmv] no CUDA device ({e}); running on the CPU"),
        }
    }
    #[cfg(not(feature = "cuda"))]
    let _ = graph_max_rows;
    #[cfg(not(feature = "cuda"))]
    if device == Device::Cuda {
        return Err("this glmv was built without the CUDA backend (cargo build --features cuda)".into());
    }
    Ok(AnyBackend::Cpu(CpuBackend))
}

fn load<B: Backend>(model: &ModelArgs, backend: B) -> Result<Pipeline<B>, glmv_runtime::Error> {
    let options = LoadOptions { format: LoadFormat::Safetensors, fp8_activations: model.fp8_activations.mode() };
    load_with(&model.model_path, options, backend)
}

pub(crate) fn load_with<B: Backend>(
    path: &Path,
    options: LoadOptions,
    backend: B,
) -> Result<Pipeline<B>, glmv_runtime::Error> {
    let start = std::time::Instant::now();
    let mut progress = |msg: &str| eprintln!("[glmv] {msg}");
    let pipeline = Pipeline::load_with(path, options, backend, &mut progress)?;
    eprintln!("[glmv] model ready in {:.2}s on the {} backend", start.elapsed().as_secs_f64(), pipeline.backend.name());
    Ok(pipeline)
}

fn generate<B: Backend>(backend: B, args: &GenerateArgs) -> CliResult {
    let p = load(&args.model, backend)?;
    let defaults = &p.config.generation;
    let (prompt, from_request) = match (&args.request, &args.prompt) {
        (Some(path), _) => {
            let r = request_file::load_request(path, &args.model.model_path, &p.config)?;
            (r.prompt, Some(r.request.generation))
        }
        (None, Some(text)) => (Prompt::text(p.tokenizer.encode(text)?), None),
        (None, None) => unreachable!("clap requires --prompt or --request"),
    };
    let base = from_request.as_ref().map(|g| g.sampling(defaults, args.seed)).unwrap_or_else(|| SamplingParams {
        temperature: defaults.temperature.map(|t| t as f32).unwrap_or(1.0),
        top_p: defaults.top_p.map(|t| t as f32).unwrap_or(1.0),
        top_k: defaults.top_k.unwrap_or(0),
        seed: args.seed,
        ..Default::default()
    });
    let sampling = SamplingParams {
        temperature: args.temperature.unwrap_or(base.temperature),
        top_p: args.top_p.unwrap_or(base.top_p),
        top_k: args.top_k.unwrap_or(base.top_k),
        ..base
    };
    let max_tokens = args.max_tokens.or(from_request.as_ref().and_then(|g| g.max_tokens)).unwrap_or(128);
    let ignore_eos = args.ignore_eos || from_request.as_ref().is_some_and(|g| g.ignore_eos);
    let prompt_ids = prompt.ids.clone();
    let options = GenerateOptions { max_tokens, sampling, ignore_eos };
    let mut printed = String::new();
    let mut ids = Vec::new();
    let mut stdout = std::io::stdout();
    let output = p.generate(&prompt, &[], &options, &mut |token, _| {
        if args.json {
            return;
        }
        // Print whatever new text the ids decode to; a partial UTF-8 sequence waits for its next token.
        ids.push(token);
        if let Ok(text) = p.tokenizer.decode(&ids, true) {
            if text.len() > printed.len() && !text.ends_with('\u{fffd}') && text.starts_with(printed.as_str()) {
                let _ = write!(stdout, "{}", &text[printed.len()..]);
                let _ = stdout.flush();
                printed = text;
            }
        }
    })?;
    let text = p.tokenizer.decode(&output, true)?;
    if args.json {
        println!("{}", json!({"prompt_token_ids": prompt_ids, "output_token_ids": output, "text": text}));
    } else {
        println!("{}", text.strip_prefix(printed.as_str()).unwrap_or(""));
    }
    Ok(())
}

fn logits<B: Backend>(backend: B, args: &LogitsArgs) -> CliResult {
    let p = load(&args.model, backend)?;
    let prompt = match (&args.request, &args.input_ids, &args.prompt) {
        (Some(path), _, _) => request_file::load_request(path, &args.model.model_path, &p.config)?.prompt,
        (None, Some(ids), _) => Prompt::text(ids.clone()),
        (None, None, Some(prompt)) => Prompt::text(p.tokenizer.encode(prompt)?),
        (None, None, None) => unreachable!("clap requires --prompt, --input-ids or --request"),
    };
    let logits = p.prompt_logits(&prompt, args.chunk)?;
    let ids = prompt.ids;
    let vocab = p.model.vocab_size();
    let rows: Vec<&[f32]> = logits.chunks(vocab).collect();
    if args.json {
        println!("{}", json!({"prompt_token_ids": ids, "logits": rows}));
        return Ok(());
    }
    for (pos, (id, row)) in ids.iter().zip(&rows).enumerate() {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let top: Vec<String> = order
            .iter()
            .take(args.top)
            .map(|&t| format!("{:?} {:.3}", p.tokenizer.decode(&[t as u32], false).unwrap_or_default(), row[t]))
            .collect();
        let token = p.tokenizer.decode(&[*id], false).unwrap_or_default();
        println!("{pos:>5} {id:>7} {token:?} -> {}", top.join(", "));
    }
    Ok(())
}
