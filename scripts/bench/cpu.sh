#!/usr/bin/env bash
# Regenerates the CPU part of docs/BENCHMARKS.md: runs the criterion benches (host paths, engine, CPU kernels) and
# rewrites the table between the `cpu-benches` markers with each bench's median, the machine and the date.
# Usage: scripts/bench/cpu.sh [criterion filter]   (MEASURE=seconds per bench, default 5)
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf target/criterion
cargo bench --bench host --bench engine --bench cpu_kernels -- \
    --warm-up-time 1 --measurement-time "${MEASURE:-5}" "$@"
python3 scripts/bench/criterion_table.py target/criterion docs/BENCHMARKS.md
