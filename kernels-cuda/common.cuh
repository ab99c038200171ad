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

// SwiGLU of one gate and up value: silu(g) * u.
__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// `op` over a block of blockDim.x threads (a multiple of 32, at most 1024): warps reduce by shuffles, then every warp
// reduces the warps' results (`identity` for lanes past them), so every thread gets the result.
template <class Op>
__device__ __forceinline__ float block_reduce(float v, float identity, Op op) {
  __shared__ float partial[32];
  __syncthreads();  // partial[] may still be read by a previous call
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  int warps = blockDim.x / 32;
  v = lane < warps ? partial[lane] : identity;
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ float block_sum(float v) {
  return block_reduce(v, 0.0f, [](float a, float b) { return a + b; });
}

// The scale FP8 E4M3 values of absmax `absmax` are stored on (runtime/src/backend/mod.rs fp8_scale): absmax / 448,
// or 1 for all zeros. Shared by the FP8 KV cache and the dynamic FP8 activations.
__device__ __forceinline__ float fp8_scale(float absmax) { return absmax > 0.0f ? absmax / 448.0f : 1.0f; }

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

// Max over a block, as block_sum: every thread gets the result.
__device__ __forceinline__ float block_max(float v) {
  return block_reduce(v, -INFINITY, [](float a, float b) { return fmaxf(a, b); });
}

// 16 bytes of weights as floats: V = 16 / sizeof(element) values.
template <int DT>
__device__ __forceinline__ void unpack16(const uint4& raw, float* out) {
  if constexpr (DT == DT_FP8) {
    const uint8_t* b = reinterpret_cast<const uint8_t*>(&raw);
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      __nv_fp8_e4m3 f;
      f.__x = b[j];
      out[j] = static_cast<float>(f);
    }
  } else if constexpr (DT == DT_BF16) {
    const uint16_t* h = reinterpret_cast<const uint16_t*>(&raw);
#pragma unroll
    for (int j = 0; j < 8; ++j) out[j] = __uint_as_float(((uint32_t)h[j]) << 16);
  } else if constexpr (DT == DT_F16) {
    const __half* h = reinterpret_cast<const __half*>(&raw);
#pragma unroll
    for (int j = 0; j < 8; ++j) out[j] = __half2float(h[j]);
  } else {
    const float* f = reinterpret_cast<const float*>(&raw);
#pragma unroll
    for (int j = 0; j < 4; ++j) out[j] = f[j];
  }
}

template <int DT>
__host__ __device__ constexpr int elem_bytes() {
  return DT == DT_F32 ? 4 : (DT == DT_FP8 ? 1 : 2);
}

// This lane's share of dot(W[n, :], x) for one x row, with 16-byte weight loads (K * element size must be a
// multiple of 16, block scales constant over 16-byte chunks). A scale constant along the row is NOT applied here
// (`row_scale`): the caller multiplies the reduced sum once.
template <int DT>
__device__ __forceinline__ float row_dot_vec(const void* w, WeightScale s, int n, int K, const float* x, int lane,
                                             bool row_scale) {
  constexpr int V = 16 / elem_bytes<DT>();
  const uint4* row = reinterpret_cast<const uint4*>(static_cast<const char*>(w) + (size_t)n * K * elem_bytes<DT>());
  float acc = 0.0f;
  for (int c = lane; c < K / V; c += 32) {
    float wv[V];
    unpack16<DT>(row[c], wv);
    const float4* xv = reinterpret_cast<const float4*>(x + (size_t)c * V);
    float part = 0.0f;
#pragma unroll
    for (int j = 0; j < V / 4; ++j) {
      float4 xx = xv[j];
      part += xx.x * wv[4 * j] + xx.y * wv[4 * j + 1] + xx.z * wv[4 * j + 2] + xx.w * wv[4 * j + 3];
    }
    float cs = (s.scale != nullptr && !row_scale)
                   ? s.scale[(size_t)(n / s.block_rows) * s.col_blocks + (c * V) / s.block_cols]
                   : 1.0f;
    acc += part * cs;
  }
  return acc;
}
