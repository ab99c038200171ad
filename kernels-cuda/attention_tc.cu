// Attention for prefill chunks on tensor cores (flash-attention style): a block takes a tile of up to 64 query rows of
// one sequence and one query head, and walks that sequence's keys in tiles of 64 that every row of the tile shares,
// so each key and value is read once per tile instead of once per row. Keys and values in BF16 or FP8 (the paged
// cache) or f32 (the cache in tests, and the vision tower's contiguous segments); head_dim 128.
//
// Precision follows mma.cuh: q (f32, pre-scaled) and the probabilities are split into hi + lo BF16 parts, keys and
// values are exact in BF16 (FP8 values too: their per-(slot, kv head) scales multiply the scores and the
// probabilities instead) or, from f32, split like q (a third mma per product), accumulation is f32, so the result
// stays close to the f32 CPU reference.
//
// Rows and keys follow attention.cuh: row r attends keys j < key_count[r] of its sequence, found through the block
// table at table_offset[r] (paged) or at key_begin[r] + j; a tile's rows share their sequence (the host builds the
// tiles), so the tile's first row gives the key source, and each row's key_count masks the rest (causality).
//
// GQA (decode rows): a tile is instead the query heads of one kv head for one query row, so each key and value of
// that kv head is read once for all of them (GLM-4.5V: 12 heads, GLM-4.1V: 16), and with `partial` set block z of
// gridDim.z takes keys [z * keys_per_split, (z + 1) * keys_per_split) and writes its unnormalised result in
// attention.cuh's split layout, which attention_combine merges (flash-decoding).
#include "mma.cuh"

#define FA_D 128
#define FA_ROWS 64                 // query rows per tile (4 warps x 16)
#define FA_LDK (FA_D + 8)          // K tile row: FA_D BF16 + padding

// Two values as the low and high BF16 halves of one 32-bit fragment register (the lower k index in the low half).
__device__ __forceinline__ uint32_t pack_bf16(__nv_bfloat16 lo_k, __nv_bfloat16 hi_k) {
  return (uint32_t)__bfloat16_as_ushort(lo_k) | ((uint32_t)__bfloat16_as_ushort(hi_k) << 16);
}

// The row of the cache holding key j of the tile's sequence.
__device__ __forceinline__ size_t key_slot(const uint32_t* table, uint32_t begin, int block_size, uint32_t j) {
  return table != nullptr ? (size_t)table[j / block_size] * block_size + j % block_size : (size_t)begin + j;
}

// Eight consecutive values of one key's head as BF16, as 16-byte words: hi (exact for BF16 and FP8) and, for f32
// values, lo = the rest.
template <int KV>
__device__ __forceinline__ void load8_bf16(const void* base, size_t i, uint4& hi, uint4& lo) {
  if constexpr (KV == KV_BF16) {
    hi = *reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(base) + i);
  } else if constexpr (KV == KV_F32) {
    const float4* f = reinterpret_cast<const float4*>(static_cast<const float*>(base) + i);
    float4 a = f[0], b = f[1];
    float x[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    __nv_bfloat16* h = reinterpret_cast<__nv_bfloat16*>(&hi);
    __nv_bfloat16* l = reinterpret_cast<__nv_bfloat16*>(&lo);
#pragma unroll
    for (int e = 0; e < 8; ++e) split_bf16(x[e], h[e], l[e]);
  } else {
    uint2 raw = *reinterpret_cast<const uint2*>(static_cast<const uint8_t*>(base) + i);
    const uint8_t* b = reinterpret_cast<const uint8_t*>(&raw);
    uint4 out;
    __nv_bfloat16* o = reinterpret_cast<__nv_bfloat16*>(&out);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      __nv_fp8_e4m3 f;
      f.__x = b[e];
      o[e] = __float2bfloat16(static_cast<float>(f));
    }
    hi = out;
  }
}

// Prefill: grid (tiles, heads), tile t covers rows tile_row0[t] .. + tile_rows[t] of head blockIdx.y. GQA: grid
// (rows, kv_heads, splits), the tile is heads / kv_heads (<= FA_ROWS) heads of row blockIdx.x. FA_ROWS * 2 threads.
// KV: KV_BF16, KV_FP8 (k_scale / v_scale[slot * kv_heads + kv head], unused otherwise) or KV_F32 (keys in steps of
// 32: hi and lo tiles).
template <int KV, bool GQA>
__device__ void attention_tc(const float* q, int heads, int kv_heads, float scale, const void* k, int k_stride,
                             const void* v, int v_stride, const float* k_scale, const float* v_scale,
                             const uint32_t* key_begin, const uint32_t* key_count, const uint32_t* block_table,
                             const uint32_t* table_offset, int block_size, const uint32_t* tile_row0,
                             const uint32_t* tile_rows, int keys_per_split, float* partial, float* out) {
  constexpr bool SCALED = KV == KV_FP8, SPLIT = KV == KV_F32;
  constexpr int KEYS = SPLIT ? 32 : 64;  // keys per step
  constexpr int LDV = KEYS + 8;          // transposed V tile row: KEYS BF16 + padding
  constexpr int TILES = KEYS * FA_LDK + FA_D * LDV;
  __shared__ float k_sc[SCALED ? KEYS : 1], v_sc[SCALED ? KEYS : 1];
  // Q's hi and lo parts are staged through the same memory as the K and V tiles, then held in registers.
  __shared__ __align__(16) __nv_bfloat16 smem[(SPLIT ? 2 : 1) * TILES];
  __shared__ uint32_t row_count[FA_ROWS];
  __shared__ uint32_t tile_keys;
  __nv_bfloat16* ks = smem;                 // [KEYS][FA_LDK]
  __nv_bfloat16* vt = smem + KEYS * FA_LDK;  // [FA_D][LDV], vt[c][j] = V[key j][dim c]
  __nv_bfloat16* ks_lo = smem + TILES;       // SPLIT: the lo parts, same layouts
  __nv_bfloat16* vt_lo = ks_lo + KEYS * FA_LDK;
  static_assert(2 * FA_ROWS * FA_LDK <= (SPLIT ? 2 : 1) * TILES, "Q staging fits");

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int group = lane / 4, pair = (lane % 4) * 2;
  const int heads_per_kv = heads / kv_heads;
  const int kvh = GQA ? blockIdx.y : blockIdx.y / heads_per_kv;
  const uint32_t row0 = GQA ? blockIdx.x : tile_row0[blockIdx.x];
  const int rows = GQA ? heads_per_kv : tile_rows[blockIdx.x];
  // Query row and head of tile row r.
  auto row_of = [&](int r) -> size_t { return GQA ? row0 : row0 + r; };
  auto head_of = [&](int r) -> int { return GQA ? kvh * heads_per_kv + r : blockIdx.y; };
  const uint32_t* table = block_table != nullptr ? block_table + table_offset[row0] : nullptr;
  const uint32_t begin = key_begin[row0];
  const size_t q_stride = (size_t)heads * FA_D;

  // Stage Q (scaled, split) and the rows' key counts.
  __nv_bfloat16* qh = smem;
  __nv_bfloat16* ql = smem + FA_ROWS * FA_LDK;
  for (int i = tid; i < FA_ROWS * FA_D; i += blockDim.x) {
    int r = i / FA_D, c = i % FA_D;
    float x = r < rows ? q[row_of(r) * q_stride + (size_t)head_of(r) * FA_D + c] * scale : 0.0f;
    split_bf16(x, qh[r * FA_LDK + c], ql[r * FA_LDK + c]);
  }
  if (tid < FA_ROWS) row_count[tid] = tid < rows ? key_count[row_of(tid)] : 0;
  __syncthreads();
  if (tid == 0) {
    uint32_t most = 0;
    for (int r = 0; r < rows; ++r) most = max(most, row_count[r]);
    tile_keys = most;
  }
  const int wr = warp * 16;  // this warp's first row in the tile
  uint32_t q_hi[FA_D / 16][4], q_lo[FA_D / 16][4];
#pragma unroll
  for (int s = 0; s < FA_D / 16; ++s) {
    load_a<FA_LDK>(q_hi[s], qh, wr, s * 16, group, pair);
    load_a<FA_LDK>(q_lo[s], ql, wr, s * 16, group, pair);
  }
  __syncthreads();
  // This block's keys: all the tile's, or its split's.
  const uint32_t first = partial != nullptr ? blockIdx.z * (uint32_t)keys_per_split : 0;
  const uint32_t keys = partial != nullptr ? min(tile_keys, first + (uint32_t)keys_per_split) : tile_keys;
  // This thread's two rows (group and group + 8 of the warp's 16) and how many keys each sees.
  const uint32_t count0 = min(row_count[wr + group], keys), count1 = min(row_count[wr + group + 8], keys);

  float o[FA_D / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  for (uint32_t kt = first; kt < keys; kt += KEYS) {
    // K tile [key][dim] and V tile transposed [dim][key], 16 bytes (8 dims of one key) per load.
    for (int i = tid; i < KEYS * (FA_D / 8); i += blockDim.x) {
      int j = i / (FA_D / 8), c = (i % (FA_D / 8)) * 8;
      uint4 kv4 = make_uint4(0, 0, 0, 0), vv4 = kv4, kv_lo = kv4, vv_lo = kv4;
      if (kt + j < keys) {
        size_t slot = key_slot(table, begin, block_size, kt + j);
        load8_bf16<KV>(k, slot * k_stride + (size_t)kvh * FA_D + c, kv4, kv_lo);
        load8_bf16<KV>(v, slot * v_stride + (size_t)kvh * FA_D + c, vv4, vv_lo);
        if (SCALED && c == 0) {
          k_sc[j] = k_scale[slot * kv_heads + kvh];
          v_sc[j] = v_scale[slot * kv_heads + kvh];
        }
      } else if (SCALED && c == 0) {
        k_sc[j] = v_sc[j] = 0.0f;
      }
      *reinterpret_cast<uint4*>(ks + j * FA_LDK + c) = kv4;
      const __nv_bfloat16* vb = reinterpret_cast<const __nv_bfloat16*>(&vv4);
#pragma unroll
      for (int e = 0; e < 8; ++e) vt[(c + e) * LDV + j] = vb[e];
      if constexpr (SPLIT) {
        *reinterpret_cast<uint4*>(ks_lo + j * FA_LDK + c) = kv_lo;
        const __nv_bfloat16* vl = reinterpret_cast<const __nv_bfloat16*>(&vv_lo);
#pragma unroll
        for (int e = 0; e < 8; ++e) vt_lo[(c + e) * LDV + j] = vl[e];
      }
    }
    __syncthreads();
    // Scores of this warp's 16 rows against the step's keys, in tiles of 8 keys.
    float s[KEYS / 8][4] = {};
#pragma unroll
    for (int nt = 0; nt < KEYS / 8; ++nt)
#pragma unroll
      for (int d = 0; d < FA_D / 16; ++d) {
        uint32_t b[2];
        load_b<FA_LDK>(b, ks, nt * 8, d * 16, group, pair);
        mma_bf16_16816(s[nt], q_hi[d], b);
        mma_bf16_16816(s[nt], q_lo[d], b);
        if constexpr (SPLIT) {
          load_b<FA_LDK>(b, ks_lo, nt * 8, d * 16, group, pair);
          mma_bf16_16816(s[nt], q_hi[d], b);
        }
      }
    // Mask keys past each row's count, then the online softmax per row (a row's values sit in the 4 lanes of a quad).
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < KEYS / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int key = nt * 8 + pair + (e & 1);
        int hr = e >> 1;
        if constexpr (SCALED) s[nt][e] *= k_sc[key];
        if (kt + key >= (hr ? count1 : count0)) s[nt][e] = -INFINITY;
        tile_max[hr] = fmaxf(tile_max[hr], s[nt][e]);
      }
    float correction[2];
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      tile_max[hr] = fmaxf(tile_max[hr], __shfl_xor_sync(0xffffffffu, tile_max[hr], 1));
      tile_max[hr] = fmaxf(tile_max[hr], __shfl_xor_sync(0xffffffffu, tile_max[hr], 2));
      float new_m = fmaxf(m[hr], tile_max[hr]);
      // No key seen yet (new_m = -inf): nothing to correct, every probability 0.
      correction[hr] = new_m == -INFINITY ? 1.0f : expf(m[hr] - new_m);
      m[hr] = new_m;
      l[hr] *= correction[hr];
    }
#pragma unroll
    for (int dt = 0; dt < FA_D / 8; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[dt][e] *= correction[e >> 1];
#pragma unroll
    for (int nt = 0; nt < KEYS / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int hr = e >> 1;
        float p = m[hr] == -INFINITY ? 0.0f : expf(s[nt][e] - m[hr]);
        s[nt][e] = p;
        l[hr] += p;
      }
    // O += P V: P's accumulator layout is the A-operand layout of the next mma (key tiles 2kk and 2kk + 1 form
    // k-step kk), split into hi + lo; FP8 values' scales multiply the probabilities (l keeps the unscaled sum).
#pragma unroll
    for (int kk = 0; kk < KEYS / 16; ++kk) {
      uint32_t ph[4], pl[4];
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        int nt = 2 * kk + (f >> 1), e = (f & 1) * 2;
        float p0 = s[nt][e], p1 = s[nt][e + 1];
        if constexpr (SCALED) {
          p0 *= v_sc[nt * 8 + pair];
          p1 *= v_sc[nt * 8 + pair + 1];
        }
        __nv_bfloat16 h0, l0, h1, l1;
        split_bf16(p0, h0, l0);
        split_bf16(p1, h1, l1);
        ph[f] = pack_bf16(h0, h1);
        pl[f] = pack_bf16(l0, l1);
      }
#pragma unroll
      for (int dt = 0; dt < FA_D / 8; ++dt) {
        uint32_t b[2];
        load_b<LDV>(b, vt, dt * 8, kk * 16, group, pair);
        mma_bf16_16816(o[dt], ph, b);
        mma_bf16_16816(o[dt], pl, b);
        if constexpr (SPLIT) {
          load_b<LDV>(b, vt_lo, dt * 8, kk * 16, group, pair);
          mma_bf16_16816(o[dt], ph, b);
        }
      }
    }
    __syncthreads();
  }
  // Each lane summed its own columns of l: the row's total is the quad's sum.
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    l[hr] += __shfl_xor_sync(0xffffffffu, l[hr], 1);
    l[hr] += __shfl_xor_sync(0xffffffffu, l[hr], 2);
  }
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    int r = wr + group + hr * 8;
    if (r >= rows) continue;
    if (partial != nullptr) {
      // Unnormalised, as attention.cuh's splits: max, sum, then the head's values (-inf, 0, 0 without keys).
      float* dst = partial + ((row_of(r) * heads + head_of(r)) * gridDim.z + blockIdx.z) * (FA_D + 2);
      if (pair == 0) {
        dst[0] = m[hr];
        dst[1] = l[hr];
      }
#pragma unroll
      for (int dt = 0; dt < FA_D / 8; ++dt) {
        dst[2 + dt * 8 + pair] = o[dt][hr * 2];
        dst[2 + dt * 8 + pair + 1] = o[dt][hr * 2 + 1];
      }
      continue;
    }
    float total = l[hr] > 0.0f ? l[hr] : 1.0f;  // a row without keys (never planned) writes zeros
    float* dst = out + row_of(r) * q_stride + (size_t)head_of(r) * FA_D;
#pragma unroll
    for (int dt = 0; dt < FA_D / 8; ++dt) {
      dst[dt * 8 + pair] = o[dt][hr * 2] / total;
      dst[dt * 8 + pair + 1] = o[dt][hr * 2 + 1] / total;
    }
  }
}

#define ATTENTION_TC_KERNEL(NAME, KV, GQA)                                                                         \
  extern "C" __global__ void __launch_bounds__(128)                                                               \
      NAME(const float* q, int heads, int kv_heads, float scale, const void* k, int k_stride, const void* v,       \
           int v_stride, const float* k_scale, const float* v_scale, const uint32_t* key_begin,                    \
           const uint32_t* key_count, const uint32_t* block_table, const uint32_t* table_offset, int block_size,   \
           const uint32_t* tile_row0, const uint32_t* tile_rows, int keys_per_split, float* partial, float* out) {  \
    attention_tc<KV, GQA>(q, heads, kv_heads, scale, k, k_stride, v, v_stride, k_scale, v_scale, key_begin,        \
                          key_count, block_table, table_offset, block_size, tile_row0, tile_rows, keys_per_split,  \
                          partial, out);                                                                           \
  }
ATTENTION_TC_KERNEL(attention_tc_bf16_d128, KV_BF16, false)
ATTENTION_TC_KERNEL(attention_tc_fp8_d128, KV_FP8, false)
ATTENTION_TC_KERNEL(attention_tc_f32_d128, KV_F32, false)
ATTENTION_TC_KERNEL(attention_gqa_tc_bf16_d128, KV_BF16, true)
ATTENTION_TC_KERNEL(attention_gqa_tc_fp8_d128, KV_FP8, true)
ATTENTION_TC_KERNEL(attention_gqa_tc_f32_d128, KV_F32, true)
