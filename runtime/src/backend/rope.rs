//! The rotary embedding a text model uses, described once for every backend.
use crate::config::{RopeLayout, TextConfig};

/// Partial multimodal rotary embedding: the first `rot_dim` dims of each q/k head rotate, frequency `i` takes its
/// position from axis `axis[i]` (0 = t, 1 = h, 2 = w; from `mrope_section`), pairs follow `layout`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub rot_dim: usize,
    pub layout: RopeLayout,
    /// `theta^(-2i / rot_dim)` for i in 0..rot_dim/2, in f32 as transformers computes it.
    pub inv_freq: Vec<f32>,
    pub axis: Vec<u8>,
}

impl Rope {
    pub fn new(text: &TextConfig) -> Self {
        let rot_dim = text.rot_dim();
        let inv_freq =
            (0..rot_dim / 2).map(|i| (1.0 / text.rope.theta.powf((2 * i) as f64 / rot_dim as f64)) as f32).collect();
        let axis = text
            .rope
            .mrope_section
            .iter()
            .enumerate()
            .flat_map(|(k, &n)| std::iter::repeat_n((k % 3) as u8, n))
            .collect();
        Rope { rot_dim, layout: text.rope.layout, inv_freq, axis }
    }

    /// cos and sin of each frequency's angle for one token, written into `cos`, `sin` (rot_dim/2 each).
    pub fn angles(&self, pos: [u32; 3], cos: &mut [f32], sin: &mut [f32]) {
        for i in 0..self.inv_freq.len() {
            let theta = pos[self.axis[i] as usize] as f32 * self.inv_freq[i];
            cos[i] = theta.cos();
            sin[i] = theta.sin();
        }
    }

    /// Rotates the first `rot_dim` dims of one head in place.
    pub fn apply(&self, head: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = self.rot_dim / 2;
        for i in 0..half {
            let (a, b) = match self.layout {
                RopeLayout::NeoxHalves => (i, i + half),
                RopeLayout::InterleavedPairs => (2 * i, 2 * i + 1),
            };
            let (x, y) = (head[a], head[b]);
            head[a] = x * cos[i] - y * sin[i];
            head[b] = y * cos[i] + x * sin[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope(layout: RopeLayout, axis: Vec<u8>) -> Rope {
        let half = axis.len();
        let inv_freq = (0..half).map(|i| 10000f32.powf(-(2.0 * i as f32) / (2 * half) as f32)).collect();
        Rope { rot_dim: 2 * half, layout, inv_freq, axis }
    }

    #[test]
    fn layouts_pair_the_right_dims_and_leave_the_rest() {
        let head: Vec<f32> = (0..12).map(|i| i as f32 + 1.0).collect();
        for layout in [RopeLayout::NeoxHalves, RopeLayout::InterleavedPairs] {
            let r = rope(layout, vec![0, 1, 2, 2]);
            let (mut cos, mut sin) = ([0.0; 4], [0.0; 4]);
            r.angles([3, 5, 7], &mut cos, &mut sin);
            let mut x = head.clone();
            r.apply(&mut x, &cos, &sin);
            assert_eq!(&x[8..], &head[8..], "dims past rot_dim pass through");
            for i in 0..4 {
                let pos = [3.0, 5.0, 7.0][r.axis[i] as usize];
                let theta = pos * r.inv_freq[i];
                let (a, b) = if layout == RopeLayout::NeoxHalves { (i, i + 4) } else { (2 * i, 2 * i + 1) };
                let want_a = head[a] * theta.cos() - head[b] * theta.sin();
                let want_b = head[b] * theta.cos() + head[a] * theta.sin();
                assert!((x[a] - want_a).abs() < 1e-5 && (x[b] - want_b).abs() < 1e-5, "{layout:?} freq {i}");
            }
        }
    }

    #[test]
    fn sections_map_frequencies_to_axes() {
        let mut text = crate::config::ModelConfig::from_json(
            &serde_json::json!({
                "architectures": ["Glm4vForConditionalGeneration"],
                "image_token_id": 1, "video_token_id": 2, "image_start_token_id": 3, "image_end_token_id": 4,
                "video_start_token_id": 5, "video_end_token_id": 6,
                "text_config": {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                    "intermediate_size": 8, "vocab_size": 10, "partial_rotary_factor": 0.5,
                    "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]}},
                "vision_config": {"depth": 1, "hidden_size": 8, "num_heads": 1, "patch_size": 14, "image_size": 28,
                    "out_hidden_size": 64, "intermediate_size": 8}
            }),
            None,
        )
        .unwrap()
        .text;
        text.rope.theta = 100.0;
        let r = Rope::new(&text);
        assert_eq!(r.rot_dim, 16);
        assert_eq!(r.axis, vec![0, 0, 1, 1, 1, 2, 2, 2]);
        assert!((r.inv_freq[1] - 100f32.powf(-2.0 / 16.0)).abs() < 1e-7);
    }
}
