//! Which kernel families the CUDA backend uses where a generic kernel could do the same work. Each can be switched
//! back to the generic kernels with `GLMV_CUDA_GENERIC=name,name,...` (or `all`): how a GPU session finds which
//! family a parity failure comes from, and still serves and benchmarks with the ones that work. All are on by
//! default.
use crate::{Error, Result};

/// The environment variable naming the families to switch off.
pub const GENERIC_ENV: &str = "GLMV_CUDA_GENERIC";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelPaths {
    /// Attention compiled for the models' head shapes (glmv-codegen's attention kernels).
    pub specialised_attention: bool,
    /// Tensor-core attention over prefill chunks and vision segments (kernels-cuda/attention_tc.cu).
    pub prefill_attention: bool,
    /// Decode rows' attention on tensor cores, each kv head's keys read once for its query heads (head_dim 128).
    pub gqa_attention: bool,
    /// Tensor-core GEMMs of few output tiles (decode batches over 8 rows, small layers) split K over more blocks.
    pub split_k_gemm: bool,
    /// GEMVs and expert rows compiled for the models' reduction widths (glmv-codegen's row kernels).
    pub row_kernels: bool,
    /// Grouped tensor-core expert GEMMs for many (token, expert) pairs; off: per-expert GEMMs planned on the host.
    pub grouped_moe: bool,
    /// Greedy tokens chosen on the device; off: the logits are copied and the host chooses.
    pub device_argmax: bool,
    /// Keys of long contexts split over several blocks when a step has few (row, head) blocks (flash-decoding).
    pub split_keys: bool,
    /// Temperature / top-k / top-p draws on the device; off: the logits are copied and the host draws.
    pub device_sampling: bool,
    /// Decode steps recorded once per shape and replayed as CUDA graphs (`--disable-cuda-graph` also turns it off).
    pub cuda_graphs: bool,
    /// FP8 weights times FP8-quantised activations (`--fp8-activations checkpoint`) on FP8 tensor cores; off: the
    /// quantised activations go through the BF16 tensor-core GEMM as f32 values.
    pub fp8_mma: bool,
}

impl Default for KernelPaths {
    fn default() -> Self {
        KernelPaths {
            specialised_attention: true,
            prefill_attention: true,
            gqa_attention: true,
            split_k_gemm: true,
            row_kernels: true,
            grouped_moe: true,
            device_argmax: true,
            split_keys: true,
            device_sampling: true,
            cuda_graphs: true,
            fp8_mma: true,
        }
    }
}

impl KernelPaths {
    /// Names as `GENERIC_ENV` takes them.
    pub const NAMES: [&'static str; 11] = [
        "specialised-attention",
        "prefill-attention",
        "gqa-attention",
        "split-k-gemm",
        "row-kernels",
        "grouped-moe",
        "device-argmax",
        "split-keys",
        "device-sampling",
        "cuda-graphs",
        "fp8-mma",
    ];

    fn flag(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "specialised-attention" => &mut self.specialised_attention,
            "prefill-attention" => &mut self.prefill_attention,
            "gqa-attention" => &mut self.gqa_attention,
            "split-k-gemm" => &mut self.split_k_gemm,
            "row-kernels" => &mut self.row_kernels,
            "grouped-moe" => &mut self.grouped_moe,
            "device-argmax" => &mut self.device_argmax,
            "split-keys" => &mut self.split_keys,
            "device-sampling" => &mut self.device_sampling,
            "cuda-graphs" => &mut self.cuda_graphs,
            "fp8-mma" => &mut self.fp8_mma,
            _ => return None,
        })
    }

    /// Every family on, minus those `value` (a comma-separated list of names, or `all`) switches off.
    pub fn parse(value: &str) -> Result<Self> {
        let mut paths = KernelPaths::default();
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "all" {
                Self::NAMES.iter().for_each(|n| *paths.flag(n).expect("listed") = false);
                continue;
            }
            match paths.flag(name) {
                Some(on) => *on = false,
                None => {
                    return Err(Error::Config(format!(
                        "{GENERIC_ENV}: unknown kernel family {name:?} (known: all, {})",
                        Self::NAMES.join(", ")
                    )))
                }
            }
        }
        Ok(paths)
    }

    /// From the environment (every family on when the variable is unset).
    pub fn from_env() -> Result<Self> {
        match std::env::var(GENERIC_ENV) {
            Ok(value) => Self::parse(&value),
            Err(_) => Ok(KernelPaths::default()),
        }
    }

    /// The families switched off, by name (empty when all are on).
    pub fn generic(&self) -> Vec<&'static str> {
        let mut copy = *self;
        Self::NAMES.into_iter().filter(|n| !*copy.flag(n).expect("listed")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_switch_off_by_name() {
        assert_eq!(KernelPaths::parse("").unwrap(), KernelPaths::default());
        let p = KernelPaths::parse("grouped-moe, prefill-attention").unwrap();
        assert!(!p.grouped_moe && !p.prefill_attention);
        assert!(
            p.specialised_attention
                && p.gqa_attention
                && p.split_k_gemm
                && p.row_kernels
                && p.device_argmax
                && p.split_keys
                && p.device_sampling
                && p.cuda_graphs
                && p.fp8_mma
        );
        assert_eq!(p.generic(), ["prefill-attention", "grouped-moe"]);
        assert_eq!(KernelPaths::parse("all").unwrap().generic(), KernelPaths::NAMES);
        assert!(KernelPaths::default().generic().is_empty());
        let e = KernelPaths::parse("grouped_moe").unwrap_err().to_string();
        assert!(e.contains("unknown kernel family \"grouped_moe\"") && e.contains("grouped-moe"), "{e}");
    }

    /// The device script bisects a failing test over every family (scripts/device/gpu_check.sh FAMILIES).
    #[test]
    fn the_device_script_knows_every_family() {
        let script = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/device/gpu_check.sh"));
        let start = script.find("FAMILIES=\"").expect("FAMILIES in gpu_check.sh") + "FAMILIES=\"".len();
        let listed: Vec<&str> = script[start..].split('"').next().unwrap().split_whitespace().collect();
        assert_eq!(listed, KernelPaths::NAMES);
    }
}
