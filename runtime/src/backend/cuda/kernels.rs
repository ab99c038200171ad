//! The kernel images built into this binary and the functions the backend launches.
use std::sync::Arc;

use cudarc::{
    driver::{CudaContext, CudaFunction, CudaModule},
    nvrtc::Ptx,
};

use glmv_codegen::{AttentionKernel, KvDtype};

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

pub struct Kernels {
    pub embed: [CudaFunction; 4],
    /// Tensor-core GEMM (BF16 mma, f32 accumulation) for more than GEMV_MAX_ROWS rows; 128 threads per 64 x 64 tile.
    pub gemm: [CudaFunction; 4],
    pub gemv: [CudaFunction; 4],
    /// GEMV with 16-byte weight loads (rows a multiple of 16 bytes).
    pub gemv_vec: [CudaFunction; 4],
    pub rms_norm: CudaFunction,
    pub layer_norm_gelu: CudaFunction,
    pub swiglu: CudaFunction,
    pub add_inplace: CudaFunction,
    pub gather_rows: CudaFunction,
    pub scatter_rows: CudaFunction,
    pub merge_windows: CudaFunction,
    pub rope_qkv: CudaFunction,
    /// Every attention kernel by what glmv-codegen calls it: the generic ones (kernels-cuda/attention.cu) and those
    /// compiled for the head shapes of the models glmv serves.
    pub attention: Vec<(AttentionKernel, CudaFunction)>,
    pub moe_route: CudaFunction,
    pub moe_gate_up: [CudaFunction; 4],
    pub moe_down: [CudaFunction; 4],
    /// Sorts (token, expert) pairs by expert for the grouped GEMMs.
    pub moe_align: CudaFunction,
    /// Grouped tensor-core expert GEMMs over the sorted pairs (gate|up with SwiGLU, down), then the weighted sum.
    pub moe_gate_up_tc: [CudaFunction; 4],
    pub moe_down_tc: [CudaFunction; 4],
    pub moe_combine: CudaFunction,
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
        let f = |module: &str, name: &str| -> Result<CudaFunction> {
            let (_, m) = modules
                .iter()
                .find(|(n, _)| *n == module)
                .ok_or_else(|| Error::Device(format!("kernel image {module} missing")))?;
            m.load_function(name).map_err(|e| Error::Device(format!("{module}.{name}: {e}")))
        };
        let per_dtype = |module: &str, prefix: &str| -> Result<[CudaFunction; 4]> {
            let v: Vec<CudaFunction> =
                DTYPE_SUFFIX.iter().map(|s| f(module, &format!("{prefix}_{s}"))).collect::<Result<_>>()?;
            Ok(v.try_into().unwrap_or_else(|_| unreachable!("four dtypes")))
        };
        Ok(Kernels {
            embed: per_dtype("elementwise", "embed")?,
            gemm: per_dtype("gemm", "gemm_tc")?,
            gemv: per_dtype("gemm", "gemv")?,
            gemv_vec: per_dtype("gemm", "gemv_vec")?,
            rms_norm: f("elementwise", "rms_norm")?,
            layer_norm_gelu: f("elementwise", "layer_norm_gelu")?,
            swiglu: f("elementwise", "swiglu")?,
            add_inplace: f("elementwise", "add_inplace")?,
            gather_rows: f("elementwise", "gather_rows")?,
            scatter_rows: f("elementwise", "scatter_rows")?,
            merge_windows: f("elementwise", "merge_windows")?,
            rope_qkv: f("attention", "rope_qkv")?,
            attention: KvDtype::ALL
                .map(|kv| (AttentionKernel { kv, head_dim: None, group: None }, "attention"))
                .into_iter()
                .chain(glmv_codegen::attention_kernels().into_iter().map(|k| (k, "attention_specialised")))
                .map(|(k, module)| Ok((k, f(module, &k.symbol())?)))
                .collect::<Result<_>>()?,
            moe_route: f("moe", "moe_route")?,
            moe_gate_up: per_dtype("moe", "moe_gate_up")?,
            moe_down: per_dtype("moe", "moe_down")?,
            moe_align: f("moe", "moe_align")?,
            moe_gate_up_tc: per_dtype("moe", "moe_gate_up_tc")?,
            moe_down_tc: per_dtype("moe", "moe_down_tc")?,
            moe_combine: f("moe", "moe_combine")?,
        })
    }
}

impl Kernels {
    /// The attention kernel for these shapes: the specialised one when it was built, else the generic one.
    pub fn attention_for(&self, kv: KvDtype, heads: usize, kv_heads: usize, head_dim: usize) -> &CudaFunction {
        let want = AttentionKernel::for_shape(kv, heads as u32, kv_heads as u32, head_dim as u32);
        let (_, kernel) = self
            .attention
            .iter()
            .find(|(have, _)| *have == want)
            .expect("load() loads the generic kernels and every specialised one, which is all for_shape can name");
        kernel
    }
}
