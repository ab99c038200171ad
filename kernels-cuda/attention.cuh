// Attention with an online softmax over keys, as a template of the KV element type and (optionally) the head shape.
// kernels-cuda/attention.cu instantiates the generic kernels; glmv-codegen the shape-specialised ones.
#pragma once
#include "common.cuh"

// Dims of a head a lane owns (lane, lane + 32, ...): head_dim up to 32 * MAX_DIMS_PER_LANE.
#define MAX_DIMS_PER_LANE 8
#define ATTENTION_WARPS 4

// One block of ATTENTION_WARPS warps per (row, head). Query row `row` attends keys j = 0 .. key_count[row] - 1
// whose rows in k/v are: paged (block_table != nullptr): slot of position j via the row's block table; contiguous:
// key_begin[row] + j. k and v rows have strides k_stride / v_stride elements of type KV; head kvh starts at kvh * d.
// FP8 rows are scaled by k_scale / v_scale[row * kv_heads + kvh].
// Each warp runs an online softmax over every ATTENTION_WARPS-th key with no block-wide synchronisation; the warps'
// partial results are merged at the end.
//
// Split keys (flash-decoding): with `partial` set, block z of gridDim.z takes keys [z * keys_per_split, (z + 1) *
// keys_per_split) and writes its unnormalised result (max, sum, d values) to partial[((row * heads + h) *
// gridDim.z + z) * (d + 2)], which attention_combine merges; a few decode rows then still fill the GPU.
//
// D (head dimension) and GROUP (query heads per kv head) are compile-time when positive, so that the per-lane loops
// and the kv-head index fold into constants; 0 reads them from the arguments (the generic kernels). glmv-codegen
// instantiates the positive ones for the models' shapes (codegen/src/lib.rs).
template <int KV, int D, int GROUP>
__device__ void attention(const float* q, int heads, int kv_heads, int d_arg, float scale, const void* k, int k_stride,
                          const void* v, int v_stride, const float* k_scale, const float* v_scale,
                          const uint32_t* key_begin, const uint32_t* key_count, const uint32_t* block_table,
                          const uint32_t* table_offset, int block_size, int keys_per_split, float* partial,
                          float* out) {
  __shared__ float part_m[ATTENTION_WARPS], part_l[ATTENTION_WARPS];
  __shared__ float part_acc[ATTENTION_WARPS][32 * MAX_DIMS_PER_LANE];
  static_assert(D <= 32 * MAX_DIMS_PER_LANE, "head_dim over 32 * MAX_DIMS_PER_LANE");
  const int d = D > 0 ? D : d_arg;
  const int group = GROUP > 0 ? GROUP : heads / kv_heads;
  size_t row = blockIdx.x;
  int h = blockIdx.y;
  int kvh = h / group;
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int per_lane = (d + 31) / 32;
  float qv[MAX_DIMS_PER_LANE], acc[MAX_DIMS_PER_LANE];
#pragma unroll
  for (int i = 0; i < MAX_DIMS_PER_LANE; ++i) {
    int c = lane + 32 * i;
    qv[i] = (i < per_lane && c < d) ? q[row * heads * d + h * d + c] * scale : 0.0f;
    acc[i] = 0.0f;
  }
  uint32_t count = key_count[row], begin = key_begin[row];
  uint32_t first = 0;
  if (partial != nullptr) {
    first = blockIdx.z * (uint32_t)keys_per_split;
    count = min(count, first + (uint32_t)keys_per_split);
  }
  const uint32_t* table = block_table != nullptr ? block_table + table_offset[row] : nullptr;
  float m = -INFINITY, l = 0.0f;
  for (uint32_t j = first + warp; j < count; j += ATTENTION_WARPS) {
    size_t r = table != nullptr ? (size_t)table[j / block_size] * block_size + j % block_size : begin + j;
    size_t kb = r * k_stride + kvh * d, vb = r * v_stride + kvh * d;
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < MAX_DIMS_PER_LANE; ++i) {
      int c = lane + 32 * i;
      if (i < per_lane && c < d) s += qv[i] * kv_load<KV>(k, kb + c);
    }
    s = warp_sum(s);
    if constexpr (KV == KV_FP8) s *= k_scale[r * kv_heads + kvh];
    float vs = 1.0f;
    if constexpr (KV == KV_FP8) vs = v_scale[r * kv_heads + kvh];
    float new_m = fmaxf(m, s);
    float correction = expf(m - new_m), p = expf(s - new_m);
    l = l * correction + p;
#pragma unroll
    for (int i = 0; i < MAX_DIMS_PER_LANE; ++i) {
      int c = lane + 32 * i;
      if (i < per_lane && c < d) acc[i] = acc[i] * correction + p * vs * kv_load<KV>(v, vb + c);
    }
    m = new_m;
  }
  if (lane == 0) {
    part_m[warp] = m;
    part_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < MAX_DIMS_PER_LANE; ++i) part_acc[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  float big = -INFINITY;
  for (int w = 0; w < ATTENTION_WARPS; ++w) big = fmaxf(big, part_m[w]);
  float total = 0.0f;
  for (int w = 0; w < ATTENTION_WARPS; ++w) total += part_m[w] == -INFINITY ? 0.0f : part_l[w] * expf(part_m[w] - big);
  float* split_out = partial != nullptr ? partial + ((row * heads + h) * gridDim.z + blockIdx.z) * (d + 2) : nullptr;
  if (split_out != nullptr && threadIdx.x == 0) {
    split_out[0] = big;  // -inf when this split holds none of the row's keys
    split_out[1] = total;
  }
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < ATTENTION_WARPS; ++w)
      if (part_m[w] != -INFINITY) o += part_acc[w][c] * expf(part_m[w] - big);
    if (split_out != nullptr) split_out[2 + c] = o;
    else out[row * heads * d + h * d + c] = o / total;
  }
}

// An exported kernel `NAME` running attention<KV, D, GROUP>; every instantiation has the same argument list, which
// runtime/src/backend/cuda/mod.rs passes.
#define ATTENTION_KERNEL(NAME, KV, D, GROUP)                                                                     \
  extern "C" __global__ void NAME(const float* q, int heads, int kv_heads, int d, float scale, const void* k,   \
                                  int k_stride, const void* v, int v_stride, const float* k_scale,               \
                                  const float* v_scale, const uint32_t* key_begin, const uint32_t* key_count,    \
                                  const uint32_t* block_table, const uint32_t* table_offset, int block_size,     \
                                  int keys_per_split, float* partial, float* out) {                              \
    attention<KV, D, GROUP>(q, heads, kv_heads, d, scale, k, k_stride, v, v_stride, k_scale, v_scale, key_begin,  \
                            key_count, block_table, table_offset, block_size, keys_per_split, partial, out);     \
  }
