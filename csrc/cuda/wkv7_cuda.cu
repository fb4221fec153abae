// CUDA kernels of the WKV7 recurrence (the RWKV-7 generalised delta rule): forward and backward.
//
// Per sequence and head, S_t = diag(e_t) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T and y_t = S_t^T r_t,
// with S[j, i] (key channel j, value channel i). One block per (sequence, head), one thread per channel.
//
// Forward: the columns of S are independent (column i needs only v[i] and the broadcast vectors r, e,
// k, a, b), so thread i keeps column i in registers; sa[i] = a . S[:, i] and y[i] = r . S[:, i] are sums
// over its own registers. One __syncthreads per step.
//
// Backward: with G = dL/dS_t, walking time backwards,
//   G += r dy^T;  dv = G^T k;  dsa = G^T b;  G <- diag(e) G + a dsa^T
// evolves column by column, and
//   dr = e (S_{t-1} dy) + b (sa . dy) + k (v . dy);  dk = G v;  db = G sa;  dw = e rowsum(G . S_{t-1});
//   da = S_{t-1} dsa
// are sums along rows. Like the WKV6 backward this is split into a column-owned kernel (dv, ds0, and the
// vectors sa_t and dsa_t, written to scratch) and a row-owned kernel (the rest), neither needing a
// cross-thread reduction: given sa_t and dsa_t, row j of S and of G evolves on its own. The official
// RWKV-7 kernel instead keeps transposed copies of state and gradient in every thread and recovers
// S_{t-1} by dividing by the decay; here S_{t-1} is recomputed from checkpoints instead (the decay may be
// exactly 0 in float32, w = -inf, and any decay is allowed): the column kernel keeps the state before
// every C-th step of each sequence, and the row kernel rebuilds one chunk of C states at a time into
// scratch and walks it backwards.
//
// Scratch (float32): sa and dsa [b, t, h, n]; checkpoint slots [(t / C + s + 1) or (b ceil(t / C))][h][n][n]
// (a sequence starting at offset t0 takes slots t0 / C + s onwards: disjoint for packed sequences); and
// per block C + 1 n x n blocks (a chunk's states and the parked G). C = ceil(sqrt(t / s)) (the mean
// sequence length) keeps checkpoints + chunk states near their minimum, about 2 sqrt(t s) states per
// head. Everything accumulates in float32 (float64 is left to the CPU kernel); expf becomes the hardware
// approximation under --use_fast_math. All launches go on torch's current stream.
#include "cuda/cuda_common.cuh"
#include "cuda/wkv7_kernels.cuh"
#include "wkv7.h"

#include <algorithm>
#include <cmath>

namespace rwkv_vision {
namespace {

void check_supported7(const char* what, const Wkv7Dims& d, ScalarType t) {
  STD_TORCH_CHECK(t != ScalarType::Double, what,
                  ": float64 is not supported by the CUDA kernels; use float32, bfloat16 or float16 on CUDA "
                  "(float64 runs on the CPU kernel)");
  STD_TORCH_CHECK(d.N == 32 || d.N == 64 || d.N == 128, what,
                  ": the CUDA kernels support head size n = 32, 64 or 128, got n = ", d.N);
  STD_TORCH_CHECK(d.S * d.H <= int64_t(INT_MAX), what, ": s * h = ", d.S * d.H,
                  " exceeds the CUDA grid limit of ", INT_MAX, " blocks");
}

const int64_t* cu_device_ptr(const Wkv7Dims& d, const Tensor& cu_seqlens) {
  return d.packed ? cptr<int64_t>(cu_seqlens) : nullptr;
}

template <typename T, int N>
void forward_launch(const Wkv7Dims& d, const int64_t* cu, const Tensor& r, const Tensor& w, const Tensor& k,
                    const Tensor& v, const Tensor& a, const Tensor& b, const Tensor& s0, Tensor& y, Tensor& sT,
                    cudaStream_t stream) {
  wkv7_forward_kernel<T, N><<<static_cast<unsigned>(d.S * d.H), N, 0, stream>>>(
      d.T, d.H, cu, cptr<T>(r), cptr<float>(w), cptr<T>(k), cptr<T>(v), cptr<T>(a), cptr<T>(b),
      cptr<float>(s0), mptr<T>(y), mptr<float>(sT));
}

template <typename T>
std::tuple<Tensor, Tensor> forward_impl(const char* what, const Wkv7Dims& d, const Tensor& r, const Tensor& w,
                                        const Tensor& k, const Tensor& v, const Tensor& a, const Tensor& b,
                                        const Tensor& s0, const Tensor& cu_seqlens) {
  Tensor y = torch::stable::new_empty(r, {d.B, d.T, d.H, d.N});
  Tensor sT = torch::stable::new_empty(s0, {d.S, d.H, d.N, d.N});
  if (d.S * d.H == 0) return {y, sT};
  const cudaStream_t stream = current_stream(r.get_device_index());
  const int64_t* cu = cu_device_ptr(d, cu_seqlens);
  switch (d.N) {
    case 32: forward_launch<T, 32>(d, cu, r, w, k, v, a, b, s0, y, sT, stream); break;
    case 64: forward_launch<T, 64>(d, cu, r, w, k, v, a, b, s0, y, sT, stream); break;
    case 128: forward_launch<T, 128>(d, cu, r, w, k, v, a, b, s0, y, sT, stream); break;
    default: STD_TORCH_CHECK(false, what, ": unsupported head size n = ", d.N);
  }
  check_launch(what, "wkv7_forward_kernel");
  return {y, sT};
}

template <typename T, int N>
void backward_launch(const char* what, const Wkv7Dims& d, const Wkv7BackwardPlan& p, const int64_t* cu,
                     const Tensor& r, const Tensor& w, const Tensor& k, const Tensor& v, const Tensor& a,
                     const Tensor& b, const Tensor& s0, const Tensor& dy, const Tensor& dsT, Tensor& dr,
                     Tensor& dw, Tensor& dk, Tensor& dv, Tensor& da, Tensor& db, Tensor& ds0, float* scratch,
                     cudaStream_t stream) {
  float* sa = scratch;
  float* dsa = sa + p.seq_numel;
  float* ckpt = dsa + p.seq_numel;
  float* blocks = ckpt + p.ckpt_numel;
  const unsigned grid = static_cast<unsigned>(d.S * d.H);
  wkv7_backward_cols_kernel<T, N><<<grid, N, 0, stream>>>(
      d.T, d.H, p.C, cu, cptr<T>(r), cptr<float>(w), cptr<T>(k), cptr<T>(v), cptr<T>(a), cptr<T>(b),
      cptr<float>(s0), cptr<T>(dy), cptr<float>(dsT), mptr<T>(dv), mptr<float>(ds0), sa, dsa, ckpt);
  check_launch(what, "wkv7_backward_cols_kernel");
  wkv7_backward_rows_kernel<T, N><<<grid, N, 0, stream>>>(
      d.T, d.H, p.C, cu, cptr<T>(r), cptr<float>(w), cptr<T>(k), cptr<T>(v), cptr<T>(a), cptr<T>(b),
      cptr<T>(dy), cptr<float>(dsT), sa, dsa, ckpt, blocks, mptr<T>(dr), mptr<float>(dw), mptr<T>(dk),
      mptr<T>(da), mptr<T>(db));
  check_launch(what, "wkv7_backward_rows_kernel");
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_impl(
    const char* what, const Wkv7Dims& d, const Tensor& r, const Tensor& w, const Tensor& k, const Tensor& v,
    const Tensor& a, const Tensor& b, const Tensor& s0, const Tensor& cu_seqlens, const Tensor& dy,
    const Tensor& dsT) {
  auto like_r = [&] { return torch::stable::new_empty(r, {d.B, d.T, d.H, d.N}); };
  Tensor dr = like_r(), dk = like_r(), dv = like_r(), da = like_r(), db = like_r();
  Tensor dw = torch::stable::new_empty(w, {d.B, d.T, d.H, d.N});
  Tensor ds0 = torch::stable::new_empty(s0, {d.S, d.H, d.N, d.N});
  if (d.S * d.H == 0) return {dr, dw, dk, dv, da, db, ds0};
  const Wkv7BackwardPlan p = wkv7_plan_backward(d.B, d.T, d.H, d.N, d.S, d.packed);
  Tensor scratch = torch::stable::new_empty(
      s0, {2 * p.seq_numel + p.ckpt_numel + p.block_numel}, ScalarType::Float);
  const cudaStream_t stream = current_stream(r.get_device_index());
  const int64_t* cu = cu_device_ptr(d, cu_seqlens);
  float* ps = mptr<float>(scratch);
#define RWKV7_BACKWARD(NN)                                                                                 \
  backward_launch<T, NN>(what, d, p, cu, r, w, k, v, a, b, s0, dy, dsT, dr, dw, dk, dv, da, db, ds0, ps, \
                         stream)
  switch (d.N) {
    case 32: RWKV7_BACKWARD(32); break;
    case 64: RWKV7_BACKWARD(64); break;
    case 128: RWKV7_BACKWARD(128); break;
    default: STD_TORCH_CHECK(false, what, ": unsupported head size n = ", d.N);
  }
#undef RWKV7_BACKWARD
  return {dr, dw, dk, dv, da, db, ds0};
}

}  // namespace

std::tuple<Tensor, Tensor> wkv7_forward_cuda(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b,
                                             Tensor s0, Tensor cu_seqlens) {
  const char* what = "rwkv_vision::wkv7_forward";
  const Wkv7Dims d = check_wkv7_inputs(what, r, w, k, v, a, b, s0, cu_seqlens);
  // check_wkv7_inputs has put every tensor on r's device (cu_seqlens when packed).
  STD_TORCH_CHECK(r.is_cuda(), what, ": the CUDA kernel got r on another device");
  check_supported7(what, d, r.scalar_type());
  torch::stable::accelerator::DeviceGuard guard(r.get_device_index());
  switch (r.scalar_type()) {
    case ScalarType::Float: return forward_impl<float>(what, d, r, w, k, v, a, b, s0, cu_seqlens);
    case ScalarType::BFloat16: return forward_impl<__nv_bfloat16>(what, d, r, w, k, v, a, b, s0, cu_seqlens);
    case ScalarType::Half: return forward_impl<__half>(what, d, r, w, k, v, a, b, s0, cu_seqlens);
    default: STD_TORCH_CHECK(false, what, ": unsupported dtype on CUDA");
  }
  return {};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> wkv7_backward_cuda(
    Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor s0, Tensor cu_seqlens, Tensor dy,
    Tensor dsT) {
  const char* what = "rwkv_vision::wkv7_backward";
  const Wkv7Dims d = check_wkv7_inputs(what, r, w, k, v, a, b, s0, cu_seqlens);
  check_wkv7_cotangents(what, d, r, dy, dsT);
  // check_wkv7_inputs has put every tensor on r's device (cu_seqlens when packed).
  STD_TORCH_CHECK(r.is_cuda(), what, ": the CUDA kernel got r on another device");
  check_supported7(what, d, r.scalar_type());
  torch::stable::accelerator::DeviceGuard guard(r.get_device_index());
  switch (r.scalar_type()) {
    case ScalarType::Float:
      return backward_impl<float>(what, d, r, w, k, v, a, b, s0, cu_seqlens, dy, dsT);
    case ScalarType::BFloat16:
      return backward_impl<__nv_bfloat16>(what, d, r, w, k, v, a, b, s0, cu_seqlens, dy, dsT);
    case ScalarType::Half:
      return backward_impl<__half>(what, d, r, w, k, v, a, b, s0, cu_seqlens, dy, dsT);
    default: STD_TORCH_CHECK(false, what, ": unsupported dtype on CUDA");
  }
  return {};
}

}  // namespace rwkv_vision
