//! Which frames of a video the processor keeps, and the timestamps the prompt shows for them: transformers 5.23's
//! `Glm4vVideoProcessor.sample_frames` (GLM-4.1V / 4.5V) and `Glm46VVideoProcessor.sample_frames` (GLM-4.6V /
//! 4.6V-Flash), with Python's and numpy's arithmetic (f64, `math.ceil`, `int()` truncation, `np.linspace(...,
//! dtype=int)` flooring), and the prompt text of each frame pair's timestamp.

/// What transformers' `read_video_pyav` reports about a video: FFmpeg's frame count and average frame rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoMetadata {
    pub total_num_frames: usize,
    /// `float(stream.average_rate)`.
    pub fps: f64,
    /// `float(total_num_frames / average_rate)` (0 when the rate is unknown).
    pub duration: f64,
    pub width: usize,
    pub height: usize,
}

/// Which video processor class a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoFamily {
    /// `Glm4vVideoProcessor`: a fixed fps (2) up to `max_duration` (300 s); timestamps as whole seconds.
    Glm4v,
    /// `Glm46VVideoProcessor`: fps chosen by duration, at most 640 frames; timestamps as "x.y seconds".
    Glm46v,
}

/// `np.linspace(start, stop, num, dtype=int)`: `i * step + start` in f64, the last value set to `stop`, floored.
fn linspace_int(start: f64, stop: f64, num: usize) -> Vec<usize> {
    let div = num.saturating_sub(1);
    let step = (stop - start) / div as f64;
    (0..num)
        .map(|i| {
            let v = if i + 1 == num && num > 1 {
                stop
            } else if div == 0 || step == 0.0 {
                start
            } else {
                i as f64 * step + start
            };
            v.floor().max(0.0) as usize
        })
        .collect()
}

/// `metadata.duration or round(max_frame_idx / fps) + 1` (Python's round: half to even).
fn duration_of(m: &VideoMetadata) -> f64 {
    if m.duration != 0.0 {
        m.duration
    } else {
        ((m.total_num_frames as f64 - 1.0) / m.fps).round_ties_even() + 1.0
    }
}

/// First-seen order without repeats, then the last index repeated if the count is odd.
fn dedup_even(indices: Vec<usize>) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<usize> = indices.into_iter().filter(|i| seen.insert(*i)).collect();
    if out.len() % 2 == 1 {
        out.push(*out.last().expect("odd length"));
    }
    out
}

/// `Glm4vVideoProcessor.sample_frames(metadata, fps)`.
pub fn sample_glm4v(m: &VideoMetadata, fps: f64, max_duration: f64) -> Vec<usize> {
    let total = m.total_num_frames;
    let max_idx = total.saturating_sub(1);
    let duration = duration_of(m);
    let indices: Vec<usize> = if duration <= max_duration {
        let n = ((duration * fps).floor() as usize).max(1);
        (0..n).map(|i| max_idx.min((i as f64 * m.fps / fps).ceil() as usize)).collect()
    } else {
        let num_samples = (max_duration * fps) as usize;
        if num_samples >= total {
            (0..total).collect()
        } else {
            // np.linspace(0, duration, num_samples) in f64, then ceil(t * fps).
            let div = num_samples.saturating_sub(1) as f64;
            (0..num_samples)
                .map(|i| {
                    let t =
                        if i + 1 == num_samples && num_samples > 1 { duration } else { i as f64 * (duration / div) };
                    max_idx.min((t * m.fps).ceil() as usize)
                })
                .collect()
        }
    };
    dedup_even(indices)
}

/// `Glm46VVideoProcessor.sample_frames(metadata)`.
pub fn sample_glm46v(m: &VideoMetadata, temporal_patch_size: usize) -> Vec<usize> {
    const MAX_FRAME_COUNT_DYNAMIC: usize = 640;
    const MAX_DURATION: f64 = 2400.0;
    let total = m.total_num_frames;
    let duration = duration_of(m);
    let effective = duration.min(MAX_DURATION);
    let target_fps = if effective <= 30.0 {
        3.0
    } else if effective <= 300.0 {
        1.0
    } else {
        0.5
    };
    let extract_t = ((effective * target_fps * temporal_patch_size as f64) as usize).min(MAX_FRAME_COUNT_DYNAMIC);
    let duration_per_frame = 1.0 / m.fps;
    let max_second = duration.trunc();
    let mut indices: Vec<usize> = if total < extract_t {
        linspace_int(0.0, total as f64 - 1.0, extract_t)
    } else {
        let mut picked = Vec::new();
        let mut current = 0.0f64;
        let inv_fps = 1.0 / (temporal_patch_size as f64 * target_fps);
        for i in 0..total {
            if i as f64 * duration_per_frame >= current {
                current += inv_fps;
                picked.push(i);
                if current >= max_second {
                    break;
                }
            }
        }
        picked
    };
    if indices.len() < extract_t {
        let (start, end) = match (indices.first(), indices.last()) {
            (Some(&a), Some(&b)) => (a, b),
            _ => (0, total.saturating_sub(1)),
        };
        indices = linspace_int(start as f64, end as f64, extract_t);
    } else if indices.len() > extract_t {
        indices = linspace_int(0.0, total as f64 - 1.0, extract_t);
    }
    dedup_even(indices)
}

/// The prompt text of each frame pair: the timestamp (`index / fps`) of the pair's first frame, as
/// `str(int(t))` (GLM-4.1V/4.5V) or `f"{t:.1f} seconds"` (GLM-4.6V). `pairs` is the grid's temporal size.
pub fn timestamp_texts(family: VideoFamily, indices: &[usize], fps: f64, pairs: usize) -> Vec<String> {
    let stamps: Vec<f64> = indices.iter().step_by(2).map(|&i| i as f64 / fps).collect();
    (0..pairs)
        .map(|k| {
            let t = stamps.get(k).or(stamps.last()).copied().unwrap_or(0.0);
            match family {
                VideoFamily::Glm4v => format!("{}", t.trunc() as i64),
                // Rust's `{:.1}` and Python's format both round the exact binary value, ties to even.
                VideoFamily::Glm46v => format!("{t:.1} seconds"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(total: usize, fps: f64) -> VideoMetadata {
        VideoMetadata { total_num_frames: total, fps, duration: total as f64 / fps, width: 64, height: 48 }
    }

    // Expected values computed with transformers 5.23's processors on the same metadata.
    #[test]
    fn glm4v_samples_two_per_second() {
        assert_eq!(sample_glm4v(&meta(10, 5.0), 2.0, 300.0), vec![0, 3, 5, 8]);
        assert_eq!(sample_glm4v(&meta(40, 8.0), 2.0, 300.0), vec![0, 4, 8, 12, 16, 20, 24, 28, 32, 36]);
        // Under half a second: one frame, repeated to make a pair.
        assert_eq!(sample_glm4v(&meta(3, 10.0), 2.0, 300.0), vec![0, 0]);
        // Longer than max_duration: a linspace over the duration, 600 frames.
        let long = sample_glm4v(&meta(30_000, 25.0), 2.0, 300.0);
        assert_eq!(long.len(), 600);
        assert_eq!((long[0], long[1], long[599]), (0, 51, 29_999));
    }

    #[test]
    fn glm46v_samples_by_duration() {
        // 2 s: 12 frames wanted but only 10 exist: linspace with repeats, deduplicated.
        assert_eq!(sample_glm46v(&meta(10, 5.0), 2), vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let five = sample_glm46v(&meta(40, 8.0), 2);
        assert_eq!(five.len(), 30);
        assert_eq!(&five[..6], &[0, 2, 3, 4, 6, 7]);
        // Over 30 s: 1 fps x 2.
        assert_eq!(sample_glm46v(&meta(31 * 30, 30.0), 2).len(), 62);
    }

    #[test]
    fn timestamps_of_both_families() {
        let idx = [0, 3, 5, 8];
        assert_eq!(timestamp_texts(VideoFamily::Glm4v, &idx, 5.0, 2), vec!["0", "1"]);
        assert_eq!(timestamp_texts(VideoFamily::Glm46v, &idx, 5.0, 2), vec!["0.0 seconds", "1.0 seconds"]);
        assert_eq!(timestamp_texts(VideoFamily::Glm46v, &[0, 1, 3, 4], 8.0, 2), vec!["0.0 seconds", "0.4 seconds"]);
        // Ties round to even like Python: 0.25 -> "0.2".
        assert_eq!(timestamp_texts(VideoFamily::Glm46v, &[1, 1], 4.0, 1), vec!["0.2 seconds"]);
    }
}
