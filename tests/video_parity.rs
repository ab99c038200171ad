//! Videos against PyAV and transformers (fixtures from scripts/fixtures/gen_video_fixtures.py): glmv's MP4 demuxer,
//! OpenH264 decoding and swscale-exact RGB conversion against PyAV's frames; both video processors
//! (`Glm4vVideoProcessor`, `Glm46VVideoProcessor`) against transformers' sampled indices, timestamps and pixel values;
//! chat prompts with a video (and a video with an image) against the processors' expanded ids and the models'
//! float32 logits, for both families; and hostile files against the typed errors.
mod common;

use std::path::PathBuf;

use common::*;
use glmv_runtime::{
    backend::CpuBackend,
    media::{
        merged_tokens,
        video::{self, decode_all_frames, mp4, VideoFamily},
        ImageProcessor, MediaError, MediaLimits, ProcessedVideo, VideoProcessor,
    },
    model::MediaKind,
    pipeline::{MediaInput, Pipeline, Prompt},
    text::{
        template::{ChatTemplate, RenderOptions},
        Tokenizer,
    },
    weights::WeightStore,
};
use serde_json::{json, Value};

fn video_dir() -> PathBuf {
    fixtures_root().join("video")
}

fn meta() -> Value {
    read_json(&video_dir().join("video.json"))
}

fn video_bytes(name: &str) -> Vec<u8> {
    std::fs::read(video_dir().join("videos").join(format!("{name}.mp4"))).unwrap()
}

/// The video processor a fixture key names: the checkpoints' own (GLM-4.1V/4.5V style) or the GLM-4.6V config.
fn processor(proc: &str) -> VideoProcessor {
    let dir = if proc == "glm4v" { fixture_checkpoint("moe_bf16") } else { video_dir().join("glm46v") };
    VideoProcessor::from_dir(&dir).unwrap()
}

/// SHA-256 (first 16 bytes, hex) as the fixture script prints it.
fn sha256_hex32(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn frames_match_pyav_bit_for_bit() {
    let meta = meta();
    let frames = WeightStore::open_file(&video_dir().join("frames.safetensors")).unwrap();
    for (name, v) in meta["videos"].as_object().unwrap() {
        let decoded = decode_all_frames(&video_bytes(name), &MediaLimits::default()).unwrap();
        let m = &v["metadata"];
        assert_eq!(decoded.metadata.total_num_frames as u64, m["total_num_frames"].as_u64().unwrap(), "{name}");
        assert_eq!(decoded.metadata.fps, m["fps"].as_f64().unwrap(), "{name}: fps");
        assert_eq!(decoded.metadata.duration, m["duration"].as_f64().unwrap(), "{name}: duration");
        let want_size = (m["width"].as_u64().unwrap() as usize, m["height"].as_u64().unwrap() as usize);
        assert_eq!((decoded.metadata.width, decoded.metadata.height), want_size, "{name}: size");

        // The stored frames, byte by byte (reporting how far off any differing byte is).
        let stored = frames.get(&format!("{name}.frames")).unwrap();
        let indices = i64s(&frames.get(&format!("{name}.frame_indices")).unwrap());
        let frame_len = want_size.0 * want_size.1 * 3;
        for (k, &i) in indices.iter().enumerate() {
            let want = &stored.bytes[k * frame_len..(k + 1) * frame_len];
            let got = &decoded.frames[i as usize].pixels;
            let max = got.iter().zip(want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
            let differing = got.iter().zip(want).filter(|(a, b)| a != b).count();
            eprintln!("{name} frame {i}: {differing} of {frame_len} bytes differ, max |diff| {max}");
            assert_eq!(max, 0, "{name} frame {i}");
        }
        // Every frame by digest.
        let digests: Vec<String> = decoded.frames.iter().map(|f| sha256_hex32(&f.pixels)).collect();
        let want: Vec<&str> = v["frame_sha256"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
        assert_eq!(digests, want, "{name}: frame digests");
        eprintln!("{name}: all {} frames bit-exact with PyAV", digests.len());
    }
}

/// transformers' pixel values of one (video, processor) pair.
fn reference_pixels(pixels: &WeightStore, key: &str, proc: &str) -> MediaInput {
    let lut = pixels.get(&format!("{proc}.lut")).unwrap().to_f32_vec().unwrap();
    let bytes = pixels.get(&format!("{key}.pixel_bytes")).unwrap();
    let width = bytes.shape[1];
    let per_channel = width / 3;
    let pixel_values =
        bytes.bytes.iter().enumerate().map(|(i, &b)| lut[(i % width) / per_channel * 256 + b as usize]).collect();
    let grid = grid_of(&i64s(&pixels.get(&format!("{key}.grid_thw")).unwrap()));
    MediaInput { kind: MediaKind::Video, grid, pixel_values }
}

fn process(proc: &str, video: &str) -> ProcessedVideo {
    processor(proc).process_bytes(&video_bytes(video), &MediaLimits::default()).unwrap()
}

#[test]
fn processors_match_transformers() {
    let meta = meta();
    let pixels = WeightStore::open_file(&video_dir().join("pixels.safetensors")).unwrap();
    assert_eq!(processor("glm4v").family, VideoFamily::Glm4v);
    assert_eq!(processor("glm46v").family, VideoFamily::Glm46v);
    for (key, p) in meta["processors"].as_object().unwrap() {
        let (video, proc) = key.split_once('.').unwrap();
        let got = process(proc, video);
        let want_indices: Vec<usize> =
            p["indices"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(got.indices, want_indices, "{key}: sampled frames");
        let want = reference_pixels(&pixels, key, proc);
        assert_eq!(got.input.grid, want.grid, "{key}: grid");
        assert_eq!(got.input.pixel_values.len(), want.pixel_values.len(), "{key}");
        let (mean, max, exact) = pixel_diff(&got.input.pixel_values, &want.pixel_values);
        eprintln!(
            "{key}: frames {:?}, grid {:?}, mean |diff| {mean:.2e}, max {max:.2e}, {:.2}% exact",
            got.indices,
            got.input.grid,
            exact * 100.0
        );
        assert!(mean < MAX_PIXEL_MEAN_ABS, "{key}: mean |diff| {mean:.2e}");
    }
}

struct Case {
    name: String,
    checkpoint: PathBuf,
    proc: String,
    video: String,
    image: Option<String>,
    text: String,
    prompt: String,
}

fn cases() -> Vec<Case> {
    meta()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().into(),
            checkpoint: fixture_checkpoint(c["checkpoint"].as_str().unwrap()),
            proc: c["proc"].as_str().unwrap().into(),
            video: c["video"].as_str().unwrap().into(),
            image: c["image"].as_str().map(str::to_owned),
            text: c["text"].as_str().unwrap().into(),
            prompt: c["prompt"].as_str().unwrap().into(),
        })
        .collect()
}

fn image_file(name: &str) -> MediaInput {
    let bytes = std::fs::read(fixtures_root().join("vision/images").join(name)).unwrap();
    ImageProcessor::from_dir(&fixture_checkpoint("moe_bf16"))
        .unwrap()
        .process_bytes(&bytes, &MediaLimits::default())
        .unwrap()
}

/// The case's prompt ids as glmv builds them: the template rendered, tokenised, and the `<|video|>` / `<|image|>`
/// placeholders replaced by the media's ids.
fn build_ids(case: &Case, video: &ProcessedVideo, image: Option<&MediaInput>) -> Vec<u32> {
    let template = ChatTemplate::from_dir(&case.checkpoint).unwrap();
    let tokenizer = Tokenizer::from_dir(&case.checkpoint).unwrap();
    let mut content = vec![json!({"type": "video"})];
    if image.is_some() {
        content.push(json!({"type": "image"}));
    }
    content.push(json!({"type": "text", "text": case.text}));
    let opts = RenderOptions { add_generation_prompt: true, ..Default::default() };
    let text = template.render(&[json!({"role": "user", "content": content})], &opts).unwrap();
    assert_eq!(text, case.prompt, "{}: rendered prompt", case.name);
    let ids = tokenizer.encode_prompt(&text).unwrap();
    let video_ids = video.prompt_ids(2, &tokenizer).unwrap();
    let (video_token, image_token) = (tokenizer.token_to_id("<|video|>"), tokenizer.token_to_id("<|image|>"));
    let mut out = Vec::new();
    for t in ids {
        if Some(t) == video_token {
            out.extend_from_slice(&video_ids);
        } else if Some(t) == image_token {
            out.extend(std::iter::repeat_n(t, merged_tokens(image.unwrap().grid, 2)));
        } else {
            out.push(t);
        }
    }
    out
}

fn case_ids(prompts: &WeightStore, case: &Case) -> Vec<u32> {
    i64s(&prompts.get(&format!("{}.input_ids", case.name)).unwrap()).iter().map(|&v| v as u32).collect()
}

#[test]
fn prompt_ids_match_transformers() {
    let prompts = WeightStore::open_file(&video_dir().join("prompts.safetensors")).unwrap();
    let cases = cases();
    assert!(cases.iter().any(|c| c.image.is_some()) && cases.iter().any(|c| c.proc == "glm46v"));
    for case in cases {
        let video = process(&case.proc, &case.video);
        let image = case.image.as_deref().map(image_file);
        let ids = build_ids(&case, &video, image.as_ref());
        assert_eq!(ids, case_ids(&prompts, &case), "{}: token ids", case.name);
        eprintln!("{}: {} ids, timestamps {:?}", case.name, ids.len(), video.timestamps);
    }
}

#[test]
fn video_prompt_logits_match_transformers() {
    let pixels = WeightStore::open_file(&video_dir().join("pixels.safetensors")).unwrap();
    let prompts = WeightStore::open_file(&video_dir().join("prompts.safetensors")).unwrap();
    for case in cases() {
        let p = Pipeline::load(&case.checkpoint, CpuBackend, &mut |_| {}).unwrap();
        let ids = case_ids(&prompts, &case);
        let want = prompts.get(&format!("{}.logits", case.name)).unwrap();
        let vocab = want.shape[1];
        let want = want.to_f32_vec().unwrap();
        // Media in prompt order: the template puts the video first.
        let with_image = |video: MediaInput| -> Vec<MediaInput> {
            let mut media = vec![video];
            media.extend(case.image.as_deref().map(image_file));
            media
        };

        let reference = reference_pixels(&pixels, &format!("{}.{}", case.video, case.proc), &case.proc);
        let logits = p.prompt_logits(&Prompt { ids: ids.clone(), media: with_image(reference) }, 0).unwrap();
        let model_err = worst_row(&logits, &want, vocab);

        let media = with_image(process(&case.proc, &case.video).input);
        let logits = p.prompt_logits(&Prompt { ids, media }, 0).unwrap();
        let file_err = worst_row(&logits, &want, vocab);
        eprintln!(
            "{}: worst relative L2 per position {model_err:.2e} (transformers' pixels), {file_err:.2e} (from the MP4)",
            case.name
        );
        assert!(model_err <= MAX_REL_L2_PIXELS, "{}: {model_err:.2e}", case.name);
        assert!(file_err <= MAX_REL_L2_FILES, "{}: {file_err:.2e}", case.name);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Hostile input: real files cut and corrupted, and boxes written by hand.

fn run(bytes: &[u8]) -> Result<ProcessedVideo, MediaError> {
    processor("glm4v").process_bytes(bytes, &MediaLimits::default())
}

/// A box: 32-bit size, type, payload.
fn mp4_box(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut b = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
    b.extend_from_slice(kind);
    b.extend_from_slice(payload);
    b
}

/// Offset of the first occurrence of a box type in a file.
fn find(bytes: &[u8], kind: &[u8; 4]) -> usize {
    bytes.windows(4).position(|w| w == kind).unwrap() - 4
}

#[test]
fn hostile_files_fail_with_typed_errors() {
    let good = video_bytes("high_90x62");
    assert!(run(&good).is_ok());

    // Not an MP4 at all, and nothing.
    assert!(matches!(run(b"\x89PNG\r\n\x1a\n0000"), Err(MediaError::NotMp4)));
    assert!(matches!(run(b""), Err(MediaError::NotMp4)));

    // Truncated at many points: always a typed error, never a panic.
    for cut in [8, 16, 40, good.len() / 3, good.len() / 2, good.len() - 100, good.len() - 1] {
        match run(&good[..cut]) {
            Err(MediaError::VideoDecode { .. }) => {}
            other => panic!("cut at {cut}: {:?}", other.map(|v| v.input.grid)),
        }
    }

    // Huge claimed counts: the stsz sample count, and an stco table claiming 2^32-1 entries.
    let mut bad = good.clone();
    let stsz = find(&bad, b"stsz");
    bad[stsz + 16..stsz + 20].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(run(&bad), Err(MediaError::TooManyFrames { .. })), "{:?}", run(&bad).map(|v| v.indices));
    let mut bad = good.clone();
    let stco = find(&bad, b"stco");
    bad[stco + 12..stco + 16].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(run(&bad), Err(MediaError::VideoDecode { .. })));
    // A sample size far past the end of the file.
    let mut bad = good.clone();
    bad[stsz + 20..stsz + 24].copy_from_slice(&0x7fff_ffffu32.to_be_bytes());
    assert!(matches!(run(&bad), Err(MediaError::VideoDecode { .. })));
    // A box claiming more bytes than its parent holds.
    let mut bad = good.clone();
    let stbl = find(&bad, b"stbl");
    bad[stbl..stbl + 4].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
    assert!(matches!(run(&bad), Err(MediaError::VideoDecode { .. })));
    // Zero timescale.
    let mut bad = good.clone();
    let mdhd = find(&bad, b"mdhd");
    let version = bad[mdhd + 8];
    let ts = mdhd + 8 + 4 + if version == 1 { 16 } else { 8 };
    bad[ts..ts + 4].copy_from_slice(&0u32.to_be_bytes());
    assert!(matches!(run(&bad), Err(MediaError::VideoDecode { ref reason }) if reason.contains("timescale")));
    // Garbage sample data: the decoder's error, not a crash.
    let mut bad = good.clone();
    let mdat = find(&bad, b"mdat");
    for (i, b) in bad[mdat + 16..].iter_mut().enumerate() {
        *b = (i * 131 % 251) as u8;
    }
    assert!(run(&bad).is_err());

    // Other codecs are named.
    for (entry, name) in [(b"hvc1", "HEVC"), (b"av01", "AV1")] {
        // The sample entry's type sits after stsd's header, version/flags and entry count, and its own size.
        let mut bad = good.clone();
        let entry_type = find(&bad, b"stsd") + 8 + 8 + 4;
        assert_eq!(&bad[entry_type..entry_type + 4], b"avc1");
        bad[entry_type..entry_type + 4].copy_from_slice(entry);
        match run(&bad) {
            Err(MediaError::UnsupportedVideo { reason }) => assert!(reason.contains(name), "{reason}"),
            other => panic!("{name}: {:?}", other.map(|v| v.indices)),
        }
    }

    // A file with a moov but no video track.
    let moov = mp4_box(b"moov", &mp4_box(b"mvhd", &[0; 100]));
    let file = [mp4_box(b"ftyp", b"isom\0\0\0\0"), moov].concat();
    assert!(matches!(run(&file), Err(MediaError::VideoDecode { ref reason }) if reason.contains("no video track")));

    // Limits: frames, pixels per frame, decoded pixels, file size.
    let limits = MediaLimits::default();
    let p = processor("glm4v");
    let too = |l: MediaLimits| p.process_bytes(&good, &l);
    assert!(matches!(
        too(MediaLimits { max_video_frames: 39, ..limits }),
        Err(MediaError::TooManyFrames { frames: 40, limit: 39 })
    ));
    assert!(matches!(
        too(MediaLimits { max_pixels: 90 * 62 - 1, ..limits }),
        Err(MediaError::FrameTooLarge { width: 90, height: 62, .. })
    ));
    assert!(matches!(
        too(MediaLimits { max_video_decoded_pixels: 40 * 90 * 62 - 1, ..limits }),
        Err(MediaError::VideoTooLong { .. })
    ));
    assert!(matches!(too(MediaLimits { max_encoded_bytes: 1000, ..limits }), Err(MediaError::TooLarge { .. })));
}

#[test]
fn demuxer_reports_decode_and_presentation_order() {
    // The High-profile file has B-frames: decode order differs from presentation order, and the edit list makes
    // the first presented frame start at 0.
    let bytes = video_bytes("high_90x62");
    let track = mp4::parse(&bytes, &MediaLimits::default()).unwrap();
    assert_eq!(track.samples.len(), 40);
    assert!(track.samples.iter().zip(&track.samples[1..]).any(|(a, b)| b.pts < a.pts), "no reordering");
    assert_eq!(track.samples.iter().map(|s| s.pts).min(), Some(0));
    assert!(track.samples[0].sync);
    let sps = video::h264::parse_sps(&track.avc.sps[0]).unwrap();
    assert_eq!((sps.width, sps.height, sps.profile_idc, sps.chroma_format_idc), (90, 62, 100, 1));
    let base = mp4::parse(&video_bytes("baseline_64x48"), &MediaLimits::default()).unwrap();
    assert!(base.samples.iter().all(|s| s.pts == s.dts));
    assert_eq!(video::h264::parse_sps(&base.avc.sps[0]).unwrap().profile_idc, 66);
}
