//! The kernels embedded in a `--features cuda` build use tensor cores where the issue asks for them: the sm_90a code
//! object of every GEMM used for more than a few rows (prefill, vision, and the grouped expert GEMMs of MoE layers)
//! and of the prefill attention kernel holds HMMA instructions. Reads the fatbins this binary embeds with `cuobjdump` from the PyPI CUDA toolchain
//! (scripts/install-cuda-toolchain.sh, which scripts/test.sh runs); no GPU is needed.
#![cfg(feature = "cuda")]

use std::{path::PathBuf, process::Command};

use glmv_runtime::backend::cuda::{Kernels, KERNEL_IMAGES};

/// cuobjdump next to `$GLMV_NVCC`, else in the project's .venv-cuda.
fn cuobjdump() -> PathBuf {
    if let Some(nvcc) = std::env::var_os("GLMV_NVCC") {
        return PathBuf::from(nvcc).with_file_name("cuobjdump");
    }
    let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-cuda/lib");
    let found = std::fs::read_dir(&lib)
        .ok()
        .and_then(|mut d| d.next())
        .map(|e| e.unwrap().path().join("site-packages/nvidia/cu13/bin/cuobjdump"));
    found.filter(|p| p.exists()).expect("cuobjdump: run scripts/install-cuda-toolchain.sh or set GLMV_NVCC")
}

/// SASS of each function of one architecture's code object in a fatbin: (function name, its instructions).
fn sass_functions(image: &[u8], arch: &str) -> Vec<(String, String)> {
    // Tests run in parallel: each call gets its own file.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("glmv-sass-{}-{call}-{arch}.fatbin", std::process::id()));
    std::fs::write(&path, image).unwrap();
    let out = Command::new(cuobjdump()).arg("-sass").arg(&path).output().expect("run cuobjdump");
    std::fs::remove_file(&path).unwrap();
    assert!(out.status.success(), "cuobjdump: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut functions = Vec::new();
    for object in text.split("Fatbin elf code:").skip(1) {
        if !object.lines().any(|l| l.trim() == format!("arch = {arch}")) {
            continue;
        }
        for f in object.split("Function : ").skip(1) {
            let (name, body) = f.split_once('\n').unwrap_or((f, ""));
            functions.push((name.trim().to_string(), body.to_string()));
        }
    }
    functions
}

/// The tensor-core instructions (HMMA, or Hopper's warpgroup HGMMA/QGMMA) of each named function of `image`'s sm_90a
/// code object, asserting there is at least one in each.
fn assert_tensor_cores(image: &str, names: &[String]) {
    let (_, bytes) = KERNEL_IMAGES.iter().find(|(n, _)| *n == image).unwrap_or_else(|| panic!("{image} not embedded"));
    let functions = sass_functions(bytes, "sm_90a");
    assert!(!functions.is_empty(), "no sm_90a code object in the {image} image");
    for name in names {
        let (_, sass) = functions.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} missing"));
        let mma = sass.lines().filter(|l| ["HMMA", "HGMMA", "QGMMA"].iter().any(|op| l.contains(op))).count();
        eprintln!("{image}.{name}: {mma} tensor-core instructions");
        assert!(mma > 0, "{name} has no tensor-core instruction");
    }
}

const DTYPES: [&str; 4] = ["bf16", "fp8", "f16", "f32"];

#[test]
fn prefill_gemms_use_tensor_cores_on_sm90a() {
    assert_tensor_cores("gemm", &DTYPES.map(|d| format!("gemm_tc_{d}")));
    // FP8 weights times FP8 activations: mma.sync on E4M3 (Hopper runs it as F16 HMMA; its FP8 tensor cores are
    // wgmma's), both operands staged 16 bytes at a time.
    assert_tensor_cores("gemm", &["gemm_fp8_tc".to_string()]);
}

/// The grouped expert GEMMs that run MoE layers over many (token, expert) pairs.
#[test]
fn grouped_expert_gemms_use_tensor_cores_on_sm90a() {
    let mut names: Vec<String> =
        DTYPES.iter().flat_map(|d| [format!("moe_gate_up_tc_{d}"), format!("moe_down_tc_{d}")]).collect();
    names.extend(["moe_gate_up_fp8x".to_string(), "moe_down_fp8x".to_string()]);
    assert_tensor_cores("moe", &names);
}

/// The BF16 and FP8 tensor-core GEMMs stage their tiles with 16-byte loads (tc_tile_rows in kernels-cuda/mma.cuh)
/// where K allows, not one element at a time.
#[test]
fn bf16_and_fp8_gemm_tiles_load_16_bytes_at_a_time() {
    for (image, names) in [
        ("gemm", vec!["gemm_tc_bf16", "gemm_tc_fp8", "gemm_fp8_tc"]),
        (
            "moe",
            vec![
                "moe_gate_up_tc_bf16",
                "moe_gate_up_tc_fp8",
                "moe_down_tc_bf16",
                "moe_down_tc_fp8",
                "moe_gate_up_fp8x",
                "moe_down_fp8x",
            ],
        ),
    ] {
        let (_, bytes) = KERNEL_IMAGES.iter().find(|(n, _)| *n == image).unwrap();
        let functions = sass_functions(bytes, "sm_90a");
        for name in names {
            let (_, sass) = functions.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} missing"));
            // LDG, or a generic LD where the pointer comes from a table the compiler cannot place in global memory.
            let wide = sass.lines().filter(|l| l.contains("LDG.E.128") || l.contains(" LD.E.128")).count();
            eprintln!("{image}.{name}: {wide} 16-byte global loads");
            assert!(wide >= 2, "{name}: no 16-byte tile loads");
        }
    }
}

/// Attention over prefill chunks, and over decode rows a kv head's query heads at a time.
#[test]
fn prefill_and_gqa_attention_use_tensor_cores_on_sm90a() {
    let names: Vec<String> = ["bf16", "fp8", "f32"]
        .iter()
        .flat_map(|kv| [format!("attention_tc_{kv}_d128"), format!("attention_gqa_tc_{kv}_d128")])
        .collect();
    assert_tensor_cores("attention_tc", &names);
}

/// Every attention kernel glmv-codegen lists is built for both architectures: the backend looks each up by name
/// when it loads, so a missing one would stop the CUDA backend from starting.
#[test]
fn specialised_attention_kernels_are_built() {
    let (_, image) = KERNEL_IMAGES
        .iter()
        .find(|(name, _)| *name == "attention_specialised")
        .expect("the attention_specialised kernel image is embedded");
    for arch in ["sm_90a", "sm_100a"] {
        let functions = sass_functions(image, arch);
        for k in glmv_codegen::attention_kernels() {
            assert!(functions.iter().any(|(n, _)| *n == k.symbol()), "{} missing for {arch}", k.symbol());
        }
    }
}

/// Every function the CUDA backend looks up when it starts is in its image, for both architectures: a missing or
/// misnamed one would stop the backend on the first GPU it meets.
#[test]
fn every_function_the_backend_loads_is_built() {
    for arch in ["sm_90a", "sm_100a"] {
        let functions: Vec<(&str, Vec<String>)> = KERNEL_IMAGES
            .iter()
            .map(|(image, bytes)| (*image, sass_functions(bytes, arch).into_iter().map(|(n, _)| n).collect()))
            .collect();
        let looked_up = std::cell::RefCell::new(0);
        let kernels = Kernels::<String>::resolve(&|image, name| {
            let (_, names) = functions.iter().find(|(i, _)| *i == image).expect("image embedded");
            assert!(names.iter().any(|n| n == name), "{image}.{name} missing for {arch}");
            *looked_up.borrow_mut() += 1;
            Ok(format!("{image}.{name}"))
        });
        assert!(kernels.is_ok());
        eprintln!("{arch}: {} functions found", looked_up.borrow());
    }
}
