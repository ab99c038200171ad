//! Whole fixture models on the CUDA backend against the CPU backend: logits of every prompt position, greedy
//! generation token for token, and prompts with images through the vision tower. Needs a CUDA device.
#![cfg(feature = "cuda")]

mod common;

use common::*;
use glmv_runtime::{
    backend::{cuda::CudaBackend, CpuBackend, KvDtype},
    engine::sampler::SamplingParams,
    model::{Grid, MediaKind},
    pipeline::{GenerateOptions, MediaInput, Pipeline, Prompt},
};

#[test]
fn fixture_models_match_cpu() {
    if let Err(e) = CudaBackend::new(0) {
        eprintln!("skipped: no usable CUDA device ({e})");
        return;
    }
    for dir in text_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let ckpt = dir.join("checkpoint");
        let gpu = Pipeline::load(&ckpt, CudaBackend::new_poisoned(0).unwrap(), &mut |_| {}).unwrap();
        let cpu = Pipeline::load(&ckpt, CpuBackend, &mut |_| {}).unwrap();
        let t = cpu.config.tokens.clone();
        let patch = cpu.vision.patch_width();
        for exp in expected_prompts(&dir) {
            // Text: every position, then against transformers too.
            let prompt = Prompt::text(exp.all_ids());
            let g = gpu.prompt_logits(&prompt, 0).unwrap();
            let c = cpu.prompt_logits(&prompt, 0).unwrap();
            let err = rel_l2(&g, &c);
            eprintln!("{name}: GPU vs CPU logits relative L2 {err:.2e}");
            assert!(err < 1e-4, "{name}: {err}");
            for i in 0..exp.all_ids().len() {
                check_row(&format!("{name} GPU position {i}"), &g[i * exp.vocab..(i + 1) * exp.vocab], exp.row(i));
            }
            // BF16 and FP8 KV caches round the same way on both backends.
            for dtype in [KvDtype::Bf16, KvDtype::Fp8E4m3] {
                let (mut g8, mut c8) = (
                    Pipeline::load(&ckpt, CudaBackend::new(0).unwrap(), &mut |_| {}).unwrap(),
                    Pipeline::load(&ckpt, CpuBackend, &mut |_| {}).unwrap(),
                );
                g8.kv_dtype = dtype;
                c8.kv_dtype = dtype;
                let err = rel_l2(&g8.prompt_logits(&prompt, 0).unwrap(), &c8.prompt_logits(&prompt, 0).unwrap());
                eprintln!("{name}: {dtype:?} KV, GPU vs CPU logits relative L2 {err:.2e}");
                assert!(err < 1e-3, "{name} {dtype:?}: {err}");
            }
            // Greedy generation, token for token.
            let options = GenerateOptions {
                max_tokens: 24,
                sampling: SamplingParams { temperature: 0.0, ..Default::default() },
                ignore_eos: true,
            };
            let p = Prompt::text(exp.prompt_ids.clone());
            let go = gpu.generate(&p, &[], &options, &mut |_, _| {}).unwrap();
            let co = cpu.generate(&p, &[], &options, &mut |_, _| {}).unwrap();
            assert_eq!(go, co, "{name}: greedy generation differs");
            // With an image and a two-frame video: the vision tower, placeholder scatter and 3D positions.
            let mut rng = safetensors_writer::Rng::new(7);
            let mut ids = vec![exp.prompt_ids[0], t.image_start];
            ids.extend(std::iter::repeat_n(t.image, 6));
            ids.extend([t.image_end, t.video_start, t.image_start]);
            ids.extend(std::iter::repeat_n(t.image, 4));
            ids.extend([t.image_end, t.image_start]);
            ids.extend(std::iter::repeat_n(t.image, 4));
            ids.extend([t.image_end, t.video_end, exp.prompt_ids[0]]);
            let media = vec![
                MediaInput {
                    kind: MediaKind::Image,
                    grid: Grid { t: 1, h: 4, w: 6 },
                    pixel_values: rng.vec(24 * patch, 1.0),
                },
                MediaInput {
                    kind: MediaKind::Video,
                    grid: Grid { t: 2, h: 4, w: 4 },
                    pixel_values: rng.vec(32 * patch, 1.0),
                },
            ];
            let mm = Prompt { ids, media };
            let err = rel_l2(&gpu.prompt_logits(&mm, 0).unwrap(), &cpu.prompt_logits(&mm, 0).unwrap());
            eprintln!("{name}: GPU vs CPU logits with image and video, relative L2 {err:.2e}");
            assert!(err < 1e-4, "{name}: {err}");
            let go = gpu.generate(&mm, &[], &options, &mut |_, _| {}).unwrap();
            let co = cpu.generate(&mm, &[], &options, &mut |_, _| {}).unwrap();
            assert_eq!(go, co, "{name}: greedy generation with media differs");
        }
    }
}
