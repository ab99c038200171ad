//! The prompt side of images: the chat template writes `<|begin_of_image|><|image|><|end_of_image|>` for each image
//! (the begin/end tokens come from the template, not from here), and transformers' `Glm4vProcessor` then repeats
//! that single `<|image|>` once per merged patch of the image's grid. The vision tower's output rows replace those
//! tokens in order.
use super::MediaError;
use crate::model::Grid;

/// Tokens an image of `grid` (unmerged patches) takes in the prompt: one per merge x merge window.
pub fn merged_tokens(grid: Grid, merge: usize) -> usize {
    grid.patches() / (merge * merge).max(1)
}

/// Replaces the k-th `image_token` of `ids` by `counts[k]` copies of it. Each image must have exactly one
/// placeholder; video frames are expanded by the video path and must not be passed through here.
pub fn expand_image_placeholders(ids: &[u32], image_token: u32, counts: &[usize]) -> Result<Vec<u32>, MediaError> {
    let found = ids.iter().filter(|&&t| t == image_token).count();
    if found != counts.len() {
        return Err(MediaError::PlaceholderCount { found, expected: counts.len() });
    }
    let mut out = Vec::with_capacity(ids.len() + counts.iter().sum::<usize>());
    let mut next = counts.iter();
    for &t in ids {
        match (t == image_token).then(|| next.next()).flatten() {
            Some(&n) => out.extend(std::iter::repeat_n(image_token, n)),
            None => out.push(t),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_placeholder_becomes_its_image_token_count() {
        let grid = Grid { t: 1, h: 4, w: 6 };
        assert_eq!(merged_tokens(grid, 2), 6);
        let ids = [1, 9, 7, 2, 9, 3];
        assert_eq!(expand_image_placeholders(&ids, 9, &[2, 3]).unwrap(), vec![1, 9, 9, 7, 2, 9, 9, 9, 3]);
        assert!(matches!(
            expand_image_placeholders(&ids, 9, &[2]),
            Err(MediaError::PlaceholderCount { found: 2, expected: 1 })
        ));
    }
}
