//! Videos: MP4 files with H.264 video, decoded without FFmpeg to the frames transformers' reference pipeline sees
//! (PyAV decoding, `to_ndarray(format="rgb24")`), sampled and preprocessed as the checkpoint's video processor does.
//!
//! - `mp4`: the ISO BMFF demuxer (sample tables, timing, the avcC decoder configuration).
//! - `h264`: SPS parsing and decoding with OpenH264, pictures matched to their presentation order.
//! - `yuv`: YUV 4:2:0 to RGB exactly as FFmpeg's swscale converts it.
//! - `sampling`: the frame indices and timestamps of `Glm4vVideoProcessor` and `Glm46VVideoProcessor`.
//! - `processor`: resize, normalise and patchify; the prompt's token ids for a video.
pub mod h264;
pub mod mp4;
pub mod processor;
pub mod sampling;
mod yuv;

pub use processor::{ProcessedVideo, VideoProcessor};
pub use sampling::{VideoFamily, VideoMetadata};

use super::{MediaError, MediaLimits, RgbImage};

/// The frames of a video a processor asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedVideo {
    pub metadata: VideoMetadata,
    /// Presentation indices, in the processor's order (repeats allowed).
    pub indices: Vec<usize>,
    /// `frames[k]` is the frame at `indices[k]`.
    pub frames: Vec<RgbImage>,
}

/// What transformers' `read_video_pyav` reports for the track: FFmpeg's `nb_frames` (the sample count) and
/// `avg_frame_rate` (samples x timescale / summed durations, reduced), `duration = frames / rate`.
pub fn metadata(track: &mp4::VideoTrack, width: usize, height: usize) -> VideoMetadata {
    let total = track.samples.len();
    let (fps, duration) = match track.average_rate() {
        // float(Fraction): one correctly rounded division; so is total / Fraction when the operands fit in f64.
        Some((num, den)) => (num as f64 / den as f64, (total as f64 * den as f64) / num as f64),
        None => (0.0, 0.0),
    };
    VideoMetadata { total_num_frames: total, fps, duration, width, height }
}

/// Demuxes `bytes`, lets `select` choose frame indices from the metadata, then decodes the track and returns those
/// frames. Limits (file size, frame count, pixels per frame, total decoded pixels) are checked before decoding.
pub fn decode_mp4(
    bytes: &[u8],
    limits: &MediaLimits,
    select: impl FnOnce(&VideoMetadata) -> Result<Vec<usize>, MediaError>,
) -> Result<DecodedVideo, MediaError> {
    if bytes.len() > limits.max_encoded_bytes {
        return Err(MediaError::TooLarge { size: bytes.len(), limit: limits.max_encoded_bytes });
    }
    let track = mp4::parse(bytes, limits)?;
    if track.samples.is_empty() {
        return Err(MediaError::NoFrames);
    }
    let sps = h264::check_stream(&track, limits)?;
    let metadata = metadata(&track, sps.width as usize, sps.height as usize);
    if metadata.fps <= 0.0 {
        return Err(MediaError::VideoDecode { reason: "the video's sample durations are all 0".into() });
    }
    let indices = select(&metadata)?;
    let mut wanted: Vec<usize> = indices.clone();
    wanted.sort_unstable();
    wanted.dedup();
    let decoded = h264::decode_frames(&track, bytes, &sps, &wanted)?;
    let frames =
        indices.iter().map(|i| decoded[wanted.binary_search(i).expect("every index is wanted")].clone()).collect();
    Ok(DecodedVideo { metadata, indices, frames })
}

/// Every frame of an MP4 file in presentation order (for tests and tools; servers decode only sampled frames).
pub fn decode_all_frames(bytes: &[u8], limits: &MediaLimits) -> Result<DecodedVideo, MediaError> {
    decode_mp4(bytes, limits, |m| Ok((0..m.total_num_frames).collect()))
}
