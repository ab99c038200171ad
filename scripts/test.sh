#!/usr/bin/env bash
# The project's test command (README, .ci/run). Needs the Rust toolchain, Python 3 and PyPI: reference fixtures are
# committed; nvcc comes from PyPI wheels so that a CUDA kernel that stops compiling fails here too.
set -euo pipefail
cd "$(dirname "$0")/.."
# The engine core must stay no_std-friendly.
cargo build -p glmv-runtime --no-default-features
# The CUDA backend and its device tests must build (they run on a GPU machine; see docs/BENCHMARKS.md).
GLMV_NVCC=$(bash scripts/install-cuda-toolchain.sh)
export GLMV_NVCC
cargo build --features cuda --tests
# ... and the GEMMs for many rows must be tensor-core code, every function the backend loads must be built
# (cuobjdump on the embedded code objects, no GPU needed); the backend's host-side logic is unit-tested.
cargo test --features cuda --test cuda_sass
cargo test -p glmv-runtime --features cuda --lib backend::cuda
# tests/openai_client.rs drives the server with the official OpenAI Python client and curl.
GLMV_OPENAI_PYTHON=$(bash scripts/openai-client/install.sh)
export GLMV_OPENAI_PYTHON
cargo test --workspace
