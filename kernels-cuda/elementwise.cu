// Norms, embedding gather, activations and row movement.
#include "common.cuh"

// out[t, :] = table[ids[t], :]
template <int DT>
__device__ void embed(const void* table, WeightScale s, int K, const uint32_t* ids, float* out) {
  int t = blockIdx.x;
  uint32_t id = ids[t];
  for (int c = threadIdx.x; c < K; c += blockDim.x) out[(size_t)t * K + c] = weight_at<DT>(table, s, id, c, K);
}
#define EMBED(NAME, DT)                                                                                  \
  extern "C" __global__ void NAME(const void* table, WeightScale s, int K, const uint32_t* ids, float* out) { \
    embed<DT>(table, s, K, ids, out);                                                                    \
  }
EMBED(embed_f32, DT_F32)
EMBED(embed_bf16, DT_BF16)
EMBED(embed_f16, DT_F16)
EMBED(embed_fp8, DT_FP8)

// One block per row. If residual != nullptr: residual += delta first and the norm is taken of the sum.
extern "C" __global__ void rms_norm(const float* x, float* residual, const float* w, float eps, int cols, float* out) {
  size_t row = blockIdx.x;
  const float* src = residual != nullptr ? residual + row * cols : x + row * cols;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = residual != nullptr ? residual[row * cols + c] + x[row * cols + c] : src[c];
    if (residual != nullptr) residual[row * cols + c] = v;
    ss += v * v;
  }
  float inv = rsqrtf(block_sum(ss) / cols + eps);
  for (int c = threadIdx.x; c < cols; c += blockDim.x) out[row * cols + c] = w[c] * (src[c] * inv);
}

// LayerNorm with weight and bias, then exact GELU. One block per row.
extern "C" __global__ void layer_norm_gelu(const float* x, const float* w, const float* b, float eps, int cols,
                                           float* out) {
  size_t row = blockIdx.x;
  const float* xr = x + row * cols;
  float s = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c];
  float mean = block_sum(s) / cols;
  float v = 0.0f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) v += (xr[c] - mean) * (xr[c] - mean);
  float inv = rsqrtf(block_sum(v) / cols + eps);
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    float y = (xr[c] - mean) * inv * w[c] + b[c];
    out[row * cols + c] = 0.5f * y * (1.0f + erff(y * 0.70710678118654752f));
  }
}

// h[m, i] = silu(gu[m, i]) * gu[m, I + i]
extern "C" __global__ void swiglu(const float* gu, int rows, int inter, float* h) {
  size_t n = (size_t)rows * inter;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    size_t m = i / inter, c = i % inter;
    h[i] = silu_mul(gu[m * 2 * inter + c], gu[m * 2 * inter + inter + c]);
  }
}

extern "C" __global__ void add_inplace(float* x, const float* d, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    x[i] += d[i];
}

// out[r] = x[rows[r]]
extern "C" __global__ void gather_rows(const float* x, const uint32_t* rows, int cols, float* out) {
  size_t r = blockIdx.x;
  const float* src = x + (size_t)rows[r] * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) out[r * cols + c] = src[c];
}

// dst[rows[r]] = src[r], or dst[rows[r]] += weight[r] * src[r] when weight != nullptr.
extern "C" __global__ void scatter_rows(float* dst, const uint32_t* rows, const float* weight, const float* src,
                                        int cols) {
  size_t r = blockIdx.x;
  float* d = dst + (size_t)rows[r] * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = src[r * cols + c];
    d[c] = weight != nullptr ? d[c] + weight[r] * v : v;
  }
}

// out[r][c * window + k] = x[r * window + k][c]
extern "C" __global__ void merge_windows(const float* x, int window, int cols, float* out) {
  size_t r = blockIdx.x;
  for (int i = threadIdx.x; i < cols * window; i += blockDim.x) {
    int c = i / window, k = i % window;
    out[r * cols * window + i] = x[(r * window + k) * cols + c];
  }
}

// Dynamic FP8 activations, as runtime/src/backend/mod.rs quantize_rows: each group of `group` columns of each row
// rounded to FP8 E4M3 (nearest even, saturating) on a scale of the group's absmax (fp8_scale in common.cuh).
// Block (row, group); put(i, code, scale) takes the code of element i of x. Every value is read for the absmax before
// any is put, so a kernel may write over x. Returns the group's scale (to every thread).
template <class Put>
__device__ __forceinline__ float quantize_group(const float* x, int cols, int group, Put put) {
  size_t row = blockIdx.x;
  int c0 = blockIdx.y * group, c1 = min(cols, c0 + group);
  const float* xr = x + row * cols;
  float m = 0.0f;
  for (int c = c0 + threadIdx.x; c < c1; c += blockDim.x) m = fmaxf(m, fabsf(xr[c]));
  float scale = fp8_scale(block_max(m));
  for (int c = c0 + threadIdx.x; c < c1; c += blockDim.x) put(row * cols + c, __nv_fp8_e4m3(xr[c] / scale), scale);
  return scale;
}

// The quantised values as f32 (code * scale), for GEMMs over f32 inputs. out may be x.
extern "C" __global__ void quantize_fp8_rows(const float* x, int cols, int group, float* out) {
  quantize_group(x, cols, group, [&](size_t i, __nv_fp8_e4m3 q, float scale) { out[i] = static_cast<float>(q) * scale; });
}

// The codes [rows, cols] and scales [rows, groups], for the FP8 tensor-core GEMM (gemm.cu gemm_fp8_tc).
extern "C" __global__ void quantize_fp8_codes(const float* x, int cols, int group, uint8_t* codes, float* scales) {
  float scale = quantize_group(x, cols, group, [&](size_t i, __nv_fp8_e4m3 q, float) { codes[i] = q.__x; });
  if (threadIdx.x == 0) scales[(size_t)blockIdx.x * gridDim.y + blockIdx.y] = scale;
}

// --load-format dummy: a weight's random values made where it lives instead of on the host and copied. Word i of a
// tensor is splitmix64's i-th output for the tensor's seed, and its values are made from it exactly as the host
// makes them (runtime/src/weights/dummy.rs fill_words), so both give the same bytes. Kinds: 0 FP8 codes (8 a word),
// 1 BF16 uniform in [-a, a] (2 a word), 2 F32 uniform in [-a, a] (2 a word).
__device__ __forceinline__ uint64_t dummy_word(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// 24 random bits to [-1, 1): exact steps (an integer below 2^24, a power-of-two scale, a difference of two values
// on the same 2^-23 grid), then the one rounded product.
__device__ __forceinline__ float dummy_uniform(uint64_t bits, float a) {
  float unit = (float)(uint32_t)(bits & 0xffffff) * (1.0f / 8388608.0f) - 1.0f;
  return __fmul_rn(a, unit);
}

__device__ __forceinline__ uint32_t dummy_bf16_bits(float x) {  // round to nearest even, as the host does
  uint32_t b = __float_as_uint(x);
  return (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
}

extern "C" __global__ void dummy_fill(uint8_t* out, size_t n, uint64_t seed, int kind, float a) {
  const size_t word_bytes = kind == 1 ? 4 : 8;
  const size_t words = (n + word_bytes - 1) / word_bytes;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < words; i += (size_t)gridDim.x * blockDim.x) {
    uint64_t r = dummy_word(seed, i), v;
    if (kind == 0) {
      v = 0;
      for (int j = 0; j < 8; j++) {
        // Sign bit, then one of the 56 codes with exponent field 0..=6 (magnitudes below one, no NaN).
        uint32_t b = (uint32_t)(r >> (8 * j)) & 0xffu;
        v |= (uint64_t)((b & 0x80u) | ((b & 0x3fu) * 7u / 8u)) << (8 * j);
      }
    } else if (kind == 1) {
      v = dummy_bf16_bits(dummy_uniform(r >> 40, a)) | (dummy_bf16_bits(dummy_uniform(r >> 8, a)) << 16);
    } else {
      v = (uint64_t)__float_as_uint(dummy_uniform(r >> 40, a)) |
          ((uint64_t)__float_as_uint(dummy_uniform(r >> 8, a)) << 32);
    }
    uint8_t* w = out + i * word_bytes;
    if ((i + 1) * word_bytes <= n && word_bytes == 8) {
      *reinterpret_cast<uint64_t*>(w) = v;
    } else if ((i + 1) * word_bytes <= n) {
      *reinterpret_cast<uint32_t*>(w) = (uint32_t)v;
    } else {
      for (size_t j = 0; i * word_bytes + j < n; j++) w[j] = (uint8_t)(v >> (8 * j));  // the tensor's last bytes
    }
  }
}
