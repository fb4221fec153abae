// CPU kernels of the WKV7 recurrence (the RWKV-7 generalised delta rule).
//
// One task per (sequence, head), spread over torch's intra-op thread pool; a sequence is a batch row,
// or one of the cu_seqlens segments of the single row (its own initial and final state). The state is
// a row-major n x n block S[j][i] (key channel j, value channel i), so every inner loop runs over
// contiguous value channels and vectorises. A step is two sweeps over S: sa = a^T S first (the
// low-rank term needs the whole old state), then S <- diag(e) S + b sa^T + k v^T and y += r[j] S[j, :].
//
// Backward, with G = dL/dS_t (the state after step t) walking time backwards:
//   G += r dy^T;  dk = G v;  db = G sa;  dw = e * rowsum(G . S_{t-1});  dv = G^T k;  dsa = G^T b;
//   da = S_{t-1} dsa;  dr = e * (S_{t-1} dy) + b (sa . dy) + k (v . dy)   (S_t dy, without S_t);
//   G <- diag(e) G + a dsa^T  (= dL/dS_{t-1}).
// It needs S_{t-1} at every step. The recurrence is not run in reverse (that divides by the decay,
// which may be 0 in float32, and by I + b a^T terms that need not be invertible): a first sweep keeps
// the state every C steps (C = ceil(sqrt(length))), then chunk by chunk from the end the chunk's
// states (and its sa vectors) are rebuilt and walked backwards. Memory per task: (length / C + C)
// states of n * n accumulation floats, i.e. about 2 sqrt(length) states (64 at length 1024).
#include "wkv7.h"

#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace rwkv_vision {
namespace {

// The hot loops are compiled for several x86 levels and picked at load time (as in wkv6_cpu.cpp).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RWKV7_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define RWKV7_INLINE inline __attribute__((always_inline))
#else
#define RWKV7_MULTIVERSION
#define RWKV7_INLINE inline
#endif

template <typename T, typename F>
RWKV7_INLINE void load_row(const T* src, F* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<F>(src[i]);
}

// exp over a row. A libm call per element would cost about as much as a step's n^2 multiply-adds at
// n = 64; this vectorises instead: exp(x) = 2^m p(f), x = m ln2 + f, |f| <= ln2 / 2, p the degree-7
// Taylor polynomial (relative error below 1e-6 over the range). x < -87 (w = -inf included) gives exactly 0, whose
// true value is below float's normal range; w <= 0, so the clamp at 88 only keeps NaN-free bits.
RWKV7_INLINE void exp_row(const float* __restrict src, float* __restrict dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float x = src[i] < -87.0f ? -87.0f : (src[i] > 88.0f ? 88.0f : src[i]);
    // Round to nearest through an int conversion (vectorises; this file is compiled with
    // -fassociative-math, which would fold away the 1.5 * 2^23 rounding trick).
    const float mx = x * 1.44269504088896341f;
    const float m = static_cast<float>(static_cast<int32_t>(mx < 0.0f ? mx - 0.5f : mx + 0.5f));
    const float f = (x - m * 0.693145751953125f) - m * 1.428606765330187045e-06f;
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
    dst[i] = src[i] < -87.0f ? 0.0f : p * scale;
  }
}

RWKV7_INLINE void exp_row(const double* __restrict src, double* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = std::exp(src[i]);  // exp(-inf) = 0: a decay of 0 is valid
}

// The per-step vectors of one (sequence, head) at one time step, converted to F.
template <typename F>
struct StepVectors {
  F *r, *e, *k, *v, *a, *b;
  explicit StepVectors(F* buf, int64_t n)
      : r(buf), e(buf + n), k(buf + 2 * n), v(buf + 3 * n), a(buf + 4 * n), b(buf + 5 * n) {}
};

// sa = a^T S, then S <- diag(e) S + b sa^T + k v^T. NC: the head size when known at compile time
// (loops unroll), or 0.
template <typename F, int NC>
RWKV7_INLINE void advance(F* __restrict S, F* __restrict sa, const F* __restrict e,
                          const F* __restrict k, const F* __restrict v, const F* __restrict a,
                          const F* __restrict b, int64_t n) {
  const int64_t N = NC > 0 ? NC : n;
  std::fill(sa, sa + N, F(0));
  for (int64_t j = 0; j < N; ++j) {
    const F* __restrict Sj = S + j * N;
    const F aj = a[j];
#pragma omp simd
    for (int64_t i = 0; i < N; ++i) sa[i] += aj * Sj[i];
  }
  for (int64_t j = 0; j < N; ++j) {
    F* __restrict Sj = S + j * N;
    const F ej = e[j], bj = b[j], kj = k[j];
#pragma omp simd
    for (int64_t i = 0; i < N; ++i) Sj[i] = ej * Sj[i] + bj * sa[i] + kj * v[i];
  }
}

// The same update, also reading out y = S_t^T r.
template <typename F, int NC>
RWKV7_INLINE void forward_step(F* __restrict S, F* __restrict sa, F* __restrict y,
                               const F* __restrict r, const F* __restrict e,
                               const F* __restrict k, const F* __restrict v,
                               const F* __restrict a, const F* __restrict b, int64_t n) {
  const int64_t N = NC > 0 ? NC : n;
  std::fill(sa, sa + N, F(0));
  std::fill(y, y + N, F(0));
  for (int64_t j = 0; j < N; ++j) {
    const F* __restrict Sj = S + j * N;
    const F aj = a[j];
#pragma omp simd
    for (int64_t i = 0; i < N; ++i) sa[i] += aj * Sj[i];
  }
  for (int64_t j = 0; j < N; ++j) {
    F* __restrict Sj = S + j * N;
    const F ej = e[j], bj = b[j], kj = k[j], rj = r[j];
#pragma omp simd
    for (int64_t i = 0; i < N; ++i) {
      const F s = ej * Sj[i] + bj * sa[i] + kj * v[i];
      Sj[i] = s;
      y[i] += rj * s;
    }
  }
}

// One step backwards (see the file's header). S is S_{t-1}, sa = a^T S_{t-1}; G holds dL/dS_t
// without y_t's part and leaves holding dL/dS_{t-1}. dsa is scratch; outputs go to the g* rows.
template <typename F, int NC>
RWKV7_INLINE void backward_step(const F* __restrict S, const F* __restrict sa, F* __restrict G,
                                F* __restrict dsa, const F* __restrict dy, const StepVectors<F>& x,
                                F* __restrict gr, F* __restrict gw, F* __restrict gk,
                                F* __restrict gv, F* __restrict ga, F* __restrict gb, int64_t n) {
  const int64_t N = NC > 0 ? NC : n;
  const F* __restrict v = x.v;
  F v_dy = 0, sa_dy = 0;
#pragma omp simd reduction(+ : v_dy, sa_dy)
  for (int64_t i = 0; i < N; ++i) {
    v_dy += v[i] * dy[i];
    sa_dy += sa[i] * dy[i];
  }
  std::fill(gv, gv + N, F(0));
  std::fill(dsa, dsa + N, F(0));
  for (int64_t j = 0; j < N; ++j) {
    F* __restrict Gj = G + j * N;
    const F* __restrict Sj = S + j * N;
    const F rj = x.r[j], kj = x.k[j], bj = x.b[j], ej = x.e[j];
    F acc_k = 0, acc_b = 0, acc_e = 0, acc_r = 0;
#pragma omp simd reduction(+ : acc_k, acc_b, acc_e, acc_r)
    for (int64_t i = 0; i < N; ++i) {
      const F g = Gj[i] + rj * dy[i];
      const F s = Sj[i];
      Gj[i] = g;
      acc_k += g * v[i];
      acc_b += g * sa[i];
      acc_e += g * s;
      acc_r += dy[i] * s;
      gv[i] += g * kj;
      dsa[i] += g * bj;
    }
    gk[j] = acc_k;
    gb[j] = acc_b;
    gw[j] = ej * acc_e;
    gr[j] = ej * acc_r + bj * sa_dy + kj * v_dy;
  }
  for (int64_t j = 0; j < N; ++j) {
    F* __restrict Gj = G + j * N;
    const F* __restrict Sj = S + j * N;
    const F aj = x.a[j], ej = x.e[j];
    F acc_a = 0;
#pragma omp simd reduction(+ : acc_a)
    for (int64_t i = 0; i < N; ++i) {
      acc_a += Sj[i] * dsa[i];
      Gj[i] = ej * Gj[i] + aj * dsa[i];
    }
    ga[j] = acc_a;
  }
}

// Where a task's sequence lies: batch row `row`, steps [t0, t1) of that row.
struct Span {
  int64_t row, t0, t1;
};

Span span_of(const Wkv7Dims& d, const int64_t* cu, int64_t s) {
  return d.packed ? Span{0, cu[s], cu[s + 1]} : Span{s, 0, d.T};
}

template <typename T, typename F>
struct Inputs {
  const T *r, *k, *v, *a, *b;
  const F* w;
  // Loads step t of (row, h) into x; returns the element offset of (row, t, h, 0).
  int64_t load(const Wkv7Dims& d, int64_t row, int64_t t, int64_t h, const StepVectors<F>& x,
               bool with_r) const {
    const int64_t off = ((row * d.T + t) * d.H + h) * d.N;
    if (with_r) load_row(r + off, x.r, d.N);
    exp_row(w + off, x.e, d.N);
    load_row(k + off, x.k, d.N);
    load_row(v + off, x.v, d.N);
    load_row(a + off, x.a, d.N);
    load_row(b + off, x.b, d.N);
    return off;
  }
};

template <typename T, typename F, int NC>
RWKV7_MULTIVERSION void forward_task(const Wkv7Dims& d, const int64_t* cu, int64_t sh,
                                     const Inputs<T, F>& in, const F* s0, T* y, F* sT) {
  const int64_t N = NC > 0 ? NC : d.N, NN = N * N, s = sh / d.H, h = sh % d.H;
  const Span sp = span_of(d, cu, s);
  std::vector<F> buf(8 * N);
  const StepVectors<F> x(buf.data(), N);
  F *sa = buf.data() + 6 * N, *yy = sa + N;
  F* S = sT + sh * NN;
  std::memcpy(S, s0 + sh * NN, sizeof(F) * NN);
  for (int64_t t = sp.t0; t < sp.t1; ++t) {
    const int64_t off = in.load(d, sp.row, t, h, x, true);
    forward_step<F, NC>(S, sa, yy, x.r, x.e, x.k, x.v, x.a, x.b, N);
    for (int64_t i = 0; i < N; ++i) y[off + i] = static_cast<T>(yy[i]);
  }
}

template <typename T, typename F>
struct Grads {
  T *dr, *dk, *dv, *da, *db;
  F *dw, *ds0;
};

template <typename T, typename F, int NC>
RWKV7_MULTIVERSION void backward_task(const Wkv7Dims& d, const int64_t* cu, int64_t sh,
                                      const Inputs<T, F>& in, const F* s0, const T* dy,
                                      const F* dsT, const Grads<T, F>& out) {
  const int64_t N = NC > 0 ? NC : d.N, NN = N * N, s = sh / d.H, h = sh % d.H;
  const Span sp = span_of(d, cu, s);
  const int64_t len = sp.t1 - sp.t0;
  F* G = out.ds0 + sh * NN;  // dL/dS after the step being walked; ends as dL/d(initial_state)
  std::memcpy(G, dsT + sh * NN, sizeof(F) * NN);
  if (len == 0) return;
  const int64_t C = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(std::sqrt(double(len)))));
  const int64_t n_chunks = (len + C - 1) / C;
  std::vector<F> ckpt(n_chunks * NN), states(C * NN), sas(C * N), buf(15 * N);
  const StepVectors<F> x(buf.data(), N);
  F *gy = buf.data() + 6 * N, *dsa = gy + N, *gr = dsa + N, *gw = gr + N, *gk = gw + N, *gv = gk + N,
    *ga = gv + N, *gb = ga + N, *sa = gb + N;

  // Sweep 1: the state before every C-th step.
  std::memcpy(ckpt.data(), s0 + sh * NN, sizeof(F) * NN);
  {
    std::vector<F> S(s0 + sh * NN, s0 + (sh + 1) * NN);
    for (int64_t m = 0; m < (n_chunks - 1) * C; ++m) {
      in.load(d, sp.row, sp.t0 + m, h, x, false);
      advance<F, NC>(S.data(), sa, x.e, x.k, x.v, x.a, x.b, N);
      if ((m + 1) % C == 0) std::memcpy(ckpt.data() + ((m + 1) / C) * NN, S.data(), sizeof(F) * NN);
    }
  }

  // Sweep 2, chunk by chunk from the end: rebuild the chunk's states and sa, then walk it backwards.
  for (int64_t c = n_chunks - 1; c >= 0; --c) {
    const int64_t m0 = c * C, m1 = std::min(len, m0 + C);
    std::memcpy(states.data(), ckpt.data() + c * NN, sizeof(F) * NN);
    for (int64_t m = m0; m < m1; ++m) {
      in.load(d, sp.row, sp.t0 + m, h, x, false);
      F* cur = states.data() + (m - m0) * NN;
      if (m + 1 < m1) {
        std::memcpy(cur + NN, cur, sizeof(F) * NN);
        advance<F, NC>(cur + NN, sas.data() + (m - m0) * N, x.e, x.k, x.v, x.a, x.b, N);
      } else {  // the last step of the chunk: only its sa is needed
        F* sam = sas.data() + (m - m0) * N;
        std::fill(sam, sam + N, F(0));
        for (int64_t j = 0; j < N; ++j)
          for (int64_t i = 0; i < N; ++i) sam[i] += x.a[j] * cur[j * N + i];
      }
    }
    for (int64_t m = m1 - 1; m >= m0; --m) {
      const int64_t off = in.load(d, sp.row, sp.t0 + m, h, x, true);
      load_row(dy + off, gy, N);
      backward_step<F, NC>(states.data() + (m - m0) * NN, sas.data() + (m - m0) * N, G, dsa, gy, x,
                           gr, gw, gk, gv, ga, gb, N);
      for (int64_t i = 0; i < N; ++i) {
        out.dr[off + i] = static_cast<T>(gr[i]);
        out.dk[off + i] = static_cast<T>(gk[i]);
        out.dv[off + i] = static_cast<T>(gv[i]);
        out.da[off + i] = static_cast<T>(ga[i]);
        out.db[off + i] = static_cast<T>(gb[i]);
        out.dw[off + i] = gw[i];
      }
    }
  }
}

template <typename T>
const T* cptr(const Tensor& x) { return reinterpret_cast<const T*>(x.const_data_ptr()); }
template <typename T>
T* mptr(const Tensor& x) { return reinterpret_cast<T*>(x.mutable_data_ptr()); }

const int64_t* cu_ptr(const Wkv7Dims& d, const Tensor& cu_seqlens) {
  return d.packed ? cptr<int64_t>(cu_seqlens) : nullptr;
}

template <typename T, typename F>
Inputs<T, F> inputs_of(const Tensor& r, const Tensor& w, const Tensor& k, const Tensor& v,
                       const Tensor& a, const Tensor& b) {
  return Inputs<T, F>{cptr<T>(r), cptr<T>(k), cptr<T>(v), cptr<T>(a), cptr<T>(b), cptr<F>(w)};
}

// Steps a packed layout leaves to no sequence do not exist (cu_seqlens covers [0, t)), so every
// element of y and of the gradients is written by exactly one task.
template <typename T, typename F>
std::tuple<Tensor, Tensor> forward_impl(const Wkv7Dims& d, const Tensor& r, const Tensor& w,
                                        const Tensor& k, const Tensor& v, const Tensor& a,
                                        const Tensor& b, const Tensor& s0, const Tensor& cu_seqlens) {
  Tensor y = torch::stable::new_empty(r, {d.B, d.T, d.H, d.N});
  Tensor sT = torch::stable::new_empty(s0, {d.S, d.H, d.N, d.N});
  const Inputs<T, F> in = inputs_of<T, F>(r, w, k, v, a, b);
  const int64_t* cu = cu_ptr(d, cu_seqlens);
  const F* ps0 = cptr<F>(s0);
  T* py = mptr<T>(y);
  F* psT = mptr<F>(sT);
  auto task = d.N == 32   ? &forward_task<T, F, 32>
              : d.N == 64  ? &forward_task<T, F, 64>
              : d.N == 128 ? &forward_task<T, F, 128>
                           : &forward_task<T, F, 0>;
  torch::stable::parallel_for(0, d.S * d.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t sh = begin; sh < end; ++sh) task(d, cu, sh, in, ps0, py, psT);
  });
  return {y, sT};
}

template <typename T, typename F>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_impl(
    const Wkv7Dims& d, const Tensor& r, const Tensor& w, const Tensor& k, const Tensor& v,
    const Tensor& a, const Tensor& b, const Tensor& s0, const Tensor& cu_seqlens, const Tensor& dy,
    const Tensor& dsT) {
  auto like_r = [&] { return torch::stable::new_empty(r, {d.B, d.T, d.H, d.N}); };
  Tensor dr = like_r(), dk = like_r(), dv = like_r(), da = like_r(), db = like_r();
  Tensor dw = torch::stable::new_empty(w, {d.B, d.T, d.H, d.N});
  Tensor ds0 = torch::stable::new_empty(s0, {d.S, d.H, d.N, d.N});
  const Inputs<T, F> in = inputs_of<T, F>(r, w, k, v, a, b);
  const Grads<T, F> out{mptr<T>(dr), mptr<T>(dk), mptr<T>(dv), mptr<T>(da),
                        mptr<T>(db), mptr<F>(dw), mptr<F>(ds0)};
  const int64_t* cu = cu_ptr(d, cu_seqlens);
  const F *ps0 = cptr<F>(s0), *pdsT = cptr<F>(dsT);
  const T* pdy = cptr<T>(dy);
  auto task = d.N == 32   ? &backward_task<T, F, 32>
              : d.N == 64  ? &backward_task<T, F, 64>
              : d.N == 128 ? &backward_task<T, F, 128>
                           : &backward_task<T, F, 0>;
  torch::stable::parallel_for(0, d.S * d.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t sh = begin; sh < end; ++sh) task(d, cu, sh, in, ps0, pdy, pdsT, out);
  });
  return {dr, dw, dk, dv, da, db, ds0};
}

void check_cpu7(const char* what, const Tensor& r) {
  STD_TORCH_CHECK(r.is_cpu(), what, ": the CPU kernel got tensors on another device");
}

}  // namespace

std::tuple<Tensor, Tensor> wkv7_forward_cpu(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a,
                                            Tensor b, Tensor s0, Tensor cu_seqlens) {
  const char* what = "rwkv_vision::wkv7_forward";
  check_cpu7(what, r);
  const Wkv7Dims d = check_wkv7_inputs(what, r, w, k, v, a, b, s0, cu_seqlens);
  switch (r.scalar_type()) {
    case ScalarType::Float: return forward_impl<float, float>(d, r, w, k, v, a, b, s0, cu_seqlens);
    case ScalarType::Double: return forward_impl<double, double>(d, r, w, k, v, a, b, s0, cu_seqlens);
    case ScalarType::BFloat16:
      return forward_impl<c10::BFloat16, float>(d, r, w, k, v, a, b, s0, cu_seqlens);
    case ScalarType::Half: return forward_impl<c10::Half, float>(d, r, w, k, v, a, b, s0, cu_seqlens);
    default: STD_TORCH_CHECK(false, what, ": unsupported dtype");
  }
  return {};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> wkv7_backward_cpu(
    Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor s0, Tensor cu_seqlens,
    Tensor dy, Tensor dsT) {
  const char* what = "rwkv_vision::wkv7_backward";
  check_cpu7(what, r);
  const Wkv7Dims d = check_wkv7_inputs(what, r, w, k, v, a, b, s0, cu_seqlens);
  check_wkv7_cotangents(what, d, r, dy, dsT);
  switch (r.scalar_type()) {
    case ScalarType::Float:
      return backward_impl<float, float>(d, r, w, k, v, a, b, s0, cu_seqlens, dy, dsT);
    case ScalarType::Double:
      return backward_impl<double, double>(d, r, w, k, v, a, b, s0, cu_seqlens, dy, dsT);
    case ScalarType::BFloat16:
      return backward_impl<c10::BFloat16, float>(d, r, w, k, v, a, b, s0, cu_seqlens, dy, dsT);
    case ScalarType::Half:
      return backward_impl<c10::Half, float>(d, r, w, k, v, a, b, s0, cu_seqlens, dy, dsT);
    default: STD_TORCH_CHECK(false, what, ": unsupported dtype");
  }
  return {};
}

}  // namespace rwkv_vision
