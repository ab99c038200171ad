//! Media parts of a request turned into vision inputs: fetched by [`Fetcher`], decoded and preprocessed by
//! `runtime::media` with the checkpoint's processor settings (images: `ImageProcessor`; videos: MP4/H.264 through
//! `VideoProcessor`, which picks GLM-4.1V/4.5V or GLM-4.6V frame sampling from the checkpoint's config files).
use std::{path::Path, sync::Arc};

use glmv_runtime::{
    config::ModelConfig,
    media::{merged_tokens, ImageProcessor, MediaError, MediaLimits, VideoProcessor},
    text::Tokenizer,
};

use crate::{
    fetch::Fetcher,
    openai::{
        prompt::{DecodedMedia, MediaSource},
        request::{MediaKind, MediaPart},
        ApiError,
    },
};

pub struct ServerMedia {
    fetcher: Fetcher,
    limits: MediaLimits,
    images: ImageProcessor,
    videos: VideoProcessor,
    image_token: u32,
    /// Tokenises each video frame pair's timestamp text.
    tokenizer: Arc<Tokenizer>,
}

impl ServerMedia {
    /// Reads the checkpoint's processor configuration; a model without a vision tower gets no processor and
    /// answers media parts with a 400.
    pub fn new(
        fetcher: Fetcher,
        limits: MediaLimits,
        model_dir: &Path,
        config: &ModelConfig,
        tokenizer: Arc<Tokenizer>,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let images = ImageProcessor::from_dir(model_dir)?;
        let videos = VideoProcessor::from_dir(model_dir)?;
        Ok(ServerMedia { fetcher, limits, images, videos, image_token: config.tokens.image, tokenizer })
    }
}

/// A media error as the client sees it: what was wrong, and which content part it was.
fn media_error(part: &MediaPart, e: MediaError) -> ApiError {
    let status = match e {
        // The checkpoint's processor configuration, not the request, is at fault.
        MediaError::Config { .. } => 500,
        MediaError::TooLarge { .. } => 413,
        // Valid input beyond what this server decodes.
        MediaError::UnsupportedVideo { .. } => 415,
        _ => 400,
    };
    ApiError::new(status, format!("{}: {e}", part.param)).with_param(&part.param)
}

impl MediaSource for ServerMedia {
    fn load(&self, part: &MediaPart) -> Result<DecodedMedia, ApiError> {
        let bytes = self.fetcher.fetch(part)?;
        match part.kind {
            MediaKind::Image => {
                let input = self.images.process_bytes(&bytes, &self.limits).map_err(|e| media_error(part, e))?;
                let tokens = merged_tokens(input.grid, self.images.merge_size);
                Ok(DecodedMedia { input, placeholder_ids: vec![self.image_token; tokens] })
            }
            MediaKind::Video => {
                let video = self.videos.process_bytes(&bytes, &self.limits).map_err(|e| media_error(part, e))?;
                let ids =
                    video.prompt_ids(self.videos.base.merge_size, &self.tokenizer).map_err(|e| media_error(part, e))?;
                Ok(DecodedMedia { input: video.input, placeholder_ids: ids })
            }
        }
    }
}
