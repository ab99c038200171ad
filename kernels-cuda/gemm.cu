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

// FP8 activations times FP8 weights on FP8 tensor cores (mma m16n8k32 e4m3), one 64 x 64 tile of y per block as
// gemm_tc: xq [M, K] E4M3 codes with scales xs [M, ceil(K / x_group)] (one per x_group columns of a row; x_group = K
// for one per token), w [N, K] E4M3 with scales s; y = sum_k (xq * sx)(w * sw) (+ bias). The code products are summed
// in f32 windows: a window ends where the x group or the weight's column block changes, and its sum is multiplied by
// both scales. On sm_90a and sm_100a, mma.sync on E4M3 runs as F16 HMMA (FP8 tensor cores are wgmma's and tcgen05's;
// tests/cuda_sass.rs): E4M3 values are exact in F16 and their products in f32, so the windows accumulate in f32
// without the shortened accumulation of FP8 wgmma. Against gemm_tc on the same quantised values: half the MMAs (no
// hi + lo split of x) and a quarter of the activation bytes. Needs K % 16 == 0 (16-byte row loads) and x_group and
// the weight's column block multiples of TC_BK (or all of K); runtime/src/backend/cuda/linear.rs checks.
#define FP8_LD 48  // bytes per staged row: 32 codes, 16 of padding (conflict-free fragment loads, 16-byte aligned rows)

extern "C" __global__ void __launch_bounds__(128)
    gemm_fp8_tc(const uint8_t* xq, const float* xs, int x_group, int M, int K, const uint8_t* w, WeightScale s,
                const float* bias, int N, float* y, int ldy) {
  __shared__ __align__(16) uint8_t xt[TC_BM * FP8_LD], wt[TC_BN * FP8_LD];
  int m0 = blockIdx.y * TC_BM, n0 = blockIdx.x * TC_BN;
  TcLane t;
  int quad = (threadIdx.x % 4) * 4;  // first of the four k of this lane's fragment registers
  int x_groups = (K + x_group - 1) / x_group;
  int w_block = s.col_blocks == 1 ? K : s.block_cols;
  float total[2][4][4] = {}, window[2][4][4] = {};
  int window_start = 0;
  for (int k0 = 0; k0 < K; k0 += TC_BK) {
    {  // 64 rows x 32 codes of x and of w: one 16-byte load of each per thread
      int r = threadIdx.x / 2, c = (threadIdx.x % 2) * 16, k = k0 + c;
      uint4 zero = make_uint4(0, 0, 0, 0);
      uint4 xv = (m0 + r < M && k < K) ? *reinterpret_cast<const uint4*>(xq + (size_t)(m0 + r) * K + k) : zero;
      uint4 wv = (n0 + r < N && k < K) ? *reinterpret_cast<const uint4*>(w + (size_t)(n0 + r) * K + k) : zero;
      *reinterpret_cast<uint4*>(&xt[r * FP8_LD + c]) = xv;
      *reinterpret_cast<uint4*>(&wt[r * FP8_LD + c]) = wv;
    }
    __syncthreads();
    uint32_t a[2][4], b[4][2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint8_t* r0 = &xt[(t.wm + i * 16 + t.group) * FP8_LD + quad];
      a[i][0] = *reinterpret_cast<const uint32_t*>(r0);
      a[i][1] = *reinterpret_cast<const uint32_t*>(r0 + 8 * FP8_LD);
      a[i][2] = *reinterpret_cast<const uint32_t*>(r0 + 16);
      a[i][3] = *reinterpret_cast<const uint32_t*>(r0 + 8 * FP8_LD + 16);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint8_t* n = &wt[(t.wn + j * 8 + t.group) * FP8_LD + quad];
      b[j][0] = *reinterpret_cast<const uint32_t*>(n);
      b[j][1] = *reinterpret_cast<const uint32_t*>(n + 16);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) mma_e4m3_16832(window[i][j], a[i], b[j]);
    __syncthreads();
    int k_end = k0 + TC_BK;
    if (k_end >= K || k_end % x_group == 0 || k_end % w_block == 0) {
      int xg = window_start / x_group, wb = window_start / w_block;
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            int m = min(m0 + t.row(i, e >> 1), M - 1), n = min(n0 + t.col(j, e & 1), N - 1);
            total[i][j][e] += window[i][j][e] * (xs[(size_t)m * x_groups + xg] * scale_at(s, n, wb));
            window[i][j][e] = 0.0f;
          }
      window_start = k_end;
    }
  }
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
