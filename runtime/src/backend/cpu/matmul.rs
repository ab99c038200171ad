//! Linear layers on the CPU: weights stay in the checkpoint's memory map in their stored dtype; each call converts
//! a band of rows to f32 and multiplies it with a SIMD sgemm, bands in parallel on rayon.
use rayon::prelude::*;

use super::CpuTensor;
use crate::{
    backend::quantize_rows,
    config::InputQuant,
    weights::{to_f32, Dtype, Fp8Scale, HostTensor, LinearSource, LinearWeight, MappedBytes},
    Error, Result,
};

/// Rows of one checkpoint tensor, convertible to f32 a row at a time.
enum RowSource {
    Dense { dtype: Dtype, bytes: MappedBytes },
    Fp8PerChannel { bytes: MappedBytes, scale: Vec<f32> },
    Fp8Block { bytes: MappedBytes, scale_inv: Vec<f32>, block: [usize; 2], col_blocks: usize },
}

struct Part {
    rows: usize,
    source: RowSource,
}

/// `y = x W^T + b` where W's rows are the rows of one or more checkpoint tensors, stacked.
pub struct CpuLinear {
    parts: Vec<Part>,
    /// Shared by every part: they multiply the same input.
    input: InputQuant,
    pub in_features: usize,
    pub out_features: usize,
    bias: Option<Vec<f32>>,
}

fn scale_vec(t: &HostTensor) -> Result<Vec<f32>> {
    t.to_f32_vec()
}

impl CpuLinear {
    pub fn new(sources: &[LinearSource]) -> Result<Self> {
        let first = sources.first().ok_or_else(|| Error::InvalidInput("a linear layer needs a weight".into()))?;
        let in_features = first.weight.in_features();
        let input = LinearSource::shared_input(sources)?;
        let mut parts = Vec::with_capacity(sources.len());
        let mut bias: Option<Vec<f32>> = None;
        let any_bias = sources.iter().any(|s| s.bias.is_some());
        for s in sources {
            let t = s.weight.tensor();
            if s.weight.in_features() != in_features {
                return Err(Error::ShapeMismatch {
                    name: t.name.clone(),
                    expected: vec![s.weight.out_features(), in_features],
                    actual: t.shape.clone(),
                });
            }
            let source = match &s.weight {
                LinearWeight::Dense(t) => RowSource::Dense { dtype: t.dtype, bytes: t.bytes.clone() },
                LinearWeight::Fp8 { weight, scale: Fp8Scale::PerChannel(scale) } => {
                    RowSource::Fp8PerChannel { bytes: weight.bytes.clone(), scale: scale_vec(scale)? }
                }
                LinearWeight::Fp8 { weight, scale: Fp8Scale::Block { scale_inv, block } } => RowSource::Fp8Block {
                    bytes: weight.bytes.clone(),
                    scale_inv: scale_vec(scale_inv)?,
                    block: *block,
                    col_blocks: in_features.div_ceil(block[1]),
                },
            };
            parts.push(Part { rows: s.weight.out_features(), source });
            if any_bias {
                let b = bias.get_or_insert_with(Vec::new);
                match &s.bias {
                    Some(t) => b.extend(t.to_f32_vec()?),
                    None => b.extend(std::iter::repeat_n(0.0, s.weight.out_features())),
                }
            }
        }
        let out_features = parts.iter().map(|p| p.rows).sum();
        Ok(CpuLinear { parts, input, in_features, out_features, bias })
    }

    /// Writes row `row` of W as f32 into `out` (`in_features` long).
    pub fn row(&self, mut row: usize, out: &mut [f32]) {
        let n = self.in_features;
        let part = self
            .parts
            .iter()
            .find(|p| {
                if row < p.rows {
                    true
                } else {
                    row -= p.rows;
                    false
                }
            })
            .expect("row index within out_features");
        match &part.source {
            RowSource::Dense { dtype, bytes } => {
                let size = dtype.size().unwrap_or(4);
                to_f32(*dtype, &bytes[row * n * size..(row + 1) * n * size], out);
            }
            RowSource::Fp8PerChannel { bytes, scale } => {
                to_f32(Dtype::F8E4M3, &bytes[row * n..(row + 1) * n], out);
                let s = scale[row];
                out.iter_mut().for_each(|v| *v *= s);
            }
            RowSource::Fp8Block { bytes, scale_inv, block, col_blocks } => {
                to_f32(Dtype::F8E4M3, &bytes[row * n..(row + 1) * n], out);
                let scales = &scale_inv[(row / block[0]) * col_blocks..][..*col_blocks];
                for (chunk, s) in out.chunks_mut(block[1]).zip(scales) {
                    chunk.iter_mut().for_each(|v| *v *= s);
                }
            }
        }
    }

    pub fn forward(&self, x: &CpuTensor) -> Result<CpuTensor> {
        if x.cols != self.in_features {
            return Err(Error::InvalidInput(format!(
                "linear expects {} input features, got {}",
                self.in_features, x.cols
            )));
        }
        let (m, k, n) = (x.rows, self.in_features, self.out_features);
        let mut y = CpuTensor::zeros(m, n);
        if m == 0 {
            return Ok(y);
        }
        let quantized;
        let x = if self.input == InputQuant::Exact {
            x
        } else {
            let mut q = x.clone();
            quantize_rows(&mut q.data, k, self.input);
            quantized = q;
            &quantized
        };
        let band = band_rows(n);
        let bands: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(band))
            .into_par_iter()
            .map(|b| {
                let r0 = b * band;
                let rows = band.min(n - r0);
                let mut w = vec![0.0f32; rows * k];
                for r in 0..rows {
                    self.row(r0 + r, &mut w[r * k..(r + 1) * k]);
                }
                let mut out = vec![0.0f32; m * rows];
                // out[m, rows] = x[m, k] * w[rows, k]^T
                // SAFETY: the pointers cover m*k, rows*k and m*rows elements with the given strides.
                unsafe {
                    matrixmultiply::sgemm(
                        m,
                        k,
                        rows,
                        1.0,
                        x.data.as_ptr(),
                        k as isize,
                        1,
                        w.as_ptr(),
                        1,
                        k as isize,
                        0.0,
                        out.as_mut_ptr(),
                        rows as isize,
                        1,
                    );
                }
                (r0, out)
            })
            .collect();
        for (r0, out) in bands {
            let rows = out.len() / m;
            for i in 0..m {
                y.data[i * n + r0..i * n + r0 + rows].copy_from_slice(&out[i * rows..(i + 1) * rows]);
            }
        }
        if let Some(bias) = &self.bias {
            y.data.chunks_mut(n).for_each(|row| row.iter_mut().zip(bias).for_each(|(v, b)| *v += b));
        }
        Ok(y)
    }
}

/// Output rows per parallel band: enough bands to keep every thread busy, few enough that each sgemm is worth it.
fn band_rows(n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (n / (threads * 4)).clamp(16, 256)
}
