#!/usr/bin/env bash
# `glmv bench` against `glmv serve` on the built-in demo model (random weights, CPU backend) with the SGLang
# cookbook's GLM-4.5V text workload: random 1000-token prompts and 1000-token outputs (bench_serving's lengths rule,
# --random-range-ratio 0), request rate inf, concurrency 1 (10 prompts) and 16 (80 prompts).
# Prints both result blocks, keeps the JSON records in target/bench-demo.jsonl and rewrites the demo-serving table
# of docs/BENCHMARKS.md from them (run it on a quiet machine: the load average is recorded next to the figures).
# Usage: scripts/bench/demo_serving.sh            (PORT=... to change the port)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin glmv
BIN=target/release/glmv
PORT="${PORT:-30123}"
"$BIN" serve --port "$PORT" --device cpu > target/bench-demo-serve.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (echo > "/dev/tcp/127.0.0.1/$PORT") 2> /dev/null && break
  sleep 0.2
done
rm -f target/bench-demo.jsonl
LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
for run in "1 10" "16 80"; do
  set -- $run
  "$BIN" bench --port "$PORT" --dataset-name random --random-input-len 1000 --random-output-len 1000 \
      --num-prompts "$2" --max-concurrency "$1" --request-rate inf --seed 1 --disable-tqdm \
      --output-file target/bench-demo.jsonl
done
python3 scripts/bench/demo_table.py target/bench-demo.jsonl docs/BENCHMARKS.md "$LOAD_BEFORE" "$(cut -d' ' -f1 /proc/loadavg)"
