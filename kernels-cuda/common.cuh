// Shared helpers of the glmv CUDA kernels. Activations are f32; weights keep their checkpoint dtype and are
// converted (and FP8-scaled) as they are loaded.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

// Weight dtype codes, shared with runtime/src/backend/cuda (WeightDtype).
#define DT_F32 0
#define DT_BF16 1
#define DT_F16 2
#define DT_FP8 3

template <int DT>
__device__ __forceinline__ float load_weight(const void* w, size_t idx) {
  if constexpr (DT == DT_F32) {
    return static_cast<const float*>(w)[idx];
  } else if constexpr (DT == DT_BF16) {
    return __bfloat162float(static_cast<const __nv_bfloat16*>(w)[idx]);
  } else if constexpr (DT == DT_F16) {
    return __half2float(static_cast<const __half*>(w)[idx]);
  } else {
    __nv_fp8_e4m3 v;
    v.__x = static_cast<const uint8_t*>(w)[idx];
    return static_cast<float>(v);
  }
}

// How a weight matrix [N, K] is scaled: none (scale == nullptr), or one f32 per (row block, column block):
// per-channel FP8 is blocks of (1, K), block-128 FP8 is blocks of (128, 128).
struct WeightScale {
  const float* scale;
  int block_rows;
  int block_cols;
  int col_blocks;
};

template <int DT>
__device__ __forceinline__ float weight_at(const void* w, WeightScale s, int n, int k, int K) {
  float v = load_weight<DT>(w, (size_t)n * K + k);
  if (s.scale != nullptr) v *= s.scale[(size_t)(n / s.block_rows) * s.col_blocks + k / s.block_cols];
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  __syncthreads();  // partial[] may still be read by a previous call
  v = warp_sum(v);
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  int warps = blockDim.x / 32;
  v = lane < warps ? partial[lane] : 0.0f;
  return warp_sum(v);
}

// KV cache element types, shared with runtime/src/backend/cuda (KvDtype). FP8 values carry one f32 scale per
// (slot, kv head): see runtime/src/backend/mod.rs `KvDtype` for the rounding rules every backend follows.
#define KV_F32 0
#define KV_BF16 1
#define KV_FP8 2

template <int KV>
__device__ __forceinline__ float kv_load(const void* p, size_t i) {
  if constexpr (KV == KV_F32) {
    return static_cast<const float*>(p)[i];
  } else if constexpr (KV == KV_BF16) {
    return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  } else {
    __nv_fp8_e4m3 v;
    v.__x = static_cast<const uint8_t*>(p)[i];
    return static_cast<float>(v);
  }
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
