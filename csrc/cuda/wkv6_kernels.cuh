// Device code of the recurrent WKV6 kernels; wkv6_cuda.cu launches them, and its header explains
// them. Kept apart so that tests/cuda_emu can compile exactly this code for the CPU.
#pragma once

#include "cuda/device_common.cuh"

#include <cmath>
#include <cstdint>

namespace rwkv_vision {
namespace {


// The backward scratch is written and read back by the same thread within one kernel: read it
// through L2 (ld.global.cg), never through the read-only data path the compiler may otherwise pick
// for loads it merges with loads of the __restrict__ const inputs.
__device__ __forceinline__ float load_scratch(const float* p) { return __ldcg(p); }

// The steps block bh walks: `len` steps from flat step `first` (b * T + t, so element (first + s, h, c)
// of a [b, t, h, n] tensor is at ((first + s) * H + h) * N + c). Without packing (cu == nullptr) all T
// steps of batch row bh / H; with cu_seqlens (b == 1, one block per (sequence, head), bh = seq * H + h)
// steps cu[seq] .. cu[seq + 1] of row 0. The block's state rows are bh's in both cases.
struct Walk {
  int64_t first, len;
};

__device__ __forceinline__ Walk block_walk(int64_t bh, int64_t T_, int64_t H, const int64_t* cu) {
  const int64_t s = bh / H;
  if (cu == nullptr) return {s * T_, T_};
  return {cu[s], cu[s + 1] - cu[s]};
}

// ---------------------------------------------------------------------------------------------
// Kernels. Every kernel runs with blockDim.x == N and gridDim.x == B * H (block bh = b * H + h), or
// with cu_seqlens (N_seq + 1 offsets) gridDim.x == N_seq * H.
// Element (b, t, h, c) of a [b, t, h, n] tensor is at ((b * T + t) * H + h) * N + c, so consecutive
// steps of one (b, h) are H * N apart.
//
// The per-step vectors are double-buffered in shared memory: step s writes buffer s & 1, syncs
// once, then reads it. Step s + 2 writes that buffer again only after passing the sync of step
// s + 1, which every thread reaches after its reads of step s, so one __syncthreads per step is
// enough. The rows kernel keeps one running parity over all its phases, so this holds across them.

template <typename T, int N>
__global__ void __launch_bounds__(N)
    wkv6_forward_kernel(int64_t T_, int64_t H, const T* __restrict__ r, const T* __restrict__ k,
                        const T* __restrict__ v, const float* __restrict__ w,
                        const float* __restrict__ u, const float* __restrict__ s0,
                        T* __restrict__ y, float* __restrict__ sT,
                        const int64_t* __restrict__ cu = nullptr) {
  constexpr int64_t NN = int64_t(N) * N;
  const int64_t bh = blockIdx.x, h = bh % H;
  const int i = threadIdx.x;  // value channel: this thread owns column i of S
  const int64_t stride = H * N;
  const Walk run = block_walk(bh, T_, H, cu);
  const int64_t len = run.len;
  const int64_t base = (run.first * H + h) * N + i;

  __shared__ __align__(16) float sr[2][N];
  __shared__ __align__(16) float sk[2][N];
  __shared__ __align__(16) float se[2][N];
  __shared__ __align__(16) float srku[2][N];

  const float ui = u[h * N + i];
  float S[N];  // S[j] = state[j][i]
  {
    const float* src = s0 + bh * NN + i;
#pragma unroll
    for (int j = 0; j < N; ++j) S[j] = src[j * N];
  }

  // Registers prefetch the next step's inputs while the current one is computed.
  float nr = 0.f, nk = 0.f, nv = 0.f, nw = 0.f;
  if (len > 0) nr = to_f(r[base]), nk = to_f(k[base]), nv = to_f(v[base]), nw = w[base];
  int par = 0;
  for (int64_t t = 0; t < len; ++t) {
    const int64_t off = base + t * stride;
    const float rv = nr, kv = nk, vv = nv, wv = nw;
    if (t + 1 < len) {
      const int64_t nx = off + stride;
      nr = to_f(r[nx]);
      nk = to_f(k[nx]);
      nv = to_f(v[nx]);
      nw = w[nx];
    }
    sr[par][i] = rv;
    sk[par][i] = kv;
    se[par][i] = expf(wv);
    srku[par][i] = rv * ui * kv;
    __syncthreads();
    float acc = 0.f, bonus = 0.f;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      acc += sr[par][j] * S[j];
      bonus += srku[par][j];
      S[j] = se[par][j] * S[j] + sk[par][j] * vv;
    }
    y[off] = from_f<T>(acc + bonus * vv);
    par ^= 1;
  }

  float* dst = sT + bh * NN + i;
#pragma unroll
  for (int j = 0; j < N; ++j) dst[j * N] = S[j];
}

// Row-owned backward: thread j owns row j of S and of dS; computes dr, dk, dw and the per-block du.
// Per block, `scratch` holds n_chunks checkpoints, C chunk states and one parked dS, each an n x n
// float block stored transposed (element [j][i] at i * N + j).
template <typename T, int N>
__global__ void __launch_bounds__(N)
    wkv6_backward_rows_kernel(int64_t T_, int64_t H, int64_t C, int64_t n_chunks,
                              int64_t scratch_per_block, const T* __restrict__ r,
                              const T* __restrict__ k, const T* __restrict__ v,
                              const float* __restrict__ w, const float* __restrict__ u,
                              const float* __restrict__ s0, const T* __restrict__ dy,
                              const float* __restrict__ dsT, T* __restrict__ dr,
                              T* __restrict__ dk, float* __restrict__ dw,
                              float* __restrict__ du_part, float* __restrict__ scratch,
                              const int64_t* __restrict__ cu = nullptr) {
  constexpr int64_t NN = int64_t(N) * N;
  const int64_t bh = blockIdx.x, h = bh % H;
  const int j = threadIdx.x;  // key channel: this thread owns row j
  const int64_t stride = H * N;
  const Walk run = block_walk(bh, T_, H, cu);
  const int64_t len_all = run.len;
  const int64_t base = (run.first * H + h) * N + j;
  // n_chunks sizes the scratch (for the longest walk); this block uses the chunks of its own walk, at
  // least one so that an empty walk still passes dsT through.
  const int64_t used_chunks = len_all > 0 ? (len_all + C - 1) / C : 1;

  float* ckpt = scratch + bh * scratch_per_block;  // [n_chunks][N][N]: state before step c * C
  float* states = ckpt + n_chunks * NN;            // [C][N][N]: state before step t0 + m
  float* parked = states + C * NN;                 // [N][N]: dS between two chunks

  __shared__ __align__(16) float sv[2][N];
  __shared__ __align__(16) float sdy[2][N];

  const float uj = u[h * N + j];
  int par = 0;

  // Sweep 1: the state before every C-th step (the last chunk's start included).
  {
    float S[N];
    const float* src = s0 + bh * NN + int64_t(j) * N;
#pragma unroll
    for (int i = 0; i < N; ++i) S[i] = src[i];
    {
      float* dst = ckpt + j;
#pragma unroll
      for (int i = 0; i < N; ++i) dst[i * N] = S[i];
    }
    for (int64_t c = 0; c + 1 < used_chunks; ++c) {
      for (int64_t tt = 0; tt < C; ++tt) {
        const int64_t off = base + (c * C + tt) * stride;
        sv[par][j] = to_f(v[off]);
        const float kj = to_f(k[off]), ej = expf(w[off]);
        __syncthreads();
#pragma unroll
        for (int i = 0; i < N; ++i) S[i] = ej * S[i] + kj * sv[par][i];
        par ^= 1;
      }
      float* dst = ckpt + (c + 1) * NN + j;
#pragma unroll
      for (int i = 0; i < N; ++i) dst[i * N] = S[i];
    }
  }

  // Sweep 2, chunk by chunk from the end. dS (dL/d(state after step t)) starts as dsT, parked
  // transposed like every later dS, so that every chunk loads it the same way.
  {
    const float* src = dsT + bh * NN + int64_t(j) * N;
    float* dst = parked + j;
#pragma unroll
    for (int i = 0; i < N; ++i) dst[i * N] = src[i];
  }
  float du_acc = 0.f;
  for (int64_t c = used_chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * C;
    const int64_t len = (len_all - t0 < C) ? (len_all - t0) : C;  // >= 1 unless the walk is empty

    // Rebuild states[m] = state before step t0 + m, m in [0, len).
    {
      float S[N];
      const float* src = ckpt + c * NN + j;
#pragma unroll
      for (int i = 0; i < N; ++i) S[i] = load_scratch(src + i * N);
      for (int64_t m = 0;; ++m) {
        float* dst = states + m * NN + j;
#pragma unroll
        for (int i = 0; i < N; ++i) dst[i * N] = S[i];
        if (m + 1 >= len) break;  // uniform over the block: the sync below is safe
        const int64_t off = base + (t0 + m) * stride;
        sv[par][j] = to_f(v[off]);
        const float kj = to_f(k[off]), ej = expf(w[off]);
        __syncthreads();
#pragma unroll
        for (int i = 0; i < N; ++i) S[i] = ej * S[i] + kj * sv[par][i];
        par ^= 1;
      }
    }

    // Walk the chunk backwards. dS holds dL/d(state after step t).
    {
      float dS[N];
      {
        const float* src = parked + j;
#pragma unroll
        for (int i = 0; i < N; ++i) dS[i] = load_scratch(src + i * N);
      }
      for (int64_t m = len - 1; m >= 0; --m) {
        const int64_t off = base + (t0 + m) * stride;
        sv[par][j] = to_f(v[off]);
        sdy[par][j] = to_f(dy[off]);
        const float rj = to_f(r[off]), kj = to_f(k[off]), ej = expf(w[off]);
        __syncthreads();
        float dot_gy_v = 0.f;
#pragma unroll
        for (int i = 0; i < N; ++i) dot_gy_v += sdy[par][i] * sv[par][i];
        const float* Sp = states + m * NN + j;  // state before step t0 + m, row j
        float acc_r = 0.f, acc_k = 0.f, acc_w = 0.f;
#pragma unroll
        for (int i = 0; i < N; ++i) {
          const float s = load_scratch(Sp + i * N), g = dS[i], gy = sdy[par][i];
          acc_r += gy * s;
          acc_k += sv[par][i] * g;
          acc_w += s * g;
          dS[i] = ej * g + rj * gy;
        }
        dr[off] = from_f<T>(uj * kj * dot_gy_v + acc_r);
        dk[off] = from_f<T>(rj * uj * dot_gy_v + acc_k);
        dw[off] = ej * acc_w;
        du_acc += rj * kj * dot_gy_v;
        par ^= 1;
      }
      if (c > 0) {  // dS after chunk 0 is ds0, written by the column kernel
        float* dst = parked + j;
#pragma unroll
        for (int i = 0; i < N; ++i) dst[i * N] = dS[i];
      }
    }
  }
  du_part[bh * N + j] = du_acc;
}

// Column-owned backward: thread i owns column i of dS; computes dv and ds0. Needs no state.
template <typename T, int N>
__global__ void __launch_bounds__(N)
    wkv6_backward_cols_kernel(int64_t T_, int64_t H, const T* __restrict__ r,
                              const T* __restrict__ k, const float* __restrict__ w,
                              const float* __restrict__ u, const T* __restrict__ dy,
                              const float* __restrict__ dsT, T* __restrict__ dv,
                              float* __restrict__ ds0, const int64_t* __restrict__ cu = nullptr) {
  constexpr int64_t NN = int64_t(N) * N;
  const int64_t bh = blockIdx.x, h = bh % H;
  const int i = threadIdx.x;  // value channel: this thread owns column i of dS
  const int64_t stride = H * N;
  const Walk run = block_walk(bh, T_, H, cu);
  const int64_t len = run.len;
  const int64_t base = (run.first * H + h) * N + i;

  __shared__ __align__(16) float sr[2][N];
  __shared__ __align__(16) float sk[2][N];
  __shared__ __align__(16) float se[2][N];
  __shared__ __align__(16) float skru[2][N];

  const float ui = u[h * N + i];
  float dS[N];  // dS[j] = dL/dstate[j][i]
  {
    const float* src = dsT + bh * NN + i;
#pragma unroll
    for (int j = 0; j < N; ++j) dS[j] = src[j * N];
  }

  float nr = 0.f, nk = 0.f, nw = 0.f, ng = 0.f;
  if (len > 0) {
    const int64_t last = base + (len - 1) * stride;
    nr = to_f(r[last]), nk = to_f(k[last]), nw = w[last], ng = to_f(dy[last]);
  }
  int par = 0;
  for (int64_t t = len - 1; t >= 0; --t) {
    const int64_t off = base + t * stride;
    const float rv = nr, kv = nk, wv = nw, gy = ng;
    if (t > 0) {
      const int64_t nx = off - stride;
      nr = to_f(r[nx]);
      nk = to_f(k[nx]);
      nw = w[nx];
      ng = to_f(dy[nx]);
    }
    sr[par][i] = rv;
    sk[par][i] = kv;
    se[par][i] = expf(wv);
    skru[par][i] = kv * rv * ui;
    __syncthreads();
    float sum_kru = 0.f, acc = 0.f;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      sum_kru += skru[par][j];
      const float g = dS[j];
      acc += sk[par][j] * g;
      dS[j] = se[par][j] * g + sr[par][j] * gy;
    }
    dv[off] = from_f<T>(gy * sum_kru + acc);
    par ^= 1;
  }

  float* dst = ds0 + bh * NN + i;
#pragma unroll
  for (int j = 0; j < N; ++j) dst[j * N] = dS[j];
}

// du[h, n] = sum over b of du_part[b, h, n], b in increasing order.
__global__ void wkv6_du_reduce_kernel(int64_t B, int64_t HN, const float* __restrict__ du_part,
                                      float* __restrict__ du) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= HN) return;
  float acc = 0.f;
  for (int64_t b = 0; b < B; ++b) acc += du_part[b * HN + idx];
  du[idx] = acc;
}

// Host side, the backward's scratch layout: the checkpoint spacing C for a sequence of length t,
// ceil(sqrt(t)), at least 1. The scratch of a block is ceil(t / C) + C + 1 states.
inline int64_t checkpoint_spacing(int64_t t) {
  int64_t c = static_cast<int64_t>(std::sqrt(static_cast<double>(t)));
  if (c < 1) c = 1;
  while (c * c < t) ++c;
  while (c > 1 && (c - 1) * (c - 1) >= t) --c;
  return c;
}

}  // namespace
}  // namespace rwkv_vision
