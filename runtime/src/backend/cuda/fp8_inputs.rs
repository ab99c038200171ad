//! The inputs of FP8 linears that quantise their activations (`--fp8-activations checkpoint`): rounded to FP8 as
//! backend::quantize_rows says, either as f32 values for the GEMMs over f32 inputs or as E4M3 codes and scales for
//! the FP8 tensor-core GEMM (kernels-cuda/gemm.cu gemm_fp8_tc).
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{device_err, CudaBackend, CudaTensor};
use crate::{config::InputQuant, Error, Result};

/// The K step of the tensor-core tiles (TC_BK in kernels-cuda/mma.cuh): FP8 scale groups must span whole steps.
const K_STEP: usize = 32;

/// The columns per activation scale with which `gemm_fp8_tc` can multiply inputs quantised as `quant` by FP8 weights
/// whose scales change every `weight_block_cols` columns (K for one scale per row), over K = `k` columns; `None` where
/// it cannot (exact inputs, K not in 16-byte rows, a group or block that does not span whole K steps).
pub(super) fn fp8_mma_group(quant: InputQuant, k: usize, weight_block_cols: usize) -> Option<usize> {
    let x_group = quant.group_cols(k)?;
    let whole_steps = |cols: usize| cols > 0 && (cols >= k || cols.is_multiple_of(K_STEP));
    (k.is_multiple_of(16) && whole_steps(x_group) && whole_steps(weight_block_cols)).then_some(x_group)
}

/// E4M3 codes [rows, cols] and their scales [rows, groups] of `group` columns.
pub(super) struct Fp8Codes {
    pub codes: CudaSlice<u8>,
    pub scales: CudaSlice<f32>,
    pub group: usize,
}

/// One linear's input as its kernels take it, each form made at most once per call: the input itself, its quantised
/// values, or its FP8 codes.
pub(super) struct LinearInput<'a> {
    x: &'a CudaTensor,
    quant: InputQuant,
    values: Option<CudaTensor>,
    codes: Option<Fp8Codes>,
}

impl<'a> LinearInput<'a> {
    pub fn new(x: &'a CudaTensor, quant: InputQuant) -> Self {
        LinearInput { x, quant, values: None, codes: None }
    }

    pub fn quant(&self) -> InputQuant {
        self.quant
    }

    pub fn rows(&self) -> usize {
        self.x.rows
    }

    /// f32 values: the input, or its quantised copy.
    pub fn values(&mut self, be: &CudaBackend) -> Result<&CudaTensor> {
        if self.quant == InputQuant::Exact {
            return Ok(self.x);
        }
        if self.values.is_none() {
            let out = be.alloc(self.x.rows, self.x.cols)?;
            quantize_rows(be, self.x, self.quant, &out)?;
            self.values = Some(out);
        }
        Ok(self.values.as_ref().expect("made above"))
    }

    /// FP8 codes in groups of `group` columns (`fp8_mma_group`'s answer for this input).
    pub fn codes(&mut self, be: &CudaBackend, group: usize) -> Result<&Fp8Codes> {
        if self.codes.as_ref().is_none_or(|c| c.group != group) {
            self.codes = Some(quantize_codes(be, self.x, group)?);
        }
        Ok(self.codes.as_ref().expect("made above"))
    }
}

/// The launch grid of the quantisation kernels: a block of 128 threads per (row, group).
fn grid(x: &CudaTensor, group: usize) -> Result<(LaunchConfig, usize)> {
    let groups = x.cols.div_ceil(group);
    if groups > 65_535 {
        return Err(Error::InvalidInput(format!("cannot quantise {} columns in groups of {group}", x.cols)));
    }
    Ok((
        LaunchConfig { grid_dim: (x.rows as u32, groups as u32, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 },
        groups,
    ))
}

/// `out` = `x` with its rows quantised as `quant` says, as f32 values; `out` may be `x`.
pub(super) fn quantize_rows(be: &CudaBackend, x: &CudaTensor, quant: InputQuant, out: &CudaTensor) -> Result<()> {
    let Some(group) = quant.group_cols(x.cols) else {
        return Err(Error::InvalidInput("quantize_rows called for exact inputs".into()));
    };
    if out.rows != x.rows || out.cols != x.cols {
        return Err(Error::InvalidInput("quantize_rows: output shape differs from the input's".into()));
    }
    if x.rows == 0 || x.cols == 0 {
        return Ok(());
    }
    let (cfg, _) = grid(x, group)?;
    let (xp, op, cols, g) = (be.ptr(&x.buf), be.ptr(&out.buf), x.cols as i32, group as i32);
    let mut b = be.stream.launch_builder(&be.k.quantize_fp8_rows);
    b.arg(&xp).arg(&cols).arg(&g).arg(&op);
    // SAFETY: matches kernels-cuda/elementwise.cu quantize_fp8_rows; x and out are [rows, cols].
    unsafe { b.launch(cfg) }.map_err(device_err)?;
    Ok(())
}

fn quantize_codes(be: &CudaBackend, x: &CudaTensor, group: usize) -> Result<Fp8Codes> {
    let group = group.clamp(1, x.cols.max(1));
    let (cfg, groups) = grid(x, group)?;
    let codes = be.alloc_slice::<u8>(x.rows * x.cols)?;
    let scales = be.alloc_slice::<f32>(x.rows * groups)?;
    if x.rows > 0 && x.cols > 0 {
        let (xp, cp, sp, cols, g) = (be.ptr(&x.buf), be.ptr(&codes), be.ptr(&scales), x.cols as i32, group as i32);
        let mut b = be.stream.launch_builder(&be.k.quantize_fp8_codes);
        b.arg(&xp).arg(&cols).arg(&g).arg(&cp).arg(&sp);
        // SAFETY: matches kernels-cuda/elementwise.cu quantize_fp8_codes; codes [rows, cols], scales [rows, groups].
        unsafe { b.launch(cfg) }.map_err(device_err)?;
    }
    Ok(Fp8Codes { codes, scales, group })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_mma_takes_groups_of_whole_k_steps() {
        let per_token = InputQuant::Fp8 { group: None };
        let per_128 = InputQuant::Fp8 { group: Some(128) };
        // GLM-4.5V-FP8 (per-channel weights: one block of all K), block-128 repacks, o_proj's K of 12288.
        assert_eq!(fp8_mma_group(per_token, 4096, 4096), Some(4096));
        assert_eq!(fp8_mma_group(per_128, 4096, 128), Some(128));
        assert_eq!(fp8_mma_group(per_token, 12288, 128), Some(12288));
        assert_eq!(fp8_mma_group(InputQuant::Fp8 { group: Some(64) }, 1408, 128), Some(64));
        // A group wider than K is one group; K not a multiple of 16, or groups that split a K step, cannot.
        assert_eq!(fp8_mma_group(InputQuant::Fp8 { group: Some(256) }, 160, 160), Some(160));
        assert_eq!(fp8_mma_group(per_token, 1500, 1500), None);
        assert_eq!(fp8_mma_group(InputQuant::Fp8 { group: Some(48) }, 4096, 4096), None);
        assert_eq!(fp8_mma_group(per_token, 4096, 100), None);
        assert_eq!(fp8_mma_group(InputQuant::Exact, 4096, 4096), None);
    }
}
