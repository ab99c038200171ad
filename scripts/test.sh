#!/usr/bin/env bash
# The project's test command (README, .ci/run). Needs only the Rust toolchain: reference fixtures are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
# The engine core must stay no_std-friendly.
cargo build -p glmv-runtime --no-default-features
cargo test --workspace
