// Device code of the recurrent WKV7 kernels and the decoding step; wkv7_cuda.cu and wkv7_step_cuda.cu
// launch them, and wkv7_cuda.cu's header explains the design. Kept apart so that tests/cuda_emu can
// compile exactly this code for the CPU.
#pragma once

#include "cuda/device_common.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace rwkv_vision {
namespace {

// Scratch written and read back by the same thread within one kernel: read it through L2 (ld.global.cg),
// never through the read-only data path the compiler may pick for loads merged with the const inputs'.
__device__ __forceinline__ float wkv7_load_scratch(const float* p) { return __ldcg(p); }

// Where block (sequence s, head h) works: batch row `row`, steps [t0, t1) of it. cu: the cu_seqlens
// offsets on the device, or nullptr when not packed (then sequence s is batch row s, all T_ steps).
struct Wkv7Span {
  int64_t row, t0, t1;
};

__device__ __forceinline__ Wkv7Span wkv7_span(const int64_t* cu, int64_t s, int64_t T_) {
  if (cu == nullptr) return Wkv7Span{s, 0, T_};
  return Wkv7Span{0, cu[s], cu[s + 1]};
}

// The backward's checkpoints of sequence s start at this slot (slots of C steps; see wkv7_cuda.cu).
__device__ __forceinline__ int64_t wkv7_first_slot(const int64_t* cu, int64_t s, int64_t T_, int64_t C) {
  if (cu == nullptr) return s * ((T_ + C - 1) / C);
  return cu[s] / C + s;
}

// The backward's plan (host side; the emulator harness uses it too): the checkpoint spacing C and the
// float32 scratch sizes: sa and dsa [b, t, h, n] each, the checkpoint slots, and C + 1 n x n blocks per
// (sequence, head). C = ceil(sqrt(mean sequence length)) keeps checkpoints plus chunk states near their
// minimum. A packed sequence starting at t0 takes slots t0 / C + s onwards: disjoint, t / C + s + 1 in all.
struct Wkv7BackwardPlan {
  int64_t C, slots, seq_numel, ckpt_numel, block_numel;
};

inline Wkv7BackwardPlan wkv7_plan_backward(int64_t B, int64_t T, int64_t H, int64_t N, int64_t S, bool packed) {
  Wkv7BackwardPlan p{};
  const int64_t total = packed ? T : B * T;
  const int64_t mean = std::max<int64_t>(1, total / std::max<int64_t>(1, S));
  p.C = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(std::sqrt(double(mean)))));
  p.slots = packed ? T / p.C + S + 1 : B * ((T + p.C - 1) / p.C);
  p.seq_numel = B * T * H * N;
  p.ckpt_numel = p.slots * H * N * N;
  p.block_numel = S * H * (p.C + 1) * N * N;
  return p;
}

// ---------------------------------------------------------------------------------------------
// Every sequence kernel runs with blockDim.x == N and gridDim.x == S * H (block sh = s * H + h).
// Element (row, t, h, c) of a [b, t, h, n] tensor is at ((row * T + t) * H + h) * N + c, so
// consecutive steps of one sequence and head are H * N apart. The per-step vectors are double-buffered
// in shared memory (buffer `par`): step s writes buffer s & 1, syncs once, then reads it; step s + 2
// writes it again only after the sync of step s + 1, which every thread passes after its reads of step
// s, so one __syncthreads per step suffices. All loops with a barrier run the same number of times in
// every thread of a block (the span is the block's).

// Forward. Thread i owns column i of S (S[j] = state[j][i]): the column's update needs only v[i] and
// the broadcast vectors, and y[i] = r . S[:, i] is a sum over the thread's own registers.
template <typename T, int N>
__global__ void __launch_bounds__(N)
    wkv7_forward_kernel(int64_t T_, int64_t H, const int64_t* __restrict__ cu, const T* __restrict__ r,
                        const float* __restrict__ w, const T* __restrict__ k, const T* __restrict__ v,
                        const T* __restrict__ a, const T* __restrict__ b, const float* __restrict__ s0,
                        T* __restrict__ y, float* __restrict__ sT) {
  constexpr int64_t NN = int64_t(N) * N;
  const int64_t sh = blockIdx.x, s = sh / H, h = sh % H;
  const int i = threadIdx.x;
  const Wkv7Span sp = wkv7_span(cu, s, T_);
  const int64_t stride = H * N;
  const int64_t base = ((sp.row * T_ + sp.t0) * H + h) * N + i;
  const int64_t len = sp.t1 - sp.t0;

  __shared__ __align__(16) float sr[2][N];
  __shared__ __align__(16) float se[2][N];
  __shared__ __align__(16) float sk[2][N];
  __shared__ __align__(16) float sa_[2][N];
  __shared__ __align__(16) float sb[2][N];

  float S[N];
  {
    const float* src = s0 + sh * NN + i;
#pragma unroll
    for (int j = 0; j < N; ++j) S[j] = src[j * N];
  }
  int par = 0;
  for (int64_t t = 0; t < len; ++t) {
    const int64_t off = base + t * stride;
    sr[par][i] = to_f(r[off]);
    se[par][i] = expf(w[off]);
    sk[par][i] = to_f(k[off]);
    sa_[par][i] = to_f(a[off]);
    sb[par][i] = to_f(b[off]);
    const float vi = to_f(v[off]);
    __syncthreads();
    float sa = 0.f;
#pragma unroll
    for (int j = 0; j < N; ++j) sa += sa_[par][j] * S[j];
    float acc = 0.f;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      S[j] = se[par][j] * S[j] + sb[par][j] * sa + sk[par][j] * vi;
      acc += sr[par][j] * S[j];
    }
    y[off] = from_f<T>(acc);
    par ^= 1;
  }
  float* dst = sT + sh * NN + i;
#pragma unroll
  for (int j = 0; j < N; ++j) dst[j * N] = S[j];
}

// Backward, part 1: thread i owns column i of S and of G = dL/dS. The columns of G evolve on their own
// (G <- diag(e) (G + r dy^T) + a dsa^T, dsa[i] = b . G[:, i]), so this kernel computes the gradients
// that reduce over key channels: dv, ds0, and the vectors sa_t = a_t^T S_{t-1} (forward sweep) and dsa_t
// (backward sweep) that let part 2 evolve the rows. It also keeps the state before every C-th step of
// the sequence (checkpoint slots [C-th step][N][N], stored transposed: element [j][i] at i * N + j).
template <typename T, int N>
__global__ void __launch_bounds__(N)
    wkv7_backward_cols_kernel(int64_t T_, int64_t H, int64_t C, const int64_t* __restrict__ cu,
                              const T* __restrict__ r, const float* __restrict__ w,
                              const T* __restrict__ k, const T* __restrict__ v,
                              const T* __restrict__ a, const T* __restrict__ b,
                              const float* __restrict__ s0, const T* __restrict__ dy,
                              const float* __restrict__ dsT, T* __restrict__ dv,
                              float* __restrict__ ds0, float* __restrict__ sa_out,
                              float* __restrict__ dsa_out, float* __restrict__ ckpt) {
  constexpr int64_t NN = int64_t(N) * N;
  const int64_t sh = blockIdx.x, s = sh / H, h = sh % H;
  const int i = threadIdx.x;
  const Wkv7Span sp = wkv7_span(cu, s, T_);
  const int64_t stride = H * N;
  const int64_t base = ((sp.row * T_ + sp.t0) * H + h) * N + i;
  const int64_t len = sp.t1 - sp.t0;
  const int64_t slot0 = wkv7_first_slot(cu, s, T_, C);

  __shared__ __align__(16) float se[2][N];
  __shared__ __align__(16) float sk[2][N];
  __shared__ __align__(16) float sa_[2][N];
  __shared__ __align__(16) float sb[2][N];
  __shared__ __align__(16) float sr[2][N];
  int par = 0;

  // Forward sweep: sa_t and the checkpoints.
  {
    float S[N];
    const float* src = s0 + sh * NN + i;
#pragma unroll
    for (int j = 0; j < N; ++j) S[j] = src[j * N];
    for (int64_t t = 0; t < len; ++t) {
      if (t % C == 0) {
        float* dst = ckpt + ((slot0 + t / C) * H + h) * NN + int64_t(i) * N;
#pragma unroll
        for (int j = 0; j < N; ++j) dst[j] = S[j];
      }
      const int64_t off = base + t * stride;
      se[par][i] = expf(w[off]);
      sk[par][i] = to_f(k[off]);
      sa_[par][i] = to_f(a[off]);
      sb[par][i] = to_f(b[off]);
      const float vi = to_f(v[off]);
      __syncthreads();
      float sa = 0.f;
#pragma unroll
      for (int j = 0; j < N; ++j) sa += sa_[par][j] * S[j];
      sa_out[off] = sa;
#pragma unroll
      for (int j = 0; j < N; ++j) S[j] = se[par][j] * S[j] + sb[par][j] * sa + sk[par][j] * vi;
      par ^= 1;
    }
  }

  // Backward sweep: dv, dsa_t and ds0.
  {
    float G[N];
    const float* src = dsT + sh * NN + i;
#pragma unroll
    for (int j = 0; j < N; ++j) G[j] = src[j * N];
    for (int64_t t = len - 1; t >= 0; --t) {
      const int64_t off = base + t * stride;
      sr[par][i] = to_f(r[off]);
      se[par][i] = expf(w[off]);
      sk[par][i] = to_f(k[off]);
      sa_[par][i] = to_f(a[off]);
      sb[par][i] = to_f(b[off]);
      const float dyi = to_f(dy[off]);
      __syncthreads();
      float acc_v = 0.f, dsa = 0.f;
#pragma unroll
      for (int j = 0; j < N; ++j) {
        G[j] += sr[par][j] * dyi;
        acc_v += G[j] * sk[par][j];
        dsa += G[j] * sb[par][j];
      }
      dv[off] = from_f<T>(acc_v);
      dsa_out[off] = dsa;
#pragma unroll
      for (int j = 0; j < N; ++j) G[j] = se[par][j] * G[j] + sa_[par][j] * dsa;
      par ^= 1;
    }
    float* dst = ds0 + sh * NN + i;
#pragma unroll
    for (int j = 0; j < N; ++j) dst[j * N] = G[j];
  }
}

// Backward, part 2: thread j owns row j of S and of G. With sa_t and dsa_t from part 1 the rows evolve
// on their own too (S[j, :] <- e[j] S[j, :] + b[j] sa_t + k[j] v_t), and every gradient that reduces over
// value channels (dr, dw, dk, da, db) is a sum over the thread's own row. S_{t-1} is needed walking time
// backwards: chunk by chunk from the end, the chunk's states are rebuilt from its checkpoint into the
// block's scratch (`states`, C transposed n x n blocks), then walked backwards. G is parked in scratch
// (`parked`) while a chunk is rebuilt, so one n-float array per thread is live at a time.
template <typename T, int N>
__global__ void __launch_bounds__(N)
    wkv7_backward_rows_kernel(int64_t T_, int64_t H, int64_t C, const int64_t* __restrict__ cu,
                              const T* __restrict__ r, const float* __restrict__ w,
                              const T* __restrict__ k, const T* __restrict__ v,
                              const T* __restrict__ a, const T* __restrict__ b,
                              const T* __restrict__ dy, const float* __restrict__ dsT,
                              const float* __restrict__ sa_in, const float* __restrict__ dsa_in,
                              const float* __restrict__ ckpt, float* __restrict__ scratch,
                              T* __restrict__ dr, float* __restrict__ dw, T* __restrict__ dk,
                              T* __restrict__ da, T* __restrict__ db) {
  constexpr int64_t NN = int64_t(N) * N;
  const int64_t sh = blockIdx.x, s = sh / H, h = sh % H;
  const int j = threadIdx.x;
  const Wkv7Span sp = wkv7_span(cu, s, T_);
  const int64_t stride = H * N;
  const int64_t base = ((sp.row * T_ + sp.t0) * H + h) * N + j;
  const int64_t len = sp.t1 - sp.t0;
  const int64_t slot0 = wkv7_first_slot(cu, s, T_, C);
  const int64_t n_chunks = (len + C - 1) / C;
  float* states = scratch + sh * (C + 1) * NN;  // [C][N][N] transposed: state before step c * C + m
  float* parked = states + C * NN;              // [N][N] transposed: G between two chunks

  __shared__ __align__(16) float sv[2][N];
  __shared__ __align__(16) float ssa[2][N];
  __shared__ __align__(16) float sdy[2][N];
  __shared__ __align__(16) float sdsa[2][N];
  int par = 0;

  {
    const float* src = dsT + sh * NN + int64_t(j) * N;
#pragma unroll
    for (int i = 0; i < N; ++i) parked[i * N + j] = src[i];
  }
  for (int64_t c = n_chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * C;
    const int64_t clen = (len - t0 < C) ? (len - t0) : C;

    // Rebuild states[m] = S before step t0 + m, m in [0, clen).
    {
      float S[N];
      const float* src = ckpt + ((slot0 + c) * H + h) * NN + j;
#pragma unroll
      for (int i = 0; i < N; ++i) S[i] = src[i * N];
      for (int64_t m = 0;; ++m) {
        float* dst = states + m * NN + j;
#pragma unroll
        for (int i = 0; i < N; ++i) dst[i * N] = S[i];
        if (m + 1 >= clen) break;  // uniform over the block: the sync below is safe
        const int64_t off = base + (t0 + m) * stride;
        sv[par][j] = to_f(v[off]);
        ssa[par][j] = sa_in[off];
        const float ej = expf(w[off]), kj = to_f(k[off]), bj = to_f(b[off]);
        __syncthreads();
#pragma unroll
        for (int i = 0; i < N; ++i) S[i] = ej * S[i] + bj * ssa[par][i] + kj * sv[par][i];
        par ^= 1;
      }
    }

    // Walk the chunk backwards; G holds dL/d(state after step t0 + m).
    {
      float G[N];
#pragma unroll
      for (int i = 0; i < N; ++i) G[i] = wkv7_load_scratch(parked + i * N + j);
      for (int64_t m = clen - 1; m >= 0; --m) {
        const int64_t off = base + (t0 + m) * stride;
        sv[par][j] = to_f(v[off]);
        ssa[par][j] = sa_in[off];
        sdy[par][j] = to_f(dy[off]);
        sdsa[par][j] = dsa_in[off];
        const float rj = to_f(r[off]), ej = expf(w[off]), kj = to_f(k[off]);
        const float aj = to_f(a[off]), bj = to_f(b[off]);
        __syncthreads();
        const float* Sp = states + m * NN + j;
        float v_dy = 0.f, sa_dy = 0.f, acc_r = 0.f, acc_k = 0.f, acc_b = 0.f, acc_e = 0.f, acc_a = 0.f;
#pragma unroll
        for (int i = 0; i < N; ++i) {
          const float gy = sdy[par][i], vi = sv[par][i], sai = ssa[par][i], dsai = sdsa[par][i];
          const float sv_ = wkv7_load_scratch(Sp + i * N);
          const float g = G[i] + rj * gy;
          v_dy += vi * gy;
          sa_dy += sai * gy;
          acc_r += gy * sv_;
          acc_k += g * vi;
          acc_b += g * sai;
          acc_e += g * sv_;
          acc_a += sv_ * dsai;
          G[i] = ej * g + aj * dsai;
        }
        dr[off] = from_f<T>(ej * acc_r + bj * sa_dy + kj * v_dy);
        dw[off] = ej * acc_e;
        dk[off] = from_f<T>(acc_k);
        da[off] = from_f<T>(acc_a);
        db[off] = from_f<T>(acc_b);
        par ^= 1;
      }
      if (c > 0) {
#pragma unroll
        for (int i = 0; i < N; ++i) parked[i * N + j] = G[i];
      }
    }
  }
}

// The decoding step: one block per (batch, head), thread i owns column i of the state. The column is
// read once into registers (sa needs all of it before any element changes), then updated, read out
// and written back; the n threads touch n consecutive floats of each row (coalesced).
template <typename T, int N>
__global__ void __launch_bounds__(N)
    wkv7_step_kernel(const T* __restrict__ r, const float* __restrict__ w, const T* __restrict__ k,
                     const T* __restrict__ v, const T* __restrict__ a, const T* __restrict__ b,
                     float* __restrict__ state, T* __restrict__ y) {
  __shared__ float r_s[N], e_s[N], k_s[N], a_s[N], b_s[N];
  const int64_t bh = blockIdx.x;
  const int i = threadIdx.x;
  const int64_t off = bh * N + i;
  r_s[i] = to_f(r[off]);
  e_s[i] = expf(w[off]);
  k_s[i] = to_f(k[off]);
  a_s[i] = to_f(a[off]);
  b_s[i] = to_f(b[off]);
  const float vi = to_f(v[off]);
  float* col = state + bh * int64_t(N) * N + i;
  float S[N];
#pragma unroll
  for (int j = 0; j < N; ++j) S[j] = col[j * N];
  __syncthreads();
  float sa = 0.f;
#pragma unroll
  for (int j = 0; j < N; ++j) sa += a_s[j] * S[j];
  float acc = 0.f;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const float s_new = e_s[j] * S[j] + b_s[j] * sa + k_s[j] * vi;
    col[j * N] = s_new;
    acc += r_s[j] * s_new;
  }
  y[off] = from_f<T>(acc);
}

}  // namespace
}  // namespace rwkv_vision
