// Op schemas of the WKV7 ops (a fragment of the rwkv_vision namespace) and the checks every backend shares.
#include "wkv7.h"

namespace rwkv_vision {

namespace {
const char* dtype_name7(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::BFloat16: return "bfloat16";
    case ScalarType::Half: return "float16";
    case ScalarType::Long: return "int64";
    default: return "an unsupported dtype";
  }
}

bool same_device(const Tensor& x, const Tensor& like) {
  return x.get_device_index() == like.get_device_index() && x.is_cuda() == like.is_cuda();
}

// x is [b, t, h, n] (or [b, h, n] for the step) like r, contiguous, on r's device, of dtype `want`.
void check_like_r(const char* what, const char* name, const Tensor& x, const Tensor& r, ScalarType want) {
  STD_TORCH_CHECK(x.dim() == r.dim(), what, ": ", name, " must have the shape of r (", r.dim(),
                  " dims), got ", x.dim(), " dims");
  for (int64_t d = 0; d < r.dim(); ++d) {
    STD_TORCH_CHECK(x.size(d) == r.size(d), what, ": ", name, " must have the shape of r; dim ", d,
                    " is ", x.size(d), ", expected ", r.size(d));
  }
  STD_TORCH_CHECK(x.is_contiguous(), what, ": ", name, " must be contiguous");
  STD_TORCH_CHECK(same_device(x, r), what, ": ", name, " is on another device than r");
  STD_TORCH_CHECK(x.scalar_type() == want, what, ": ", name, " must be ", dtype_name7(want), ", got ",
                  dtype_name7(x.scalar_type()));
}

void check_state7(const char* what, const char* name, const Tensor& s, int64_t S, int64_t H, int64_t N,
                  ScalarType acc, const Tensor& r) {
  STD_TORCH_CHECK(s.dim() == 4 && s.size(0) == S && s.size(1) == H && s.size(2) == N && s.size(3) == N,
                  what, ": ", name, " must be [s, h, n, n] = [", S, ", ", H, ", ", N, ", ", N, "]");
  STD_TORCH_CHECK(s.scalar_type() == acc, what, ": ", name, " must be ", dtype_name7(acc), ", got ",
                  dtype_name7(s.scalar_type()));
  STD_TORCH_CHECK(s.is_contiguous(), what, ": ", name, " must be contiguous");
  STD_TORCH_CHECK(same_device(s, r), what, ": ", name, " is on another device than r");
}

ScalarType check_r7(const char* what, const Tensor& r, int64_t dims, const char* layout) {
  STD_TORCH_CHECK(r.dim() == dims, what, ": r must be ", layout, ", got ", r.dim(), " dims");
  const ScalarType X = r.scalar_type();
  STD_TORCH_CHECK(X == ScalarType::Float || X == ScalarType::Double || X == ScalarType::BFloat16 ||
                      X == ScalarType::Half,
                  what, ": r must be float32, float64, bfloat16 or float16");
  STD_TORCH_CHECK(r.is_contiguous(), what, ": r must be contiguous");
  return X;
}
}  // namespace

Wkv7Dims check_wkv7_inputs(const char* what, const Tensor& r, const Tensor& w, const Tensor& k,
                           const Tensor& v, const Tensor& a, const Tensor& b, const Tensor& s0,
                           const Tensor& cu_seqlens) {
  const ScalarType X = check_r7(what, r, 4, "[b, t, h, n]");
  const ScalarType F = acc_type(X);
  check_like_r(what, "w", w, r, F);
  check_like_r(what, "k", k, r, X);
  check_like_r(what, "v", v, r, X);
  check_like_r(what, "a", a, r, X);
  check_like_r(what, "b", b, r, X);
  Wkv7Dims d{r.size(0), r.size(1), r.size(2), r.size(3), r.size(0), false};
  STD_TORCH_CHECK(d.N >= 1, what, ": the head size n must be at least 1");
  STD_TORCH_CHECK(cu_seqlens.dim() == 1, what, ": cu_seqlens must be 1-D (an empty tensor: not packed)");
  STD_TORCH_CHECK(cu_seqlens.scalar_type() == ScalarType::Long, what, ": cu_seqlens must be int64, got ",
                  dtype_name7(cu_seqlens.scalar_type()));
  if (cu_seqlens.numel() > 0) {
    STD_TORCH_CHECK(same_device(cu_seqlens, r), what, ": cu_seqlens is on another device than r");
    STD_TORCH_CHECK(cu_seqlens.is_contiguous(), what, ": cu_seqlens must be contiguous");
    STD_TORCH_CHECK(d.B == 1, what, ": with cu_seqlens the batch size b must be 1, got ", d.B);
    d.S = cu_seqlens.numel() - 1;
    d.packed = true;
    STD_TORCH_CHECK(d.S >= 1, what, ": cu_seqlens must hold at least two offsets");
    if (cu_seqlens.is_cpu()) {  // on CUDA reading them would synchronise: ops/wkv7.py checks them
      const int64_t* cu = reinterpret_cast<const int64_t*>(cu_seqlens.const_data_ptr());
      STD_TORCH_CHECK(cu[0] == 0 && cu[d.S] == d.T, what, ": cu_seqlens must start at 0 and end at t = ",
                      d.T, ", got ", cu[0], " and ", cu[d.S]);
      for (int64_t s = 0; s < d.S; ++s)
        STD_TORCH_CHECK(cu[s] <= cu[s + 1], what, ": cu_seqlens must be non-decreasing (offset ", s + 1,
                        " is ", cu[s + 1], " < ", cu[s], ")");
    }
  }
  check_state7(what, "initial_state", s0, d.S, d.H, d.N, F, r);
  return d;
}

void check_wkv7_cotangents(const char* what, const Wkv7Dims& d, const Tensor& r, const Tensor& dy,
                           const Tensor& dsT) {
  check_like_r(what, "dy", dy, r, r.scalar_type());
  check_state7(what, "dsT", dsT, d.S, d.H, d.N, acc_type(r.scalar_type()), r);
}

Wkv7Dims check_wkv7_step_inputs(const char* what, const Tensor& r, const Tensor& w, const Tensor& k,
                                const Tensor& v, const Tensor& a, const Tensor& b,
                                const Tensor& state) {
  const ScalarType X = check_r7(what, r, 3, "[b, h, n]");
  const ScalarType F = acc_type(X);
  check_like_r(what, "w", w, r, F);
  check_like_r(what, "k", k, r, X);
  check_like_r(what, "v", v, r, X);
  check_like_r(what, "a", a, r, X);
  check_like_r(what, "b", b, r, X);
  Wkv7Dims d{r.size(0), 1, r.size(1), r.size(2), r.size(0), false};
  STD_TORCH_CHECK(d.N >= 1, what, ": the head size n must be at least 1");
  check_state7(what, "state", state, d.B, d.H, d.N, F, r);
  return d;
}

}  // namespace rwkv_vision

STABLE_TORCH_LIBRARY_FRAGMENT(rwkv_vision, m) {
  // y, final_state = wkv7_forward(r, w, k, v, a, b, initial_state, cu_seqlens); cu_seqlens is int64
  // [s + 1] or empty (not packed).
  m.def(
      "wkv7_forward(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor s0, "
      "Tensor cu_seqlens) -> (Tensor, Tensor)");
  // dr, dw, dk, dv, da, db, ds0 = wkv7_backward(r, w, k, v, a, b, s0, cu_seqlens, dy, d_final_state).
  m.def(
      "wkv7_backward(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor s0, "
      "Tensor cu_seqlens, Tensor dy, Tensor dsT) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // y = wkv7_step(r, w, k, v, a, b, state): one token, the state advanced in place (decoding only).
  m.def("wkv7_step(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor(a!) state) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(rwkv_vision, CPU, m) {
  m.impl("wkv7_forward", TORCH_BOX(&rwkv_vision::wkv7_forward_cpu));
  m.impl("wkv7_backward", TORCH_BOX(&rwkv_vision::wkv7_backward_cpu));
  m.impl("wkv7_step", TORCH_BOX(&rwkv_vision::wkv7_step_cpu));
}

#ifdef RWKV_VISION_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(rwkv_vision, CUDA, m) {
  m.impl("wkv7_forward", TORCH_BOX(&rwkv_vision::wkv7_forward_cuda));
  m.impl("wkv7_backward", TORCH_BOX(&rwkv_vision::wkv7_backward_cuda));
  m.impl("wkv7_step", TORCH_BOX(&rwkv_vision::wkv7_step_cuda));
}
#endif
