// Device code of the chunked WKV6 kernels; the host side that launches them is wkv6_chunked_cuda.cu,
// whose header explains the algorithm. Kept apart so that tests/cuda_emu can compile exactly this code
// for the CPU (threads as fibers, the WMMA calls on whole tiles).
#pragma once

#include "cuda/device_common.cuh"
#include "cuda/wkv6_kernels.cuh"  // wkv6_du_reduce_kernel

#include <mma.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace rwkv_vision {
namespace {


using namespace nvcuda;

constexpr int kL = 16;  // steps per chunk: the height of a WMMA tile
constexpr int kLDP = kL + 8;

constexpr int round8(int x) { return (x + 7) / 8 * 8; }

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragAT = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragBT = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

// acc += a (16 x 8 K8) @ b (8 K8 x 16). The fragment types carry the layouts; a_step and b_step are
// how far the pointers move for the next 8 of the inner dimension (8 along a row-major a's rows, 8
// rows of a column-major one; 8 rows of a row-major b, 8 along a column-major one's columns).
template <int K8, typename FA, typename FB>
__device__ __forceinline__ void mma_k(FragC& acc, const float* a, int lda, int a_step, const float* b,
                                      int ldb, int b_step) {
#pragma unroll
  for (int q = 0; q < K8; ++q) {
    FA fa;
    FB fb;
    wmma::load_matrix_sync(fa, a + q * a_step, lda);
    wmma::load_matrix_sync(fb, b + q * b_step, ldb);
#pragma unroll
    for (int e = 0; e < fa.num_elements; ++e) fa.x[e] = wmma::__float_to_tf32(fa.x[e]);
#pragma unroll
    for (int e = 0; e < fb.num_elements; ++e) fb.x[e] = wmma::__float_to_tf32(fb.x[e]);
    wmma::mma_sync(acc, fa, fb, acc);
  }
}

// The lower triangle and diagonal of P (kL x kL, leading dimension kLDP) of one chunk; the caller
// zeroes the upper triangle once. The kL (kL + 1) / 2 = 136 entries, row by row, go 16 at a time to a
// warp: lane 2q + p sums channels p, p + 2, ... of entry q, and the two halves meet through one
// shuffle. Raw tiles have row length ldr = N + 2, so whatever rows the 16 entries touch, the lanes'
// reads fall in different banks or on one address.
template <int N>
__device__ __forceinline__ void form_p(float* sP, const float* sR, const float* sK, const float* sA,
                                       const float* sU, int ldr, int warp, int lane, int warps) {
  constexpr int kEntries = kL * (kL + 1) / 2;
  const int q = lane / 2, p = lane % 2;
  for (int first = warp * 16; first < kEntries; first += warps * 16) {
    // Entry e is (t, s) with e = t (t + 1) / 2 + s, s <= t. Past the last entry a lane works on a
    // copy of entry 0 and writes nothing (the shuffle needs the whole warp).
    const int e = first + q < kEntries ? first + q : 0;
    int t = int((sqrtf(8.f * float(e) + 1.f) - 1.f) * 0.5f);
    while ((t + 1) * (t + 2) / 2 <= e) ++t;
    while (t * (t + 1) / 2 > e) --t;
    const int s = e - t * (t + 1) / 2;
    float acc = 0.f;
#pragma unroll 4
    for (int c = p; c < N; c += 2) {
      const float a_prev = t > 0 ? sA[(t - 1) * ldr + c] : 0.f;
      const float x = a_prev - sA[s * ldr + c];  // <= 0 where it is used (s < t)
      const float coef = s < t ? __expf(x) : sU[c];
      acc = fmaf(sR[t * ldr + c] * sK[s * ldr + c], coef, acc);
    }
    acc += __shfl_xor_sync(0xffffffffu, acc, 1);
    if (p == 0 && first + q < kEntries) sP[t * kLDP + s] = acc;
  }
}

// The upper triangle of P, which form_p leaves alone, is zero.
template <int kThreads>
__device__ __forceinline__ void zero_p(float* sP, int tid) {
  for (int e = tid; e < kL * kLDP; e += kThreads) sP[e] = 0.f;
}

// A (inclusive cumulative sum of w over the chunk, in place of w in sA) and E = exp(A_15), one key
// channel per thread (every block has at least N threads). Returns A_15 to threads c < N.
template <int N>
__device__ __forceinline__ float cumulative_decay(float* sA, float* sE, int ldr, int tid) {
  float a = 0.f;
  if (tid < N) {
#pragma unroll
    for (int s = 0; s < kL; ++s) {
      a += sA[s * ldr + tid];
      sA[s * ldr + tid] = a;
    }
    sE[tid] = __expf(a);
  }
  return a;
}

// The decayed tiles Rd_t = r_t exp(A_{t-1}) and Kd_s = k_s exp(A_15 - A_s), each only where asked.
template <int N, int kThreads>
__device__ __forceinline__ void decayed_tiles(float* sRd, float* sKd, const float* sR, const float* sK,
                                              const float* sA, int ldw, int ldr, int tid, bool with_rd,
                                              bool with_kd) {
  for (int e = tid; e < kL * N; e += kThreads) {
    const int s = e / N, c = e % N;
    const float a = sA[s * ldr + c];
    const float a_prev = s > 0 ? sA[(s - 1) * ldr + c] : 0.f;
    if (with_rd) sRd[s * ldw + c] = sR[s * ldr + c] * __expf(a_prev);
    if (with_kd) sKd[s * ldw + c] = sK[s * ldr + c] * __expf(sA[(kL - 1) * ldr + c] - a);
  }
}

// One [kL][kCols] tile of a [b, t, h, n] input, kL * kCols / kThreads floats per thread, staged in
// registers: fetch() issues the next chunk's loads, which are in flight while the current chunk is
// computed, and store() puts them in shared memory at the start of the next chunk. Steps at or past
// t_end read as 0, which with w = 0 means no input and no decay.
template <int kCols, int kThreads>
struct StagedTile {
  static_assert(kL * kCols % kThreads == 0, "every thread stages the same number of floats");
  static constexpr int kPer = kL * kCols / kThreads;
  float x[kPer];

  template <typename S>
  __device__ __forceinline__ void fetch(const S* __restrict__ src, int64_t base, int64_t stride, int col0,
                                        int64_t t0, int64_t t_end, int tid) {
#pragma unroll
    for (int q = 0; q < kPer; ++q) {
      const int e = tid + q * kThreads, s = e / kCols, c = e % kCols;
      const int64_t t = t0 + s;
      x[q] = t < t_end ? to_f(src[base + t * stride + col0 + c]) : 0.f;
    }
  }

  __device__ __forceinline__ void store(float* dst, int ld, int tid) const {
#pragma unroll
    for (int q = 0; q < kPer; ++q) {
      const int e = tid + q * kThreads;
      dst[(e / kCols) * ld + e % kCols] = x[q];
    }
  }
};

// =============================================================================================
// Forward.

constexpr int kFwdWarps = 4;
constexpr int kFwdThreads = 32 * kFwdWarps;

// What one launch of the forward chunk loop does. kLocal: phase A (final state from a zero start and
// total decay); kOutputs: phase C (y, and sT from the last segment); kStates: phase C for the
// backward (the state at every chunk start, no outputs).
enum class Pass { kLocal, kOutputs, kStates };

template <int N>
struct FwdGeometry {
  static constexpr int NC = N < 64 ? N : 64;  // value columns per block
  static constexpr int kGroups = N / NC;
  static constexpr int LDW = N + 8;   // [kL][N] WMMA tiles (rows a multiple of 8 floats: 32 bytes)
  static constexpr int LDR = N + 2;   // [kL][N] raw tiles r, k, A (read only by the pair loop)
  static constexpr int LDC = NC + 8;  // [*][NC] tiles S, v, y
  static constexpr int oS = 0;
  static constexpr int oRd = oS + round8(N * LDC);
  static constexpr int oKd = oRd + round8(kL * LDW);
  static constexpr int oV = oKd + round8(kL * LDW);
  static constexpr int oP = oV + round8(kL * LDC);
  static constexpr int oY = oP + round8(kL * kLDP);
  static constexpr int oR = oY + round8(kL * LDC);
  static constexpr int oK = oR + round8(kL * LDR);
  static constexpr int oA = oK + round8(kL * LDR);
  static constexpr int oE = oA + round8(kL * LDR);
  static constexpr int oU = oE + round8(N);
  static constexpr size_t kBytes = size_t(oU + round8(N)) * sizeof(float);
};

// Block index = ((bh * launched) + g) * kGroups + group.
template <typename T, int N, Pass kPass>
__global__ void __launch_bounds__(kFwdThreads)
    wkv6_chunked_forward_kernel(int64_t T_, int64_t H, int64_t seg_len, int segments, int launched,
                                int64_t chunks_total, const T* __restrict__ r,
                                const T* __restrict__ k, const T* __restrict__ v,
                                const float* __restrict__ w, const float* __restrict__ u,
                                const float* __restrict__ s0, float* __restrict__ seg_state,
                                float* __restrict__ seg_decay, float* __restrict__ states,
                                T* __restrict__ y, float* __restrict__ sT) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // TF32 tensor cores need sm_80; the host never launches this on older devices
#else
  using G = FwdGeometry<N>;
  constexpr int NC = G::NC, LDW = G::LDW, LDR = G::LDR, LDC = G::LDC;
  constexpr int64_t NN = int64_t(N) * N;
  constexpr bool kY = kPass == Pass::kOutputs;
  float* smem = dynamic_shared_floats();
  float* sS = smem + G::oS;    // [N][LDC]  state columns col0 .. col0 + NC
  float* sRd = smem + G::oRd;  // [kL][LDW] Rd
  float* sKd = smem + G::oKd;  // [kL][LDW] Kd
  float* sV = smem + G::oV;    // [kL][LDC] v, this block's columns
  float* sP = smem + G::oP;    // [kL][kLDP] P
  float* sY = smem + G::oY;    // [kL][LDC] y before conversion
  float* sR = smem + G::oR;    // [kL][LDR] r
  float* sK = smem + G::oK;    // [kL][LDR] k
  float* sA = smem + G::oA;    // [kL][LDR] w, then A
  float* sE = smem + G::oE;    // [N] E
  float* sU = smem + G::oU;    // [N] u

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int group = blockIdx.x % G::kGroups;
  const int64_t seg_block = blockIdx.x / G::kGroups;
  const int g = int(seg_block % launched);
  const int64_t bh = seg_block / launched, b = bh / H, h = bh % H;
  const int col0 = group * NC;
  const int64_t t_begin = g * seg_len;
  const int64_t t_end = t_begin + seg_len < T_ ? t_begin + seg_len : T_;
  const int64_t stride = H * N;
  const int64_t base = (b * T_ * H + h) * N;  // element (b, t, h, c) is at base + t * stride + c

  // The initial state: s0 for the first segment, the state phase B left for the others, zero in A.
  const float* init = nullptr;
  if (kPass != Pass::kLocal) init = g == 0 ? s0 + bh * NN : seg_state + (bh * (segments - 1) + g - 1) * NN;
  for (int e = tid; e < N * NC; e += kFwdThreads) {
    const int j = e / NC, i = e % NC;
    sS[j * LDC + i] = init ? init[j * N + col0 + i] : 0.f;
  }
  for (int c = tid; c < N; c += kFwdThreads) sU[c] = u[h * N + c];
  zero_p<kFwdThreads>(sP, tid);
  float total_log_decay = 0.f;  // phase A, thread c < N: sum of w over the segment
  __syncthreads();

  StagedTile<N, kFwdThreads> next_r, next_k, next_w;
  StagedTile<NC, kFwdThreads> next_v;
  auto fetch = [&](int64_t t0) {
    next_r.fetch(r, base, stride, 0, t0, t_end, tid);
    next_k.fetch(k, base, stride, 0, t0, t_end, tid);
    next_w.fetch(w, base, stride, 0, t0, t_end, tid);
    next_v.fetch(v, base, stride, col0, t0, t_end, tid);
  };
  fetch(t_begin);

  for (int64_t t0 = t_begin; t0 < t_end; t0 += kL) {
    if (kPass == Pass::kStates) {
      float* dst = states + (bh * chunks_total + t0 / kL) * NN;
      for (int e = tid; e < N * NC; e += kFwdThreads) {
        const int j = e / NC, i = e % NC;
        dst[j * N + col0 + i] = sS[j * LDC + i];
      }
    }
    // 1. The chunk's inputs (steps past the segment are zero: no input, no decay), then the next
    //    chunk's loads, left in flight.
    next_r.store(sR, LDR, tid);
    next_k.store(sK, LDR, tid);
    next_w.store(sA, LDR, tid);
    next_v.store(sV, LDC, tid);
    __syncthreads();
    if (t0 + kL < t_end) fetch(t0 + kL);

    // 2. A and E.
    total_log_decay += cumulative_decay<N>(sA, sE, LDR, tid);
    __syncthreads();

    // 3. The decayed tiles, and P.
    decayed_tiles<N, kFwdThreads>(sRd, sKd, sR, sK, sA, LDW, LDR, tid, kY, true);
    if (kY) form_p<N>(sP, sR, sK, sA, sU, LDR, warp, lane, kFwdWarps);
    __syncthreads();

    // 4. Y = Rd S + P V, one 16-column tile per warp.
    if (kY) {
      for (int tile = warp; tile < NC / 16; tile += kFwdWarps) {
        const int cn = tile * 16;
        FragC acc;
        wmma::fill_fragment(acc, 0.f);
        mma_k<N / 8, FragA, FragB>(acc, sRd, LDW, 8, sS + cn, LDC, 8 * LDC);
        mma_k<kL / 8, FragA, FragB>(acc, sP, kLDP, 8, sV + cn, LDC, 8 * LDC);
        wmma::store_matrix_sync(sY + cn, acc, LDC, wmma::mem_row_major);
      }
      __syncthreads();
      for (int e = tid; e < kL * NC; e += kFwdThreads) {
        const int s = e / NC, i = e % NC;
        const int64_t t = t0 + s;
        if (t < t_end) y[base + t * stride + col0 + i] = from_f<T>(sY[s * LDC + i]);
      }
    }

    // 5. S' = E * S + Kd^T V: scale the rows, then one 16 x 16 tile per warp at a time; Kd^T is sKd
    //    read as a column-major matrix.
    for (int e = tid; e < N * NC; e += kFwdThreads) {
      const int j = e / NC, i = e % NC;
      sS[j * LDC + i] *= sE[j];
    }
    __syncthreads();
    for (int tile = warp; tile < (N / 16) * (NC / 16); tile += kFwdWarps) {
      const int jm = (tile / (NC / 16)) * 16, cn = (tile % (NC / 16)) * 16;
      FragC acc;
      wmma::load_matrix_sync(acc, sS + jm * LDC + cn, LDC, wmma::mem_row_major);
      mma_k<kL / 8, FragAT, FragB>(acc, sKd + jm, LDW, 8 * LDW, sV + cn, LDC, 8 * LDC);
      wmma::store_matrix_sync(sS + jm * LDC + cn, acc, LDC, wmma::mem_row_major);
    }
    __syncthreads();
  }

  // The state after the segment: sT for the last segment of phase C, the segment's slot in phase A.
  float* dst = nullptr;
  if (kPass == Pass::kOutputs) {
    if (g == segments - 1) dst = sT + bh * NN;
  } else if (kPass == Pass::kLocal) {
    dst = seg_state + (bh * (segments - 1) + g) * NN;
    if (group == 0 && tid < N) seg_decay[(bh * (segments - 1) + g) * N + tid] = __expf(total_log_decay);
  }
  if (dst != nullptr) {
    for (int e = tid; e < N * NC; e += kFwdThreads) {
      const int j = e / NC, i = e % NC;
      dst[j * N + col0 + i] = sS[j * LDC + i];
    }
  }
#endif
}

// =============================================================================================
// Backward. One block per (batch, head, segment), all n value columns (the gradients of r, k, w
// reduce over them).

constexpr int kBwdWarps = 8;
constexpr int kBwdThreads = 32 * kBwdWarps;

template <int N>
struct BwdGeometry {
  static constexpr int LDW = N + 8;
  static constexpr int LDR = N + 2;
  static constexpr int odS = 0;                            // [N][LDW] dS
  static constexpr int oRd = odS + round8(N * LDW);        // [kL][LDW] Rd
  static constexpr int oKd = oRd + round8(kL * LDW);       // [kL][LDW] Kd
  static constexpr int oV = oKd + round8(kL * LDW);        // [kL][LDW] v
  static constexpr int odY = oV + round8(kL * LDW);        // [kL][LDW] dy
  static constexpr int odV = odY + round8(kL * LDW);       // [kL][LDW] dV
  static constexpr int odRd = odV + round8(kL * LDW);      // [kL][LDW] dRd, then r dr'
  static constexpr int odKd = odRd + round8(kL * LDW);     // [kL][LDW] dKd, then k dk'
  static constexpr int oR = odKd + round8(kL * LDW);       // [kL][LDR] r
  static constexpr int oK = oR + round8(kL * LDR);         // [kL][LDR] k
  static constexpr int oA = oK + round8(kL * LDR);         // [kL][LDR] w, then A
  static constexpr int oKdd = oA + round8(kL * LDR);       // [kL][LDR] Kd dKd
  static constexpr int oP = oKdd + round8(kL * LDR);       // [kL][kLDP] P
  static constexpr int odP = oP + round8(kL * kLDP);       // [kL][kLDP] dP
  static constexpr int oE = odP + round8(kL * kLDP);       // [N] E
  static constexpr int odE = oE + round8(N);               // [N] dE
  static constexpr int oU = odE + round8(N);               // [N] u
  static constexpr int odU = oU + round8(N);               // [kBwdThreads] du partial sums
  // The state entering the chunk, staged in shared memory where it fits (n <= 64: 18 KiB), so that
  // its two readers (dE, dRd) take it from global memory once; for n = 128 they read it there.
  static constexpr bool kStageS = N <= 64;
  static constexpr int oS = odU + round8(kBwdThreads);     // [N][LDW] S, if staged
  static constexpr size_t kBytes = size_t(oS + (kStageS ? round8(N * LDW) : 0)) * sizeof(float);
};

// An n x n state block, N * N / kThreads floats per thread, staged in registers like StagedTile.
template <int N, int kThreads>
struct StagedState {
  static_assert(N * N % kThreads == 0, "every thread stages the same number of floats");
  static constexpr int kPer = N * N / kThreads;
  float x[kPer];

  __device__ __forceinline__ void fetch(const float* __restrict__ src, int tid) {
#pragma unroll
    for (int q = 0; q < kPer; ++q) x[q] = src[tid + q * kThreads];
  }

  __device__ __forceinline__ void store(float* dst, int ld, int tid) const {
#pragma unroll
    for (int q = 0; q < kPer; ++q) {
      const int e = tid + q * kThreads;
      dst[(e / N) * ld + e % N] = x[q];
    }
  }
};

// kFull: phase C (every gradient for the segment; ds0 from the first segment, du partial sums per
// (b, segment)). Otherwise phase A: the state gradient at the segment's start from a zero gradient at
// its end, and the segment's total decay. Phase A runs segments 1 .. G - 1, block = bh * (G - 1) +
// g - 1; phase C runs all, block = bh * G + g.
template <typename T, int N, bool kFull>
__global__ void __launch_bounds__(kBwdThreads)
    wkv6_chunked_backward_kernel(int64_t T_, int64_t H, int64_t seg_len, int segments,
                                 int64_t chunks_total, const T* __restrict__ r,
                                 const T* __restrict__ k, const T* __restrict__ v,
                                 const float* __restrict__ w, const float* __restrict__ u,
                                 const T* __restrict__ dy, const float* __restrict__ dsT,
                                 const float* __restrict__ states, float* __restrict__ seg_dstate,
                                 float* __restrict__ seg_decay, T* __restrict__ dr,
                                 T* __restrict__ dk, T* __restrict__ dv, float* __restrict__ dw,
                                 float* __restrict__ ds0, float* __restrict__ du_part) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  using G = BwdGeometry<N>;
  constexpr int LDW = G::LDW, LDR = G::LDR;
  constexpr int64_t NN = int64_t(N) * N;
  float* smem = dynamic_shared_floats();
  float* sdS = smem + G::odS;
  float* sRd = smem + G::oRd;
  float* sKd = smem + G::oKd;
  float* sV = smem + G::oV;
  float* sdY = smem + G::odY;
  float* sdV = smem + G::odV;
  float* sdRd = smem + G::odRd;
  float* sdKd = smem + G::odKd;
  float* sR = smem + G::oR;
  float* sK = smem + G::oK;
  float* sA = smem + G::oA;
  float* sKdd = smem + G::oKdd;
  float* sP = smem + G::oP;
  float* sdP = smem + G::odP;
  float* sE = smem + G::oE;
  float* sdE = smem + G::odE;
  float* sU = smem + G::oU;
  float* sdU = smem + G::odU;
  float* sS = smem + G::oS;  // only where G::kStageS

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int launched = kFull ? segments : segments - 1;
  const int g = int(blockIdx.x % launched) + (kFull ? 0 : 1);
  const int64_t bh = blockIdx.x / launched, b = bh / H, h = bh % H;
  const int64_t t_begin = g * seg_len;
  const int64_t t_end = t_begin + seg_len < T_ ? t_begin + seg_len : T_;
  const int64_t stride = H * N;
  const int64_t base = (b * T_ * H + h) * N;

  // The state gradient at the segment's end: dsT for the last segment, phase B's slot for the
  // others, zero in phase A.
  const float* init = nullptr;
  if (kFull) init = g == segments - 1 ? dsT + bh * NN : seg_dstate + (bh * (segments - 1) + g) * NN;
  for (int e = tid; e < N * N; e += kBwdThreads) {
    const int j = e / N, i = e % N;
    sdS[j * LDW + i] = init ? init[e] : 0.f;
  }
  for (int c = tid; c < N; c += kBwdThreads) sU[c] = u[h * N + c];
  zero_p<kBwdThreads>(sP, tid);
  float total_log_decay = 0.f;  // phase A, thread c < N
  float du_acc = 0.f;           // phase C: channel tid % N (kBwdThreads is a multiple of N)
  __syncthreads();

  constexpr bool kStageS = kFull && G::kStageS;
  StagedTile<N, kBwdThreads> next_r, next_k, next_w, next_v, next_dy;
  StagedState<(kStageS ? N : 32), kBwdThreads> next_S;  // unused (and small) where S is not staged
  auto fetch = [&](int64_t t0) {
    next_r.fetch(r, base, stride, 0, t0, t_end, tid);
    next_w.fetch(w, base, stride, 0, t0, t_end, tid);
    next_dy.fetch(dy, base, stride, 0, t0, t_end, tid);
    if (kFull) {
      next_k.fetch(k, base, stride, 0, t0, t_end, tid);
      next_v.fetch(v, base, stride, 0, t0, t_end, tid);
    }
    if (kStageS) next_S.fetch(states + (bh * chunks_total + t0 / kL) * NN, tid);
  };
  const int64_t first_chunk = t_begin / kL, last_chunk = (t_end - 1) / kL;
  fetch(last_chunk * kL);
  for (int64_t chunk = last_chunk; chunk >= first_chunk; --chunk) {
    const int64_t t0 = chunk * kL;
    // 1. Inputs (steps past the segment are zero, w too, and so are their gradients' sources), then
    //    the previous chunk's loads, left in flight. Phase A reads neither k nor v.
    next_r.store(sR, LDR, tid);
    next_w.store(sA, LDR, tid);
    next_dy.store(sdY, LDW, tid);
    if (kFull) {
      next_k.store(sK, LDR, tid);
      next_v.store(sV, LDW, tid);
    }
    if (kStageS) next_S.store(sS, LDW, tid);
    __syncthreads();
    if (chunk > first_chunk) fetch(t0 - kL);

    // 2. A and E.
    total_log_decay += cumulative_decay<N>(sA, sE, LDR, tid);
    __syncthreads();

    // 3. Rd, Kd, P and dE (which reads dS' before step 5 turns it into dS).
    decayed_tiles<N, kBwdThreads>(sRd, sKd, sR, sK, sA, LDW, LDR, tid, true, kFull);
    // The state entering this chunk: staged in shared memory, or read from the scratch in place.
    const float* S = kStageS ? sS : states + (bh * chunks_total + chunk) * NN;
    const int lds = kStageS ? LDW : N;
    if (kFull) {
      form_p<N>(sP, sR, sK, sA, sU, LDR, warp, lane, kBwdWarps);
      for (int j = warp; j < N; j += kBwdWarps) {
        float acc = 0.f;
        for (int i = lane; i < N; i += 32) acc = fmaf(sdS[j * LDW + i], S[j * lds + i], acc);
#pragma unroll
        for (int m = 16; m >= 1; m /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, m);
        if (lane == 0) sdE[j] = acc;
      }
    }
    __syncthreads();

    // 4. The products that read dS': dV, dRd, dKd (N / 16 tiles each) and dP (one tile).
    if (kFull) {
      constexpr int kTiles = N / 16;
      for (int job = warp; job < 3 * kTiles + 1; job += kBwdWarps) {
        const int kind = job / kTiles, cn = (job % kTiles) * 16;
        FragC acc;
        wmma::fill_fragment(acc, 0.f);
        if (kind == 0) {  // dV = P^T dY + Kd dS'
          mma_k<kL / 8, FragAT, FragB>(acc, sP, kLDP, 8 * kLDP, sdY + cn, LDW, 8 * LDW);
          mma_k<N / 8, FragA, FragB>(acc, sKd, LDW, 8, sdS + cn, LDW, 8 * LDW);
          wmma::store_matrix_sync(sdV + cn, acc, LDW, wmma::mem_row_major);
        } else if (kind == 1) {  // dRd = dY S^T, S^T read column-major
          mma_k<N / 8, FragA, FragBT>(acc, sdY, LDW, 8, S + cn * lds, lds, 8);
          wmma::store_matrix_sync(sdRd + cn, acc, LDW, wmma::mem_row_major);
        } else if (kind == 2) {  // dKd = V dS'^T
          mma_k<N / 8, FragA, FragBT>(acc, sV, LDW, 8, sdS + cn * LDW, LDW, 8);
          wmma::store_matrix_sync(sdKd + cn, acc, LDW, wmma::mem_row_major);
        } else {  // dP = dY V^T
          mma_k<N / 8, FragA, FragBT>(acc, sdY, LDW, 8, sV, LDW, 8);
          wmma::store_matrix_sync(sdP, acc, kLDP, wmma::mem_row_major);
        }
      }
    }
    __syncthreads();

    // 5. Elementwise: dv out; dr, dk (pair sums through the exponentials, plus the bonus); r dr' and
    //    k dk' kept in place of dRd, dKd for the dw pass; and dS' scaled by E for step 6.
    if (kFull) {
      for (int e = tid; e < kL * N; e += kBwdThreads) {
        const int t = e / N, j = e % N;
        const int64_t tt = t0 + t;
        const float a_t = sA[t * LDR + j];
        const float a_prev = t > 0 ? sA[(t - 1) * LDR + j] : 0.f;
        const float a_last = sA[(kL - 1) * LDR + j];
        float drp = sdRd[t * LDW + j] * __expf(a_prev);
        for (int s = 0; s < t; ++s)
          drp = fmaf(sdP[t * kLDP + s] * sK[s * LDR + j], __expf(a_prev - sA[s * LDR + j]), drp);
        const float kd = sKd[t * LDW + j], dkd = sdKd[t * LDW + j];
        float dkp = dkd * __expf(a_last - a_t);
        for (int q = t + 1; q < kL; ++q)
          dkp = fmaf(sdP[q * kLDP + t] * sR[q * LDR + j], __expf(sA[(q - 1) * LDR + j] - a_t), dkp);
        const float rt = sR[t * LDR + j], kt = sK[t * LDR + j], diag = sdP[t * kLDP + t];
        du_acc = fmaf(diag, rt * kt, du_acc);
        if (tt < t_end) {
          const int64_t off = base + tt * stride + j;
          dr[off] = from_f<T>(fmaf(diag * sU[j], kt, drp));
          dk[off] = from_f<T>(fmaf(diag * sU[j], rt, dkp));
          dv[off] = from_f<T>(sdV[t * LDW + j]);
        }
        sdRd[t * LDW + j] = rt * drp;
        sdKd[t * LDW + j] = kt * dkp;
        sKdd[t * LDR + j] = kd * dkd;
      }
    }
    for (int e = tid; e < N * N; e += kBwdThreads) {
      const int j = e / N, i = e % N;
      sdS[j * LDW + i] *= sE[j];
    }
    __syncthreads();

    // 6. dS = Rd^T dY + E * dS' (Rd^T: sRd read column-major); dw by a reverse sum over the chunk.
    for (int tile = warp; tile < (N / 16) * (N / 16); tile += kBwdWarps) {
      const int jm = (tile / (N / 16)) * 16, cn = (tile % (N / 16)) * 16;
      FragC acc;
      wmma::load_matrix_sync(acc, sdS + jm * LDW + cn, LDW, wmma::mem_row_major);
      mma_k<kL / 8, FragAT, FragB>(acc, sRd + jm, LDW, 8 * LDW, sdY + cn, LDW, 8 * LDW);
      wmma::store_matrix_sync(sdS + jm * LDW + cn, acc, LDW, wmma::mem_row_major);
    }
    if (kFull && tid < N) {
      const int j = tid;
      float d_last = sE[j] * sdE[j];
#pragma unroll
      for (int s = 0; s < kL; ++s) d_last += sKdd[s * LDR + j];
      float later_r = 0.f, from_k = 0.f;
      for (int q = kL - 1; q >= 0; --q) {
        from_k += sdKd[q * LDW + j];
        const int64_t tt = t0 + q;
        if (tt < t_end) dw[base + tt * stride + j] = later_r - from_k + d_last;
        later_r += sdRd[q * LDW + j];
      }
    }
    __syncthreads();
  }

  if (kFull) {
    if (g == 0) {
      for (int e = tid; e < N * N; e += kBwdThreads) ds0[bh * NN + e] = sdS[(e / N) * LDW + e % N];
    }
    sdU[tid] = du_acc;
    __syncthreads();
    if (tid < N) {
      float acc = 0.f;
      for (int q = tid; q < kBwdThreads; q += N) acc += sdU[q];
      du_part[((b * segments + g) * H + h) * N + tid] = acc;
    }
  } else {
    const int64_t slot = bh * (segments - 1) + g - 1;
    for (int e = tid; e < N * N; e += kBwdThreads) seg_dstate[slot * NN + e] = sdS[(e / N) * LDW + e % N];
    if (tid < N) seg_decay[slot * N + tid] = __expf(total_log_decay);
  }
#endif
}

// =============================================================================================
// Phase B, both directions. Forward: slot g (g < G - 1) holds segment g's final state from a zero
// start; it becomes the state entering segment g + 1, S_{g+1} = decay_g * S_g + slot_g with S_0 = s0.
// Backward: slot g holds segment g + 1's start gradient from a zero end gradient and decay_g that
// segment's total decay; it becomes the gradient at segment g's end, walking from dsT down.
__global__ void wkv6_chunked_combine_kernel(int N, int segments, bool reverse,
                                            const float* __restrict__ start,
                                            float* __restrict__ seg_state,
                                            const float* __restrict__ seg_decay) {
  const int64_t bh = blockIdx.x, NN = int64_t(N) * N;
  for (int64_t e = threadIdx.x; e < NN; e += blockDim.x) {
    const int64_t j = e / N;
    float cur = start[bh * NN + e];
    for (int q = 0; q + 1 < segments; ++q) {
      const int64_t slot = bh * (segments - 1) + (reverse ? segments - 2 - q : q);
      cur = fmaf(seg_decay[slot * N + j], cur, seg_state[slot * NN + e]);
      seg_state[slot * NN + e] = cur;
    }
  }
}

// Host side: how many time segments a launch of `blocks` blocks over `chunks` chunks uses. `forced`
// (> 0) asks for that many; otherwise enough for about two blocks per multiprocessor, each segment at
// least 8 chunks long (a shorter one pays more for phase A than it gains). Normalised so that no
// segment is empty; seg_chunks is the chunks per segment (the last may have fewer).
struct SegmentPlan {
  int segments;
  int64_t seg_chunks;
};

inline SegmentPlan plan_segments(int64_t forced, int64_t blocks, int64_t chunks, int multiprocessors) {
  int64_t segments = 1;
  if (forced > 0) {
    segments = forced < chunks ? forced : chunks;
  } else {
    const int64_t target = 2 * int64_t(multiprocessors);
    if (blocks < target) {
      const int64_t wanted = (target + blocks - 1) / blocks, longest = chunks / 8;
      segments = wanted < longest ? wanted : longest;
      if (segments < 1) segments = 1;
    }
  }
  const int64_t seg_chunks = (chunks + segments - 1) / segments;
  return {static_cast<int>((chunks + seg_chunks - 1) / seg_chunks), seg_chunks};
}

}  // namespace
}  // namespace rwkv_vision
