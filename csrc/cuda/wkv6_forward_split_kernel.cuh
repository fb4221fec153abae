// Device code of the split forward kernel (four threads per state column); wkv6_forward_split.cu
// launches it, and its header explains it. Kept apart so that tests/cuda_emu can compile this code
// for the CPU.
#pragma once

#include "cuda/device_common.cuh"

#include <cstdint>

namespace rwkv_vision {
namespace {


constexpr int kLanesPerColumn = 4;

template <typename T, int N>
__global__ void __launch_bounds__(kLanesPerColumn * N)
    wkv6_forward_split_kernel(int64_t T_, int64_t H, const T* __restrict__ r,
                              const T* __restrict__ k, const T* __restrict__ v,
                              const float* __restrict__ w, const float* __restrict__ u,
                              const float* __restrict__ s0, T* __restrict__ y,
                              float* __restrict__ sT) {
  constexpr int P = kLanesPerColumn;
  constexpr int R = N / P;  // rows per thread
  constexpr int64_t NN = int64_t(N) * N;
  const int64_t bh = blockIdx.x, b = bh / H, h = bh % H;
  const int tid = threadIdx.x;
  const int i = tid / P;  // the column (value channel) this thread works on
  const int p = tid % P;  // its rows: j = q * P + p
  const int vec = tid / N;  // which step vector this thread loads: 0 r, 1 k, 2 w, 3 v (warp-uniform)
  const int c = tid % N;    // and which element of it
  const int64_t stride = H * N;
  const int64_t base = (b * T_ * H + h) * N;

  __shared__ __align__(16) float sm[2][4][N];  // [parity][r, k, exp(w), v][channel]

  float S[R], uu[R];
  {
    const float* src = s0 + bh * NN;
#pragma unroll
    for (int q = 0; q < R; ++q) {
      S[q] = src[(q * P + p) * N + i];
      uu[q] = u[h * N + q * P + p];
    }
  }

  auto load = [&](int64_t t) -> float {
    const int64_t off = base + t * stride + c;
    switch (vec) {
      case 0: return to_f(r[off]);
      case 1: return to_f(k[off]);
      case 2: return w[off];
      default: return to_f(v[off]);
    }
  };

  float next = load(0);
  int par = 0;
  for (int64_t t = 0; t < T_; ++t) {
    const float cur = next;
    if (t + 1 < T_) next = load(t + 1);
    sm[par][vec][c] = vec == 2 ? __expf(cur) : cur;
    __syncthreads();
    const float vi = sm[par][3][i];
    float acc = 0.f;
#pragma unroll
    for (int q = 0; q < R; ++q) {
      const int j = q * P + p;
      const float rj = sm[par][0][j], kj = sm[par][1][j], ej = sm[par][2][j];
      acc = fmaf(rj, fmaf(uu[q] * kj, vi, S[q]), acc);
      S[q] = fmaf(ej, S[q], kj * vi);
    }
    // The P lanes of a column are adjacent (P divides 32), so two xor-shuffles sum them.
    acc += __shfl_xor_sync(0xffffffffu, acc, 1);
    acc += __shfl_xor_sync(0xffffffffu, acc, 2);
    if (p == 0) y[base + t * stride + i] = from_f<T>(acc);
    par ^= 1;
  }

  float* dst = sT + bh * NN;
#pragma unroll
  for (int q = 0; q < R; ++q) dst[(q * P + p) * N + i] = S[q];
}

}  // namespace
}  // namespace rwkv_vision
