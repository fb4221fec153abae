// CUDA kernel of the one-token WKV7 step used while decoding (wkv7_kernels.cuh, wkv7_step_kernel).
//
// One block per (batch, head), one thread per value channel i: thread i reads column i of the state
// into registers (the low-rank term sa = a . S[:, i] needs the whole old column), then writes the
// updated column back while reading out y[i], one pass of reads and one of writes over the state, the
// least traffic a step that rewrites every element can make. All launches go on torch's current stream.
#include "cuda/cuda_common.cuh"
#include "cuda/wkv7_kernels.cuh"
#include "wkv7.h"

namespace rwkv_vision {
namespace {

template <typename T>
Tensor step_impl(const char* what, const Wkv7Dims& d, const Tensor& r, const Tensor& w, const Tensor& k,
                 const Tensor& v, const Tensor& a, const Tensor& b, Tensor& state) {
  Tensor y = torch::stable::new_empty(r, {d.B, d.H, d.N});
  if (d.B * d.H == 0) return y;
  const cudaStream_t stream = current_stream(r.get_device_index());
  const unsigned blocks = static_cast<unsigned>(d.B * d.H);
#define RWKV7_STEP_LAUNCH(NN)                                                                             \
  wkv7_step_kernel<T, NN><<<blocks, NN, 0, stream>>>(cptr<T>(r), cptr<float>(w), cptr<T>(k), cptr<T>(v), \
                                                     cptr<T>(a), cptr<T>(b), mptr<float>(state), mptr<T>(y))
  switch (d.N) {
    case 32: RWKV7_STEP_LAUNCH(32); break;
    case 64: RWKV7_STEP_LAUNCH(64); break;
    case 128: RWKV7_STEP_LAUNCH(128); break;
    default: STD_TORCH_CHECK(false, what, ": the CUDA kernels support head size n = 32, 64 or 128, got n = ", d.N);
  }
#undef RWKV7_STEP_LAUNCH
  check_launch(what, "wkv7_step_kernel");
  return y;
}

}  // namespace

Tensor wkv7_step_cuda(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor state) {
  const char* what = "rwkv_vision::wkv7_step";
  const Wkv7Dims d = check_wkv7_step_inputs(what, r, w, k, v, a, b, state);
  STD_TORCH_CHECK(r.is_cuda(), what, ": the CUDA kernel got r on another device");
  STD_TORCH_CHECK(r.scalar_type() != ScalarType::Double, what,
                  ": float64 is not supported by the CUDA kernels (float64 runs on the CPU kernel)");
  STD_TORCH_CHECK(d.B * d.H <= int64_t(INT_MAX), what, ": b * h exceeds the CUDA grid limit");
  torch::stable::accelerator::DeviceGuard guard(r.get_device_index());
  switch (r.scalar_type()) {
    case ScalarType::Float: return step_impl<float>(what, d, r, w, k, v, a, b, state);
    case ScalarType::BFloat16: return step_impl<__nv_bfloat16>(what, d, r, w, k, v, a, b, state);
    case ScalarType::Half: return step_impl<__half>(what, d, r, w, k, v, a, b, state);
    default: STD_TORCH_CHECK(false, what, ": unsupported dtype on CUDA");
  }
  return {};
}

}  // namespace rwkv_vision
