//! Media a user sends (images, videos) turned into what the vision tower consumes: decoded RGB frames, resized
//! exactly as the checkpoint's processor resizes them, normalised and cut into patches in merge-window order
//! ([`crate::pipeline::MediaInput`]).
//!
//! - `image`: decoding PNG/JPEG/WebP/GIF/BMP (EXIF orientation, `convert("RGB")` semantics), the image processor.
//! - `video`: MP4/H.264 demux and decode without FFmpeg, frame sampling and timestamps of both video processors.
//!
//! Everything here bounds its time and memory by [`MediaLimits`]; user input never panics.

/// An 8-bit RGB picture, row-major, 3 bytes per pixel: the common currency of image and video decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    /// `width * height * 3` bytes.
    pub pixels: Vec<u8>,
}
