// y[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]), x f32 [M, K], W [N, K] in its checkpoint dtype, y with row
// stride ldy (a linear made of several checkpoint tensors writes each into its own column range).
// Many rows (prefill, vision, MoE experts over their gathered rows): BF16 tensor-core tiles (mma.sync m16n8k16,
// f32 accumulation). Few rows (decode): GEMV kernels that stream the weights once.
#include "gemv.cuh"
#include "mma.cuh"

// Many rows: one 64 x 64 tile of y per block (mma.cuh). Split K (few row tiles, so few blocks): block z sums
// columns [z * k_split, (z + 1) * k_split) of K into partial[z] ([M, N], no bias), which gemm_split_reduce adds up;
// without (partial == nullptr) the block sums all of K into y.
template <int DT>
__device__ void gemm_tc(const float* x, int M, int K, const void* w, WeightScale s, const float* bias, int N, float* y,
                        int ldy, int k_split, float* partial) {
  constexpr bool SPLIT_W = DT == DT_F32 || DT == DT_F16;
  int m0 = blockIdx.y * TC_BM, n0 = blockIdx.x * TC_BN;
  KRange range{0, K};
  if (partial != nullptr) {
    range.begin = blockIdx.z * k_split;
    range.end = min(K, range.begin + k_split);
    y = partial + (size_t)blockIdx.z * M * N;
    ldy = N;
    bias = nullptr;
  }
  TcScaling scaling = tc_scaling(s);
  WeightScale staged = s;
  if (scaling.late) staged.scale = nullptr;
  float total[2][4][4] = {};
  __shared__ __align__(16) TcSmem<SPLIT_W> sm;
  auto w_late = [&](int c, int kb) { return scale_at(s, min(n0 + c, N - 1), kb); };
  if (tc_rows_apply<DT>(K, scaling, s.scale != nullptr)) {
    if constexpr (!SPLIT_W) {
      constexpr int EB = elem_bytes<DT>();
      tc_tile_rows<DT>(
          K, sm, [&](int r) { return m0 + r < M ? x + (size_t)(m0 + r) * K : nullptr; },
          [&](int c) { return n0 + c < N ? static_cast<const char*>(w) + (size_t)(n0 + c) * K * EB : nullptr; },
          scaling, w_late, total, range);
    }
  } else {
    tc_tile<SPLIT_W>(
        K, sm,
        [&](int r, int k) {
          int m = m0 + r;
          return (m < M && k < K) ? x[(size_t)m * K + k] : 0.0f;
        },
        [&](int c, int k) {
          int n = n0 + c;
          return (n < N && k < K) ? weight_at<DT>(w, staged, n, k, K) : 0.0f;
        },
        scaling, w_late, total, range);
  }
  tc_store(total, m0, n0, M, N, bias, y, ldy);
}

// FP8 activations times FP8 weights (fp8_tile in mma.cuh), one 64 x 64 tile of y per block as gemm_tc: xq [M, K]
// E4M3 codes with scales xs [M, ceil(K / x_group)] (x_group = K for one per token), w [N, K] E4M3 with scales s;
// y = sum_k (xq * sx)(w * sw) (+ bias). Needs K % 16 == 0 and x_group and the weight's column block multiples of
// TC_BK (or all of K); runtime/src/backend/cuda/fp8_inputs.rs checks.
extern "C" __global__ void __launch_bounds__(128)
    gemm_fp8_tc(const uint8_t* xq, const float* xs, int x_group, int M, int K, const uint8_t* w, WeightScale s,
                const float* bias, int N, float* y, int ldy) {
  int m0 = blockIdx.y * TC_BM, n0 = blockIdx.x * TC_BN;
  int x_groups = (K + x_group - 1) / x_group;
  float total[2][4][4] = {};
  fp8_tile(
      K, x_group, fp8_weight_block(s, K),
      [&](int r) { return m0 + r < M ? xq + (size_t)(m0 + r) * K : nullptr; },
      [&](int r, int g) { return xs[(size_t)min(m0 + r, M - 1) * x_groups + g]; },
      [&](int c) { return n0 + c < N ? w + (size_t)(n0 + c) * K : nullptr; },
      [&](int c, int b) { return scale_at(s, min(n0 + c, N - 1), b); }, total);
  tc_store(total, m0, n0, M, N, bias, y, ldy);
}

// Few rows (decode): one warp per output column, all rows at once. M <= GEMV_MAX_ROWS (gemv.cuh).
template <int DT>
__device__ void gemv(const float* x, int M, int K, const void* w, WeightScale s, const float* bias, int N, float* y,
                     int ldy) {
  int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (warp >= N) return;
  int n = warp;
  float acc[GEMV_MAX_ROWS] = {};
  for (int k = lane; k < K; k += 32) {
    float wv = weight_at<DT>(w, s, n, k, K);
#pragma unroll
    for (int m = 0; m < GEMV_MAX_ROWS; ++m)
      if (m < M) acc[m] += x[(size_t)m * K + k] * wv;
  }
  for (int m = 0; m < M; ++m) {
    float v = warp_sum(acc[m]);
    if (lane == 0) y[(size_t)m * ldy + n] = v + (bias != nullptr ? bias[n] : 0.0f);
  }
}

#define GEMM(SUFFIX, DT)                                                                                    \
  extern "C" __global__ void __launch_bounds__(128)                                                        \
      gemm_tc_##SUFFIX(const float* x, int M, int K, const void* w, WeightScale s, const float* bias, int N, \
                       float* y, int ldy, int k_split, float* partial) {                                   \
    gemm_tc<DT>(x, M, K, w, s, bias, N, y, ldy, k_split, partial);                                          \
  }                                                                                                          \
  extern "C" __global__ void gemv_##SUFFIX(const float* x, int M, int K, const void* w, WeightScale s,       \
                                           const float* bias, int N, float* y, int ldy) {                    \
    gemv<DT>(x, M, K, w, s, bias, N, y, ldy);                                                                \
  }                                                                                                          \
  extern "C" __global__ void gemv_vec_##SUFFIX(const float* x, int M, int K, const void* w, WeightScale s,   \
                                               const float* bias, int N, float* y, int ldy) {                \
    gemv_vec<DT>(x, M, K, w, s, bias, N, y, ldy);                                                            \
  }
GEMM(f32, DT_F32)
GEMM(bf16, DT_BF16)
GEMM(f16, DT_F16)
GEMM(fp8, DT_FP8)

// y[m, n] = sum over z < splits, in order, of partial[z][m][n] (+ bias[n]): the splits of a split-K gemm_tc.
extern "C" __global__ void gemm_split_reduce(const float* partial, int splits, int M, int N, const float* bias,
                                             float* y, int ldy) {
  size_t total = (size_t)M * N;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    int m = (int)(i / N), n = (int)(i % N);
    float v = 0.0f;
    for (int z = 0; z < splits; ++z) v += partial[(size_t)z * total + i];
    y[(size_t)m * ldy + n] = v + (bias != nullptr ? bias[n] : 0.0f);
  }
}
