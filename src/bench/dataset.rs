//! The requests a benchmark sends: `random` (random token ids decoded to text, as bench_serving's random dataset,
//! brought to the asked token count as vLLM's),
//! `random-image` (synthetic images of a given resolution and count, then random text, as its image dataset), and
//! `jsonl` (one chat request per line, e.g. a VisionArena export).
use std::path::Path;

use base64::Engine as _;
use glmv_runtime::{engine::sampler::Rng, text::Tokenizer};
use serde_json::{json, Value};

/// One benchmark request before it is sent: the chat messages (or plain prompt) and its lengths.
#[derive(Debug, Clone)]
pub struct BenchRequest {
    pub content: Content,
    /// Prompt tokens as the client counts them (text only); the server's usage replaces it when reported.
    pub prompt_len: usize,
    /// Output tokens asked for (`max_tokens`).
    pub output_len: usize,
}

#[derive(Debug, Clone)]
pub enum Content {
    /// `messages` of a chat completion.
    Chat(Vec<Value>),
    /// `prompt` of a plain completion.
    Text(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{0}")]
    Invalid(String),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] glmv_runtime::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Lengths of the random datasets: bench_serving's rule, uniform in [max(floor(len * ratio), 1), len].
#[derive(Debug, Clone, Copy)]
pub struct RandomLengths {
    pub input_len: usize,
    pub output_len: usize,
    pub range_ratio: f64,
}

impl RandomLengths {
    fn sample(rng: &mut Rng, len: usize, ratio: f64) -> usize {
        let lo = ((len as f64 * ratio).floor() as usize).clamp(1, len.max(1));
        lo + (rng.next_u64() % (len.max(1) - lo + 1) as u64) as usize
    }
}

/// Rounds of re-encoding [`random_text`] spends to bring a prompt to its length.
const ADJUST_ROUNDS: usize = 4;

/// Random token ids (never special tokens) decoded to text, as bench_serving's random dataset, then brought to `len`
/// tokens as vLLM's random dataset does: re-encoded, cut to `len` or extended with fresh random ids, and decoded again,
/// a few rounds at most. Decoded ids need not re-encode to as many (a BPE merges across their boundaries, and the
/// dummy checkpoints' padding ids decode to `<|reserved_N|>`, a dozen tokens each), and a prompt several times the
/// asked length would measure another workload. The prompt length reported stays `len`, which the server's usage
/// then replaces.
fn random_text(tokenizer: &Tokenizer, ordinary: &[u32], rng: &mut Rng, len: usize) -> Result<String, DatasetError> {
    let mut draw = |ids: &mut Vec<u32>| {
        while ids.len() < len {
            ids.push(ordinary[(rng.next_u64() % ordinary.len() as u64) as usize]);
        }
    };
    let mut ids = Vec::with_capacity(len);
    draw(&mut ids);
    let mut text = tokenizer.decode(&ids, true)?;
    for _ in 0..ADJUST_ROUNDS {
        ids = tokenizer.encode_prompt(&text)?;
        if ids.len() == len {
            break;
        }
        ids.truncate(len);
        draw(&mut ids);
        text = tokenizer.decode(&ids, true)?;
    }
    Ok(text)
}

fn ordinary_ids(tokenizer: &Tokenizer) -> Result<Vec<u32>, DatasetError> {
    let special = tokenizer.special_token_ids();
    let ids: Vec<u32> = (0..tokenizer.vocab_size() as u32).filter(|id| !special.contains(id)).collect();
    if ids.is_empty() {
        return Err(DatasetError::Invalid("the tokenizer has no ordinary tokens".into()));
    }
    Ok(ids)
}

/// `num_prompts` requests with bench_serving's random lengths and random text, which `content` wraps.
fn random_requests(
    tokenizer: &Tokenizer,
    lengths: RandomLengths,
    num_prompts: usize,
    seed: u64,
    mut content: impl FnMut(String, &mut Rng) -> Result<Content, DatasetError>,
) -> Result<Vec<BenchRequest>, DatasetError> {
    let ordinary = ordinary_ids(tokenizer)?;
    let mut rng = Rng::new(seed);
    (0..num_prompts)
        .map(|_| {
            let input_len = RandomLengths::sample(&mut rng, lengths.input_len, lengths.range_ratio);
            let output_len = RandomLengths::sample(&mut rng, lengths.output_len, lengths.range_ratio);
            let text = random_text(tokenizer, &ordinary, &mut rng, input_len)?;
            Ok(BenchRequest { content: content(text, &mut rng)?, prompt_len: input_len, output_len })
        })
        .collect()
}

/// `--dataset-name random`: text prompts of random tokens.
pub fn random(
    tokenizer: &Tokenizer,
    lengths: RandomLengths,
    num_prompts: usize,
    seed: u64,
    chat: bool,
) -> Result<Vec<BenchRequest>, DatasetError> {
    random_requests(tokenizer, lengths, num_prompts, seed, |text, _| {
        Ok(if chat { Content::Chat(vec![json!({"role": "user", "content": text})]) } else { Content::Text(text) })
    })
}

/// What the synthetic images of `--dataset-name random-image` look like.
#[derive(Debug, Clone, Copy)]
pub struct ImageSpec {
    pub count: usize,
    pub width: u32,
    pub height: u32,
    pub png: bool,
    /// Uniform noise (the worst case for JPEG size) instead of white.
    pub noise: bool,
}

/// bench_serving's `--image-resolution`: a preset (4k, 1080p, 720p, 360p) or `HxW`; returns (width, height).
pub fn parse_resolution(s: &str) -> Result<(u32, u32), String> {
    match s {
        "4k" => Ok((3840, 2160)),
        "1080p" => Ok((1920, 1080)),
        "720p" => Ok((1280, 720)),
        "360p" => Ok((640, 360)),
        _ => {
            let (h, w) = s.split_once(['x', 'X']).ok_or_else(|| format!("{s:?}: use 4k, 1080p, 720p, 360p or HxW"))?;
            let dim = |v: &str| v.trim().parse::<u32>().ok().filter(|&v| v > 0).ok_or(format!("{s:?}: bad size"));
            Ok((dim(w)?, dim(h)?))
        }
    }
}

fn synthetic_image(spec: &ImageSpec, rng: &mut Rng) -> Result<String, DatasetError> {
    let n = spec.width as usize * spec.height as usize * 3;
    let pixels: Vec<u8> = if spec.noise { (0..n).map(|_| rng.next_u64() as u8).collect() } else { vec![255; n] };
    let img = image::RgbImage::from_raw(spec.width, spec.height, pixels)
        .ok_or_else(|| DatasetError::Invalid("image buffer size".into()))?;
    let mut bytes = Vec::new();
    let encoded = if spec.png {
        img.write_with_encoder(image::codecs::png::PngEncoder::new(&mut bytes))
    } else {
        // bench_serving encodes its JPEGs at quality 85.
        img.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85))
    };
    encoded.map_err(|e| DatasetError::Invalid(format!("encoding a synthetic image: {e}")))?;
    let mime = if spec.png { "image/png" } else { "image/jpeg" };
    Ok(format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

/// `--dataset-name random-image`: `count` images as `data:` URLs, then random text; images first, as bench_serving
/// sends them. Requests share nothing, so every image is distinct.
pub fn random_image(
    tokenizer: &Tokenizer,
    lengths: RandomLengths,
    spec: ImageSpec,
    num_prompts: usize,
    seed: u64,
) -> Result<Vec<BenchRequest>, DatasetError> {
    random_requests(tokenizer, lengths, num_prompts, seed, |text, rng| {
        let mut parts = Vec::with_capacity(spec.count + 1);
        for _ in 0..spec.count {
            parts.push(json!({"type": "image_url", "image_url": {"url": synthetic_image(&spec, rng)?}}));
        }
        parts.push(json!({"type": "text", "text": text}));
        Ok(Content::Chat(vec![json!({"role": "user", "content": parts})]))
    })
}

/// `--dataset-name jsonl --dataset-path FILE`: one request per line, either a chat completion body
/// (`{"messages": [...], "max_tokens": N}`) or the short form `{"text": "...", "images": ["path or URL", ...],
/// "output_len": N}`. Local image paths are sent inline as `data:` URLs, so the server needs no file access. A line
/// without a length asks for `default_output_len` tokens. Requests are repeated in order to reach `num_prompts`
/// (bench_serving oversamples a short dataset the same way).
pub fn jsonl(
    path: &Path,
    tokenizer: &Tokenizer,
    default_output_len: usize,
    num_prompts: usize,
) -> Result<Vec<BenchRequest>, DatasetError> {
    let io = |e| DatasetError::Io { path: path.display().to_string(), source: e };
    let text = std::fs::read_to_string(path).map_err(io)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = |msg: String| DatasetError::Invalid(format!("{}:{}: {msg}", path.display(), i + 1));
        let v: Value = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
        lines.push(jsonl_request(&v, base, tokenizer, default_output_len).map_err(|e| at(e.to_string()))?);
    }
    if lines.is_empty() {
        return Err(DatasetError::Invalid(format!("{}: no requests", path.display())));
    }
    Ok(lines.iter().cycle().take(num_prompts).cloned().collect())
}

fn jsonl_request(
    v: &Value,
    base: &Path,
    tokenizer: &Tokenizer,
    default_output_len: usize,
) -> Result<BenchRequest, DatasetError> {
    let invalid = |msg: &str| DatasetError::Invalid(msg.to_string());
    let length = |keys: &[&str]| keys.iter().find_map(|k| v.get(*k).and_then(Value::as_u64));
    let output_len = length(&["max_completion_tokens", "max_tokens", "output_len"])
        .map_or(default_output_len, |n| n as usize)
        .max(1);
    if let Some(messages) = v.get("messages") {
        let messages = messages.as_array().ok_or_else(|| invalid("\"messages\" must be an array"))?.clone();
        let text: String = messages.iter().flat_map(message_texts).collect::<Vec<_>>().join("\n");
        let prompt_len = tokenizer.encode_prompt(&text)?.len();
        return Ok(BenchRequest { content: Content::Chat(messages), prompt_len, output_len });
    }
    let text = v
        .get("text")
        .or_else(|| v.get("prompt"))
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("a line needs \"messages\" or \"text\""))?;
    let mut parts = Vec::new();
    for image in v.get("images").and_then(Value::as_array).into_iter().flatten() {
        let image = image.as_str().ok_or_else(|| invalid("\"images\" must hold strings"))?;
        parts.push(json!({"type": "image_url", "image_url": {"url": image_url(image, base)?}}));
    }
    parts.push(json!({"type": "text", "text": text}));
    let prompt_len = tokenizer.encode_prompt(text)?.len();
    Ok(BenchRequest { content: Content::Chat(vec![json!({"role": "user", "content": parts})]), prompt_len, output_len })
}

/// The text of a chat message (string content or text parts).
fn message_texts(message: &Value) -> Vec<String> {
    match message.get("content") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).map(str::to_string).collect()
        }
        _ => Vec::new(),
    }
}

/// A URL as is, or a local file (relative to the dataset's directory) inlined as a `data:` URL.
fn image_url(image: &str, base: &Path) -> Result<String, DatasetError> {
    if ["http://", "https://", "data:"].iter().any(|p| image.starts_with(p)) {
        return Ok(image.to_string());
    }
    let path = base.join(image.strip_prefix("file://").unwrap_or(image));
    let bytes = std::fs::read(&path).map_err(|e| DatasetError::Io { path: path.display().to_string(), source: e })?;
    let mime = image::guess_format(&bytes).map(|f| f.to_mime_type()).unwrap_or("application/octet-stream");
    Ok(format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

#[cfg(test)]
mod tests {
    use glmv_runtime::config::known::{KnownModel, Precision};

    use super::*;

    #[test]
    fn random_lengths_follow_bench_serving() {
        let mut rng = Rng::new(1);
        // ratio 0: uniform in [1, 100]; ratio 1: exactly 100; ratio 0.5: [50, 100].
        let zero: Vec<usize> = (0..2000).map(|_| RandomLengths::sample(&mut rng, 100, 0.0)).collect();
        assert!(zero.iter().all(|&l| (1..=100).contains(&l)));
        assert!(zero.contains(&1) && zero.contains(&100));
        assert!((0..100).all(|_| RandomLengths::sample(&mut rng, 100, 1.0) == 100));
        assert!((0..500).map(|_| RandomLengths::sample(&mut rng, 100, 0.5)).all(|l| (50..=100).contains(&l)));
    }

    #[test]
    fn resolutions() {
        assert_eq!(parse_resolution("1080p"), Ok((1920, 1080)));
        assert_eq!(parse_resolution("448x672"), Ok((672, 448)));
        assert!(parse_resolution("0x5").is_err());
        assert!(parse_resolution("big").is_err());
    }

    #[test]
    fn random_prompts_avoid_special_tokens_and_are_seeded() {
        let tok = glmv_runtime::demo::tokenizer().unwrap();
        let lengths = RandomLengths { input_len: 64, output_len: 8, range_ratio: 1.0 };
        let a = random(&tok, lengths, 3, 7, false).unwrap();
        let b = random(&tok, lengths, 3, 7, false).unwrap();
        for (x, y) in a.iter().zip(&b) {
            let (Content::Text(tx), Content::Text(ty)) = (&x.content, &y.content) else { panic!("text prompts") };
            assert_eq!(tx, ty);
            assert_eq!((x.prompt_len, x.output_len), (64, 8));
            let special = tok.special_token_ids();
            assert!(tok.encode_prompt(tx).unwrap().iter().all(|id| !special.contains(id)));
        }
    }

    #[test]
    fn random_prompts_reencode_to_their_length() {
        // The dummy checkpoint of GLM-4.5V's shapes: most of its ids are padding that decodes to `<|reserved_N|>`.
        let dir = std::env::temp_dir().join(format!("glmv-bench-dataset-{}", std::process::id()));
        let config = KnownModel::from_name("glm-4.5v").unwrap().config_json(Precision::Fp8).unwrap();
        glmv_runtime::demo::write_shapes_checkpoint(&dir, &config).unwrap();
        let shapes = Tokenizer::from_dir(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        for tok in [shapes, glmv_runtime::demo::tokenizer().unwrap()] {
            let lengths = RandomLengths { input_len: 1000, output_len: 8, range_ratio: 0.0 };
            for req in random(&tok, lengths, 8, 3, false).unwrap() {
                let Content::Text(text) = &req.content else { panic!("text prompts") };
                let got = tok.encode_prompt(text).unwrap().len();
                assert!(got.abs_diff(req.prompt_len) <= req.prompt_len / 100, "{got} tokens for {}", req.prompt_len);
            }
        }
    }

    #[test]
    fn random_images_are_data_urls_of_the_asked_size() {
        let tok = glmv_runtime::demo::tokenizer().unwrap();
        let lengths = RandomLengths { input_len: 16, output_len: 4, range_ratio: 1.0 };
        let spec = ImageSpec { count: 2, width: 40, height: 30, png: false, noise: true };
        let reqs = random_image(&tok, lengths, spec, 1, 3).unwrap();
        let Content::Chat(messages) = &reqs[0].content else { panic!("chat") };
        let parts = messages[0]["content"].as_array().unwrap();
        assert_eq!(parts.len(), 3);
        let url = parts[0]["image_url"]["url"].as_str().unwrap();
        let b64 = url.strip_prefix("data:image/jpeg;base64,").unwrap();
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!((img.width(), img.height()), (40, 30));
        assert_eq!(parts[2]["type"], "text");
    }

    #[test]
    fn jsonl_lines_both_forms() {
        let dir = std::env::temp_dir().join(format!("glmv-bench-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let lines = [
            r#"{"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}"#,
            r#"{"text": "describe", "images": ["a.png", "https://example.com/x.jpg"]}"#,
        ];
        std::fs::write(dir.join("d.jsonl"), lines.join("\n")).unwrap();
        let tok = glmv_runtime::demo::tokenizer().unwrap();
        let reqs = jsonl(&dir.join("d.jsonl"), &tok, 9, 3).unwrap();
        assert_eq!(reqs.iter().map(|r| r.output_len).collect::<Vec<_>>(), vec![5, 9, 5]);
        let Content::Chat(m) = &reqs[1].content else { panic!("chat") };
        let parts = m[0]["content"].as_array().unwrap();
        assert!(parts[0]["image_url"]["url"].as_str().unwrap().starts_with("data:image/png;base64,"));
        assert_eq!(parts[1]["image_url"]["url"], "https://example.com/x.jpg");
        assert!(jsonl(&dir.join("missing.jsonl"), &tok, 9, 3).is_err());
        std::fs::write(dir.join("bad.jsonl"), "{\"nope\": 1}\n").unwrap();
        let err = jsonl(&dir.join("bad.jsonl"), &tok, 9, 3).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl:1"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
