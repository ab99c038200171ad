// Kernels that check the emulator itself (selftest.sh): what a correct kernel computes, and that the mistakes the
// emulator promises to catch are caught. Compiled like kernels-cuda sources (device.h first), never built for a GPU.
#include <stdint.h>

// Correct: a block sum through shared memory, a barrier and warp shuffles.
extern "C" __global__ void block_sum(const float* x, int n, float* out) {
  __shared__ float warp_total[32];
  float v = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += x[blockIdx.x * n + i];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) warp_total[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.0f;
    for (int w = 0; w < (int)blockDim.x / 32; ++w) s += warp_total[w];
    out[blockIdx.x] = s;
  }
}

// Wrong: reads a neighbour's shared value without a barrier.
extern "C" __global__ void missing_barrier(int* out) {
  __shared__ int slot[128];
  slot[threadIdx.x] = (int)threadIdx.x + 1;
  out[threadIdx.x] = slot[(threadIdx.x + 1) % blockDim.x];
}

// Wrong unless `written` is blockDim.x: reads shared memory that only the first `written` threads wrote.
extern "C" __global__ void unwritten_shared(int written, float* out) {
  __shared__ float slot[64];
  if ((int)threadIdx.x < written) slot[threadIdx.x] = 1.0f;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = slot[threadIdx.x];
}

// Wrong: writes one element past its buffer.
extern "C" __global__ void past_the_end(float* out, int n) { out[threadIdx.x + n - (int)blockDim.x + 1] = 1.0f; }

// Wrong: 16-byte loads `offset` floats into a buffer (misaligned unless offset is a multiple of 4).
extern "C" __global__ void load_float4(const float* in, int offset, float* out) {
  float4 v = reinterpret_cast<const float4*>(in + offset)[threadIdx.x];
  out[threadIdx.x] = v.x + v.y + v.z + v.w;
}

// Wrong: half a warp at a full-mask shuffle.
extern "C" __global__ void divergent_shuffle(float* out) {
  float v = (float)threadIdx.x;
  if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// Correct: one warp multiplies A (16 x 16, row-major BF16 bits) by B (16 x 8, stored [n][k]) with mma.sync,
// fragments placed by the PTX ISA's m16n8k16 layout; C is [16][8] f32.
extern "C" __global__ void mma_bf16(const uint16_t* a, const uint16_t* b, float* c) {
  int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  auto pair = [](const uint16_t* p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 16); };
  uint32_t fa[4] = {pair(a + g * 16 + 2 * t), pair(a + (g + 8) * 16 + 2 * t), pair(a + g * 16 + 2 * t + 8),
                    pair(a + (g + 8) * 16 + 2 * t + 8)};
  uint32_t fb[2] = {pair(b + g * 16 + 2 * t), pair(b + g * 16 + 2 * t + 8)};
  float d[4] = {0, 0, 0, 0};
  glmv_emu_mma_bf16_16816(d, fa, fb);
  for (int i = 0; i < 4; ++i) c[(g + (i >> 1) * 8) * 8 + 2 * t + (i & 1)] = d[i];
}

// Correct: the same with E4M3 codes, m16n8k32 (A 16 x 32, B stored [n][k] 8 x 32).
extern "C" __global__ void mma_e4m3(const uint8_t* a, const uint8_t* b, float* c) {
  int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  auto quad = [](const uint8_t* p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
  };
  uint32_t fa[4] = {quad(a + g * 32 + 4 * t), quad(a + (g + 8) * 32 + 4 * t), quad(a + g * 32 + 16 + 4 * t),
                    quad(a + (g + 8) * 32 + 16 + 4 * t)};
  uint32_t fb[2] = {quad(b + g * 32 + 4 * t), quad(b + g * 32 + 16 + 4 * t)};
  float d[4] = {0, 0, 0, 0};
  glmv_emu_mma_e4m3_16832(d, fa, fb);
  for (int i = 0; i < 4; ++i) c[(g + (i >> 1) * 8) * 8 + 2 * t + (i & 1)] = d[i];
}
