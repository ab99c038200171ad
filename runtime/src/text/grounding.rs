//! Grounding boxes in GLM-V answers.
//!
//! GLM-4.1V/4.5V/4.6V wrap final answers in `<|begin_of_box|>…<|end_of_box|>`. For grounding prompts ("find the
//! red car") the span holds boxes as `[[x1,y1,x2,y2]]` (several: `[[…],[…]]`), or points as `[[x,y]]`, in
//! coordinates normalised to 0–1000 of the image's width and height, independent of its pixel size or of the
//! resize the processor applied. For other prompts it holds the plain answer (`<|begin_of_box|>B<|end_of_box|>`).
//!
//! The server passes these spans through as text (the default, as SGLang and vLLM do). A client that wants
//! coordinates calls [`box_spans`] on the content and [`NormBox::to_pixels`] with the original image size:
//!
//! ```
//! use glmv_runtime::text::grounding::{box_spans, Shape};
//! let answer = "The cat is at <|begin_of_box|>[[100,200,500,800]]<|end_of_box|>.";
//! let spans = box_spans(answer);
//! assert_eq!(spans[0].inner, "[[100,200,500,800]]");
//! let Shape::Box(b) = spans[0].shapes[0] else { unreachable!() };
//! assert_eq!(b.to_pixels(640.0, 480.0), [64.0, 96.0, 320.0, 384.0]);
//! ```
use alloc::vec::Vec;

pub const BOX_START: &str = "<|begin_of_box|>";
pub const BOX_END: &str = "<|end_of_box|>";

/// The scale of normalised coordinates: 1000 is the full width or height.
pub const NORM_SCALE: f64 = 1000.0;

/// A box `[x1, y1, x2, y2]` in 0–1000 normalised coordinates (left, top, right, bottom).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormBox {
    pub x1: f64,
    pub y1: f64,
    pub x2: f64,
    pub y2: f64,
}

impl NormBox {
    /// `[x1, y1, x2, y2]` in pixels of an image `width` x `height`.
    pub fn to_pixels(&self, width: f64, height: f64) -> [f64; 4] {
        let sx = width / NORM_SCALE;
        let sy = height / NORM_SCALE;
        [self.x1 * sx, self.y1 * sy, self.x2 * sx, self.y2 * sy]
    }

    /// Whether all four values lie in 0–1000 with x1 <= x2 and y1 <= y2; models occasionally emit boxes that do not.
    pub fn is_well_formed(&self) -> bool {
        let in_range = |v: f64| (0.0..=NORM_SCALE).contains(&v);
        [self.x1, self.y1, self.x2, self.y2].into_iter().all(in_range) && self.x1 <= self.x2 && self.y1 <= self.y2
    }
}

/// A point `[x, y]` in 0–1000 normalised coordinates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormPoint {
    pub x: f64,
    pub y: f64,
}

impl NormPoint {
    pub fn to_pixels(&self, width: f64, height: f64) -> [f64; 2] {
        [self.x * width / NORM_SCALE, self.y * height / NORM_SCALE]
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shape {
    Box(NormBox),
    Point(NormPoint),
}

/// One complete `<|begin_of_box|>…<|end_of_box|>` span.
#[derive(Clone, Debug, PartialEq)]
pub struct BoxSpan<'a> {
    /// Byte range of the whole span, tags included, in the text given to [`box_spans`].
    pub range: core::ops::Range<usize>,
    /// The text between the tags.
    pub inner: &'a str,
    /// The boxes and points found in `inner`, in order; empty for a plain-text answer.
    pub shapes: Vec<Shape>,
}

/// Every complete box span in `text`, in order. An unclosed span is ignored.
pub fn box_spans(text: &str) -> Vec<BoxSpan<'_>> {
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(open) = text[from..].find(BOX_START).map(|p| p + from) {
        let inner_start = open + BOX_START.len();
        let Some(close) = text[inner_start..].find(BOX_END).map(|p| p + inner_start) else { break };
        let inner = &text[inner_start..close];
        let end = close + BOX_END.len();
        spans.push(BoxSpan { range: open..end, inner, shapes: parse_shapes(inner) });
        from = end;
    }
    spans
}

/// The boxes (4 numbers) and points (2 numbers) in bracketed lists such as `[[1,2,3,4],[5,6,7,8]]`,
/// `[1,2,3,4]` or `(1, 2)`. Lists of other lengths and non-numeric text are skipped.
pub fn parse_shapes(inner: &str) -> Vec<Shape> {
    let mut shapes = Vec::new();
    let mut nums: Vec<f64> = Vec::new();
    // Whether the innermost open bracket holds only numbers so far.
    let mut flat = false;
    let bytes = inner.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'[' | b'(' => {
                nums.clear();
                flat = true;
                i += 1;
            }
            b']' | b')' => {
                if flat {
                    match *nums.as_slice() {
                        [x1, y1, x2, y2] => shapes.push(Shape::Box(NormBox { x1, y1, x2, y2 })),
                        [x, y] => shapes.push(Shape::Point(NormPoint { x, y })),
                        _ => {}
                    }
                }
                flat = false;
                nums.clear();
                i += 1;
            }
            b'-' | b'+' | b'.' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < bytes.len() && matches!(bytes[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'-' | b'+') {
                    i += 1;
                }
                match inner[start..i].parse::<f64>() {
                    Ok(v) if v.is_finite() => nums.push(v),
                    _ => flat = false,
                }
            }
            b',' | b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            _ => {
                flat = false;
                // Skip a whole UTF-8 character.
                i += 1;
                while i < bytes.len() && !inner.is_char_boundary(i) {
                    i += 1;
                }
            }
        }
    }
    shapes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_shapes() {
        let text = "A <|begin_of_box|>[[1,2,3,4],[5, 6, 7, 8]]<|end_of_box|> B <|begin_of_box|>B<|end_of_box|> \
                    <|begin_of_box|>[[500,500]]<|end_of_box|><|begin_of_box|>[[1,2";
        let spans = box_spans(text);
        assert_eq!(spans.len(), 3);
        assert_eq!(
            spans[0].shapes,
            [
                Shape::Box(NormBox { x1: 1.0, y1: 2.0, x2: 3.0, y2: 4.0 }),
                Shape::Box(NormBox { x1: 5.0, y1: 6.0, x2: 7.0, y2: 8.0 })
            ]
        );
        assert_eq!(&text[spans[1].range.clone()], "<|begin_of_box|>B<|end_of_box|>");
        assert!(spans[1].shapes.is_empty());
        assert_eq!(spans[2].shapes, [Shape::Point(NormPoint { x: 500.0, y: 500.0 })]);
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        for s in ["[", "]]]", "[1,2,3]", "[1e999,2,3,4]", "[--,1,2,3]", "[北京,1,2,3]", "(1.5,2.5)", "[1,[2,3,4,5]]"]
        {
            let _ = parse_shapes(s);
        }
        assert_eq!(parse_shapes("[1,[2,3,4,5]]"), [Shape::Box(NormBox { x1: 2.0, y1: 3.0, x2: 4.0, y2: 5.0 })]);
        assert!(!NormBox { x1: 10.0, y1: 0.0, x2: 5.0, y2: 1.0 }.is_well_formed());
    }
}
