// What the CUDA kernels of rwkv_vision share on the device side: element conversions (T in float,
// bf16, fp16; accumulation always float32) and the block's dynamic shared memory. Host-side helpers
// are in cuda_common.cuh. tests/cuda_emu has a CPU stand-in for this file with the same names.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace rwkv_vision {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

// The dynamic shared memory of the block (the launch's third <<<>>> argument), 128-byte aligned.
__device__ __forceinline__ float* dynamic_shared_floats() {
  extern __shared__ __align__(128) float rwkv_vision_dynamic_smem[];
  return rwkv_vision_dynamic_smem;
}

}  // namespace rwkv_vision
