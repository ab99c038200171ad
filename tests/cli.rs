//! `glmv generate` and `glmv logits` on the reference checkpoints, and the one-line errors a broken checkpoint
//! gives (never a panic).
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use common::*;
use serde_json::Value;

fn glmv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glmv")).args(args).output().expect("run glmv")
}

fn json_stdout(out: &Output) -> Value {
    assert!(out.status.success(), "glmv failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn generate_json_reproduces_greedy_continuation() {
    for dir in text_fixtures() {
        let exp = &expected_prompts(&dir)[0];
        let ckpt = dir.join("checkpoint");
        let max = exp.continuation_ids.len().to_string();
        let out = glmv(&[
            "generate",
            "--model-path",
            ckpt.to_str().unwrap(),
            "--prompt",
            &exp.text,
            "--max-tokens",
            &max,
            "--temperature",
            "0",
            "--ignore-eos",
            "--json",
        ]);
        let v = json_stdout(&out);
        assert_eq!(ids(&v["prompt_token_ids"]), exp.prompt_ids, "{}", dir.display());
        assert_eq!(ids(&v["output_token_ids"]), exp.continuation_ids, "{}", dir.display());
        assert!(v["text"].is_string());
    }
}

#[test]
fn generate_stops_at_eos_and_samples_reproducibly() {
    let dir = &text_fixtures()[0];
    let ckpt = dir.join("checkpoint");
    let run = |seed: &str| {
        json_stdout(&glmv(&[
            "generate",
            "--model-path",
            ckpt.to_str().unwrap(),
            "--prompt",
            "hello",
            "--max-tokens",
            "12",
            "--temperature",
            "1.0",
            "--seed",
            seed,
            "--json",
        ]))
    };
    let (a, b) = (run("5"), run("5"));
    assert_eq!(a, b, "same seed, same output");
    let out = ids(&a["output_token_ids"]);
    assert!(!out.is_empty() && out.len() <= 12);
    let config: Value = serde_json::from_slice(&std::fs::read(ckpt.join("generation_config.json")).unwrap()).unwrap();
    let eos: Vec<u32> = match &config["eos_token_id"] {
        Value::Array(a) => a.iter().map(|x| x.as_u64().unwrap() as u32).collect(),
        v => vec![v.as_u64().unwrap() as u32],
    };
    // Only the last token may be an end-of-sequence token.
    assert!(out[..out.len() - 1].iter().all(|t| !eos.contains(t)));
}

#[test]
fn logits_json_matches_reference() {
    for dir in text_fixtures() {
        logits_json_matches_reference_on(&dir);
    }
}

fn logits_json_matches_reference_on(dir: &Path) {
    let exp = &expected_prompts(dir)[0];
    let ckpt = dir.join("checkpoint");
    let id_list: Vec<String> = exp.prompt_ids.iter().map(u32::to_string).collect();
    for args in [vec!["--input-ids", &id_list.join(",")], vec!["--prompt", &exp.text]] {
        let mut full = vec!["logits", "--model-path", ckpt.to_str().unwrap(), "--json", "--device", "cpu"];
        full.extend(args.iter().copied());
        let v = json_stdout(&glmv(&full));
        assert_eq!(ids(&v["prompt_token_ids"]), exp.prompt_ids);
        let rows = v["logits"].as_array().unwrap();
        assert_eq!(rows.len(), exp.prompt_ids.len());
        for (i, row) in rows.iter().enumerate() {
            let row: Vec<f32> = row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            check_row(&format!("logits position {i}"), &row, exp.row(i));
        }
    }
}

/// A scratch copy of a fixture checkpoint that a test may break.
fn scratch_copy(name: &str, tag: &str) -> PathBuf {
    let src = fixtures_root().join(name).join("checkpoint");
    let dst = std::env::temp_dir().join(format!("glmv-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

fn first_shard(dir: &Path) -> PathBuf {
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    shards.sort();
    shards.remove(0)
}

/// The command fails with exit code 1 and one line on stderr that mentions `needle`.
fn assert_one_line_error(dir: &Path, needle: &str) {
    assert_one_line_error_with(dir, &[], needle)
}

fn assert_one_line_error_with(dir: &Path, extra: &[&str], needle: &str) {
    let mut args = vec!["generate", "--model-path", dir.to_str().unwrap(), "--prompt", "hi", "--max-tokens", "2"];
    args.extend(extra);
    let out = glmv(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("[glmv]")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, got: {stderr}");
    assert!(errors[0].starts_with("error: ") && errors[0].contains(needle), "{needle:?} not in {:?}", errors[0]);
    assert!(!stderr.contains("panicked"));
    let _ = std::fs::remove_dir_all(dir);
}

/// `--fp8-activations checkpoint` quantises the FP8 projections' inputs as the checkpoint declares: moe_fp8_block's
/// first prompt against transformers with the same quantisation (every position of it agrees to about 1e-6 on the
/// CPU, tests/text_parity.rs), and far from the exact-activation logits.
#[test]
fn logits_with_checkpoint_fp8_activations() {
    let dir = fixtures_root().join("moe_fp8_block");
    let exp = &expected_prompts(&dir)[0];
    let want = glmv_runtime::weights::WeightStore::open_file(&dir.join("text_logits_fp8_activations.safetensors"))
        .unwrap()
        .get("prompt0.logits")
        .unwrap()
        .to_f32_vec()
        .unwrap();
    let ckpt = dir.join("checkpoint");
    let id_list: Vec<String> = exp.prompt_ids.iter().map(u32::to_string).collect();
    let ids = id_list.join(",");
    let args = ["logits", "--model-path", ckpt.to_str().unwrap(), "--json", "--device", "cpu", "--input-ids", &ids];
    let v = json_stdout(&glmv(&[&args[..], &["--fp8-activations", "checkpoint"]].concat()));
    let rows = v["logits"].as_array().unwrap();
    assert_eq!(rows.len(), exp.prompt_ids.len());
    for (i, row) in rows.iter().enumerate() {
        let row: Vec<f32> = row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        let err = rel_l2(&row, &want[i * exp.vocab..(i + 1) * exp.vocab]);
        assert!(err <= 1e-4, "position {i}: {err:.2e} from transformers with quantised activations");
        assert!(rel_l2(&row, exp.row(i)) > 1e-3, "position {i}: as with exact activations");
    }
}

/// A checkpoint whose activation scales are static loads with exact activations and refuses its own scheme.
#[test]
fn static_activation_scales_are_a_one_line_error_when_asked_for() {
    let dir = scratch_copy("dense_fp8_channel", "static");
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let acts = &mut config["quantization_config"]["config_groups"]["group_0"]["input_activations"];
    acts["dynamic"] = false.into();
    acts["strategy"] = "tensor".into();
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let out = glmv(&["generate", "--model-path", dir.to_str().unwrap(), "--prompt", "hi", "--max-tokens", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_one_line_error_with(&dir, &["--fp8-activations", "checkpoint"], "static");
}

#[test]
fn truncated_safetensors_is_a_one_line_error() {
    let dir = scratch_copy("moe_fp8_channel", "truncated");
    let shard = first_shard(&dir);
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 100]).unwrap();
    assert_one_line_error(&dir, "truncated");
}

#[test]
fn corrupt_safetensors_header_is_a_one_line_error() {
    let dir = scratch_copy("dense_bf16", "corrupt");
    let shard = first_shard(&dir);
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[8..16].copy_from_slice(b"garbage!");
    std::fs::write(&shard, &bytes).unwrap();
    assert_one_line_error(&dir, "not a valid safetensors file");
}

#[test]
fn missing_shard_is_a_one_line_error() {
    let dir = scratch_copy("moe_fp8_channel", "missing");
    std::fs::remove_file(first_shard(&dir)).unwrap();
    assert_one_line_error(&dir, "missing shard");
}

#[test]
fn unsupported_architecture_is_a_one_line_error() {
    let dir = scratch_copy("dense_bf16", "arch");
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["architectures"] = serde_json::json!(["Qwen2VLForConditionalGeneration"]);
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    assert_one_line_error(&dir, "unsupported architecture");
}

#[test]
fn missing_tensor_is_a_one_line_error_naming_it() {
    let dir = scratch_copy("dense_bf16", "tensor");
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    // One more layer than the checkpoint has.
    let layers = config["text_config"]["num_hidden_layers"].as_u64().unwrap();
    config["text_config"]["num_hidden_layers"] = (layers + 1).into();
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    assert_one_line_error(&dir, &format!("layers.{layers}."));
}

/// Runs `glmv logits` and `glmv generate` on a request file (relative paths resolved from `cwd`) and checks the
/// expanded prompt ids, every position's logits (relative L2 within the end-to-end bar of 1e-2) and the greedy
/// tokens against transformers' reference. Returns the request file's path (removed).
fn request_file_matches(
    name: &str,
    reference: &VisionCaseReference,
    ckpt: &Path,
    request: Value,
    cwd: &Path,
) -> PathBuf {
    let (want_ids, want, vocab) = (reference.input_ids.clone(), &reference.logits, reference.vocab);
    let file = std::env::temp_dir().join(format!("glmv-cli-request-{name}-{}.json", std::process::id()));
    std::fs::write(&file, request.to_string()).unwrap();
    let run = |cmd: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_glmv"))
            .args([cmd, "--model-path", ckpt.to_str().unwrap(), "--device", "cpu", "--json", "--request"])
            .arg(&file)
            .current_dir(cwd)
            .output()
            .unwrap();
        json_stdout(&out)
    };

    let v = run("logits");
    assert_eq!(ids(&v["prompt_token_ids"]), want_ids, "{name}: expanded prompt ids");
    let rows = v["logits"].as_array().unwrap();
    let mut worst = 0f64;
    for (row, want) in rows.iter().zip(want.chunks(vocab)) {
        let row: Vec<f32> = row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        worst = worst.max(rel_l2(&row, want));
    }
    eprintln!("{name} from a request file: worst relative L2 per position {worst:.2e}");
    assert!(worst <= 1e-2, "{name}: {worst:.2e}");

    let g = run("generate");
    assert_eq!(ids(&g["prompt_token_ids"]), want_ids);
    let output = ids(&g["output_token_ids"]);
    assert_eq!(output.len(), 2, "the request's max_tokens");
    assert_eq!(output[0] as usize, argmax(reference.last_row()), "greedy (the request's temperature 0)");
    std::fs::remove_file(&file).unwrap();
    file
}

/// `--request`: an OpenAI chat body with two images (a bare relative path and a `file://` URL) through the same
/// prompt building as the server, against transformers' `Glm4vProcessor` ids and logits (tests/fixtures/vision).
#[test]
fn request_file_with_two_images_matches_transformers() {
    let case = "dense_two_images";
    let ckpt = fixtures_root().join("dense_bf16/checkpoint");
    let images = fixtures_root().join("vision/images").canonicalize().unwrap();
    let request = serde_json::json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "wide_60x1000.png"}},
        {"type": "image_url", "image_url": {"url": format!("file://{}", images.join("anim_48x64.gif").display())}},
        {"type": "text", "text": "How many fruits are there?"}]}],
        "temperature": 0, "max_tokens": 2});
    // PNG and GIF decode bit-exactly, so the end-to-end bar of the vision issue applies.
    let file = request_file_matches(case, &VisionCaseReference::load(case), &ckpt, request, &images);

    // Errors name the request file and the part.
    std::fs::write(
        &file,
        r#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "missing.png"}}]}]}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_glmv"))
        .args(["logits", "--model-path", ckpt.to_str().unwrap(), "--device", "cpu", "--request"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("messages[0].content[0]") && err.contains("missing.png"), "{err}");
    std::fs::remove_file(&file).unwrap();
}

/// `--request` with a video (MP4 by relative path) and an image in one message, against transformers'
/// `Glm4vProcessor` ids and logits (tests/fixtures/video, case moe_glm4v_video_and_image).
#[test]
fn request_file_with_a_video_and_an_image_matches_transformers() {
    let case = "moe_glm4v_video_and_image";
    let ckpt = fixtures_root().join("moe_bf16/checkpoint");
    let videos = fixtures_root().join("video/videos").canonicalize().unwrap();
    let image = fixtures_root().join("vision/images/rgb_100x100.png").canonicalize().unwrap();
    let request = serde_json::json!({"messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "baseline_64x48.mp4"}},
        {"type": "image_url", "image_url": {"url": format!("file://{}", image.display())}},
        {"type": "text", "text": "Is the picture a frame of the video?"}]}],
        "temperature": 0, "max_tokens": 2});
    let reference = VisionCaseReference::load_from("video/prompts.safetensors", case);
    request_file_matches(case, &reference, &ckpt, request, &videos);
}
