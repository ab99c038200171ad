#!/usr/bin/env bash
# Installs nvcc (and cuobjdump/nvdisasm for SASS checks) from PyPI wheels into .venv-cuda, no GPU or CUDA install
# needed. nvcc is pinned to CUDA 13.0, the oldest 13.x a R580 driver runs, so that our cubins load on every
# CUDA-13 driver (minor-version compatibility). Prints the nvcc path.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-cuda
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.88 \
  nvidia-cuda-cccl==13.0.85 \
  nvidia-cuda-cuobjdump==13.2.86 nvidia-cuda-nvdisasm==13.2.86 >&2
NVCC=$(realpath "$(ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc)")
"$NVCC" --version >&2
echo "$NVCC"
