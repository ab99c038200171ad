//! The official OpenAI Python client and curl against the real `glmv serve` (tests/openai_client/check_client.py).
//! The client comes from `scripts/openai-client/install.sh` (pinned, into .venv-openai), which scripts/test.sh runs
//! first; `GLMV_OPENAI_PYTHON` may point at another interpreter that has it.
mod common;

use std::{path::PathBuf, process::Command};

use common::{crafted, fixtures_root, server::ServerProcess};
use glmv_runtime::{
    media::{merged_tokens, ImageProcessor, MediaLimits, VideoProcessor},
    text::Tokenizer,
};
use serde_json::json;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("GLMV_OPENAI_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-openai/bin/python");
    assert!(
        venv.exists(),
        "the OpenAI client is not installed: run scripts/openai-client/install.sh (scripts/test.sh does)"
    );
    venv
}

#[test]
fn official_openai_client_and_curl() {
    let dir = std::env::temp_dir().join(format!("glmv-crafted-openai-{}", std::process::id()));
    crafted::write_crafted_checkpoint(&fixtures_root().join("moe_bf16/checkpoint"), &dir);
    // Two images: one sent inline (data:), one by path under the allowed root (file://).
    let images = fixtures_root().join("vision/images").canonicalize().unwrap();
    let (png, jpeg) = (images.join("rgb_100x100.png"), images.join("photo444_61x93.jpg"));
    let processor = ImageProcessor::from_dir(&dir).unwrap();
    let image_tokens: usize = [&png, &jpeg]
        .iter()
        .map(|p| {
            let input = processor.process_bytes(&std::fs::read(p).unwrap(), &MediaLimits::default()).unwrap();
            merged_tokens(input.grid, processor.merge_size)
        })
        .sum();
    // A video by path: its prompt ids as glmv's processor computes them (tests/video_parity.rs holds those equal to
    // transformers').
    let video = fixtures_root().join("video/videos/high_90x62.mp4").canonicalize().unwrap();
    let processed = VideoProcessor::from_dir(&dir)
        .unwrap()
        .process_bytes(&std::fs::read(&video).unwrap(), &MediaLimits::default())
        .unwrap();
    let video_ids = processed.prompt_ids(2, &Tokenizer::from_dir(&dir).unwrap()).unwrap().len();
    let server = ServerProcess::start(
        Some(&dir),
        &[
            "--reasoning-parser",
            "glm45",
            "--tool-call-parser",
            "glm45",
            "--api-key",
            "sk-test",
            "--served-model-name",
            "crafted",
            "--context-length",
            "512",
            "--allowed-local-media-path",
            fixtures_root().canonicalize().unwrap().to_str().unwrap(),
        ],
    );
    let script = json!({
        "model": "crafted",
        "reasoning": crafted::REASONING, "tool": crafted::TOOL, "arg_key": crafted::ARG_KEY,
        "arg_value": crafted::ARG_VALUE, "answer": crafted::ANSWER,
        "image_png": png, "image_jpeg": jpeg, "image_tokens": image_tokens,
        "video_mp4": video, "video_ids": video_ids,
    });
    let out = Command::new(python())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client/check_client.py"))
        .arg(&server.addr)
        .arg(script.to_string())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "openai client checks failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("all openai-client checks passed"));
    std::fs::remove_dir_all(&dir).unwrap();
}
