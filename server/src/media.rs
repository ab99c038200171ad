//! Media parts of a request turned into vision inputs: fetched by [`Fetcher`], decoded and preprocessed by
//! `runtime::media` with the checkpoint's processor settings.
use std::path::Path;

use glmv_runtime::{config::ModelConfig, text::Tokenizer};

use crate::{
    fetch::Fetcher,
    openai::{
        prompt::{DecodedMedia, MediaSource},
        request::MediaPart,
        ApiError,
    },
};

pub struct ServerMedia {
    fetcher: Fetcher,
}

impl ServerMedia {
    pub fn new(
        fetcher: Fetcher,
        _model_dir: &Path,
        _config: &ModelConfig,
        _tokenizer: &Tokenizer,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        Ok(ServerMedia { fetcher })
    }
}

impl MediaSource for ServerMedia {
    fn load(&self, part: &MediaPart) -> Result<DecodedMedia, ApiError> {
        let _bytes = self.fetcher.fetch(part)?;
        Err(ApiError::new(501, format!("{}: media decoding is not wired into the server yet", part.param)))
    }
}
