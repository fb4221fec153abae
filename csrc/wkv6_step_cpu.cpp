// CPU kernel of the one-token WKV6 step used while decoding.
//
// Per (batch, head) the n x n state is read once and written once: while row j of S streams through,
// it contributes r[j] * S[j, :] to the output and is decayed and given k[j] * v in the same pass. The
// bonus term needs only the scalar r . (u * k), so the whole step is one sweep over S, the minimum
// memory traffic for a step that must update every element of the state.
#include "wkv6.h"

#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <cmath>
#include <vector>

namespace rwkv_vision {
namespace {

template <typename T, typename F>
void step_task(int64_t bh, int64_t H, int64_t N, const T* pr, const T* pk, const T* pv,
               const F* pw, const F* pu, F* ps, T* py) {
  const int64_t h = bh % H;
  const int64_t off = bh * N;
  std::vector<F> buf(2 * N);
  F* v = buf.data();
  F* y = v + N;
  F bonus = 0;
  for (int64_t i = 0; i < N; ++i) {
    v[i] = static_cast<F>(pv[off + i]);
    bonus += static_cast<F>(pr[off + i]) * pu[h * N + i] * static_cast<F>(pk[off + i]);
  }
  for (int64_t i = 0; i < N; ++i) y[i] = bonus * v[i];
  F* S = ps + bh * N * N;
  for (int64_t j = 0; j < N; ++j) {
    const F rj = static_cast<F>(pr[off + j]);
    const F kj = static_cast<F>(pk[off + j]);
    const F ej = std::exp(pw[off + j]);
    F* row = S + j * N;
#pragma omp simd
    for (int64_t i = 0; i < N; ++i) {
      const F s = row[i];
      y[i] += rj * s;
      row[i] = s * ej + kj * v[i];
    }
  }
  for (int64_t i = 0; i < N; ++i) py[off + i] = static_cast<T>(y[i]);
}

template <typename T, typename F>
Tensor step_impl(const Wkv6Dims& d, const Tensor& r, const Tensor& k, const Tensor& v,
                 const Tensor& w, const Tensor& u, const Tensor& state) {
  Tensor y = torch::stable::new_empty(r, {d.B, d.H, d.N});
  const T* pr = reinterpret_cast<const T*>(r.const_data_ptr());
  const T* pk = reinterpret_cast<const T*>(k.const_data_ptr());
  const T* pv = reinterpret_cast<const T*>(v.const_data_ptr());
  const F* pw = reinterpret_cast<const F*>(w.const_data_ptr());
  const F* pu = reinterpret_cast<const F*>(u.const_data_ptr());
  F* ps = reinterpret_cast<F*>(state.mutable_data_ptr());
  T* py = reinterpret_cast<T*>(y.mutable_data_ptr());
  // A head's step is ~n^2 multiply-adds (4k at n = 64): parallel only when there are many heads.
  const int64_t grain = d.N * d.N >= 16384 ? 1 : 16;
  torch::stable::parallel_for(0, d.B * d.H, grain, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) step_task<T, F>(bh, d.H, d.N, pr, pk, pv, pw, pu, ps, py);
  });
  return y;
}

}  // namespace

Tensor wkv6_step_cpu(Tensor r, Tensor k, Tensor v, Tensor w, Tensor u, Tensor state) {
  const char* what = "rwkv_vision::wkv6_step";
  STD_TORCH_CHECK(r.is_cpu(), what, ": the CPU kernel got tensors on another device");
  const Wkv6Dims d = check_wkv6_step_inputs(what, r, k, v, w, u, state);
  switch (r.scalar_type()) {
    case ScalarType::Float: return step_impl<float, float>(d, r, k, v, w, u, state);
    case ScalarType::Double: return step_impl<double, double>(d, r, k, v, w, u, state);
    case ScalarType::BFloat16: return step_impl<c10::BFloat16, float>(d, r, k, v, w, u, state);
    case ScalarType::Half: return step_impl<c10::Half, float>(d, r, k, v, w, u, state);
    default: STD_TORCH_CHECK(false, what, ": unsupported dtype");
  }
  return {};
}

}  // namespace rwkv_vision
