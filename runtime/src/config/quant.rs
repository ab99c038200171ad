//! The checkpoint's declared quantization. Which tensors are actually FP8 is decided per tensor from its dtype
//! (see `weights`); this only records the scheme and refuses schemes glmv cannot run.
use super::json::Obj;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct QuantConfig {
    pub weights: WeightQuant,
    /// How the checkpoint says the FP8 linears' inputs are quantised at run time.
    pub activations: ActivationScheme,
}

/// How FP8 weights are scaled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightQuant {
    /// compressed-tensors `float-quantized`: FP8 E4M3 weights with a per-output-channel `weight_scale`.
    PerChannel,
    /// `quant_method: fp8` with `weight_block_size`: FP8 E4M3 weights with a block `weight_scale_inv`.
    Block { block: [usize; 2] },
}

/// The activation quantisation a checkpoint declares for its FP8 linears.
#[derive(Debug, Clone, PartialEq)]
pub enum ActivationScheme {
    /// Weight-only: the inputs stay as they are.
    None,
    /// FP8 E4M3 with one scale per input row (compressed-tensors `dynamic: true, strategy: token`).
    DynamicPerToken,
    /// FP8 E4M3 with one scale per `cols` consecutive columns of each input row (compressed-tensors
    /// `strategy: group`, and `quant_method: fp8` with `activation_scheme: dynamic`, whose group is the weight
    /// block's width).
    DynamicPerGroup { cols: usize },
    /// A scheme glmv cannot reproduce (static scales, other widths); refused when the checkpoint's scheme is asked
    /// for, harmless otherwise.
    Unsupported(String),
}

/// Which activation quantisation a model runs with: the user's choice between exact inputs (what transformers
/// computes from dequantised weights) and the checkpoint's declared scheme (what vLLM and SGLang compute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fp8Activations {
    #[default]
    Exact,
    Checkpoint,
}

/// How one FP8 linear treats its input rows at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputQuant {
    #[default]
    Exact,
    /// Each row rounded to FP8 E4M3 on a scale of its own absmax / 448, in groups of this many columns (the whole
    /// row for per-token quantisation).
    Fp8 { group: Option<usize> },
}

impl InputQuant {
    /// The columns per scale over rows of `cols` columns (the whole row for one scale per token, never wider), or
    /// `None` for exact inputs.
    pub fn group_cols(self, cols: usize) -> Option<usize> {
        match self {
            InputQuant::Exact => None,
            InputQuant::Fp8 { group } => Some(group.unwrap_or(cols).clamp(1, cols.max(1))),
        }
    }
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
                Ok(QuantConfig { weights: WeightQuant::PerChannel, activations: compressed_tensors_activations(q)? })
            }
            "fp8" => {
                let block = q.opt_usize_list("weight_block_size")?.unwrap_or_else(|| vec![128, 128]);
                let block = match block[..] {
                    [r, c] if r > 0 && c > 0 => [r, c],
                    _ => return Err(Error::UnsupportedQuantization(format!("fp8 weight_block_size {block:?}"))),
                };
                // transformers' and DeepSeek's default scheme is dynamic: one scale per token and weight block width.
                let activations = match q.opt_str("activation_scheme")?.unwrap_or("dynamic") {
                    "dynamic" => ActivationScheme::DynamicPerGroup { cols: block[1] },
                    other => ActivationScheme::Unsupported(format!("fp8 activation_scheme {other:?}")),
                };
                Ok(QuantConfig { weights: WeightQuant::Block { block }, activations })
            }
            other => Err(Error::UnsupportedQuantization(format!("quant_method {other:?}"))),
        }
    }

    /// The block shape of `weight_scale_inv` tensors, where the scheme has one.
    pub fn block(&self) -> Option<[usize; 2]> {
        match self.weights {
            WeightQuant::Block { block } => Some(block),
            WeightQuant::PerChannel => None,
        }
    }

    /// What the FP8 linears do with their inputs when the model runs with `mode`.
    pub fn input_quant(&self, mode: Fp8Activations) -> Result<InputQuant> {
        if mode == Fp8Activations::Exact {
            return Ok(InputQuant::Exact);
        }
        match &self.activations {
            ActivationScheme::None => Ok(InputQuant::Exact),
            ActivationScheme::DynamicPerToken => Ok(InputQuant::Fp8 { group: None }),
            ActivationScheme::DynamicPerGroup { cols } => Ok(InputQuant::Fp8 { group: Some(*cols) }),
            ActivationScheme::Unsupported(what) => Err(Error::UnsupportedQuantization(format!(
                "{what} (the checkpoint's activation quantisation); run with exact activations instead"
            ))),
        }
    }
}

/// The `input_activations` of a compressed-tensors config: every config group must declare the same scheme (which
/// group targets which linear is not modelled), absent or null meaning weight-only.
fn compressed_tensors_activations(q: Obj) -> Result<ActivationScheme> {
    let Some(groups) = q.child("config_groups") else { return Ok(ActivationScheme::None) };
    let mut found: Option<ActivationScheme> = None;
    for (name, group) in groups.value.as_object().into_iter().flatten() {
        let scheme = match Obj::new(group, name).child("input_activations") {
            None => ActivationScheme::None,
            Some(a) => input_activations(a)?,
        };
        match &found {
            Some(f) if *f != scheme => {
                return Ok(ActivationScheme::Unsupported(format!(
                    "compressed-tensors config groups with different input activations ({f:?}, {scheme:?})"
                )))
            }
            _ => found = Some(scheme),
        }
    }
    Ok(found.unwrap_or(ActivationScheme::None))
}

fn input_activations(a: Obj) -> Result<ActivationScheme> {
    let kind = a.opt_str("type")?.unwrap_or("float");
    let bits = a.opt_usize("num_bits")?.unwrap_or(8);
    let dynamic = a.opt_bool("dynamic")?.unwrap_or(false);
    let strategy = a.opt_str("strategy")?.unwrap_or("tensor");
    let group = a.opt_usize("group_size")?;
    let unsupported = || {
        ActivationScheme::Unsupported(format!(
            "compressed-tensors input activations {kind} {bits}-bit, {strategy}, {}",
            if dynamic { "dynamic" } else { "static" }
        ))
    };
    if kind != "float" || bits != 8 || !dynamic {
        return Ok(unsupported());
    }
    Ok(match (strategy, group) {
        ("token", _) => ActivationScheme::DynamicPerToken,
        ("group", Some(cols)) if cols > 0 => ActivationScheme::DynamicPerGroup { cols },
        _ => unsupported(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> QuantConfig {
        QuantConfig::parse(Obj::new(&v, "quantization_config")).unwrap()
    }

    fn compressed(input_activations: serde_json::Value) -> serde_json::Value {
        json!({"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {
            "group_0": {"targets": ["Linear"], "weights": {"type": "float", "num_bits": 8, "strategy": "channel"},
                        "input_activations": input_activations}}})
    }

    #[test]
    fn reads_the_declared_activation_scheme() {
        let known = include_str!("known/fp8-compressed-tensors.json");
        let c = parse(serde_json::from_str(known).unwrap());
        assert_eq!(c.activations, ActivationScheme::DynamicPerToken);
        assert_eq!(c.input_quant(Fp8Activations::Checkpoint).unwrap(), InputQuant::Fp8 { group: None });
        assert_eq!(c.input_quant(Fp8Activations::Exact).unwrap(), InputQuant::Exact);

        let weight_only = parse(compressed(serde_json::Value::Null));
        assert_eq!(weight_only.activations, ActivationScheme::None);
        assert_eq!(weight_only.input_quant(Fp8Activations::Checkpoint).unwrap(), InputQuant::Exact);

        let group = json!({"type": "float", "num_bits": 8, "dynamic": true, "strategy": "group", "group_size": 64});
        assert_eq!(parse(compressed(group)).activations, ActivationScheme::DynamicPerGroup { cols: 64 });

        let block = parse(json!({"quant_method": "fp8", "weight_block_size": [128, 64]}));
        assert_eq!(block.input_quant(Fp8Activations::Checkpoint).unwrap(), InputQuant::Fp8 { group: Some(64) });
    }

    #[test]
    fn static_activation_scales_are_refused_only_when_asked_for() {
        let stat = json!({"type": "float", "num_bits": 8, "dynamic": false, "strategy": "tensor"});
        let c = parse(compressed(stat));
        assert!(matches!(c.activations, ActivationScheme::Unsupported(_)));
        assert_eq!(c.input_quant(Fp8Activations::Exact).unwrap(), InputQuant::Exact);
        let err = c.input_quant(Fp8Activations::Checkpoint).unwrap_err().to_string();
        assert!(err.contains("static"), "{err}");

        let c = parse(json!({"quant_method": "fp8", "activation_scheme": "static"}));
        assert!(c.input_quant(Fp8Activations::Checkpoint).is_err());
    }
}
