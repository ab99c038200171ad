//! H.264 decoding with Cisco's OpenH264 (built from source by the `openh264` crate): samples are turned from the
//! MP4's length-prefixed NAL units into Annex-B, fed in decode order with their presentation rank as the decoder's
//! timestamp, and every picture the decoder releases (during decoding, then flushed at the end) is matched back to
//! its presentation index by that timestamp. Only the pictures asked for are converted to RGB ([`super::yuv`]), so
//! memory stays at the sampled frames whatever the video's length.
//!
//! The sequence parameter set is parsed here too, for what the decoder does not report: chroma format and bit depth
//! (OpenH264 decodes 8-bit 4:2:0 only; anything else is refused up front) and the colour matrix and range of the VUI,
//! which decide the RGB conversion as they decide FFmpeg's.
use std::ptr::null_mut;

use openh264::decoder::Decoder;
use openh264_sys2::{SBufferInfo, DECODER_OPTION_NUM_OF_FRAMES_REMAINING_IN_BUFFER};

use super::{mp4::VideoTrack, yuv::YuvToRgb};
use crate::media::{MediaError, MediaLimits, RgbImage};

fn invalid(reason: impl Into<String>) -> MediaError {
    MediaError::VideoDecode { reason: reason.into() }
}

fn unsupported(reason: impl Into<String>) -> MediaError {
    MediaError::UnsupportedVideo { reason: reason.into() }
}

/// What glmv needs from a sequence parameter set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sps {
    pub profile_idc: u8,
    pub chroma_format_idc: u32,
    pub bit_depth_luma: u32,
    pub bit_depth_chroma: u32,
    /// Displayed size, after the SPS's cropping.
    pub width: u32,
    pub height: u32,
    /// VUI matrix_coefficients (2 = unspecified when the VUI has no colour description).
    pub matrix: u8,
    pub full_range: bool,
}

/// An exp-Golomb bit reader over an RBSP (emulation prevention bytes removed).
struct Bits {
    data: Vec<u8>,
    pos: usize,
}

impl Bits {
    fn new(nal: &[u8]) -> Self {
        let mut data = Vec::with_capacity(nal.len());
        let mut zeros = 0;
        for &b in nal {
            if zeros >= 2 && b == 3 {
                zeros = 0;
                continue;
            }
            zeros = if b == 0 { zeros + 1 } else { 0 };
            data.push(b);
        }
        Bits { data, pos: 0 }
    }

    fn bit(&mut self) -> Result<u32, MediaError> {
        let byte = self.data.get(self.pos / 8).ok_or_else(|| invalid("the SPS is truncated"))?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(u32::from(b))
    }

    fn bits(&mut self, n: u32) -> Result<u32, MediaError> {
        (0..n).try_fold(0, |acc, _| Ok((acc << 1) | self.bit()?))
    }

    fn ue(&mut self) -> Result<u32, MediaError> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err(invalid("an SPS exp-Golomb code is too long"));
            }
        }
        Ok(((1u64 << zeros) - 1 + u64::from(self.bits(zeros)?)) as u32)
    }

    fn se(&mut self) -> Result<i32, MediaError> {
        let k = self.ue()?;
        Ok(if k % 2 == 1 { k.div_ceil(2) as i32 } else { -((k / 2) as i32) })
    }
}

/// Parses an SPS NAL unit (with its one-byte NAL header), following H.264 7.3.2.1.1 as far as the VUI's colour
/// description.
pub fn parse_sps(nal: &[u8]) -> Result<Sps, MediaError> {
    if nal.first().map(|b| b & 0x1f) != Some(7) {
        return Err(invalid("the avcC's first parameter set is not an SPS"));
    }
    let mut r = Bits::new(&nal[1..]);
    let profile_idc = r.bits(8)? as u8;
    r.bits(16)?; // constraint flags, level
    r.ue()?; // seq_parameter_set_id
    let (mut chroma_format_idc, mut bit_depth_luma, mut bit_depth_chroma) = (1, 8, 8);
    if matches!(profile_idc, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            r.bit()?; // separate_colour_plane_flag
        }
        bit_depth_luma = r.ue()? + 8;
        bit_depth_chroma = r.ue()? + 8;
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i32, 8i32);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256) % 256;
                        }
                        last = if next == 0 { last } else { next };
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return Err(invalid("the SPS has too many reference frame offsets"));
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = r.bit()?;
    if frame_mbs_only == 0 {
        r.bit()?; // mb_adaptive_frame_field_flag
    }
    r.bit()?; // direct_8x8_inference_flag
    let mut width = width_mbs * 16;
    let mut height = height_units * 16 * u64::from(2 - frame_mbs_only);
    if r.bit()? == 1 {
        let (left, right, top, bottom) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
        let (sub_w, sub_h): (u64, u64) = match chroma_format_idc {
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        let crop_x = sub_w * (u64::from(left) + u64::from(right));
        let crop_y = sub_h * u64::from(2 - frame_mbs_only) * (u64::from(top) + u64::from(bottom));
        if crop_x >= width || crop_y >= height {
            return Err(invalid("the SPS crops away the whole picture"));
        }
        width -= crop_x;
        height -= crop_y;
    }
    let (mut matrix, mut full_range) = (2u8, false);
    if r.bit()? == 1 {
        // vui_parameters
        if r.bit()? == 1 && r.bits(8)? == 255 {
            r.bits(32)?; // sar width, height
        }
        if r.bit()? == 1 {
            r.bit()?; // overscan_appropriate_flag
        }
        if r.bit()? == 1 {
            r.bits(3)?; // video_format
            full_range = r.bit()? == 1;
            if r.bit()? == 1 {
                r.bits(16)?; // colour_primaries, transfer_characteristics
                matrix = r.bits(8)? as u8;
            }
        }
    }
    if width > u64::from(u32::MAX) || height > u64::from(u32::MAX) {
        return Err(invalid("the SPS's picture size is out of range"));
    }
    Ok(Sps {
        profile_idc,
        chroma_format_idc,
        bit_depth_luma,
        bit_depth_chroma,
        width: width as u32,
        height: height as u32,
        matrix,
        full_range,
    })
}

/// The parameter sets of the track checked against what the decoder supports and against `limits`.
pub fn check_stream(track: &VideoTrack, limits: &MediaLimits) -> Result<Sps, MediaError> {
    let sps = parse_sps(&track.avc.sps[0])?;
    if sps.chroma_format_idc != 1 {
        let name = match sps.chroma_format_idc {
            0 => "monochrome",
            2 => "4:2:2",
            _ => "4:4:4",
        };
        return Err(unsupported(format!("{name} H.264; only 4:2:0 chroma is supported")));
    }
    if sps.bit_depth_luma != 8 || sps.bit_depth_chroma != 8 {
        return Err(unsupported(format!("{}-bit H.264; only 8-bit video is supported", sps.bit_depth_luma)));
    }
    let pixels = u64::from(sps.width) * u64::from(sps.height);
    if pixels > limits.max_pixels {
        return Err(MediaError::FrameTooLarge {
            width: u64::from(sps.width),
            height: u64::from(sps.height),
            limit: limits.max_pixels,
        });
    }
    let total = pixels.saturating_mul(track.samples.len() as u64);
    if total > limits.max_video_decoded_pixels {
        return Err(MediaError::VideoTooLong {
            frames: track.samples.len() as u64,
            width: u64::from(sps.width),
            height: u64::from(sps.height),
            limit: limits.max_video_decoded_pixels,
        });
    }
    Ok(sps)
}

/// Appends the sample's NAL units to `out` in Annex-B form (4-byte start codes).
fn to_annex_b(sample: &[u8], length_size: usize, out: &mut Vec<u8>) -> Result<(), MediaError> {
    let mut pos = 0;
    while pos < sample.len() {
        let header = sample.get(pos..pos + length_size).ok_or_else(|| invalid("a NAL length prefix is truncated"))?;
        let len = header.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        pos += length_size;
        let nal = sample.get(pos..pos.saturating_add(len)).ok_or_else(|| invalid("a NAL unit is truncated"))?;
        pos += len;
        if !nal.is_empty() {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(nal);
        }
    }
    Ok(())
}

/// Decodes the whole track and returns the frames at the given presentation indices (sorted, distinct), as RGB.
pub fn decode_frames(
    track: &VideoTrack,
    file: &[u8],
    sps: &Sps,
    wanted: &[usize],
) -> Result<Vec<RgbImage>, MediaError> {
    let convert = YuvToRgb::new(sps.matrix, sps.full_range)
        .ok_or_else(|| unsupported("the YCgCo colour matrix is not supported"))?;
    let n = track.samples.len();
    // Presentation rank of each sample (by presentation time, decode order breaking ties).
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (track.samples[i].pts, i));
    let mut rank = vec![0usize; n];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r;
    }
    let mut slot: Vec<Option<usize>> = vec![None; n];
    for (k, &w) in wanted.iter().enumerate() {
        if w >= n {
            return Err(invalid(format!("frame {w} requested from a video of {n} frames")));
        }
        slot[w] = Some(k);
    }
    let mut frames: Vec<Option<RgbImage>> = vec![None; wanted.len()];

    let mut decoder = Decoder::new().map_err(|e| invalid(format!("the H.264 decoder failed to start: {e}")))?;
    let mut take = |dst: &[*mut u8; 3], info: &SBufferInfo| -> Result<(), MediaError> {
        if info.iBufferStatus != 1 || dst.iter().any(|p| p.is_null()) {
            return Ok(());
        }
        // SAFETY: the decoder filled the system-buffer member of the union for the picture it released.
        let buf = unsafe { info.UsrData.sSystemBuffer };
        let (w, h) = (buf.iWidth, buf.iHeight);
        let (ys, uvs) = (buf.iStride[0], buf.iStride[1]);
        if w <= 0 || h <= 0 || ys < w || uvs < (w + 1) / 2 {
            return Err(invalid(format!("the decoder returned a {w}x{h} picture")));
        }
        if (w as u32, h as u32) != (sps.width, sps.height) {
            return Err(unsupported(format!(
                "the picture size changes mid-stream ({}x{} to {w}x{h})",
                sps.width, sps.height
            )));
        }
        let r = (info.uiOutYuvTimeStamp as usize).wrapping_sub(1);
        let Some(&Some(k)) = slot.get(r) else { return Ok(()) };
        let (w, h, ys, uvs) = (w as usize, h as usize, ys as usize, uvs as usize);
        let ch = h.div_ceil(2);
        // SAFETY: OpenH264 hands out planes of `stride x height` (luma) and `stride x ceil(height/2)` (chroma) that
        // stay valid until the next call into the decoder; they are copied out before that.
        let (y, u, v) = unsafe {
            (
                std::slice::from_raw_parts(dst[0], ys * (h - 1) + w),
                std::slice::from_raw_parts(dst[1], uvs * (ch - 1) + w.div_ceil(2)),
                std::slice::from_raw_parts(dst[2], uvs * (ch - 1) + w.div_ceil(2)),
            )
        };
        frames[k] = Some(RgbImage { width: w, height: h, pixels: convert.convert(w, h, y, ys, u, v, uvs) });
        Ok(())
    };

    let mut annex_b = Vec::new();
    for set in track.avc.sps.iter().chain(&track.avc.pps) {
        annex_b.extend_from_slice(&[0, 0, 0, 1]);
        annex_b.extend_from_slice(set);
    }
    for (i, sample) in track.samples.iter().enumerate() {
        to_annex_b(&file[sample.offset..sample.offset + sample.size], track.avc.length_size, &mut annex_b)?;
        let mut dst = [null_mut::<u8>(); 3];
        let mut info = SBufferInfo { uiInBsTimeStamp: rank[i] as u64 + 1, ..Default::default() };
        // SAFETY: the pointers describe `annex_b` and locals that outlive the call.
        let state = unsafe {
            decoder.raw_api().decode_frame_no_delay(annex_b.as_ptr(), annex_b.len() as i32, dst.as_mut_ptr(), &mut info)
        };
        if state != 0 {
            return Err(invalid(format!("the H.264 decoder rejected sample {i} (state {state:#x})")));
        }
        take(&dst, &info)?;
        annex_b.clear();
    }
    // Pictures held back for reordering.
    loop {
        let mut remaining: i32 = 0;
        // SAFETY: the option writes one int.
        unsafe {
            decoder
                .raw_api()
                .get_option(DECODER_OPTION_NUM_OF_FRAMES_REMAINING_IN_BUFFER, (&mut remaining as *mut i32).cast());
        }
        if remaining <= 0 {
            break;
        }
        let mut dst = [null_mut::<u8>(); 3];
        let mut info = SBufferInfo::default();
        // SAFETY: as above.
        let state = unsafe { decoder.raw_api().flush_frame(dst.as_mut_ptr(), &mut info) };
        if state != 0 || info.iBufferStatus != 1 {
            return Err(invalid(format!("flushing the H.264 decoder failed (state {state:#x})")));
        }
        take(&dst, &info)?;
    }
    if frames.iter().all(Option::is_none) {
        return Err(MediaError::NoFrames);
    }
    frames
        .into_iter()
        .zip(wanted)
        .map(|(f, &w)| f.ok_or_else(|| invalid(format!("the decoder produced no picture for frame {w}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annex_b_conversion_checks_lengths() {
        let mut out = Vec::new();
        to_annex_b(&[0, 0, 0, 2, 0x65, 1, 0, 0, 0, 1, 0x41], 4, &mut out).unwrap();
        assert_eq!(out, vec![0, 0, 0, 1, 0x65, 1, 0, 0, 0, 1, 0x41]);
        // A length past the end, and a truncated prefix.
        assert!(to_annex_b(&[0, 0, 0, 9, 0x65], 4, &mut out).is_err());
        assert!(to_annex_b(&[0, 0], 4, &mut out).is_err());
        // A claimed 4 GiB NAL allocates nothing.
        assert!(to_annex_b(&[0xff, 0xff, 0xff, 0xff, 1], 4, &mut out).is_err());
    }

    #[test]
    fn broken_sps_fail_cleanly() {
        // Not an SPS, and an SPS cut after its profile (the real streams' SPS are checked in tests/video_parity.rs).
        assert!(parse_sps(&[0x68, 0xce]).is_err());
        assert!(parse_sps(&[0x67, 0x64, 0x00]).is_err());
        // An exp-Golomb code of more than 31 leading zeros.
        assert!(parse_sps(&[0x67, 0x42, 0, 0x0a, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
