//! Hand-checked plans (the arithmetic is in the comments) and the cross-check against the dummy loader's layout.
use super::*;
use crate::{
    config::known::{KnownModel, Precision},
    weights::WeightStore,
};

fn options(hardware: Hardware, gpus: usize) -> PlanOptions {
    PlanOptions {
        gpus,
        gpu_bytes: hardware.memory_bytes(),
        mem_fraction_static: MEM_FRACTION_STATIC,
        kv_dtype: KvDtype::Bf16,
        context_length: None,
        chunked_prefill_size: CHUNKED_PREFILL_SIZE,
    }
}

fn group<'a>(plan: &'a Plan, name: &str, dtype: Dtype) -> &'a WeightGroup {
    plan.groups.iter().find(|g| g.name == name && g.dtype == dtype).unwrap_or_else(|| panic!("no {name} {dtype}"))
}

/// GLM-4.5V-FP8 on one H200 fits, with a context shorter than the model's.
#[test]
fn glm45v_fp8_on_one_h200() {
    let config = KnownModel::Glm45v.config(Precision::Fp8).unwrap();
    let plan = Plan::new(&config, options(Hardware::H200, 1));
    // reference/model.md §8 reproduces the dump's total exactly: text 106,852,251,264 + vision 858,681,856.
    assert_eq!(plan.params, ParamCount { text: 106_852_251_264, vision: 858_681_856 });
    assert_eq!(plan.params.total(), 107_710_933_120);
    // Weight bytes by hand:
    //   FP8 (1 B): attention 46 x (2 x 12288 x 4096 + 2 x 1024 x 4096) = 5,016,387,584
    //              + layer-0 MLP 3 x 4096 x 10944 = 134,479,872
    //              + experts 45 x 128 x 3 x 4096 x 1408 = 99,656,663,040 + shared 45 x 3 x 4096 x 1408 = 778,567,680
    //              = 105,586,098,176
    //   BF16 (2 B): embed + lm_head 2 x 151552 x 4096 = 1,241,513,984 params -> 2,483,027,968
    //              norms 4096 + 46 x 2 x 4096 = 380,928 -> 761,856; q/k/v biases 46 x 14336 -> 1,318,912
    //              router gates 45 x 128 x 4096 -> 47,185,920; vision 858,681,856 -> 1,717,363,712
    //   F32 (4 B): router correction biases 45 x 128 -> 23,040
    //              scales, one per output channel: 46 x 18432 (q, k, v, o) + 25,984 (layer-0 gate, up, down)
    //              + 45 x 129 x 6912 (experts and shared: 1408 + 1408 + 4096) = 40,998,016 -> 163,992,064
    //   total 109,999,771,648 B = 110.00 GB
    assert_eq!(group(&plan, "routed experts", Dtype::F8E4M3).bytes(), 99_656_663_040);
    assert_eq!(group(&plan, "embed_tokens", Dtype::BF16).bytes(), 1_241_513_984);
    assert_eq!(group(&plan, "vision tower", Dtype::BF16).bytes(), 1_717_363_712);
    let scales: u64 = plan.groups.iter().filter(|g| g.scales).map(WeightGroup::bytes).sum();
    assert_eq!(scales, 163_992_064);
    assert_eq!(plan.weight_bytes, 109_999_771_648);
    assert_eq!(plan.weight_bytes_per_gpu, plan.weight_bytes);
    // KV: 46 layers x 2 (K, V) x 8 kv heads x 128 x 2 B.
    assert_eq!(plan.kv_bytes_per_token, 188_416);
    assert_eq!(plan.kv_bytes_per_token_per_gpu, 188_416);
    // Budget 0.85 x 141e9 = 119,850,000,000; minus the 1e9 runtime reserve and the weights:
    // 118,850,000,000 - 109,999,771,648 = 8,850,228,352 B of KV; / (188,416 x 16) = 2935 blocks = 46,960 tokens.
    assert_eq!(plan.static_budget, 119_850_000_000);
    assert_eq!(plan.kv_cache_bytes, 8_850_228_352);
    assert_eq!((plan.kv_blocks, plan.kv_tokens), (2935, 46_960));
    assert_eq!(plan.activation_headroom, 21_150_000_000);
    assert!(plan.fits(), "{:?}", plan.problem);
    // The KV cache holds fewer tokens than the model's 65,536: that is the longest sequence.
    assert_eq!((plan.context_limit, plan.max_context), (65_536, 46_960));
    // 1K+1K = 128 blocks: 2935 / 128 = 22; 8K+1K = 576 blocks: 5; one full-context sequence.
    let seqs: Vec<usize> = plan.concurrency.iter().map(|c| c.sequences).collect();
    assert_eq!(seqs, [22, 5, 1]);
    // Activations of a 2048-token chunk: 3 x 4096 + the MoE block's 8 x (1408 + 4096) + 3 x 1408 + 128 + 16 =
    // 48,400 (wider than the attention's 14336 + 12288 + 1024 + 12288 = 39,936) = 60,688 floats per token x 4 B x
    // 2048 = 497,156,096 B, well inside the 21.15 GB headroom.
    assert_eq!(plan.activation_estimate, 497_156_096);
    // The largest recorded decode step, 256 rows of the same: 15,536,128 x 4 B.
    assert_eq!(plan.graph_pool_estimate, 62_144_512);
}

/// With `--kv-cache-dtype fp8_e4m3` a token takes one byte per value plus an f32 scale per (layer, K/V, kv head).
#[test]
fn glm45v_fp8_kv_cache_on_one_h200() {
    let config = KnownModel::Glm45v.config(Precision::Fp8).unwrap();
    let plan = Plan::new(&config, PlanOptions { kv_dtype: KvDtype::Fp8E4m3, ..options(Hardware::H200, 1) });
    // 46 x 2 x 8 x (128 x 1 + 4) = 97,152 B (BF16's half, 94,208, plus 2,944 B of scales).
    assert_eq!(plan.kv_bytes_per_token, 97_152);
    // 8,850,228,352 / (97,152 x 16) = 5693 blocks = 91,088 tokens: the full 65,536 context fits.
    assert_eq!((plan.kv_blocks, plan.kv_tokens, plan.max_context), (5693, 91_088, 65_536));
    let seqs: Vec<usize> = plan.concurrency.iter().map(|c| c.sequences).collect();
    assert_eq!(seqs, [44, 9, 1]); // 5693 / 128, 5693 / 576, 5693 / 4096
}

/// GLM-4.5V-FP8 does not fit one H100; two do.
#[test]
fn glm45v_fp8_on_h100_needs_two() {
    let config = KnownModel::Glm45v.config(Precision::Fp8).unwrap();
    let one = Plan::new(&config, options(Hardware::H100, 1));
    // 0.85 x 80e9 - 1e9 = 67e9 for weights; 109,999,771,648 needed.
    assert_eq!(one.weight_room, 67_000_000_000);
    assert_eq!(
        one.problem.as_deref(),
        Some("needs 110.00 GB per GPU for weights, has 67.00 (0.85 x 80 GB budget - 1.00 GB runtime reserve)")
    );
    let two = smallest_fit(&config, options(Hardware::H100, 1), 2).expect("fits on some H100 count");
    assert_eq!(two.options.gpus, 2);
    // Per GPU at tp 2: the replicated groups whole, the rest halved (k/v: 4 of the 8 kv heads each).
    //   replicated: norms 761,856 + router gates 47,185,920 + correction biases 23,040 + vision 1,717,363,712
    //             + row-parallel scales (o, down: 46 x 4096 + 4096 + 45 x 129 x 4096) x 4 = 95,879,168
    //             = 1,861,213,696
    //   halved: (109,999,771,648 - 1,861,213,696) / 2 = 54,069,278,976
    //   = 55,930,492,672 B per GPU
    assert_eq!(two.weight_bytes_per_gpu, 55_930_492_672);
    // KV per GPU: 46 x 2 x 4 x 128 x 2 = 94,208 B/token; 67e9 - 55,930,492,672 = 11,069,507,328 B
    // / (94,208 x 16) = 7343 blocks = 117,488 tokens.
    assert_eq!(two.kv_bytes_per_token_per_gpu, 94_208);
    assert_eq!((two.kv_blocks, two.kv_tokens, two.max_context), (7343, 117_488, 65_536));
    let seqs: Vec<usize> = two.concurrency.iter().map(|c| c.sequences).collect();
    assert_eq!(seqs, [57, 12, 1]); // 7343 / 128, 7343 / 576, 7343 / 4096
}

/// Glyph (GLM-4.1V-9B shapes) in BF16 on one H100.
#[test]
fn glyph_bf16_on_one_h100() {
    let config = KnownModel::Glyph.config(Precision::Bf16).unwrap();
    let plan = Plan::new(&config, options(Hardware::H100, 1));
    // model.md §8: text 9,400,279,040 + vision 892,498,432 = 10,292,777,472 (10.29 B), all BF16.
    assert_eq!(plan.params, ParamCount { text: 9_400_279_040, vision: 892_498_432 });
    assert_eq!(plan.weight_bytes, 20_585_554_944);
    // 40 layers x 2 x 2 kv heads x 128 x 2 B.
    assert_eq!(plan.kv_bytes_per_token, 40_960);
    // 67e9 - 20,585,554,944 = 46,414,445,056 B / (40,960 x 16) = 70,822 blocks = 1,133,152 tokens.
    assert_eq!(plan.kv_cache_bytes, 46_414_445_056);
    assert_eq!((plan.kv_blocks, plan.kv_tokens), (70_822, 1_133_152));
    assert!(plan.fits());
    assert_eq!(plan.max_context, 32_768);
    let seqs: Vec<usize> = plan.concurrency.iter().map(|c| c.sequences).collect();
    assert_eq!(seqs, [553, 122, 34]); // 70,822 / 128, / 576, / 2048
}

/// The BF16 checkpoints hold the same parameters, at two bytes each (the router correction bias aside).
#[test]
fn bf16_structure_counts_the_same_parameters() {
    let config = KnownModel::Glm45v.config(Precision::Bf16).unwrap();
    let plan = Plan::new(&config, options(Hardware::B200, 4));
    assert_eq!(plan.params.total(), 107_710_933_120);
    // 45 x 128 correction biases are F32: 2 more bytes each.
    assert_eq!(plan.weight_bytes, 2 * 107_710_933_120 + 2 * 45 * 128);
    assert!(plan.groups.iter().all(|g| !g.scales && g.dtype != Dtype::F8E4M3));
}

/// The plan's weight bytes are what `--load-format dummy` makes for the same config (the dummy store's layout:
/// names, shapes and dtypes, without the bytes), for every known model and precision.
#[test]
fn weight_bytes_equal_the_dummy_layout() {
    for model in KnownModel::ALL {
        for precision in [Precision::Bf16, Precision::Fp8] {
            let config = model.config(precision).unwrap();
            let plan = Plan::new(&config, options(Hardware::H200, 1));
            let dummy = WeightStore::dummy(&config, 0);
            assert_eq!(plan.weight_bytes, dummy.total_bytes(), "{} {}", model.name(), precision.name());
        }
    }
}

/// Tensor-parallel degrees must divide the heads; kv heads are replicated past their count.
#[test]
fn tensor_parallel_degrees() {
    let glyph = KnownModel::Glyph.config(Precision::Bf16).unwrap();
    assert_eq!(tp_problem(&glyph, 3).as_deref(), Some("3 GPUs do not divide the 32 attention heads"));
    assert_eq!(tp_problem(&glyph, 4), None);
    // Glyph has 2 kv heads: at tp 4 each GPU holds one, so a token's KV per GPU is half the total.
    let plan = Plan::new(&glyph, options(Hardware::H100, 4));
    assert_eq!((plan.kv_heads_per_gpu, plan.kv_bytes_per_token_per_gpu), (1, 20_480));
    let kv = group(&plan, "attention k, v", Dtype::BF16);
    assert_eq!(plan.group_bytes_per_gpu(kv), kv.bytes() / 2);
    let odd = Plan::new(&glyph, options(Hardware::H100, 3));
    assert!(!odd.fits());
}

/// A `--context-length` the KV cache cannot hold is a reason not to fit, and more GPUs are proposed.
#[test]
fn context_length_must_fit() {
    let config = KnownModel::Glm45v.config(Precision::Fp8).unwrap();
    let asked = PlanOptions { context_length: Some(65_536), ..options(Hardware::H200, 1) };
    let plan = Plan::new(&config, asked);
    assert_eq!(
        plan.problem.as_deref(),
        Some("the KV cache left after the weights (8.85 GB per GPU) holds 46960 tokens, one sequence of 65536 needs 65536")
    );
    let next = smallest_fit(&config, asked, 2).unwrap();
    assert_eq!((next.options.gpus, next.max_context), (2, 65_536));
}
