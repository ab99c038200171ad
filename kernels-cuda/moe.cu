// MoE routing: sigmoid scores, correction bias for the choice, group-limited top-k, weights from the unbiased
// scores. One thread per token (n_experts is at most a few hundred).
#include "common.cuh"

// Limits checked by the host before launch (runtime/src/backend/cuda).
#define MAX_EXPERTS 512
#define MAX_GROUPS 64

extern "C" __global__ void moe_route(const float* logits, const float* correction_bias, int tokens, int experts,
                                     int top_k, int n_group, int topk_group, int norm_topk_prob, float scaling,
                                     uint32_t* topk_ids, float* topk_weights) {
  int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= tokens) return;
  const float* lg = logits + (size_t)t * experts;
  float choice[MAX_EXPERTS];
  for (int e = 0; e < experts; ++e) {
    float s = 1.0f / (1.0f + expf(-lg[e]));
    choice[e] = s + (correction_bias != nullptr ? correction_bias[e] : 0.0f);
  }
  if (n_group > 1) {
    int per = experts / n_group;
    bool keep[MAX_GROUPS] = {};
    float group_score[MAX_GROUPS];
    for (int g = 0; g < n_group; ++g) {
      // Sum of the two best biased scores of the group.
      float a = -INFINITY, b = -INFINITY;
      for (int e = g * per; e < (g + 1) * per; ++e) {
        if (choice[e] > a) { b = a; a = choice[e]; }
        else if (choice[e] > b) b = choice[e];
      }
      group_score[g] = per > 1 ? a + b : a;
    }
    for (int i = 0; i < topk_group; ++i) {
      int best = -1;
      for (int g = 0; g < n_group; ++g)
        if (!keep[g] && (best < 0 || group_score[g] > group_score[best])) best = g;
      keep[best] = true;
    }
    for (int e = 0; e < experts; ++e)
      if (!keep[e / per]) choice[e] = -INFINITY;
  }
  float sum = 0.0f;
  for (int i = 0; i < top_k; ++i) {
    int best = -1;
    for (int e = 0; e < experts; ++e)
      if (best < 0 || choice[e] > choice[best]) best = e;
    float s = 1.0f / (1.0f + expf(-lg[best]));
    choice[best] = -INFINITY;
    topk_ids[(size_t)t * top_k + i] = best;
    topk_weights[(size_t)t * top_k + i] = s;
    sum += s;
  }
  for (int i = 0; i < top_k; ++i) {
    float w = topk_weights[(size_t)t * top_k + i];
    if (norm_topk_prob) w /= (sum + 1e-20f);
    topk_weights[(size_t)t * top_k + i] = w * scaling;
  }
}

// Fused expert pass for few (token, expert) pairs, all on the device (no host dispatch). Pair p = t * top_k + slot
// uses expert ids[p]. Expert weights are found through per-expert pointer tables; every expert has the same dtype
// and scale layout (checked by the host). One warp per output row.
struct ExpertTable {
  const unsigned long long* weight;  // per expert: [rows, K] weights
  const unsigned long long* scale;   // per expert: its scales (or 0)
  int block_rows, block_cols, col_blocks;
};

template <int DT>
__device__ __forceinline__ float expert_row(ExpertTable t, int e, int n, int K, const float* x, int lane) {
  WeightScale s{reinterpret_cast<const float*>(t.scale[e]), t.block_rows, t.block_cols, t.col_blocks};
  bool row_scale = s.scale != nullptr && s.col_blocks == 1;
  float v = warp_sum(row_dot_vec<DT>(reinterpret_cast<const void*>(t.weight[e]), s, n, K, x, lane, row_scale));
  return row_scale ? v * s.scale[n / s.block_rows] : v;
}

// gu[p, :] = [gate_e(x_t) | up_e(x_t)], gu of width 2 * inter.
template <int DT>
__device__ void moe_gate_up(const float* x, const uint32_t* ids, int top_k, int pairs, int hidden, int inter,
                            ExpertTable gate, ExpertTable up, float* gu) {
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
template <int DT>
__device__ void moe_down(const float* h, const uint32_t* ids, const float* weights, int top_k, int tokens, int hidden,
                         int inter, ExpertTable down, float* y) {
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

#define MOE_FUSED(SUFFIX, DT)                                                                                    \
  extern "C" __global__ void moe_gate_up_##SUFFIX(const float* x, const uint32_t* ids, int top_k, int pairs,    \
                                                  int hidden, int inter, ExpertTable gate, ExpertTable up,      \
                                                  float* gu) {                                                  \
    moe_gate_up<DT>(x, ids, top_k, pairs, hidden, inter, gate, up, gu);                                         \
  }                                                                                                             \
  extern "C" __global__ void moe_down_##SUFFIX(const float* h, const uint32_t* ids, const float* weights,       \
                                               int top_k, int tokens, int hidden, int inter, ExpertTable down,  \
                                               float* y) {                                                      \
    moe_down<DT>(h, ids, weights, top_k, tokens, hidden, inter, down, y);                                       \
  }
MOE_FUSED(f32, DT_F32)
MOE_FUSED(bf16, DT_BF16)
MOE_FUSED(f16, DT_F16)
MOE_FUSED(fp8, DT_FP8)
