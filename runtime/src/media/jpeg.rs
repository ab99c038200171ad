//! JPEG decoding as PIL does it: libjpeg-turbo's decompressor (the copy inside MozJPEG, built statically by
//! `mozjpeg-sys` from its C sources) with PIL's settings, i.e. libjpeg's defaults: the ISLOW integer IDCT, fancy
//! (triangle-filter) chroma upsampling, output in the colour space PIL's mode implies (1 component "L", 3 "RGB",
//! 4 "CMYK"). A CMYK file is read as Adobe-inverted, as PIL always assumes ("CMYK;I"), and then converted with PIL's
//! `convert("RGB")` formula. The result is bit-exact with what PIL decodes.
//!
//! libjpeg reports a fatal error by calling `error_exit`, which must not return. Here it unwinds (the C code is
//! built with `-fexceptions`, the callbacks are `extern "C-unwind"`) to a `catch_unwind` around every libjpeg call,
//! which turns it into a [`MediaError`]; `resume_unwind` raises it without the panic hook, so a corrupt file prints
//! nothing. Warnings (recoverable corrupt data) are ignored as PIL ignores them, except running out of data: PIL's
//! suspending source then raises "image file is truncated", unless every scanline has already been decoded (only the
//! end-of-image marker is missing); libjpeg's memory source warns at exactly the point where PIL's suspends, and the
//! same rule is applied to that warning.
use std::{
    cell::Cell,
    ffi::{c_char, c_int, c_ulong, c_void},
    marker::PhantomData,
    panic::{catch_unwind, resume_unwind, AssertUnwindSafe},
};

use ::image::metadata::Orientation;
use mozjpeg_sys::*;

use super::{MediaError, MediaLimits};

/// Scans after which a file is refused. A progressive file with many tiny scans makes libjpeg walk the whole
/// coefficient buffer once per scan: a CPU bomb. Encoders write at most a few dozen; libjpeg-turbo suggests 500 for
/// its own scan limit.
const MAX_SCANS: c_int = 500;

/// Headroom for libjpeg's own buffers beside the coefficient arrays of a multi-scan file.
const SLACK_BYTES: u64 = 64 << 20;

/// The APP1 marker code (`JPEG_APP0 + 1`), where EXIF lives.
const APP1: u8 = 0xE1;

/// libjpeg's recommended size of a `format_message` buffer (`JMSG_LENGTH_MAX`).
const MESSAGE_LENGTH: usize = 200;

/// What `error_exit` unwinds with.
struct Failure {
    code: c_int,
    message: String,
}

/// libjpeg's state and the managers it points to, boxed together so that the pointers between them stay valid.
struct State {
    cinfo: jpeg_decompress_struct,
    err: jpeg_error_mgr,
    progress: jpeg_progress_mgr,
    /// Every scanline has been read (`client_data` points here): running out of data is no longer fatal.
    finishing: Cell<bool>,
}

/// A JPEG whose header has been read; `decode` yields the pixels.
pub struct JpegDecoder<'a> {
    state: Box<State>,
    /// libjpeg reads straight from the caller's bytes.
    _bytes: PhantomData<&'a [u8]>,
    pub width: u32,
    pub height: u32,
    pub orientation: Orientation,
}

impl<'a> JpegDecoder<'a> {
    /// Reads the markers up to the first scan. Nothing the size of the picture is allocated yet; libjpeg's memory
    /// for multi-scan files is capped by what `limits` allows.
    pub fn open(bytes: &'a [u8], limits: &MediaLimits) -> Result<Self, MediaError> {
        // SAFETY: all-zero is the documented initial state of these C structs (libjpeg's own examples use it); the
        // pointers between them point into the same box, which does not move.
        let mut state: Box<State> = Box::new(unsafe { std::mem::zeroed() });
        unsafe {
            let s = &mut *state;
            s.cinfo.common.err = jpeg_std_error(&mut s.err);
            s.err.error_exit = Some(error_exit);
            s.err.emit_message = Some(emit_message);
            s.err.output_message = Some(output_message);
            s.progress.progress_monitor = Some(progress_monitor);
        }
        let mut decoder =
            JpegDecoder { state, _bytes: PhantomData, width: 0, height: 0, orientation: Orientation::NoTransforms };
        // From here on `Drop` destroys the libjpeg object, whatever fails (destroying a zeroed one does nothing).
        guard(|| unsafe {
            let s = &mut *decoder.state;
            jpeg_create_decompress(&mut s.cinfo);
            s.cinfo.common.progress = &mut s.progress;
            s.cinfo.common.client_data = &s.finishing as *const Cell<bool> as *mut c_void;
            // Coefficient buffers of a multi-scan file: 2 bytes per coefficient, one coefficient per sample, at most
            // 4 components (PIL reads no other count), within the pixel limit.
            let max_memory = limits.max_pixels.saturating_mul(8).saturating_add(SLACK_BYTES);
            (*s.cinfo.common.mem).max_memory_to_use = max_memory.min(i64::MAX as u64) as _;
            jpeg_mem_src(&mut s.cinfo, bytes.as_ptr(), bytes.len() as c_ulong);
            jpeg_save_markers(&mut s.cinfo, c_int::from(APP1), 0xFFFF);
            jpeg_read_header(&mut s.cinfo, 1);
        })?;
        let cinfo = &decoder.state.cinfo;
        decoder.width = cinfo.image_width;
        decoder.height = cinfo.image_height;
        decoder.orientation = exif_orientation(cinfo);
        Ok(decoder)
    }

    /// Decodes every scan and returns 8-bit RGB, before the EXIF orientation is applied.
    pub fn decode(mut self) -> Result<Vec<u8>, MediaError> {
        let s = &mut *self.state;
        let components = s.cinfo.num_components;
        let out_space = match components {
            1 => J_COLOR_SPACE::JCS_GRAYSCALE,
            3 => J_COLOR_SPACE::JCS_RGB,
            4 => J_COLOR_SPACE::JCS_CMYK,
            n => return Err(MediaError::UnsupportedFormat { reason: format!("JPEG with {n} components") }),
        };
        let (width, height) = (s.cinfo.image_width as usize, s.cinfo.image_height as usize);
        let row_len = width * components as usize;
        let mut raw = Vec::new();
        raw.try_reserve_exact(row_len * height).map_err(|e| MediaError::MemoryLimit {
            format: "JPEG".into(),
            reason: format!("{} bytes of pixels: {e}", row_len * height),
        })?;
        raw.resize(row_len * height, 0);
        guard(|| unsafe {
            let cinfo = &mut s.cinfo;
            cinfo.out_color_space = out_space;
            // PIL's settings are libjpeg's defaults; set them anyway so that the parity does not hang on them.
            cinfo.dct_method = J_DCT_METHOD::JDCT_ISLOW;
            cinfo.do_fancy_upsampling = 1;
            cinfo.scale_num = 1;
            cinfo.scale_denom = 1;
            jpeg_start_decompress(cinfo);
            let (w, h, c) = (cinfo.output_width as usize, cinfo.output_height as usize, cinfo.output_components);
            if (w, h, c) != (width, height, components) {
                fail(format!("output is {w}x{h}x{c}, the header said {width}x{height}x{components}"));
            }
            while (cinfo.output_scanline as usize) < height {
                let mut row = raw[cinfo.output_scanline as usize * row_len..].as_mut_ptr();
                if jpeg_read_scanlines(cinfo, &mut row, 1) != 1 {
                    fail("the decoder returned no scanline".into());
                }
            }
            s.finishing.set(true);
            jpeg_finish_decompress(&mut s.cinfo);
        })?;
        Ok(match components {
            1 => raw.into_iter().flat_map(|v| [v, v, v]).collect(),
            3 => raw,
            _ => raw.chunks_exact(4).flat_map(inverted_cmyk_to_rgb).collect(),
        })
    }
}

impl Drop for JpegDecoder<'_> {
    fn drop(&mut self) {
        let s = &mut *self.state;
        // Freeing cannot fail; a failure unwinding out of here would abort, so it is caught anyway.
        let _ = catch_unwind(AssertUnwindSafe(|| unsafe { jpeg_destroy_decompress(&mut s.cinfo) }));
    }
}

/// PIL's "CMYK;I" unpacking (Adobe's inverted samples) followed by its `convert("RGB")`:
/// `255 - k' - c' * (255 - k') / 255` per channel with the non-inverted values, rounded as PIL's `MULDIV255` does.
fn inverted_cmyk_to_rgb(p: &[u8]) -> [u8; 3] {
    let nk = i32::from(p[3]); // 255 - k
    let channel = |inverted: u8| {
        let c = i32::from(255 - inverted);
        let t = c * nk + 128;
        (nk - (((t >> 8) + t) >> 8)).clamp(0, 255) as u8
    };
    [channel(p[0]), channel(p[1]), channel(p[2])]
}

/// The orientation PIL's `exif_transpose` reads: from the EXIF of the first APP1 "Exif" marker (PIL appends later
/// ones to it, after the first's IFD0, where the orientation lives).
fn exif_orientation(cinfo: &jpeg_decompress_struct) -> Orientation {
    let mut marker = cinfo.marker_list;
    while !marker.is_null() {
        // SAFETY: libjpeg's saved-marker list, alive as long as the decompress object.
        let m = unsafe { &*marker };
        if m.marker == APP1 && !m.data.is_null() {
            let data = unsafe { std::slice::from_raw_parts(m.data, m.data_length as usize) };
            if let Some(tiff) = data.strip_prefix(b"Exif\0\0") {
                return Orientation::from_exif_chunk(tiff).unwrap_or(Orientation::NoTransforms);
            }
        }
        marker = m.next;
    }
    Orientation::NoTransforms
}

/// Runs libjpeg calls, turning the unwinding of `error_exit` into a [`MediaError`].
fn guard<T>(f: impl FnOnce() -> T) -> Result<T, MediaError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| match payload.downcast::<Failure>() {
        Ok(failure) => to_media_error(*failure),
        Err(other) => resume_unwind(other),
    })
}

fn to_media_error(failure: Failure) -> MediaError {
    let format = "JPEG".to_string();
    let reason = failure.message;
    match failure.code {
        c if c == JERR_OUT_OF_MEMORY as c_int || c == JERR_NO_BACKING_STORE as c_int => {
            MediaError::MemoryLimit { format, reason }
        }
        _ => MediaError::Decode { format, reason },
    }
}

/// Raises a failure of glmv's own from inside a guarded call.
fn fail(message: String) -> ! {
    resume_unwind(Box::new(Failure { code: -1, message }))
}

/// libjpeg's message for the error or warning it has just recorded in its error manager.
///
/// # Safety
/// `cinfo` is a live libjpeg object whose `err` points to an initialised error manager.
unsafe fn message(cinfo: &mut jpeg_common_struct) -> Failure {
    let err = &*cinfo.err;
    let code = err.msg_code;
    let mut buffer = [0 as c_char; MESSAGE_LENGTH];
    if let Some(format_message) = err.format_message {
        // The binding declares the buffer as `&[u8; 80]`; libjpeg writes up to JMSG_LENGTH_MAX bytes into it.
        let format_message: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, *mut c_char) =
            std::mem::transmute(format_message);
        format_message(cinfo, buffer.as_mut_ptr());
    }
    buffer[MESSAGE_LENGTH - 1] = 0;
    let message = std::ffi::CStr::from_ptr(buffer.as_ptr()).to_string_lossy().into_owned();
    Failure { code, message }
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    resume_unwind(Box::new(message(cinfo)))
}

unsafe extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    if level >= 0 {
        return; // trace messages
    }
    let err = &mut *cinfo.err;
    // libjpeg's memory source reports the end of the data as a warning and feeds a fake EOI; PIL's suspends, and
    // refuses the file as truncated unless all its scanlines are decoded.
    let finishing = (*(cinfo.client_data as *const Cell<bool>)).get();
    if err.msg_code == JWRN_JPEG_EOF as c_int && !finishing {
        resume_unwind(Box::new(message(cinfo)));
    }
    err.num_warnings += 1;
}

unsafe extern "C-unwind" fn output_message(_cinfo: &mut jpeg_common_struct) {}

unsafe extern "C-unwind" fn progress_monitor(cinfo: &mut jpeg_common_struct) {
    // SAFETY: only decompress objects get this monitor; `common` is the first field of jpeg_decompress_struct.
    let scans = (*(cinfo as *mut jpeg_common_struct as *const jpeg_decompress_struct)).input_scan_number;
    if scans > MAX_SCANS {
        fail(format!("more than {MAX_SCANS} scans"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::decode_image;

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let raw: Vec<u8> = (0..width * height * 3).map(|i| (i * 7 % 251) as u8).collect();
        let mut out = Vec::new();
        let encoder = ::image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
        ::image::ImageEncoder::write_image(encoder, &raw, width, height, ::image::ExtendedColorType::Rgb8).unwrap();
        out
    }

    #[test]
    fn cmyk_converts_as_pil_does() {
        // PIL: Image.new("CMYK", ...).putdata(px).convert("RGB"); the file stores Adobe-inverted samples.
        let cases = [
            ([0, 0, 0, 0], [255, 255, 255]),
            ([255, 255, 255, 255], [0, 0, 0]),
            ([10, 128, 200, 30], [216, 112, 49]),
            ([200, 50, 255, 128], [27, 102, 0]),
            ([0, 0, 0, 255], [0, 0, 0]),
        ];
        for (cmyk, rgb) in cases {
            assert_eq!(inverted_cmyk_to_rgb(&cmyk.map(|v: u8| 255 - v)), rgb, "{cmyk:?}");
        }
    }

    #[test]
    fn truncated_and_corrupt_files_fail_with_typed_errors() {
        let full = jpeg(40, 30);
        let limits = MediaLimits::default();
        let img = decode_image(&full, &limits).unwrap();
        assert_eq!((img.width, img.height, img.pixels.len()), (40, 30, 3600));
        // Cut inside the scan: PIL's "image file is truncated". (Only the last bytes before the end-of-image
        // marker may be missing when every scanline decodes without them; PIL accepts that too.)
        for cut in 3..full.len() - 16 {
            match decode_image(&full[..cut], &limits) {
                Err(MediaError::Decode { .. }) => {}
                other => panic!("cut at {cut}: {:?}", other.map(|i| (i.width, i.height))),
            }
        }
        // Corrupt bytes anywhere: an image (libjpeg recovers from bad entropy data as PIL does) or a typed error,
        // never a panic or an abort.
        for at in 2..full.len() {
            let mut bad = full.clone();
            bad[at] ^= 0x5A;
            if let Err(e) = decode_image(&bad, &limits) {
                assert!(
                    matches!(
                        e,
                        MediaError::Decode { .. }
                            | MediaError::UnsupportedFormat { .. }
                            | MediaError::UnknownFormat
                            | MediaError::TooManyPixels { .. }
                            | MediaError::Empty { .. }
                            | MediaError::MemoryLimit { .. }
                    ),
                    "byte {at}: {e}"
                );
            }
        }
    }

    #[test]
    fn header_limits_refuse_before_decoding() {
        let full = jpeg(40, 30);
        let small = MediaLimits { max_pixels: 1199, ..Default::default() };
        assert!(matches!(decode_image(&full, &small), Err(MediaError::TooManyPixels { width: 40, height: 30, .. })));
        let header = JpegDecoder::open(&full, &MediaLimits::default()).unwrap();
        assert_eq!((header.width, header.height, header.orientation), (40, 30, Orientation::NoTransforms));
    }
}
