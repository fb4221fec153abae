// Shared declarations of the WKV7 op family (the RWKV-7 generalised delta rule): checks and entry points.
//
// Per sequence and head, with the state S[j, i] (j key channel, i value channel):
//   S_t[j, i] = exp(w_t[j]) S_{t-1}[j, i] + b_t[j] sum_j' a_t[j'] S_{t-1}[j', i] + k_t[j] v_t[i]
//   y_t[i]    = sum_j r_t[j] S_t[j, i]                          (read after the update)
//
// Layout (letters as everywhere in rwkv_vision: b batch, t time, h heads, n head size):
//   r, w, k, v, a, b, dy: [b, t, h, n], contiguous
//   s0, sT, dsT, ds0:     [s, h, n, n], state[s, h, j, i]; s = b, or the number of packed sequences
//   cu_seqlens:           int64 [s + 1] offsets along t (b must be 1), or an empty tensor: not packed
// Dtypes: r, k, v, a, b, dy (and y, dr, dk, dv, da, db) share one dtype X in {float32, bfloat16,
// float16, float64}; w and every state (and their gradients) are the accumulation dtype F: float64
// when X is float64, float32 otherwise. ops/wkv7.py casts to this contract before calling.
#pragma once

#include "wkv6.h"  // Tensor, ScalarType, acc_type

#include <cstdint>
#include <tuple>

namespace rwkv_vision {

struct Wkv7Dims {
  int64_t B, T, H, N;
  int64_t S;    // sequences: B, or len(cu_seqlens) - 1 when packed
  bool packed;  // cu_seqlens given
};

// Validates the whole contract above (on the CPU also the values of cu_seqlens); returns the
// dimensions. `what` names the calling op.
Wkv7Dims check_wkv7_inputs(const char* what, const Tensor& r, const Tensor& w, const Tensor& k,
                           const Tensor& v, const Tensor& a, const Tensor& b, const Tensor& s0,
                           const Tensor& cu_seqlens);
// dy [b, t, h, n] of dtype X and dsT [s, h, n, n] of dtype F, for the backward.
void check_wkv7_cotangents(const char* what, const Wkv7Dims& d, const Tensor& r, const Tensor& dy,
                           const Tensor& dsT);

// The one-token step (decoding): r, k, v, a, b [b, h, n] of dtype X, w [b, h, n] of dtype F, state
// [b, h, n, n] of dtype F updated in place; returns y [b, h, n] of dtype X.
Wkv7Dims check_wkv7_step_inputs(const char* what, const Tensor& r, const Tensor& w, const Tensor& k,
                                const Tensor& v, const Tensor& a, const Tensor& b,
                                const Tensor& state);

std::tuple<Tensor, Tensor> wkv7_forward_cpu(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a,
                                            Tensor b, Tensor s0, Tensor cu_seqlens);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> wkv7_backward_cpu(
    Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor s0, Tensor cu_seqlens,
    Tensor dy, Tensor dsT);
Tensor wkv7_step_cpu(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor state);

#ifdef RWKV_VISION_WITH_CUDA
std::tuple<Tensor, Tensor> wkv7_forward_cuda(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a,
                                             Tensor b, Tensor s0, Tensor cu_seqlens);
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> wkv7_backward_cuda(
    Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor s0, Tensor cu_seqlens,
    Tensor dy, Tensor dsT);
Tensor wkv7_step_cuda(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor state);
#endif

}  // namespace rwkv_vision
