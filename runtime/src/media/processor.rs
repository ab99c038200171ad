//! transformers' `Glm4vImageProcessor` with the PIL backend (`Glm4vImageProcessorPil`), step for step:
//! smart_resize picks a size that is a multiple of patch x merge and within the pixel budget, PIL's resize goes
//! there, values are rescaled in f64 and cast to f32, normalised in f32, and the single frame is repeated
//! `temporal_patch_size` times inside each patch row. Rows come in merge-window order (see
//! [`crate::pipeline::MediaInput`]), each laid out as (channel, time, patch row, patch column).
use std::path::Path;

use serde_json::Value;

use super::{
    image::EncodedImage,
    resample::{self, Filter},
    MediaError, MediaLimits, RgbImage,
};
use crate::{
    model::{Grid, MediaKind},
    pipeline::MediaInput,
};

/// The settings of a checkpoint's preprocessor_config.json that shape the vision tower's input.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    pub do_resize: bool,
    pub do_rescale: bool,
    pub do_normalize: bool,
    pub filter: Filter,
    /// `size.shortest_edge`: the least pixel count (counted over `temporal_patch_size` frames).
    pub min_pixels: u64,
    /// `size.longest_edge`: the largest pixel count (counted over `temporal_patch_size` frames).
    pub max_pixels: u64,
    pub rescale_factor: f64,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
}

impl Default for ImageProcessor {
    /// The class defaults of `Glm4vImageProcessor` (what applies to keys a config leaves out).
    fn default() -> Self {
        ImageProcessor {
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
            filter: Filter::Bicubic,
            min_pixels: 112 * 112,
            max_pixels: 28 * 28 * 15000,
            rescale_factor: 1.0 / 255.0,
            // OpenAI CLIP's statistics.
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
        }
    }
}

impl ImageProcessor {
    /// Reads `preprocessor_config.json` of a checkpoint directory; class defaults when the file is absent.
    pub fn from_dir(dir: &Path) -> Result<Self, MediaError> {
        let path = dir.join("preprocessor_config.json");
        if !path.exists() {
            return Ok(Self::default());
        }
        let config_error = |reason: String| MediaError::Config { path: path.clone(), reason };
        let text = std::fs::read(&path).map_err(|e| config_error(e.to_string()))?;
        let json: Value = serde_json::from_slice(&text).map_err(|e| config_error(format!("invalid JSON: {e}")))?;
        Self::from_json(&json).map_err(config_error)
    }

    pub fn from_json(json: &Value) -> Result<Self, String> {
        let d = Self::default();
        let flag = |key: &str, default: bool| match json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| format!("{key} is not a boolean")),
        };
        let uint = |v: Option<&Value>, key: &str, default: u64| match v {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| format!("{key} is not a non-negative integer")),
        };
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3], String> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Number(n)) => Ok([n.as_f64().unwrap_or_default() as f32; 3]),
                Some(Value::Array(a)) if a.len() == 3 => {
                    let mut out = [0f32; 3];
                    for (o, v) in out.iter_mut().zip(a) {
                        // numpy builds the float32 array from the Python floats: one rounding from f64.
                        *o = v.as_f64().ok_or_else(|| format!("{key} has a non-number"))? as f32;
                    }
                    Ok(out)
                }
                Some(_) => Err(format!("{key} must be a number or a list of 3 numbers")),
            }
        };
        // transformers reads the pixel budget from size.{shortest,longest}_edge only (min_pixels/max_pixels keys
        // are not used by the Glm4v processors) and refuses a `size` without both.
        let (min_pixels, max_pixels) = match json.get("size") {
            None | Some(Value::Null) => (d.min_pixels, d.max_pixels),
            Some(size) => {
                let short = uint(size.get("shortest_edge"), "size.shortest_edge", 0)?;
                let long = uint(size.get("longest_edge"), "size.longest_edge", 0)?;
                if short == 0 || long == 0 {
                    return Err("size must contain shortest_edge and longest_edge".into());
                }
                (short, long)
            }
        };
        let resample = uint(json.get("resample"), "resample", 3)?;
        let filter = Filter::from_pil(resample)
            .ok_or_else(|| format!("resample {resample} is not a supported PIL filter (1..=5)"))?;
        let rescale_factor = match json.get("rescale_factor") {
            None | Some(Value::Null) => d.rescale_factor,
            Some(v) => v.as_f64().ok_or("rescale_factor is not a number")?,
        };
        let size = |key: &str, default: usize| -> Result<usize, String> {
            match uint(json.get(key), key, default as u64)? {
                0 => Err(format!("{key} must be positive")),
                n => Ok(n as usize),
            }
        };
        Ok(ImageProcessor {
            do_resize: flag("do_resize", d.do_resize)?,
            do_rescale: flag("do_rescale", d.do_rescale)?,
            do_normalize: flag("do_normalize", d.do_normalize)?,
            filter,
            min_pixels,
            max_pixels,
            rescale_factor,
            image_mean: triple("image_mean", d.image_mean)?,
            image_std: triple("image_std", d.image_std)?,
            patch_size: size("patch_size", d.patch_size)?,
            temporal_patch_size: size("temporal_patch_size", d.temporal_patch_size)?,
            merge_size: size("merge_size", d.merge_size)?,
        })
    }

    /// Side lengths are multiples of this.
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// The (height, width) an image of `height` x `width` is resized to.
    pub fn target_size(&self, height: usize, width: usize, max_ratio: f64) -> Result<(usize, usize), MediaError> {
        let t = self.temporal_patch_size;
        smart_resize(t, height, width, t, self.factor(), self.min_pixels, self.max_pixels, max_ratio)
    }

    /// Decodes an image file and preprocesses it; the header is judged against `limits` (and the aspect ratio
    /// against smart_resize's rule) before any pixel is decoded.
    pub fn process_bytes(&self, bytes: &[u8], limits: &MediaLimits) -> Result<MediaInput, MediaError> {
        let encoded = EncodedImage::open(bytes, limits)?;
        // A 90-degree EXIF rotation swaps the sides; smart_resize's ratio check does not care.
        self.target_size(encoded.height as usize, encoded.width as usize, limits.max_aspect_ratio)?;
        self.preprocess(&encoded.decode()?, limits.max_aspect_ratio)
    }

    /// Resizes, normalises and patchifies one decoded image.
    pub fn preprocess(&self, image: &RgbImage, max_ratio: f64) -> Result<MediaInput, MediaError> {
        let resized;
        let image = if self.do_resize {
            let (h, w) = self.target_size(image.height, image.width, max_ratio)?;
            resized = resample::resize(image, w, h, self.filter);
            &resized
        } else {
            image
        };
        let p = self.patch_size;
        let m = self.merge_size;
        if image.height % (p * m) != 0 || image.width % (p * m) != 0 {
            return Err(MediaError::Config {
                path: "preprocessor_config.json".into(),
                reason: format!(
                    "do_resize is false and the image's {}x{} is not a multiple of patch_size x merge_size = {}",
                    image.width,
                    image.height,
                    p * m
                ),
            });
        }
        let values = self.normalise(image);
        let (gh, gw) = (image.height / p, image.width / p);
        // The one frame fills every temporal slot of each patch.
        let pixel_values = self.patchify(&[values], image.height, image.width);
        Ok(MediaInput { kind: MediaKind::Image, grid: Grid { t: 1, h: gh, w: gw }, pixel_values })
    }

    /// Patch rows of `frames` (channel-first planes of `height` x `width`): per group of `temporal_patch_size`
    /// frames (the last frame repeated to fill the last group), the merge windows in order, each row laid out
    /// (channel, time, patch row, patch column).
    pub fn patchify(&self, frames: &[Vec<f32>], height: usize, width: usize) -> Vec<f32> {
        let (p, m, t) = (self.patch_size, self.merge_size, self.temporal_patch_size);
        let (gh, gw) = (height / p, width / p);
        let groups = frames.len().div_ceil(t);
        let plane = height * width;
        let mut out = Vec::with_capacity(groups * gh * gw * 3 * t * p * p);
        for g in 0..groups {
            for bh in 0..gh / m {
                for bw in 0..gw / m {
                    for dy in 0..m {
                        for dx in 0..m {
                            let (y0, x0) = ((bh * m + dy) * p, (bw * m + dx) * p);
                            for c in 0..3 {
                                for k in 0..t {
                                    let frame = &frames[(g * t + k).min(frames.len() - 1)];
                                    for py in 0..p {
                                        let start = c * plane + (y0 + py) * width + x0;
                                        out.extend_from_slice(&frame[start..start + p]);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// Channel-first f32 planes: `u8 as f64 * rescale_factor` cast to f32 (numpy's rescale), then
    /// `(v - mean) / std` in f32 (numpy's normalize on float32 arrays).
    fn normalise(&self, image: &RgbImage) -> Vec<f32> {
        let plane = image.width * image.height;
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in image.pixels.chunks_exact(3).enumerate() {
            for c in 0..3 {
                let mut v =
                    if self.do_rescale { (f64::from(px[c]) * self.rescale_factor) as f32 } else { f32::from(px[c]) };
                if self.do_normalize {
                    v = (v - self.image_mean[c]) / self.image_std[c];
                }
                out[c * plane + i] = v;
            }
        }
        out
    }
}

/// transformers' `smart_resize` (glm4v) with Python's arithmetic: `int()` truncation after the upscale of tiny
/// images, `round()` half to even, true division in f64, then floor or ceil against the pixel budget.
#[allow(clippy::too_many_arguments)]
pub fn smart_resize(
    num_frames: usize,
    height: usize,
    width: usize,
    temporal_factor: usize,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
    max_ratio: f64,
) -> Result<(usize, usize), MediaError> {
    let (orig_h, orig_w) = (height as u64, width as u64);
    if height == 0 || width == 0 {
        return Err(MediaError::Empty { width: orig_w, height: orig_h });
    }
    let (mut h, mut w) = (height as f64, width as f64);
    let f = factor as f64;
    if height < factor || width < factor {
        let scale = (f / h).max(f / w);
        h = (h * scale).trunc();
        w = (w * scale).trunc();
    }
    let ratio = h.max(w) / h.min(w);
    if h.min(w) == 0.0 || ratio > max_ratio {
        return Err(MediaError::AspectRatio { width: orig_w, height: orig_h, ratio, limit: max_ratio });
    }
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    let t_bar = (num_frames as f64 / temporal_factor as f64).round_ties_even() * temporal_factor as f64;
    let frames_area = num_frames as f64 * h * w;
    if t_bar * h_bar * w_bar > max_pixels as f64 {
        let beta = (frames_area / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if t_bar * h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / frames_area).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as usize, w_bar as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glm(h: usize, w: usize) -> Result<(usize, usize), MediaError> {
        smart_resize(2, h, w, 2, 28, 112 * 112, 28 * 28 * 2 * 64, 200.0)
    }

    #[test]
    fn smart_resize_matches_transformers() {
        // Values computed with transformers 5.23's smart_resize for this budget.
        assert_eq!(glm(100, 100).unwrap(), (112, 112));
        assert_eq!(glm(42, 70).unwrap(), (84, 112)); // round(1.5)=2, round(2.5)=2: then under the min budget
        assert_eq!(glm(300, 400).unwrap(), (168, 252)); // over the max budget: floor
        assert_eq!(glm(10, 50).unwrap(), (56, 196)); // tiny: upscaled first
        assert!(matches!(glm(10, 3000), Err(MediaError::AspectRatio { .. })));
        assert!(matches!(glm(0, 3), Err(MediaError::Empty { .. })));
    }

    #[test]
    fn patch_rows_are_in_merge_window_order() {
        let p = ImageProcessor {
            patch_size: 1,
            merge_size: 2,
            temporal_patch_size: 2,
            do_resize: false,
            do_rescale: false,
            do_normalize: false,
            ..Default::default()
        };
        // 2 x 4 image: red channel = 10 * row + column.
        let pixels = (0..8).flat_map(|i| [(10 * (i / 4) + i % 4) as u8, 0, 0]).collect();
        let img = RgbImage { width: 4, height: 2, pixels };
        let out = p.preprocess(&img, 200.0).unwrap();
        assert_eq!(out.grid, Grid { t: 1, h: 2, w: 4 });
        let red: Vec<f32> = out.pixel_values.chunks(6).map(|r| r[0]).collect();
        assert_eq!(red, vec![0.0, 1.0, 10.0, 11.0, 2.0, 3.0, 12.0, 13.0]);
        // Each row: channel-major, the frame repeated twice.
        assert_eq!(&out.pixel_values[6..12], &[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
