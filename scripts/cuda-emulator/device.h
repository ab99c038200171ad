// What a kernels-cuda source needs to compile as host C++ for the CUDA emulator (scripts/cuda-emulator/README.md):
// g++ includes this first (-include). CUDA's own bf16 / fp16 / fp8 headers are used as they are (they carry host
// implementations of every conversion), so the emulated kernels round exactly as the CUDA headers define; the
// execution model (threads, barriers, warp collectives, shared memory, tensor-core mma) comes from runtime.cpp.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>
#include <string.h>

#include <cmath>

#include "emulator.h"

// Function-space qualifiers mean nothing on the host. Shared memory is per block: each block runs all its threads
// on one worker thread (as fibers), and a worker runs one block at a time, so a thread_local static is exactly one
// copy per running block. The runtime fills it with 0xff bytes before each block (real shared memory starts undefined;
// see runtime.cpp poison_shared).
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#undef __align__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static thread_local
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

#define threadIdx (glmv_emu_lane()->thread_idx)
#define blockIdx (glmv_emu_lane()->block_idx)
#define blockDim (glmv_emu_lane()->block_dim)
#define gridDim (glmv_emu_lane()->grid_dim)

inline void __syncthreads() { glmv_emu_syncthreads(); }

// Warp collectives: every lane deposits its operand, the last one to arrive computes every lane's result.
namespace emu {
template <class T>
struct Shuffle {
  T value;
  int arg;
  int width;
};

enum ShuffleKind { XOR, UP, DOWN, IDX };

template <class T, int KIND>
void shuffle_combine(void** lanes, unsigned arrived) {
  T got[32];
  for (int l = 0; l < 32; ++l) {
    if (!(arrived >> l & 1)) continue;
    auto* me = static_cast<Shuffle<T>*>(lanes[l]);
    int base = l & ~(me->width - 1), src = l;
    if (KIND == XOR) src = l ^ me->arg;
    if (KIND == UP) src = (l - base) >= me->arg ? l - me->arg : l;
    if (KIND == DOWN) src = (l - base) + me->arg < me->width ? l + me->arg : l;
    if (KIND == IDX) src = base + (me->arg & (me->width - 1));
    if (src < 0 || src > 31 || !(arrived >> src & 1)) glmv_emu_fail("a warp shuffle reads a lane outside its mask");
    got[l] = static_cast<Shuffle<T>*>(lanes[src])->value;
  }
  for (int l = 0; l < 32; ++l)
    if (arrived >> l & 1) static_cast<Shuffle<T>*>(lanes[l])->value = got[l];
}

template <int KIND, class T>
T shuffle(unsigned mask, T v, int arg, int width) {
  Shuffle<T> me{v, arg, width};
  glmv_emu_warp_collective(mask, reinterpret_cast<const void*>(&shuffle_combine<T, KIND>), &me,
                           &shuffle_combine<T, KIND>);
  return me.value;
}

struct Match {
  uint64_t value;
  unsigned peers;
};

inline void match_combine(void** lanes, unsigned arrived) {
  for (int l = 0; l < 32; ++l) {
    if (!(arrived >> l & 1)) continue;
    auto* me = static_cast<Match*>(lanes[l]);
    me->peers = 0;
    for (int o = 0; o < 32; ++o)
      if ((arrived >> o & 1) && static_cast<Match*>(lanes[o])->value == me->value) me->peers |= 1u << o;
  }
}
}  // namespace emu

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return emu::shuffle<emu::XOR>(mask, v, lane_mask, width);
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu::shuffle<emu::UP>(mask, v, (int)delta, width);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return emu::shuffle<emu::DOWN>(mask, v, (int)delta, width);
}
template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return emu::shuffle<emu::IDX>(mask, v, src, width);
}
template <class T>
unsigned __match_any_sync(unsigned mask, T v) {
  emu::Match me{(uint64_t)v, 0};
  glmv_emu_warp_collective(mask, reinterpret_cast<const void*>(&emu::match_combine), &me, &emu::match_combine);
  return me.peers;
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  static auto none = [](void**, unsigned) {};
  void (*combine)(void**, unsigned) = none;
  int unused = 0;
  glmv_emu_warp_collective(mask, reinterpret_cast<const void*>(combine), &unused, combine);
}
// The lanes that reach the collective this one is passed to (GLMV_EMU_ACTIVE_MASK: see emulator.h).
inline unsigned __activemask() { return GLMV_EMU_ACTIVE_MASK; }

// Blocks run in parallel on worker threads: atomics on global memory are real atomics.
template <class T>
T atomicAdd(T* p, T v) {
  return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline float atomicAdd(float* p, float v) {
  float old, want;
  __atomic_load(p, &old, __ATOMIC_SEQ_CST);
  do {
    want = old + v;
  } while (!__atomic_compare_exchange(p, &old, &want, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
  return old;
}
template <class T>
T atomicMax(T* p, T v) {
  T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}
template <class T>
T atomicMin(T* p, T v) {
  T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (old > v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}
template <class T>
T atomicExch(T* p, T v) {
  return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}
template <class T>
T atomicCAS(T* p, T expected, T desired) {
  __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return expected;
}

// Integer and float intrinsics.
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz((unsigned)v); }
inline float __uint_as_float(unsigned v) {
  float f;
  memcpy(&f, &v, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned v;
  memcpy(&v, &f, 4);
  return v;
}
inline float __int_as_float(int v) { return __uint_as_float((unsigned)v); }
inline int __float_as_int(float f) { return (int)__float_as_uint(f); }
inline float rsqrtf(float v) { return 1.0f / sqrtf(v); }
inline float __expf(float v) { return expf(v); }
inline float __logf(float v) { return logf(v); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }
template <class T>
T __ldg(const T* p) {
  return *p;
}
using std::isinf;
using std::isnan;
using std::max;
using std::min;

// Tensor-core mma.sync, warp-collective as on the GPU: the fragments each lane holds are placed into the A, B and C
// tiles by the PTX ISA's fragment layouts for these shapes, multiplied in f32 (products of BF16 or E4M3 values are
// exact in f32; the sum order differs from the hardware's), and handed back the same way.
inline void glmv_emu_mma_bf16_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  glmv_emu_mma(d, a, b, GLMV_EMU_MMA_BF16_M16N8K16);
}
inline void glmv_emu_mma_e4m3_16832(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  glmv_emu_mma(d, a, b, GLMV_EMU_MMA_E4M3_M16N8K32);
}
