//! Image decoding with the semantics transformers gives a file: `load_image` (PIL opens it,
//! `ImageOps.exif_transpose` applies the EXIF orientation, `convert("RGB")` drops alpha (no compositing) and maps
//! every other mode to 8-bit RGB the way PIL does: 16-bit channels keep their high byte, 16-bit grey clips at 255),
//! then the processor's `convert_to_rgb`, which whitens a palette/tRNS transparent colour (see `transparency`).
//!
//! Decoding happens in two steps so that the header can be judged (encoded size, format, dimensions, aspect
//! ratio) before any pixel buffer is allocated: [`EncodedImage::open`] then [`EncodedImage::decode`].
use std::io::Cursor;

use ::image::{metadata::Orientation, DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};

use super::{jpeg::JpegDecoder, transparency, MediaError, MediaLimits, RgbImage};

/// The formats a client may send; everything else is refused even if the `image` crate could read it.
const ACCEPTED: [ImageFormat; 5] =
    [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP, ImageFormat::Gif, ImageFormat::Bmp];

/// Decoders keep working buffers beside the output (rows, Huffman tables, LZW dictionaries): headroom for those.
const DECODER_SLACK_BYTES: u64 = 64 << 20;

/// An image whose header has been read and accepted; no pixel has been decoded yet.
pub struct EncodedImage<'a> {
    decoder: Decoder<'a>,
    format: ImageFormat,
    transparent_key: Option<[u8; 3]>,
    /// Stored dimensions, before the EXIF orientation is applied.
    pub width: u32,
    pub height: u32,
}

/// JPEGs go to libjpeg-turbo, PIL's decoder (see `jpeg`); everything else to the `image` crate.
enum Decoder<'a> {
    Image(Box<dyn ImageDecoder + 'a>),
    Jpeg(JpegDecoder<'a>),
}

impl<'a> EncodedImage<'a> {
    /// Identifies the format from the leading bytes and reads the header, refusing what `limits` does not allow.
    pub fn open(bytes: &'a [u8], limits: &MediaLimits) -> Result<Self, MediaError> {
        if bytes.len() > limits.max_encoded_bytes {
            return Err(MediaError::TooLarge { size: bytes.len(), limit: limits.max_encoded_bytes });
        }
        let format = ::image::guess_format(bytes).map_err(|_| MediaError::UnknownFormat)?;
        if !ACCEPTED.contains(&format) {
            return Err(MediaError::UnsupportedFormat { reason: format!("{format:?}") });
        }
        let (decoder, width, height) = if format == ImageFormat::Jpeg {
            let jpeg = JpegDecoder::open(bytes, limits)?;
            let (width, height) = (jpeg.width, jpeg.height);
            (Decoder::Jpeg(jpeg), width, height)
        } else {
            let decoder = Self::open_with_image(bytes, format, limits)?;
            let (width, height) = decoder.dimensions();
            (Decoder::Image(decoder), width, height)
        };
        let (w, h) = (u64::from(width), u64::from(height));
        if w == 0 || h == 0 {
            return Err(MediaError::Empty { width: w, height: h });
        }
        if w * h > limits.max_pixels {
            return Err(MediaError::TooManyPixels { width: w, height: h, limit: limits.max_pixels });
        }
        let transparent_key = transparency::transparent_key(bytes, format);
        Ok(EncodedImage { decoder, format, transparent_key, width, height })
    }

    fn open_with_image(
        bytes: &'a [u8],
        format: ImageFormat,
        limits: &MediaLimits,
    ) -> Result<Box<dyn ImageDecoder + 'a>, MediaError> {
        let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
        let mut decoder_limits = Limits::default();
        // The largest output (16-bit RGBA) of an image within the pixel limit, plus the decoder's own buffers.
        decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(DECODER_SLACK_BYTES));
        reader.limits(decoder_limits);
        Ok(Box::new(reader.into_decoder().map_err(|e| decode_error(format, e))?))
    }

    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// Decodes the pixels (the first frame of an animation), converts them to 8-bit RGB and applies the EXIF
    /// orientation.
    pub fn decode(self) -> Result<RgbImage, MediaError> {
        let format = self.format;
        let (mut pixels, orientation, width, height) = match self.decoder {
            Decoder::Jpeg(jpeg) => {
                let (orientation, width, height) = (jpeg.orientation, jpeg.width, jpeg.height);
                (jpeg.decode()?, orientation, width, height)
            }
            Decoder::Image(mut decoder) => {
                // PIL's exif_transpose ignores an orientation it cannot read; so does this.
                let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
                let image = DynamicImage::from_decoder(decoder).map_err(|e| decode_error(format, e))?;
                let (width, height) = (image.width(), image.height());
                (to_rgb(image)?, orientation, width, height)
            }
        };
        if let Some(key) = self.transparent_key {
            transparency::whiten(&mut pixels, key);
        }
        if orientation == Orientation::NoTransforms {
            return Ok(RgbImage { width: width as usize, height: height as usize, pixels });
        }
        let buffer = ::image::RgbImage::from_raw(width, height, pixels).ok_or_else(|| MediaError::Decode {
            format: format_name(format).into(),
            reason: "the decoder returned fewer pixels than its header announced".into(),
        })?;
        let mut oriented = DynamicImage::ImageRgb8(buffer);
        oriented.apply_orientation(orientation);
        let (width, height) = (oriented.width() as usize, oriented.height() as usize);
        Ok(RgbImage { width, height, pixels: oriented.into_rgb8().into_raw() })
    }
}

/// Decodes a whole image file (see [`EncodedImage`]).
pub fn decode_image(bytes: &[u8], limits: &MediaLimits) -> Result<RgbImage, MediaError> {
    EncodedImage::open(bytes, limits)?.decode()
}

/// PIL's `convert("RGB")` of what PIL would have opened the file as.
fn to_rgb(image: DynamicImage) -> Result<Vec<u8>, MediaError> {
    let grey = |v: u8| [v, v, v];
    Ok(match image {
        DynamicImage::ImageRgb8(b) => b.into_raw(),
        DynamicImage::ImageRgba8(b) => b.into_raw().chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        DynamicImage::ImageLuma8(b) => b.into_raw().into_iter().flat_map(grey).collect(),
        DynamicImage::ImageLumaA8(b) => b.into_raw().chunks_exact(2).flat_map(|p| grey(p[0])).collect(),
        // PIL opens 16-bit grey as mode "I;16", whose conversion to RGB clips values to 255 (it does not scale).
        DynamicImage::ImageLuma16(b) => b.into_raw().into_iter().flat_map(|v| grey(v.min(255) as u8)).collect(),
        // 16-bit grey+alpha and colour PNGs are unpacked by PIL into 8-bit modes from each sample's high byte.
        DynamicImage::ImageLumaA16(b) => b.into_raw().chunks_exact(2).flat_map(|p| grey(high_byte(p[0]))).collect(),
        DynamicImage::ImageRgb16(b) => b.into_raw().into_iter().map(high_byte).collect(),
        DynamicImage::ImageRgba16(b) => {
            b.into_raw().chunks_exact(4).flat_map(|p| [high_byte(p[0]), high_byte(p[1]), high_byte(p[2])]).collect()
        }
        other => {
            return Err(MediaError::UnsupportedFormat { reason: format!("pixel type {:?}", other.color()) });
        }
    })
}

fn high_byte(v: u16) -> u8 {
    (v >> 8) as u8
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
        _ => "image",
    }
}

fn decode_error(format: ImageFormat, e: ImageError) -> MediaError {
    let name = format_name(format).to_string();
    match e {
        ImageError::Limits(l) => MediaError::MemoryLimit { format: name, reason: l.to_string() },
        ImageError::Unsupported(u) => MediaError::UnsupportedFormat { reason: u.to_string() },
        other => MediaError::Decode { format: name, reason: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, color: ::image::ExtendedColorType, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let encoder = ::image::codecs::png::PngEncoder::new(&mut out);
        ::image::ImageEncoder::write_image(encoder, raw, width, height, color).unwrap();
        out
    }

    #[test]
    fn rgba_drops_alpha_and_grey_replicates() {
        let bytes = png(2, 1, ::image::ExtendedColorType::Rgba8, &[10, 20, 30, 0, 40, 50, 60, 128]);
        let img = decode_image(&bytes, &MediaLimits::default()).unwrap();
        assert_eq!((img.width, img.height, img.pixels), (2, 1, vec![10, 20, 30, 40, 50, 60]));
        let bytes = png(2, 1, ::image::ExtendedColorType::La8, &[7, 0, 200, 255]);
        assert_eq!(decode_image(&bytes, &MediaLimits::default()).unwrap().pixels, vec![7, 7, 7, 200, 200, 200]);
    }

    #[test]
    fn sixteen_bit_follows_pil() {
        // The encoder takes 16-bit samples in native byte order.
        let grey: Vec<u8> = [100u16, 256, 40000].iter().flat_map(|v| v.to_ne_bytes()).collect();
        let bytes = png(3, 1, ::image::ExtendedColorType::L16, &grey);
        let img = decode_image(&bytes, &MediaLimits::default()).unwrap();
        assert_eq!(img.pixels, vec![100, 100, 100, 255, 255, 255, 255, 255, 255]);
        let rgb: Vec<u8> = [0u16, 255, 256, 511, 40000, 65535].iter().flat_map(|v| v.to_ne_bytes()).collect();
        let bytes = png(2, 1, ::image::ExtendedColorType::Rgb16, &rgb);
        assert_eq!(decode_image(&bytes, &MediaLimits::default()).unwrap().pixels, vec![0, 0, 1, 1, 156, 255]);
    }

    #[test]
    fn limits_are_checked_on_the_header() {
        let bytes = png(4, 3, ::image::ExtendedColorType::Rgb8, &[0; 36]);
        let small = MediaLimits { max_pixels: 11, ..Default::default() };
        assert!(matches!(
            EncodedImage::open(&bytes, &small),
            Err(MediaError::TooManyPixels { width: 4, height: 3, limit: 11 })
        ));
        let tiny = MediaLimits { max_encoded_bytes: 10, ..Default::default() };
        assert!(matches!(EncodedImage::open(&bytes, &tiny), Err(MediaError::TooLarge { .. })));
        assert!(matches!(
            decode_image(b"not an image at all", &MediaLimits::default()),
            Err(MediaError::UnknownFormat)
        ));
    }
}
