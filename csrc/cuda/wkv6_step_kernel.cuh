// Device code of the one-token step kernel; wkv6_step_cuda.cu launches it, and its header explains
// it. Kept apart so that tests/cuda_emu can compile this code for the CPU.
#pragma once

#include "cuda/device_common.cuh"

#include <cstdint>

namespace rwkv_vision {
namespace {


template <typename T, int N>
__global__ void __launch_bounds__(N)
    wkv6_step_kernel(int H, const T* __restrict__ r, const T* __restrict__ k,
                     const T* __restrict__ v, const float* __restrict__ w,
                     const float* __restrict__ u, float* __restrict__ state, T* __restrict__ y) {
  constexpr int kWarps = (N + 31) / 32;
  __shared__ float r_s[N], k_s[N], e_s[N];
  __shared__ float warp_sum[kWarps];
  const int bh = blockIdx.x;
  const int i = threadIdx.x;
  const int64_t off = static_cast<int64_t>(bh) * N;
  const float ri = to_f(r[off + i]);
  const float ki = to_f(k[off + i]);
  const float vi = to_f(v[off + i]);
  r_s[i] = ri;
  k_s[i] = ki;
  e_s[i] = __expf(w[off + i]);
  float part = ri * u[(bh % H) * N + i] * ki;
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) part += __shfl_xor_sync(0xffffffffu, part, m);
  if ((i & 31) == 0) warp_sum[i >> 5] = part;
  __syncthreads();
  float bonus = 0.f;
#pragma unroll
  for (int q = 0; q < kWarps; ++q) bonus += warp_sum[q];

  float* S = state + static_cast<int64_t>(bh) * N * N + i;
  float acc = bonus * vi;
#pragma unroll 8
  for (int j = 0; j < N; ++j) {
    const float s = S[j * N];
    acc = fmaf(r_s[j], s, acc);
    S[j * N] = fmaf(s, e_s[j], k_s[j] * vi);
  }
  y[off + i] = from_f<T>(acc);
}

}  // namespace
}  // namespace rwkv_vision
