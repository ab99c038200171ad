// Checks the emulator through the driver API, as cudarc uses it (build.sh builds and runs this): correct kernels
// give the right numbers, mma.sync is a matrix product under the PTX fragment layouts, and a missing barrier, a
// write past an allocation, a misaligned load and a divergent shuffle are caught. Exits non-zero if a check fails.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  printf("%s: %s\n", ok ? "ok" : "FAILED", what);
  if (!ok) ++failures;
}

CUfunction function(const char* name) {
  CUmodule m;
  CUfunction f;
  cuModuleLoadData(&m, nullptr);
  if (cuModuleGetFunction(&f, m, name) != CUDA_SUCCESS) {
    printf("FAILED: no kernel %s\n", name);
    exit(1);
  }
  return f;
}

template <class T>
CUdeviceptr upload(const std::vector<T>& v) {
  CUdeviceptr p;
  cuMemAlloc(&p, v.size() * sizeof(T));
  cuMemcpyHtoD(p, v.data(), v.size() * sizeof(T));
  return p;
}

template <class T>
std::vector<T> download(CUdeviceptr p, size_t n) {
  std::vector<T> v(n);
  cuMemcpyDtoH(v.data(), p, n * sizeof(T));
  return v;
}

CUresult launch(CUfunction f, unsigned grid, unsigned block, std::vector<void*> args) {
  return cuLaunchKernel(f, grid, 1, 1, block, 1, 1, 0, nullptr, args.data(), nullptr);
}

void block_sums() {
  const int rows = 7, n = 1000;
  std::vector<float> x(rows * n);
  std::mt19937 rng(1);
  for (float& v : x) v = std::uniform_real_distribution<float>(-1, 1)(rng);
  CUdeviceptr dx = upload(x), dout;
  cuMemAlloc(&dout, rows * 4);
  int nn = n;
  check(launch(function("block_sum"), rows, 256, {&dx, &nn, &dout}) == CUDA_SUCCESS, "block_sum runs");
  auto out = download<float>(dout, rows);
  bool ok = true;
  for (int r = 0; r < rows; ++r) {
    double want = 0;
    for (int i = 0; i < n; ++i) want += x[r * n + i];
    ok &= std::fabs(out[r] - want) < 1e-3;
  }
  check(ok, "block_sum: seven blocks of 256 threads sum their rows (shared memory, barrier, shuffles)");
}

// The largest error of kernel `kernel` (one warp's mma of A, 16 x k, by B stored [n][k], 8 x k) against the f64
// product, on operands drawn in (-2, 2) (A times a_scale) and stored as `encode(value, code)` returns them.
template <class Code, class Encode>
double mma_error(const char* kernel, int k, float a_scale, Encode encode, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-2, 2);
  std::vector<Code> a(16 * k), b(8 * k);
  std::vector<float> av(a.size()), bv(b.size());
  for (size_t i = 0; i < a.size(); ++i) av[i] = encode(u(rng) * a_scale, a[i]);
  for (size_t i = 0; i < b.size(); ++i) bv[i] = encode(u(rng), b[i]);
  CUdeviceptr da = upload(a), db = upload(b), dc;
  cuMemAlloc(&dc, 16 * 8 * 4);
  launch(function(kernel), 1, 32, {&da, &db, &dc});
  auto c = download<float>(dc, 16 * 8);
  double worst = 0;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      double want = 0;
      for (int kk = 0; kk < k; ++kk) want += (double)av[i * k + kk] * bv[j * k + kk];
      worst = std::max(worst, std::fabs(c[i * 8 + j] - want));
    }
  return worst;
}

void mma() {
  std::mt19937 rng(2);
  auto bf16 = [](float v, uint16_t& code) {
    __nv_bfloat16 h = __float2bfloat16(v);
    memcpy(&code, &h, 2);
    return __bfloat162float(h);
  };
  auto e4m3 = [](float v, uint8_t& code) {
    __nv_fp8_e4m3 q(v);
    code = q.__x;
    return static_cast<float>(q);
  };
  check(mma_error<uint16_t>("mma_bf16", 16, 1.0f, bf16, rng) < 1e-4,
        "mma.sync m16n8k16 bf16 is A x B under the PTX fragment layout");
  check(mma_error<uint8_t>("mma_e4m3", 32, 50.0f, e4m3, rng) < 1e-3,
        "mma.sync m16n8k32 e4m3 is A x B under the PTX fragment layout");
}

void mistakes() {
  CUdeviceptr out;
  cuMemAlloc(&out, 128 * 4);
  bool stale = false;
  for (int run = 0; run < 2 && !stale; ++run) {
    launch(function("missing_barrier"), 1, 128, {&out});
    auto got = download<int>(out, 128);
    for (int t = 0; t < 128; ++t) stale |= got[t] != (t + 1) % 128 + 1;
  }
  check(stale, "a read of shared memory without the barrier before it gives a stale value");

  // Blocks that write all of their shared memory, then blocks on the same workers that write half of it.
  CUdeviceptr slots;
  cuMemAlloc(&slots, 8 * 64 * 4);
  int all = 64, half = 32;
  launch(function("unwritten_shared"), 8, 64, {&all, &slots});
  launch(function("unwritten_shared"), 8, 64, {&half, &slots});
  auto read = download<float>(slots, 8 * 64);
  bool poisoned = true;
  for (int i = 0; i < 8 * 64; ++i) poisoned &= i % 64 < 32 ? read[i] == 1.0f : std::isnan(read[i]);
  check(poisoned, "shared memory no thread of the block wrote reads as NaN, not as the previous block's values");

  CUdeviceptr small;
  cuMemAlloc(&small, 100 * 4);
  int n = 100;
  check(launch(function("past_the_end"), 1, 64, {&small, &n}) == CUDA_ERROR_ILLEGAL_ADDRESS,
        "a write one element past an allocation fails the launch with CUDA_ERROR_ILLEGAL_ADDRESS");
  int aligned = 4, misaligned = 2;
  check(launch(function("load_float4"), 1, 16, {&small, &aligned, &out}) == CUDA_SUCCESS,
        "16-byte loads at 16-byte boundaries run");
  check(launch(function("load_float4"), 1, 16, {&small, &misaligned, &out}) == CUDA_ERROR_MISALIGNED_ADDRESS,
        "a 16-byte load at an 8-byte boundary fails the launch with CUDA_ERROR_MISALIGNED_ADDRESS");
  check(launch(function("divergent_shuffle"), 1, 32, {&out}) == CUDA_ERROR_LAUNCH_FAILED,
        "half a warp at a full-mask shuffle fails the launch with CUDA_ERROR_LAUNCH_FAILED");
  std::vector<void*> sum_args{&small, &n, &out};
  check(cuLaunchKernel(function("block_sum"), 1, 65536, 1, 32, 1, 1, 0, nullptr, sum_args.data(), nullptr) ==
            CUDA_ERROR_INVALID_VALUE,
        "a grid of 65536 blocks in y is refused (CUDA_ERROR_INVALID_VALUE), as by a GPU's driver");
  check(launch(function("block_sum"), 1, 32, std::vector<void*>{&small, &n, &out}) == CUDA_SUCCESS,
        "launches after a failed one run again");
}

}  // namespace

int main() {
  cuInit(0);
  block_sums();
  mma();
  mistakes();
  printf("%s\n", failures == 0 ? "emulator self-test passed" : "emulator self-test FAILED");
  return failures == 0 ? 0 : 1;
}
