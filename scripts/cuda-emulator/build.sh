#!/usr/bin/env bash
# Builds the CUDA emulator (README.md here) into target/cuda-emulator/: libcuda.so.1, the stand-in driver, and
# modules/<image>.so, every kernels-cuda/*.cu and every glmv-codegen group compiled for the host with device.h;
# then runs its self-test (selftest.cpp over selftest.cu). Needs g++ and the CUDA headers of the pip toolchain
# (scripts/install-cuda-toolchain.sh). Prints, last, the directory to put first on LD_LIBRARY_PATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=scripts/cuda-emulator
OUT=${GLMV_EMU_OUT:-$ROOT/target/cuda-emulator}
NVCC=${GLMV_NVCC:-$(bash scripts/install-cuda-toolchain.sh | tail -1)}
CUDA_INCLUDE=$(cd "$(dirname "$NVCC")/../include" && pwd)
[ -f "$CUDA_INCLUDE/cuda.h" ] || { echo "no cuda.h beside $NVCC" >&2; exit 1; }
CXX=${CXX:-g++}
# -fno-strict-aliasing: kernels reinterpret vectors of bytes, as CUDA allows; -ffp-contract=off: no FMA contraction
# that nvcc would not make either way (results stay within the tests' bars either way).
FLAGS=(-std=c++20 -O2 -g0 -fPIC -fno-strict-aliasing -ffp-contract=off -w -I "$CUDA_INCLUDE" -I "$ROOT/$HERE")

# A GPU faults on an access not aligned to its size (a 16-byte load at an 8-byte boundary), x86-64 does not: the
# kernels' typed accesses are checked, and the runtime fails the launch (CUDA_ERROR_MISALIGNED_ADDRESS).
KERNEL_CHECKS=(-fsanitize=alignment -fno-sanitize-recover=alignment)

mkdir -p "$OUT/modules" "$OUT/generated" "$OUT/obj"
"$CXX" "${FLAGS[@]}" -O3 -shared -Wl,-soname,libcuda.so.1 -o "$OUT/libcuda.so.1" "$HERE/runtime.cpp" -lpthread -ldl
ln -sf libcuda.so.1 "$OUT/libcuda.so"

cargo run -q -p glmv-codegen --bin glmv-emit-cuda -- "$OUT/generated"
build_module() {   # build_module SOURCE DIR: DIR/<stem>.so with a table of the kernels SOURCE exports
  local src=$1 dir=$2 name obj table
  name=$(basename "$src" .cu)
  obj="$OUT/obj/$name.o"
  "$CXX" "${FLAGS[@]}" -DGLMV_CUDA_EMULATOR -include device.h -I "$ROOT/kernels-cuda" -c -x c++ "$src" -o "$obj"
  # The kernels are the extern "C" functions the source defines (everything else is C++, mangled _Z...).
  table="$OUT/obj/$name.table.cpp"
  {
    echo "#include \"$(realpath "$src")\""
    echo 'extern "C" const GlmvEmuKernel glmv_emu_kernels[] = {'
    nm -g --defined-only "$obj" | awk '$2 == "T" && $3 !~ /^_/ { print "    GLMV_EMU_KERNEL(" $3 ")," }'
    echo '    {nullptr, nullptr, nullptr, nullptr}};'
    # Makes the calling thread's copy of the module's __shared__ arrays exist, for the runtime to poison per block.
    echo 'extern "C" void glmv_emu_touch_shared() { static thread_local volatile char anchor; anchor = 0; }'
  } > "$table"
  "$CXX" "${FLAGS[@]}" "${KERNEL_CHECKS[@]}" -DGLMV_CUDA_EMULATOR -include device.h -I "$ROOT/kernels-cuda" \
    -I "$(dirname "$src")" -c -x c++ "$table" -o "$table.o"
  # Linked without libubsan: the checks' handler is the runtime's.
  "$CXX" -shared -o "$dir/$name.so" "$table.o" -L "$OUT" -l:libcuda.so.1 -Wl,-rpath,"$OUT"
}
pids=()
for src in kernels-cuda/*.cu "$OUT"/generated/*.cu; do
  build_module "$src" "$OUT/modules" &
  pids+=($!)
done
mkdir -p "$OUT/selftest"
build_module "$HERE/selftest.cu" "$OUT/selftest" &
pids+=($!)
"$CXX" "${FLAGS[@]}" -o "$OUT/selftest/selftest" "$HERE/selftest.cpp" -L "$OUT" -l:libcuda.so.1 -Wl,-rpath,"$OUT"
for p in "${pids[@]}"; do wait "$p"; done
GLMV_EMU_MODULES="$OUT/selftest" "$OUT/selftest/selftest" >&2
echo "$OUT"
