//! The kernel images built into this binary and the functions the backend launches.
use std::sync::Arc;

use cudarc::{
    driver::{CudaContext, CudaFunction, CudaModule},
    nvrtc::Ptx,
};

use glmv_codegen::{AttentionKernel, KvDtype, RowKernel, RowOp, WeightKind};

use super::device_err;
use crate::{Error, Result};

#[cfg(glmv_cuda_kernels)]
include!(concat!(env!("OUT_DIR"), "/cuda_kernels.rs"));
#[cfg(not(glmv_cuda_kernels))]
pub static KERNEL_IMAGES: &[(&str, &[u8])] = &[];

/// Weight element types, as `DT_*` in kernels-cuda/common.cuh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32 = 0,
    Bf16 = 1,
    F16 = 2,
    Fp8 = 3,
}

/// Every function the CUDA backend launches. `F` is a loaded `CudaFunction`; [`Kernels::resolve`] also builds it
/// from names alone, which is how tests check without a GPU that every function exists in the embedded images.
pub struct Kernels<F = CudaFunction> {
    pub embed: [F; 4],
    /// Tensor-core GEMM (BF16 mma, f32 accumulation) for more than GEMV_MAX_ROWS rows; 128 threads per 64 x 64 tile.
    pub gemm: [F; 4],
    /// Adds up the K splits of a split-K `gemm`.
    pub gemm_split_reduce: F,
    /// FP8 weights times FP8-quantised activations (E4M3 codes and per-group scales).
    pub gemm_fp8_tc: F,
    pub gemv: [F; 4],
    /// GEMV with 16-byte weight loads (rows a multiple of 16 bytes).
    pub gemv_vec: [F; 4],
    pub rms_norm: F,
    pub layer_norm_gelu: F,
    pub swiglu: F,
    pub add_inplace: F,
    pub gather_rows: F,
    pub scatter_rows: F,
    pub merge_windows: F,
    /// Dynamic FP8 activations of the FP8 linears (`--fp8-activations checkpoint`): as f32 values, and as E4M3 codes
    /// and scales for `gemm_fp8_tc`.
    pub quantize_fp8_rows: F,
    pub quantize_fp8_codes: F,
    pub rope_qkv: F,
    /// `--load-format dummy` weights made on the device.
    pub dummy_fill: F,
    /// Every attention kernel by what glmv-codegen calls it: the generic ones (kernels-cuda/attention.cu) and those
    /// compiled for the head shapes of the models glmv serves.
    pub attention: Vec<(AttentionKernel, F)>,
    /// Merges the key splits of the attention kernels.
    pub attention_combine: F,
    /// Tensor-core attention over 64-row tiles of prefill chunks and vision segments (head_dim 128), for BF16, FP8
    /// and f32 keys and values.
    pub attention_tc_bf16_d128: F,
    pub attention_tc_fp8_d128: F,
    pub attention_tc_f32_d128: F,
    /// The same kernels over decode rows: a tile is the query heads of one kv head, so each key is read once for all
    /// of them; splits keys like the generic kernels.
    pub attention_gqa_tc_bf16_d128: F,
    pub attention_gqa_tc_fp8_d128: F,
    pub attention_gqa_tc_f32_d128: F,
    pub moe_route: F,
    pub moe_gate_up: [F; 4],
    pub moe_down: [F; 4],
    /// Sorts (token, expert) pairs by expert for the grouped GEMMs.
    pub moe_align: F,
    /// Grouped tensor-core expert GEMMs over the sorted pairs (gate|up with SwiGLU, down), then the weighted sum.
    pub moe_gate_up_tc: [F; 4],
    pub moe_down_tc: [F; 4],
    /// The grouped expert GEMMs over FP8 activation codes and FP8 weights (`--fp8-activations checkpoint`).
    pub moe_gate_up_fp8x: F,
    pub moe_down_fp8x: F,
    pub moe_combine: F,
    /// Greedy tokens: one block per row of logits.
    pub argmax_rows: F,
    /// Temperature / top-k / top-p / min-p draws over each row's best 1024 candidates (kernels-cuda/sampling.cu).
    pub sample_rows: F,
    /// GEMVs and expert rows compiled for the models' reduction widths (glmv-codegen's row kernels).
    pub rows: Vec<(RowKernel, F)>,
}

const DTYPE_SUFFIX: [&str; 4] = ["f32", "bf16", "f16", "fp8"];

impl Kernels {
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Self> {
        if KERNEL_IMAGES.is_empty() {
            return Err(Error::Device("this binary was built without CUDA kernels (no nvcc at build time)".into()));
        }
        let modules: Vec<(&str, Arc<CudaModule>)> = KERNEL_IMAGES
            .iter()
            .map(|(name, image)| Ok((*name, ctx.load_module(Ptx::from_binary(image.to_vec())).map_err(device_err)?)))
            .collect::<Result<_>>()?;
        Kernels::resolve(&|module, name| {
            let (_, m) = modules
                .iter()
                .find(|(n, _)| *n == module)
                .ok_or_else(|| Error::Device(format!("kernel image {module} missing")))?;
            m.load_function(name).map_err(|e| Error::Device(format!("{module}.{name}: {e}")))
        })
    }
}

impl<F> Kernels<F> {
    /// Every function, each looked up by `function(image, name)`.
    pub fn resolve(function: &dyn Fn(&str, &str) -> Result<F>) -> Result<Self> {
        let f = |module: &str, name: &str| function(module, name);
        let per_dtype = |module: &str, prefix: &str| -> Result<[F; 4]> {
            let v: Vec<F> =
                DTYPE_SUFFIX.iter().map(|s| function(module, &format!("{prefix}_{s}"))).collect::<Result<_>>()?;
            Ok(v.try_into().unwrap_or_else(|_| unreachable!("four dtypes")))
        };
        Ok(Kernels {
            embed: per_dtype("elementwise", "embed")?,
            gemm: per_dtype("gemm", "gemm_tc")?,
            gemm_split_reduce: f("gemm", "gemm_split_reduce")?,
            gemm_fp8_tc: f("gemm", "gemm_fp8_tc")?,
            gemv: per_dtype("gemm", "gemv")?,
            gemv_vec: per_dtype("gemm", "gemv_vec")?,
            rms_norm: f("elementwise", "rms_norm")?,
            layer_norm_gelu: f("elementwise", "layer_norm_gelu")?,
            swiglu: f("elementwise", "swiglu")?,
            add_inplace: f("elementwise", "add_inplace")?,
            gather_rows: f("elementwise", "gather_rows")?,
            scatter_rows: f("elementwise", "scatter_rows")?,
            merge_windows: f("elementwise", "merge_windows")?,
            quantize_fp8_rows: f("elementwise", "quantize_fp8_rows")?,
            quantize_fp8_codes: f("elementwise", "quantize_fp8_codes")?,
            rope_qkv: f("attention", "rope_qkv")?,
            dummy_fill: f("elementwise", "dummy_fill")?,
            attention: KvDtype::ALL
                .map(|kv| (AttentionKernel { kv, head_dim: None, group: None }, "attention"))
                .into_iter()
                .chain(glmv_codegen::attention_kernels().into_iter().map(|k| (k, "attention_specialised")))
                .map(|(k, module)| Ok((k, f(module, &k.symbol())?)))
                .collect::<Result<_>>()?,
            attention_combine: f("attention", "attention_combine")?,
            attention_tc_bf16_d128: f("attention_tc", "attention_tc_bf16_d128")?,
            attention_tc_fp8_d128: f("attention_tc", "attention_tc_fp8_d128")?,
            attention_tc_f32_d128: f("attention_tc", "attention_tc_f32_d128")?,
            attention_gqa_tc_bf16_d128: f("attention_tc", "attention_gqa_tc_bf16_d128")?,
            attention_gqa_tc_fp8_d128: f("attention_tc", "attention_gqa_tc_fp8_d128")?,
            attention_gqa_tc_f32_d128: f("attention_tc", "attention_gqa_tc_f32_d128")?,
            moe_route: f("moe", "moe_route")?,
            moe_gate_up: per_dtype("moe", "moe_gate_up")?,
            moe_down: per_dtype("moe", "moe_down")?,
            moe_align: f("moe", "moe_align")?,
            moe_gate_up_tc: per_dtype("moe", "moe_gate_up_tc")?,
            moe_down_tc: per_dtype("moe", "moe_down_tc")?,
            moe_gate_up_fp8x: f("moe", "moe_gate_up_fp8x")?,
            moe_down_fp8x: f("moe", "moe_down_fp8x")?,
            moe_combine: f("moe", "moe_combine")?,
            argmax_rows: f("sampling", "argmax_rows")?,
            sample_rows: f("sampling", "sample_rows")?,
            rows: glmv_codegen::row_kernels()
                .into_iter()
                .map(|k| Ok((k, f("rows_specialised", &k.symbol())?)))
                .collect::<Result<_>>()?,
        })
    }
}

impl Kernels {
    /// The attention kernel for these shapes: the specialised one when it was built, else the generic one.
    pub fn attention_for(&self, kv: KvDtype, heads: usize, kv_heads: usize, head_dim: usize) -> &CudaFunction {
        self.attention_kernel(AttentionKernel::for_shape(kv, heads as u32, kv_heads as u32, head_dim as u32))
    }

    /// The generic attention kernel for this KV dtype (any head shape).
    pub fn attention_generic(&self, kv: KvDtype) -> &CudaFunction {
        self.attention_kernel(AttentionKernel { kv, head_dim: None, group: None })
    }

    fn attention_kernel(&self, want: AttentionKernel) -> &CudaFunction {
        let (_, kernel) = self
            .attention
            .iter()
            .find(|(have, _)| *have == want)
            .expect("load() loads the generic kernels and every specialised one, which is all for_shape can name");
        kernel
    }

    /// The row kernel compiled for this operation, weight dtype and reduction width, if any (else the generic one).
    pub fn row_kernel(&self, op: RowOp, dtype: WeightDtype, width: usize) -> Option<&CudaFunction> {
        let weight = match dtype {
            WeightDtype::Bf16 => WeightKind::Bf16,
            WeightDtype::Fp8 => WeightKind::Fp8,
            WeightDtype::F32 | WeightDtype::F16 => return None,
        };
        // `rows` holds exactly the built kernels: looked up directly, on every decode-time GEMV launch.
        let want = RowKernel { op, weight, width: u32::try_from(width).ok()? };
        self.rows.iter().find(|(k, _)| *k == want).map(|(_, f)| f)
    }
}
