// Attention for prefill chunks on tensor cores (flash-attention style): a block takes a tile of up to 64 query rows of
// one sequence and one query head, and walks that sequence's keys in tiles of 64 that every row of the tile shares,
// so each key and value is read once per tile instead of once per row. BF16 KV cache, head_dim 128.
//
// Precision follows mma.cuh: q (f32, pre-scaled) and the probabilities are split into hi + lo BF16 parts, keys and
// values are exact in BF16, accumulation is f32, so the result stays close to the f32 CPU reference.
//
// Rows and keys follow attention.cuh: row r attends keys j < key_count[r] of its sequence, found through the block
// table at table_offset[r] (paged) or at key_begin[r] + j; a tile's rows share their sequence (the host builds the
// tiles), so the tile's first row gives the key source, and each row's key_count masks the rest (causality).
#include "mma.cuh"

#define FA_D 128
#define FA_ROWS 64                 // query rows per tile (4 warps x 16)
#define FA_KEYS 64                 // keys per step
#define FA_LDK (FA_D + 8)          // K tile row: FA_D BF16 + padding
#define FA_LDV (FA_KEYS + 8)       // transposed V tile row: FA_KEYS BF16 + padding

template <int LD>
__device__ __forceinline__ void frag_a(uint32_t a[4], const __nv_bfloat16* t, int r, int k, int group, int pair) {
  a[0] = lds32(t + (r + group) * LD + k + pair);
  a[1] = lds32(t + (r + group + 8) * LD + k + pair);
  a[2] = lds32(t + (r + group) * LD + k + pair + 8);
  a[3] = lds32(t + (r + group + 8) * LD + k + pair + 8);
}

template <int LD>
__device__ __forceinline__ void frag_b(uint32_t b[2], const __nv_bfloat16* t, int n, int k, int group, int pair) {
  b[0] = lds32(t + (n + group) * LD + k + pair);
  b[1] = lds32(t + (n + group) * LD + k + pair + 8);
}

// Two values as the low and high BF16 halves of one 32-bit fragment register (the lower k index in the low half).
__device__ __forceinline__ uint32_t pack_bf16(__nv_bfloat16 lo_k, __nv_bfloat16 hi_k) {
  return (uint32_t)__bfloat16_as_ushort(lo_k) | ((uint32_t)__bfloat16_as_ushort(hi_k) << 16);
}

// The row of the cache holding key j of the tile's sequence.
__device__ __forceinline__ size_t key_slot(const uint32_t* table, uint32_t begin, int block_size, uint32_t j) {
  return table != nullptr ? (size_t)table[j / block_size] * block_size + j % block_size : (size_t)begin + j;
}

// grid (tiles, heads), FA_ROWS * 2 threads. Tile t covers rows tile_row0[t] .. + tile_rows[t].
extern "C" __global__ void __launch_bounds__(128)
    attention_tc_bf16_d128(const float* q, int heads, int kv_heads, float scale, const __nv_bfloat16* k, int k_stride,
                           const __nv_bfloat16* v, int v_stride, const uint32_t* key_begin,
                           const uint32_t* key_count, const uint32_t* block_table, const uint32_t* table_offset,
                           int block_size, const uint32_t* tile_row0, const uint32_t* tile_rows, float* out) {
  // Q's hi and lo parts are staged through the same memory as the K and V tiles, then held in registers.
  __shared__ __align__(16) __nv_bfloat16 smem[FA_KEYS * FA_LDK + FA_D * FA_LDV];
  __shared__ uint32_t row_count[FA_ROWS];
  __shared__ uint32_t tile_keys;
  __nv_bfloat16* ks = smem;                    // [FA_KEYS][FA_LDK]
  __nv_bfloat16* vt = smem + FA_KEYS * FA_LDK;  // [FA_D][FA_LDV], vt[c][j] = V[key j][dim c]
  static_assert(2 * FA_ROWS * FA_LDK <= FA_KEYS * FA_LDK + FA_D * FA_LDV, "Q staging fits");

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int group = lane / 4, pair = (lane % 4) * 2;
  const int h = blockIdx.y, kvh = h / (heads / kv_heads);
  const uint32_t row0 = tile_row0[blockIdx.x];
  const int rows = tile_rows[blockIdx.x];
  const uint32_t* table = block_table != nullptr ? block_table + table_offset[row0] : nullptr;
  const uint32_t begin = key_begin[row0];
  const size_t q_stride = (size_t)heads * FA_D;

  // Stage Q (scaled, split) and the rows' key counts.
  __nv_bfloat16* qh = smem;
  __nv_bfloat16* ql = smem + FA_ROWS * FA_LDK;
  for (int i = tid; i < FA_ROWS * FA_D; i += blockDim.x) {
    int r = i / FA_D, c = i % FA_D;
    float x = r < rows ? q[(row0 + r) * q_stride + (size_t)h * FA_D + c] * scale : 0.0f;
    split_bf16(x, qh[r * FA_LDK + c], ql[r * FA_LDK + c]);
  }
  if (tid < FA_ROWS) row_count[tid] = tid < rows ? key_count[row0 + tid] : 0;
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
    frag_a<FA_LDK>(q_hi[s], qh, wr, s * 16, group, pair);
    frag_a<FA_LDK>(q_lo[s], ql, wr, s * 16, group, pair);
  }
  __syncthreads();
  const uint32_t keys = tile_keys;
  // This thread's two rows (group and group + 8 of the warp's 16) and how many keys each sees.
  const uint32_t count0 = row_count[wr + group], count1 = row_count[wr + group + 8];

  float o[FA_D / 8][4] = {};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  for (uint32_t kt = 0; kt < keys; kt += FA_KEYS) {
    // K tile [key][dim] and V tile transposed [dim][key], 16 bytes (8 dims of one key) per load.
    for (int i = tid; i < FA_KEYS * (FA_D / 8); i += blockDim.x) {
      int j = i / (FA_D / 8), c = (i % (FA_D / 8)) * 8;
      uint4 kv4 = make_uint4(0, 0, 0, 0), vv4 = make_uint4(0, 0, 0, 0);
      if (kt + j < keys) {
        size_t slot = key_slot(table, begin, block_size, kt + j);
        kv4 = *reinterpret_cast<const uint4*>(k + slot * k_stride + (size_t)kvh * FA_D + c);
        vv4 = *reinterpret_cast<const uint4*>(v + slot * v_stride + (size_t)kvh * FA_D + c);
      }
      *reinterpret_cast<uint4*>(ks + j * FA_LDK + c) = kv4;
      const __nv_bfloat16* vb = reinterpret_cast<const __nv_bfloat16*>(&vv4);
#pragma unroll
      for (int e = 0; e < 8; ++e) vt[(c + e) * FA_LDV + j] = vb[e];
    }
    __syncthreads();
    // Scores of this warp's 16 rows against the 64 keys: 8 tiles of 8 keys.
    float s[FA_KEYS / 8][4] = {};
#pragma unroll
    for (int nt = 0; nt < FA_KEYS / 8; ++nt)
#pragma unroll
      for (int d = 0; d < FA_D / 16; ++d) {
        uint32_t b[2];
        frag_b<FA_LDK>(b, ks, nt * 8, d * 16, group, pair);
        mma_bf16_16816(s[nt], q_hi[d], b);
        mma_bf16_16816(s[nt], q_lo[d], b);
      }
    // Mask keys past each row's count, then the online softmax per row (a row's values sit in the 4 lanes of a quad).
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < FA_KEYS / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        uint32_t j = kt + nt * 8 + pair + (e & 1);
        int hr = e >> 1;
        if (j >= (hr ? count1 : count0)) s[nt][e] = -INFINITY;
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
    for (int nt = 0; nt < FA_KEYS / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        int hr = e >> 1;
        float p = m[hr] == -INFINITY ? 0.0f : expf(s[nt][e] - m[hr]);
        s[nt][e] = p;
        l[hr] += p;
      }
    // O += P V: P's accumulator layout is the A-operand layout of the next mma (key tiles 2kk and 2kk + 1 form
    // k-step kk), split into hi + lo.
#pragma unroll
    for (int kk = 0; kk < FA_KEYS / 16; ++kk) {
      uint32_t ph[4], pl[4];
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        const float* src = &s[2 * kk + (f >> 1)][(f & 1) * 2];
        __nv_bfloat16 h0, l0, h1, l1;
        split_bf16(src[0], h0, l0);
        split_bf16(src[1], h1, l1);
        ph[f] = pack_bf16(h0, h1);
        pl[f] = pack_bf16(l0, l1);
      }
#pragma unroll
      for (int dt = 0; dt < FA_D / 8; ++dt) {
        uint32_t b[2];
        frag_b<FA_LDV>(b, vt, dt * 8, kk * 16, group, pair);
        mma_bf16_16816(o[dt], ph, b);
        mma_bf16_16816(o[dt], pl, b);
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
    float total = l[hr] > 0.0f ? l[hr] : 1.0f;  // a row without keys (never planned) writes zeros
    float* dst = out + (row0 + r) * q_stride + (size_t)h * FA_D;
#pragma unroll
    for (int dt = 0; dt < FA_D / 8; ++dt) {
      dst[dt * 8 + pair] = o[dt][hr * 2] / total;
      dst[dt * 8 + pair + 1] = o[dt][hr * 2 + 1] / total;
    }
  }
}
