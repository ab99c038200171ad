//! YUV 4:2:0 to RGB24 as FFmpeg's swscale converts it when PyAV calls `frame.to_ndarray(format="rgb24")` on x86-64:
//! same-size yuv420p -> rgb24 takes swscale's unscaled converter, whose SSSE3 kernel works on 16-bit lanes with the
//! coefficients `ff_yuv2rgb_c_init_tables` derives from the colour matrix and range (defaults: brightness 0, contrast
//! and saturation 1.0). Per pixel, with chroma taken from the 2x2 block (no interpolation):
//!
//! - luma: `((Y << 3) - y_offset) * y_coeff >> 16` (`pmulhw`: high half of the signed product, i.e. a floor),
//! - chroma: `U' = (U << 3) - 1024`, each term `U' * coeff >> 16`,
//! - `R = y + V'vr`, `G = y + (U'ug + V'vg)`, `B = y + U'ub` with signed 16-bit saturation, then clamped to 0..=255.
//!
//! This reproduces PyAV 18 (FFmpeg 8) bit for bit (measured on random planes, BT.601/709/2020, limited and full range).

/// FFmpeg's `ff_yuv2rgb_coeffs`: {crv, cbu, cgu, cgv} per colour matrix (H.264 `matrix_coefficients`).
const COEFFS_601: [i64; 4] = [104_597, 132_201, 25_675, 53_279];
const COEFFS_709: [i64; 4] = [117_489, 138_438, 13_975, 34_925];
const COEFFS_FCC: [i64; 4] = [104_448, 132_798, 24_759, 53_109];
const COEFFS_240M: [i64; 4] = [117_579, 136_230, 16_907, 35_559];
const COEFFS_2020: [i64; 4] = [110_013, 140_363, 12_277, 42_626];

/// swscale's `roundToInt16`: the value / 2^16, rounded, saturated to 16 bits.
fn round_to_i16(f: i64) -> i32 {
    let r = (f + (1 << 15)) >> 16;
    r.clamp(-0x7fff, 0x7fff) as i32
}

/// The fixed-point coefficients of one colour matrix and range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct YuvToRgb {
    y_coeff: i32,
    y_offset: i32,
    vr: i32,
    ub: i32,
    ug: i32,
    vg: i32,
}

impl YuvToRgb {
    /// `matrix`: the stream's matrix_coefficients (2 = unspecified, read as BT.601 like swscale's default);
    /// `full_range`: the video_full_range_flag. `None` for YCgCo, which swscale's converter has no table for.
    pub fn new(matrix: u8, full_range: bool) -> Option<Self> {
        let c = match matrix {
            1 => COEFFS_709,
            4 => COEFFS_FCC,
            7 => COEFFS_240M,
            8 => return None,
            9 | 10 => COEFFS_2020,
            // 0 (identity) indexes the table's BT.601 row; everything past the table falls back to the default.
            _ => COEFFS_601,
        };
        let (mut crv, mut cbu, mut cgu, mut cgv) = (c[0], c[1], -c[2], -c[3]);
        let (cy, oy) = if full_range {
            // C integer division truncates toward zero; i64 `/` does the same.
            crv = crv * 224 / 255;
            cbu = cbu * 224 / 255;
            cgu = cgu * 224 / 255;
            cgv = cgv * 224 / 255;
            (1i64 << 16, 0i64)
        } else {
            ((1i64 << 16) * 255 / 219, 16i64 << 16)
        };
        Some(YuvToRgb {
            y_coeff: round_to_i16(cy << 13),
            y_offset: round_to_i16(oy << 3),
            vr: round_to_i16(crv << 13),
            ub: round_to_i16(cbu << 13),
            ug: round_to_i16(cgu << 13),
            vg: round_to_i16(cgv << 13),
        })
    }

    /// One pixel.
    #[inline]
    fn pixel(&self, y: u8, u8_: u8, v: u8) -> [u8; 3] {
        let sat = |x: i32| x.clamp(-32768, 32767);
        let mulhi = |a: i32, b: i32| (a * b) >> 16;
        // psubw wraps; (Y << 3) - offset stays inside 16 bits for every offset swscale computes, but wrap anyway.
        let yt = i32::from((i32::from(y) << 3).wrapping_sub(self.y_offset) as i16);
        let yv = mulhi(yt, self.y_coeff);
        let u = sat((i32::from(u8_) << 3) - 0x400);
        let v = sat((i32::from(v) << 3) - 0x400);
        let g = sat(mulhi(u, self.ug) + mulhi(v, self.vg));
        let clip = |x: i32| sat(x).clamp(0, 255) as u8;
        [clip(yv + mulhi(v, self.vr)), clip(yv + g), clip(yv + mulhi(u, self.ub))]
    }

    /// Converts planar 4:2:0 (chroma planes of ceil(w/2) x ceil(h/2)) to packed RGB.
    #[allow(clippy::too_many_arguments)]
    pub fn convert(
        &self,
        width: usize,
        height: usize,
        y_plane: &[u8],
        y_stride: usize,
        u_plane: &[u8],
        v_plane: &[u8],
        uv_stride: usize,
    ) -> Vec<u8> {
        let mut out = vec![0u8; width * height * 3];
        for (row, line) in out.chunks_exact_mut(width * 3).enumerate() {
            let ys = &y_plane[row * y_stride..row * y_stride + width];
            let us = &u_plane[(row / 2) * uv_stride..];
            let vs = &v_plane[(row / 2) * uv_stride..];
            for (col, px) in line.chunks_exact_mut(3).enumerate() {
                px.copy_from_slice(&self.pixel(ys[col], us[col / 2], vs[col / 2]));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_are_swscales() {
        // BT.601 limited range, as swscale's tables print them.
        let c = YuvToRgb::new(2, false).unwrap();
        assert_eq!((c.y_coeff, c.y_offset, c.vr, c.ub, c.vg, c.ug), (9539, 128, 13075, 16525, -6660, -3209));
        assert!(YuvToRgb::new(8, false).is_none());
    }

    #[test]
    fn known_pixels() {
        let c = YuvToRgb::new(2, false).unwrap();
        // What PyAV 18.1 (FFmpeg 8 swscale) gives for these triples: limited-range black and white, BT.601's red
        // (253, not 255: the fixed point loses a little), and an out-of-gamut colour that clips.
        assert_eq!(c.pixel(16, 128, 128), [0, 0, 0]);
        assert_eq!(c.pixel(235, 128, 128), [255, 255, 255]);
        assert_eq!(c.pixel(81, 90, 240), [253, 0, 0]);
        assert_eq!(c.pixel(100, 50, 200), [211, 68, 0]);
    }
}
