//! Incremental detokenisation: text for each generated id as soon as it is complete.
//!
//! Byte-level BPE splits multi-byte characters (Chinese, emoji) across tokens, and some decoders change how a
//! token reads depending on its neighbours, so decoding ids one at a time is wrong. This keeps a window of recent
//! ids and emits the growth of `decode(window)` over `decode(window without the new ids)`, holding back output
//! while it ends in U+FFFD (a character still incomplete). The concatenation of everything emitted, plus
//! [`Detokenizer::finish`], equals the tokenizer's decode of all ids under the same special-token policy.
use std::collections::HashSet;

use super::Tokenizer;
use crate::Result;

/// Which special tokens (added tokens marked `special`) appear in the text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SpecialTokens {
    /// `skip_special_tokens: true`, the OpenAI default.
    #[default]
    Skip,
    /// `skip_special_tokens: false`.
    Keep,
    /// Skip special tokens except these ids; see [`SpecialTokens::glm_output_tags`].
    SkipExcept(HashSet<u32>),
}

/// The tags the output parsers and clients read. GLM tokenizers may mark them special, and skipping them would
/// hide reasoning and tool-call boundaries from the parsers and box spans from clients.
pub const GLM_OUTPUT_TAGS: [&str; 10] = [
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
    "<|begin_of_box|>",
    "<|end_of_box|>",
];

impl SpecialTokens {
    /// Skip special tokens except GLM's reasoning, tool-call and box tags (those the tokenizer has).
    pub fn glm_output_tags(tokenizer: &Tokenizer) -> Self {
        SpecialTokens::SkipExcept(GLM_OUTPUT_TAGS.iter().filter_map(|t| tokenizer.token_to_id(t)).collect())
    }
}

/// Ids of the window kept before the text already emitted: enough for decoders whose output for a token depends
/// on the one before it (e.g. a leading-space rule), few enough to keep each step cheap.
const CONTEXT_IDS: usize = 4;

/// Per-sequence incremental decoder. It holds no reference to the tokenizer (each call takes it), so that a
/// sequence can own its decoder next to the engine's shared tokenizer.
#[derive(Clone, Debug)]
pub struct Detokenizer {
    special: SpecialTokens,
    special_ids: HashSet<u32>,
    /// Ids that appear in the text (after the special-token policy).
    ids: Vec<u32>,
    /// `ids[prefix..read]` decodes to text already emitted; `ids[read..]` is not emitted yet.
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    pub fn new(tokenizer: &Tokenizer, special: SpecialTokens) -> Self {
        let special_ids = tokenizer.special_token_ids();
        Detokenizer { special, special_ids, ids: Vec::new(), prefix: 0, read: 0 }
    }

    fn visible(&self, id: u32) -> bool {
        if !self.special_ids.contains(&id) {
            return true;
        }
        match &self.special {
            SpecialTokens::Skip => false,
            SpecialTokens::Keep => true,
            SpecialTokens::SkipExcept(keep) => keep.contains(&id),
        }
    }

    /// Adds one generated id; returns the text that became complete (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        if !self.visible(id) {
            return Ok(String::new());
        }
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read], false)?;
        let after = tokenizer.decode(&self.ids[self.prefix..], false)?;
        if after.len() <= before.len() || after.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let new = match after.strip_prefix(before.as_str()) {
            Some(new) => new.to_string(),
            // A decoder that rewrites earlier text: emit what follows the common prefix.
            None => {
                let common = common_prefix_len(&before, &after);
                after[common..].to_string()
            }
        };
        self.read = self.ids.len();
        self.prefix = self.read.saturating_sub(CONTEXT_IDS).max(self.prefix);
        // The window restarts after the emitted text: `prefix` must stay at or before `read`, and keeping a few
        // earlier ids as context makes the next diff see the same neighbours a full decode sees.
        Ok(new)
    }

    /// End of sequence: whatever is still held (an incomplete character decodes to U+FFFD, as in a full decode).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let before = tokenizer.decode(&self.ids[self.prefix..self.read], false)?;
        let after = tokenizer.decode(&self.ids[self.prefix..], false)?;
        self.read = self.ids.len();
        Ok(match after.strip_prefix(before.as_str()) {
            Some(new) => new.to_string(),
            None => after[common_prefix_len(&before, &after)..].to_string(),
        })
    }
}

fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices().zip(b.chars()).take_while(|((_, x), y)| x == y).last().map_or(0, |((i, c), _)| i + c.len_utf8())
}
