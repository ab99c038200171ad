#!/usr/bin/env bash
# What a session with a GPU machine checks for the CUDA backend (issue 8), after scripts/device/prepare.sh built
# .device-bin/ here. One device call (carry [".device-bin"], timeout_s 590), or two when the session has the time:
#   bash scripts/device/gpu_check.sh all        # steps 1-3 in one call, each cut to what is left of 570 s
#   bash scripts/device/gpu_check.sh parity     # steps 1 and 2, ~7 min at most
#   bash scripts/device/gpu_check.sh serve      # step 3, ~8 min at most
# 1. parity of every operation and of whole fixture models against the CPU backend (tests/cuda_ops.rs,
#    tests/cuda_model.rs; real GLM-4.5V / GLM-4.1V / vision shapes and odd ones, and the decoder layers of both
#    families at real shapes with dummy weights);
# 2. per-operation timings of one GLM-4.5V-FP8 decode step and of a 1024-token prefill chunk
#    (benches/cuda_decode_step.rs);
# 3. `glmv serve --load-format dummy` at GLM-4.5V-FP8's real shapes (checkpoint directory from `glmv config
#    --write-dummy-checkpoint`) answering `glmv bench` 1K/1K at concurrency 1 and 16.
# Every step's output goes to $OUT (at most 8 files come back); a failing step does not stop the next ones. Tests
# that fail are rerun with every kernel family switched back to the generic kernels, then with one family off at a
# time, so one call also says which family a failure comes from (with `all`, while 300 s are left for the serve step).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/gpu-check}"
mkdir -p "$OUT"
BIN="${GLMV_CHECK_BIN:-.device-bin}"  # another directory only to try the script out
export GLMV_FIXTURES="$PWD/tests/fixtures" RUST_BACKTRACE=1 GLMV_REQUIRE_DEVICE=1
SECONDS=0
# The device tool stops a call at 600 s; every step's limit is cut to what is left of this.
BUDGET="${GLMV_CHECK_BUDGET:-570}"

WHAT="${1:-parity}"

step() {   # step FILE TIMEOUT COMMAND...: appends COMMAND's output to $OUT/FILE.txt and prints its tail
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - SECONDS - 10))
  if [ "$left" -lt 15 ]; then
    echo "== $name: skipped, the budget is spent (at ${SECONDS}s)" | tee -a "$OUT/$name.txt"
    return
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "== $name: $* (at ${SECONDS}s, limit ${limit}s)" | tee -a "$OUT/$name.txt"
  timeout "$limit" "$@" >> "$OUT/$name.txt" 2>&1
  echo "rc=$?" >> "$OUT/$name.txt"
  tail -n 15 "$OUT/$name.txt"
}

{ "$BIN/glmv" --version; nvidia-smi; } > "$OUT/nvidia-smi.txt" 2>&1
head -n 12 "$OUT/nvidia-smi.txt"
# The kernel families GLMV_CUDA_GENERIC can switch off (runtime/src/backend/cuda/paths.rs KernelPaths::NAMES).
FAMILIES="specialised-attention prefill-attention gqa-attention split-k-gemm row-kernels grouped-moe device-argmax
split-keys device-sampling cuda-graphs fp8-mma"

# Seconds of the budget a bisection leaves to the steps after it: with `all`, the serve step's (a failing test
# rerun twelve times must not cost the benchmark).
KEEP=0
[ "$WHAT" != all ] || KEEP=300

bisect() {   # bisect NAME: reruns the tests that failed in $OUT/NAME.txt with every family off, then one at a time
  local name=$1 failed
  failed=$(sed -n '/^failures:$/,/^test result/p' "$OUT/$name.txt" | grep -E '^    [a-z_0-9:]+$' | sort -u)
  [ -n "$failed" ] || return
  passes() { tail -n 1 "$OUT/$name.txt" | grep -q "^rc=0$"; }
  time_left() {
    [ $((BUDGET - SECONDS)) -gt $((KEEP + 30)) ] && return
    echo "== $name: bisection stopped at ${SECONDS}s, the rest is kept for the next steps" | tee -a "$OUT/$name.txt"
    return 1
  }
  time_left || return
  # Appended to the same file: only so many files come back from the device.
  # shellcheck disable=SC2086
  GLMV_CUDA_GENERIC=all step "$name" 90 "$BIN/$name" --test-threads 1 --nocapture --exact $failed
  passes || return
  for family in $FAMILIES; do
    time_left || return
    # shellcheck disable=SC2086
    GLMV_CUDA_GENERIC=$family step "$name" 60 "$BIN/$name" --test-threads 1 --nocapture --exact $failed
    if passes; then
      echo "== $name: the failing tests pass with GLMV_CUDA_GENERIC=$family" | tee -a "$OUT/$name.txt"
      return
    fi
  done
}

if [ "$WHAT" = parity ] || [ "$WHAT" = all ]; then
  step cuda_ops 150 "$BIN/cuda_ops" --test-threads 1 --nocapture
  bisect cuda_ops
  step cuda_model 200 "$BIN/cuda_model" --test-threads 1 --nocapture
  bisect cuda_model
  step decode_step 60 "$BIN/cuda_decode_step" --bench
  if [ "$WHAT" = parity ]; then
    echo "done in ${SECONDS}s"
    exit 0
  fi
fi

MODEL=/tmp/glm-4.5v-fp8-dummy
step config 30 "$BIN/glmv" config --model glm-4.5v --hardware h200 --quantization fp8 --write-dummy-checkpoint "$MODEL"
"$BIN/glmv" serve --model-path "$MODEL" --load-format dummy --device cuda --port 30000 --context-length 8192 \
  --max-running-requests 16 > "$OUT/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 200); do
  grep -q "listening on" "$OUT/serve.log" && break
  kill -0 $SERVER 2> /dev/null || break
  [ $((BUDGET - SECONDS)) -gt 60 ] || break
  sleep 1
done
echo "== serve (at ${SECONDS}s)"
tail -n 15 "$OUT/serve.log"
if grep -q "listening on" "$OUT/serve.log"; then
  # 1000 output tokens at ~26 ms per step (the decode-step estimate) is ~30 s per request: 2 requests at
  # concurrency 1, one wave of 16 at concurrency 16.
  for run in "1 2" "16 16"; do
    set -- $run
    step bench 130 "$BIN/glmv" bench --port 30000 --random-input-len 1000 --random-output-len 1000 \
      --random-range-ratio 1 --num-prompts "$2" --max-concurrency "$1" --seed 1 --disable-tqdm \
      --output-file "$OUT/bench.jsonl"
  done
fi
kill $SERVER 2> /dev/null
echo "done in ${SECONDS}s"
