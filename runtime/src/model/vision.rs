//! The vision tower shared by both GLM-V families (`model.visual.*`): Conv3d patch embedding, post-conv RMSNorm,
//! learned position table resampled bicubically to each grid, ViT blocks with 2D rotary attention per temporal
//! slice, post-layernorm, 2x2 downsample convolution and the merger (proj, LayerNorm + GELU, SwiGLU).
use std::ops::Range;

use crate::{
    backend::{AttentionShape, Backend, MlpSource, Rope},
    config::{RopeLayout, VisionConfig},
    weights::WeightStore,
    Error, Result,
};

/// Patches of one image or video in the tower's input: `t` temporal slices of `h` x `w` patches (unmerged grid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub t: usize,
    pub h: usize,
    pub w: usize,
}

impl Grid {
    pub fn patches(&self) -> usize {
        self.t * self.h * self.w
    }
}

struct Block<B: Backend> {
    norm1: B::Vector,
    qkv: B::Linear,
    proj: B::Linear,
    norm2: B::Vector,
    mlp: B::Mlp,
}

pub struct VisionTower<B: Backend> {
    pub config: VisionConfig,
    patch_embed: B::Linear,
    post_conv_norm: B::Vector,
    /// The learned position table, [side * side, hidden], in f32 on the host: it is resampled per grid.
    pos_table: Vec<f32>,
    pos_side: usize,
    blocks: Vec<Block<B>>,
    post_norm: B::Vector,
    downsample: B::Linear,
    merger_proj: B::Linear,
    merger_norm: (B::Vector, B::Vector),
    merger_mlp: B::Mlp,
    attention: AttentionShape,
    rope: Rope,
    eps: f32,
}

/// nn.LayerNorm's default epsilon, which the merger's `post_projection_norm` uses.
const LAYER_NORM_EPS: f32 = 1e-5;
/// The ViT rotary base (transformers' `Glm4vVisionRotaryEmbedding` default; not in config.json).
const VISION_ROPE_THETA: f32 = 10000.0;

impl<B: Backend> VisionTower<B> {
    pub fn load(backend: &B, c: &VisionConfig, store: &WeightStore) -> Result<Self> {
        let p = "model.visual";
        let (hid, out) = (c.hidden_size, c.out_hidden_size);
        if c.num_heads == 0 || hid % c.num_heads != 0 {
            return Err(Error::Config(format!(
                "vision hidden_size {hid} is not a multiple of num_heads {}",
                c.num_heads
            )));
        }
        let head_dim = hid / c.num_heads;
        let vector = |name: String, len: usize| backend.vector(&store.get_shaped(&name, &[len])?);
        let linear = |name: String, o: usize, i: usize| backend.linear(&[store.linear(&name, o, i, false, None)?]);
        let mlp = |prefix: String, inter: usize, width: usize| -> Result<B::Mlp> {
            let l = |n: &str, o: usize, i: usize| store.linear(&format!("{prefix}.{n}"), o, i, false, None);
            backend.mlp(&MlpSource {
                gate_up: vec![l("gate_proj", inter, width)?, l("up_proj", inter, width)?],
                down: l("down_proj", width, inter)?,
            })
        };
        let patch_shape = [hid, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size];
        let patch_embed =
            backend.linear(&[store.conv_as_linear(&format!("{p}.patch_embed.proj"), &patch_shape, true)?])?;
        let table = store.get(&format!("{p}.embeddings.position_embedding.weight"))?;
        let pos_side = (table.shape[0] as f64).sqrt() as usize;
        if pos_side * pos_side != table.shape[0] || table.shape.get(1) != Some(&hid) {
            return Err(Error::ShapeMismatch {
                name: table.name.clone(),
                expected: vec![pos_side * pos_side, hid],
                actual: table.shape.clone(),
            });
        }
        let blocks = (0..c.depth)
            .map(|i| {
                let b = format!("{p}.blocks.{i}");
                Ok(Block {
                    norm1: vector(format!("{b}.norm1.weight"), hid)?,
                    qkv: linear(format!("{b}.attn.qkv"), 3 * hid, hid)?,
                    proj: linear(format!("{b}.attn.proj"), hid, hid)?,
                    norm2: vector(format!("{b}.norm2.weight"), hid)?,
                    mlp: mlp(format!("{b}.mlp"), out, hid)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let m = c.spatial_merge_size;
        let downsample =
            backend.linear(&[store.conv_as_linear(&format!("{p}.downsample"), &[out, hid, m, m], true)?])?;
        Ok(VisionTower {
            patch_embed,
            post_conv_norm: vector(format!("{p}.post_conv_layernorm.weight"), hid)?,
            pos_table: table.to_f32_vec()?,
            pos_side,
            blocks,
            post_norm: vector(format!("{p}.post_layernorm.weight"), hid)?,
            downsample,
            merger_proj: linear(format!("{p}.merger.proj"), out, out)?,
            merger_norm: (
                vector(format!("{p}.merger.post_projection_norm.weight"), out)?,
                vector(format!("{p}.merger.post_projection_norm.bias"), out)?,
            ),
            merger_mlp: mlp(format!("{p}.merger"), c.intermediate_size, out)?,
            attention: AttentionShape {
                num_heads: c.num_heads,
                num_kv_heads: c.num_heads,
                head_dim,
                scale: 1.0 / (head_dim as f32).sqrt(),
            },
            rope: vision_rope(head_dim),
            eps: c.rms_norm_eps as f32,
            config: c.clone(),
        })
    }

    /// Width of one `pixel_values` row: channels x temporal patch x patch x patch.
    pub fn patch_width(&self) -> usize {
        let c = &self.config;
        c.in_channels * c.temporal_patch_size * c.patch_size * c.patch_size
    }

    /// Embeddings [sum of patches / merge^2, out_hidden_size] of `pixel_values` (rows in merge-window order, one
    /// grid after another), ready to replace the media's placeholder tokens in order.
    pub fn forward(&self, backend: &B, pixel_values: &[f32], grids: &[Grid]) -> Result<B::Tensor> {
        let m = self.config.spatial_merge_size;
        let rows: usize = grids.iter().map(Grid::patches).sum();
        if let Some(g) = grids.iter().find(|g| g.h % m != 0 || g.w % m != 0 || g.patches() == 0) {
            return Err(Error::InvalidInput(format!("grid {g:?} is not a non-empty multiple of the merge size {m}")));
        }
        if pixel_values.len() != rows * self.patch_width() {
            return Err(Error::InvalidInput(format!(
                "{} pixel values for {rows} patches of {}",
                pixel_values.len(),
                self.patch_width()
            )));
        }
        let (coords, segments) = patch_coordinates(grids, m);
        let positions: Vec<[u32; 3]> = coords.iter().map(|&(_, h, w)| [0, h as u32, w as u32]).collect();

        let pixels = backend.upload(rows, self.patch_width(), pixel_values)?;
        let x = backend.linear_forward(&pixels, &self.patch_embed)?;
        let mut x = backend.rms_norm(&x, &self.post_conv_norm, self.eps)?;
        let pos = self.position_embeddings(&coords);
        backend.add(&mut x, &backend.upload(rows, self.config.hidden_size, &pos)?)?;

        for block in &self.blocks {
            let h = backend.rms_norm(&x, &block.norm1, self.eps)?;
            let qkv = backend.linear_forward(&h, &block.qkv)?;
            let attn = backend.segment_attention(&qkv, &self.attention, &self.rope, &positions, &segments)?;
            let attn = backend.linear_forward(&attn, &block.proj)?;
            let h = backend.add_rms_norm(&mut x, &attn, &block.norm2, self.eps)?;
            backend.add(&mut x, &backend.mlp_forward(&h, &block.mlp)?)?;
        }
        let x = backend.rms_norm(&x, &self.post_norm, self.eps)?;
        let x = backend.linear_forward(&backend.merge_windows(&x, m * m)?, &self.downsample)?;
        let x = backend.linear_forward(&x, &self.merger_proj)?;
        let x = backend.layer_norm_gelu(&x, &self.merger_norm.0, &self.merger_norm.1, LAYER_NORM_EPS)?;
        backend.mlp_forward(&x, &self.merger_mlp)
    }

    /// The position table resampled to each patch's grid: PyTorch `grid_sample(mode="bicubic",
    /// align_corners=False, padding_mode="border")` at the patch centre, in f32.
    fn position_embeddings(&self, coords: &[PatchCoord]) -> Vec<f32> {
        let hid = self.config.hidden_size;
        let side = self.pos_side;
        let mut out = vec![0.0f32; coords.len() * hid];
        for (row, &(g, h, w)) in out.chunks_mut(hid).zip(coords) {
            let (ys, wy) = bicubic_taps((h as f32 + 0.5) / g.h as f32 * 2.0 - 1.0, side);
            let (xs, wx) = bicubic_taps((w as f32 + 0.5) / g.w as f32 * 2.0 - 1.0, side);
            for (y, wy) in ys.iter().zip(wy) {
                for (x, wx) in xs.iter().zip(wx) {
                    let src = &self.pos_table[(y * side + x) * hid..][..hid];
                    let weight = wy * wx;
                    row.iter_mut().zip(src).for_each(|(o, s)| *o += weight * s);
                }
            }
        }
        out
    }
}

/// The ViT's 2D rotary embedding as a [`Rope`]: NeoX halves over the whole head; the first quarter of the
/// frequencies follow the patch row, the second quarter the patch column (transformers' `Glm4vVisionRotaryEmbedding`
/// with `cat(h * inv_freq, w * inv_freq)`).
fn vision_rope(head_dim: usize) -> Rope {
    let quarter = head_dim / 4;
    let inv: Vec<f32> =
        (0..quarter).map(|i| 1.0 / VISION_ROPE_THETA.powf((2 * i) as f32 / (head_dim / 2) as f32)).collect();
    Rope {
        rot_dim: head_dim,
        layout: RopeLayout::NeoxHalves,
        inv_freq: inv.iter().chain(&inv).copied().collect(),
        axis: std::iter::repeat_n(1u8, quarter).chain(std::iter::repeat_n(2u8, quarter)).collect(),
    }
}

/// A patch: its image's grid and its row and column in it.
type PatchCoord = (Grid, usize, usize);

/// Every patch in merge-window order, and the row range of each temporal slice.
fn patch_coordinates(grids: &[Grid], m: usize) -> (Vec<PatchCoord>, Vec<Range<usize>>) {
    let mut coords = Vec::with_capacity(grids.iter().map(Grid::patches).sum());
    let mut segments = Vec::new();
    for &g in grids {
        for _ in 0..g.t {
            let start = coords.len();
            for bh in 0..g.h / m {
                for bw in 0..g.w / m {
                    for dy in 0..m {
                        for dx in 0..m {
                            coords.push((g, bh * m + dy, bw * m + dx));
                        }
                    }
                }
            }
            segments.push(start..coords.len());
        }
    }
    (coords, segments)
}

/// Tap indices and weights of PyTorch's bicubic `grid_sample` (A = -0.75, align_corners = False, border padding)
/// at normalised coordinate `coord` over `size` samples.
fn bicubic_taps(coord: f32, size: usize) -> ([usize; 4], [f32; 4]) {
    const A: f32 = -0.75;
    let x = ((coord + 1.0) * size as f32 - 1.0) / 2.0;
    let x0 = x.floor();
    let t = x - x0;
    let near = |d: f32| ((A + 2.0) * d - (A + 3.0)) * d * d + 1.0;
    let far = |d: f32| ((A * d - 5.0 * A) * d + 8.0 * A) * d - 4.0 * A;
    let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
    let index = |k: i64| (x0 as i64 + k).clamp(0, size as i64 - 1) as usize;
    ([index(-1), index(0), index(1), index(2)], weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_order_is_merge_windows() {
        let g = Grid { t: 2, h: 2, w: 4 };
        let (coords, segments) = patch_coordinates(&[g], 2);
        let hw: Vec<(usize, usize)> = coords.iter().map(|&(_, h, w)| (h, w)).take(8).collect();
        assert_eq!(hw, vec![(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (0, 3), (1, 2), (1, 3)]);
        assert_eq!(segments, vec![0..8, 8..16]);
    }

    #[test]
    fn bicubic_is_exact_on_the_source_grid_and_clamps() {
        // Sampling a 24-row table at 24 targets lands on the samples themselves.
        for h in 0..24 {
            let (idx, w) = bicubic_taps((h as f32 + 0.5) / 24.0 * 2.0 - 1.0, 24);
            // All weight on sample h (which tap holds it depends on rounding of the coordinate).
            let on_h: f32 = idx.iter().zip(&w).filter(|(&i, _)| i == h).map(|(_, w)| w).sum();
            assert!((on_h - 1.0).abs() < 1e-5, "row {h}: {idx:?} {w:?}");
        }
        let (idx, w) = bicubic_taps(-1.0, 24);
        assert_eq!(idx, [0, 0, 0, 1]);
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
