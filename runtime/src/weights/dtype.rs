//! Element types a checkpoint may store, and their conversion to f32.
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    /// FP8 E4M3 "fn" (no infinities, 0x7f/0xff are NaN), the format of GLM-V FP8 checkpoints.
    F8E4M3,
    I64,
    I32,
    U8,
    Bool,
    /// A dtype glmv never reads (F64, F8_E5M2, ...); kept so that such tensors can still be indexed and skipped.
    Other,
}

impl Dtype {
    pub fn parse(s: &str) -> Dtype {
        match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "F8_E4M3" => Dtype::F8E4M3,
            "I64" => Dtype::I64,
            "I32" => Dtype::I32,
            "U8" => Dtype::U8,
            "BOOL" => Dtype::Bool,
            _ => Dtype::Other,
        }
    }

    /// Bytes per element, or None for dtypes whose size glmv does not track.
    pub fn size(self) -> Option<usize> {
        match self {
            Dtype::F32 | Dtype::I32 => Some(4),
            Dtype::F16 | Dtype::BF16 => Some(2),
            Dtype::F8E4M3 | Dtype::U8 | Dtype::Bool => Some(1),
            Dtype::I64 => Some(8),
            Dtype::Other => None,
        }
    }

    /// Whether values of this dtype convert to f32 with [`to_f32`].
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F8E4M3)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::U8 => "U8",
            Dtype::Bool => "BOOL",
            Dtype::Other => "an unsupported dtype",
        };
        f.write_str(s)
    }
}

#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// IEEE half to f32 (exact).
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits >> 15) as u32) << 31;
    let exp = ((bits >> 10) & 0x1f) as u32;
    let man = (bits & 0x3ff) as u32;
    let magnitude = match exp {
        0 => {
            let v = man as f32 * 2f32.powi(-24);
            return if sign != 0 { -v } else { v };
        }
        0x1f => 0x7f80_0000 | (man << 13),
        _ => ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(sign | magnitude)
}

/// FP8 E4M3FN to f32 (exact): bias 7, subnormals at exponent 0, S.1111.111 is NaN, no infinities.
pub const fn f8e4m3_to_f32(b: u8) -> f32 {
    let negative = b & 0x80 != 0;
    let exp = ((b >> 3) & 0xf) as i32;
    let man = (b & 0x7) as u32;
    let magnitude = if exp == 0xf && man == 0x7 {
        f32::NAN
    } else if exp == 0 {
        // man / 8 * 2^-6, exact in f32
        f32::from_bits(((127 - 9) << 23) as u32) * man as f32
    } else {
        f32::from_bits((((exp - 7 + 127) as u32) << 23) | (man << 20))
    };
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// f32 to BF16 bits, rounding to nearest even (as CUDA's `__float2bfloat16`).
pub fn f32_to_bf16_rne(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// f32 to FP8 E4M3FN, rounding to nearest even and saturating to +-448 (as CUDA's `__nv_cvt_float_to_fp8` with
/// `__NV_SATFINITE`). NaN maps to 0x7f.
pub fn f32_to_f8e4m3_rne(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs();
    if a >= 448.0 {
        return sign | 0x7e;
    }
    // Candidates are all finite magnitudes 0x00..=0x7e, increasing with the code: pick the nearest, ties to even.
    let (mut lo, mut hi) = (0u8, 0x7eu8);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if F8E4M3_TABLE[mid as usize] <= a {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (vl, vh) = (F8E4M3_TABLE[lo as usize], F8E4M3_TABLE[hi as usize]);
    let code = if a - vl < vh - a || (a - vl == vh - a && lo % 2 == 0) || a <= vl { lo } else { hi };
    sign | code
}

/// All 256 FP8 E4M3 values, for table lookups on hot paths.
pub static F8E4M3_TABLE: [f32; 256] = {
    let mut t = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = f8e4m3_to_f32(i as u8);
        i += 1;
    }
    t
};

/// Converts little-endian elements of a float dtype to f32. `out.len()` elements are read from `bytes`.
pub fn to_f32(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        Dtype::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Dtype::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        Dtype::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        Dtype::F8E4M3 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = F8E4M3_TABLE[b as usize];
            }
        }
        _ => unreachable!("to_f32 called on non-float dtype {dtype}; callers check is_float"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_e4m3_values() {
        assert_eq!(f8e4m3_to_f32(0x00), 0.0);
        assert_eq!(f8e4m3_to_f32(0x38), 1.0); // exp 7, man 0
        assert_eq!(f8e4m3_to_f32(0x7e), 448.0); // largest finite
        assert_eq!(f8e4m3_to_f32(0xfe), -448.0);
        assert_eq!(f8e4m3_to_f32(0x01), 2f32.powi(-9)); // smallest subnormal
        assert_eq!(f8e4m3_to_f32(0x3c), 1.5);
        assert!(f8e4m3_to_f32(0x7f).is_nan());
    }

    #[test]
    fn rounding_to_bf16_and_fp8() {
        assert_eq!(f32_to_bf16_rne(1.0), 0x3f80);
        assert_eq!(f32_to_bf16_rne(f32::from_bits(0x3f80_8000)), 0x3f80); // tie to even
        assert_eq!(f32_to_bf16_rne(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_f8e4m3_rne(1.0), 0x38);
        assert_eq!(f32_to_f8e4m3_rne(1000.0), 0x7e);
        assert_eq!(f32_to_f8e4m3_rne(-1000.0), 0xfe);
        assert_eq!(f32_to_f8e4m3_rne(1.0625), 0x38); // halfway between 1.0 and 1.125: even
        assert_eq!(f32_to_f8e4m3_rne(1.1875), 0x3a); // halfway between 1.125 and 1.25: even
        assert_eq!(f32_to_f8e4m3_rne(2f32.powi(-10)), 0x00); // half the smallest subnormal: even (zero)
        for code in 0..0x7eu8 {
            let v = f8e4m3_to_f32(code);
            assert_eq!(f32_to_f8e4m3_rne(v), code);
            assert_eq!(f32_to_f8e4m3_rne(-v), code | 0x80);
        }
    }

    #[test]
    fn half_formats() {
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
    }
}
