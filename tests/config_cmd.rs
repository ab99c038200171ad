//! `glmv config` as a user runs it: the printed plan and `--json` for the three hand-checked cases (the
//! arithmetic is in runtime/src/config/plan/tests.rs), and `--write-dummy-checkpoint` producing a directory that
//! `glmv serve --load-format dummy` loads.
use std::process::{Command, Output};

use glmv_runtime::{config::ModelConfig, text::Tokenizer};
use serde_json::Value;

fn glmv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glmv")).args(args).output().expect("run glmv")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "glmv failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn config(extra: &[&str]) -> String {
    let mut args = vec!["config"];
    args.extend_from_slice(extra);
    stdout(&glmv(&args))
}

fn config_json(extra: &[&str]) -> Value {
    let mut args = vec!["config", "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&stdout(&glmv(&args))).expect("one JSON object")
}

/// Whether a line starts with `want`, runs of spaces (column padding) counting as one.
fn has_line(text: &str, want: &str) {
    let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let want = squeeze(want);
    assert!(text.lines().any(|l| squeeze(l).starts_with(&want)), "no line starting {want:?} in:\n{text}");
}

#[test]
fn glm45v_fp8_fits_one_h200() {
    let args = ["--model", "glm-4.5v", "--hardware", "h200", "--quantization", "fp8"];
    let text = config(&args);
    has_line(&text, "zai-org/GLM-4.5V-FP8 (fp8) on 1 x H200: fits");
    has_line(&text, "sizes in GB = 1e9 bytes");
    // The KV cache holds 46,960 tokens, fewer than the model's 65,536: the command says so.
    has_line(
        &text,
        "glmv serve --model-path zai-org/GLM-4.5V-FP8 --reasoning-parser glm45 --tool-call-parser glm45 --context-length 46960",
    );
    has_line(&text, "parameters: 107,710,933,120 (text 106,852,251,264 + vision 858,681,856)");
    has_line(&text, "total                                                  110.00    110.00");
    has_line(
        &text,
        "KV cache (bf16): 46 layers x 2 (K, V) x 8 kv heads x (128 dims x 2 B) = 188,416 B/token; per GPU 188,416 B/token (8 kv heads)",
    );
    has_line(&text, "memory per GPU: H200 141.00 GB");
    has_line(&text, "static budget       119.85 GB");
    has_line(&text, "= KV cache           8.85 GB  2,935 blocks of 16 = 46,960 tokens");
    has_line(&text, "max context: 46,960 tokens");
    has_line(&text, "1K + 1K                22");
    has_line(&text, "8K + 1K                5");
    has_line(&text, "full context (46,960)  1");

    let v = config_json(&args);
    assert_eq!(v["fits"], true);
    assert_eq!(v["checkpoint"], "zai-org/GLM-4.5V-FP8");
    assert!(v["proposed"].is_null());
    let plan = &v["requested"];
    assert_eq!(plan["parameters"]["total"], 107_710_933_120u64);
    assert_eq!(plan["weights"]["bytes"], 109_999_771_648u64);
    assert_eq!(plan["weights"]["bytes_per_gpu"], 109_999_771_648u64);
    assert_eq!(plan["kv_cache"]["bytes_per_token"], 188_416);
    assert_eq!(plan["kv_cache"]["tokens"], 46_960);
    assert_eq!(plan["memory"]["gpu_bytes"], 141_000_000_000u64);
    assert_eq!(plan["memory"]["unit"], "bytes");
    assert_eq!(plan["max_context"], 46_960);
    let seqs: Vec<u64> =
        plan["concurrency"].as_array().unwrap().iter().map(|c| c["sequences"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [22, 5, 1]);
    let bf16: Vec<&str> = plan["weights"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["dtype"] == "BF16")
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(bf16, ["embed_tokens", "lm_head", "q biases", "k, v biases", "norms", "router gates", "vision tower"]);

    // FP8 KV: 46 x 2 x 8 x (128 + 4) = 97,152 B/token; 91,088 tokens hold the full context.
    let v = config_json(&[&args[..], &["--kv-cache-dtype", "fp8_e4m3"]].concat());
    assert_eq!(v["requested"]["kv_cache"]["bytes_per_token"], 97_152);
    assert_eq!(v["requested"]["kv_cache"]["tokens"], 91_088);
    assert_eq!(
        v["launch_command"],
        "glmv serve --model-path zai-org/GLM-4.5V-FP8 --reasoning-parser glm45 --tool-call-parser glm45 --kv-cache-dtype fp8_e4m3"
    );
}

#[test]
fn glm45v_fp8_does_not_fit_one_h100_and_two_are_proposed() {
    let args = ["--model", "glm-4.5v", "--hardware", "h100", "--quantization", "fp8"];
    let text = config(&args);
    has_line(&text, "zai-org/GLM-4.5V-FP8 (fp8) on 1 x H100: does not fit");
    has_line(
        &text,
        "does not fit: needs 110.00 GB per GPU for weights, has 67.00 (0.85 x 80 GB budget - 1.00 GB runtime reserve)",
    );
    has_line(&text, "smallest that fits: 2 x H100 (--tp 2)");
    has_line(
        &text,
        "glmv serve --model-path zai-org/GLM-4.5V-FP8 --tp 2 --reasoning-parser glm45 --tool-call-parser glm45",
    );
    has_line(&text, "== proposed: 2 x H100 (tp 2) ==");
    has_line(&text, "total                                                  110.00     55.93");
    has_line(
        &text,
        "replicated on every GPU: norms, router gates, router correction biases, FP8 scales (o, down), vision tower",
    );
    has_line(&text, "= KV cache          11.07 GB  7,343 blocks of 16 = 117,488 tokens");
    has_line(&text, "max context: 65,536 tokens");

    let v = config_json(&args);
    assert_eq!(v["fits"], false);
    assert_eq!(v["requested"]["fits"], false);
    assert!(v["does_not_fit"].as_str().unwrap().starts_with("needs 110.00 GB per GPU for weights, has 67.00"));
    let p = &v["proposed"];
    assert_eq!(p["gpus"], 2);
    assert_eq!(p["weights"]["bytes_per_gpu"], 55_930_492_672u64);
    assert_eq!(p["kv_cache"]["bytes_per_token_per_gpu"], 94_208);
    assert_eq!(p["kv_cache"]["tokens"], 117_488);
    assert!(v["launch_command"].as_str().unwrap().contains("--tp 2"));
}

#[test]
fn glyph_bf16_fits_one_h100() {
    let args = ["--model", "glyph", "--hardware", "h100", "--quantization", "bf16"];
    let text = config(&args);
    has_line(&text, "zai-org/Glyph (bf16) on 1 x H100: fits");
    has_line(&text, "glmv serve --model-path zai-org/Glyph --reasoning-parser glm45 --tool-call-parser glm45");
    has_line(&text, "parameters: 10,292,777,472 (text 9,400,279,040 + vision 892,498,432)");
    has_line(
        &text,
        "KV cache (bf16): 40 layers x 2 (K, V) x 2 kv heads x (128 dims x 2 B) = 40,960 B/token; per GPU 40,960 B/token (2 kv heads)",
    );
    has_line(&text, "= KV cache          46.41 GB  70,822 blocks of 16 = 1,133,152 tokens");
    has_line(&text, "max context: 32,768 tokens");
    has_line(&text, "full context (32,768)  34");

    let v = config_json(&args);
    assert_eq!(v["fits"], true);
    assert_eq!(v["requested"]["weights"]["bytes"], 20_585_554_944u64);
    assert_eq!(v["requested"]["kv_cache"]["tokens"], 1_133_152);
    assert_eq!(
        v["launch_command"],
        "glmv serve --model-path zai-org/Glyph --reasoning-parser glm45 --tool-call-parser glm45"
    );
}

/// The directory `--write-dummy-checkpoint` writes is what `glmv serve --load-format dummy` reads: config.json
/// (with the FP8 quantization_config), a tokenizer whose special tokens sit at the config's ids, the template.
#[test]
fn write_dummy_checkpoint_is_loadable() {
    for (model, quant, image) in [("glm-4.5v", "fp8", 151363), ("glm-4.1v", "bf16", 151343)] {
        let dir = std::env::temp_dir().join(format!("glmv-config-dummy-{model}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let args = ["--model", model, "--hardware", "h200", "--quantization", quant, "--write-dummy-checkpoint"];
        let v = config_json(&[&args[..], &[dir.to_str().unwrap()]].concat());
        assert_eq!(v["dummy_checkpoint"], dir.to_str().unwrap());
        let config = ModelConfig::from_dir(&dir).unwrap();
        assert_eq!(config.quantization.is_some(), quant == "fp8", "{model}");
        assert_eq!(config.tokens.image, image);
        assert_eq!(config.text.vocab_size, 151_552);
        let tok = Tokenizer::from_dir(&dir).unwrap();
        let k = &config.tokens;
        for (token, id) in [
            ("<|image|>", k.image),
            ("<|video|>", k.video),
            ("<|begin_of_image|>", k.image_start),
            ("<|end_of_image|>", k.image_end),
            ("<|begin_of_video|>", k.video_start),
            ("<|end_of_video|>", k.video_end),
            ("<|endoftext|>", k.eos[0]),
            ("<|user|>", k.eos[1]),
            ("<|observation|>", k.eos[2]),
        ] {
            assert_eq!(tok.token_to_id(token), Some(id), "{model}: {token}");
        }
        assert_eq!(tok.vocab_size(), config.text.vocab_size);
        assert!(dir.join("chat_template.jinja").exists() || dir.join("tokenizer_config.json").exists());
        // The plan counted the same bytes the dummy loader reports when it loads this directory.
        let store = glmv_runtime::weights::WeightStore::dummy(&config, 0);
        assert_eq!(v["requested"]["weights"]["bytes"], store.total_bytes(), "{model}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn bad_gpu_counts_and_fractions_are_refused_plainly() {
    // 3 does not divide GLM-4.5V's 96 heads: not a plan, and 4 is proposed.
    let v = config_json(&["--model", "glm-4.5v", "--hardware", "b200", "--quantization", "bf16", "--gpus", "3"]);
    assert_eq!(v["does_not_fit"], "3 GPUs neither divide nor are a multiple of the 8 kv heads");
    assert_eq!(v["proposed"]["gpus"], 4);
    let out = glmv(&[
        "config",
        "--model",
        "glyph",
        "--hardware",
        "h100",
        "--quantization",
        "bf16",
        "--mem-fraction-static",
        "1.5",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mem-fraction-static must be in (0, 1]"));
}
