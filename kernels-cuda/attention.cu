// Rotary embedding with the KV-cache write, and attention with an online softmax over key tiles.
#include "attention.cuh"

// Rotary description, as runtime/src/backend/rope.rs: frequency i rotates pair (i, i + rot/2) (NeoX halves) or
// (2i, 2i + 1) (interleaved), with angle positions[axis[i]] * inv_freq[i]. Passed by value (kernel parameter space,
// read through the constant cache), so a launch needs no upload and a recorded graph holds the table itself.
#define ROPE_MAX_FREQS 128
struct Rope {
  float inv_freq[ROPE_MAX_FREQS];
  uint8_t axis[ROPE_MAX_FREQS];
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
// at slots[row] (none for NO_SLOT: the padding rows of a recorded decode step), stored as kv_dtype (KV_*; FP8 with a
// scale per slot and kv head). qkv rows are [q | k | v].
#define NO_SLOT 0xffffffffu
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
  if (k_cache == nullptr || slots[row] == NO_SLOT) return;
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
      float scale = fp8_scale(absmax);
      if (lane == 0) (is_v ? v_scale : k_scale)[slot * kv_heads + h] = scale;
      for (int c = lane; c < d; c += 32) static_cast<__nv_fp8_e4m3*>(cache)[base + c] = __nv_fp8_e4m3(x[c] / scale);
    }
  }
}

// Merges the splits of attention(..., partial, ...): out[row, h] = sum_z o_z e^(m_z - M) / sum_z l_z e^(m_z - M).
// One block per (row, head).
extern "C" __global__ void attention_combine(const float* partial, int heads, int d, int splits, float* out) {
  size_t row = blockIdx.x;
  int h = blockIdx.y;
  const float* p = partial + (row * heads + h) * splits * (d + 2);
  float big = -INFINITY;
  for (int z = 0; z < splits; ++z) big = fmaxf(big, p[z * (d + 2)]);
  float total = 0.0f;
  for (int z = 0; z < splits; ++z)
    if (p[z * (d + 2)] != -INFINITY) total += p[z * (d + 2) + 1] * expf(p[z * (d + 2)] - big);
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float o = 0.0f;
    for (int z = 0; z < splits; ++z)
      if (p[z * (d + 2)] != -INFINITY) o += p[z * (d + 2) + 2 + c] * expf(p[z * (d + 2)] - big);
    out[row * heads * d + h * d + c] = o / total;
  }
}

// The generic kernels (any head_dim up to 32 * MAX_DIMS_PER_LANE, any GQA ratio).
ATTENTION_KERNEL(attention_f32, KV_F32, 0, 0)
ATTENTION_KERNEL(attention_bf16, KV_BF16, 0, 0)
ATTENTION_KERNEL(attention_fp8, KV_FP8, 0, 0)
