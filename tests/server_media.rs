//! Images and videos through `glmv serve` end to end: content parts as clients send them (a `file://` path under the allowed
//! root and a `data:` URL in one message), fetched, decoded and preprocessed on the server's workers, run through
//! the vision tower, and checked against transformers' fixtures (scripts/fixtures/gen_vision_fixtures.py): the
//! prompt length equals `Glm4vProcessor`'s expanded ids and the first greedy token is the argmax of transformers'
//! logits at the last prompt position, with its log-probability.
mod common;

use base64::Engine as _;
use common::{
    fixtures_root,
    png::{png, rgb_rows},
    server::{post_json, ServerProcess},
    VisionCaseReference,
};
use glmv_runtime::text::Tokenizer;
use serde_json::{json, Value};

/// Decoding and preprocessing are bit-exact with PIL (JPEG included; tests/vision_parity.rs gets logits within a
/// relative L2 of a few 1e-6 with an f32 KV cache). The server keeps its KV cache in BF16 (SGLang's default for a
/// BF16 model), which moves these log-probabilities by about 3e-3.
const MAX_LOGPROB_DIFF: f64 = 1e-2;
/// Alternatives compared at the first generated position.
const TOP: usize = 5;

struct Case {
    name: &'static str,
    checkpoint: &'static str,
    images: [&'static str; 2],
    text: &'static str,
}

/// The two-image cases of the vision fixtures, one per family.
const CASES: [Case; 2] = [
    Case {
        name: "moe_two_images",
        checkpoint: "moe_bf16",
        images: ["small_42x70.png", "exif6_60x80.jpg"],
        text: "What is the weather in the picture?",
    },
    Case {
        name: "dense_two_images",
        checkpoint: "dense_bf16",
        images: ["wide_60x1000.png", "anim_48x64.gif"],
        text: "How many fruits are there?",
    },
];

fn images_dir() -> std::path::PathBuf {
    fixtures_root().join("vision/images").canonicalize().unwrap()
}

/// What transformers computed for a case: the expanded prompt length, and the log-softmax of the last row.
struct Expected {
    prompt_tokens: usize,
    last_logprobs: Vec<f64>,
}

fn expected(reference: VisionCaseReference) -> Expected {
    let last: Vec<f64> = reference.last_row().iter().map(|&v| v as f64).collect();
    let max = last.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let log_sum = last.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
    Expected { prompt_tokens: reference.input_ids.len(), last_logprobs: last.iter().map(|v| v - log_sum).collect() }
}

/// The first image by path under the allowed root, the second inline as base64, then the question.
fn request(case: &Case, stream: bool) -> Value {
    let file_url = format!("file://{}", images_dir().join(case.images[0]).display());
    let bytes = std::fs::read(images_dir().join(case.images[1])).unwrap();
    let mime = match case.images[1].rsplit('.').next().unwrap() {
        "jpg" => "image/jpeg".to_string(),
        other => format!("image/{other}"),
    };
    let data_url = format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes));
    let mut body = json!({
        "model": "default",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": file_url}},
            {"type": "image_url", "image_url": {"url": data_url}},
            {"type": "text", "text": case.text}]}],
        "temperature": 0, "max_tokens": 1, "logprobs": true, "top_logprobs": TOP,
        "stream": stream,
    });
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// The generated token (as text), its log-probability and the top alternatives' log-probabilities (best first),
/// from a non-streamed or streamed answer.
fn first_token(body: &Value) -> (String, f64, Vec<f64>) {
    let lp = &body["choices"][0]["logprobs"]["content"][0];
    let top = lp["top_logprobs"].as_array().unwrap().iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
    (lp["token"].as_str().unwrap().to_string(), lp["logprob"].as_f64().unwrap(), top)
}

fn usage_prompt(body: &Value) -> usize {
    body["usage"]["prompt_tokens"].as_u64().unwrap() as usize
}

/// Sends `request(false)` and `request(true)` and checks the answers against transformers' expectations: prompt
/// length, greedy token, its log-probability and the top alternatives, and the streamed answer equal to the plain one.
fn check_answer(addr: &str, name: &str, tokenizer: &Tokenizer, want: &Expected, request: impl Fn(bool) -> Value) {
    let argmax =
        (0..want.last_logprobs.len()).max_by(|&a, &b| want.last_logprobs[a].total_cmp(&want.last_logprobs[b])).unwrap();
    let want_token = tokenizer.decode(&[argmax as u32], false).unwrap();

    let plain = post_json(addr, "/v1/chat/completions", &request(false));
    assert_eq!(plain.status, 200, "{name}: {}", plain.body);
    let (token, logprob, top) = first_token(&plain.json());
    let prompt_tokens = usage_prompt(&plain.json());

    let streamed = post_json(addr, "/v1/chat/completions", &request(true));
    assert_eq!(streamed.status, 200, "{name}");
    let chunks = streamed.chunks();
    let with_logprobs = chunks.iter().find(|c| c["choices"][0]["logprobs"].is_object()).unwrap();
    let (stream_token, stream_logprob, _) = first_token(with_logprobs);
    let stream_prompt_tokens = usage_prompt(chunks.last().unwrap());

    eprintln!(
        "{name}: {prompt_tokens} prompt tokens, first token {token:?} logprob {logprob:.4} (transformers {want_token:?} {:.4})",
        want.last_logprobs[argmax]
    );
    assert_eq!(prompt_tokens, want.prompt_tokens, "{name}: prompt length with the media expanded");
    assert_eq!(token, want_token, "{name}: greedy token");
    assert!((logprob - want.last_logprobs[argmax]).abs() < MAX_LOGPROB_DIFF, "{name}: logprob {logprob}");
    let mut want_top = want.last_logprobs.clone();
    want_top.sort_by(|a, b| b.total_cmp(a));
    assert_eq!(top.len(), TOP, "{name}");
    for (got, want) in top.iter().zip(&want_top) {
        assert!((got - want).abs() < MAX_LOGPROB_DIFF, "{name}: top logprobs {top:?} vs {:?}", &want_top[..TOP]);
    }
    assert_eq!((stream_token, stream_logprob), (token, logprob), "{name}: streamed answer");
    assert_eq!(stream_prompt_tokens, prompt_tokens, "{name}: streamed usage");
}

#[test]
fn two_images_by_path_and_data_url_match_transformers() {
    let allowed = images_dir();
    for case in &CASES {
        let checkpoint = fixtures_root().join(case.checkpoint).join("checkpoint");
        let tokenizer = Tokenizer::from_dir(&checkpoint).unwrap();
        let server =
            ServerProcess::start(Some(&checkpoint), &["--allowed-local-media-path", allowed.to_str().unwrap()]);
        check_answer(&server.addr, case.name, &tokenizer, &expected(VisionCaseReference::load(case.name)), |stream| {
            request(case, stream)
        });
    }
}

/// Video cases of tests/fixtures/video (scripts/fixtures/gen_video_fixtures.py) whose video processor is the
/// checkpoint's own (GLM-4.1V/4.5V sampling): (case, checkpoint, video, text).
const VIDEO_CASES: [(&str, &str, &str, &str); 2] = [
    ("moe_glm4v_baseline", "moe_bf16", "baseline_64x48", "What happens in the video?"),
    ("dense_glm4v_high", "dense_bf16", "high_90x62", "Describe this video."),
];

#[test]
fn videos_by_path_and_data_url_match_transformers() {
    let videos = fixtures_root().join("video/videos").canonicalize().unwrap();
    for (i, (name, checkpoint, video, text)) in VIDEO_CASES.into_iter().enumerate() {
        let checkpoint = fixtures_root().join(checkpoint).join("checkpoint");
        let tokenizer = Tokenizer::from_dir(&checkpoint).unwrap();
        let server = ServerProcess::start(Some(&checkpoint), &["--allowed-local-media-path", videos.to_str().unwrap()]);
        let path = videos.join(format!("{video}.mp4"));
        // One case by path, the other inline.
        let url = if i == 0 {
            format!("file://{}", path.display())
        } else {
            let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&path).unwrap());
            format!("data:video/mp4;base64,{b64}")
        };
        let reference = VisionCaseReference::load_from("video/prompts.safetensors", name);
        check_answer(&server.addr, name, &tokenizer, &expected(reference), |stream| {
            let mut body = json!({
                "model": "default",
                "messages": [{"role": "user", "content": [
                    {"type": "video_url", "video_url": {"url": url}},
                    {"type": "text", "text": text}]}],
                "temperature": 0, "max_tokens": 1, "logprobs": true, "top_logprobs": TOP,
                "stream": stream,
            });
            if stream {
                body["stream_options"] = json!({"include_usage": true});
            }
            body
        });
    }
}

#[test]
fn undecodable_videos_name_their_part() {
    let checkpoint = fixtures_root().join("moe_bf16/checkpoint");
    let server = ServerProcess::start(Some(&checkpoint), &["--max-video-frames", "20"]);
    let good = std::fs::read(fixtures_root().join("video/videos/high_90x62.mp4")).unwrap();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut hevc = good.clone();
    let stsd = good.windows(4).position(|w| w == b"stsd").unwrap();
    hevc[stsd + 16..stsd + 20].copy_from_slice(b"hvc1");
    let cases: [(String, u16, &str); 4] = [
        (b64(b"not a video at all"), 400, "not an MP4 video"),
        (b64(&good[..good.len() / 2]), 400, "invalid or truncated MP4/H.264 video"),
        // 40 frames, over the 20 set above.
        (b64(&good), 400, "the video has 40 frames, over the limit of 20"),
        (b64(&hevc), 415, "H.265/HEVC"),
    ];
    assert_part_errors(&server.addr, "video_url", "video/mp4", cases);
}

/// Each (base64 payload, status, message part) sent as the second content part (`kind`, a `data:MIME` URL) must be
/// refused with that status and a message naming the part; the server stays healthy after all of them.
fn assert_part_errors(
    addr: &str,
    kind: &str,
    mime: &str,
    cases: impl IntoIterator<Item = (String, u16, &'static str)>,
) {
    for (payload, status, needle) in cases {
        let body = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "see"},
            {"type": kind, kind: {"url": format!("data:{mime};base64,{payload}")}}]}]});
        let r = post_json(addr, "/v1/chat/completions", &body);
        let text = r.body.clone();
        assert_eq!(r.status, status, "{needle}: {text}");
        assert!(text.contains("messages[0].content[1]") && text.contains(needle), "{needle}: {text}");
    }
    assert_eq!(common::server::get(addr, "/health").status, 200);
}

#[test]
fn undecodable_images_name_their_part() {
    let checkpoint = fixtures_root().join("dense_bf16/checkpoint");
    let server = ServerProcess::start(Some(&checkpoint), &["--max-media-pixels", "1000000"]);
    let valid = std::fs::read(images_dir().join("rgb_100x100.png")).unwrap();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let cases: [(String, u16, &str); 4] = [
        (b64(b"not an image at all"), 400, "not an image in a supported format"),
        (b64(&valid[..valid.len() / 2]), 400, "invalid or truncated"),
        // A header claiming 2000 x 2000 pixels, over the 1M limit set above, in a file of a few hundred bytes.
        (b64(&png(2000, 2000, &rgb_rows(4, 4))), 400, "over the limit of 1000000 pixels"),
        // 900 x 3: an aspect ratio of 300, over smart_resize's 200.
        (b64(&png(900, 3, &rgb_rows(900, 3))), 400, "aspect ratio"),
    ];
    assert_part_errors(&server.addr, "image_url", "image/png", cases);
}
