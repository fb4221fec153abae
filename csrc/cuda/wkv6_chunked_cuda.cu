// Chunked CUDA kernels of the WKV6 recurrence: 16 steps at a time, as tensor-core matrix products.
//
// Why: the recurrent kernels walk t dependent steps of n multiply-adds per thread, so their time is
// the latency of that chain, not the arithmetic. Here a block walks t / 16 chunks instead, and each
// chunk is a few small matrix products that tensor cores do in a few instructions. The algebra is the
// one of ops/wkv6_chunked.py; letters as there, A_t the cumulative log-decay from the chunk start up
// to and including step t, S the n x n state at the chunk start, j key channel, i value channel,
// E = exp(A_15), Rd_t = r_t exp(A_{t-1}), Kd_s = k_s exp(A_15 - A_s):
//
//   Y  = Rd S + P V       P[t][s] = sum_j r_t[j] k_s[j] exp(A_{t-1}[j] - A_s[j])   for s < t,
//                         P[t][t] = sum_j r_t[j] u[j] k_t[j] (the bonus), 0 above the diagonal
//   S' = E * S + Kd^T V   (E scales the rows)
//
// Backward, from dY and the gradient dS' of the state leaving the chunk (walking chunks in reverse):
//
//   dS  = Rd^T dY + E * dS'        dV  = P^T dY + Kd dS'        dP = dY V^T (lower triangle)
//   dRd = dY S^T                   dKd = V dS'^T                dE[j] = sum_i dS'[j][i] S[j][i]
//
// then through the exponentials to r, k, u and w. With dr', dk' the parts of dr, dk that do not come
// from the bonus, the gradient of A_{t-1} is r_t dr'_t, that of A_s is -k_s dk'_s and that of A_15
// (through Kd and E) is sum_s Kd_s dKd_s + E dE, so within a chunk
//
//   dw_q = sum_{t > q} r_t dr'_t - sum_{t >= q} k_t dk'_t + sum_s Kd_s dKd_s + E dE.
//
// The backward needs S at every chunk start: a forward pass without outputs first writes them to a
// scratch tensor (b * h * t / 16 states of n x n floats: 1 GiB at b = 8, t = 4096, h = 32, n = 64).
//
// Every exponent is <= 0, so nothing overflows whatever the decays. (An exponent is a difference of
// float32 running sums, so it carries an absolute error of about ulp(|A|): 3e-5 for a chunk's decay of
// e^-300, far past what trained RWKV-6 layers use.) P and the pair sums of dr, dk are formed pair by
// pair (136 entries of n channels per chunk, float32 on the CUDA cores); the products run on tensor
// cores in TF32 (10-bit mantissa, float32 range and accumulation), about 5e-4 relative error each.
//
// Parallelism: a forward block per (batch, head, group of up to 64 value columns), a backward block
// per (batch, head). Where that is too few blocks to fill the GPU (one long sequence), time is also
// split into G segments run in parallel, in three launches: (A) each segment but one runs from a zero
// state (zero state gradient), keeping only its final state (state gradient) and its total decay; (B)
// a short sequential pass over segments turns those into each segment's true boundary state; (C)
// every segment runs from that state and writes its outputs. A and C each cost about one pass of the
// arithmetic, so segments are used only where they buy at least 2x parallelism.
//
// Shared memory holds the chunk's inputs, the derived tiles and the state (gradient); it is above the
// 48 KiB static limit for n >= 64, so it is dynamic and the kernels opt in to more. The next chunk's
// inputs are loaded into registers while the current one is computed (StagedTile), so that the walk
// over chunks does not wait on global memory at every step.
#include "cuda/cuda_common.cuh"
#include "cuda/wkv6_chunked_kernels.cuh"

#include <algorithm>

namespace rwkv_vision {
namespace {

// =============================================================================================
// Host side.

int device_attribute(cudaDeviceAttr attr, int device, int fallback) {
  int value = 0;
  if (cudaDeviceGetAttribute(&value, attr, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return fallback;
  }
  return value;
}

void check_tensor_cores(const char* what, int device) {
  const int major = device_attribute(cudaDevAttrComputeCapabilityMajor, device, 0);
  STD_TORCH_CHECK(major >= 8, what,
                  ": the chunked CUDA kernels need a GPU of compute capability 8.0 or newer (TF32 "
                  "tensor cores); this one is ", major, ".x. Use backend=\"cuda_recurrent\" (or "
                  "\"kernel\") for the recurrent kernels.");
}

// The time segments (plan_segments): `forced` (the op's segments argument) when positive, else chosen
// for the device.
SegmentPlan choose_segments(const char* what, int64_t forced, int64_t blocks, int64_t chunks,
                            int device) {
  const SegmentPlan plan =
      plan_segments(forced, blocks, chunks, device_attribute(cudaDevAttrMultiProcessorCount, device, 132));
  STD_TORCH_CHECK(blocks * plan.segments <= int64_t(INT_MAX), what, ": ", blocks * plan.segments,
                  " blocks exceed the CUDA grid limit");
  return plan;
}

// Phases A and B's scratch: per (b, h) and segment boundary, a state (or state gradient) and a
// decay; nothing with one segment. combine() runs phase B over it, from `start` (s0 forward, dsT
// backward).
struct SegmentScratch {
  Tensor state_tensor, decay_tensor;  // `like` itself where there is one segment (never touched)
  float* states = nullptr;
  float* decays = nullptr;

  SegmentScratch(const Tensor& like, const Wkv6Dims& d, int segments) : state_tensor(like), decay_tensor(like) {
    if (segments > 1) {
      state_tensor = torch::stable::new_empty(like, {d.B, d.H, segments - 1, d.N, d.N});
      decay_tensor = torch::stable::new_empty(like, {d.B, d.H, segments - 1, d.N});
      states = mptr<float>(state_tensor);
      decays = mptr<float>(decay_tensor);
    }
  }

  void combine(const char* what, const Wkv6Dims& d, int segments, bool reverse, const Tensor& start,
               cudaStream_t stream) const {
    wkv6_chunked_combine_kernel<<<static_cast<unsigned>(d.B * d.H), 256, 0, stream>>>(
        static_cast<int>(d.N), segments, reverse, cptr<float>(start), states, decays);
    check_launch(what, "wkv6_chunked_combine_kernel");
  }
};

template <typename Kernel>
void allow_shared_memory(const char* what, Kernel kernel, size_t bytes) {
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  STD_TORCH_CHECK(err == cudaSuccess, what, ": the chunked kernel needs ", bytes,
                  " bytes of shared memory per block: ", cudaGetErrorString(err));
}

template <typename T, int N, Pass kPass>
void launch_forward_pass(const char* what, int64_t grid, const Wkv6Dims& d, int64_t seg_len,
                         int segments, int launched, int64_t chunks, const Tensor& r, const Tensor& k,
                         const Tensor& v, const Tensor& w, const Tensor& u, const Tensor& s0,
                         float* seg_state, float* seg_decay, float* states, T* y, float* sT,
                         cudaStream_t stream) {
  constexpr size_t bytes = FwdGeometry<N>::kBytes;
  auto kernel = wkv6_chunked_forward_kernel<T, N, kPass>;
  allow_shared_memory(what, kernel, bytes);
  kernel<<<static_cast<unsigned>(grid), kFwdThreads, bytes, stream>>>(
      d.T, d.H, seg_len, segments, launched, chunks, cptr<T>(r), cptr<T>(k), cptr<T>(v),
      cptr<float>(w), cptr<float>(u), cptr<float>(s0), seg_state, seg_decay, states, y, sT);
  check_launch(what, "wkv6_chunked_forward_kernel");
}

// The forward over the whole sequence: phases A and B where there are segments, then C as kPass
// (kOutputs: y and sT; kStates: the state at every chunk start into `states`).
template <typename T, int N, Pass kPass>
void run_forward(const char* what, const Wkv6Dims& d, const Tensor& r, const Tensor& k,
                 const Tensor& v, const Tensor& w, const Tensor& u, const Tensor& s0, float* states,
                 T* y, float* sT, int64_t forced_segments, cudaStream_t stream) {
  const int device = r.get_device_index();
  const int64_t chunks = (d.T + kL - 1) / kL;
  const int64_t blocks = d.B * d.H * FwdGeometry<N>::kGroups;
  const auto [segments, seg_chunks] = choose_segments(what, forced_segments, blocks, chunks, device);
  const int64_t seg_len = seg_chunks * kL;
  const SegmentScratch scratch(s0, d, segments);
  if (segments > 1) {
    launch_forward_pass<T, N, Pass::kLocal>(what, blocks * (segments - 1), d, seg_len, segments,
                                            segments - 1, chunks, r, k, v, w, u, s0, scratch.states,
                                            scratch.decays, nullptr, nullptr, nullptr, stream);
    scratch.combine(what, d, segments, false, s0, stream);
  }
  launch_forward_pass<T, N, kPass>(what, blocks * segments, d, seg_len, segments, segments, chunks,
                                   r, k, v, w, u, s0, scratch.states, scratch.decays, states, y, sT,
                                   stream);
}

template <typename T, int N, bool kFull>
void launch_backward_pass(const char* what, int64_t grid, const Wkv6Dims& d, int64_t seg_len,
                          int segments, int64_t chunks, const Tensor& r, const Tensor& k,
                          const Tensor& v, const Tensor& w, const Tensor& u, const Tensor& dy,
                          const Tensor& dsT, const float* states, float* seg_dstate,
                          float* seg_decay, T* dr, T* dk, T* dv, float* dw, float* ds0,
                          float* du_part, cudaStream_t stream) {
  constexpr size_t bytes = BwdGeometry<N>::kBytes;
  auto kernel = wkv6_chunked_backward_kernel<T, N, kFull>;
  allow_shared_memory(what, kernel, bytes);
  kernel<<<static_cast<unsigned>(grid), kBwdThreads, bytes, stream>>>(
      d.T, d.H, seg_len, segments, chunks, cptr<T>(r), cptr<T>(k), cptr<T>(v), cptr<float>(w),
      cptr<float>(u), cptr<T>(dy), cptr<float>(dsT), states, seg_dstate, seg_decay, dr, dk, dv, dw,
      ds0, du_part);
  check_launch(what, "wkv6_chunked_backward_kernel");
}

template <typename T, int N>
void run_backward(const char* what, const Wkv6Dims& d, const Tensor& r, const Tensor& k,
                  const Tensor& v, const Tensor& w, const Tensor& u, const Tensor& s0,
                  const Tensor& dy, const Tensor& dsT, Tensor& dr, Tensor& dk, Tensor& dv,
                  Tensor& dw, Tensor& du, Tensor& ds0, int64_t forced_segments, cudaStream_t stream) {
  static_assert(kBwdThreads % N == 0, "each thread's du partial sum must stay on one channel");
  const int device = r.get_device_index();
  const int64_t chunks = (d.T + kL - 1) / kL;
  Tensor states = torch::stable::new_empty(s0, {d.B, d.H, chunks, d.N, d.N});
  run_forward<T, N, Pass::kStates>(what, d, r, k, v, w, u, s0, mptr<float>(states), nullptr, nullptr,
                                   forced_segments, stream);

  const int64_t blocks = d.B * d.H;
  const auto [segments, seg_chunks] = choose_segments(what, forced_segments, blocks, chunks, device);
  const int64_t seg_len = seg_chunks * kL;
  const SegmentScratch scratch(s0, d, segments);
  if (segments > 1) {
    launch_backward_pass<T, N, false>(what, blocks * (segments - 1), d, seg_len, segments, chunks, r,
                                      k, v, w, u, dy, dsT, cptr<float>(states), scratch.states,
                                      scratch.decays, nullptr, nullptr, nullptr, nullptr, nullptr,
                                      nullptr, stream);
    scratch.combine(what, d, segments, true, dsT, stream);
  }
  Tensor du_part = torch::stable::new_empty(s0, {d.B * segments * d.H * d.N});
  launch_backward_pass<T, N, true>(what, blocks * segments, d, seg_len, segments, chunks, r, k, v, w,
                                   u, dy, dsT, cptr<float>(states), scratch.states, scratch.decays, mptr<T>(dr),
                                   mptr<T>(dk), mptr<T>(dv), mptr<float>(dw), mptr<float>(ds0),
                                   mptr<float>(du_part), stream);
  const int64_t HN = d.H * d.N;
  // du[h][j] = sum over b and segments of du_part[b][g][h][j], in a fixed order (deterministic).
  wkv6_du_reduce_kernel<<<static_cast<unsigned>((HN + 255) / 256), 256, 0, stream>>>(
      d.B * segments, HN, cptr<float>(du_part), mptr<float>(du));
  check_launch(what, "wkv6_du_reduce_kernel");
}

}  // namespace

template <typename T>
void wkv6_forward_chunked_launch(const char* what, const Wkv6Dims& d, const Tensor& r,
                                 const Tensor& k, const Tensor& v, const Tensor& w, const Tensor& u,
                                 const Tensor& s0, Tensor& y, Tensor& sT, int64_t segments,
                                 cudaStream_t stream) {
  check_tensor_cores(what, r.get_device_index());
  switch (d.N) {
#define RWKV_VISION_CASE(N_)                                                                        \
  case N_:                                                                                          \
    run_forward<T, N_, Pass::kOutputs>(what, d, r, k, v, w, u, s0, nullptr, mptr<T>(y),            \
                                       mptr<float>(sT), segments, stream);                         \
    break;
    RWKV_VISION_CASE(32)
    RWKV_VISION_CASE(64)
    RWKV_VISION_CASE(128)
#undef RWKV_VISION_CASE
    default: STD_TORCH_CHECK(false, what, ": unsupported head size n = ", d.N);
  }
}

template <typename T>
void wkv6_backward_chunked_launch(const char* what, const Wkv6Dims& d, const Tensor& r,
                                  const Tensor& k, const Tensor& v, const Tensor& w,
                                  const Tensor& u, const Tensor& s0, const Tensor& dy,
                                  const Tensor& dsT, Tensor& dr, Tensor& dk, Tensor& dv, Tensor& dw,
                                  Tensor& du, Tensor& ds0, int64_t segments, cudaStream_t stream) {
  check_tensor_cores(what, r.get_device_index());
  switch (d.N) {
#define RWKV_VISION_CASE(N_)                                                                        \
  case N_:                                                                                          \
    run_backward<T, N_>(what, d, r, k, v, w, u, s0, dy, dsT, dr, dk, dv, dw, du, ds0, segments,    \
                        stream);                                                                    \
    break;
    RWKV_VISION_CASE(32)
    RWKV_VISION_CASE(64)
    RWKV_VISION_CASE(128)
#undef RWKV_VISION_CASE
    default: STD_TORCH_CHECK(false, what, ": unsupported head size n = ", d.N);
  }
}

#define RWKV_VISION_INSTANTIATE(T)                                                                 \
  template void wkv6_forward_chunked_launch<T>(const char*, const Wkv6Dims&, const Tensor&,        \
                                               const Tensor&, const Tensor&, const Tensor&,        \
                                               const Tensor&, const Tensor&, Tensor&, Tensor&,     \
                                               int64_t, cudaStream_t);                             \
  template void wkv6_backward_chunked_launch<T>(                                                   \
      const char*, const Wkv6Dims&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,    \
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&, Tensor&,       \
      Tensor&, Tensor&, Tensor&, int64_t, cudaStream_t);
RWKV_VISION_INSTANTIATE(float)
RWKV_VISION_INSTANTIATE(__nv_bfloat16)
RWKV_VISION_INSTANTIATE(__half)
#undef RWKV_VISION_INSTANTIATE

}  // namespace rwkv_vision
