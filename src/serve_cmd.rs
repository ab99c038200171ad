//! `glmv serve`: flags with SGLang's names, turned into a [`ServeConfig`].
use std::{
    path::PathBuf,
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use clap::Args;
use glmv_runtime::{
    backend::Backend,
    config::plan,
    demo,
    pipeline::{LoadFormat, LoadOptions, Pipeline},
};
use glmv_server::{
    http::Limits,
    log::{log, Level},
    serve::{serve, ServeConfig},
};

use crate::{load_with, on_backend, pick_backend, AnyBackend, CliResult, Device};

#[derive(Args)]
pub struct ServeArgs {
    /// Checkpoint directory. Without it the built-in random demo model (`glmv-demo-random`) is served.
    #[arg(long)]
    model_path: Option<PathBuf>,
    /// The model name `/v1/models` reports and requests may name (default: the checkpoint directory's name).
    #[arg(long)]
    served_model_name: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 30000)]
    port: u16,
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// `glm45`: split `<think>...</think>` into `reasoning_content`.
    #[arg(long, value_parser = ["glm45"])]
    reasoning_parser: Option<String>,
    /// `glm45`: parse `<tool_call>` blocks into `tool_calls`.
    #[arg(long, value_parser = ["glm45"])]
    tool_call_parser: Option<String>,
    /// Longest prompt + completion (default: the model's max_position_embeddings).
    #[arg(long)]
    context_length: Option<usize>,
    /// Sequences decoded together (fixed slots).
    #[arg(long, default_value_t = plan::MAX_RUNNING_REQUESTS)]
    max_running_requests: usize,
    /// Prompt tokens prefilled per step.
    #[arg(long, default_value_t = plan::CHUNKED_PREFILL_SIZE)]
    chunked_prefill_size: usize,
    /// Fraction of the device's memory for weights and KV cache together.
    #[arg(long, default_value_t = plan::MEM_FRACTION_STATIC)]
    mem_fraction_static: f64,
    /// Caps the KV cache at this many tokens.
    #[arg(long)]
    max_total_tokens: Option<usize>,
    /// KV cache storage: auto (bf16), bf16, fp8_e4m3.
    #[arg(long, value_enum, default_value_t = crate::KvCacheDtype::Auto)]
    kv_cache_dtype: crate::KvCacheDtype,
    /// Worker threads that fetch and preprocess media and build prompts.
    #[arg(long, default_value_t = 32)]
    mm_max_concurrent_calls: usize,
    /// Seconds one media fetch may take.
    #[arg(long, default_value_t = 10.0)]
    mm_per_request_timeout: f64,
    /// `file://` media are read only from under this directory (off by default).
    #[arg(long)]
    allowed_local_media_path: Option<PathBuf>,
    /// Largest media item in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    max_media_bytes: usize,
    /// Largest decoded picture (width x height) accepted before resizing; PIL's decompression-bomb threshold by
    /// default. Larger pictures are refused from their header, before any pixel is decoded.
    #[arg(long, default_value_t = 89_478_485)]
    max_media_pixels: u64,
    /// Most frames a video may have (MP4/H.264): every frame is decoded, whatever the sampling keeps.
    #[arg(long, default_value_t = glmv_runtime::media::MediaLimits::default().max_video_frames)]
    max_video_frames: u64,
    /// Most pixels decoding one video may produce (frames x width x height): bounds its decoding time. The default
    /// is 18,000 frames of 1280x720.
    #[arg(long, default_value_t = glmv_runtime::media::MediaLimits::default().max_video_decoded_pixels)]
    max_video_decoded_pixels: u64,
    #[arg(long, default_value_t = 32)]
    max_images_per_request: usize,
    #[arg(long, default_value_t = 4)]
    max_videos_per_request: usize,
    /// Serve Prometheus metrics at /metrics.
    #[arg(long)]
    enable_metrics: bool,
    /// Report `usage.prompt_tokens_details.cached_tokens`.
    #[arg(long)]
    enable_cache_report: bool,
    /// Require `Authorization: Bearer KEY` on the API routes.
    #[arg(long)]
    api_key: Option<String>,
    #[arg(long, default_value = "info")]
    log_level: String,
    #[arg(long, default_value_t = 16 * 1024)]
    max_header_bytes: usize,
    #[arg(long, default_value_t = 64 << 20)]
    max_body_bytes: usize,
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Seconds a request's head and body may take to arrive.
    #[arg(long, default_value_t = 30.0)]
    request_timeout: f64,
    /// Seconds an idle keep-alive connection stays open.
    #[arg(long, default_value_t = 75.0)]
    idle_timeout: f64,
    /// `auto`/`safetensors` read the checkpoint's weights; `dummy` makes seeded random weights of the shapes and
    /// dtypes config.json implies (for benchmarks: only config.json, the tokenizer and the template are read; the
    /// CUDA backend makes the projections' values on the device).
    #[arg(long, default_value = "auto", value_parser = ["auto", "safetensors", "dummy"])]
    load_format: String,
    /// FP8 checkpoints: `exact` multiplies exact activations by the dequantised weights (transformers' numbers);
    /// `checkpoint` quantises them to FP8 as the checkpoint's quantization_config declares (vLLM's and SGLang's).
    #[arg(long, value_enum, default_value_t = crate::Fp8ActivationsArg::Exact)]
    fp8_activations: crate::Fp8ActivationsArg,
    /// Accepted for SGLang compatibility; see the startup log for what each does on this build.
    #[arg(long, alias = "tp-size")]
    tp: Option<usize>,
    #[arg(long, alias = "ep-size")]
    ep: Option<usize>,
    #[arg(long, alias = "dp-size")]
    dp: Option<usize>,
    #[arg(long)]
    attention_backend: Option<String>,
    #[arg(long)]
    mm_attention_backend: Option<String>,
    /// Decode steps of up to this many sequences run as CUDA graphs (default 256), recorded at start-up up to
    /// `--max-running-requests`.
    #[arg(long)]
    cuda_graph_max_bs: Option<usize>,
    /// Run every decode step kernel by kernel (same as GLMV_CUDA_GENERIC=cuda-graphs).
    #[arg(long)]
    disable_cuda_graph: bool,
    #[arg(long)]
    trust_remote_code: bool,
    #[arg(long)]
    quantization: Option<String>,
}

impl ServeArgs {
    /// The largest decode step recorded as a CUDA graph: none with `--disable-cuda-graph`, else
    /// `--cuda-graph-max-bs` or the backend's default.
    fn graph_max_rows(&self) -> Option<usize> {
        if self.disable_cuda_graph {
            Some(0)
        } else {
            self.cuda_graph_max_bs
        }
    }

    /// What the SGLang-only flags do here, one log line each.
    fn explain_compat_flags(&self) {
        let note = |flag: String, what: &str| log(Level::Warning, &format!("{flag}: {what}"));
        for (name, value) in [("--tp", self.tp), ("--ep", self.ep), ("--dp", self.dp)] {
            if let Some(n) = value.filter(|&n| n > 1) {
                note(
                    format!("{name} {n}"),
                    "this build serves from one device; multi-GPU parallelism is not implemented, ignored",
                );
            }
        }
        for (name, value) in [
            ("--attention-backend", &self.attention_backend),
            ("--mm-attention-backend", &self.mm_attention_backend),
            ("--quantization", &self.quantization),
        ] {
            if let Some(v) = value {
                note(
                    format!("{name} {v}"),
                    "glmv has one built-in kernel set and reads quantisation from the checkpoint; ignored",
                );
            }
        }
        if self.trust_remote_code {
            note("--trust-remote-code".into(), "glmv runs no checkpoint code; ignored");
        }
    }
}

pub fn run(args: &ServeArgs) -> CliResult {
    let level = Level::parse(&args.log_level).ok_or_else(|| format!("unknown --log-level {}", args.log_level))?;
    glmv_server::log::set_level(level);
    args.explain_compat_flags();
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, shutdown.clone())?;
    }
    let (model_dir, name) = match &args.model_path {
        Some(path) => {
            let name = args.served_model_name.clone().unwrap_or_else(|| path.display().to_string());
            (path.clone(), name)
        }
        None => {
            let dir = std::env::temp_dir().join(format!("glmv-demo-{}", std::process::id()));
            demo::write_demo_checkpoint(&dir)?;
            log(
                Level::Warning,
                &format!(
                    "no --model-path: serving the built-in demo model {} (random weights, random answers). \
                     Serve a real checkpoint with `glmv serve --model-path zai-org/GLM-4.5V-FP8-dir --reasoning-parser glm45 --tool-call-parser glm45`",
                    demo::DEMO_MODEL_NAME
                ),
            );
            (dir, args.served_model_name.clone().unwrap_or_else(|| demo::DEMO_MODEL_NAME.to_string()))
        }
    };
    let request = ServeRequest { args, model_dir, name, shutdown };
    let result = on_backend!(args.device, args.graph_max_rows(), serve_on, &request);
    if args.model_path.is_none() {
        let _ = std::fs::remove_dir_all(&request.model_dir);
    }
    result
}

struct ServeRequest<'a> {
    args: &'a ServeArgs,
    model_dir: PathBuf,
    name: String,
    shutdown: Arc<AtomicBool>,
}

fn serve_on<B: Backend + 'static>(backend: B, req: &ServeRequest) -> CliResult
where
    B::KvCache: 'static,
{
    let args = req.args;
    let format = match args.load_format.as_str() {
        "dummy" => LoadFormat::Dummy { seed: 0 },
        _ => LoadFormat::Safetensors,
    };
    let options = LoadOptions { format, fp8_activations: args.fp8_activations.mode() };
    let mut pipeline: Pipeline<B> = load_with(&req.model_dir, options, backend)?;
    let kv_dtype = args.kv_cache_dtype.kv_dtype();
    pipeline.kv_dtype = kv_dtype;
    let block_size = plan::KV_BLOCK_SIZE;
    // SGLang's meaning: weights and KV cache together take this fraction of the device's memory. What is in use
    // now (the weights, plus anything else on the device) comes off the KV share.
    let (available, total) = pipeline.backend.memory_info()?;
    let budget = (args.mem_fraction_static * total as f64) as usize;
    let mut kv_bytes = budget.saturating_sub(total.saturating_sub(available));
    if let Some(tokens) = args.max_total_tokens {
        let per_block = glmv_runtime::engine::Engine::blocks_for_budget(&pipeline, 1 << 30, block_size, kv_dtype);
        kv_bytes = kv_bytes.min(((tokens / block_size) as u128 * (1u128 << 30) / per_block.max(1) as u128) as usize);
    }
    if kv_bytes == 0 {
        return Err(format!(
            "--mem-fraction-static {} leaves no memory for the KV cache ({} of {} bytes already in use)",
            args.mem_fraction_static,
            total - available,
            total
        )
        .into());
    }
    let config = ServeConfig {
        host: args.host.clone(),
        port: args.port,
        served_model_name: req.name.clone(),
        model_path: args.model_path.as_ref().map_or(req.name.clone(), |p| p.display().to_string()),
        api_key: args.api_key.clone(),
        reasoning_parser: args.reasoning_parser.is_some(),
        tool_call_parser: args.tool_call_parser.is_some(),
        enable_metrics: args.enable_metrics,
        enable_cache_report: args.enable_cache_report,
        context_length: args.context_length,
        max_running_requests: args.max_running_requests.max(1),
        chunked_prefill_size: args.chunked_prefill_size.max(16),
        kv_cache_bytes: kv_bytes,
        kv_dtype,
        block_size,
        mm_max_concurrent_calls: args.mm_max_concurrent_calls.max(1),
        mm_per_request_timeout: Duration::from_secs_f64(args.mm_per_request_timeout.max(0.001)),
        allowed_local_media_path: args.allowed_local_media_path.clone(),
        max_media_bytes: args.max_media_bytes,
        max_media_pixels: args.max_media_pixels,
        max_video_frames: args.max_video_frames,
        max_video_decoded_pixels: args.max_video_decoded_pixels,
        max_images_per_request: args.max_images_per_request,
        max_videos_per_request: args.max_videos_per_request,
        limits: Limits {
            max_header_bytes: args.max_header_bytes,
            max_body_bytes: args.max_body_bytes,
            ..Limits::default()
        },
        max_connections: args.max_connections.max(1),
        request_timeout: Duration::from_secs_f64(args.request_timeout.max(0.001)),
        idle_timeout: Duration::from_secs_f64(args.idle_timeout.max(0.001)),
        load_format: args.load_format.clone(),
    };
    serve(pipeline, &req.model_dir, &config, req.shutdown.clone())
}
