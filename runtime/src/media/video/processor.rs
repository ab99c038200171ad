//! transformers' GLM-V video processors (`Glm4vVideoProcessor`, `Glm46VVideoProcessor`, torchvision backend), step for
//! step: sample frame indices from the container's metadata, one smart_resize for the whole video (counting its
//! frames against the pixel budget), torchvision's antialiased bicubic resize of each uint8 frame, the fused
//! rescale-and-normalise in f32 (`(x - mean * 255) / (std * 255)`), the frame count padded to a multiple of
//! `temporal_patch_size` by repeating the last frame, and patch rows in (frame group, merge window) order with each
//! row laid out (channel, time, patch row, patch column).
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{
    sampling::{sample_glm46v, sample_glm4v, timestamp_texts, VideoFamily, VideoMetadata},
    DecodedVideo,
};
use crate::{
    media::{processor::smart_resize, resample, ImageProcessor, MediaError, MediaLimits, RgbImage},
    model::{Grid, MediaKind},
    pipeline::MediaInput,
    text::Tokenizer,
};

/// The settings of a checkpoint's video processor.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoProcessor {
    pub family: VideoFamily,
    /// Rescale, normalise, patch and merge settings share the image processor's keys and defaults; its `min_pixels`
    /// and `max_pixels` are the video's `size.shortest_edge` / `size.longest_edge`.
    pub base: ImageProcessor,
    pub do_sample_frames: bool,
    /// Frames per second sampled by `Glm4vVideoProcessor`.
    pub fps: f64,
    /// Seconds beyond which `Glm4vVideoProcessor` spreads a fixed number of frames over the video.
    pub max_duration: f64,
}

/// The class defaults of both video processors' `size`.
const VIDEO_MIN_PIXELS: u64 = 112 * 112;
const VIDEO_MAX_PIXELS: u64 = 28 * 28 * 2 * 30000;

/// A video's processor output and what its prompt needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedVideo {
    pub input: MediaInput,
    /// Presentation indices of the frames used (before padding to a whole frame pair).
    pub indices: Vec<usize>,
    /// One text per frame pair, e.g. "3" or "1.5 seconds".
    pub timestamps: Vec<String>,
}

impl VideoProcessor {
    /// The defaults of `family`'s class.
    pub fn defaults(family: VideoFamily) -> Self {
        let base = ImageProcessor { min_pixels: VIDEO_MIN_PIXELS, max_pixels: VIDEO_MAX_PIXELS, ..Default::default() };
        VideoProcessor { family, base, do_sample_frames: true, fps: 2.0, max_duration: 300.0 }
    }

    /// Reads the checkpoint's video processor as transformers' `AutoVideoProcessor` finds it: the `video_processor`
    /// entry of processor_config.json, else video_preprocessor_config.json, else preprocessor_config.json; the
    /// class from `video_processor_type`, else `image_processor_type` with Image replaced by Video, else
    /// config.json's model_type (`glm46v`: GLM-4.6V), else `Glm4vVideoProcessor`.
    pub fn from_dir(dir: &Path) -> Result<Self, MediaError> {
        let read = |name: &str| -> Result<Option<(PathBuf, Value)>, MediaError> {
            let path = dir.join(name);
            if !path.exists() {
                return Ok(None);
            }
            let text =
                std::fs::read(&path).map_err(|e| MediaError::Config { path: path.clone(), reason: e.to_string() })?;
            let json = serde_json::from_slice(&text)
                .map_err(|e| MediaError::Config { path: path.clone(), reason: format!("invalid JSON: {e}") })?;
            Ok(Some((path, json)))
        };
        let nested = read("processor_config.json")?
            .and_then(|(p, j)| j.get("video_processor").filter(|v| v.is_object()).cloned().map(|v| (p, v)));
        let found = match nested {
            Some(found) => Some(found),
            None => match read("video_preprocessor_config.json")? {
                Some(found) => Some(found),
                None => read("preprocessor_config.json")?,
            },
        };
        let model_type = read("config.json")?.and_then(|(_, j)| j.get("model_type")?.as_str().map(str::to_owned));
        let (path, json) = found.unwrap_or_else(|| (dir.join("video_preprocessor_config.json"), Value::Null));
        let class = json.get("video_processor_type").and_then(Value::as_str).map(str::to_owned).or_else(|| {
            json.get("image_processor_type")?.as_str().map(|s| s.replace("ImageProcessor", "VideoProcessor"))
        });
        let family = match class.as_deref() {
            Some("Glm46VVideoProcessor") => VideoFamily::Glm46v,
            Some("Glm4vVideoProcessor") => VideoFamily::Glm4v,
            Some(other) if other.starts_with("Glm") => {
                return Err(MediaError::Config { path, reason: format!("unknown video processor class {other}") })
            }
            _ if model_type.as_deref() == Some("glm46v") => VideoFamily::Glm46v,
            _ => VideoFamily::Glm4v,
        };
        Self::from_json(family, &json).map_err(|reason| MediaError::Config { path, reason })
    }

    /// The settings of `json` (a video or image processor config) over `family`'s class defaults.
    pub fn from_json(family: VideoFamily, json: &Value) -> Result<Self, String> {
        let d = Self::defaults(family);
        if json.is_null() {
            return Ok(d);
        }
        let mut base = ImageProcessor::from_json(json)?;
        if json.get("size").is_none_or(Value::is_null) {
            (base.min_pixels, base.max_pixels) = (d.base.min_pixels, d.base.max_pixels);
        }
        // torchvision's BICUBIC is the only interpolation ported; the GLM-V processors all use it.
        if base.filter != resample::Filter::Bicubic {
            return Err("only resample 3 (bicubic) is supported for videos".into());
        }
        let number = |key: &str, default: f64| match json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().filter(|x| *x > 0.0).ok_or_else(|| format!("{key} is not a positive number")),
        };
        let do_sample_frames = match json.get("do_sample_frames") {
            None | Some(Value::Null) => true,
            Some(v) => v.as_bool().ok_or("do_sample_frames is not a boolean")?,
        };
        Ok(VideoProcessor {
            family,
            base,
            do_sample_frames,
            fps: number("fps", d.fps)?,
            max_duration: number("max_duration", d.max_duration)?,
        })
    }

    /// The presentation indices of the frames the processor keeps.
    pub fn sample(&self, metadata: &VideoMetadata) -> Vec<usize> {
        if !self.do_sample_frames {
            return (0..metadata.total_num_frames).collect();
        }
        match self.family {
            VideoFamily::Glm4v => sample_glm4v(metadata, self.fps, self.max_duration),
            VideoFamily::Glm46v => sample_glm46v(metadata, self.base.temporal_patch_size),
        }
    }

    /// Decodes an MP4 file's sampled frames and preprocesses them.
    pub fn process_bytes(&self, bytes: &[u8], limits: &MediaLimits) -> Result<ProcessedVideo, MediaError> {
        let video = super::decode_mp4(bytes, limits, |m| Ok(self.sample(m)))?;
        self.preprocess(&video, limits.max_aspect_ratio)
    }

    /// Resizes, normalises and patchifies the sampled frames of one video.
    pub fn preprocess(&self, video: &DecodedVideo, max_ratio: f64) -> Result<ProcessedVideo, MediaError> {
        let b = &self.base;
        let (t, p, m) = (b.temporal_patch_size, b.patch_size, b.merge_size);
        let first = video.frames.first().ok_or(MediaError::NoFrames)?;
        let (h0, w0) = (first.height, first.width);
        if video.frames.iter().any(|f| (f.height, f.width) != (h0, w0)) {
            return Err(MediaError::UnsupportedVideo { reason: "frames of different sizes".into() });
        }
        let n = video.frames.len();
        if n < t {
            return Err(MediaError::VideoDecode {
                reason: format!("{n} frames sampled, fewer than the temporal patch size {t}"),
            });
        }
        let (h, w) = if b.do_resize {
            smart_resize(n, h0, w0, t, b.factor(), b.min_pixels, b.max_pixels, max_ratio)?
        } else {
            (h0, w0)
        };
        if h % (p * m) != 0 || w % (p * m) != 0 {
            return Err(MediaError::Config {
                path: "video_preprocessor_config.json".into(),
                reason: format!("do_resize is false and the {w0}x{h0} frames are not a multiple of {}", p * m),
            });
        }
        let planes: Vec<Vec<f32>> = video
            .frames
            .iter()
            .map(|f| {
                self.normalise(&if (f.width, f.height) == (w, h) {
                    f.clone()
                } else {
                    resample::resize_torch_bicubic(f, w, h)
                })
            })
            .collect();
        let groups = n.div_ceil(t);
        let (gh, gw) = (h / p, w / p);
        let pixel_values = b.patchify(&planes, h, w);
        let grid = Grid { t: groups, h: gh, w: gw };
        let timestamps = timestamp_texts(self.family, &video.indices, video.metadata.fps, groups);
        Ok(ProcessedVideo {
            input: MediaInput { kind: MediaKind::Video, grid, pixel_values },
            indices: video.indices.clone(),
            timestamps,
        })
    }

    /// Channel-first f32 planes of transformers' fused rescale and normalise: the mean and std (f32) scaled by
    /// `1 / rescale_factor` in f32, then `(x - mean) / std` in f32.
    fn normalise(&self, image: &RgbImage) -> Vec<f32> {
        let b = &self.base;
        let plane = image.width * image.height;
        let mut out = vec![0f32; 3 * plane];
        let inv = (1.0 / b.rescale_factor) as f32;
        let (mean, std) = match (b.do_rescale, b.do_normalize) {
            (true, true) => (b.image_mean.map(|v| v * inv), b.image_std.map(|v| v * inv)),
            _ => (b.image_mean, b.image_std),
        };
        for (i, px) in image.pixels.chunks_exact(3).enumerate() {
            for c in 0..3 {
                let x = f32::from(px[c]);
                out[c * plane + i] = if b.do_normalize {
                    (x - mean[c]) / std[c]
                } else if b.do_rescale {
                    x * b.rescale_factor as f32
                } else {
                    x
                };
            }
        }
        out
    }
}

impl ProcessedVideo {
    /// The token ids that stand for this video in the prompt, replacing the template's `<|video|>`: per frame pair,
    /// `<|begin_of_image|>`, one `<|image|>` per merged patch, `<|end_of_image|>`, then the pair's timestamp text
    /// tokenised on its own (it sits between special tokens, so transformers' tokenisation of the expanded prompt
    /// splits there too). The tags are looked up by name, as transformers' processor writes them.
    pub fn prompt_ids(&self, merge: usize, tokenizer: &Tokenizer) -> Result<Vec<u32>, MediaError> {
        let tag = |name: &str| {
            tokenizer
                .token_to_id(name)
                .ok_or_else(|| MediaError::Config { path: "tokenizer.json".into(), reason: format!("no {name} token") })
        };
        let (start, image, end) = (tag("<|begin_of_image|>")?, tag("<|image|>")?, tag("<|end_of_image|>")?);
        let g = self.input.grid;
        let per_pair = g.h * g.w / (merge * merge).max(1);
        let mut ids = Vec::new();
        for ts in &self.timestamps {
            ids.push(start);
            ids.extend(std::iter::repeat_n(image, per_pair));
            ids.push(end);
            let text = tokenizer.encode_prompt(ts).map_err(|e| MediaError::Config {
                path: "tokenizer.json".into(),
                reason: format!("tokenising the timestamp {ts:?}: {e}"),
            })?;
            ids.extend(text);
        }
        Ok(ids)
    }
}
