//! Build script of the `glmv` binary.
//!
//! Its job (DESIGN.md) is to ask `codegen` for shape-specialised kernel sources, compile them per GPU arch when
//! nvcc / clang are present, and embed the code objects. No GPU backend exists yet, so for now it only records
//! which backends this binary carries, so that `glmv --version` says so instead of guessing.
fn main() {
    println!("cargo:rustc-env=GLMV_BACKENDS=cpu");
    println!("cargo:rerun-if-changed=build.rs");
}
