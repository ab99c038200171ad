//! Rotary embedding, KV-cache writes and causal attention over a paged f32 KV cache.
use std::ops::Range;

use rayon::prelude::*;

use super::CpuTensor;
use crate::{
    backend::{AttentionShape, ForwardBatch, KvCacheSpec, Rope, SeqSpan},
    Error, Result,
};

/// Per layer, K and V as [num_blocks * block_size, num_kv_heads, head_dim]. The reference keeps f32 storage and
/// holds the values the spec's dtype would give back (`KvDtype::round_trip`), so its numbers are those of a BF16
/// or FP8 cache without its memory savings.
pub struct CpuKvCache {
    spec: KvCacheSpec,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl CpuKvCache {
    pub fn new(spec: &KvCacheSpec) -> Self {
        let len = spec.num_blocks * spec.block_size * spec.num_kv_heads * spec.head_dim;
        CpuKvCache { spec: *spec, k: vec![vec![0.0; len]; spec.num_layers], v: vec![vec![0.0; len]; spec.num_layers] }
    }

    fn check(&self, batch: &ForwardBatch, shape: &AttentionShape, layer: usize) -> Result<()> {
        if layer >= self.spec.num_layers
            || shape.num_kv_heads != self.spec.num_kv_heads
            || shape.head_dim != self.spec.head_dim
        {
            return Err(Error::KvCache(format!(
                "layer {layer} or head shape does not match the cache {:?}",
                self.spec
            )));
        }
        let covered = batch.seqs.iter().try_fold(0, |next, s| (s.rows.start == next).then_some(s.rows.end));
        if covered != Some(batch.num_rows()) {
            return Err(Error::InvalidInput("forward batch rows must be covered by its sequences in order".into()));
        }
        for s in &batch.seqs {
            let needed = (s.context_len + s.rows.len()).div_ceil(self.spec.block_size);
            if s.block_table.len() < needed {
                return Err(Error::KvCache(format!(
                    "sequence needs {needed} blocks for {} tokens but has {}",
                    s.context_len + s.rows.len(),
                    s.block_table.len()
                )));
            }
            if let Some(b) = s.block_table.iter().find(|&&b| b as usize >= self.spec.num_blocks) {
                return Err(Error::KvCache(format!("block {b} is outside the pool of {}", self.spec.num_blocks)));
            }
        }
        Ok(())
    }
}

/// The cache slot of token `pos` of a sequence.
fn slot(spec: &KvCacheSpec, seq: &SeqSpan, pos: usize) -> usize {
    seq.block_table[pos / spec.block_size] as usize * spec.block_size + pos % spec.block_size
}

pub fn attention(
    qkv: &CpuTensor,
    shape: &AttentionShape,
    rope: &Rope,
    batch: &ForwardBatch,
    cache: &mut CpuKvCache,
    layer: usize,
) -> Result<CpuTensor> {
    let (qw, kvw, d) = (shape.q_width(), shape.kv_width(), shape.head_dim);
    if qkv.cols != qw + 2 * kvw || qkv.rows != batch.num_rows() {
        return Err(Error::InvalidInput(format!(
            "attention input is [{}, {}], expected [{}, {}]",
            qkv.rows,
            qkv.cols,
            batch.num_rows(),
            qw + 2 * kvw
        )));
    }
    cache.check(batch, shape, layer)?;
    let (q, k) = rotate_qk(qkv, shape, rope, &batch.positions);

    // Write k and v into the cache.
    let (kc, vc) = (&mut cache.k[layer], &mut cache.v[layer]);
    for s in &batch.seqs {
        for (i, r) in s.rows.clone().enumerate() {
            let pos = s.context_len + i;
            let slot = slot(&cache.spec, s, pos);
            let (kd, vd) = (&mut kc[slot * kvw..(slot + 1) * kvw], &mut vc[slot * kvw..(slot + 1) * kvw]);
            kd.copy_from_slice(&k[r * kvw..(r + 1) * kvw]);
            vd.copy_from_slice(&qkv.row(r)[qw + kvw..]);
            kd.chunks_mut(d).chain(vd.chunks_mut(d)).for_each(|head| cache.spec.dtype.round_trip(head));
        }
    }

    // Causal attention, one task per (row, head).
    let cache = &*cache;
    let group = shape.num_heads / shape.num_kv_heads;
    let mut out = CpuTensor::zeros(qkv.rows, qw);
    // (sequence, position in it) of every row.
    let mut row_seq = vec![(0, 0); qkv.rows];
    for (si, s) in batch.seqs.iter().enumerate() {
        for (i, r) in s.rows.clone().enumerate() {
            row_seq[r] = (si, s.context_len + i);
        }
    }
    out.data.par_chunks_mut(d).enumerate().for_each(|(task, o)| {
        let (r, h) = (task / shape.num_heads, task % shape.num_heads);
        let (si, pos) = row_seq[r];
        let seq = &batch.seqs[si];
        let qh = &q[r * qw + h * d..][..d];
        let kvh = h / group;
        let mut scores: Vec<f32> = (0..=pos)
            .map(|j| {
                let slot = slot(&cache.spec, seq, j);
                let kj = &cache.k[layer][slot * kvw + kvh * d..][..d];
                dot(qh, kj) * shape.scale
            })
            .collect();
        softmax(&mut scores);
        for (j, p) in scores.iter().enumerate() {
            let slot = slot(&cache.spec, seq, j);
            let vj = &cache.v[layer][slot * kvw + kvh * d..][..d];
            o.iter_mut().zip(vj).for_each(|(o, v)| *o += p * v);
        }
    });
    Ok(out)
}

/// q and k of every row with the rotary embedding applied: ([rows, q_width], [rows, kv_width]).
fn rotate_qk(qkv: &CpuTensor, shape: &AttentionShape, rope: &Rope, positions: &[[u32; 3]]) -> (Vec<f32>, Vec<f32>) {
    let (qw, kvw, d) = (shape.q_width(), shape.kv_width(), shape.head_dim);
    let mut q = vec![0.0f32; qkv.rows * qw];
    let mut k = vec![0.0f32; qkv.rows * kvw];
    let half = rope.rot_dim / 2;
    q.par_chunks_mut(qw).zip(k.par_chunks_mut(kvw)).enumerate().for_each(|(r, (qr, kr))| {
        let row = qkv.row(r);
        qr.copy_from_slice(&row[..qw]);
        kr.copy_from_slice(&row[qw..qw + kvw]);
        let (mut cos, mut sin) = (vec![0.0f32; half], vec![0.0f32; half]);
        rope.angles(positions[r], &mut cos, &mut sin);
        for head in qr.chunks_mut(d).chain(kr.chunks_mut(d)) {
            rope.apply(head, &cos, &sin);
        }
    });
    (q, k)
}

/// Full (non-causal) attention within each segment of rows, no cache: the vision tower's attention.
pub fn segment_attention(
    qkv: &CpuTensor,
    shape: &AttentionShape,
    rope: &Rope,
    positions: &[[u32; 3]],
    segments: &[Range<usize>],
) -> Result<CpuTensor> {
    let (qw, kvw, d) = (shape.q_width(), shape.kv_width(), shape.head_dim);
    let covered = segments.iter().try_fold(0, |next, s| (s.start == next && s.end >= s.start).then_some(s.end));
    if qkv.cols != qw + 2 * kvw || positions.len() != qkv.rows || covered != Some(qkv.rows) {
        return Err(Error::InvalidInput(format!(
            "segment attention: input [{}, {}], {} positions, segments {segments:?}",
            qkv.rows,
            qkv.cols,
            positions.len()
        )));
    }
    let (q, k) = rotate_qk(qkv, shape, rope, positions);
    let mut segment_of = vec![0..0; qkv.rows];
    for s in segments {
        s.clone().for_each(|r| segment_of[r] = s.clone());
    }
    let group = shape.num_heads / shape.num_kv_heads;
    let mut out = CpuTensor::zeros(qkv.rows, qw);
    out.data.par_chunks_mut(d).enumerate().for_each(|(task, o)| {
        let (r, h) = (task / shape.num_heads, task % shape.num_heads);
        let kvh = h / group;
        let qh = &q[r * qw + h * d..][..d];
        let seg = segment_of[r].clone();
        let mut scores: Vec<f32> = seg.clone().map(|j| dot(qh, &k[j * kvw + kvh * d..][..d]) * shape.scale).collect();
        softmax(&mut scores);
        for (j, p) in seg.zip(&scores) {
            let vj = &qkv.row(j)[qw + kvw + kvh * d..][..d];
            o.iter_mut().zip(vj).for_each(|(o, v)| *o += p * v);
        }
    });
    Ok(out)
}

pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub(super) fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    x.iter_mut().for_each(|v| {
        *v = (*v - max).exp();
        sum += *v;
    });
    x.iter_mut().for_each(|v| *v /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backend::KvDtype, config::RopeLayout};

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Plain causal GQA attention over a contiguous sequence, no cache: the definition.
    fn naive(qkv: &CpuTensor, shape: &AttentionShape, rope: &Rope) -> Vec<f32> {
        let (qw, kvw, d) = (shape.q_width(), shape.kv_width(), shape.head_dim);
        let n = qkv.rows;
        let mut q = vec![0.0; n * qw];
        let mut k = vec![0.0; n * kvw];
        let half = rope.rot_dim / 2;
        for r in 0..n {
            q[r * qw..(r + 1) * qw].copy_from_slice(&qkv.row(r)[..qw]);
            k[r * kvw..(r + 1) * kvw].copy_from_slice(&qkv.row(r)[qw..qw + kvw]);
            let (mut c, mut s) = (vec![0.0; half], vec![0.0; half]);
            rope.angles([r as u32; 3], &mut c, &mut s);
            q[r * qw..(r + 1) * qw].chunks_mut(d).for_each(|h| rope.apply(h, &c, &s));
            k[r * kvw..(r + 1) * kvw].chunks_mut(d).for_each(|h| rope.apply(h, &c, &s));
        }
        let mut out = vec![0.0; n * qw];
        let group = shape.num_heads / shape.num_kv_heads;
        for r in 0..n {
            for h in 0..shape.num_heads {
                let kvh = h / group;
                let qh = &q[r * qw + h * d..][..d];
                let mut p: Vec<f32> = (0..=r).map(|j| dot(qh, &k[j * kvw + kvh * d..][..d]) * shape.scale).collect();
                softmax(&mut p);
                for (j, pj) in p.iter().enumerate() {
                    let v = &qkv.row(j)[qw + kvw + kvh * d..][..d];
                    for t in 0..d {
                        out[r * qw + h * d + t] += pj * v[t];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn paged_chunked_attention_matches_the_definition() {
        let shape = AttentionShape { num_heads: 6, num_kv_heads: 2, head_dim: 8, scale: 8f32.powf(-0.5) };
        let rope =
            Rope { rot_dim: 4, layout: RopeLayout::InterleavedPairs, inv_freq: vec![1.0, 0.1], axis: vec![0, 1] };
        let n = 11;
        let width = shape.q_width() + 2 * shape.kv_width();
        let qkv = CpuTensor::from_vec(n, width, pseudo_random(n * width, 9));
        let want = naive(&qkv, &shape, &rope);

        // Blocks of 4 tokens in a scrambled order; prefill in chunks of 3, 5 and 3 tokens.
        let spec = KvCacheSpec {
            num_layers: 2,
            num_blocks: 7,
            block_size: 4,
            num_kv_heads: 2,
            head_dim: 8,
            dtype: KvDtype::F32,
        };
        let mut cache = CpuKvCache::new(&spec);
        let table = vec![5, 0, 3];
        let mut got = Vec::new();
        let mut start = 0;
        for len in [3, 5, 3] {
            let rows: Vec<usize> = (start..start + len).collect();
            let batch = ForwardBatch {
                seqs: vec![SeqSpan { rows: 0..len, context_len: start, block_table: table.clone() }],
                positions: rows.iter().map(|&r| [r as u32; 3]).collect(),
            };
            got.extend(attention(&qkv.select_rows(&rows), &shape, &rope, &batch, &mut cache, 1).unwrap().data);
            start += len;
        }
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(err < 1e-5, "max abs error {err}");
    }

    #[test]
    fn too_few_blocks_is_an_error() {
        let shape = AttentionShape { num_heads: 1, num_kv_heads: 1, head_dim: 4, scale: 0.5 };
        let rope = Rope { rot_dim: 2, layout: RopeLayout::NeoxHalves, inv_freq: vec![1.0], axis: vec![0] };
        let spec = KvCacheSpec {
            num_layers: 1,
            num_blocks: 2,
            block_size: 2,
            num_kv_heads: 1,
            head_dim: 4,
            dtype: KvDtype::F32,
        };
        let mut cache = CpuKvCache::new(&spec);
        let qkv = CpuTensor::zeros(3, 12);
        let batch = ForwardBatch {
            seqs: vec![SeqSpan { rows: 0..3, context_len: 0, block_table: vec![0] }],
            positions: vec![[0; 3], [1; 3], [2; 3]],
        };
        assert!(matches!(attention(&qkv, &shape, &rope, &batch, &mut cache, 0), Err(Error::KvCache(_))));
    }
}
