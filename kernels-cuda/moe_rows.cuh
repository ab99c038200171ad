// The MoE experts for few (token, expert) pairs (decode), as templates: moe.cu instantiates the generic kernels,
// glmv-codegen the ones specialised for the models' hidden and expert intermediate sizes.
#pragma once
#include "common.cuh"

// Fused expert pass for few (token, expert) pairs, all on the device (no host dispatch). Pair p = t * top_k + slot
// uses expert ids[p]. Expert weights are found through per-expert pointer tables; every expert has the same dtype
// and scale layout (checked by the host). One warp per output row.
struct ExpertTable {
  const unsigned long long* weight;  // per expert: [rows, K] weights
  const unsigned long long* scale;   // per expert: its scales (or 0)
  int block_rows, block_cols, col_blocks;
};

// Expert e's weight scales of one projection.
__device__ __forceinline__ WeightScale expert_scale(ExpertTable t, int e) {
  return WeightScale{reinterpret_cast<const float*>(t.scale[e]), t.block_rows, t.block_cols, t.col_blocks};
}

template <int DT>
__device__ __forceinline__ float expert_row(ExpertTable t, int e, int n, int K, const float* x, int lane) {
  WeightScale s = expert_scale(t, e);
  bool row_scale = s.scale != nullptr && s.col_blocks == 1;
  float v = warp_sum(row_dot_vec<DT>(reinterpret_cast<const void*>(t.weight[e]), s, n, K, x, lane, row_scale));
  return row_scale ? v * s.scale[n / s.block_rows] : v;
}

// gu[p, :] = [gate_e(x_t) | up_e(x_t)], gu of width 2 * inter. HC: hidden at compile time when positive.
template <int DT, int HC = 0>
__device__ void moe_gate_up(const float* x, const uint32_t* ids, int top_k, int pairs, int hidden_arg, int inter,
                            ExpertTable gate, ExpertTable up, float* gu) {
  const int hidden = HC > 0 ? HC : hidden_arg;
  int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  int p = blockIdx.y;
  if (warp >= 2 * inter || p >= pairs) return;
  int e = ids[p];
  const float* xr = x + (size_t)(p / top_k) * hidden;
  float v = warp < inter ? expert_row<DT>(gate, e, warp, hidden, xr, lane)
                         : expert_row<DT>(up, e, warp - inter, hidden, xr, lane);
  if (lane == 0) gu[(size_t)p * 2 * inter + warp] = v;
}

// y[t, n] += sum over the token's pairs of weight[p] * down_e(h[p])[n]; one warp per (n, token), pairs summed in
// slot order so the result does not depend on scheduling.
template <int DT, int IC = 0>
__device__ void moe_down(const float* h, const uint32_t* ids, const float* weights, int top_k, int tokens, int hidden,
                         int inter_arg, ExpertTable down, float* y) {
  const int inter = IC > 0 ? IC : inter_arg;
  int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
  int t = blockIdx.y;
  if (warp >= hidden || t >= tokens) return;
  float sum = 0.0f;
  for (int slot = 0; slot < top_k; ++slot) {
    int p = t * top_k + slot;
    sum += weights[p] * expert_row<DT>(down, ids[p], warp, inter, h + (size_t)p * inter, lane);
  }
  if (lane == 0) y[(size_t)t * hidden + warp] += sum;
}

// Specialised instances with hidden (gate/up) or the intermediate size (down) fixed; the host checks they match.
#define MOE_GATE_UP_KERNEL(NAME, DT, HC)                                                                      \
  extern "C" __global__ void NAME(const float* x, const uint32_t* ids, int top_k, int pairs, int hidden,      \
                                  int inter, ExpertTable gate, ExpertTable up, float* gu) {                   \
    moe_gate_up<DT, HC>(x, ids, top_k, pairs, hidden, inter, gate, up, gu);                                   \
  }
#define MOE_DOWN_KERNEL(NAME, DT, IC)                                                                         \
  extern "C" __global__ void NAME(const float* h, const uint32_t* ids, const float* weights, int top_k,       \
                                  int tokens, int hidden, int inter, ExpertTable down, float* y) {            \
    moe_down<DT, IC>(h, ids, weights, top_k, tokens, hidden, inter, down, y);                                 \
  }
