//! Shared helpers of the integration tests: the committed reference fixtures and how to compare against them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use glmv_runtime::weights::{HostTensor, WeightStore};
use serde_json::Value;

/// Preprocessing bar of the vision issue (normalised units); PIL/torchvision-exact resampling lands far below it.
pub const MAX_PIXEL_MEAN_ABS: f64 = 1e-2;
/// Logits from transformers' own pixel values (the model alone) and end to end from the image or video files,
/// whatever their format: every decoder is bit-exact with PIL's / PyAV's.
pub const MAX_REL_L2_PIXELS: f64 = 1e-3;
pub const MAX_REL_L2_FILES: f64 = 1e-2;

/// A device test finding no usable device: skipped, unless `GLMV_REQUIRE_DEVICE` is set (CI on the CUDA emulator,
/// the GPU machine's checks), where that is a failure rather than a silent pass.
pub fn skip_without_device(why: impl std::fmt::Display) {
    assert!(std::env::var_os("GLMV_REQUIRE_DEVICE").is_none(), "GLMV_REQUIRE_DEVICE is set, but {why}");
    eprintln!("skipped: {why}");
}

/// `tests/fixtures` of this checkout, or `$GLMV_FIXTURES` (test binaries carried to a GPU machine).
pub fn fixtures_root() -> PathBuf {
    match std::env::var_os("GLMV_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

/// Every fixture directory that carries text logits from transformers, sorted by name.
pub fn text_fixtures() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_root())
        .expect("tests/fixtures exists (run scripts/fixtures/make_fixtures.sh)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("text_logits.json").exists())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no text fixtures under tests/fixtures");
    dirs
}

pub struct ExpectedPrompt {
    pub text: String,
    pub prompt_ids: Vec<u32>,
    pub continuation_ids: Vec<u32>,
    /// [prompt + continuation, vocab], row-major.
    pub logits: Vec<f32>,
    pub vocab: usize,
}

impl ExpectedPrompt {
    pub fn all_ids(&self) -> Vec<u32> {
        self.prompt_ids.iter().chain(&self.continuation_ids).copied().collect()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.logits[i * self.vocab..(i + 1) * self.vocab]
    }
}

pub fn expected_prompts(dir: &Path) -> Vec<ExpectedPrompt> {
    let meta: Value = serde_json::from_slice(&std::fs::read(dir.join("text_logits.json")).unwrap()).unwrap();
    let store = WeightStore::open_file(&dir.join("text_logits.safetensors")).unwrap();
    let ids = |v: &Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
    meta["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let logits = store.get(&format!("prompt{k}.logits")).unwrap();
            let vocab = logits.shape[1];
            let prompt_ids = ids(&p["prompt_ids"]);
            let continuation_ids = ids(&p["continuation_ids"]);
            assert_eq!(logits.shape[0], prompt_ids.len() + continuation_ids.len());
            ExpectedPrompt {
                text: p["text"].as_str().unwrap().to_string(),
                prompt_ids,
                continuation_ids,
                logits: logits.to_f32_vec().unwrap(),
                vocab,
            }
        })
        .collect()
}

/// ||a - b|| / ||b||
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

pub fn argmax(v: &[f32]) -> usize {
    glmv_runtime::engine::sampler::argmax(v) as usize
}

/// Largest per-position relative L2 error of `got` against `want` ([positions, vocab]).
pub fn worst_row(got: &[f32], want: &[f32], vocab: usize) -> f64 {
    assert_eq!(got.len(), want.len());
    got.chunks(vocab).zip(want.chunks(vocab)).map(|(g, w)| rel_l2(g, w)).fold(0.0, f64::max)
}

/// Mean and largest absolute difference of two pixel-value vectors, and the fraction of equal values.
pub fn pixel_diff(got: &[f32], want: &[f32]) -> (f64, f64, f64) {
    assert_eq!(got.len(), want.len(), "pixel count");
    let diffs: Vec<f64> = got.iter().zip(want).map(|(a, b)| f64::from((a - b).abs())).collect();
    let n = diffs.len() as f64;
    let mean = diffs.iter().sum::<f64>() / n;
    let max = diffs.iter().cloned().fold(0.0, f64::max);
    (mean, max, diffs.iter().filter(|&&d| d == 0.0).count() as f64 / n)
}

/// A fixture checkpoint directory (`tests/fixtures/NAME/checkpoint`).
pub fn fixture_checkpoint(name: &str) -> PathBuf {
    fixtures_root().join(name).join("checkpoint")
}

/// A JSON file of the fixtures.
pub fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// A `grid_thw` triple of the fixtures.
pub fn grid_of(thw: &[i64]) -> glmv_runtime::model::Grid {
    glmv_runtime::model::Grid { t: thw[0] as usize, h: thw[1] as usize, w: thw[2] as usize }
}

/// The parity bar of the text-model issue.
pub const MAX_REL_L2: f64 = 1e-3;

/// Asserts one logits row matches transformers' and returns its relative L2 error.
pub fn check_row(what: &str, got: &[f32], want: &[f32]) -> f64 {
    let err = rel_l2(got, want);
    assert!(err <= MAX_REL_L2, "{what}: relative L2 error {err:.2e} > {MAX_REL_L2:.0e}");
    assert_eq!(argmax(got), argmax(want), "{what}: argmax differs");
    err
}
pub mod crafted;
pub mod png;
pub mod safetensors_writer;
pub mod server;

/// An integer tensor of the fixtures (int64, little-endian) as values.
pub fn i64s(t: &HostTensor) -> Vec<i64> {
    t.bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
}

/// What transformers computed for one chat case of the vision fixtures (tests/fixtures/vision/vision.json).
pub struct VisionCaseReference {
    /// `Glm4vProcessor`'s ids, every placeholder expanded.
    pub input_ids: Vec<u32>,
    /// [input_ids.len(), vocab], float32, row-major.
    pub logits: Vec<f32>,
    pub vocab: usize,
}

impl VisionCaseReference {
    pub fn load(case: &str) -> Self {
        Self::load_from("vision/prompts.safetensors", case)
    }

    /// A case of another prompts file of the same layout (e.g. `video/prompts.safetensors`).
    pub fn load_from(file: &str, case: &str) -> Self {
        let prompts = WeightStore::open_file(&fixtures_root().join(file)).unwrap();
        let ids = prompts.get(&format!("{case}.input_ids")).unwrap();
        let logits = prompts.get(&format!("{case}.logits")).unwrap();
        VisionCaseReference {
            input_ids: i64s(&ids).iter().map(|&v| v as u32).collect(),
            vocab: logits.shape[1],
            logits: logits.to_f32_vec().unwrap(),
        }
    }

    pub fn last_row(&self) -> &[f32] {
        &self.logits[self.logits.len() - self.vocab..]
    }
}
