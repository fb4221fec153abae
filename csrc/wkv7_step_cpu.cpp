// CPU kernel of the one-token WKV7 step used while decoding.
//
// Per (batch, head) the n x n state is read twice and written once: the low-rank term needs
// sa = a^T S of the whole old state before any row may change; the second sweep then decays each row,
// adds b[j] sa + k[j] v and reads it out into y in the same pass.
#include "wkv7.h"

#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <cmath>
#include <vector>

namespace rwkv_vision {
namespace {

template <typename T, typename F>
struct StepArgs {
  const T *r, *k, *v, *a, *b;
  const F* w;
  F* state;
  T* y;
};

template <typename T, typename F>
void step_task(int64_t bh, int64_t N, const StepArgs<T, F>& p) {
  const int64_t off = bh * N;
  std::vector<F> buf(3 * N);
  F *v = buf.data(), *sa = v + N, *y = sa + N;
  for (int64_t i = 0; i < N; ++i) {
    v[i] = static_cast<F>(p.v[off + i]);
    sa[i] = 0;
    y[i] = 0;
  }
  F* S = p.state + bh * N * N;
  for (int64_t j = 0; j < N; ++j) {
    const F aj = static_cast<F>(p.a[off + j]);
    const F* row = S + j * N;
#pragma omp simd
    for (int64_t i = 0; i < N; ++i) sa[i] += aj * row[i];
  }
  for (int64_t j = 0; j < N; ++j) {
    const F rj = static_cast<F>(p.r[off + j]), kj = static_cast<F>(p.k[off + j]);
    const F bj = static_cast<F>(p.b[off + j]), ej = std::exp(p.w[off + j]);
    F* row = S + j * N;
#pragma omp simd
    for (int64_t i = 0; i < N; ++i) {
      const F s = ej * row[i] + bj * sa[i] + kj * v[i];
      row[i] = s;
      y[i] += rj * s;
    }
  }
  for (int64_t i = 0; i < N; ++i) p.y[off + i] = static_cast<T>(y[i]);
}

template <typename T, typename F>
Tensor step_impl(const Wkv7Dims& d, const Tensor& r, const Tensor& w, const Tensor& k,
                 const Tensor& v, const Tensor& a, const Tensor& b, const Tensor& state) {
  Tensor y = torch::stable::new_empty(r, {d.B, d.H, d.N});
  auto c = [](const Tensor& x) { return reinterpret_cast<const T*>(x.const_data_ptr()); };
  const StepArgs<T, F> p{c(r), c(k), c(v), c(a), c(b), reinterpret_cast<const F*>(w.const_data_ptr()),
                         reinterpret_cast<F*>(state.mutable_data_ptr()),
                         reinterpret_cast<T*>(y.mutable_data_ptr())};
  // A head's step is ~3 n^2 multiply-adds: parallel only when there are many heads.
  const int64_t grain = d.N * d.N >= 16384 ? 1 : 16;
  torch::stable::parallel_for(0, d.B * d.H, grain, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) step_task<T, F>(bh, d.N, p);
  });
  return y;
}

}  // namespace

Tensor wkv7_step_cpu(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor state) {
  const char* what = "rwkv_vision::wkv7_step";
  STD_TORCH_CHECK(r.is_cpu(), what, ": the CPU kernel got tensors on another device");
  const Wkv7Dims d = check_wkv7_step_inputs(what, r, w, k, v, a, b, state);
  switch (r.scalar_type()) {
    case ScalarType::Float: return step_impl<float, float>(d, r, w, k, v, a, b, state);
    case ScalarType::Double: return step_impl<double, double>(d, r, w, k, v, a, b, state);
    case ScalarType::BFloat16: return step_impl<c10::BFloat16, float>(d, r, w, k, v, a, b, state);
    case ScalarType::Half: return step_impl<c10::Half, float>(d, r, w, k, v, a, b, state);
    default: STD_TORCH_CHECK(false, what, ": unsupported dtype");
  }
  return {};
}

}  // namespace rwkv_vision
