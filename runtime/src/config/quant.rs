//! The checkpoint's declared quantization. Which tensors are actually FP8 is decided per tensor from its dtype
//! (see `weights`); this only records the scheme and refuses schemes glmv cannot run.
use super::json::Obj;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum QuantConfig {
    /// compressed-tensors `float-quantized`: FP8 E4M3 weights with a per-output-channel `weight_scale`.
    CompressedTensorsFp8,
    /// `quant_method: fp8` with `weight_block_size`: FP8 E4M3 weights with a block `weight_scale_inv`.
    BlockFp8 { block: [usize; 2] },
}

impl QuantConfig {
    pub(crate) fn parse(q: Obj) -> Result<Self> {
        let method = q.opt_str("quant_method")?.unwrap_or("");
        match method {
            "compressed-tensors" => {
                let format = q.opt_str("format")?.unwrap_or("float-quantized");
                if format != "float-quantized" {
                    return Err(Error::UnsupportedQuantization(format!(
                        "compressed-tensors format {format:?} (only float-quantized FP8 is supported)"
                    )));
                }
                Ok(QuantConfig::CompressedTensorsFp8)
            }
            "fp8" => {
                let block = q.opt_usize_list("weight_block_size")?.unwrap_or_else(|| vec![128, 128]);
                match block[..] {
                    [r, c] if r > 0 && c > 0 => Ok(QuantConfig::BlockFp8 { block: [r, c] }),
                    _ => Err(Error::UnsupportedQuantization(format!("fp8 weight_block_size {block:?}"))),
                }
            }
            other => Err(Error::UnsupportedQuantization(format!("quant_method {other:?}"))),
        }
    }

    /// The block shape of `weight_scale_inv` tensors, where the scheme has one.
    pub fn block(&self) -> Option<[usize; 2]> {
        match self {
            QuantConfig::BlockFp8 { block } => Some(*block),
            QuantConfig::CompressedTensorsFp8 => None,
        }
    }
}
