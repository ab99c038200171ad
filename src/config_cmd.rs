//! `glmv config`: the launch command and memory plan for a known model on a kind of GPU (the SGLang cookbooks'
//! interactive command generator, with the arithmetic shown). The plan itself is `glmv_runtime::config::plan`.
use std::{fmt::Write as _, io::Write as _, path::PathBuf};

use clap::{builder::PossibleValuesParser, Args};
use glmv_runtime::{
    backend::KvDtype,
    config::{
        known::{KnownModel, Precision},
        plan::{self, Hardware, Plan, PlanOptions, Split},
        Family, ModelConfig,
    },
    demo,
};
use serde_json::{json, Value};

use crate::CliResult;

#[derive(Args)]
pub struct ConfigArgs {
    #[arg(long, value_parser = PossibleValuesParser::new(KnownModel::ALL.map(KnownModel::name)))]
    model: String,
    #[arg(long, value_parser = PossibleValuesParser::new(Hardware::ALL.map(Hardware::name)))]
    hardware: String,
    /// The checkpoint's precision: the BF16 checkpoint or its FP8 sibling.
    #[arg(long, value_parser = ["bf16", "fp8"])]
    quantization: String,
    /// GPUs (tensor-parallel degree).
    #[arg(long, default_value_t = 1)]
    gpus: usize,
    /// The longest sequence that must fit (default: the model's, shortened to what the KV cache holds).
    #[arg(long)]
    context_length: Option<usize>,
    /// Fraction of each GPU's memory for weights and KV cache, as `glmv serve --mem-fraction-static`.
    #[arg(long, default_value_t = plan::MEM_FRACTION_STATIC)]
    mem_fraction_static: f64,
    /// KV cache storage, as `glmv serve --kv-cache-dtype`.
    #[arg(long, value_enum, default_value_t = crate::KvCacheDtype::Auto)]
    kv_cache_dtype: crate::KvCacheDtype,
    /// Prefill chunk the activation estimate is for, as `glmv serve --chunked-prefill-size`.
    #[arg(long, default_value_t = plan::CHUNKED_PREFILL_SIZE)]
    chunked_prefill_size: usize,
    /// Memory per GPU in GB (1e9 B) instead of the vendor's figure for --hardware (e.g. what the driver reports).
    #[arg(long)]
    gpu_memory_gb: Option<f64>,
    /// Print the plan as one JSON object.
    #[arg(long)]
    json: bool,
    /// Also write a weightless checkpoint directory of this model's config (`quantization_config` included for
    /// fp8), tokenizer and template, for `glmv serve --model-path DIR --load-format dummy`.
    #[arg(long)]
    write_dummy_checkpoint: Option<PathBuf>,
}

/// The requested plan and, when it does not fit, the smallest GPU count of the same kind that does.
struct Report {
    model: KnownModel,
    precision: Precision,
    hardware: Hardware,
    config: ModelConfig,
    requested: Plan,
    proposed: Option<Plan>,
}

impl Report {
    /// The plan to launch: the requested one if it fits, else the proposal.
    fn launchable(&self) -> Option<&Plan> {
        if self.requested.fits() {
            Some(&self.requested)
        } else {
            self.proposed.as_ref()
        }
    }
}

pub fn run(args: &ConfigArgs) -> CliResult {
    let model = KnownModel::from_name(&args.model).ok_or_else(|| format!("unknown --model {}", args.model))?;
    let hardware =
        Hardware::from_name(&args.hardware).ok_or_else(|| format!("unknown --hardware {}", args.hardware))?;
    let precision = if args.quantization == "fp8" { Precision::Fp8 } else { Precision::Bf16 };
    if !(args.mem_fraction_static > 0.0 && args.mem_fraction_static <= 1.0) {
        return Err(format!("--mem-fraction-static must be in (0, 1], got {}", args.mem_fraction_static).into());
    }
    let gpu_bytes = match args.gpu_memory_gb {
        Some(gb) if gb > 0.0 => (gb * 1e9).round() as u64,
        Some(gb) => return Err(format!("--gpu-memory-gb must be positive, got {gb}").into()),
        None => hardware.memory_bytes(),
    };
    let config_json = model.config_json(precision)?;
    let config = ModelConfig::from_json(&config_json, None)?;
    let options = PlanOptions {
        gpus: args.gpus,
        gpu_bytes,
        mem_fraction_static: args.mem_fraction_static,
        kv_dtype: args.kv_cache_dtype.kv_dtype(),
        context_length: args.context_length,
        chunked_prefill_size: args.chunked_prefill_size,
    };
    let requested = Plan::new(&config, options);
    let proposed = if requested.fits() { None } else { plan::smallest_fit(&config, options, args.gpus + 1) };
    let report = Report { model, precision, hardware, config, requested, proposed };
    if let Some(dir) = &args.write_dummy_checkpoint {
        demo::write_shapes_checkpoint(dir, &config_json)?;
    }
    let text = match args.json {
        true => serde_json::to_string_pretty(&to_json(&report, args))? + "\n",
        false => render(&report, args),
    };
    // A reader that stops early (`| head`) is not an error.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `glmv serve` with the flags the plan implies (SGLang's names, as `glmv serve` accepts them).
fn launch_command(report: &Report, plan: &Plan, args: &ConfigArgs) -> String {
    let o = &plan.options;
    let mut cmd = format!("glmv serve --model-path {}", report.model.checkpoint(report.precision));
    if o.gpus > 1 {
        let _ = write!(cmd, " --tp {}", o.gpus);
    }
    cmd.push_str(" --reasoning-parser glm45 --tool-call-parser glm45");
    if args.context_length.is_some() || plan.max_context < report.config.text.max_position_embeddings {
        let _ = write!(cmd, " --context-length {}", plan.max_context);
    }
    if o.mem_fraction_static != plan::MEM_FRACTION_STATIC {
        let _ = write!(cmd, " --mem-fraction-static {}", o.mem_fraction_static);
    }
    if o.kv_dtype == KvDtype::Fp8E4m3 {
        cmd.push_str(" --kv-cache-dtype fp8_e4m3");
    }
    if o.chunked_prefill_size != plan::CHUNKED_PREFILL_SIZE {
        let _ = write!(cmd, " --chunked-prefill-size {}", o.chunked_prefill_size);
    }
    cmd
}

fn gb(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / 1e9)
}

/// 1234567 -> "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn model_line(c: &ModelConfig) -> String {
    let t = &c.text;
    let layers = match &t.moe {
        Some(m) => {
            let dense = (0..t.num_hidden_layers).filter(|&l| !t.is_moe_layer(l)).count();
            format!(
                "{} layers ({dense} dense, {} MoE: {} experts, top-{}, {} shared)",
                t.num_hidden_layers,
                t.num_hidden_layers - dense,
                m.n_routed_experts,
                m.num_experts_per_tok,
                m.n_shared_experts
            )
        }
        None => format!("{} dense layers", t.num_hidden_layers),
    };
    let family = match c.family {
        Family::Glm4vMoe => "Glm4vMoe",
        Family::Glm4v => "Glm4v",
    };
    format!(
        "{family}, {layers}, hidden {}, {} heads / {} kv heads x {}, vocab {}, context {}; vision {} blocks x {}",
        t.hidden_size,
        t.num_attention_heads,
        t.num_key_value_heads,
        t.head_dim,
        t.vocab_size,
        t.max_position_embeddings,
        c.vision.depth,
        c.vision.hidden_size
    )
}

fn render(r: &Report, args: &ConfigArgs) -> String {
    let mut s = String::new();
    let req = &r.requested;
    let checkpoint = r.model.checkpoint(r.precision);
    let verdict = if req.fits() { "fits" } else { "does not fit" };
    let _ = writeln!(
        s,
        "{checkpoint} ({}) on {} x {}: {verdict}",
        r.precision.name(),
        req.options.gpus,
        r.hardware.label()
    );
    let _ = writeln!(s, "sizes in GB = 1e9 bytes");
    if !r.model.checkpoint_is_published(r.precision) {
        let _ = writeln!(
            s,
            "note: the seeds name no FP8 checkpoint of this model; {checkpoint} follows their naming and the plan \
             assumes the GLM-V FP8 scheme (reference/model.md §7)"
        );
    }
    if let Some(problem) = &req.problem {
        let _ = writeln!(s, "does not fit: {problem}");
        match &r.proposed {
            Some(p) => {
                let _ = writeln!(
                    s,
                    "smallest that fits: {} x {} (--tp {})",
                    p.options.gpus,
                    r.hardware.label(),
                    p.options.gpus
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "no count of {} up to {} fits either; try larger GPUs, fp8, --kv-cache-dtype fp8_e4m3 or a \
                     shorter --context-length",
                    r.hardware.label(),
                    plan::TP_DEGREES[plan::TP_DEGREES.len() - 1]
                );
            }
        }
    }
    if let Some(plan) = r.launchable() {
        let _ = writeln!(s, "\nlaunch:\n  {}", launch_command(r, plan, args));
        let _ = writeln!(
            s,
            "  (--model-path takes a local copy: `hf download {checkpoint} --local-dir {checkpoint}`; add --host \
             0.0.0.0 --port 30000 to listen like SGLang)"
        );
        if plan.options.gpus > 1 {
            let _ = writeln!(
                s,
                "  note: glmv serve accepts --tp for SGLang compatibility but this build serves from one GPU (it \
                 says so at startup); the plan below is what tensor parallelism over {} GPUs needs",
                plan.options.gpus
            );
        }
    }
    let _ = writeln!(s, "\nmodel (config.json): {}", model_line(&r.config));
    let p = req.params;
    let _ = writeln!(
        s,
        "parameters: {} (text {} + vision {})",
        thousands(p.total()),
        thousands(p.text),
        thousands(p.vision)
    );
    match r.proposed.as_ref().filter(|_| !req.fits()) {
        Some(proposed) => {
            render_plan(&mut s, r, req, "as asked", false);
            render_plan(&mut s, r, proposed, "proposed", true);
        }
        None => render_plan(&mut s, r, req, "plan", true),
    }
    if let Some(dir) = &args.write_dummy_checkpoint {
        let _ = writeln!(
            s,
            "\nwrote {} (config.json{}, tokenizer, template; no weights): serve it with\n  glmv serve --model-path {} \
             --load-format dummy",
            dir.display(),
            if r.precision == Precision::Fp8 { " with quantization_config" } else { "" },
            dir.display()
        );
    }
    s
}

/// One plan; `table`: with the weights by group (else their total alone).
fn render_plan(s: &mut String, r: &Report, plan: &Plan, title: &str, table: bool) {
    let o = &plan.options;
    let tp = o.gpus;
    let _ = writeln!(s, "\n== {title}: {} x {} (tp {tp}) ==", o.gpus, r.hardware.label());
    let scheme = match &r.config.quantization {
        Some(_) => "FP8 checkpoint: FP8 E4M3 language-model projections, their scales held as F32",
        None => "BF16 checkpoint",
    };
    if !table {
        let _ = writeln!(
            s,
            "weights ({scheme}): {} GB, {} GB per GPU",
            gb(plan.weight_bytes),
            gb(plan.weight_bytes_per_gpu)
        );
    } else {
        render_weights(s, plan, scheme);
    }
    render_memory(s, r, plan);
}

fn render_weights(s: &mut String, plan: &Plan, scheme: &str) {
    let tp = plan.options.gpus;
    let _ = writeln!(s, "weights ({scheme}):");
    let _ = writeln!(s, "  {:<26} {:<8} {:>17} {:>9} {:>9}  tensor parallel", "", "dtype", "elements", "GB", "GB/GPU");
    for g in &plan.groups {
        let _ = writeln!(
            s,
            "  {:<26} {:<8} {:>17} {:>9} {:>9}  {}",
            g.name,
            g.dtype.to_string(),
            thousands(g.elements),
            gb(g.bytes()),
            gb(plan.group_bytes_per_gpu(g)),
            g.split.name()
        );
    }
    let _ = writeln!(
        s,
        "  {:<26} {:<8} {:>17} {:>9} {:>9}",
        "total",
        "",
        "",
        gb(plan.weight_bytes),
        gb(plan.weight_bytes_per_gpu)
    );
    let replicated: Vec<&str> = plan.groups.iter().filter(|g| g.split == Split::Replicated).map(|g| g.name).collect();
    if tp > 1 {
        let _ = writeln!(s, "  replicated on every GPU: {}", replicated.join(", "));
        if plan.kv_heads < tp {
            let _ = writeln!(
                s,
                "  k/v projections: {} kv heads < tp {tp}: one kv head per GPU (replicated)",
                plan.kv_heads
            );
        }
    }
}

fn render_memory(s: &mut String, r: &Report, plan: &Plan) {
    let o = &plan.options;
    let scale_note = if o.kv_dtype == KvDtype::Fp8E4m3 { " + 4 B scale" } else { "" };
    let _ = writeln!(
        s,
        "KV cache ({}): {} layers x 2 (K, V) x {} kv heads x ({} dims x {} B{scale_note}) = {} B/token; per GPU {} B/token ({} kv heads)",
        plan::kv_dtype_name(o.kv_dtype),
        plan.kv_layers,
        plan.kv_heads,
        plan.head_dim,
        o.kv_dtype.element_bytes(),
        thousands(plan.kv_bytes_per_token),
        thousands(plan.kv_bytes_per_token_per_gpu),
        plan.kv_heads_per_gpu
    );
    let memory_note = match r.hardware.memory_bytes() == o.gpu_bytes {
        true => "vendor figure; drivers report a few percent more",
        false => "--gpu-memory-gb",
    };
    let _ = writeln!(s, "memory per GPU: {} {} GB ({memory_note})", r.hardware.label(), gb(o.gpu_bytes));
    let _ = writeln!(
        s,
        "  static budget    {:>9} GB  --mem-fraction-static {} x {} GB: weights + KV cache",
        gb(plan.static_budget),
        o.mem_fraction_static,
        gb(o.gpu_bytes)
    );
    let _ = writeln!(s, "  - weights        {:>9} GB", gb(plan.weight_bytes_per_gpu));
    let _ = writeln!(
        s,
        "  - runtime        {:>9} GB  CUDA context, kernel images, allocator: in use before glmv serve sizes the KV cache",
        gb(plan::RUNTIME_RESERVE_BYTES)
    );
    if plan.weight_bytes_per_gpu > plan.weight_room {
        let _ = writeln!(s, "  = short by       {:>9} GB", gb(plan.weight_bytes_per_gpu - plan.weight_room));
    } else {
        let _ = writeln!(
            s,
            "  = KV cache       {:>9} GB  {} blocks of {} = {} tokens",
            gb(plan.kv_cache_bytes),
            thousands(plan.kv_blocks),
            plan::KV_BLOCK_SIZE,
            thousands(plan.kv_tokens)
        );
    }
    let _ = writeln!(
        s,
        "  activations      {:>9} GB  left outside the budget ((1 - {}) x {} GB); a {}-token prefill chunk needs ~{} GB (f32 activations, estimate)",
        gb(plan.activation_headroom),
        o.mem_fraction_static,
        gb(o.gpu_bytes),
        o.chunked_prefill_size,
        gb(plan.activation_estimate)
    );
    let _ = writeln!(
        s,
        "  decode graphs    {:>9} GB  activations of the largest recorded decode step ({} sequences, estimate)",
        gb(plan.graph_pool_estimate),
        plan::DECODE_GRAPH_ROWS
    );
    if plan.activation_estimate + plan.graph_pool_estimate > plan.activation_headroom {
        let _ = writeln!(s, "  warning: the activation estimate exceeds the headroom; lower --mem-fraction-static");
    }
    if plan.weight_bytes_per_gpu > plan.weight_room {
        return;
    }
    let context = if plan.max_context < plan.context_limit {
        let whose = if o.context_length.is_some() { "--context-length" } else { "the model's" };
        format!(
            "{} tokens (the KV cache holds fewer than {whose} {})",
            thousands(plan.max_context as u64),
            thousands(plan.context_limit as u64)
        )
    } else {
        format!("{} tokens", thousands(plan.max_context as u64))
    };
    let _ = writeln!(s, "max context: {context}");
    let _ = writeln!(
        s,
        "concurrency (sequences whose KV cache fits at once; glmv serve runs at most --max-running-requests, default {}):",
        plan::MAX_RUNNING_REQUESTS
    );
    for c in &plan.concurrency {
        let label = if c.output == 0 {
            format!("full context ({})", thousands(c.prompt as u64))
        } else {
            format!("{}K + {}K", c.prompt / 1024, c.output / 1024)
        };
        let _ = writeln!(s, "  {label:<22} {}", thousands(c.sequences as u64));
    }
}

fn to_json(r: &Report, args: &ConfigArgs) -> Value {
    let launch = r.launchable().map(|p| launch_command(r, p, args));
    json!({
        "model": r.model.name(),
        "checkpoint": r.model.checkpoint(r.precision),
        "checkpoint_published": r.model.checkpoint_is_published(r.precision),
        "quantization": r.precision.name(),
        "hardware": r.hardware.name(),
        "gpus": r.requested.options.gpus,
        "units": "bytes",
        "fits": r.requested.fits(),
        "does_not_fit": r.requested.problem,
        "requested": r.requested.to_json(),
        "proposed": r.proposed.as_ref().map(Plan::to_json),
        "launch_command": launch,
        "dummy_checkpoint": args.write_dummy_checkpoint.as_ref().map(|d| d.display().to_string()),
    })
}
