// Shared declarations of the WKV6 op family: shape checks and the per-device entry points.
//
// Layout (letters as everywhere in rwkv_vision: b batch, t time, h heads, n head size):
//   r, k, v, w, dy:   [b, t, h, n], contiguous
//   u:                [h, n]
//   s0, sT, dsT, ds0: [b, h, n, n], state[b, h, j, i] with j the key channel, i the value channel
// Dtypes: r, k, v, dy (and y, dr, dk, dv) share one dtype T in {float32, bfloat16, float16, float64};
// w, u and every state tensor (and their gradients) are the accumulation dtype F: float64 when T is
// float64, float32 otherwise. The Python layer casts to this contract before calling.
#pragma once

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace rwkv_vision {

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

struct Wkv6Dims {
  int64_t B, T, H, N;
};

// Validates the whole contract above; returns the dimensions. `what` names the calling op. `states`
// is the number of state rows: b, or with cu_seqlens the number of packed sequences (-1: b).
Wkv6Dims check_wkv6_inputs(const char* what, const Tensor& r, const Tensor& k, const Tensor& v,
                           const Tensor& w, const Tensor& u, const Tensor& s0, int64_t states = -1);

// Packed sequences (ops/cu_seqlens.py): cu_seqlens, when given, is int64 [N + 1], contiguous, on r's
// device, with b == 1 and kernel 0; on the CPU its values are checked too (0 ... t, non-decreasing;
// on CUDA the Python layer has checked them). Returns the number of state rows: N, or b without it.
// Every state tensor is then [N, h, n, n] and task i walks steps cu[i] .. cu[i + 1] of row 0.
int64_t check_cu_seqlens(const char* what, const std::optional<Tensor>& cu_seqlens, const Tensor& r,
                         int64_t kernel, bool on_cuda);

void check_same_layout(const char* what, const char* name, const Tensor& x, const Tensor& like);
void check_state(const char* what, const char* name, const Tensor& s, const Wkv6Dims& d,
                 ScalarType acc);
ScalarType acc_type(ScalarType t);

// The one-token step (decoding): r, k, v [b, h, n] of dtype T, w [b, h, n] and u [h, n] of dtype F,
// state [b, h, n, n] of dtype F updated in place; returns y [b, h, n] of dtype T.
Wkv6Dims check_wkv6_step_inputs(const char* what, const Tensor& r, const Tensor& k, const Tensor& v,
                                const Tensor& w, const Tensor& u, const Tensor& state);

// The `kernel` argument of wkv6_forward and wkv6_backward: which implementation runs. Python's
// ops/wkv6.py maps its backend names onto these codes (docs/ops.md, "Choosing a kernel").
//   kDefault      the device's kernel: the CPU kernel, or on CUDA the recurrent forward and backward
//   kCudaSplit    CUDA only: the split forward (four threads per state column); the recurrent backward
//   kCudaChunked  CUDA only: the chunked tensor-core forward and backward
// kCudaSplit and kCudaChunked are compiled only with RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS.
enum class Wkv6Kernel : int64_t { kDefault = 0, kCudaSplit = 1, kCudaChunked = 2 };

// Validates `kernel` and `segments` (0: chosen for the device; >= 1 forces the number of time
// segments of the chunked CUDA kernels, the only ones that take it) for tensors on the CPU or on CUDA.
Wkv6Kernel check_kernel_choice(const char* what, int64_t kernel, int64_t segments, bool on_cuda);

std::tuple<Tensor, Tensor> wkv6_forward_cpu(Tensor r, Tensor k, Tensor v, Tensor w, Tensor u,
                                            Tensor s0, int64_t kernel, int64_t segments,
                                            std::optional<Tensor> cu_seqlens);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> wkv6_backward_cpu(
    Tensor r, Tensor k, Tensor v, Tensor w, Tensor u, Tensor s0, Tensor dy, Tensor dsT,
    int64_t kernel, int64_t segments, std::optional<Tensor> cu_seqlens);
Tensor wkv6_step_cpu(Tensor r, Tensor k, Tensor v, Tensor w, Tensor u, Tensor state);

#ifdef RWKV_VISION_WITH_CUDA
std::tuple<Tensor, Tensor> wkv6_forward_cuda(Tensor r, Tensor k, Tensor v, Tensor w, Tensor u,
                                             Tensor s0, int64_t kernel, int64_t segments,
                                             std::optional<Tensor> cu_seqlens);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> wkv6_backward_cuda(
    Tensor r, Tensor k, Tensor v, Tensor w, Tensor u, Tensor s0, Tensor dy, Tensor dsT,
    int64_t kernel, int64_t segments, std::optional<Tensor> cu_seqlens);
Tensor wkv6_step_cuda(Tensor r, Tensor k, Tensor v, Tensor w, Tensor u, Tensor state);
#endif

}  // namespace rwkv_vision
