//! PIL's `Image.resize` for 8-bit images, reimplemented to give the same bytes: a separable convolution, first
//! along rows (when the width changes) then along columns (when the height changes). Each output sample takes a
//! filter centred on its position in the input; when shrinking, the filter is stretched by the scale factor, which
//! is what makes the resize antialiased. Weights are normalised to sum 1 in f64, turned into fixed point with 22
//! fractional bits, and each pass rounds and clamps to 0..=255, so the intermediate image is 8-bit like PIL's.
use super::RgbImage;

/// Fractional bits of the fixed-point weights: 32 bits minus 8 for the sample minus 2 for overshoot (PIL's choice).
const PRECISION_BITS: u32 = 22;

/// PIL's resampling filters (the `resample` values of a preprocessor_config.json); NEAREST is not a convolution and
/// is not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Lanczos,
    Bilinear,
    Bicubic,
    Box,
    Hamming,
}

impl Filter {
    /// From PIL's `Image.Resampling` number.
    pub fn from_pil(code: u64) -> Option<Filter> {
        match code {
            1 => Some(Filter::Lanczos),
            2 => Some(Filter::Bilinear),
            3 => Some(Filter::Bicubic),
            4 => Some(Filter::Box),
            5 => Some(Filter::Hamming),
            _ => None,
        }
    }

    /// Half-width of the kernel in input samples at scale 1.
    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Box => f64::from(u8::from(x > -0.5 && x <= 0.5)),
            Filter::Bilinear => (1.0 - x.abs()).max(0.0),
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let px = x * std::f64::consts::PI;
                    // PIL writes the constants as C floats; keep their f32 values.
                    px.sin() / px * (f64::from(0.54f32) + f64::from(0.46f32) * px.cos())
                }
            }
            Filter::Bicubic => cubic(x),
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// Keys' cubic convolution kernel with a = -0.5 (PIL's BICUBIC; PyTorch's bicubic uses -0.75).
fn cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let px = x * std::f64::consts::PI;
    px.sin() / px
}

/// The fixed-point kernel of every output position along one axis.
struct Kernels {
    /// First input index each output position reads.
    start: Vec<usize>,
    /// Number of input samples each output position reads (at most `stride`).
    len: Vec<usize>,
    /// `stride` weights per output position; unused tail entries are 0.
    weights: Vec<i32>,
    stride: usize,
    /// Fractional bits of `weights`.
    precision: u32,
}

impl Kernels {
    fn new(in_size: usize, out_size: usize, filter: Filter) -> Kernels {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = filter.support() * filter_scale;
        let stride = support.ceil() as usize * 2 + 1;
        let mut k = Kernels {
            start: Vec::with_capacity(out_size),
            len: Vec::with_capacity(out_size),
            weights: vec![0; out_size * stride],
            stride,
            precision: PRECISION_BITS,
        };
        let mut w = vec![0f64; stride];
        for out in 0..out_size {
            let center = (out as f64 + 0.5) * scale;
            // PIL rounds the window ends with a C cast of (x + 0.5), i.e. truncation toward zero.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = hi.saturating_sub(lo).min(stride);
            let mut sum = 0.0;
            for (i, wi) in w.iter_mut().enumerate().take(n) {
                *wi = filter.weight(((i + lo) as f64 - center + 0.5) / filter_scale);
                sum += *wi;
            }
            for (i, wi) in w.iter().enumerate().take(n) {
                let v = if sum != 0.0 { wi / sum } else { *wi };
                // Round half away from zero, as PIL's normalize_coeffs_8bpc does.
                let fixed = v * f64::from(1u32 << PRECISION_BITS);
                k.weights[out * stride + i] = if v < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 };
            }
            k.start.push(lo);
            k.len.push(n);
        }
        k
    }

    /// The 8-bit result of one output sample: `sample(i)` is the input sample at offset i of the window.
    fn apply(&self, out: usize, sample: impl Fn(usize) -> u8) -> u8 {
        let w = &self.weights[out * self.stride..out * self.stride + self.len[out]];
        let mut acc: i64 = 1 << (self.precision - 1);
        for (i, &wi) in w.iter().enumerate() {
            acc += i64::from(sample(i)) * i64::from(wi);
        }
        (acc >> self.precision).clamp(0, 255) as u8
    }

    /// PyTorch's kernels for `interpolate(uint8, mode="bicubic", antialias=True)` (what torchvision's `resize` runs
    /// on uint8 tensors on CPU): the same windows as PIL's, weights from Keys' kernel (a = -0.5) written as PyTorch
    /// writes it, normalised in f64, then turned into int16 with as many fractional bits as the largest weight
    /// allows (`_compute_index_ranges_int16_weights`), rounded half away from zero.
    fn torch_bicubic(in_size: usize, out_size: usize) -> Kernels {
        const A: f64 = -0.5;
        let filter = |x: f64| {
            let x = x.abs();
            if x < 1.0 {
                ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
            } else {
                0.0
            }
        };
        let scale = in_size as f64 / out_size as f64;
        let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
        let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
        let stride = support.ceil() as usize * 2 + 1;
        let mut start = Vec::with_capacity(out_size);
        let mut len = Vec::with_capacity(out_size);
        let mut w = vec![0f64; out_size * stride];
        let mut w_max = 0f64;
        for out in 0..out_size {
            let center = scale * (out as f64 + 0.5);
            let lo = ((center - support + 0.5) as i64).max(0);
            let n = (((center + support + 0.5) as i64).min(in_size as i64) - lo).clamp(0, stride as i64) as usize;
            let row = &mut w[out * stride..out * stride + n];
            let mut total = 0.0;
            for (j, wj) in row.iter_mut().enumerate() {
                *wj = filter((j as f64 + lo as f64 - center + 0.5) * invscale);
                total += *wj;
            }
            if total != 0.0 {
                for wj in row.iter_mut() {
                    *wj /= total;
                    w_max = w_max.max(*wj);
                }
            }
            start.push(lo as usize);
            len.push(n);
        }
        let mut precision = 0;
        while precision < 22 && ((0.5 + w_max * f64::from(1u32 << (precision + 1))) as i32) < (1 << 15) {
            precision += 1;
        }
        let weights = w
            .iter()
            .map(|&v| {
                let v = v * f64::from(1u32 << precision);
                i32::from(if v < 0.0 { (-0.5 + v) as i16 } else { (0.5 + v) as i16 })
            })
            .collect();
        Kernels { start, len, weights, stride, precision }
    }
}

/// `Image.resize((width, height), filter)` of an RGB image, byte for byte.
pub fn resize(image: &RgbImage, width: usize, height: usize, filter: Filter) -> RgbImage {
    separable(image, width, height, |i, o| Kernels::new(i, o, filter))
}

/// torchvision's `resize(uint8 tensor, (height, width), BICUBIC, antialias=True)` on CPU, byte for byte: the video
/// processors of transformers resize frames this way (the image processors use PIL's [`resize`]).
pub fn resize_torch_bicubic(image: &RgbImage, width: usize, height: usize) -> RgbImage {
    separable(image, width, height, Kernels::torch_bicubic)
}

/// A horizontal pass (when the width changes) then a vertical one (when the height changes), each rounding to 8 bits.
fn separable(image: &RgbImage, width: usize, height: usize, kernels: impl Fn(usize, usize) -> Kernels) -> RgbImage {
    if (width, height) == (image.width, image.height) || width == 0 || height == 0 {
        return RgbImage { width, height, pixels: if width * height == 0 { Vec::new() } else { image.pixels.clone() } };
    }
    let vertical = kernels(image.height, height);
    // Only the input rows some output row reads go through the horizontal pass.
    let first_row = vertical.start[0];
    let last_row = vertical.start[height - 1] + vertical.len[height - 1];
    let mut src = image;
    let horizontal_out;
    let row_offset;
    if width != image.width {
        let kh = kernels(image.width, width);
        let rows = last_row - first_row;
        let mut pixels = vec![0u8; rows * width * 3];
        for r in 0..rows {
            let in_row = &image.pixels[(first_row + r) * image.width * 3..(first_row + r + 1) * image.width * 3];
            let out_row = &mut pixels[r * width * 3..(r + 1) * width * 3];
            for x in 0..width {
                let s = kh.start[x];
                for c in 0..3 {
                    out_row[x * 3 + c] = kh.apply(x, |i| in_row[(s + i) * 3 + c]);
                }
            }
        }
        horizontal_out = RgbImage { width, height: rows, pixels };
        src = &horizontal_out;
        row_offset = first_row;
    } else {
        row_offset = 0;
    }
    if height == image.height {
        return src.clone();
    }
    let row_len = src.width * 3;
    let mut pixels = vec![0u8; height * row_len];
    for y in 0..height {
        let s = vertical.start[y] - row_offset;
        let out_row = &mut pixels[y * row_len..(y + 1) * row_len];
        for (j, out) in out_row.iter_mut().enumerate() {
            *out = vertical.apply(y, |i| src.pixels[(s + i) * row_len + j]);
        }
    }
    RgbImage { width: src.width, height, pixels }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: usize, height: usize) -> RgbImage {
        let pixels = (0..width * height * 3).map(|i| ((i * 37 + i / 7 * 11) % 256) as u8).collect();
        RgbImage { width, height, pixels }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (inp, out) in [(100, 28), (28, 100), (57, 56), (1000, 56)] {
            let k = Kernels::new(inp, out, Filter::Bicubic);
            for o in 0..out {
                let s: i64 = k.weights[o * k.stride..(o + 1) * k.stride].iter().map(|&w| i64::from(w)).sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= k.stride as i64, "{inp}->{out} at {o}: {s}");
            }
        }
    }

    #[test]
    fn constant_images_stay_constant() {
        let flat = RgbImage { width: 37, height: 23, pixels: vec![200; 37 * 23 * 3] };
        for (w, h) in [(56, 28), (28, 56), (10, 5), (37, 50), (80, 23)] {
            let out = resize(&flat, w, h, Filter::Bicubic);
            assert_eq!((out.width, out.height), (w, h));
            assert!(out.pixels.iter().all(|&p| p == 200), "{w}x{h}");
        }
    }

    #[test]
    fn same_size_is_a_copy_and_each_axis_alone_works() {
        let img = image(30, 20);
        assert_eq!(resize(&img, 30, 20, Filter::Bicubic), img);
        let wide = resize(&img, 45, 20, Filter::Bicubic);
        let tall = resize(&img, 30, 33, Filter::Bicubic);
        assert_eq!((wide.width, wide.height, tall.width, tall.height), (45, 20, 30, 33));
    }
}
