//! 3D rotary positions (t, h, w) of a prompt with images and videos: transformers' `get_rope_index` for GLM-V.
//!
//! Text tokens count up on all three axes. A run of placeholder tokens for one image (or one frame pair of a
//! video) lays its merged grid out as t = start, h = start + row, w = start + column, and the next run starts at
//! `start + max(grid rows, grid columns)`, so positions stay far below the token count for large images.
use super::Grid;
use crate::{config::TokenIds, Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
}

/// One image or video of a prompt, in prompt order, with its patch grid (unmerged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaGrid {
    pub kind: MediaKind,
    pub grid: Grid,
}

/// Positions of every token and the decode offset `rope_delta` (a token at index n decodes at n + rope_delta).
pub fn mrope_positions(
    ids: &[u32],
    tokens: &TokenIds,
    media: &[MediaGrid],
    merge: usize,
) -> Result<(Vec<[u32; 3]>, i64)> {
    // Placeholder runs in the order they must appear: an image is one run, a video one run per temporal slice.
    let mut runs = media.iter().flat_map(|m| {
        let (t, h, w) = (m.grid.t, m.grid.h / merge, m.grid.w / merge);
        match m.kind {
            MediaKind::Image => vec![(MediaKind::Image, t, h, w)],
            MediaKind::Video => vec![(MediaKind::Video, 1, h, w); t],
        }
    });
    let mut positions = Vec::with_capacity(ids.len());
    let mut cur: u32 = 0;
    let mut in_video = false;
    let mut i = 0;
    while i < ids.len() {
        if ids[i] != tokens.image {
            if ids[i] == tokens.video_start {
                in_video = true;
            } else if ids[i] == tokens.video_end {
                in_video = false;
            }
            positions.push([cur; 3]);
            cur += 1;
            i += 1;
            continue;
        }
        let len = ids[i..].iter().take_while(|&&t| t == tokens.image).count();
        let kind = if in_video { MediaKind::Video } else { MediaKind::Image };
        let (run_kind, t, h, w) = runs.next().ok_or_else(|| {
            Error::InvalidInput(format!("a run of {len} image placeholder tokens at {i} has no image or video"))
        })?;
        if run_kind != kind || len != t * h * w {
            return Err(Error::InvalidInput(format!(
                "{len} placeholder tokens at {i} ({kind:?}) do not match the next media's {t}x{h}x{w} merged grid ({run_kind:?})"
            )));
        }
        for ti in 0..t {
            for row in 0..h {
                for col in 0..w {
                    positions.push([cur + ti as u32, cur + row as u32, cur + col as u32]);
                }
            }
        }
        cur += t.max(h).max(w) as u32;
        i += len;
    }
    if runs.next().is_some() {
        return Err(Error::InvalidInput("more images or videos than placeholder runs in the prompt".into()));
    }
    let max = positions.iter().flat_map(|p| p.iter().copied()).max().map_or(-1, i64::from);
    Ok((positions, max + 1 - ids.len() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> TokenIds {
        TokenIds { image: 9, video: 8, image_start: 5, image_end: 6, video_start: 3, video_end: 4, eos: vec![] }
    }

    #[test]
    fn text_only_counts_up() {
        let (p, delta) = mrope_positions(&[1, 2, 7], &tokens(), &[], 2).unwrap();
        assert_eq!(p, vec![[0; 3], [1; 3], [2; 3]]);
        assert_eq!(delta, 0);
    }

    #[test]
    fn image_then_video() {
        // text, <boi>, 2x3 merged image, <eoi>, <bov> <boi> 1x2 frame <eoi> 0 <boi> 1x2 frame <eoi> 1 <eov>
        let ids = [1, 5, 9, 9, 9, 9, 9, 9, 6, 3, 5, 9, 9, 6, 7, 5, 9, 9, 6, 7, 4];
        let media = [
            MediaGrid { kind: MediaKind::Image, grid: Grid { t: 1, h: 4, w: 6 } },
            MediaGrid { kind: MediaKind::Video, grid: Grid { t: 2, h: 2, w: 4 } },
        ];
        let (p, delta) = mrope_positions(&ids, &tokens(), &media, 2).unwrap();
        assert_eq!(&p[..3], &[[0; 3], [1; 3], [2, 2, 2]]);
        assert_eq!(p[7], [2, 3, 4]); // last image token: row 1, column 2
        assert_eq!(p[8], [5; 3]); // cur advanced by max(2, 3)
        assert_eq!(&p[11..13], &[[8, 8, 8], [8, 8, 9]]);
        assert_eq!(p[13], [10; 3]);
        assert_eq!(&p[16..18], &[[13, 13, 13], [13, 13, 14]]);
        assert_eq!(p[20], [17; 3]);
        assert_eq!(delta, 18 - 21);
    }

    #[test]
    fn mismatched_placeholders_are_errors() {
        let media = [MediaGrid { kind: MediaKind::Image, grid: Grid { t: 1, h: 2, w: 2 } }];
        assert!(mrope_positions(&[9, 9], &tokens(), &media, 2).is_err());
        assert!(mrope_positions(&[1], &tokens(), &media, 2).is_err());
        assert!(mrope_positions(&[9], &tokens(), &[], 2).is_err());
    }
}
