// Choosing tokens on the device, so that a step's logits need not leave it.
#include "common.cuh"

// The better of two (value, index) candidates under the greedy rule of runtime/src/engine/sampler.rs `argmax`: a
// candidate (index >= 0) beats none, a larger value wins, and the lower index wins a tie. NaN never becomes one.
__device__ __forceinline__ void keep_better(float& v, int& i, float ov, int oi) {
  if (oi >= 0 && (i < 0 || ov > v || (ov == v && oi < i))) {
    v = ov;
    i = oi;
  }
}

// out[r] = the index of the largest value of row r of x [rows, cols]: the lowest index among equal values, NaN never
// chosen, 0 when the row is all NaN. One block per row (a multiple of 32 threads, at most 1024).
extern "C" __global__ void argmax_rows(const float* x, int cols, uint32_t* out) {
  __shared__ float warp_value[32];
  __shared__ int warp_index[32];
  const float* row = x + (size_t)blockIdx.x * cols;
  float best = -INFINITY;
  int index = -1;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = row[c];
    if (!isnan(v) && (index < 0 || v > best)) {  // ascending c: a thread keeps its first maximum
      best = v;
      index = c;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, best, o);
    int oi = __shfl_xor_sync(0xffffffffu, index, o);
    keep_better(best, index, ov, oi);
  }
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    warp_value[warp] = best;
    warp_index[warp] = index;
  }
  __syncthreads();
  if (warp == 0) {
    int warps = blockDim.x / 32;
    best = lane < warps ? warp_value[lane] : -INFINITY;
    index = lane < warps ? warp_index[lane] : -1;
    for (int o = 16; o > 0; o >>= 1) {
      float ov = __shfl_xor_sync(0xffffffffu, best, o);
      int oi = __shfl_xor_sync(0xffffffffu, index, o);
      keep_better(best, index, ov, oi);
    }
    if (lane == 0) out[blockIdx.x] = index < 0 ? 0u : (uint32_t)index;
  }
}
