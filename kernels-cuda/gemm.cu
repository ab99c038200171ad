// y[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]), x f32 [M, K], W [N, K] in its checkpoint dtype, y with row
// stride ldy (a linear made of several checkpoint tensors writes each into its own column range).
// Many rows (prefill, vision, MoE experts over their gathered rows): BF16 tensor-core tiles (mma.sync m16n8k16,
// f32 accumulation). Few rows (decode): GEMV kernels that stream the weights once.
#include "common.cuh"

// Tensor-core tiles: a 64 x 64 output tile per block of 128 threads (4 warps, 2 x 2, each 32 x 32 = 2 x 4 mma tiles of
// 16 x 8), K in steps of 32, BF16 mma.sync m16n8k16 with f32 accumulation.
// Precision is kept close to the f32 CPU reference, because greedy generation must match it token for token:
// - x (f32) is split into hi + lo BF16 parts (x = hi + lo to about 16 mantissa bits), one mma for each;
// - BF16 and FP8 weights are exact in BF16; F32/F16 weights are split the same way (a third mma, lo(x) * lo(w)
//   is negligible and skipped);
// - scales are not folded into the weights: per-row scales multiply the accumulator at the end, block scales each
//   block's partial sum (when the block is a multiple of the K step; otherwise they are applied while staging).
// A row of shared memory is 32 + 8 BF16 so that 32-bit fragment loads stay aligned and rows start in different banks.
#define TC_BM 64
#define TC_BN 64
#define TC_BK 32
#define TC_LD (TC_BK + 8)

__device__ __forceinline__ uint32_t lds32(const __nv_bfloat16* p) { return *reinterpret_cast<const uint32_t*>(p); }

// D = A(16x16, row) * B(16x8, col) + D, BF16 inputs, f32 accumulators (PTX ISA, mma.m16n8k16 fragment layouts).
__device__ __forceinline__ void mma_bf16_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void split_bf16(float v, __nv_bfloat16& hi, __nv_bfloat16& lo) {
  hi = __float2bfloat16_rn(v);
  lo = __float2bfloat16_rn(v - __bfloat162float(hi));
}

// A-operand fragments of a 16-row slice starting at row r, columns kk..kk+15 of a [64][TC_LD] tile.
__device__ __forceinline__ void load_a(uint32_t a[4], const __nv_bfloat16 (*t)[TC_LD], int r, int kk, int group,
                                       int pair) {
  const __nv_bfloat16* r0 = &t[r + group][kk + pair];
  const __nv_bfloat16* r8 = &t[r + group + 8][kk + pair];
  a[0] = lds32(r0);
  a[1] = lds32(r8);
  a[2] = lds32(r0 + 8);
  a[3] = lds32(r8 + 8);
}

// B-operand fragments of 8 weight rows (B's columns) starting at row n, columns kk..kk+15.
__device__ __forceinline__ void load_b(uint32_t b[2], const __nv_bfloat16 (*t)[TC_LD], int n, int kk, int group,
                                       int pair) {
  const __nv_bfloat16* col = &t[n + group][kk + pair];
  b[0] = lds32(col);
  b[1] = lds32(col + 8);
}

template <int DT>
__device__ void gemm_tc(const float* x, int M, int K, const void* w, WeightScale s, const float* bias, int N, float* y,
                        int ldy) {
  constexpr bool SPLIT_W = DT == DT_F32 || DT == DT_F16;
  __shared__ __align__(16) __nv_bfloat16 xh[TC_BM][TC_LD], xl[TC_BM][TC_LD];  // [m][k]
  __shared__ __align__(16) __nv_bfloat16 wh[TC_BN][TC_LD], wl[SPLIT_W ? TC_BN : 1][TC_LD];  // [n][k]
  int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  int group = lane / 4, pair = (lane % 4) * 2;  // fragment row (or column) and first of two consecutive k
  int wm = (warp / 2) * 32, wn = (warp % 2) * 32;
  int m0 = blockIdx.y * TC_BM, n0 = blockIdx.x * TC_BN;
  bool scaled = s.scale != nullptr;
  // Scales applied to partial sums: one flush per column block (per-row scales: col_blocks == 1, one at the end).
  bool late_scale = scaled && (s.col_blocks == 1 || s.block_cols % TC_BK == 0);
  WeightScale staged = s;
  if (late_scale) staged.scale = nullptr;
  float total[2][4][4] = {}, part[2][4][4] = {};
  for (int k0 = 0; k0 < K; k0 += TC_BK) {
    for (int i = tid; i < TC_BM * TC_BK; i += 128) {
      int r = i / TC_BK, c = i % TC_BK;
      int m = m0 + r, n = n0 + r, k = k0 + c;
      split_bf16((m < M && k < K) ? x[(size_t)m * K + k] : 0.0f, xh[r][c], xl[r][c]);
      float wv = (n < N && k < K) ? weight_at<DT>(w, staged, n, k, K) : 0.0f;
      if constexpr (SPLIT_W) {
        split_bf16(wv, wh[r][c], wl[r][c]);
      } else {
        wh[r][c] = __float2bfloat16_rn(wv);  // exact for BF16 and FP8 values
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < TC_BK; kk += 16) {
      uint32_t ah[2][4], al[2][4], bh[4][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        load_a(ah[i], xh, wm + i * 16, kk, group, pair);
        load_a(al[i], xl, wm + i * 16, kk, group, pair);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) load_b(bh[j], wh, wn + j * 8, kk, group, pair);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          mma_bf16_16816(part[i][j], ah[i], bh[j]);
          mma_bf16_16816(part[i][j], al[i], bh[j]);
        }
      if constexpr (SPLIT_W) {
        uint32_t bl[4][2];
#pragma unroll
        for (int j = 0; j < 4; ++j) load_b(bl[j], wl, wn + j * 8, kk, group, pair);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) mma_bf16_16816(part[i][j], ah[i], bl[j]);
      }
    }
    __syncthreads();
    int k_end = k0 + TC_BK;
    bool flush = k_end >= K || (late_scale && s.col_blocks > 1 && k_end % s.block_cols == 0);
    if (flush) {
      int kb = late_scale && s.col_blocks > 1 ? k0 / s.block_cols : 0;
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float f = 1.0f;
            if (late_scale) {
              int n = min(n0 + wn + j * 8 + pair + (e & 1), N - 1);
              f = s.scale[(size_t)(n / s.block_rows) * s.col_blocks + kb];
            }
            total[i][j][e] += part[i][j][e] * f;
            part[i][j][e] = 0.0f;
          }
    }
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // accumulator rows group and group + 8
        int m = m0 + wm + i * 16 + group + h * 8;
        if (m >= M) continue;
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          int n = n0 + wn + j * 8 + pair + c;
          if (n < N) y[(size_t)m * ldy + n] = total[i][j][h * 2 + c] + (bias != nullptr ? bias[n] : 0.0f);
        }
      }
    }
  }
}

// Few rows (decode): one warp per output column, all rows at once. M <= GEMV_MAX_ROWS.
#define GEMV_MAX_ROWS 8
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

// The same with 16-byte weight loads, for rows whose byte length is a multiple of 16 (every real GLM-V shape): each
// lane converts 16 bytes of weights per load. A scale that is constant along the row (per-channel FP8) is applied
// once at the end; block scales once per 16-byte chunk (the host checks block_cols is a multiple of the chunk).
template <int DT>
__device__ void gemv_vec(const float* x, int M, int K, const void* w, WeightScale s, const float* bias, int N,
                         float* y, int ldy) {
  constexpr int EB = elem_bytes<DT>();
  constexpr int V = 16 / EB;
  int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (warp >= N) return;
  int n = warp;
  const uint4* row = reinterpret_cast<const uint4*>(static_cast<const char*>(w) + (size_t)n * K * EB);
  bool row_scale = s.scale != nullptr && s.col_blocks == 1;
  float acc[GEMV_MAX_ROWS] = {};
  for (int c = lane; c < K / V; c += 32) {
    uint4 raw = row[c];
    float wv[V];
    unpack16<DT>(raw, wv);
    float cs = (s.scale != nullptr && !row_scale) ? s.scale[(size_t)(n / s.block_rows) * s.col_blocks + (c * V) / s.block_cols] : 1.0f;
#pragma unroll
    for (int m = 0; m < GEMV_MAX_ROWS; ++m) {
      if (m < M) {
        const float4* xv = reinterpret_cast<const float4*>(x + (size_t)m * K + (size_t)c * V);
        float part = 0.0f;
#pragma unroll
        for (int j = 0; j < V / 4; ++j) {
          float4 xx = xv[j];
          part += xx.x * wv[4 * j] + xx.y * wv[4 * j + 1] + xx.z * wv[4 * j + 2] + xx.w * wv[4 * j + 3];
        }
        acc[m] += part * cs;
      }
    }
  }
  float rs = row_scale ? s.scale[n / s.block_rows] : 1.0f;
  for (int m = 0; m < M; ++m) {
    float v = warp_sum(acc[m]);
    if (lane == 0) y[(size_t)m * ldy + n] = v * rs + (bias != nullptr ? bias[n] : 0.0f);
  }
}

#define GEMM(SUFFIX, DT)                                                                                    \
  extern "C" __global__ void __launch_bounds__(128) gemm_tc_##SUFFIX(const float* x, int M, int K, const void* w, \
                                                                     WeightScale s, const float* bias, int N,   \
                                                                     float* y, int ldy) {                       \
    gemm_tc<DT>(x, M, K, w, s, bias, N, y, ldy);                                                             \
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
