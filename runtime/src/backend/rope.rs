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
