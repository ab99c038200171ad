//! Media parts of a request turned into vision inputs: fetched by [`Fetcher`], decoded and preprocessed by
//! `runtime::media` with the checkpoint's processor settings.
use std::path::Path;

use glmv_runtime::{
    config::ModelConfig,
    media::{merged_tokens, ImageProcessor, MediaError, MediaLimits},
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
    image_token: u32,
}

impl ServerMedia {
    /// Reads the checkpoint's processor configuration; a model without a vision tower gets no processor and
    /// answers media parts with a 400.
    pub fn new(
        fetcher: Fetcher,
        limits: MediaLimits,
        model_dir: &Path,
        config: &ModelConfig,
        _tokenizer: &Tokenizer,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let images = ImageProcessor::from_dir(model_dir)?;
        Ok(ServerMedia { fetcher, limits, images, image_token: config.tokens.image })
    }
}

/// A media error as the client sees it: what was wrong, and which content part it was.
fn media_error(part: &MediaPart, e: MediaError) -> ApiError {
    let status = match e {
        // The checkpoint's processor configuration, not the request, is at fault.
        MediaError::Config { .. } => 500,
        MediaError::TooLarge { .. } => 413,
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
                Err(ApiError::new(501, format!("{}: video input is not supported yet", part.param))
                    .with_param(&part.param))
            }
        }
    }
}
