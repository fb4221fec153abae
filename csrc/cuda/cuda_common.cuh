// What the CUDA kernels of rwkv_vision share: the device helpers of device_common.cuh, and the host-side
// checks, stream lookup and launch checks. Included by each .cu file; everything here is inline or a template.
#pragma once

#ifndef USE_CUDA
#define USE_CUDA 1  // exposes the CUDA part of the AOTI shim (aoti_torch_get_current_cuda_stream)
#endif

#include "wkv6.h"
#include "cuda/device_common.cuh"

#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/headeronly/util/shim_utils.h>

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <initializer_list>
#include <utility>

namespace rwkv_vision {

// ---------------------------------------------------------------------------------------------
// Host side.

template <typename T>
const T* cptr(const Tensor& x) { return reinterpret_cast<const T*>(x.const_data_ptr()); }
template <typename T>
T* mptr(const Tensor& x) { return reinterpret_cast<T*>(x.mutable_data_ptr()); }

inline void check_on_device(const char* what, const char* name, const Tensor& x, const Tensor& r) {
  STD_TORCH_CHECK(x.is_cuda(), what, ": ", name, " must be a CUDA tensor");
  STD_TORCH_CHECK(x.get_device_index() == r.get_device_index(), what, ": ", name, " is on cuda:",
                  x.get_device_index(), " but r is on cuda:", r.get_device_index());
}

// Every named tensor must sit on r's CUDA device.
inline void check_all_on_device(const char* what, const Tensor& r,
                                std::initializer_list<std::pair<const char*, const Tensor*>> named) {
  STD_TORCH_CHECK(r.is_cuda(), what, ": the CUDA kernel got r on another device");
  for (const auto& [name, x] : named) check_on_device(what, name, *x, r);
}

inline void check_supported(const char* what, const Wkv6Dims& d, ScalarType t) {
  STD_TORCH_CHECK(t != ScalarType::Double, what,
                  ": float64 is not supported by the CUDA kernels; use float32, bfloat16 or "
                  "float16 on CUDA (float64 runs on the CPU kernels)");
  STD_TORCH_CHECK(d.N == 32 || d.N == 64 || d.N == 128, what,
                  ": the CUDA kernels support head size n = 32, 64 or 128, got n = ", d.N);
  STD_TORCH_CHECK(d.B * d.H <= int64_t(INT_MAX), what, ": b * h = ", d.B * d.H,
                  " exceeds the CUDA grid limit of ", INT_MAX, " blocks");
}

inline cudaStream_t current_stream(int32_t device_index) {
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(device_index, &stream));
  return static_cast<cudaStream_t>(stream);
}

inline void check_launch(const char* what, const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  STD_TORCH_CHECK(err == cudaSuccess, what, ": launching the CUDA kernel ", kernel, " failed: ",
                  cudaGetErrorString(err));
}

#ifdef RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS
// The other kernel variants (Wkv6Kernel in wkv6.h), built only with
// RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS: the split forward (wkv6_forward_split.cu) and the chunked
// forward and backward (wkv6_chunked_cuda.cu). `segments` is the op's argument: 0 lets the host choose.
template <typename T>
void wkv6_forward_split_launch(const char* what, const Wkv6Dims& d, const Tensor& r,
                               const Tensor& k, const Tensor& v, const Tensor& w, const Tensor& u,
                               const Tensor& s0, Tensor& y, Tensor& sT, cudaStream_t stream);
template <typename T>
void wkv6_forward_chunked_launch(const char* what, const Wkv6Dims& d, const Tensor& r,
                                 const Tensor& k, const Tensor& v, const Tensor& w, const Tensor& u,
                                 const Tensor& s0, Tensor& y, Tensor& sT, int64_t segments,
                                 cudaStream_t stream);
template <typename T>
void wkv6_backward_chunked_launch(const char* what, const Wkv6Dims& d, const Tensor& r,
                                  const Tensor& k, const Tensor& v, const Tensor& w,
                                  const Tensor& u, const Tensor& s0, const Tensor& dy,
                                  const Tensor& dsT, Tensor& dr, Tensor& dk, Tensor& dv, Tensor& dw,
                                  Tensor& du, Tensor& ds0, int64_t segments, cudaStream_t stream);
#endif

}  // namespace rwkv_vision
