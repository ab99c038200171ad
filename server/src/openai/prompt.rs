//! Requests turned into engine prompts, on worker threads (never on the event loop): media fetched and decoded,
//! the chat template rendered, the text tokenised, and each media placeholder expanded into the tokens its grid
//! needs.
use std::sync::Arc;

use super::{
    request::{ChatRequest, CompletionPrompt, CompletionRequest, MediaKind, MediaPart},
    ApiError,
};
use glmv_runtime::{
    config::TokenIds,
    pipeline::{MediaInput, Prompt},
    text::{template::to_template_messages, ChatTemplate, RenderOptions, Tokenizer},
};

/// One decoded image or video: what the vision tower consumes, and the token ids that stand for it in the prompt
/// (image tokens for an image; for a video, per frame pair, begin/end-of-image tags around its tokens and the
/// timestamp text).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedMedia {
    pub input: MediaInput,
    pub placeholder_ids: Vec<u32>,
}

/// Fetches and decodes media: `runtime::media` behind the server's fetching rules.
pub trait MediaSource: Send + Sync {
    /// Resolves `part`'s URL (data:, file:, http(s)) and decodes it. Errors name the part.
    fn load(&self, part: &MediaPart) -> Result<DecodedMedia, ApiError>;
}

/// What a request's prompt became.
pub struct BuiltPrompt {
    pub prompt: Prompt,
    pub image_tokens: usize,
    pub video_tokens: usize,
}

/// Everything prompt building needs from the model; shared by the worker threads.
pub struct PromptBuilder {
    pub tokenizer: Arc<Tokenizer>,
    pub template: ChatTemplate,
    pub tokens: TokenIds,
    pub media: Arc<dyn MediaSource>,
    pub max_images: usize,
    pub max_videos: usize,
}

impl PromptBuilder {
    pub fn chat(&self, req: &ChatRequest) -> Result<BuiltPrompt, ApiError> {
        let images = req.media.iter().filter(|m| m.kind == MediaKind::Image).count();
        let videos = req.media.len() - images;
        if images > self.max_images {
            return Err(ApiError::bad_request(format!(
                "the request has {images} images; this server accepts at most {} per request",
                self.max_images
            )));
        }
        if videos > self.max_videos {
            return Err(ApiError::bad_request(format!(
                "the request has {videos} videos; this server accepts at most {} per request",
                self.max_videos
            )));
        }
        let messages = to_template_messages(&req.messages).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let options = RenderOptions {
            tools: req.tool_choice.tools_for_template(&req.tools),
            documents: None,
            add_generation_prompt: req.add_generation_prompt && !req.continue_final_message,
            continue_final_message: req.continue_final_message,
            kwargs: req.chat_template_kwargs.clone(),
        };
        let text = self.template.render(&messages, &options).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let ids = self.tokenizer.encode_prompt(&text).map_err(|e| ApiError::new(500, e.to_string()))?;
        // Media are decoded after the cheap checks above, so a malformed request costs no downloads.
        let decoded = req.media.iter().map(|part| self.media.load(part)).collect::<Result<Vec<_>, _>>()?;
        self.expand(ids, decoded, &req.media)
    }

    /// Replaces the n-th `<|image|>` / `<|video|>` of the rendered prompt with the n-th image's / video's tokens.
    fn expand(&self, ids: Vec<u32>, decoded: Vec<DecodedMedia>, parts: &[MediaPart]) -> Result<BuiltPrompt, ApiError> {
        let mut images = decoded.iter().zip(parts).filter(|(_, p)| p.kind == MediaKind::Image).map(|(d, _)| d);
        let mut videos = decoded.iter().zip(parts).filter(|(_, p)| p.kind == MediaKind::Video).map(|(d, _)| d);
        let mut out = Vec::with_capacity(ids.len());
        let mut media = Vec::with_capacity(decoded.len());
        let (mut image_tokens, mut video_tokens) = (0, 0);
        for id in ids {
            let (item, counter) = if id == self.tokens.image {
                (images.next(), &mut image_tokens)
            } else if id == self.tokens.video {
                (videos.next(), &mut video_tokens)
            } else {
                out.push(id);
                continue;
            };
            let Some(item) = item else {
                // A placeholder the client typed as text, with no media part behind it.
                return Err(ApiError::bad_request(
                    "the prompt has more image/video placeholders than image/video parts",
                ));
            };
            *counter += item.placeholder_ids.iter().filter(|&&t| t == self.tokens.image).count();
            out.extend_from_slice(&item.placeholder_ids);
            media.push(item.input.clone());
        }
        if images.next().is_some() || videos.next().is_some() {
            return Err(ApiError::bad_request(
                "the chat template did not place every image/video part (check the message roles)",
            ));
        }
        Ok(BuiltPrompt { prompt: Prompt { ids: out, media }, image_tokens, video_tokens })
    }

    pub fn completion(&self, req: &CompletionRequest) -> Result<BuiltPrompt, ApiError> {
        let ids = match &req.prompt {
            CompletionPrompt::Ids(ids) => ids.clone(),
            CompletionPrompt::Text(text) => {
                self.tokenizer.encode(text).map_err(|e| ApiError::new(500, e.to_string()))?
            }
        };
        if ids.contains(&self.tokens.image) || ids.contains(&self.tokens.video) {
            return Err(ApiError::invalid_field("prompt", "media placeholders need /v1/chat/completions"));
        }
        if ids.is_empty() {
            return Err(ApiError::invalid_field("prompt", "is empty"));
        }
        Ok(BuiltPrompt { prompt: Prompt::text(ids), image_tokens: 0, video_tokens: 0 })
    }
}
