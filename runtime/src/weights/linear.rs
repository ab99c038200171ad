//! A linear layer's tensors as the checkpoint stores them: a dense weight, or FP8 with one of the two scale layouts.
//! Whether a module is FP8 is decided from its own tensors' dtypes, never from names or the config alone.
use super::{HostTensor, WeightStore};
use crate::{config::InputQuant, Error, Result};

/// How FP8 weights are scaled back to real values.
#[derive(Clone)]
pub enum Fp8Scale {
    /// compressed-tensors `strategy: channel`: `W[o, :] = fp8 * weight_scale[o]`.
    PerChannel(HostTensor),
    /// `weight_scale_inv` [ceil(out/b0), ceil(in/b1)]: `W[o, i] = fp8 * scale_inv[o / b0][i / b1]`.
    Block { scale_inv: HostTensor, block: [usize; 2] },
}

#[derive(Clone)]
pub enum LinearWeight {
    /// F32 / F16 / BF16 [out, in].
    Dense(HostTensor),
    /// F8_E4M3 [out, in] and its scales.
    Fp8 { weight: HostTensor, scale: Fp8Scale },
}

impl LinearWeight {
    pub fn out_features(&self) -> usize {
        self.tensor().shape[0]
    }

    pub fn in_features(&self) -> usize {
        self.tensor().shape[1]
    }

    pub fn tensor(&self) -> &HostTensor {
        match self {
            LinearWeight::Dense(t) | LinearWeight::Fp8 { weight: t, .. } => t,
        }
    }
}

/// `y = x W^T (+ b)` as stored under one module prefix.
#[derive(Clone)]
pub struct LinearSource {
    pub weight: LinearWeight,
    pub bias: Option<HostTensor>,
    /// What the layer does with its input rows before multiplying: exact unless an FP8 linear runs with the
    /// checkpoint's activation quantisation.
    pub input: InputQuant,
}

impl LinearSource {
    pub fn out_features(&self) -> usize {
        self.weight.out_features()
    }

    /// The input treatment of a linear made of `sources` stacked (q|k|v, gate|up): they multiply the same input, so
    /// they must treat it the same way.
    pub fn shared_input(sources: &[LinearSource]) -> Result<InputQuant> {
        let first = sources.first().ok_or_else(|| Error::InvalidInput("a linear layer needs a weight".into()))?;
        match sources.iter().find(|s| s.input != first.input) {
            Some(other) => Err(Error::InvalidInput(format!(
                "{} quantises its input unlike {} of the same fused linear",
                other.weight.tensor().name,
                first.weight.tensor().name
            ))),
            None => Ok(first.input),
        }
    }

    /// This layer with its input quantised as `input` says, where its weight is FP8 (dense layers stay exact, as
    /// the checkpoints' `ignore` lists keep them out of the FP8 scheme).
    pub fn with_input(mut self, input: InputQuant) -> Self {
        if matches!(self.weight, LinearWeight::Fp8 { .. }) {
            self.input = input;
        }
        self
    }
}

impl WeightStore {
    /// The linear layer `{prefix}.weight` of shape [out, in], with `{prefix}.bias` when `bias` is set.
    /// `block` is the checkpoint's declared FP8 block size, used for `weight_scale_inv` tensors.
    pub fn linear(
        &self,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
        block: Option<[usize; 2]>,
    ) -> Result<LinearSource> {
        let weight = self.get_shaped(&format!("{prefix}.weight"), &[out, inp])?;
        let weight = if weight.dtype == super::Dtype::F8E4M3 {
            LinearWeight::Fp8 { scale: self.fp8_scale(prefix, out, inp, block)?, weight }
        } else if weight.dtype.is_float() {
            LinearWeight::Dense(weight)
        } else {
            return Err(Error::UnsupportedDtype {
                name: weight.name,
                dtype: weight.dtype.to_string(),
                context: "glmv cannot use as a linear weight",
            });
        };
        let bias = if bias { Some(self.get_shaped(&format!("{prefix}.bias"), &[out])?) } else { None };
        Ok(LinearSource { weight, bias, input: InputQuant::Exact })
    }

    /// A convolution whose kernel covers its whole receptive field (Conv3d patch embedding, the 2x2 downsample),
    /// stored as `{prefix}.weight` of shape `stored` = [out, ...], used as a linear [out, product of the rest].
    pub fn conv_as_linear(&self, prefix: &str, stored: &[usize], bias: bool) -> Result<LinearSource> {
        let mut weight = self.get_shaped(&format!("{prefix}.weight"), stored)?;
        if !weight.dtype.is_float() || weight.dtype == super::Dtype::F8E4M3 {
            return Err(Error::UnsupportedDtype {
                name: weight.name,
                dtype: weight.dtype.to_string(),
                context: "glmv cannot use as a convolution weight",
            });
        }
        let out = stored[0];
        weight.shape = vec![out, stored[1..].iter().product()];
        let bias = if bias { Some(self.get_shaped(&format!("{prefix}.bias"), &[out])?) } else { None };
        Ok(LinearSource { weight: LinearWeight::Dense(weight), bias, input: InputQuant::Exact })
    }

    fn fp8_scale(&self, prefix: &str, out: usize, inp: usize, block: Option<[usize; 2]>) -> Result<Fp8Scale> {
        let per_channel = format!("{prefix}.weight_scale");
        let block_name = format!("{prefix}.weight_scale_inv");
        let check_float = |t: &HostTensor| {
            if t.dtype.is_float() && t.dtype != super::Dtype::F8E4M3 {
                Ok(())
            } else {
                Err(Error::UnsupportedDtype {
                    name: t.name.clone(),
                    dtype: t.dtype.to_string(),
                    context: "is not a valid FP8 scale type",
                })
            }
        };
        if self.contains(&per_channel) {
            let scale = self.get(&per_channel)?;
            check_float(&scale)?;
            if scale.numel() != out || !(scale.shape == [out, 1] || scale.shape == [out]) {
                return Err(Error::ShapeMismatch { name: per_channel, expected: vec![out, 1], actual: scale.shape });
            }
            Ok(Fp8Scale::PerChannel(scale))
        } else if self.contains(&block_name) {
            let block = block.unwrap_or([128, 128]);
            let scale_inv = self.get_shaped(&block_name, &[out.div_ceil(block[0]), inp.div_ceil(block[1])])?;
            check_float(&scale_inv)?;
            Ok(Fp8Scale::Block { scale_inv, block })
        } else {
            Err(Error::MissingTensor { name: format!("{per_channel} (or {prefix}.weight_scale_inv) for FP8 weight") })
        }
    }
}
