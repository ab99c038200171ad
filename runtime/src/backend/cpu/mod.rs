//! The reference backend: plain, correct, reasonably fast. f32 activations and accumulation, weights converted
//! from their stored dtype band by band, SIMD sgemm (matrixmultiply) and rayon.
mod attention;
mod matmul;
mod moe;

use std::ops::Range;

use rayon::prelude::*;

pub use attention::CpuKvCache;
pub use matmul::CpuLinear;
pub use moe::CpuExperts;

use super::{AttentionShape, Backend, ExpertsSource, ForwardBatch, KvCacheSpec, MlpSource, Rope};
use crate::{weights::HostTensor, Error, Result};

/// A row-major [rows, cols] f32 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTensor {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl CpuTensor {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        CpuTensor { rows, cols, data: vec![0.0; rows * cols] }
    }

    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "tensor data does not match its shape");
        CpuTensor { rows, cols, data }
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.data[r * self.cols..(r + 1) * self.cols]
    }

    pub fn select_rows(&self, rows: &[usize]) -> CpuTensor {
        let mut data = Vec::with_capacity(rows.len() * self.cols);
        rows.iter().for_each(|&r| data.extend_from_slice(self.row(r)));
        CpuTensor { rows: rows.len(), cols: self.cols, data }
    }
}

/// SwiGLU MLP: gate and up rows stacked in one linear.
pub struct CpuMlp {
    gate_up: CpuLinear,
    down: CpuLinear,
}

impl CpuMlp {
    pub fn new(src: &MlpSource) -> Result<Self> {
        let gate_up = CpuLinear::new(&src.gate_up)?;
        let down = CpuLinear::new(std::slice::from_ref(&src.down))?;
        if gate_up.out_features != 2 * down.in_features {
            return Err(Error::InvalidInput(format!(
                "MLP gate+up has {} rows but down_proj takes {} inputs",
                gate_up.out_features, down.in_features
            )));
        }
        Ok(CpuMlp { gate_up, down })
    }

    pub fn forward(&self, x: &CpuTensor) -> Result<CpuTensor> {
        let gu = self.gate_up.forward(x)?;
        let inter = self.down.in_features;
        let mut h = CpuTensor::zeros(x.rows, inter);
        h.data.par_chunks_mut(inter).zip(gu.data.par_chunks(2 * inter)).for_each(|(h, gu)| {
            let (g, u) = gu.split_at(inter);
            h.iter_mut().zip(g.iter().zip(u)).for_each(|(h, (&g, &u))| *h = g / (1.0 + (-g).exp()) * u);
        });
        self.down.forward(&h)
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    out.iter_mut().zip(x.iter().zip(w)).for_each(|(o, (x, w))| *o = w * (x * inv));
}

fn check_width(x: &CpuTensor, w: &[f32]) -> Result<()> {
    if x.cols != w.len() {
        return Err(Error::InvalidInput(format!("norm of width {} applied to {} features", w.len(), x.cols)));
    }
    Ok(())
}

fn same_shape(a: &CpuTensor, b: &CpuTensor) -> Result<()> {
    if a.rows != b.rows || a.cols != b.cols {
        return Err(Error::InvalidInput(format!(
            "shapes [{}, {}] and [{}, {}] differ",
            a.rows, a.cols, b.rows, b.cols
        )));
    }
    Ok(())
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Vector = Vec<f32>;
    type Linear = CpuLinear;
    type Mlp = CpuMlp;
    type Experts = CpuExperts;
    type KvCache = CpuKvCache;
    type Batch = ForwardBatch;

    fn name(&self) -> &'static str {
        "cpu"
    }

    /// Host memory from /proc/meminfo (MemAvailable, MemTotal).
    fn memory_info(&self) -> Result<(usize, usize)> {
        let text = std::fs::read_to_string("/proc/meminfo").map_err(|e| Error::io("/proc/meminfo", e))?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
                .map(|kb| kb * 1024)
        };
        match (field("MemAvailable:"), field("MemTotal:")) {
            (Some(available), Some(total)) => Ok((available, total)),
            _ => Err(Error::Device("/proc/meminfo has no MemAvailable/MemTotal".into())),
        }
    }

    fn vector(&self, t: &HostTensor) -> Result<Vec<f32>> {
        t.to_f32_vec()
    }

    fn linear(&self, parts: &[crate::weights::LinearSource]) -> Result<CpuLinear> {
        CpuLinear::new(parts)
    }

    fn mlp(&self, src: &MlpSource) -> Result<CpuMlp> {
        CpuMlp::new(src)
    }

    fn experts(&self, src: &ExpertsSource) -> Result<CpuExperts> {
        CpuExperts::new(src)
    }

    fn kv_cache(&self, spec: &KvCacheSpec) -> Result<CpuKvCache> {
        Ok(CpuKvCache::new(spec))
    }

    fn batch(&self, batch: &ForwardBatch, _cache: &mut CpuKvCache) -> Result<ForwardBatch> {
        // Checked against the cache by each layer's attention.
        Ok(batch.clone())
    }

    fn embed(&self, table: &CpuLinear, ids: &[u32]) -> Result<CpuTensor> {
        let cols = table.in_features;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= table.out_features) {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary of {}",
                table.out_features
            )));
        }
        let mut x = CpuTensor::zeros(ids.len(), cols);
        x.data.par_chunks_mut(cols).zip(ids.par_iter()).for_each(|(row, &id)| table.row(id as usize, row));
        Ok(x)
    }

    fn rms_norm(&self, x: &CpuTensor, w: &Vec<f32>, eps: f32) -> Result<CpuTensor> {
        check_width(x, w)?;
        let mut out = CpuTensor::zeros(x.rows, x.cols);
        out.data.par_chunks_mut(x.cols).zip(x.data.par_chunks(x.cols)).for_each(|(o, x)| rms_norm_row(x, w, eps, o));
        Ok(out)
    }

    fn add_rms_norm(&self, residual: &mut CpuTensor, delta: &CpuTensor, w: &Vec<f32>, eps: f32) -> Result<CpuTensor> {
        check_width(residual, w)?;
        same_shape(residual, delta)?;
        let cols = residual.cols;
        let mut out = CpuTensor::zeros(residual.rows, cols);
        out.data
            .par_chunks_mut(cols)
            .zip(residual.data.par_chunks_mut(cols).zip(delta.data.par_chunks(cols)))
            .for_each(|(o, (r, d))| {
                r.iter_mut().zip(d).for_each(|(r, d)| *r += d);
                rms_norm_row(r, w, eps, o);
            });
        Ok(out)
    }

    fn linear_forward(&self, x: &CpuTensor, w: &CpuLinear) -> Result<CpuTensor> {
        w.forward(x)
    }

    fn mlp_forward(&self, x: &CpuTensor, mlp: &CpuMlp) -> Result<CpuTensor> {
        mlp.forward(x)
    }

    fn moe_forward(&self, x: &CpuTensor, experts: &CpuExperts) -> Result<CpuTensor> {
        experts.forward(x)
    }

    fn attention(
        &self,
        qkv: &CpuTensor,
        shape: &AttentionShape,
        rope: &Rope,
        batch: &ForwardBatch,
        cache: &mut CpuKvCache,
        layer: usize,
    ) -> Result<CpuTensor> {
        attention::attention(qkv, shape, rope, batch, cache, layer)
    }

    fn segment_attention(
        &self,
        qkv: &CpuTensor,
        shape: &AttentionShape,
        rope: &Rope,
        positions: &[[u32; 3]],
        segments: &[Range<usize>],
    ) -> Result<CpuTensor> {
        attention::segment_attention(qkv, shape, rope, positions, segments)
    }

    fn add(&self, x: &mut CpuTensor, delta: &CpuTensor) -> Result<()> {
        same_shape(x, delta)?;
        x.data.par_iter_mut().zip(delta.data.par_iter()).for_each(|(x, d)| *x += d);
        Ok(())
    }

    fn layer_norm_gelu(&self, x: &CpuTensor, weight: &Vec<f32>, bias: &Vec<f32>, eps: f32) -> Result<CpuTensor> {
        check_width(x, weight)?;
        check_width(x, bias)?;
        let mut out = x.clone();
        out.data.par_chunks_mut(x.cols).for_each(|row| {
            let n = row.len() as f32;
            let mean = row.iter().sum::<f32>() / n;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
            let inv = 1.0 / (var + eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
                let y = (*v - mean) * inv * w + b;
                *v = 0.5 * y * (1.0 + libm::erff(y / std::f32::consts::SQRT_2));
            }
        });
        Ok(out)
    }

    fn merge_windows(&self, x: &CpuTensor, window: usize) -> Result<CpuTensor> {
        if window == 0 || !x.rows.is_multiple_of(window) {
            return Err(Error::InvalidInput(format!("{} rows do not form windows of {window}", x.rows)));
        }
        let cols = x.cols;
        let mut out = CpuTensor::zeros(x.rows / window, cols * window);
        out.data.par_chunks_mut(cols * window).enumerate().for_each(|(r, o)| {
            for k in 0..window {
                for (c, v) in x.row(r * window + k).iter().enumerate() {
                    o[c * window + k] = *v;
                }
            }
        });
        Ok(out)
    }

    fn scatter_rows(&self, dst: &mut CpuTensor, rows: &[usize], src: &CpuTensor) -> Result<()> {
        if src.cols != dst.cols || src.rows != rows.len() || rows.iter().any(|&r| r >= dst.rows) {
            return Err(Error::InvalidInput(format!(
                "scatter of [{}, {}] into [{}, {}] at {} rows",
                src.rows,
                src.cols,
                dst.rows,
                dst.cols,
                rows.len()
            )));
        }
        for (i, &r) in rows.iter().enumerate() {
            dst.row_mut(r).copy_from_slice(src.row(i));
        }
        Ok(())
    }

    fn upload(&self, rows: usize, cols: usize, data: &[f32]) -> Result<CpuTensor> {
        if data.len() != rows * cols {
            return Err(Error::InvalidInput(format!("{} values for a [{rows}, {cols}] tensor", data.len())));
        }
        Ok(CpuTensor::from_vec(rows, cols, data.to_vec()))
    }

    fn select_rows(&self, x: &CpuTensor, rows: &[usize]) -> Result<CpuTensor> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= x.rows) {
            return Err(Error::InvalidInput(format!("row {bad} of a {}-row tensor", x.rows)));
        }
        Ok(x.select_rows(rows))
    }

    fn to_host(&self, x: &CpuTensor) -> Result<Vec<f32>> {
        Ok(x.data.clone())
    }

    fn argmax_rows(&self, x: &CpuTensor) -> Result<Vec<u32>> {
        Ok((0..x.rows).map(|r| crate::engine::sampler::argmax(x.row(r))).collect())
    }
}
