//! Compiles the CUDA kernels ahead of time when the `cuda` feature is on: every `kernels-cuda/*.cu` and every
//! shape-specialised kernel group glmv-codegen emits becomes one fatbin with SASS for sm_90a and sm_100a plus
//! compute_90 PTX, embedded by `backend::cuda`. nvcc comes from
//! `$GLMV_NVCC`, the project's `.venv-cuda` (scripts/install-cuda-toolchain.sh) or `PATH`. Without nvcc the build
//! still succeeds: the binary then reports that its CUDA backend has no kernels and serves from the CPU.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=GLMV_NVCC");
    println!("cargo:rustc-check-cfg=cfg(glmv_cuda_kernels)");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let root = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap()).parent().unwrap().to_path_buf();
    let kernels = root.join("kernels-cuda");
    println!("cargo:rerun-if-changed={}", kernels.display());
    let Some(nvcc) = find_nvcc(&root) else {
        println!("cargo:warning=glmv: no nvcc found (set GLMV_NVCC or run scripts/install-cuda-toolchain.sh); the CUDA backend is built without kernels");
        return;
    };
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels)
        .expect("kernels-cuda exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    let generated = out.join("generated");
    std::fs::create_dir_all(&generated).unwrap();
    for source in glmv_codegen::emit_cuda() {
        let path = generated.join(format!("{}.cu", source.group));
        std::fs::write(&path, source.text).unwrap();
        sources.push(path);
    }
    let mut table = String::from("pub static KERNEL_IMAGES: &[(&str, &[u8])] = &[\n");
    for src in &sources {
        let name = src.file_stem().unwrap().to_string_lossy().to_string();
        let fatbin = out.join(format!("{name}.fatbin"));
        let status = Command::new(&nvcc)
            .args(["-fatbin", "-O3", "-std=c++17", "--expt-relaxed-constexpr"])
            .args(["-gencode", "arch=compute_90a,code=sm_90a"])
            .args(["-gencode", "arch=compute_100a,code=sm_100a"])
            .args(["-gencode", "arch=compute_90,code=compute_90"])
            .arg("-I")
            .arg(&kernels)
            .arg("-o")
            .arg(&fatbin)
            .arg(src)
            .status()
            .unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
        assert!(status.success(), "nvcc failed on {}", src.display());
        table += &format!("    ({name:?}, include_bytes!({:?})),\n", fatbin.display().to_string());
    }
    table += "];\n";
    std::fs::write(out.join("cuda_kernels.rs"), table).unwrap();
    println!("cargo:rustc-cfg=glmv_cuda_kernels");
}

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    if let Some(p) = env::var_os("GLMV_NVCC") {
        return Some(PathBuf::from(p));
    }
    let venv = root.join(".venv-cuda/lib");
    if let Ok(entries) = std::fs::read_dir(&venv) {
        for e in entries.flatten() {
            let p = e.path().join("site-packages/nvidia/cu13/bin/nvcc");
            if p.exists() {
                return Some(p);
            }
        }
    }
    let found = Command::new("nvcc").arg("--version").output().is_ok_and(|o| o.status.success());
    found.then(|| PathBuf::from("nvcc"))
}
