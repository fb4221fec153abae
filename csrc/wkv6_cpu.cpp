// CPU kernels of the WKV6 recurrence.
//
// One task per (batch, head), spread over torch's intra-op thread pool. The state is a row-major
// n x n block S[j][i] (key channel j, value channel i) so every inner loop runs over contiguous value
// channels and vectorises. The backward pass needs the state *before* each step while walking time
// backwards; the recurrence cannot be run in reverse (dividing by a decay that may underflow), so it
// is recomputed from checkpoints kept every kChunk steps: two forward sweeps plus one backward sweep,
// with memory t / kChunk states per task instead of t. With cu_seqlens (packed sequences, b == 1) a
// task is one (sequence, head) and walks only that sequence's steps, from and to its own state row.
#include "wkv6.h"

#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace rwkv_vision {
namespace {

constexpr int64_t kChunk = 32;

// The steps one task walks: steps [t0, t0 + len) of batch row b, head h, starting from and ending in
// state row `state` (= b without packing; the sequence's index with cu_seqlens, where b = 0).
struct Span {
  int64_t b, h, t0, len, state;
};

// Task i (0 <= i < states * H) of a call: without cu_seqlens one per (batch row, head), with it one
// per (packed sequence, head).
Span task_span(const Wkv6Dims& d, const int64_t* cu, int64_t i) {
  const int64_t s = i / d.H, h = i % d.H;
  if (cu == nullptr) return {s, h, 0, d.T, s};
  return {0, h, cu[s], cu[s + 1] - cu[s], s};
}


// The hot loops are compiled for several x86 levels and picked at load time, so one binary is both
// portable and uses AVX2/AVX-512 where the machine has them.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RWKV_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define RWKV_INLINE inline __attribute__((always_inline))
#else
#define RWKV_MULTIVERSION
#define RWKV_INLINE inline
#endif

template <typename T, typename F>
RWKV_INLINE void load_row(const T* src, F* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<F>(src[i]);
}

// exp over a row. libm's expf is a call per element, which would dominate the forward; this
// version vectorises: exp(x) = 2^m * p(f) with x = m ln2 + f, |f| <= ln2/2, p a degree-7 Taylor
// polynomial (relative error below 2e-7 over that range). Inputs below -87 give 0 (the true value is
// under float's normal range); the decay argument w is <= 0, so overflow needs no care beyond a clamp.
RWKV_INLINE void exp_row(const float* __restrict x, float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float xi = x[i] < -87.0f ? -87.0f : (x[i] > 88.0f ? 88.0f : x[i]);
    // Round to nearest by the 1.5 * 2^23 trick: vectorises everywhere, unlike nearbyint on SSE2.
    const float m = (xi * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float f = (xi - m * 0.693145751953125f) - m * 1.428606765330187045e-06f;
    float p = 1.0f / 5040.0f;
    p = p * f + 1.0f / 720.0f;
    p = p * f + 1.0f / 120.0f;
    p = p * f + 1.0f / 24.0f;
    p = p * f + 1.0f / 6.0f;
    p = p * f + 0.5f;
    p = p * f + 1.0f;
    p = p * f + 1.0f;
    const int32_t bits = (static_cast<int32_t>(m) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    y[i] = x[i] < -87.0f ? 0.0f : p * scale;
  }
}

RWKV_INLINE void exp_row(const double* __restrict x, double* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
}

// NC is the head size when known at compile time (32, 64, 128: loops unroll and the per-step vectors
// stay in registers), or 0 for any other head size.

// S <- diag(e) S + k v^T
template <typename F, int NC>
RWKV_INLINE void advance_state(F* __restrict S, const F* __restrict k, const F* __restrict v,
                          const F* __restrict e, int64_t n) {
  const int64_t N = NC > 0 ? NC : n;
#pragma GCC unroll 2
  for (int64_t j = 0; j < N; ++j) {
    F* Sj = S + j * N;
    const F ej = e[j], kj = k[j];
#pragma omp simd
    for (int64_t i = 0; i < N; ++i) Sj[i] = ej * Sj[i] + kj * v[i];
  }
}

// One output row, then the state update: y = (r.(u*k)) v + r^T S;  S <- diag(e) S + k v^T
template <typename F, int NC>
RWKV_INLINE void forward_step(F* __restrict S, const F* __restrict r, const F* __restrict k,
                         const F* __restrict v, const F* __restrict e, const F* __restrict u,
                         F* __restrict y, int64_t n) {
  const int64_t N = NC > 0 ? NC : n;
  F bonus = 0;
#pragma omp simd reduction(+ : bonus)
  for (int64_t j = 0; j < N; ++j) bonus += r[j] * u[j] * k[j];
#pragma omp simd
  for (int64_t i = 0; i < N; ++i) y[i] = bonus * v[i];
  for (int64_t j = 0; j < N; ++j) {
    F* __restrict Sj = S + j * N;
    const F rj = r[j], kj = k[j], ej = e[j];
#pragma omp simd
    for (int64_t i = 0; i < N; ++i) {
      const F s = Sj[i];
      y[i] += rj * s;
      Sj[i] = ej * s + kj * v[i];
    }
  }
}

// The same step for a compile-time head size, written with GCC vector types so that y and v live in
// registers for the whole sweep over key channels (the generic loop reloads y for every j). A vector
// is 64 bytes; each target clone lowers it to its own widest registers.
template <typename F, int NC>
RWKV_INLINE void forward_step_vec(F* __restrict S, const F* __restrict r, const F* __restrict k,
                             const F* __restrict v, const F* __restrict e, const F* __restrict u,
                             F* __restrict y) {
  typedef F vec __attribute__((vector_size(64), aligned(alignof(F))));
  constexpr int L = 64 / sizeof(F), V = NC / L;
  static_assert(NC % L == 0, "head size must fill whole vectors");
  F bonus = 0;
#pragma omp simd reduction(+ : bonus)
  for (int j = 0; j < NC; ++j) bonus += r[j] * u[j] * k[j];
  vec vv[V], yv[V];
  for (int q = 0; q < V; ++q) {
    std::memcpy(&vv[q], v + q * L, sizeof(vec));
    yv[q] = bonus * vv[q];
  }
  // Unrolling all n key channels would not fit the instruction cache; a few at a time is enough.
#pragma GCC unroll 2
  for (int j = 0; j < NC; ++j) {
    vec* Sj = reinterpret_cast<vec*>(S + j * NC);
    const F rj = r[j], kj = k[j], ej = e[j];
    for (int q = 0; q < V; ++q) {
      const vec s = Sj[q];
      yv[q] += rj * s;
      Sj[q] = ej * s + kj * vv[q];
    }
  }
  for (int q = 0; q < V; ++q) std::memcpy(y + q * L, &yv[q], sizeof(vec));
}

template <typename T, typename F, int NC>
RWKV_MULTIVERSION void forward_task(const Wkv6Dims& d, const Span& sp, const T* r, const T* k,
                                    const T* v, const F* w, const F* u, const F* s0, T* y, F* sT) {
  const int64_t N = NC > 0 ? NC : d.N, H = d.H, b = sp.b, h = sp.h, sh = sp.state * H + h;
  std::vector<F> buf(6 * N);
  F *rr = buf.data(), *kk = rr + N, *vv = kk + N, *ee = vv + N, *yy = ee + N, *uu = yy + N;
  load_row(u + h * N, uu, N);
  F* S = sT + sh * N * N;
  std::memcpy(S, s0 + sh * N * N, sizeof(F) * N * N);
  for (int64_t t = sp.t0; t < sp.t0 + sp.len; ++t) {
    const int64_t off = ((b * d.T + t) * H + h) * N;
    load_row(r + off, rr, N);
    load_row(k + off, kk, N);
    load_row(v + off, vv, N);
    exp_row(w + off, ee, N);
    if constexpr (NC > 0 && NC * sizeof(F) % 64 == 0)
      forward_step_vec<F, NC>(S, rr, kk, vv, ee, uu, yy);
    else
      forward_step<F, NC>(S, rr, kk, vv, ee, uu, yy, N);
    for (int64_t i = 0; i < N; ++i) y[off + i] = static_cast<T>(yy[i]);
  }
}

// One step backwards. S is the state before the step, dS holds dL/d(state after the step) and leaves
// holding dL/d(state before it).
template <typename F, int NC>
RWKV_INLINE void backward_step(const F* __restrict S, F* __restrict dS, const F* __restrict r,
                          const F* __restrict k, const F* __restrict v, const F* __restrict e,
                          const F* __restrict u, const F* __restrict gy, F* __restrict gr,
                          F* __restrict gk, F* __restrict gv, F* __restrict gw,
                          F* __restrict gu, int64_t n) {
  const int64_t N = NC > 0 ? NC : n;
  F dot_gy_v = 0, sum_kru = 0;
#pragma omp simd reduction(+ : dot_gy_v, sum_kru)
  for (int64_t i = 0; i < N; ++i) {
    dot_gy_v += gy[i] * v[i];
    sum_kru += k[i] * r[i] * u[i];
  }
#pragma omp simd
  for (int64_t i = 0; i < N; ++i) gv[i] = gy[i] * sum_kru;
#pragma GCC unroll 2
  for (int64_t j = 0; j < N; ++j) {
    const F* __restrict Sj = S + j * N;
    F* __restrict dSj = dS + j * N;
    const F rj = r[j], kj = k[j], ej = e[j];
    F acc_r = 0, acc_k = 0, acc_w = 0;
#pragma omp simd reduction(+ : acc_r, acc_k, acc_w)
    for (int64_t i = 0; i < N; ++i) {
      const F g = dSj[i], s = Sj[i];
      acc_r += gy[i] * s;
      acc_k += v[i] * g;
      acc_w += s * g;
      gv[i] += kj * g;
      dSj[i] = ej * g + rj * gy[i];
    }
    gr[j] = u[j] * kj * dot_gy_v + acc_r;
    gk[j] = rj * u[j] * dot_gy_v + acc_k;
    gw[j] = ej * acc_w;
    gu[j] += rj * kj * dot_gy_v;
  }
}

template <typename T, typename F, int NC>
RWKV_MULTIVERSION void backward_task(const Wkv6Dims& d, const Span& sp, const T* r, const T* k,
                                     const T* v, const F* w, const F* u, const F* s0, const T* dy,
                                     const F* dsT, T* dr, T* dk, T* dv, F* dw, F* du_part,
                                     F* ds0) {
  const int64_t N = NC > 0 ? NC : d.N, H = d.H, T_ = d.T, b = sp.b, h = sp.h, NN = N * N;
  const int64_t bh = sp.state * H + h, t_first = sp.t0;
  // Chunks count from the span's first step; an empty span keeps one (empty) chunk for the checkpoint.
  const int64_t n_chunks = std::max<int64_t>(1, (sp.len + kChunk - 1) / kChunk);
  std::vector<F> ckpt(n_chunks * NN), states(kChunk * NN), buf(12 * N);
  F *rr = buf.data(), *kk = rr + N, *vv = kk + N, *ee = vv + N, *gy = ee + N, *uu = gy + N;
  F *gr = uu + N, *gk = gr + N, *gv = gk + N, *gw = gv + N, *du = gw + N;
  load_row(u + h * N, uu, N);
  std::fill(du, du + N, F(0));
  auto load_step = [&](int64_t t) {  // t counts from the span's start
    const int64_t off = ((b * T_ + t_first + t) * H + h) * N;
    load_row(k + off, kk, N);
    load_row(v + off, vv, N);
    exp_row(w + off, ee, N);
    return off;
  };

  // Sweep 1: the state before every kChunk-th step.
  std::memcpy(ckpt.data(), s0 + bh * NN, sizeof(F) * NN);
  {
    std::vector<F> S(s0 + bh * NN, s0 + (bh + 1) * NN);
    for (int64_t t = 0; t < (n_chunks - 1) * kChunk; ++t) {  // never past the span: its last chunk is not swept
      load_step(t);
      advance_state<F, NC>(S.data(), kk, vv, ee, N);
      if ((t + 1) % kChunk == 0)
        std::memcpy(ckpt.data() + ((t + 1) / kChunk) * NN, S.data(), sizeof(F) * NN);
    }
  }

  // Sweep 2, chunk by chunk from the end: rebuild the chunk's states, then walk it backwards.
  F* dS = ds0 + bh * NN;  // holds dL/dS(after step t) and ends as dL/d(initial_state)
  std::memcpy(dS, dsT + bh * NN, sizeof(F) * NN);
  for (int64_t c = n_chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, t1 = std::min(sp.len, t0 + kChunk);
    std::memcpy(states.data(), ckpt.data() + c * NN, sizeof(F) * NN);
    for (int64_t t = t0; t + 1 < t1; ++t) {
      load_step(t);
      F* next = states.data() + (t - t0 + 1) * NN;
      std::memcpy(next, next - NN, sizeof(F) * NN);
      advance_state<F, NC>(next, kk, vv, ee, N);
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t off = load_step(t);
      load_row(r + off, rr, N);
      load_row(dy + off, gy, N);
      backward_step<F, NC>(states.data() + (t - t0) * NN, dS, rr, kk, vv, ee, uu, gy, gr, gk, gv,
                           gw, du, N);
      for (int64_t i = 0; i < N; ++i) {
        dr[off + i] = static_cast<T>(gr[i]);
        dk[off + i] = static_cast<T>(gk[i]);
        dv[off + i] = static_cast<T>(gv[i]);
        dw[off + i] = gw[i];
      }
    }
  }
  std::memcpy(du_part + bh * N, du, sizeof(F) * N);
}

template <typename T>
const T* cptr(const Tensor& x) { return reinterpret_cast<const T*>(x.const_data_ptr()); }
template <typename T>
T* mptr(const Tensor& x) { return reinterpret_cast<T*>(x.mutable_data_ptr()); }

template <typename T, typename F>
std::tuple<Tensor, Tensor> forward_impl(const Wkv6Dims& d, const Tensor& r, const Tensor& k,
                                        const Tensor& v, const Tensor& w, const Tensor& u,
                                        const Tensor& s0, const int64_t* cu, int64_t states) {
  Tensor y = torch::stable::new_empty(r, {d.B, d.T, d.H, d.N});
  Tensor sT = torch::stable::new_empty(s0, {states, d.H, d.N, d.N});
  const T *pr = cptr<T>(r), *pk = cptr<T>(k), *pv = cptr<T>(v);
  const F *pw = cptr<F>(w), *pu = cptr<F>(u), *ps0 = cptr<F>(s0);
  T* py = mptr<T>(y);
  F* psT = mptr<F>(sT);
  auto task = d.N == 32   ? &forward_task<T, F, 32>
              : d.N == 64  ? &forward_task<T, F, 64>
              : d.N == 128 ? &forward_task<T, F, 128>
                           : &forward_task<T, F, 0>;
  torch::stable::parallel_for(0, states * d.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) task(d, task_span(d, cu, i), pr, pk, pv, pw, pu, ps0, py, psT);
  });
  return {y, sT};
}

template <typename T, typename F>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_impl(
    const Wkv6Dims& d, const Tensor& r, const Tensor& k, const Tensor& v, const Tensor& w,
    const Tensor& u, const Tensor& s0, const Tensor& dy, const Tensor& dsT, const int64_t* cu,
    int64_t states) {
  Tensor dr = torch::stable::new_empty(r, {d.B, d.T, d.H, d.N});
  Tensor dk = torch::stable::new_empty(r, {d.B, d.T, d.H, d.N});
  Tensor dv = torch::stable::new_empty(r, {d.B, d.T, d.H, d.N});
  Tensor dw = torch::stable::new_empty(w, {d.B, d.T, d.H, d.N});
  Tensor du = torch::stable::new_empty(u, {d.H, d.N});
  Tensor ds0 = torch::stable::new_empty(s0, {states, d.H, d.N, d.N});
  std::vector<F> du_part(states * d.H * d.N);
  const T *pr = cptr<T>(r), *pk = cptr<T>(k), *pv = cptr<T>(v), *pdy = cptr<T>(dy);
  const F *pw = cptr<F>(w), *pu = cptr<F>(u), *ps0 = cptr<F>(s0), *pdsT = cptr<F>(dsT);
  T *pdr = mptr<T>(dr), *pdk = mptr<T>(dk), *pdv = mptr<T>(dv);
  F *pdw = mptr<F>(dw), *pds0 = mptr<F>(ds0);
  auto task = d.N == 32   ? &backward_task<T, F, 32>
              : d.N == 64  ? &backward_task<T, F, 64>
              : d.N == 128 ? &backward_task<T, F, 128>
                           : &backward_task<T, F, 0>;
  torch::stable::parallel_for(0, states * d.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      task(d, task_span(d, cu, i), pr, pk, pv, pw, pu, ps0, pdy, pdsT, pdr, pdk, pdv, pdw,
           du_part.data(), pds0);
  });
  // u is shared by the whole batch: sum its per-task gradients in a fixed order (deterministic).
  F* pdu = mptr<F>(du);
  for (int64_t h = 0; h < d.H; ++h)
    for (int64_t n = 0; n < d.N; ++n) {
      F acc = 0;
      for (int64_t b = 0; b < states; ++b) acc += du_part[(b * d.H + h) * d.N + n];
      pdu[h * d.N + n] = acc;
    }
  return {dr, dk, dv, dw, du, ds0};
}

void check_cpu(const char* what, const Tensor& r) {
  STD_TORCH_CHECK(r.is_cpu(), what, ": the CPU kernel got tensors on another device");
}

}  // namespace

std::tuple<Tensor, Tensor> wkv6_forward_cpu(Tensor r, Tensor k, Tensor v, Tensor w, Tensor u,
                                            Tensor s0, int64_t kernel, int64_t segments,
                                            std::optional<Tensor> cu_seqlens) {
  const char* what = "rwkv_vision::wkv6_forward";
  check_cpu(what, r);
  check_kernel_choice(what, kernel, segments, false);
  const int64_t states = check_cu_seqlens(what, cu_seqlens, r, kernel, false);
  const Wkv6Dims d = check_wkv6_inputs(what, r, k, v, w, u, s0, states);
  const int64_t* cu = cu_seqlens.has_value() ? cptr<int64_t>(*cu_seqlens) : nullptr;
  switch (r.scalar_type()) {
    case ScalarType::Float: return forward_impl<float, float>(d, r, k, v, w, u, s0, cu, states);
    case ScalarType::Double: return forward_impl<double, double>(d, r, k, v, w, u, s0, cu, states);
    case ScalarType::BFloat16:
      return forward_impl<c10::BFloat16, float>(d, r, k, v, w, u, s0, cu, states);
    case ScalarType::Half: return forward_impl<c10::Half, float>(d, r, k, v, w, u, s0, cu, states);
    default: STD_TORCH_CHECK(false, what, ": unsupported dtype");
  }
  return {};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> wkv6_backward_cpu(
    Tensor r, Tensor k, Tensor v, Tensor w, Tensor u, Tensor s0, Tensor dy, Tensor dsT,
    int64_t kernel, int64_t segments, std::optional<Tensor> cu_seqlens) {
  const char* what = "rwkv_vision::wkv6_backward";
  check_cpu(what, r);
  check_kernel_choice(what, kernel, segments, false);
  const int64_t states = check_cu_seqlens(what, cu_seqlens, r, kernel, false);
  const Wkv6Dims d = check_wkv6_inputs(what, r, k, v, w, u, s0, states);
  check_same_layout(what, "dy", dy, r);
  STD_TORCH_CHECK(dy.scalar_type() == r.scalar_type(), what, ": dy must have the dtype of r");
  check_state(what, "dsT", dsT, Wkv6Dims{states, d.T, d.H, d.N}, acc_type(r.scalar_type()));
  const int64_t* cu = cu_seqlens.has_value() ? cptr<int64_t>(*cu_seqlens) : nullptr;
  switch (r.scalar_type()) {
    case ScalarType::Float:
      return backward_impl<float, float>(d, r, k, v, w, u, s0, dy, dsT, cu, states);
    case ScalarType::Double:
      return backward_impl<double, double>(d, r, k, v, w, u, s0, dy, dsT, cu, states);
    case ScalarType::BFloat16:
      return backward_impl<c10::BFloat16, float>(d, r, k, v, w, u, s0, dy, dsT, cu, states);
    case ScalarType::Half:
      return backward_impl<c10::Half, float>(d, r, k, v, w, u, s0, dy, dsT, cu, states);
    default: STD_TORCH_CHECK(false, what, ": unsupported dtype");
  }
  return {};
}

}  // namespace rwkv_vision
