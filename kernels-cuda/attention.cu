// Rotary embedding with the KV-cache write, and attention with an online softmax over key tiles.
#include "common.cuh"

// Rotary description, as runtime/src/backend/rope.rs: frequency i rotates pair (i, i + rot/2) (NeoX halves) or
// (2i, 2i + 1) (interleaved), with angle positions[axis[i]] * inv_freq[i].
struct Rope {
  const float* inv_freq;
  const uint8_t* axis;
  int rot_dim;
  int interleaved;
};

__device__ __forceinline__ void rotate_head(float* head, const Rope& r, const uint32_t* pos, int lane, int lanes) {
  int half = r.rot_dim / 2;
  for (int i = lane; i < half; i += lanes) {
    float theta = (float)pos[r.axis[i]] * r.inv_freq[i];
    float c = cosf(theta), s = sinf(theta);
    int a = r.interleaved ? 2 * i : i, b = r.interleaved ? 2 * i + 1 : i + half;
    float x = head[a], y = head[b];
    head[a] = x * c - y * s;
    head[b] = y * c + x * s;
  }
}

// One block per row: q_out = rotated q; k_out = rotated k; when k_cache != nullptr, rotated k and v go to the cache
// at slots[row], stored as kv_dtype (KV_*; FP8 with a scale per slot and kv head). qkv rows are [q | k | v].
extern "C" __global__ void rope_qkv(const float* qkv, const uint32_t* positions, Rope rope, int heads, int kv_heads,
                                    int d, float* q_out, float* k_out, void* k_cache, void* v_cache, float* k_scale,
                                    float* v_scale, int kv_dtype, const uint32_t* slots) {
  size_t row = blockIdx.x;
  int qw = heads * d, kvw = kv_heads * d, width = qw + 2 * kvw;
  const float* src = qkv + row * width;
  float* q = q_out + row * qw;
  float* k = k_out + row * kvw;
  for (int c = threadIdx.x; c < qw; c += blockDim.x) q[c] = src[c];
  for (int c = threadIdx.x; c < kvw; c += blockDim.x) k[c] = src[qw + c];
  __syncthreads();
  const uint32_t* pos = positions + row * 3;
  // One warp per head.
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int h = warp; h < heads + kv_heads; h += warps) {
    float* head = h < heads ? q + h * d : k + (h - heads) * d;
    rotate_head(head, rope, pos, lane, 32);
  }
  __syncthreads();
  if (k_cache == nullptr) return;
  size_t slot = slots[row];
  // One warp per (kv head, k or v).
  for (int task = warp; task < 2 * kv_heads; task += warps) {
    int h = task % kv_heads;
    bool is_v = task >= kv_heads;
    const float* x = is_v ? src + qw + kvw + h * d : k + h * d;
    void* cache = is_v ? v_cache : k_cache;
    size_t base = slot * kvw + h * d;
    if (kv_dtype == KV_F32) {
      for (int c = lane; c < d; c += 32) static_cast<float*>(cache)[base + c] = x[c];
    } else if (kv_dtype == KV_BF16) {
      for (int c = lane; c < d; c += 32) static_cast<__nv_bfloat16*>(cache)[base + c] = __float2bfloat16(x[c]);
    } else {
      float absmax = 0.0f;
      for (int c = lane; c < d; c += 32) absmax = fmaxf(absmax, fabsf(x[c]));
      absmax = warp_max(absmax);
      float scale = absmax > 0.0f ? absmax / 448.0f : 1.0f;
      if (lane == 0) (is_v ? v_scale : k_scale)[slot * kv_heads + h] = scale;
      for (int c = lane; c < d; c += 32) static_cast<__nv_fp8_e4m3*>(cache)[base + c] = __nv_fp8_e4m3(x[c] / scale);
    }
  }
}

// Dims of a head a lane owns (lane, lane + 32, ...): head_dim up to 32 * MAX_DIMS_PER_LANE.
#define MAX_DIMS_PER_LANE 8
#define ATTENTION_WARPS 4

// One block of ATTENTION_WARPS warps per (row, head). Query row `row` attends keys j = 0 .. key_count[row] - 1
// whose rows in k/v are: paged (block_table != nullptr): slot of position j via the row's block table; contiguous:
// key_begin[row] + j. k and v rows have strides k_stride / v_stride elements of type KV; head kvh starts at kvh * d.
// FP8 rows are scaled by k_scale / v_scale[row * kv_heads + kvh].
// Each warp runs an online softmax over every ATTENTION_WARPS-th key with no block-wide synchronisation; the warps'
// partial results are merged at the end.
template <int KV>
__device__ void attention(const float* q, int heads, int kv_heads, int d, float scale, const void* k, int k_stride,
                          const void* v, int v_stride, const float* k_scale, const float* v_scale,
                          const uint32_t* key_begin, const uint32_t* key_count, const uint32_t* block_table,
                          const uint32_t* table_offset, int block_size, float* out) {
  __shared__ float part_m[ATTENTION_WARPS], part_l[ATTENTION_WARPS];
  __shared__ float part_acc[ATTENTION_WARPS][32 * MAX_DIMS_PER_LANE];
  size_t row = blockIdx.x;
  int h = blockIdx.y;
  int kvh = h / (heads / kv_heads);
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int per_lane = (d + 31) / 32;
  float qv[MAX_DIMS_PER_LANE], acc[MAX_DIMS_PER_LANE];
#pragma unroll
  for (int i = 0; i < MAX_DIMS_PER_LANE; ++i) {
    int c = lane + 32 * i;
    qv[i] = (i < per_lane && c < d) ? q[row * heads * d + h * d + c] * scale : 0.0f;
    acc[i] = 0.0f;
  }
  uint32_t count = key_count[row], begin = key_begin[row];
  const uint32_t* table = block_table != nullptr ? block_table + table_offset[row] : nullptr;
  float m = -INFINITY, l = 0.0f;
  for (uint32_t j = warp; j < count; j += ATTENTION_WARPS) {
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
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < ATTENTION_WARPS; ++w)
      if (part_m[w] != -INFINITY) o += part_acc[w][c] * expf(part_m[w] - big);
    out[row * heads * d + h * d + c] = o / total;
  }
}

#define ATTENTION(SUFFIX, KV)                                                                                    \
  extern "C" __global__ void attention_##SUFFIX(                                                                 \
      const float* q, int heads, int kv_heads, int d, float scale, const void* k, int k_stride, const void* v,   \
      int v_stride, const float* k_scale, const float* v_scale, const uint32_t* key_begin,                       \
      const uint32_t* key_count, const uint32_t* block_table, const uint32_t* table_offset, int block_size,        \
      float* out) {                                                                                              \
    attention<KV>(q, heads, kv_heads, d, scale, k, k_stride, v, v_stride, k_scale, v_scale, key_begin, key_count, \
                  block_table, table_offset, block_size, out);                                                   \
  }
ATTENTION(f32, KV_F32)
ATTENTION(bf16, KV_BF16)
ATTENTION(fp8, KV_FP8)
