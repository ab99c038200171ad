//! The checkpoint's `tokenizer.json`, through the `tokenizers` crate (pure-Rust build).
use std::path::Path;

use crate::{Error, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::Tokenizer(format!("{} not found", path.display())));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Tokenizer { inner })
    }

    /// A tokenizer from the text of a `tokenizer.json` (e.g. one embedded in the binary).
    pub fn from_json(json: &str) -> Result<Self> {
        let inner = json.parse::<tokenizers::Tokenizer>().map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Tokenizer { inner })
    }

    /// Token ids of `text` as transformers' `tokenizer(text)` gives them: special tokens written in the text are
    /// recognised, and whatever the tokenizer's post-processor adds is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, true).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a rendered chat prompt, as `apply_chat_template(tokenize=True)` gives them: special tokens
    /// written in the text are recognised, and the post-processor adds nothing (the template wrote them).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids of the added tokens marked `special` (those `skip_special_tokens` drops).
    pub fn special_token_ids(&self) -> std::collections::HashSet<u32> {
        self.inner.get_added_tokens_decoder().into_iter().filter(|(_, t)| t.special).map(|(id, _)| id).collect()
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
