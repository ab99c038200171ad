//! The text decoder of every reference checkpoint (both families; BF16, FP8 per-channel, FP8 block-128) against the
//! logits transformers computed in float32 (scripts/fixtures): every prompt position, then 16 teacher-forced decode
//! steps through the KV cache, and the same positions again through chunked prefill.
mod common;

use common::*;
use glmv_runtime::{
    backend::{CpuBackend, KvDtype},
    engine::sampler::SamplingParams,
    pipeline::{GenerateOptions, Pipeline, Prompt},
};

#[test]
fn text_logits_match_transformers() {
    for dir in text_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let p = Pipeline::load(&dir.join("checkpoint"), CpuBackend, &mut |_| {}).unwrap();
        let mut worst = 0f64;
        for (k, exp) in expected_prompts(&dir).iter().enumerate() {
            let tag = format!("{name} prompt {k}");
            assert_eq!(p.tokenizer.encode(&exp.text).unwrap(), exp.prompt_ids, "{tag}: token ids");
            let n = exp.prompt_ids.len();

            // Prefill: every prompt position.
            let logits = p.prompt_logits(&Prompt::text(exp.prompt_ids.clone()), 0).unwrap();
            for (i, row) in logits.chunks(exp.vocab).enumerate() {
                worst = worst.max(check_row(&format!("{tag} prefill position {i}"), row, exp.row(i)));
            }

            // Decode: feed the 16 continuation tokens one at a time through the KV cache.
            let options = GenerateOptions {
                max_tokens: exp.continuation_ids.len() + 1,
                sampling: SamplingParams { temperature: 0.0, ..Default::default() },
                ignore_eos: true,
            };
            let mut rows = Vec::new();
            p.generate(&Prompt::text(exp.prompt_ids.clone()), &exp.continuation_ids, &options, &mut |_, l| {
                rows.push(l.to_vec())
            })
            .unwrap();
            assert_eq!(rows.len(), exp.continuation_ids.len() + 1);
            for (s, row) in rows.iter().enumerate() {
                worst = worst.max(check_row(&format!("{tag} decode step {s}"), row, exp.row(n - 1 + s)));
            }

            // Chunked prefill over prompt + continuation: chunks straddle KV blocks and each other.
            let all = exp.all_ids();
            let chunked = p.prompt_logits(&Prompt::text(all), 5).unwrap();
            for (i, row) in chunked.chunks(exp.vocab).enumerate() {
                worst = worst.max(check_row(&format!("{tag} chunked position {i}"), row, exp.row(i)));
            }
        }
        eprintln!("{name}: worst relative L2 error {worst:.2e}");
    }
}

/// The BF16 and FP8 KV caches stay close to transformers (which keeps f32 activations). FP8 keeps 3 mantissa bits,
/// so its bound is loose (measured 2e-2 .. 1.1e-1 on these random models, the largest where an expert choice
/// flips); the exactness of the rounding itself is tested in `weights::dtype` and `backend`.
#[test]
fn kv_cache_dtypes_stay_close() {
    for dir in text_fixtures() {
        let mut p = Pipeline::load(&dir.join("checkpoint"), CpuBackend, &mut |_| {}).unwrap();
        let exp = &expected_prompts(&dir)[0];
        for (dtype, tol) in [(KvDtype::Bf16, 1e-2), (KvDtype::Fp8E4m3, 0.2)] {
            p.kv_dtype = dtype;
            let logits = p.prompt_logits(&Prompt::text(exp.all_ids()), 0).unwrap();
            let err = rel_l2(&logits, &exp.logits);
            eprintln!("{}: {dtype:?} KV, relative L2 {err:.2e}", dir.display());
            assert!(err < tol, "{dtype:?}: {err}");
        }
    }
}
