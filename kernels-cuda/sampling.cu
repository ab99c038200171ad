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

// The index of the largest value of `row` under the greedy rule (lowest index among equal values, NaN never chosen,
// 0 when every value is NaN), in every thread of the block (a multiple of 32 threads, at most 1024).
__device__ int block_argmax(const float* row, int cols) {
  __shared__ float warp_value[32];
  __shared__ int warp_index[32];
  __shared__ int result;
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
    if (lane == 0) result = index < 0 ? 0 : index;
  }
  __syncthreads();
  return result;
}

// out[r] = the index of the largest value of row r of x [rows, cols] (block_argmax). One block per row.
extern "C" __global__ void argmax_rows(const float* x, int cols, uint32_t* out) {
  int best = block_argmax(x + (size_t)blockIdx.x * cols, cols);
  if (threadIdx.x == 0) out[blockIdx.x] = (uint32_t)best;
}

// ---- Drawing a token as runtime/src/engine/sampler.rs `sample_with_uniform` does ----

// One row's draw (sampler.rs `Draw`): temperature > 0, filters, and the request generator's number in [0, 1).
struct DrawArg {
  float temperature;
  float top_p;
  float min_p;
  float uniform;
  int top_k;
};

#define SAMPLE_THREADS 1024
// Candidates examined before the host sorts the whole vocabulary (PARTIAL_CANDIDATES in sampler.rs).
#define SAMPLE_HEAD 1024

// Exclusive prefix sum over the block's threads in thread order (every thread gets its own). `scratch`: 32 values.
template <class T>
__device__ T block_exclusive_scan(T v, T* scratch) {
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  T inclusive = v;
  for (int o = 1; o < 32; o <<= 1) {
    T up = __shfl_up_sync(0xffffffffu, inclusive, o);
    if (lane >= o) inclusive += up;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    T total = lane < warps ? scratch[lane] : T(0);
    T running = total;
    for (int o = 1; o < 32; o <<= 1) {
      T up = __shfl_up_sync(0xffffffffu, running, o);
      if (lane >= o) running += up;
    }
    if (lane < warps) scratch[lane] = running - total;  // warps before this one
  }
  __syncthreads();
  return scratch[warp] + inclusive - v;
}

// Order-preserving map of a (non-NaN) float to an unsigned key: larger value, larger key; -0 below +0, as
// total_cmp orders them.
__device__ __forceinline__ uint32_t order_key(float v) {
  uint32_t b = __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Candidate a goes before b: larger value, then lower index (sampler.rs `by_logit`).
__device__ __forceinline__ bool goes_before(uint32_t ka, int ia, uint32_t kb, int ib) {
  return ka > kb || (ka == kb && ia < ib);
}

// out[r] = row r's token drawn with draws[r], or -1 where the SAMPLE_HEAD best candidates cannot decide it (a
// nucleus or min-p floor reaching past them, or top_k over SAMPLE_HEAD): the host then samples the row with the
// same number. One block of SAMPLE_THREADS (== SAMPLE_HEAD) threads per row.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_rows(const float* x, int cols, const DrawArg* draws, int* out) {
  __shared__ float scratch_f[32];
  __shared__ int scratch_i[32];
  __shared__ uint32_t hist[256];
  __shared__ uint32_t cand_key[SAMPLE_HEAD];
  __shared__ int cand_index[SAMPLE_HEAD];
  __shared__ int picked, fallback, greater_count, need_shared;
  __shared__ float scratch_pivot;
  __shared__ uint32_t digit_shared;
  const float* row = x + (size_t)blockIdx.x * cols;
  const DrawArg d = draws[blockIdx.x];
  const int tid = threadIdx.x;

  float top = -INFINITY;
  int valid = 0;
  for (int c = tid; c < cols; c += blockDim.x) {
    float v = row[c];
    if (!isnan(v)) {
      top = fmaxf(top, v);
      ++valid;
    }
  }
  top = block_max(top);
  valid = (int)block_sum((float)valid);  // exact: counts stay far below 2^24
  if (d.temperature <= 0.0f || cols <= 1 || top == -INFINITY) {
    int best = block_argmax(row, cols);
    if (tid == 0) out[blockIdx.x] = best;
    return;
  }
  const float inv_t = 1.0f / d.temperature;
  auto weight = [&](float v) { return isnan(v) ? 0.0f : expf((v - top) * inv_t); };
  float mass = 0.0f;
  for (int c = tid; c < cols; c += blockDim.x) mass += weight(row[c]);
  const float total_all = block_sum(mass);
  const bool filtered = d.top_k > 0 || d.top_p < 1.0f || d.min_p > 0.0f;

  if (!filtered) {
    // Walk the vocabulary in index order to where the running mass passes u x total: each thread sums a
    // contiguous chunk, a scan places the chunks, and the thread whose chunk holds the point walks it.
    const int chunk = (cols + blockDim.x - 1) / blockDim.x;
    const int lo = min(tid * chunk, cols), hi = min(lo + chunk, cols);
    float local = 0.0f;
    int last = -1;
    for (int c = lo; c < hi; ++c) {
      float w = weight(row[c]);
      local += w;
      if (w > 0.0f) last = c;
    }
    const float before = block_exclusive_scan(local, scratch_f);
    if (tid == 0) {
      picked = INT_MAX;
      fallback = -1;
    }
    __syncthreads();
    if (last >= 0) atomicMax(&fallback, last);
    float r = d.uniform * total_all;
    if (local > 0.0f && r >= before && r < before + local) {
      r -= before;
      int found = last;
      for (int c = lo; c < hi; ++c) {
        float w = weight(row[c]);
        if (w > 0.0f) {
          if (r < w) {
            found = c;
            break;
          }
          r -= w;
        }
      }
      atomicMin(&picked, found);
    }
    __syncthreads();
    // Past the end by rounding: the last token with any weight, as the host's walk ends.
    if (tid == 0) out[blockIdx.x] = picked != INT_MAX ? picked : max(fallback, 0);
    return;
  }

  // The `head` best candidates (larger value, then lower index): a radix select of the head-th largest key, then
  // every key above it and the lowest-index keys equal to it.
  const int keep = d.top_k > 0 ? min(d.top_k, valid) : valid;
  const int head = min(keep, SAMPLE_HEAD);
  uint32_t prefix = 0, mask = 0;
  int need = head;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int c = tid; c < cols; c += blockDim.x) {
      float v = row[c];
      if (isnan(v)) continue;
      uint32_t k = order_key(v);
      if ((k & mask) == prefix) {
        // Most values share a few bins (the exponent byte first): one atomic per bin per warp, not per lane.
        uint32_t bin = (k >> shift) & 255u;
        uint32_t peers = __match_any_sync(__activemask(), bin);
        if ((threadIdx.x % 32) == (uint32_t)(__ffs(peers) - 1)) atomicAdd(&hist[bin], (uint32_t)__popc(peers));
      }
    }
    __syncthreads();
    if (tid == 0) {
      int above = 0;
      for (int digit = 255; digit >= 0; --digit) {
        if (above + (int)hist[digit] >= need) {
          digit_shared = (uint32_t)digit;
          need_shared = need - above;
          break;
        }
        above += hist[digit];
      }
    }
    __syncthreads();
    prefix |= digit_shared << shift;
    mask |= 255u << shift;
    need = need_shared;
    __syncthreads();
  }
  // prefix is the head-th largest key; `need` of the keys equal to it belong to the head, the lowest indices first.
  if (tid == 0) greater_count = 0;
  for (int i = tid; i < SAMPLE_HEAD; i += blockDim.x) {
    cand_key[i] = 0;  // below every non-NaN value's key: padding sorts last
    cand_index[i] = INT_MAX;
  }
  __syncthreads();
  const int chunk = (cols + blockDim.x - 1) / blockDim.x;
  const int lo = min(tid * chunk, cols), hi = min(lo + chunk, cols);
  int equal = 0;
  for (int c = lo; c < hi; ++c) {
    float v = row[c];
    if (isnan(v)) continue;
    uint32_t k = order_key(v);
    if (k > prefix) {
      int slot = atomicAdd(&greater_count, 1);
      cand_key[slot] = k;
      cand_index[slot] = c;
    } else if (k == prefix) {
      ++equal;
    }
  }
  int rank = block_exclusive_scan(equal, scratch_i);  // equal keys before this thread's chunk
  const int first_equal = head - need;                 // slots of the keys above the threshold
  for (int c = lo; c < hi && rank < need; ++c) {
    float v = row[c];
    if (!isnan(v) && order_key(v) == prefix) {
      cand_key[first_equal + rank] = prefix;
      cand_index[first_equal + rank] = c;
      ++rank;
    }
  }
  __syncthreads();
  // Bitonic sort of the SAMPLE_HEAD slots, best first.
  for (int size = 2; size <= SAMPLE_HEAD; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      for (int i = tid; i < SAMPLE_HEAD; i += blockDim.x) {
        int j = i ^ stride;
        if (j > i) {
          bool first_half = (i & size) == 0;  // this pair sorts best-first; the other half worst-first
          bool swap = first_half ? goes_before(cand_key[j], cand_index[j], cand_key[i], cand_index[i])
                                 : goes_before(cand_key[i], cand_index[i], cand_key[j], cand_index[j]);
          if (swap) {
            uint32_t k = cand_key[i];
            cand_key[i] = cand_key[j];
            cand_key[j] = k;
            int t = cand_index[i];
            cand_index[i] = cand_index[j];
            cand_index[j] = t;
          }
        }
      }
      __syncthreads();
    }
  }
  // The rest follows sampler.rs over the sorted head, one candidate per thread (SAMPLE_THREADS == SAMPLE_HEAD):
  // sums and the running probability by block reductions and scans instead of its sequential loops, the same up
  // to rounding.
  const int i = tid;
  const float w = i < head ? weight(row[cand_index[i]]) : 0.0f;
  const float head_mass = block_sum(w);
  if (head < valid) {
    if (i == head - 1) scratch_pivot = w;
    __syncthreads();
    bool is_top_k_set = head == keep;
    bool covers_nucleus = d.top_p >= 1.0f || head_mass >= d.top_p * total_all;
    bool rest_below_min_p = d.min_p <= 0.0f || scratch_pivot < d.min_p;
    if (!(is_top_k_set || (d.top_k == 0 && covers_nucleus && rest_below_min_p))) {
      if (tid == 0) out[blockIdx.x] = -1;
      return;
    }
  }
  // Probabilities over the top-k set (the whole vocabulary without top-k).
  const float denominator = d.top_k > 0 ? head_mass : total_all;
  const float p = w / denominator;
  int n = head;
  if (d.min_p > 0.0f) {
    if (i == 0) scratch_pivot = p;
    __syncthreads();
    const float floor = scratch_pivot * d.min_p;
    // Sorted best first, so the probabilities fall: the kept tokens are the prefix at or above the floor.
    n = max((int)block_sum(i < n && p >= floor ? 1.0f : 0.0f), 1);
  }
  const float kept = i < n ? p : 0.0f;
  const float running = block_exclusive_scan(kept, scratch_f) + kept;  // inclusive
  if (d.top_p < 1.0f) {
    if (tid == 0) picked = INT_MAX;
    __syncthreads();
    if (i < n && running >= d.top_p) atomicMin(&picked, i);
    __syncthreads();
    if (picked != INT_MAX) n = picked + 1;
    __syncthreads();
  }
  const float total = block_sum(i < n ? kept : 0.0f);
  const float r = d.uniform * total;
  if (tid == 0) picked = INT_MAX;
  __syncthreads();
  if (i < n && r < running) atomicMin(&picked, i);
  __syncthreads();
  if (tid == 0) out[blockIdx.x] = cand_index[picked != INT_MAX ? picked : n - 1];
}
