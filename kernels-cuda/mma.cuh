// Tensor-core tiles, shared by the dense GEMM (gemm.cu) and the grouped expert GEMMs (moe.cu): a 64 x 64 output tile
// per block of 128 threads (4 warps, 2 x 2, each 32 x 32 = 2 x 4 mma tiles of 16 x 8), K in steps of 32, BF16
// mma.sync m16n8k16 with f32 accumulation. Where a tile's rows and columns come from is the caller's: tc_tile reads
// them through accessors, so the same main loop serves contiguous rows, gathered rows and per-expert weights.
// Precision is kept close to the f32 CPU reference, because greedy generation must match it token for token:
// - x (f32) is split into hi + lo BF16 parts (x = hi + lo to about 16 mantissa bits), one mma for each;
// - BF16 and FP8 weights are exact in BF16; F32/F16 weights are split the same way (a third mma, lo(x) * lo(w)
//   is negligible and skipped);
// - scales are not folded into the weights: per-row scales multiply the accumulator at the end, block scales each
//   block's partial sum (when the block is a multiple of the K step; otherwise they are applied while staging).
// A row of shared memory is 32 + 8 BF16 so that 32-bit fragment loads stay aligned and rows start in different banks.
// Inputs already quantised to FP8 (`--fp8-activations checkpoint`) take fp8_tile instead (end of this file): E4M3
// codes of x and w, mma.sync m16n8k32, the same tile and accumulator layout.
#pragma once
#include "common.cuh"

#define TC_BM 64
#define TC_BN 64
#define TC_BK 32
#define TC_LD (TC_BK + 8)
#define TC_THREADS 128

__device__ __forceinline__ uint32_t lds32(const __nv_bfloat16* p) { return *reinterpret_cast<const uint32_t*>(p); }

// D = A(16x16, row) * B(16x8, col) + D, BF16 inputs, f32 accumulators (PTX ISA, mma.m16n8k16 fragment layouts).
__device__ __forceinline__ void mma_bf16_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#ifdef GLMV_CUDA_EMULATOR  // the host build of scripts/cuda-emulator: the same fragments, multiplied there
  glmv_emu_mma_bf16_16816(d, a, b);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// D = A(16x32, row) * B(32x8, col) + D, FP8 E4M3 inputs, f32 accumulators (sm_89 and later). Fragments of 8-bit
// types (PTX ISA, mma.m16n8k32): with g = lane / 4 and q = (lane % 4) * 4, a[0] holds A row g, k q..q+3; a[1] row
// g + 8, the same k; a[2] and a[3] the same rows at k 16 + q..; b[0] holds B column g, k q..q+3, b[1] k 16 + q...
// Each register is four consecutive k of one row of a row-major [rows][k] byte tile: one 32-bit load.
__device__ __forceinline__ void mma_e4m3_16832(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#ifdef GLMV_CUDA_EMULATOR
  glmv_emu_mma_e4m3_16832(d, a, b);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

__device__ __forceinline__ void split_bf16(float v, __nv_bfloat16& hi, __nv_bfloat16& lo) {
  hi = __float2bfloat16_rn(v);
  lo = __float2bfloat16_rn(v - __bfloat162float(hi));
}

// A-operand fragments of a 16-row slice starting at row r, columns k..k+15 of a row-major BF16 tile with rows of LD
// elements (LD even, so that 32-bit fragment loads stay aligned).
template <int LD>
__device__ __forceinline__ void load_a(uint32_t a[4], const __nv_bfloat16* t, int r, int k, int group, int pair) {
  a[0] = lds32(t + (r + group) * LD + k + pair);
  a[1] = lds32(t + (r + group + 8) * LD + k + pair);
  a[2] = lds32(t + (r + group) * LD + k + pair + 8);
  a[3] = lds32(t + (r + group + 8) * LD + k + pair + 8);
}

// B-operand fragments of 8 rows of the tile (B's columns) starting at row n, columns k..k+15.
template <int LD>
__device__ __forceinline__ void load_b(uint32_t b[2], const __nv_bfloat16* t, int n, int k, int group, int pair) {
  b[0] = lds32(t + (n + group) * LD + k + pair);
  b[1] = lds32(t + (n + group) * LD + k + pair + 8);
}

// Where this thread's accumulators sit in the 64 x 64 tile: total[i][j][h * 2 + c] is row
// wm + i * 16 + group + h * 8, column wn + j * 8 + pair + c.
struct TcLane {
  int group, pair, wm, wn;
  __device__ TcLane() {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    group = lane / 4;
    pair = (lane % 4) * 2;  // fragment row (or column) and first of two consecutive k
    wm = (warp / 2) * 32;
    wn = (warp % 2) * 32;
  }
  __device__ int row(int i, int h) const { return wm + i * 16 + group + h * 8; }
  __device__ int col(int j, int c) const { return wn + j * 8 + pair + c; }
};

// f(i, j, e, row, col) for each accumulator total[i][j][e] of a tile, which sits at tile row `row`, column `col`.
template <class F>
__device__ __forceinline__ void tc_each(F f) {
  TcLane t;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) f(i, j, e, t.row(i, e >> 1), t.col(j, e & 1));
}

// y[m0 + row, n0 + col] = total + bias[col], for the rows and columns inside M x N.
__device__ __forceinline__ void tc_store(const float total[2][4][4], int m0, int n0, int M, int N, const float* bias,
                                         float* y, int ldy) {
  tc_each([&](int i, int j, int e, int r, int c) {
    int m = m0 + r, n = n0 + c;
    if (m < M && n < N) y[(size_t)m * ldy + n] = total[i][j][e] + (bias != nullptr ? bias[n] : 0.0f);
  });
}

// total += part * factor(row, col) for each accumulator of a tile, then part = 0.
template <class Factor>
__device__ __forceinline__ void tc_add_scaled(float total[2][4][4], float part[2][4][4], Factor factor) {
  tc_each([&](int i, int j, int e, int r, int c) {
    total[i][j][e] += part[i][j][e] * factor(r, c);
    part[i][j][e] = 0.0f;
  });
}

// How the weight scales of a tile are applied: late (to partial sums, per column block of `block_cols`, or once at
// the end when `col_blocks` == 1) or, when `late` is false, by `w_at` while staging.
struct TcScaling {
  bool late;
  int block_cols;
  int col_blocks;
};

// Shared memory of a tile's main loop: one K step of x (hi and lo BF16 parts) and of w (hi, and lo for SPLIT_W).
// Each kernel declares one and passes it to whichever staging it takes.
template <bool SPLIT_W>
struct TcSmem {
  __nv_bfloat16 xh[TC_BM][TC_LD], xl[TC_BM][TC_LD];  // [m][k]
  __nv_bfloat16 wh[TC_BN][TC_LD], wl[SPLIT_W ? TC_BN : 1][TC_LD];  // [n][k]
};

// The columns of K a block sums: all of them, or one split of a split-K GEMM (begin a multiple of TC_BK).
struct KRange {
  int begin, end;
};

// total[i][j][e] = sum over k in `range` of x(row, k) * w(col, k) (see TcLane for row and col), with late scales
// w_late(col, column block) applied per block. `stage(k0)` fills sm with the K step starting at k0 (zeros outside
// the data, BF16 hi + lo parts of x, and of w when SPLIT_W).
template <bool SPLIT_W, class Stage, class WLate>
__device__ __forceinline__ void tc_main(KRange range, TcSmem<SPLIT_W>& sm, Stage stage, TcScaling scaling,
                                        WLate w_late, float total[2][4][4]) {
  TcLane t;
  float part[2][4][4] = {};
  for (int k0 = range.begin; k0 < range.end; k0 += TC_BK) {
    stage(k0);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < TC_BK; kk += 16) {
      uint32_t ah[2][4], al[2][4], bh[4][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        load_a<TC_LD>(ah[i], &sm.xh[0][0], t.wm + i * 16, kk, t.group, t.pair);
        load_a<TC_LD>(al[i], &sm.xl[0][0], t.wm + i * 16, kk, t.group, t.pair);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) load_b<TC_LD>(bh[j], &sm.wh[0][0], t.wn + j * 8, kk, t.group, t.pair);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          mma_bf16_16816(part[i][j], ah[i], bh[j]);
          mma_bf16_16816(part[i][j], al[i], bh[j]);
        }
      if constexpr (SPLIT_W) {
        uint32_t bl[4][2];
#pragma unroll
        for (int j = 0; j < 4; ++j) load_b<TC_LD>(bl[j], &sm.wl[0][0], t.wn + j * 8, kk, t.group, t.pair);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) mma_bf16_16816(part[i][j], ah[i], bl[j]);
      }
    }
    __syncthreads();
    int k_end = k0 + TC_BK;
    bool flush = k_end >= range.end || (scaling.late && scaling.col_blocks > 1 && k_end % scaling.block_cols == 0);
    if (flush) {
      int kb = scaling.late && scaling.col_blocks > 1 ? k0 / scaling.block_cols : 0;
      tc_add_scaled(total, part, [&](int, int c) { return scaling.late ? w_late(c, kb) : 1.0f; });
    }
  }
}

// tc_main over element accessors (any layout, any K): x_at(row, k) and w_at(col, k) must return 0 outside the
// tile's data and for k >= K (they are called for k < K rounded up to TC_BK).
// SPLIT_W: the weights are not exact in BF16 (F32, F16) and get a hi + lo split.
template <bool SPLIT_W, class XAt, class WAt, class WLate>
__device__ __forceinline__ void tc_tile(int K, TcSmem<SPLIT_W>& sm, XAt x_at, WAt w_at, TcScaling scaling,
                                        WLate w_late, float total[2][4][4], KRange range = {0, -1}) {
  auto stage = [&](int k0) {
    for (int i = threadIdx.x; i < TC_BM * TC_BK; i += TC_THREADS) {
      int r = i / TC_BK, c = i % TC_BK;
      int k = k0 + c;
      split_bf16(x_at(r, k), sm.xh[r][c], sm.xl[r][c]);
      float wv = w_at(r, k);
      if constexpr (SPLIT_W) {
        split_bf16(wv, sm.wh[r][c], sm.wl[r][c]);
      } else {
        sm.wh[r][c] = __float2bfloat16_rn(wv);  // exact for BF16 and FP8 values
      }
    }
  };
  tc_main<SPLIT_W>(KRange{range.begin, range.end < 0 ? K : range.end}, sm, stage, scaling, w_late, total);
}

// Whether tc_tile_rows applies: BF16 or FP8 weights staged as stored (scales late, or none) and K a multiple of 16.
template <int DT>
__device__ __forceinline__ bool tc_rows_apply(int K, TcScaling scaling, bool scaled) {
  return (DT == DT_BF16 || DT == DT_FP8) && K % 16 == 0 && (scaling.late || !scaled);
}

// tc_main over row pointers, with 16-byte loads instead of one element at a time (the same staged values, so the
// same result): x_row(r) is tile row r of x (f32, nullptr outside the data), w_row(c) the first byte of weight row
// c (nullptr outside). Only where tc_rows_apply.
template <int DT, class XRow, class WRow, class WLate>
__device__ __forceinline__ void tc_tile_rows(int K, TcSmem<false>& sm, XRow x_row, WRow w_row, TcScaling scaling,
                                             WLate w_late, float total[2][4][4], KRange range = {0, -1}) {
  constexpr int EB = elem_bytes<DT>(), PER = 16 / EB;  // weights per 16-byte load
  auto stage = [&](int k0) {
    for (int i = threadIdx.x; i < TC_BM * TC_BK / 4; i += TC_THREADS) {
      int r = i / (TC_BK / 4), c = (i % (TC_BK / 4)) * 4, k = k0 + c;
      const float* xr = x_row(r);
      float4 v = (xr != nullptr && k < K) ? *reinterpret_cast<const float4*>(xr + k) : make_float4(0, 0, 0, 0);
      split_bf16(v.x, sm.xh[r][c], sm.xl[r][c]);
      split_bf16(v.y, sm.xh[r][c + 1], sm.xl[r][c + 1]);
      split_bf16(v.z, sm.xh[r][c + 2], sm.xl[r][c + 2]);
      split_bf16(v.w, sm.xh[r][c + 3], sm.xl[r][c + 3]);
    }
    for (int i = threadIdx.x; i < TC_BN * TC_BK / PER; i += TC_THREADS) {
      int c = i / (TC_BK / PER), q = (i % (TC_BK / PER)) * PER, k = k0 + q;
      const uint8_t* wr = reinterpret_cast<const uint8_t*>(w_row(c));
      uint4 raw = (wr != nullptr && k < K) ? *reinterpret_cast<const uint4*>(wr + (size_t)k * EB) : make_uint4(0, 0, 0, 0);
      if constexpr (DT == DT_BF16) {
        *reinterpret_cast<uint4*>(&sm.wh[c][q]) = raw;  // BF16 as stored
      } else {
        const uint8_t* b = reinterpret_cast<const uint8_t*>(&raw);
#pragma unroll
        for (int e = 0; e < 16; ++e) {
          __nv_fp8_e4m3 f;
          f.__x = b[e];
          sm.wh[c][q + e] = __float2bfloat16_rn(static_cast<float>(f));  // exact
        }
      }
    }
  };
  tc_main<false>(KRange{range.begin, range.end < 0 ? K : range.end}, sm, stage, scaling, w_late, total);
}

// The scaling of a [N, K] weight with scales `s` in a tile: late when every scale block spans whole K steps.
__device__ __forceinline__ TcScaling tc_scaling(WeightScale s) {
  bool scaled = s.scale != nullptr;
  return TcScaling{scaled && (s.col_blocks == 1 || s.block_cols % TC_BK == 0), s.block_cols, s.col_blocks};
}

// The scale of weight row n in column block kb.
__device__ __forceinline__ float scale_at(WeightScale s, int n, int kb) {
  return s.scale[(size_t)(n / s.block_rows) * s.col_blocks + kb];
}

// FP8 activations times FP8 weights on tensor cores: total[i][j][e] (TcLane's layout) = sum over k < K of
// (x code * x scale)(w code * w scale). x_row(r) is the first code of tile row r of x (nullptr outside the data),
// x_scale(r, g) the scale of its g-th group of x_group columns; w_row(c) and w_scale(c, b) the same for the weight's
// tile row c and its b-th block of w_block columns (K for one scale per row). The code products are summed in f32
// windows that end where the x group or the weight block changes, each window's sum times both scales. On sm_90a and
// sm_100a, mma.sync on E4M3 runs as F16 HMMA (FP8 tensor cores are wgmma's and tcgen05's; tests/cuda_sass.rs): E4M3
// values are exact in F16 and their products in f32, so windows accumulate in f32 without the shortened accumulation
// of FP8 wgmma. Against tc_tile_rows on the same quantised values: half the MMAs (no hi + lo split of x) and a quarter
// of the activation bytes. Needs K % 16 == 0 (16-byte row loads) and x_group, w_block multiples of TC_BK or >= K.
#define FP8_LD 48  // bytes per staged row: 32 codes, 16 of padding (conflict-free fragment loads, 16-byte aligned rows)

template <class XRow, class XScale, class WRow, class WScale>
__device__ __forceinline__ void fp8_tile(int K, int x_group, int w_block, XRow x_row, XScale x_scale, WRow w_row,
                                         WScale w_scale, float total[2][4][4]) {
  __shared__ __align__(16) uint8_t xt[TC_BM * FP8_LD], wt[TC_BN * FP8_LD];
  TcLane t;
  int quad = (threadIdx.x % 4) * 4;  // first of the four k of this lane's fragment registers
  float window[2][4][4] = {};
  int window_start = 0;
  for (int k0 = 0; k0 < K; k0 += TC_BK) {
    {  // 64 rows x 32 codes of x and of w: one 16-byte load of each per thread
      int r = threadIdx.x / 2, c = (threadIdx.x % 2) * 16, k = k0 + c;
      uint4 zero = make_uint4(0, 0, 0, 0);
      const uint8_t* xr = x_row(r);
      const uint8_t* wr = w_row(r);
      *reinterpret_cast<uint4*>(&xt[r * FP8_LD + c]) =
          (xr != nullptr && k < K) ? *reinterpret_cast<const uint4*>(xr + k) : zero;
      *reinterpret_cast<uint4*>(&wt[r * FP8_LD + c]) =
          (wr != nullptr && k < K) ? *reinterpret_cast<const uint4*>(wr + k) : zero;
    }
    __syncthreads();
    uint32_t a[2][4], b[4][2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint8_t* r0 = &xt[(t.wm + i * 16 + t.group) * FP8_LD + quad];
      a[i][0] = *reinterpret_cast<const uint32_t*>(r0);
      a[i][1] = *reinterpret_cast<const uint32_t*>(r0 + 8 * FP8_LD);
      a[i][2] = *reinterpret_cast<const uint32_t*>(r0 + 16);
      a[i][3] = *reinterpret_cast<const uint32_t*>(r0 + 8 * FP8_LD + 16);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint8_t* n = &wt[(t.wn + j * 8 + t.group) * FP8_LD + quad];
      b[j][0] = *reinterpret_cast<const uint32_t*>(n);
      b[j][1] = *reinterpret_cast<const uint32_t*>(n + 16);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) mma_e4m3_16832(window[i][j], a[i], b[j]);
    __syncthreads();
    int k_end = k0 + TC_BK;
    if (k_end >= K || k_end % x_group == 0 || k_end % w_block == 0) {
      int xg = window_start / x_group, wb = window_start / w_block;
      tc_add_scaled(total, window, [&](int r, int c) { return x_scale(r, xg) * w_scale(c, wb); });
      window_start = k_end;
    }
  }
}

// The columns per scale of an FP8 weight with scales `s` over K columns (K for one scale per row).
__device__ __forceinline__ int fp8_weight_block(WeightScale s, int K) { return s.col_blocks == 1 ? K : s.block_cols; }
