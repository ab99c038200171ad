//! Media a user sends (images, videos) turned into what the vision tower consumes: decoded RGB frames, resized
//! exactly as the checkpoint's processor resizes them, normalised and cut into patches in merge-window order
//! ([`crate::pipeline::MediaInput`]).
//!
//! - `image`: decoding PNG/JPEG/WebP/GIF/BMP (EXIF orientation, `convert("RGB")` semantics); `transparency`: the
//!   white that transformers gives a palette image's transparent colour.
//! - `resample`: PIL's separable convolution resize (`Image.resize(..., BICUBIC)`), bit-exact.
//! - `processor`: transformers' `Glm4vImageProcessor` (PIL backend): smart_resize, rescale, normalise, patchify.
//! - `placeholder`: expanding each `<|image|>` of a prompt into one token per merged patch.
//! - `video`: MP4/H.264 demux and decode without FFmpeg, frame sampling and timestamps of both video processors.
//!
//! Everything here bounds its time and memory by [`MediaLimits`]; user input never panics.
use std::path::PathBuf;

pub mod image;
mod jpeg;
pub mod placeholder;
pub mod processor;
pub mod resample;
mod transparency;
pub mod video;

pub use self::image::{decode_image, EncodedImage};
pub use placeholder::{expand_image_placeholders, merged_tokens};
pub use processor::ImageProcessor;
pub use video::{ProcessedVideo, VideoFamily, VideoProcessor};

/// An 8-bit RGB picture, row-major, 3 bytes per pixel: the common currency of image and video decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    /// `width * height * 3` bytes.
    pub pixels: Vec<u8>,
}

/// What a user's media may cost before any pixel is decoded. Checked against the encoded size and the header's
/// dimensions, so that a small file claiming a huge picture fails before the decoder allocates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MediaLimits {
    /// Largest encoded file accepted.
    pub max_encoded_bytes: usize,
    /// Largest width x height accepted (before resizing).
    pub max_pixels: u64,
    /// Largest max(h, w) / min(h, w) accepted; transformers' smart_resize rejects more than 200.
    pub max_aspect_ratio: f64,
    /// Most frames (samples) a video may have; every one is decoded, whatever the sampling keeps.
    pub max_video_frames: u64,
    /// Most pixels decoding a whole video may produce (frames x width x height): bounds decoding time.
    pub max_video_decoded_pixels: u64,
}

impl Default for MediaLimits {
    fn default() -> Self {
        MediaLimits {
            max_encoded_bytes: 32 << 20,
            // PIL's own decompression-bomb threshold (`Image.MAX_IMAGE_PIXELS`): ~256 MiB as RGB.
            max_pixels: 89_478_485,
            max_aspect_ratio: 200.0,
            // 10 minutes at 30 fps.
            max_video_frames: 18_000,
            // 18,000 frames of 1280x720: about a minute or two of OpenH264 on one core.
            max_video_decoded_pixels: 18_000 * 1280 * 720,
        }
    }
}

/// Every way turning a user's media into model input can fail. Each message says what was wrong with the input, so
/// that the server can return it to the client as is.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("the file is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("not an image in a supported format (PNG, JPEG, WebP, GIF, BMP)")]
    UnknownFormat,
    #[error("unsupported image format: {reason}")]
    UnsupportedFormat { reason: String },
    #[error("the image is {width}x{height} pixels, over the limit of {limit} pixels")]
    TooManyPixels { width: u64, height: u64, limit: u64 },
    #[error("the image is {width}x{height} pixels, an aspect ratio of {ratio:.2}; at most {limit} is accepted")]
    AspectRatio { width: u64, height: u64, ratio: f64, limit: f64 },
    #[error("the image has no pixels ({width}x{height})")]
    Empty { width: u64, height: u64 },
    #[error("invalid or truncated {format} image: {reason}")]
    Decode { format: String, reason: String },
    #[error("decoding the {format} image needs more memory than allowed: {reason}")]
    MemoryLimit { format: String, reason: String },
    #[error("the prompt has {found} image placeholders but {expected} images")]
    PlaceholderCount { found: usize, expected: usize },
    #[error("not an MP4 video (videos must be MP4/MOV files with H.264 video)")]
    NotMp4,
    #[error("invalid or truncated MP4/H.264 video: {reason}")]
    VideoDecode { reason: String },
    #[error("unsupported video: {reason}")]
    UnsupportedVideo { reason: String },
    #[error("the video has no decodable frame")]
    NoFrames,
    #[error("the video has {frames} frames, over the limit of {limit}")]
    TooManyFrames { frames: u64, limit: u64 },
    #[error("the video's frames are {width}x{height} pixels, over the limit of {limit} pixels")]
    FrameTooLarge { width: u64, height: u64, limit: u64 },
    #[error("the video has {frames} frames of {width}x{height}, over the limit of {limit} decoded pixels")]
    VideoTooLong { frames: u64, width: u64, height: u64, limit: u64 },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
}
