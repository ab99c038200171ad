#!/usr/bin/env bash
# The project's test command (README, .ci/run). Needs the Rust toolchain, Python 3 and PyPI: reference fixtures are
# committed; nvcc comes from PyPI wheels so that a CUDA kernel that stops compiling fails here too.
set -euo pipefail
cd "$(dirname "$0")/.."
# The engine core must stay no_std-friendly.
cargo build -p glmv-runtime --no-default-features
# The CUDA backend and its device tests must build (they run on a GPU machine, see docs/BENCHMARKS.md, and below on
# the CUDA emulator).
GLMV_NVCC=$(bash scripts/install-cuda-toolchain.sh)
export GLMV_NVCC
cargo build --features cuda --tests
# ... and the GEMMs for many rows must be tensor-core code, every function the backend loads must be built
# (cuobjdump on the embedded code objects, no GPU needed); the backend's host-side logic is unit-tested.
cargo test --features cuda --test cuda_sass
cargo test -p glmv-runtime --features cuda --lib backend::cuda
# The device tests on the CUDA emulator (scripts/cuda-emulator/README.md): the same kernels, compiled for the host,
# run against the CPU backend, so a kernel that computes wrong fails here and not only on a GPU. GLMV_REQUIRE_DEVICE
# turns "no device" into a failure. Left to the GPU machine (scripts/device/gpu_check.sh), as too slow emulated:
# whole decoder layers at real shapes and 300 decode steps per fixture with and without graphs.
EMULATOR=$(bash scripts/cuda-emulator/build.sh | tail -1)
LD_LIBRARY_PATH="$EMULATOR" GLMV_REQUIRE_DEVICE=1 cargo test --features cuda --test cuda_ops -- --test-threads 1
LD_LIBRARY_PATH="$EMULATOR" GLMV_REQUIRE_DEVICE=1 cargo test --features cuda --test cuda_model -- --test-threads 1 \
  --skip real_shape_layers --skip decode_graphs
# tests/openai_client.rs drives the server with the official OpenAI Python client and curl.
GLMV_OPENAI_PYTHON=$(bash scripts/openai-client/install.sh)
export GLMV_OPENAI_PYTHON
cargo test --workspace
