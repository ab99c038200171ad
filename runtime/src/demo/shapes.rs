//! A checkpoint directory without weights, for `--load-format dummy` at a real model's shapes (how GLM-4.5V is
//! benchmarked without downloading it): the model's config.json as given, a tokenizer whose special tokens sit at
//! the ids that config names, the GLM-V chat template and the image processor config.
//!
//! The tokenizer is the demo's byte-level BPE padded with never-produced `<|reserved_N|>` entries so that its
//! 36 special tokens land on GLM-V's ids (`<|endoftext|>` = eos[0], then GLM-4.5V's order; the config's image,
//! video and their begin/end ids override that order), and reserved special tokens fill the rest of the
//! vocabulary. Text tokenises into few distinct ids: throughput figures are real, the text is not.
use std::path::Path;

use serde_json::{json, Map, Value};

use super::{write_file, write_support_files, TOKENIZER};
use crate::{config::ModelConfig, Error, Result};

/// Writes config.json (as given), tokenizer.json, generation config, template and processor config into `dir`.
pub fn write_shapes_checkpoint(dir: &Path, config_json: &Value) -> Result<()> {
    let config = ModelConfig::from_json(config_json, None)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_file(dir, "config.json", &serde_json::to_string_pretty(config_json).unwrap_or_default())?;
    let tokenizer = tokenizer_at_ids(&config)?;
    write_file(dir, "tokenizer.json", &tokenizer.to_string())?;
    let max_length = config.text.max_position_embeddings;
    write_support_files(dir, &config.tokens.eos, max_length)
}

fn bad(reason: String) -> Error {
    Error::Config(format!("cannot build a tokenizer for these ids: {reason}"))
}

/// The demo tokenizer with its special tokens moved to `config`'s ids and its vocabulary grown to vocab_size.
fn tokenizer_at_ids(config: &ModelConfig) -> Result<Value> {
    let mut tok: Value = serde_json::from_str(TOKENIZER).map_err(|e| bad(e.to_string()))?;
    let first = *config.tokens.eos.first().ok_or_else(|| bad("the config names no eos token".into()))?;
    let vocab_size = config.text.vocab_size as u32;
    let added = tok["added_tokens"].as_array_mut().ok_or_else(|| bad("no added_tokens".into()))?;
    let base = added.iter().filter_map(|t| t["id"].as_u64()).min().unwrap_or(0) as u32;
    let count = added.len() as u32;
    // GLM-4.5V's order from `first`, then the config's own ids for the media tokens, swapping with whichever
    // token held that id so that the ids stay one contiguous block.
    for t in added.iter_mut() {
        let id = t["id"].as_u64().unwrap_or(0) as u32 - base + first;
        t["id"] = json!(id);
    }
    let k = &config.tokens;
    for (content, id) in [
        ("<|image|>", k.image),
        ("<|video|>", k.video),
        ("<|begin_of_image|>", k.image_start),
        ("<|end_of_image|>", k.image_end),
        ("<|begin_of_video|>", k.video_start),
        ("<|end_of_video|>", k.video_end),
    ] {
        if !(first..first + count).contains(&id) {
            return Err(bad(format!("{content} = {id} is outside {first}..{}", first + count)));
        }
        let from = added.iter().find(|t| t["content"] == content).map(|t| t["id"].clone());
        let from = from.ok_or_else(|| bad(format!("no {content} in the demo tokenizer")))?;
        for t in added.iter_mut() {
            if t["id"] == json!(id) {
                t["id"] = from.clone();
            } else if t["content"] == content {
                t["id"] = json!(id);
            }
        }
    }
    if first + count > vocab_size {
        return Err(bad(format!("the special tokens end at {} but vocab_size is {vocab_size}", first + count)));
    }
    // tokenizers assigns added tokens their ids in list order after the model's vocabulary.
    added.sort_by_key(|t| t["id"].as_u64());
    for id in first + count..vocab_size {
        added.push(json!({"id": id, "content": format!("<|reserved_special_{id}|>"), "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
    }
    let vocab: &mut Map<String, Value> =
        tok["model"]["vocab"].as_object_mut().ok_or_else(|| bad("the BPE model has no vocab".into()))?;
    let bpe = vocab.len() as u32;
    if bpe > first {
        return Err(bad(format!("eos {first} is below the demo BPE's {bpe} entries")));
    }
    for id in bpe..first {
        vocab.insert(format!("<|reserved_{id}|>"), json!(id));
    }
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        backend::CpuBackend,
        pipeline::{GenerateOptions, LoadFormat, LoadOptions, Pipeline, Prompt},
    };

    /// GLM-4.5V's token ids and vocabulary with a small decoder, and GLM-4.1V's different media ids.
    fn config(image: u32, video: u32) -> Value {
        let mut c = super::super::config();
        c["image_token_id"] = json!(image);
        c["video_token_id"] = json!(video);
        for (key, id) in
            [("image_start", 151339), ("image_end", 151340), ("video_start", 151341), ("video_end", 151342)]
        {
            c[format!("{key}_token_id")] = json!(id);
        }
        c["text_config"]["vocab_size"] = json!(151552);
        c["text_config"]["eos_token_id"] = json!([151329, 151336, 151338]);
        c["text_config"]["pad_token_id"] = json!(151329);
        c
    }

    #[test]
    fn special_tokens_sit_at_the_configured_ids_and_the_model_serves() {
        for (image, video) in [(151363, 151364), (151343, 151344)] {
            let dir = std::env::temp_dir().join(format!("glmv-shapes-{image}-{}", std::process::id()));
            write_shapes_checkpoint(&dir, &config(image, video)).unwrap();
            let p = Pipeline::load_with(
                &dir,
                LoadOptions { format: LoadFormat::Dummy { seed: 1 }, ..Default::default() },
                CpuBackend,
                &mut |_| {},
            )
            .unwrap();
            let ids = p
                .tokenizer
                .encode("[gMASK]<sop><|user|>Hi<|begin_of_image|><|image|><|end_of_image|><|video|><|assistant|>")
                .unwrap();
            let specials: Vec<u32> = ids.iter().copied().filter(|&i| i >= 151329).collect();
            assert_eq!(specials, [151331, 151333, 151336, 151339, image, 151340, video, 151337], "{image}");
            assert_eq!(p.tokenizer.vocab_size(), 151552);
            let options = GenerateOptions {
                max_tokens: 3,
                sampling: crate::engine::sampler::SamplingParams { temperature: 0.0, ..Default::default() },
                ignore_eos: true,
            };
            let out = p.generate(&Prompt::text(p.tokenizer.encode("Hello").unwrap()), &[], &options, &mut |_, _| {});
            assert_eq!(out.unwrap().len(), 3);
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
