//! Rotary embedding, KV-cache writes and causal attention over a paged f32 KV cache.
use rayon::prelude::*;

use super::CpuTensor;
use crate::{
    backend::{AttentionShape, ForwardBatch, KvCacheSpec, Rope, SeqSpan},
    Error, Result,
};

/// Per layer, K and V as [num_blocks * block_size, num_kv_heads, head_dim] in f32.
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

    // Rotate q and k of every row.
    let mut q = vec![0.0f32; qkv.rows * qw];
    let mut k = vec![0.0f32; qkv.rows * kvw];
    let half = rope.rot_dim / 2;
    q.par_chunks_mut(qw).zip(k.par_chunks_mut(kvw)).enumerate().for_each(|(r, (qr, kr))| {
        let row = qkv.row(r);
        qr.copy_from_slice(&row[..qw]);
        kr.copy_from_slice(&row[qw..qw + kvw]);
        let (mut cos, mut sin) = (vec![0.0f32; half], vec![0.0f32; half]);
        rope.angles(batch.positions[r], &mut cos, &mut sin);
        for head in qr.chunks_mut(d).chain(kr.chunks_mut(d)) {
            rope.apply(head, &cos, &sin);
        }
    });

    // Write k and v into the cache.
    let (kc, vc) = (&mut cache.k[layer], &mut cache.v[layer]);
    for s in &batch.seqs {
        for (i, r) in s.rows.clone().enumerate() {
            let pos = s.context_len + i;
            let slot = slot(&cache.spec, s, pos);
            kc[slot * kvw..(slot + 1) * kvw].copy_from_slice(&k[r * kvw..(r + 1) * kvw]);
            vc[slot * kvw..(slot + 1) * kvw].copy_from_slice(&qkv.row(r)[qw + kvw..]);
        }
    }

    // Causal attention, one task per (row, head).
    let cache = &*cache;
    let group = shape.num_heads / shape.num_kv_heads;
    let mut out = CpuTensor::zeros(qkv.rows, qw);
    let row_seq: Vec<(usize, usize)> = batch
        .seqs
        .iter()
        .enumerate()
        .flat_map(|(si, s)| s.rows.clone().enumerate().map(move |(i, _)| (si, s.context_len + i)))
        .collect();
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
