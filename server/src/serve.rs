//! `glmv serve`: a loaded pipeline turned into a running server. The engine runs on its own thread, prompts are
//! built on worker threads, and one mio thread serves every connection.
use std::{
    net::{SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use glmv_runtime::{
    backend::{Backend, KvDtype},
    engine::{Engine, EngineConfig, EngineHandle},
    media::MediaLimits,
    pipeline::Pipeline,
    text::{ChatTemplate, Tokenizer},
};

use crate::{
    event_loop::{Server, ServerConfig},
    fetch::{FetchOptions, Fetcher},
    http::Limits,
    log::{log, Level},
    media::ServerMedia,
    metrics::Metrics,
    openai::{prompt::PromptBuilder, reply::ReplyContext},
    service::{App, ServeOptions},
    workers::Workers,
};

/// Server settings, named after SGLang's flags.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    pub served_model_name: String,
    pub model_path: String,
    pub api_key: Option<String>,
    pub reasoning_parser: bool,
    pub tool_call_parser: bool,
    pub enable_metrics: bool,
    pub enable_cache_report: bool,
    pub context_length: Option<usize>,
    pub max_running_requests: usize,
    pub chunked_prefill_size: usize,
    /// Bytes of KV cache.
    pub kv_cache_bytes: usize,
    pub kv_dtype: KvDtype,
    pub block_size: usize,
    pub mm_max_concurrent_calls: usize,
    pub mm_per_request_timeout: Duration,
    pub allowed_local_media_path: Option<PathBuf>,
    pub max_media_bytes: usize,
    pub max_media_pixels: u64,
    pub max_video_frames: u64,
    pub max_video_decoded_pixels: u64,
    pub max_images_per_request: usize,
    pub max_videos_per_request: usize,
    pub limits: Limits,
    pub max_connections: usize,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub load_format: String,
}

pub type ServeResult = Result<(), Box<dyn std::error::Error>>;

fn resolve(host: &str, port: u16) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    (host, port).to_socket_addrs()?.next().ok_or_else(|| format!("cannot resolve --host {host}").into())
}

/// Serves `pipeline` (loaded from `model_dir`) until SIGINT/SIGTERM sets `shutdown`.
pub fn serve<B: Backend + 'static>(
    pipeline: Pipeline<B>,
    model_dir: &Path,
    cfg: &ServeConfig,
    shutdown: Arc<AtomicBool>,
) -> ServeResult
where
    B::KvCache: 'static,
{
    let tokenizer = Arc::new(Tokenizer::from_dir(model_dir)?);
    let template = ChatTemplate::from_dir(model_dir)?;
    let model_config = pipeline.config.clone();
    let context_length = cfg.context_length.unwrap_or(model_config.text.max_position_embeddings);
    let kv_blocks = Engine::blocks_for_budget(&pipeline, cfg.kv_cache_bytes, cfg.block_size, cfg.kv_dtype);
    // More blocks than every slot filled to the context length can never be used.
    let useful = cfg.max_running_requests * context_length.div_ceil(cfg.block_size);
    let num_blocks = kv_blocks.min(useful).max(context_length.div_ceil(cfg.block_size));
    let engine_config = EngineConfig {
        max_running: cfg.max_running_requests,
        prefill_budget: cfg.chunked_prefill_size,
        max_context: context_length,
        block_size: cfg.block_size,
        num_blocks,
        mm_cache_bytes: 256 << 20,
        kv_dtype: cfg.kv_dtype,
    };
    let backend_name = pipeline.backend.name().to_string();
    let start = std::time::Instant::now();
    let engine = Engine::new(pipeline, engine_config)?;
    if let Some(largest) = engine.decode_steps_ahead.last() {
        log(
            Level::Info,
            &format!(
                "decode steps of 1 to {largest} sequences recorded ahead (CUDA graphs) in {:.2}s",
                start.elapsed().as_secs_f64()
            ),
        );
    }
    let addr = resolve(&cfg.host, cfg.port)?;
    let mut server = Server::bind(ServerConfig {
        addr,
        limits: cfg.limits,
        max_connections: cfg.max_connections,
        request_timeout: cfg.request_timeout,
        idle_timeout: cfg.idle_timeout,
    })
    .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let waker = server.waker();
    let engine_waker = waker.clone();
    let engine = Arc::new(EngineHandle::spawn(
        engine,
        Box::new(move || {
            let _ = engine_waker.wake();
        }),
    ));
    let fetcher = Fetcher::new(FetchOptions {
        allowed_local_path: match &cfg.allowed_local_media_path {
            Some(p) => Some(p.canonicalize().map_err(|e| format!("--allowed-local-media-path {}: {e}", p.display()))?),
            None => None,
        },
        max_bytes: cfg.max_media_bytes,
        timeout: cfg.mm_per_request_timeout,
        max_redirects: 3,
    });
    let limits = MediaLimits {
        max_encoded_bytes: cfg.max_media_bytes,
        max_pixels: cfg.max_media_pixels,
        max_video_frames: cfg.max_video_frames,
        max_video_decoded_pixels: cfg.max_video_decoded_pixels,
        ..MediaLimits::default()
    };
    let media = ServerMedia::new(fetcher, limits, model_dir, &model_config, tokenizer.clone())?;
    let builder = Arc::new(PromptBuilder {
        tokenizer: tokenizer.clone(),
        template,
        tokens: model_config.tokens.clone(),
        media: Arc::new(media),
        max_images: cfg.max_images_per_request,
        max_videos: cfg.max_videos_per_request,
    });
    let metrics = Arc::new(Metrics::new(&cfg.served_model_name));
    let reply = Arc::new(ReplyContext { tokenizer, metrics, cache_report: cfg.enable_cache_report });
    let options = ServeOptions {
        served_model_name: cfg.served_model_name.clone(),
        model_path: cfg.model_path.clone(),
        api_key: cfg.api_key.clone(),
        reasoning_parser: cfg.reasoning_parser,
        tool_call_parser: cfg.tool_call_parser,
        enable_metrics: cfg.enable_metrics,
        context_length,
        generation_defaults: model_config.generation.clone(),
        architecture: model_config.architecture.clone(),
        model_type: format!("{:?}", model_config.family),
        load_format: cfg.load_format.clone(),
        capacity_tokens: num_blocks * cfg.block_size,
        block_size: cfg.block_size,
    };
    let workers = Workers::new(cfg.mm_max_concurrent_calls)?;
    let mut app = App::new(options, engine, builder, reply, workers, waker);
    let listen = server.local_addr()?;
    log(
        Level::Info,
        &format!(
            "serving {} ({}, weights {}) on the {backend_name} backend: KV cache {} tokens ({:?}, {} blocks of {}), {} slots, context {context_length}, chunked prefill {}, listening on http://{listen}",
            cfg.served_model_name,
            model_config.architecture,
            match &model_config.quantization {
                None => "bf16".to_string(),
                Some(q) => format!("{q:?}"),
            },
            num_blocks * cfg.block_size,
            cfg.kv_dtype,
            num_blocks,
            cfg.block_size,
            cfg.max_running_requests,
            cfg.chunked_prefill_size,
        ),
    );
    server.run(&mut app, &shutdown, Duration::from_secs(30))?;
    log(Level::Info, "shut down");
    Ok(())
}
