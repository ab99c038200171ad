// The MoE block on the device: routing (sigmoid scores, correction bias for the choice, group-limited top-k,
// weights from the unbiased scores), then the chosen experts, either as warp-per-row GEMVs for few (token, expert)
// pairs (decode) or as grouped tensor-core GEMMs over the pairs sorted by expert (prefill).
#include "mma.cuh"
#include "moe_rows.cuh"

// Limits checked by the host before launch (runtime/src/backend/cuda).
#define MAX_EXPERTS 512
#define MAX_GROUPS 64

// One thread per token (n_experts is at most a few hundred).
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

// ---- Grouped expert GEMMs for many pairs ----
// moe_align sorts the pairs by expert; each expert's rows then form consecutive 64-row tiles, and one launch of
// moe_gate_up_tc / moe_down_tc covers every tile of every expert (blockIdx.y = tile, found by binary search in
// tile_offsets). The order of pairs within an expert depends on scheduling, but every output row depends only on
// its own input row, and moe_combine sums each token's pairs in slot order, so the result does not.

// perm[offsets[e] .. offsets[e + 1]) = the pairs routed to expert e; expert e's tiles are
// tile_offsets[e] .. tile_offsets[e + 1). One block (the scan is serial over at most MAX_EXPERTS experts).
extern "C" __global__ void moe_align(const uint32_t* ids, int pairs, int experts, uint32_t* perm, uint32_t* offsets,
                                     uint32_t* tile_offsets) {
  __shared__ uint32_t count[MAX_EXPERTS], cursor[MAX_EXPERTS];
  for (int e = threadIdx.x; e < experts; e += blockDim.x) count[e] = 0;
  __syncthreads();
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) atomicAdd(&count[ids[p]], 1u);
  __syncthreads();
  if (threadIdx.x == 0) {
    uint32_t rows = 0, tiles = 0;
    for (int e = 0; e < experts; ++e) {
      offsets[e] = rows;
      tile_offsets[e] = tiles;
      cursor[e] = rows;
      rows += count[e];
      tiles += (count[e] + TC_BM - 1) / TC_BM;
    }
    offsets[experts] = rows;
    tile_offsets[experts] = tiles;
  }
  __syncthreads();
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) perm[atomicAdd(&cursor[ids[p]], 1u)] = p;
}

// This block's tile of the sorted pairs: its expert, first sorted row and row count; false past the last tile.
struct ExpertTile {
  int expert, row0, rows;
};

__device__ __forceinline__ bool expert_tile(const uint32_t* offsets, const uint32_t* tile_offsets, int experts,
                                            ExpertTile& t) {
  int tile = blockIdx.y;
  if (tile >= (int)tile_offsets[experts]) return false;
  // The last expert whose first tile is at or before this one (experts without rows share the next one's offset).
  int lo = 0, hi = experts;
  while (hi - lo > 1) {
    int mid = (lo + hi) / 2;
    if ((int)tile_offsets[mid] <= tile) lo = mid;
    else hi = mid;
  }
  t.expert = lo;
  t.row0 = offsets[lo] + (tile - tile_offsets[lo]) * TC_BM;
  t.rows = min(TC_BM, (int)offsets[lo + 1] - t.row0);
  return true;
}

// token_of[r] = the token of the tile's sorted row r (-1 past its rows), for the whole block.
__device__ __forceinline__ void tile_tokens(const uint32_t* perm, int top_k, ExpertTile tile, int* token_of) {
  for (int r = threadIdx.x; r < TC_BM; r += TC_THREADS)
    token_of[r] = r < tile.rows ? (int)(perm[tile.row0 + r] / top_k) : -1;
  __syncthreads();
}

// The epilogue of a gate|up tile: columns 0..31 of `total` are gate rows n0.., 32..63 the same up rows; h[row0 + r,
// n0 + c] = silu(gate) * up, through shared memory (a thread holds neither pair of a column whole).
__device__ __forceinline__ void gate_up_store(const float total[2][4][4], ExpertTile tile, int n0, int inter,
                                              float* h) {
  constexpr int HALF = TC_BN / 2;
  __shared__ float out[TC_BM][TC_BN + 1];
  tc_each([&](int i, int j, int e, int r, int c) { out[r][c] = total[i][j][e]; });
  __syncthreads();
  for (int idx = threadIdx.x; idx < TC_BM * HALF; idx += TC_THREADS) {
    int r = idx / HALF, c = idx % HALF;
    if (r < tile.rows && n0 + c < inter)
      h[(size_t)(tile.row0 + r) * inter + n0 + c] = silu_mul(out[r][c], out[r][HALF + c]);
  }
}

// The epilogue of a down tile: each sorted row's outputs go to its pair's row of y_pair.
__device__ __forceinline__ void down_store(const float total[2][4][4], ExpertTile tile, const uint32_t* perm, int n0,
                                           int hidden, float* y_pair) {
  TcLane t;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      int r = t.row(i, hh);
      if (r >= tile.rows) continue;
      size_t p = perm[tile.row0 + r];
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          int n = n0 + t.col(j, c);
          if (n < hidden) y_pair[p * hidden + n] = total[i][j][hh * 2 + c];
        }
    }
}

// h[row, i] = silu(gate_e(x_t)[i]) * up_e(x_t)[i] for the sorted rows of one tile (row = sorted position, t = the
// pair's token). A tile's 64 columns are 32 gate rows and the same 32 up rows, so SwiGLU is applied in the epilogue.
template <int DT>
__device__ void moe_gate_up_tc(const float* x, const uint32_t* perm, const uint32_t* offsets,
                               const uint32_t* tile_offsets, int experts, int top_k, int hidden, int inter,
                               ExpertTable gate, ExpertTable up, float* h) {
  constexpr bool SPLIT_W = DT == DT_F32 || DT == DT_F16;
  constexpr int HALF = TC_BN / 2;
  __shared__ int token_of[TC_BM];
  ExpertTile tile;
  if (!expert_tile(offsets, tile_offsets, experts, tile)) return;
  tile_tokens(perm, top_k, tile, token_of);
  int n0 = blockIdx.x * HALF;
  const void* wg = reinterpret_cast<const void*>(gate.weight[tile.expert]);
  const void* wu = reinterpret_cast<const void*>(up.weight[tile.expert]);
  WeightScale sg = expert_scale(gate, tile.expert), su = expert_scale(up, tile.expert);
  TcScaling scaling = tc_scaling(sg);  // gate and up share one layout (checked by the host)
  WeightScale stage_g = sg, stage_u = su;
  if (scaling.late) stage_g.scale = stage_u.scale = nullptr;
  float total[2][4][4] = {};
  __shared__ __align__(16) TcSmem<SPLIT_W> sm;
  auto w_late = [&](int c, int kb) {
    int n = min(n0 + c % HALF, inter - 1);
    return scale_at(c < HALF ? sg : su, n, kb);
  };
  if (tc_rows_apply<DT>(hidden, scaling, sg.scale != nullptr)) {
    if constexpr (!SPLIT_W) {
      constexpr int EB = elem_bytes<DT>();
      tc_tile_rows<DT>(
          hidden, sm, [&](int r) { return token_of[r] >= 0 ? x + (size_t)token_of[r] * hidden : nullptr; },
          [&](int c) {
            int n = n0 + c % HALF;
            const char* base = static_cast<const char*>(c < HALF ? wg : wu);
            return n < inter ? base + (size_t)n * hidden * EB : nullptr;
          },
          scaling, w_late, total);
    }
  } else {
    tc_tile<SPLIT_W>(
        hidden, sm,
        [&](int r, int k) { return (token_of[r] >= 0 && k < hidden) ? x[(size_t)token_of[r] * hidden + k] : 0.0f; },
        [&](int c, int k) {
          int n = n0 + c % HALF;
          if (n >= inter || k >= hidden) return 0.0f;
          return c < HALF ? weight_at<DT>(wg, stage_g, n, k, hidden) : weight_at<DT>(wu, stage_u, n, k, hidden);
        },
        scaling, w_late, total);
  }
  gate_up_store(total, tile, n0, inter, h);
}

// y_pair[p, n] = down_e(h[row])[n] for the sorted rows of one tile, written at the row's pair p.
template <int DT>
__device__ void moe_down_tc(const float* h, const uint32_t* perm, const uint32_t* offsets,
                            const uint32_t* tile_offsets, int experts, int hidden, int inter, ExpertTable down,
                            float* y_pair) {
  constexpr bool SPLIT_W = DT == DT_F32 || DT == DT_F16;
  ExpertTile tile;
  if (!expert_tile(offsets, tile_offsets, experts, tile)) return;
  int n0 = blockIdx.x * TC_BN;
  const void* w = reinterpret_cast<const void*>(down.weight[tile.expert]);
  WeightScale s = expert_scale(down, tile.expert);
  TcScaling scaling = tc_scaling(s);
  WeightScale staged = s;
  if (scaling.late) staged.scale = nullptr;
  float total[2][4][4] = {};
  __shared__ __align__(16) TcSmem<SPLIT_W> sm;
  auto w_late = [&](int c, int kb) { return scale_at(s, min(n0 + c, hidden - 1), kb); };
  if (tc_rows_apply<DT>(inter, scaling, s.scale != nullptr)) {
    if constexpr (!SPLIT_W) {
      constexpr int EB = elem_bytes<DT>();
      tc_tile_rows<DT>(
          inter, sm, [&](int r) { return r < tile.rows ? h + (size_t)(tile.row0 + r) * inter : nullptr; },
          [&](int c) { return n0 + c < hidden ? static_cast<const char*>(w) + (size_t)(n0 + c) * inter * EB : nullptr; },
          scaling, w_late, total);
    }
  } else {
    tc_tile<SPLIT_W>(
        inter, sm,
        [&](int r, int k) { return (r < tile.rows && k < inter) ? h[(size_t)(tile.row0 + r) * inter + k] : 0.0f; },
        [&](int c, int k) {
          int n = n0 + c;
          return (n < hidden && k < inter) ? weight_at<DT>(w, staged, n, k, inter) : 0.0f;
        },
        scaling, w_late, total);
  }
  down_store(total, tile, perm, n0, hidden, y_pair);
}

// moe_gate_up_tc and moe_down_tc over FP8 activations and FP8 weights (fp8_tile in mma.cuh), same tiles, same
// outputs: xq [tokens, hidden] E4M3 codes with scales xs [tokens, ceil(hidden / x_group)]; hq [pairs, inter] (sorted
// rows, as moe_gate_up writes h) with scales hs [pairs, ceil(inter / h_group)]. Gate and up share one scale layout.
extern "C" __global__ void __launch_bounds__(TC_THREADS)
    moe_gate_up_fp8x(const uint8_t* xq, const float* xs, int x_group, const uint32_t* perm, const uint32_t* offsets,
                     const uint32_t* tile_offsets, int experts, int top_k, int hidden, int inter, ExpertTable gate,
                     ExpertTable up, float* h) {
  constexpr int HALF = TC_BN / 2;
  __shared__ int token_of[TC_BM];
  ExpertTile tile;
  if (!expert_tile(offsets, tile_offsets, experts, tile)) return;
  tile_tokens(perm, top_k, tile, token_of);
  int n0 = blockIdx.x * HALF, groups = (hidden + x_group - 1) / x_group;
  const uint8_t* wg = reinterpret_cast<const uint8_t*>(gate.weight[tile.expert]);
  const uint8_t* wu = reinterpret_cast<const uint8_t*>(up.weight[tile.expert]);
  WeightScale sg = expert_scale(gate, tile.expert), su = expert_scale(up, tile.expert);
  float total[2][4][4] = {};
  fp8_tile(
      hidden, x_group, fp8_weight_block(sg, hidden),
      [&](int r) { return token_of[r] >= 0 ? xq + (size_t)token_of[r] * hidden : nullptr; },
      [&](int r, int g) { return token_of[r] >= 0 ? xs[(size_t)token_of[r] * groups + g] : 0.0f; },
      [&](int c) {
        int n = n0 + c % HALF;
        return n < inter ? (c < HALF ? wg : wu) + (size_t)n * hidden : nullptr;
      },
      [&](int c, int b) { return scale_at(c < HALF ? sg : su, min(n0 + c % HALF, inter - 1), b); }, total);
  gate_up_store(total, tile, n0, inter, h);
}

extern "C" __global__ void __launch_bounds__(TC_THREADS)
    moe_down_fp8x(const uint8_t* hq, const float* hs, int h_group, const uint32_t* perm, const uint32_t* offsets,
                  const uint32_t* tile_offsets, int experts, int hidden, int inter, ExpertTable down, float* y_pair) {
  ExpertTile tile;
  if (!expert_tile(offsets, tile_offsets, experts, tile)) return;
  int n0 = blockIdx.x * TC_BN, groups = (inter + h_group - 1) / h_group;
  const uint8_t* w = reinterpret_cast<const uint8_t*>(down.weight[tile.expert]);
  WeightScale s = expert_scale(down, tile.expert);
  float total[2][4][4] = {};
  fp8_tile(
      inter, h_group, fp8_weight_block(s, inter),
      [&](int r) { return r < tile.rows ? hq + (size_t)(tile.row0 + r) * inter : nullptr; },
      [&](int r, int g) { return r < tile.rows ? hs[(size_t)(tile.row0 + r) * groups + g] : 0.0f; },
      [&](int c) { return n0 + c < hidden ? w + (size_t)(n0 + c) * inter : nullptr; },
      [&](int c, int b) { return scale_at(s, min(n0 + c, hidden - 1), b); }, total);
  down_store(total, tile, perm, n0, hidden, y_pair);
}

// y[t, n] += sum over the token's slots, in slot order, of weights[p] * y_pair[p, n] (p = t * top_k + slot).
extern "C" __global__ void moe_combine(const float* y_pair, const float* weights, int tokens, int top_k, int hidden,
                                       float* y) {
  size_t n = (size_t)tokens * hidden;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    size_t t = i / hidden, c = i % hidden;
    float sum = 0.0f;
    for (int slot = 0; slot < top_k; ++slot) {
      size_t p = t * top_k + slot;
      sum += weights[p] * y_pair[p * hidden + c];
    }
    y[i] += sum;
  }
}

#define MOE_GROUPED(SUFFIX, DT)                                                                                  \
  extern "C" __global__ void __launch_bounds__(TC_THREADS)                                                      \
      moe_gate_up_tc_##SUFFIX(const float* x, const uint32_t* perm, const uint32_t* offsets,                    \
                              const uint32_t* tile_offsets, int experts, int top_k, int hidden, int inter,      \
                              ExpertTable gate, ExpertTable up, float* h) {                                     \
    moe_gate_up_tc<DT>(x, perm, offsets, tile_offsets, experts, top_k, hidden, inter, gate, up, h);             \
  }                                                                                                             \
  extern "C" __global__ void __launch_bounds__(TC_THREADS)                                                      \
      moe_down_tc_##SUFFIX(const float* h, const uint32_t* perm, const uint32_t* offsets,                       \
                           const uint32_t* tile_offsets, int experts, int hidden, int inter, ExpertTable down,  \
                           float* y_pair) {                                                                     \
    moe_down_tc<DT>(h, perm, offsets, tile_offsets, experts, hidden, inter, down, y_pair);                      \
  }
MOE_GROUPED(f32, DT_F32)
MOE_GROUPED(bf16, DT_BF16)
MOE_GROUPED(f16, DT_F16)
MOE_GROUPED(fp8, DT_FP8)
