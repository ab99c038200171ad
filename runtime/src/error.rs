use std::path::PathBuf;

/// Every way loading or running a model can fail. Messages are one line and name the file or tensor involved, so
/// that the CLI can print them as they are.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("config.json: {0}")]
    Config(String),
    #[error("unsupported architecture {0:?}: glmv serves Glm4vMoeForConditionalGeneration (GLM-4.5V, GLM-4.6V) and Glm4vForConditionalGeneration (GLM-4.1V, Glyph, GLM-4.6V-Flash)")]
    UnsupportedArchitecture(String),
    #[error("unsupported quantization: {0}")]
    UnsupportedQuantization(String),
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("missing shard {shard} (listed in {index})")]
    MissingShard { shard: PathBuf, index: PathBuf },
    #[error("tensor {name} is missing from the checkpoint")]
    MissingTensor { name: String },
    #[error("tensor {name} has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch { name: String, expected: Vec<usize>, actual: Vec<usize> },
    #[error("tensor {name} has dtype {dtype}, which {context}")]
    UnsupportedDtype { name: String, dtype: String, context: &'static str },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("device: {0}")]
    Device(String),
    #[error("KV cache: {0}")]
    KvCache(String),
    #[error(transparent)]
    Media(#[from] crate::media::MediaError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
