//! Build script of the `glmv` binary: records which backends this binary carries, so that `glmv --version` says so
//! instead of guessing. The GPU kernels themselves are generated (glmv-codegen) and compiled by runtime/build.rs.
fn main() {
    let backends = if std::env::var_os("CARGO_FEATURE_CUDA").is_some() { "cpu, cuda" } else { "cpu" };
    println!("cargo:rustc-env=GLMV_BACKENDS={backends}");
    println!("cargo:rerun-if-changed=build.rs");
}
