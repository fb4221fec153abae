// Op schemas of the rwkv_vision namespace and the checks every backend shares.
#include "wkv6.h"

#include <string>

namespace rwkv_vision {

namespace {
const char* dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::BFloat16: return "bfloat16";
    case ScalarType::Half: return "float16";
    default: return "an unsupported dtype";
  }
}
}  // namespace

ScalarType acc_type(ScalarType t) {
  return t == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

void check_same_layout(const char* what, const char* name, const Tensor& x, const Tensor& like) {
  STD_TORCH_CHECK(x.dim() == 4, what, ": ", name, " must be [b, t, h, n], got ", x.dim(), " dims");
  for (int64_t d = 0; d < 4; ++d) {
    STD_TORCH_CHECK(x.size(d) == like.size(d), what, ": ", name, " must have the shape of r; dim ",
                    d, " is ", x.size(d), ", expected ", like.size(d));
  }
  STD_TORCH_CHECK(x.is_contiguous(), what, ": ", name, " must be contiguous");
  STD_TORCH_CHECK(x.get_device_index() == like.get_device_index() && x.is_cuda() == like.is_cuda(),
                  what, ": ", name, " is on another device than r");
}

void check_state(const char* what, const char* name, const Tensor& s, const Wkv6Dims& d,
                 ScalarType acc) {
  STD_TORCH_CHECK(s.dim() == 4 && s.size(0) == d.B && s.size(1) == d.H && s.size(2) == d.N &&
                      s.size(3) == d.N,
                  what, ": ", name, " must be [b, h, n, n] = [", d.B, ", ", d.H, ", ", d.N, ", ",
                  d.N, "]");
  STD_TORCH_CHECK(s.scalar_type() == acc, what, ": ", name, " must be ", dtype_name(acc), ", got ",
                  dtype_name(s.scalar_type()));
  STD_TORCH_CHECK(s.is_contiguous(), what, ": ", name, " must be contiguous");
}

namespace {
// r's rank and dtype (one of the four supported); returns the dtype.
ScalarType check_r(const char* what, const Tensor& r, int64_t dims, const char* layout) {
  STD_TORCH_CHECK(r.dim() == dims, what, ": r must be ", layout, ", got ", r.dim(), " dims");
  const ScalarType T = r.scalar_type();
  STD_TORCH_CHECK(T == ScalarType::Float || T == ScalarType::Double ||
                      T == ScalarType::BFloat16 || T == ScalarType::Half,
                  what, ": r must be float32, float64, bfloat16 or float16");
  return T;
}
}  // namespace

Wkv6Dims check_wkv6_inputs(const char* what, const Tensor& r, const Tensor& k, const Tensor& v,
                           const Tensor& w, const Tensor& u, const Tensor& s0, int64_t states) {
  const ScalarType T = check_r(what, r, 4, "[b, t, h, n]");
  STD_TORCH_CHECK(r.is_contiguous(), what, ": r must be contiguous");
  check_same_layout(what, "k", k, r);
  check_same_layout(what, "v", v, r);
  check_same_layout(what, "w", w, r);
  STD_TORCH_CHECK(k.scalar_type() == T && v.scalar_type() == T, what,
                  ": k and v must have the dtype of r (", dtype_name(T), ")");
  const ScalarType F = acc_type(T);
  STD_TORCH_CHECK(w.scalar_type() == F, what, ": w must be ", dtype_name(F), ", got ",
                  dtype_name(w.scalar_type()));
  Wkv6Dims d{r.size(0), r.size(1), r.size(2), r.size(3)};
  STD_TORCH_CHECK(d.T >= 1, what, ": the sequence length t must be at least 1");
  STD_TORCH_CHECK(u.dim() == 2 && u.size(0) == d.H && u.size(1) == d.N, what,
                  ": u must be [h, n] = [", d.H, ", ", d.N, "]");
  STD_TORCH_CHECK(u.scalar_type() == F && u.is_contiguous(), what, ": u must be contiguous ",
                  dtype_name(F));
  check_state(what, "initial_state", s0, Wkv6Dims{states < 0 ? d.B : states, d.T, d.H, d.N}, F);
  return d;
}

int64_t check_cu_seqlens(const char* what, const std::optional<Tensor>& cu_seqlens, const Tensor& r,
                         int64_t kernel, bool on_cuda) {
  if (!cu_seqlens.has_value()) return r.size(0);
  const Tensor& cu = *cu_seqlens;
  STD_TORCH_CHECK(kernel == 0, what,
                  ": cu_seqlens is taken by kernel 0 only (ops.wkv6 runs the others per sequence), got kernel ",
                  kernel);
  STD_TORCH_CHECK(cu.scalar_type() == ScalarType::Long, what, ": cu_seqlens must be int64");
  STD_TORCH_CHECK(cu.dim() == 1 && cu.size(0) >= 2, what, ": cu_seqlens must be [N + 1] with N >= 1");
  STD_TORCH_CHECK(cu.is_contiguous(), what, ": cu_seqlens must be contiguous");
  STD_TORCH_CHECK(cu.get_device_index() == r.get_device_index() && cu.is_cuda() == r.is_cuda(), what,
                  ": cu_seqlens is on another device than r");
  STD_TORCH_CHECK(r.dim() == 4 && r.size(0) == 1, what,
                  ": with cu_seqlens the sequences are packed into one row, so b must be 1");
  if (!on_cuda) {
    const int64_t* p = reinterpret_cast<const int64_t*>(cu.const_data_ptr());
    const int64_t n = cu.size(0);
    STD_TORCH_CHECK(p[0] == 0 && p[n - 1] == r.size(1), what, ": cu_seqlens must run from 0 to t = ",
                    r.size(1), ", got ", p[0], " ... ", p[n - 1]);
    for (int64_t i = 0; i + 1 < n; ++i)
      STD_TORCH_CHECK(p[i] <= p[i + 1], what, ": cu_seqlens must be non-decreasing; entry ", i + 1,
                      " (", p[i + 1], ") is below entry ", i, " (", p[i], ")");
  }
  return cu.size(0) - 1;
}

Wkv6Dims check_wkv6_step_inputs(const char* what, const Tensor& r, const Tensor& k, const Tensor& v,
                                const Tensor& w, const Tensor& u, const Tensor& state) {
  const ScalarType T = check_r(what, r, 3, "[b, h, n]");
  const ScalarType F = acc_type(T);
  const char* names[3] = {"k", "v", "w"};
  const Tensor* xs[3] = {&k, &v, &w};
  for (int a = 0; a < 3; ++a) {
    const Tensor& x = *xs[a];
    STD_TORCH_CHECK(x.dim() == 3 && x.size(0) == r.size(0) && x.size(1) == r.size(1) &&
                        x.size(2) == r.size(2),
                    what, ": ", names[a], " must have the shape of r [b, h, n]");
    STD_TORCH_CHECK(x.is_contiguous(), what, ": ", names[a], " must be contiguous");
    STD_TORCH_CHECK(x.get_device_index() == r.get_device_index() && x.is_cuda() == r.is_cuda(),
                    what, ": ", names[a], " is on another device than r");
    const ScalarType want = a < 2 ? T : F;
    STD_TORCH_CHECK(x.scalar_type() == want, what, ": ", names[a], " must be ", dtype_name(want),
                    ", got ", dtype_name(x.scalar_type()));
  }
  STD_TORCH_CHECK(r.is_contiguous(), what, ": r must be contiguous");
  Wkv6Dims d{r.size(0), 1, r.size(1), r.size(2)};
  STD_TORCH_CHECK(u.dim() == 2 && u.size(0) == d.H && u.size(1) == d.N, what,
                  ": u must be [h, n] = [", d.H, ", ", d.N, "]");
  STD_TORCH_CHECK(u.scalar_type() == F && u.is_contiguous(), what, ": u must be contiguous ",
                  dtype_name(F));
  STD_TORCH_CHECK(u.get_device_index() == r.get_device_index() && u.is_cuda() == r.is_cuda(),
                  what, ": u is on another device than r");
  check_state(what, "state", state, d, F);
  STD_TORCH_CHECK(state.get_device_index() == r.get_device_index() && state.is_cuda() == r.is_cuda(),
                  what, ": state is on another device than r");
  return d;
}

Wkv6Kernel check_kernel_choice(const char* what, int64_t kernel, int64_t segments, bool on_cuda) {
  STD_TORCH_CHECK(kernel >= 0 && kernel <= 2, what,
                  ": kernel must be 0 (the device's kernel), 1 (CUDA split forward) or 2 (CUDA chunked "
                  "forward and backward), got ", kernel);
  STD_TORCH_CHECK(segments >= 0, what,
                  ": segments must be 0 (chosen for the device) or a positive count, got ", segments);
  const auto choice = static_cast<Wkv6Kernel>(kernel);
  STD_TORCH_CHECK(segments == 0 || choice == Wkv6Kernel::kCudaChunked, what,
                  ": segments applies only to the chunked CUDA kernels (kernel 2), got kernel ", kernel,
                  " with segments = ", segments);
  if (choice == Wkv6Kernel::kDefault) return choice;
  const char* name = choice == Wkv6Kernel::kCudaSplit ? "split" : "chunked";
#ifndef RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS
  STD_TORCH_CHECK(false, what, ": the ", name, " CUDA kernel (kernel ", kernel,
                  ") is experimental and this build does not include it; rebuild with "
                  "RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS=ON RWKV_VISION_WITH_CUDA=ON pip install "
                  "--no-build-isolation -e . (docs/ops.md)");
#endif
  STD_TORCH_CHECK(on_cuda, what, ": kernel ", kernel, " is the ", name,
                  " CUDA kernel, but the tensors are on the CPU");
  return choice;
}

}  // namespace rwkv_vision

STABLE_TORCH_LIBRARY(rwkv_vision, m) {
  // y, final_state = wkv6_forward(r, k, v, w, u, initial_state, kernel, segments, cu_seqlens); kernel
  // is a Wkv6Kernel code (wkv6.h), segments 0 or the forced segment count of the chunked CUDA kernels,
  // cu_seqlens None or the offsets of packed sequences (check_cu_seqlens in wkv6.h).
  m.def(
      "wkv6_forward(Tensor r, Tensor k, Tensor v, Tensor w, Tensor u, Tensor s0, int kernel=0, "
      "int segments=0, Tensor? cu_seqlens=None) -> (Tensor, Tensor)");
  // dr, dk, dv, dw, du, ds0 = wkv6_backward(..., dy, d_final_state, kernel, segments), with the
  // forward's kernel and segments.
  m.def(
      "wkv6_backward(Tensor r, Tensor k, Tensor v, Tensor w, Tensor u, Tensor s0, Tensor dy, "
      "Tensor dsT, int kernel=0, int segments=0, Tensor? cu_seqlens=None) -> (Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor)");
  // y = wkv6_step(r, k, v, w, u, state): one token, the state advanced in place (decoding only).
  m.def("wkv6_step(Tensor r, Tensor k, Tensor v, Tensor w, Tensor u, Tensor(a!) state) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(rwkv_vision, CPU, m) {
  m.impl("wkv6_forward", TORCH_BOX(&rwkv_vision::wkv6_forward_cpu));
  m.impl("wkv6_backward", TORCH_BOX(&rwkv_vision::wkv6_backward_cpu));
  m.impl("wkv6_step", TORCH_BOX(&rwkv_vision::wkv6_step_cpu));
}

#ifdef RWKV_VISION_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(rwkv_vision, CUDA, m) {
  m.impl("wkv6_forward", TORCH_BOX(&rwkv_vision::wkv6_forward_cuda));
  m.impl("wkv6_backward", TORCH_BOX(&rwkv_vision::wkv6_backward_cuda));
  m.impl("wkv6_step", TORCH_BOX(&rwkv_vision::wkv6_step_cuda));
}
#endif
