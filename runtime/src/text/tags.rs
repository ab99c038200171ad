//! Finding literal tags in streamed text, where a tag may arrive split across deltas.
//!
//! The stream parsers share these two questions: "where is the first complete tag?" and "how many trailing bytes
//! might still become a tag once the next delta arrives?" Those bytes are held back, never emitted early, so that a
//! tag split across tokens is recognised exactly as if it had arrived whole.

/// The earliest complete occurrence of any of `tags` in `hay`: `(byte offset, index into tags)`.
/// When two tags start at the same offset the longer one wins, so a tag that prefixes another cannot shadow it.
pub(crate) fn find_first(hay: &str, tags: &[&str]) -> Option<(usize, usize)> {
    let mut best: Option<(usize, usize)> = None;
    for (i, tag) in tags.iter().enumerate() {
        if tag.is_empty() {
            continue;
        }
        if let Some(pos) = hay.find(tag) {
            best = match best {
                Some((bp, bi)) if bp < pos || (bp == pos && tags[bi].len() >= tag.len()) => Some((bp, bi)),
                _ => Some((pos, i)),
            };
        }
    }
    best
}

/// Length in bytes of the longest suffix of `hay` that is a strict, non-empty prefix of one of `tags`.
/// The result always leaves `hay[..hay.len() - n]` on a char boundary.
pub(crate) fn partial_tag_len(hay: &str, tags: &[&str]) -> usize {
    let mut best = 0;
    for tag in tags {
        let max = tag.len().saturating_sub(1).min(hay.len());
        for n in (best + 1..=max).rev() {
            let start = hay.len() - n;
            if hay.is_char_boundary(start) && tag.as_bytes().starts_with(&hay.as_bytes()[start..]) {
                best = n;
                break;
            }
        }
    }
    best
}

/// Whether `s` is a (possibly empty) strict prefix of `tag`.
pub(crate) fn is_strict_prefix(s: &str, tag: &str) -> bool {
    s.len() < tag.len() && tag.starts_with(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_earliest_and_longest() {
        assert_eq!(find_first("a</think>b<tool_call>", &["<tool_call>", "</think>"]), Some((1, 1)));
        assert_eq!(find_first("xx", &["<a>"]), None);
        assert_eq!(find_first("<ab>", &["<a", "<ab>"]), Some((0, 1)));
    }

    #[test]
    fn partial_suffixes() {
        assert_eq!(partial_tag_len("hello </th", &["</think>"]), 4);
        assert_eq!(partial_tag_len("hello </think>", &["</think>"]), 0);
        assert_eq!(partial_tag_len("hello <", &["</think>", "<tool_call>"]), 1);
        assert_eq!(partial_tag_len("北京<tool_", &["<tool_call>"]), 6);
        assert_eq!(partial_tag_len("", &["<a>"]), 0);
    }
}
