#!/usr/bin/env bash
# Builds, on this (GPU-less) machine, everything scripts/device/gpu_check.sh runs on a GPU machine, and puts it in
# .device-bin/ (git-ignored through .git/info/exclude), stripped, so that one device call can carry it:
#   the release `glmv` with the CUDA backend, the device test binaries (tests/cuda_ops.rs, tests/cuda_model.rs) and
#   the per-operation decode-step bench (benches/cuda_decode_step.rs).
# Then, with the device tool: run `bash scripts/device/gpu_check.sh` with carry [".device-bin"].
set -euo pipefail
cd "$(dirname "$0")/../.."
GLMV_NVCC=$(bash scripts/install-cuda-toolchain.sh)
export GLMV_NVCC
grep -qx '/.device-bin/' .git/info/exclude 2>/dev/null || echo '/.device-bin/' >> .git/info/exclude
rm -rf .device-bin && mkdir -p .device-bin
cargo build --release --features cuda --bin glmv
cp target/release/glmv .device-bin/
# The executables cargo reports for the device tests and the bench (names carry a hash).
executables() {
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])'
}
cargo test --release --features cuda --no-run --test cuda_ops --test cuda_model --message-format=json \
  | executables | while read -r name exe; do cp "$exe" ".device-bin/$name"; done
cargo bench --features cuda --bench cuda_decode_step --no-run --message-format=json \
  | executables | while read -r name exe; do cp "$exe" ".device-bin/$name"; done
strip .device-bin/*
ls -la .device-bin
size=$(du -sm .device-bin | cut -f1)
tracked=$(git ls-files -z | xargs -0 du -cm | tail -1 | cut -f1)
echo "carry .device-bin: ${size} MiB + ${tracked} MiB of tracked files (the device tool takes 64 MiB in all)"
[ $((size + tracked)) -lt 64 ] || { echo "too large to carry" >&2; exit 1; }
