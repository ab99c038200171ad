//! Host hot paths of a chat request besides the engine: tokenising a 1K-token prompt, rendering the GLM-V chat
//! template with tools, and parsing a streamed reasoning + tool-call output. They run on the fixture tokenizer
//! (a 388-token byte-level BPE with GLM-V's special tokens and GLM-4's pre-tokenizer), not GLM-V's 151k vocabulary,
//! which cannot be downloaded here: merge lookups cost more with the real vocabulary. Also the image preprocessing of
//! a 1024 x 1024 JPEG. `cargo bench --bench host`.
use std::{hint::black_box, path::PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use glmv_runtime::{
    media::{ImageProcessor, MediaLimits},
    text::{
        template::to_template_messages, ChatTemplate, ReasoningOptions, ReasoningParser, RenderOptions, Tokenizer,
        ToolCallParser, ToolSchemas,
    },
};
use serde_json::json;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/moe_bf16/checkpoint")
}

const TEXT: &str = "The quick brown fox jumps over the lazy dog while the weather in Paris stays windy; \
    图像中有一只猫。 Numbers 12345 and symbols <>{}[] appear too. ";

fn tokenize(c: &mut Criterion) {
    let tok = Tokenizer::from_dir(&fixture()).unwrap();
    let mut text = String::new();
    while tok.encode(&text).unwrap().len() < 1024 {
        text += TEXT;
    }
    let n = tok.encode(&text).unwrap().len();
    c.bench_function(&format!("tokenise {n} tokens (fixture BPE)"), |b| {
        b.iter(|| tok.encode(black_box(&text)).unwrap())
    });
    let ids = tok.encode(&text).unwrap();
    c.bench_function(&format!("decode {n} tokens"), |b| b.iter(|| tok.decode(black_box(&ids), true).unwrap()));
}

fn template(c: &mut Criterion) {
    let template = ChatTemplate::from_dir(&fixture()).unwrap();
    let tools: Vec<_> = (0..4)
        .map(|i| {
            json!({"type": "function", "function": {"name": format!("tool_{i}"), "description": "Looks something up",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"]}}})
        })
        .collect();
    let messages = json!([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": "A cat.", "reasoning_content": "Looking at it."},
        {"role": "user", "content": "And the weather in Paris?"},
    ]);
    let opts = RenderOptions { tools: Some(tools), add_generation_prompt: true, ..Default::default() };
    c.bench_function("render chat template (4 messages, 1 image, 4 tools)", |b| {
        b.iter(|| {
            let m = to_template_messages(black_box(messages.as_array().unwrap())).unwrap();
            template.render(&m, &opts).unwrap()
        })
    });
}

fn parsers(c: &mut Criterion) {
    let output = format!(
        "<think>{}</think>I will look it up.<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>",
        "Let me think about the weather. ".repeat(20)
    );
    // Pieces of 1 to 4 characters, as a detokeniser releases them.
    let mut pieces = Vec::new();
    let mut rest = output.as_str();
    let mut i = 0;
    while !rest.is_empty() {
        let mut end = (1 + i % 4).min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        pieces.push(&rest[..end]);
        rest = &rest[end..];
        i += 1;
    }
    let tools = ToolSchemas::from_openai_tools(&[json!({"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}})]);
    c.bench_function(&format!("stream-parse reasoning + tool call ({} pieces)", pieces.len()), |b| {
        b.iter(|| {
            let mut reasoning = ReasoningParser::new(ReasoningOptions::default());
            let mut calls = ToolCallParser::new(tools.clone(), 1);
            let mut events = 0;
            for p in &pieces {
                let d = reasoning.push(black_box(p));
                if !d.content.is_empty() {
                    events += calls.push(&d.content).len();
                }
            }
            events + calls.finish().len()
        })
    });
}

/// A 1024 x 1024 photo-like JPEG (smooth gradients and edges, 4:2:0) decoded, resized to GLM-4.5V's processor
/// budget with the class-default processor (smart_resize, PIL-exact bicubic), normalised and patchified.
fn image_preprocessing(c: &mut Criterion) {
    let (w, h) = (1024u32, 1024u32);
    let pixels: Vec<u8> = (0..h)
        .flat_map(|y| {
            (0..w).flat_map(move |x| {
                let ring = (((x as i32 - 512).pow(2) + (y as i32 - 400).pow(2)) as f32).sqrt() as u32;
                [(x / 4) as u8, (y / 4) as u8, if (ring / 24).is_multiple_of(2) { 200 } else { 40 }]
            })
        })
        .collect();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode(&pixels, w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    let processor = ImageProcessor::default();
    let limits = MediaLimits::default();
    let grid = processor.process_bytes(&jpeg, &limits).unwrap().grid;
    c.bench_function(
        &format!("image preprocessing, 1024x1024 JPEG ({} KB) -> grid {}x{}", jpeg.len() / 1024, grid.h, grid.w),
        |b| b.iter(|| processor.process_bytes(black_box(&jpeg), &limits).unwrap()),
    );
}

criterion_group!(benches, tokenize, template, parsers, image_preprocessing);
criterion_main!(benches);
