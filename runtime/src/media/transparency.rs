//! The "transparent colour" of palette and tRNS images, as transformers ends up treating it.
//!
//! PIL keeps a single transparent palette index (GIF, or a PNG tRNS with one 0 among 255s) or a PNG tRNS key colour
//! in `info["transparency"]`. `convert("RGB")` turns the index into its palette colour and keeps the key; then the
//! image processor's `convert_to_rgb` sees `transparency`, converts to RGBA (every pixel of exactly that colour gets
//! alpha 0) and composites onto white. So, unlike real alpha channels (which are dropped), such images come out
//! with every pixel of the transparent colour white. This module reads that colour from the file's own headers.
use ::image::ImageFormat;

/// The RGB colour PIL would turn white in this file, if any.
pub fn transparent_key(bytes: &[u8], format: ImageFormat) -> Option<[u8; 3]> {
    match format {
        ImageFormat::Png => png_key(bytes),
        ImageFormat::Gif => gif_key(bytes),
        _ => None,
    }
}

/// Makes every pixel equal to `key` white.
pub fn whiten(pixels: &mut [u8], key: [u8; 3]) {
    for px in pixels.chunks_exact_mut(3) {
        if px == key {
            px.copy_from_slice(&[255, 255, 255]);
        }
    }
}

fn png_key(bytes: &[u8]) -> Option<[u8; 3]> {
    let (mut depth, mut color_type, mut palette, mut trns) = (0u8, 0u8, None, None);
    let mut i = 8;
    while let Some(head) = bytes.get(i..i + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let data = bytes.get(i + 8..(i + 8).checked_add(len)?)?;
        match &head[4..8] {
            b"IHDR" if len >= 10 => (depth, color_type) = (data[8], data[9]),
            b"PLTE" => palette = Some(data),
            b"tRNS" => trns = Some(data),
            b"IDAT" | b"IEND" => break,
            _ => {}
        }
        i += 12 + len;
    }
    let trns = trns?;
    // Only 8-bit samples: PIL's key of 16-bit and sub-byte images is in another scale than its pixels.
    match (color_type, depth) {
        (3, _) => {
            // One fully transparent entry and only opaque ones otherwise; any other tRNS PIL keeps as bytes and
            // convert("RGB") drops.
            let zero = trns.iter().position(|&a| a == 0)?;
            if trns.iter().enumerate().any(|(k, &a)| k != zero && a != 255) {
                return None;
            }
            let c = palette?.get(3 * zero..3 * zero + 3)?;
            Some([c[0], c[1], c[2]])
        }
        (0, 8) if trns.len() >= 2 => {
            let v = u16::from_be_bytes([trns[0], trns[1]]);
            u8::try_from(v).ok().map(|v| [v; 3])
        }
        (2, 8) if trns.len() >= 6 => {
            let s = |k: usize| u8::try_from(u16::from_be_bytes([trns[k], trns[k + 1]])).ok();
            Some([s(0)?, s(2)?, s(4)?])
        }
        _ => None,
    }
}

/// The first frame's transparent index (graphic control extension) looked up in its colour table.
fn gif_key(bytes: &[u8]) -> Option<[u8; 3]> {
    let flags = *bytes.get(10)?;
    let global_len = if flags & 0x80 != 0 { 3 << ((flags & 7) + 1) } else { 0 };
    let global = bytes.get(13..13 + global_len)?;
    let mut i = 13 + global_len;
    let mut transparent = None;
    loop {
        match *bytes.get(i)? {
            0x21 => {
                let label = *bytes.get(i + 1)?;
                if label == 0xF9 && *bytes.get(i + 2)? >= 4 && bytes.get(i + 3)? & 1 != 0 {
                    transparent = Some(*bytes.get(i + 6)? as usize);
                }
                // Skip the extension's sub-blocks.
                i += 2;
                loop {
                    let n = *bytes.get(i)? as usize;
                    i += 1 + n;
                    if n == 0 {
                        break;
                    }
                }
            }
            0x2C => {
                let t = transparent?;
                let local_flags = *bytes.get(i + 9)?;
                let table = if local_flags & 0x80 != 0 {
                    bytes.get(i + 10..i + 10 + (3 << ((local_flags & 7) + 1)))?
                } else {
                    global
                };
                let c = table.get(3 * t..3 * t + 3)?;
                return Some([c[0], c[1], c[2]]);
            }
            _ => return None,
        }
    }
}
