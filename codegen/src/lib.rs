//! glmv's shape-specialised GPU kernels, described once and emitted for a target.
//!
//! A kernel template in `kernels-cuda/*.cuh` takes its shapes as template parameters, 0 meaning "read it at run
//! time". This crate lists the shapes of the models glmv serves ([`ATTENTION_SHAPES`], [`DECODER_SHAPES`]), derives
//! which instantiations to build ([`attention_kernels`], [`row_kernels`]), writes their source for a target
//! ([`emit_cuda`]; HIP later from the same descriptions), and names them ([`AttentionKernel::symbol`],
//! [`RowKernel::symbol`]), so that `runtime/build.rs` compiles exactly
//! what the CUDA backend looks up, and anything else (test fixtures, unknown checkpoints) runs the generic kernels.
//!
//! The descriptions are target-neutral: shapes, dtypes and names only. What is CUDA-specific is [`emit_cuda`].

/// The attention shape of one model component (reference/model.md §1, §3): query heads, key/value heads and head
/// dimension. Checkpoints with other shapes run the generic kernels, so an entry here is an optimisation, never a
/// requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub what: &'static str,
    pub heads: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
}

impl AttentionShape {
    /// Query heads per key/value head.
    pub fn group(&self) -> u32 {
        self.heads / self.kv_heads
    }
}

/// The shapes glmv specialises attention for. Values verified against the GLM-4.5V checkpoint dump and transformers'
/// configuration defaults (reference/model.md §1.1, §1.3, §3); GLM-4.6V-Flash's kv heads are unverified, so it is
/// left to the generic kernels until a checkpoint says.
pub const ATTENTION_SHAPES: &[AttentionShape] = &[
    AttentionShape { what: "GLM-4.5V / GLM-4.6V text decoder", heads: 96, kv_heads: 8, head_dim: 128 },
    AttentionShape { what: "GLM-4.1V / Glyph text decoder", heads: 32, kv_heads: 2, head_dim: 128 },
    AttentionShape { what: "vision tower (both families)", heads: 12, kv_heads: 12, head_dim: 128 },
];

/// Element type of the keys and values attention reads (`KV_*` in kernels-cuda/common.cuh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvDtype {
    F32,
    Bf16,
    Fp8,
}

impl KvDtype {
    pub const ALL: [KvDtype; 3] = [KvDtype::F32, KvDtype::Bf16, KvDtype::Fp8];

    pub fn suffix(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::Bf16 => "bf16",
            KvDtype::Fp8 => "fp8",
        }
    }

    fn cuda_constant(self) -> &'static str {
        match self {
            KvDtype::F32 => "KV_F32",
            KvDtype::Bf16 => "KV_BF16",
            KvDtype::Fp8 => "KV_FP8",
        }
    }
}

/// One attention kernel: its KV element type and, when specialised, the head dimension and query heads per kv head
/// it is compiled for (None: read at run time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttentionKernel {
    pub kv: KvDtype,
    pub head_dim: Option<u32>,
    pub group: Option<u32>,
}

impl AttentionKernel {
    /// The kernel's exported name: `attention_bf16` (generic) or `attention_bf16_d128_g12`.
    pub fn symbol(&self) -> String {
        match (self.head_dim, self.group) {
            (Some(d), Some(g)) => format!("attention_{}_d{d}_g{g}", self.kv.suffix()),
            _ => format!("attention_{}", self.kv.suffix()),
        }
    }

    /// The kernel to launch for these run-time shapes: the specialised one when it is built, else the generic one.
    pub fn for_shape(kv: KvDtype, heads: u32, kv_heads: u32, head_dim: u32) -> AttentionKernel {
        let specialised = kv_heads > 0
            && heads.is_multiple_of(kv_heads)
            && ATTENTION_SHAPES.iter().any(|s| s.head_dim == head_dim && s.group() == heads / kv_heads);
        if specialised {
            AttentionKernel { kv, head_dim: Some(head_dim), group: Some(heads / kv_heads) }
        } else {
            AttentionKernel { kv, head_dim: None, group: None }
        }
    }
}

/// The specialised attention kernels: one per KV dtype and distinct (head_dim, group) of [`ATTENTION_SHAPES`]. The
/// generic kernels are written by hand in kernels-cuda/attention.cu and are not listed.
pub fn attention_kernels() -> Vec<AttentionKernel> {
    let mut out: Vec<AttentionKernel> = Vec::new();
    for shape in ATTENTION_SHAPES {
        for kv in KvDtype::ALL {
            let k = AttentionKernel { kv, head_dim: Some(shape.head_dim), group: Some(shape.group()) };
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    out
}

/// The widths of one text decoder that decode-time kernels depend on (reference/model.md §1): the hidden size, the
/// attention output width (heads x head_dim, o_proj's input), the dense MLP's intermediate size and, for MoE
/// models, the experts' intermediate size. Values from the checkpoints' config.json (runtime/src/config/known/,
/// whose test checks they agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderShape {
    pub what: &'static str,
    pub hidden: u32,
    pub attention_width: u32,
    pub intermediate: u32,
    pub expert_intermediate: Option<u32>,
}

impl DecoderShape {
    /// Input widths of the decoder's linears: q/k/v, gate/up, router and lm_head read `hidden`, o_proj the attention
    /// width, down_proj the intermediate sizes.
    pub fn linear_inputs(&self) -> Vec<u32> {
        let mut k = vec![self.hidden, self.attention_width, self.intermediate];
        k.extend(self.expert_intermediate);
        k
    }
}

pub const DECODER_SHAPES: &[DecoderShape] = &[
    DecoderShape {
        what: "GLM-4.5V / GLM-4.6V",
        hidden: 4096,
        attention_width: 96 * 128,
        intermediate: 10944,
        expert_intermediate: Some(1408),
    },
    DecoderShape {
        what: "GLM-4.1V / GLM-4.6V-Flash / Glyph",
        hidden: 4096,
        attention_width: 32 * 128,
        intermediate: 13696,
        expert_intermediate: None,
    },
];

/// Weight element types of the checkpoints glmv serves (`DT_*` in kernels-cuda/common.cuh); F32 and F16 weights
/// run the generic kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightKind {
    Bf16,
    Fp8,
}

impl WeightKind {
    pub const ALL: [WeightKind; 2] = [WeightKind::Bf16, WeightKind::Fp8];

    pub fn suffix(self) -> &'static str {
        match self {
            WeightKind::Bf16 => "bf16",
            WeightKind::Fp8 => "fp8",
        }
    }

    fn cuda_constant(self) -> &'static str {
        match self {
            WeightKind::Bf16 => "DT_BF16",
            WeightKind::Fp8 => "DT_FP8",
        }
    }
}

/// The decode-time kernels whose reduction width is fixed at compile time: a linear's GEMV (width = its input),
/// the experts' gate/up rows (width = hidden) and their down rows (width = the experts' intermediate size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowOp {
    Gemv,
    ExpertGateUp,
    ExpertDown,
}

impl RowOp {
    fn prefix(self) -> &'static str {
        match self {
            RowOp::Gemv => "gemv_vec",
            RowOp::ExpertGateUp => "moe_gate_up",
            RowOp::ExpertDown => "moe_down",
        }
    }

    fn cuda_macro(self) -> &'static str {
        match self {
            RowOp::Gemv => "GEMV_VEC_KERNEL",
            RowOp::ExpertGateUp => "MOE_GATE_UP_KERNEL",
            RowOp::ExpertDown => "MOE_DOWN_KERNEL",
        }
    }
}

/// One row kernel specialised for a weight type and reduction width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowKernel {
    pub op: RowOp,
    pub weight: WeightKind,
    pub width: u32,
}

impl RowKernel {
    /// The kernel's exported name, e.g. `gemv_vec_fp8_k4096`; the generic ones are `gemv_vec_fp8` and so on.
    pub fn symbol(&self) -> String {
        format!("{}_{}_k{}", self.op.prefix(), self.weight.suffix(), self.width)
    }
}

/// The specialised row kernels: every (operation, width) of [`DECODER_SHAPES`] for both weight types.
pub fn row_kernels() -> Vec<RowKernel> {
    let mut out: Vec<RowKernel> = Vec::new();
    for shape in DECODER_SHAPES {
        let mut wanted: Vec<(RowOp, u32)> = shape.linear_inputs().into_iter().map(|k| (RowOp::Gemv, k)).collect();
        if let Some(inter) = shape.expert_intermediate {
            wanted.extend([(RowOp::ExpertGateUp, shape.hidden), (RowOp::ExpertDown, inter)]);
        }
        for (op, width) in wanted {
            for weight in WeightKind::ALL {
                let k = RowKernel { op, weight, width };
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
    }
    out
}

/// One generated source file: a kernel group, compiled into one code object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedSource {
    /// The group's name (the embedded image's name and the file stem).
    pub group: &'static str,
    pub text: String,
}

/// The CUDA sources of every specialised kernel group; they include the templates of kernels-cuda/.
pub fn emit_cuda() -> Vec<GeneratedSource> {
    let mut text = String::from(
        "// Generated by glmv-codegen (codegen/src/lib.rs) from ATTENTION_SHAPES: attention specialised for the\n\
         // head dimension and query heads per kv head of the models glmv serves. Do not edit.\n\
         #include \"attention.cuh\"\n",
    );
    for k in attention_kernels() {
        let (d, g) = (k.head_dim.unwrap_or(0), k.group.unwrap_or(0));
        text.push_str(&format!("ATTENTION_KERNEL({}, {}, {d}, {g})\n", k.symbol(), k.kv.cuda_constant()));
    }
    let mut rows = String::from(
        "// Generated by glmv-codegen (codegen/src/lib.rs) from DECODER_SHAPES: decode-time GEMVs and expert rows\n\
         // with the reduction width of the models glmv serves fixed at compile time. Do not edit.\n\
         #include \"gemv.cuh\"\n\
         #include \"moe_rows.cuh\"\n",
    );
    for k in row_kernels() {
        rows.push_str(&format!("{}({}, {}, {})\n", k.op.cuda_macro(), k.symbol(), k.weight.cuda_constant(), k.width));
    }
    vec![
        GeneratedSource { group: "attention_specialised", text },
        GeneratedSource { group: "rows_specialised", text: rows },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_shape_gets_its_kernels() {
        let kernels = attention_kernels();
        // Three distinct (head_dim, group) pairs x three KV dtypes.
        assert_eq!(kernels.len(), 9);
        // GLM-4.5V: 96 query heads over 8 kv heads, head_dim 128.
        let k = AttentionKernel::for_shape(KvDtype::Bf16, 96, 8, 128);
        assert_eq!(k.symbol(), "attention_bf16_d128_g12");
        assert!(kernels.contains(&k));
        assert_eq!(AttentionKernel::for_shape(KvDtype::Fp8, 32, 2, 128).symbol(), "attention_fp8_d128_g16");
        assert_eq!(AttentionKernel::for_shape(KvDtype::F32, 12, 12, 128).symbol(), "attention_f32_d128_g1");
    }

    #[test]
    fn other_shapes_run_the_generic_kernels() {
        // The fixtures' tiny models, a head_dim that no model uses, and nonsense all fall back.
        assert_eq!(AttentionKernel::for_shape(KvDtype::Bf16, 4, 2, 32).symbol(), "attention_bf16");
        assert_eq!(AttentionKernel::for_shape(KvDtype::Fp8, 96, 8, 64).symbol(), "attention_fp8");
        assert_eq!(AttentionKernel::for_shape(KvDtype::F32, 5, 0, 128).symbol(), "attention_f32");
        assert_eq!(AttentionKernel::for_shape(KvDtype::F32, 7, 2, 128).symbol(), "attention_f32");
    }

    #[test]
    fn for_shape_names_only_kernels_that_are_built() {
        // The backend loads the generic kernels and attention_kernels(); whatever for_shape returns must be one.
        let built = attention_kernels();
        for kv in KvDtype::ALL {
            for (heads, kv_heads) in (1..=128).flat_map(|h| [1, 2, 3, 8, 12, 16].map(|k| (h, k))) {
                for d in [32, 48, 64, 128, 256] {
                    let k = AttentionKernel::for_shape(kv, heads, kv_heads, d);
                    assert!(k.head_dim.is_none() && k.group.is_none() || built.contains(&k), "{k:?}");
                }
            }
        }
    }

    #[test]
    fn row_kernels_cover_every_decoder_width() {
        let names: Vec<String> = row_kernels().iter().map(RowKernel::symbol).collect();
        // GLM-4.5V: 4096, 12288, 10944, 1408; GLM-4.1V adds 13696 (its o_proj reads 4096): 5 GEMV widths, and the
        // experts' gate/up (4096) and down (1408), each for BF16 and FP8.
        assert_eq!(names.len(), (5 + 2) * 2, "{names:?}");
        let expected = ["gemv_vec_fp8_k4096", "gemv_vec_bf16_k12288", "gemv_vec_fp8_k13696", "gemv_vec_bf16_k1408"];
        for name in expected.into_iter().chain(["moe_gate_up_fp8_k4096", "moe_down_bf16_k1408"]) {
            assert!(names.iter().any(|n| n == name), "{name}");
        }
        let built = |op, weight, width| row_kernels().contains(&RowKernel { op, weight, width });
        // Fixture widths and widths of other operations run the generic kernels.
        assert!(!built(RowOp::Gemv, WeightKind::Bf16, 64));
        assert!(!built(RowOp::ExpertDown, WeightKind::Fp8, 4096));
    }

    #[test]
    fn the_cuda_source_instantiates_every_kernel_once() {
        let sources = emit_cuda();
        assert_eq!(sources.len(), 2);
        let rows = &sources[1];
        assert_eq!(rows.group, "rows_specialised");
        for k in row_kernels() {
            assert_eq!(rows.text.matches(&format!("({}, ", k.symbol())).count(), 1, "{k:?}");
        }
        assert!(rows.text.contains("GEMV_VEC_KERNEL(gemv_vec_fp8_k4096, DT_FP8, 4096)"));
        assert!(rows.text.contains("MOE_DOWN_KERNEL(moe_down_fp8_k1408, DT_FP8, 1408)"));
        let text = &sources[0].text;
        assert!(text.contains("#include \"attention.cuh\""));
        for k in attention_kernels() {
            let line = format!("ATTENTION_KERNEL({}, ", k.symbol());
            assert_eq!(text.matches(&line).count(), 1, "{line}");
        }
        assert!(text.contains("ATTENTION_KERNEL(attention_bf16_d128_g12, KV_BF16, 128, 12)"));
    }
}
