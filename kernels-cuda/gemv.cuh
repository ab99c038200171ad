// Decode-sized GEMMs (at most GEMV_MAX_ROWS rows) with 16-byte weight loads: gemm.cu instantiates the generic
// kernels, glmv-codegen the ones specialised for the models' input widths.
#pragma once
#include "common.cuh"

#define GEMV_MAX_ROWS 8

// One warp per output column, all rows at once, for rows whose byte length is a multiple of 16 (every real GLM-V
// shape): each lane converts 16 bytes of weights per load. A scale that is constant along the row (per-channel FP8) is applied
// once at the end; block scales once per 16-byte chunk (the host checks block_cols is a multiple of the chunk).
// KC: K at compile time when positive (glmv-codegen instantiates the models' shapes), else the argument.
template <int DT, int KC = 0>
__device__ void gemv_vec(const float* x, int M, int k_arg, const void* w, WeightScale s, const float* bias, int N,
                         float* y, int ldy) {
  const int K = KC > 0 ? KC : k_arg;
  constexpr int EB = elem_bytes<DT>();
  constexpr int V = 16 / EB;
  int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (warp >= N) return;
  int n = warp;
  const uint4* row = reinterpret_cast<const uint4*>(static_cast<const char*>(w) + (size_t)n * K * EB);
  bool row_scale = s.scale != nullptr && s.col_blocks == 1;
  float acc[GEMV_MAX_ROWS] = {};
  // With K known, each lane issues UNROLL weight loads before it uses the first (more bytes in flight per lane);
  // the order of the sums over c is the generic kernel's, so the results are the same.
  constexpr int UNROLL = KC > 0 ? 4 : 1;
  const int chunks = K / V;
  for (int c0 = lane; c0 < chunks; c0 += 32 * UNROLL) {
    uint4 raw[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)
      if (c0 + 32 * u < chunks) raw[u] = row[c0 + 32 * u];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      int c = c0 + 32 * u;
      if (c >= chunks) break;
      float wv[V];
      unpack16<DT>(raw[u], wv);
      float cs = (s.scale != nullptr && !row_scale)
                     ? s.scale[(size_t)(n / s.block_rows) * s.col_blocks + (c * V) / s.block_cols]
                     : 1.0f;
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
  }
  float rs = row_scale ? s.scale[n / s.block_rows] : 1.0f;
  for (int m = 0; m < M; ++m) {
    float v = warp_sum(acc[m]);
    if (lane == 0) y[(size_t)m * ldy + n] = v * rs + (bias != nullptr ? bias[n] : 0.0f);
  }
}

// One specialised instance: NAME(x, M, K, ...) with K fixed to KC (the K argument must equal it; the host checks).
#define GEMV_VEC_KERNEL(NAME, DT, KC)                                                                       \
  extern "C" __global__ void NAME(const float* x, int M, int K, const void* w, WeightScale s, const float* bias, \
                                  int N, float* y, int ldy) {                                              \
    gemv_vec<DT, KC>(x, M, K, w, s, bias, N, y, ldy);                                                      \
  }
