//! Images against transformers (fixtures from scripts/fixtures/gen_vision_fixtures.py): each test image file through
//! glmv's decoder and `Glm4vImageProcessor` port against the PIL-backend processor's pixel values; chat prompts with
//! one and two images against `Glm4vProcessor`'s expanded ids and the model's float32 logits, for both families;
//! and hostile files against the typed errors.
mod common;

use std::path::PathBuf;

use common::{
    png::{png, rgb_rows},
    *,
};
use glmv_runtime::{
    backend::CpuBackend,
    media::{expand_image_placeholders, merged_tokens, ImageProcessor, MediaError, MediaLimits},
    model::{Grid, MediaKind},
    pipeline::{MediaInput, Pipeline, Prompt},
    text::{
        template::{ChatTemplate, RenderOptions},
        Tokenizer,
    },
    weights::WeightStore,
};
use serde_json::{json, Value};

fn vision_dir() -> PathBuf {
    fixtures_root().join("vision")
}

fn meta() -> Value {
    read_json(&vision_dir().join("vision.json"))
}

/// The fixture stores each patch row without its temporal axis ([C, P, P]); the processor repeats the one frame
/// `t` times inside each row ([C, T, P, P]).
fn with_time(rows: &[f32], t: usize, patch_area: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * t);
    for channel in rows.chunks(patch_area) {
        for _ in 0..t {
            out.extend_from_slice(channel);
        }
    }
    out
}

/// transformers' pixel values of one fixture image, as a MediaInput.
fn reference_media(pixels: &WeightStore, name: &str, processor: &ImageProcessor) -> MediaInput {
    let grid = grid_of(&i64s(&pixels.get(&format!("{name}.grid_thw")).unwrap()));
    let rows = pixels.get(&format!("{name}.pixel_values")).unwrap().to_f32_vec().unwrap();
    let p = processor.patch_size;
    MediaInput { kind: MediaKind::Image, grid, pixel_values: with_time(&rows, processor.temporal_patch_size, p * p) }
}

fn process_file(processor: &ImageProcessor, name: &str) -> Result<MediaInput, MediaError> {
    let bytes = std::fs::read(vision_dir().join("images").join(name)).unwrap();
    processor.process_bytes(&bytes, &MediaLimits::default())
}

#[test]
fn image_files_preprocess_like_transformers() {
    let meta = meta();
    let pixels = WeightStore::open_file(&vision_dir().join("pixels.safetensors")).unwrap();
    let processor = ImageProcessor::from_dir(&fixture_checkpoint("moe_bf16")).unwrap();
    let images = meta["images"].as_object().unwrap();
    assert!(images.len() >= 10);
    let mut failures = Vec::new();
    for name in images.keys() {
        let want = reference_media(&pixels, name, &processor);
        let got = process_file(&processor, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.grid, want.grid, "{name}: grid");
        assert_eq!(got.pixel_values.len(), want.pixel_values.len(), "{name}: pixel count");
        let (mean, max, exact) = pixel_diff(&got.pixel_values, &want.pixel_values);
        eprintln!("{name}: grid {:?}, mean |diff| {mean:.2e}, max {max:.2e}, {:.2}% exact", got.grid, exact * 100.0);
        if mean >= MAX_PIXEL_MEAN_ABS {
            failures.push(format!("{name}: mean |diff| {mean:.2e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

struct Case {
    name: String,
    checkpoint: PathBuf,
    images: Vec<String>,
    text: String,
    prompt: String,
}

fn cases() -> Vec<Case> {
    let cases: Vec<Case> = meta()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().into(),
            checkpoint: fixture_checkpoint(c["checkpoint"].as_str().unwrap()),
            images: c["images"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect(),
            text: c["text"].as_str().unwrap().into(),
            prompt: c["prompt"].as_str().unwrap().into(),
        })
        .collect();
    assert!(cases.iter().any(|c| c.images.len() == 2));
    cases
}

fn case_ids(prompts: &WeightStore, case: &Case) -> Vec<u32> {
    i64s(&prompts.get(&format!("{}.input_ids", case.name)).unwrap()).iter().map(|&v| v as u32).collect()
}

#[test]
fn prompt_ids_match_transformers() {
    let prompts = WeightStore::open_file(&vision_dir().join("prompts.safetensors")).unwrap();
    for case in cases() {
        let template = ChatTemplate::from_dir(&case.checkpoint).unwrap();
        let tokenizer = Tokenizer::from_dir(&case.checkpoint).unwrap();
        let processor = ImageProcessor::from_dir(&case.checkpoint).unwrap();
        let mut content: Vec<Value> = case.images.iter().map(|_| json!({"type": "image"})).collect();
        content.push(json!({"type": "text", "text": case.text}));
        let messages = [json!({"role": "user", "content": content})];
        let opts = RenderOptions { add_generation_prompt: true, ..Default::default() };
        let text = template.render(&messages, &opts).unwrap();
        assert_eq!(text, case.prompt, "{}: rendered prompt", case.name);
        let ids = tokenizer.encode_prompt(&text).unwrap();
        let counts: Vec<usize> = case
            .images
            .iter()
            .map(|img| merged_tokens(process_file(&processor, img).unwrap().grid, processor.merge_size))
            .collect();
        let image_token = tokenizer.token_to_id("<|image|>").unwrap();
        let expanded = expand_image_placeholders(&ids, image_token, &counts).unwrap();
        assert_eq!(expanded, case_ids(&prompts, &case), "{}: token ids", case.name);
        eprintln!("{}: {} ids, image tokens {counts:?}", case.name, expanded.len());
    }
}

#[test]
fn image_prompt_logits_match_transformers() {
    let pixels = WeightStore::open_file(&vision_dir().join("pixels.safetensors")).unwrap();
    let prompts = WeightStore::open_file(&vision_dir().join("prompts.safetensors")).unwrap();
    for case in cases() {
        let p = Pipeline::load(&case.checkpoint, CpuBackend, &mut |_| {}).unwrap();
        let processor = ImageProcessor::from_dir(&case.checkpoint).unwrap();
        let ids = case_ids(&prompts, &case);
        let want = prompts.get(&format!("{}.logits", case.name)).unwrap();
        let vocab = want.shape[1];
        let want = want.to_f32_vec().unwrap();
        let grids = i64s(&prompts.get(&format!("{}.image_grid_thw", case.name)).unwrap());

        // The model alone: transformers' pixel values.
        let media: Vec<MediaInput> = case.images.iter().map(|n| reference_media(&pixels, n, &processor)).collect();
        for (m, thw) in media.iter().zip(grids.chunks(3)) {
            assert_eq!(m.grid, grid_of(thw), "{}: grid", case.name);
        }
        let logits = p.prompt_logits(&Prompt { ids: ids.clone(), media }, 0).unwrap();
        let model_err = worst_row(&logits, &want, vocab);

        // End to end from the files.
        let media: Vec<MediaInput> = case.images.iter().map(|n| process_file(&processor, n).unwrap()).collect();
        let logits = p.prompt_logits(&Prompt { ids, media }, 0).unwrap();
        let file_err = worst_row(&logits, &want, vocab);
        eprintln!(
            "{}: worst relative L2 per position {model_err:.2e} (transformers' pixels), {file_err:.2e} (from files)",
            case.name
        );
        assert!(model_err <= MAX_REL_L2_PIXELS, "{}: {model_err:.2e}", case.name);
        assert!(file_err <= MAX_REL_L2_FILES, "{}: {file_err:.2e} > {MAX_REL_L2_FILES:.0e}", case.name);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Hostile input. PNGs are written by hand (tests/common/png.rs) so that the header can claim anything.

#[test]
fn hostile_files_fail_with_typed_errors() {
    let processor = ImageProcessor::default();
    let limits = MediaLimits::default();
    let run = |bytes: &[u8]| processor.process_bytes(bytes, &limits);

    // The hand-written PNG writer produces valid files.
    let ok = png(40, 30, &rgb_rows(40, 30));
    assert_eq!(run(&ok).unwrap().grid, Grid { t: 1, h: 6, w: 8 });

    // A decompression bomb: a few hundred bytes whose header claims 100000 x 100000 pixels.
    let bomb = png(100_000, 100_000, &rgb_rows(4, 4));
    match run(&bomb) {
        Err(MediaError::TooManyPixels { width: 100_000, height: 100_000, .. }) => {}
        other => panic!("bomb: {:?}", other.map(|m| m.grid)),
    }

    // Truncated files: PIL refuses these halves (a GIF whose first frame is complete it accepts, and so does glmv).
    for name in ["rgb_100x100.png", "photo444_61x93.jpg", "lossless_50x70.webp", "bmp_33x45.bmp"] {
        let bytes = std::fs::read(vision_dir().join("images").join(name)).unwrap();
        let cut = &bytes[..bytes.len() / 2];
        match run(cut) {
            Err(MediaError::Decode { .. }) => {}
            other => panic!("{name} cut in half: {:?}", other.map(|m| m.grid)),
        }
    }

    // Not an image.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    assert!(matches!(run(&noise), Err(MediaError::UnknownFormat)), "{:?}", run(&noise).map(|m| m.grid));
    assert!(matches!(run(b""), Err(MediaError::UnknownFormat)));

    // A 900 x 3 strip: aspect ratio 300 > 200, refused from the header.
    let strip = png(900, 3, &rgb_rows(900, 3));
    match run(&strip) {
        Err(MediaError::AspectRatio { width: 900, height: 3, ratio, limit }) => assert!(ratio > limit),
        other => panic!("strip: {:?}", other.map(|m| m.grid)),
    }

    // Over the encoded-size limit.
    let small = MediaLimits { max_encoded_bytes: 100, ..limits };
    assert!(matches!(processor.process_bytes(&ok, &small), Err(MediaError::TooLarge { .. })));
}
