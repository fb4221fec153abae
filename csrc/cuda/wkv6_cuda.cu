// The recurrent CUDA kernels of the WKV6 recurrence (the default on CUDA), and the CUDA entry points
// of the wkv6_forward / wkv6_backward ops, which run the variant the op's `kernel` argument names
// (Wkv6Kernel in wkv6.h).
//
// One thread block per (batch, head) and one thread per channel: each thread keeps one n-float row
// or column of the n x n state in registers, and only the per-step vectors cross threads, through
// shared memory. The recurrence is sequential in time, so the parallelism is the b * h blocks,
// indexed on grid.x (limit 2^31 - 1; grid.y would stop at 65535).
//
// Forward: thread i owns column i of S, the only part of S that y_t[i] reads, so a step needs no
// cross-thread reduction: n multiply-add triples per thread against the broadcast r, k, exp(w).
//
// Backward: dS evolves row by row (row j only needs e[j], r[j] and the vector dy) and column by
// column (column i only needs e, r and dy[i]). The gradients reducing over value channels (dr, dk,
// dw, du) are therefore computed by a row-owned kernel and the one reducing over key channels (dv)
// by a column-owned kernel, neither needing a cross-thread reduction. The row-owned kernel also
// needs the state *before* each step while walking time backwards; as on the CPU the recurrence is
// not run in reverse (dividing by a decay that may underflow) but recomputed from checkpoints: a
// first forward sweep keeps the state every C steps, then chunk by chunk from the end the chunk's
// states are rebuilt into global scratch and walked backwards. C ~ sqrt(t) minimises the scratch
// ((t / C + C) states per block). Scratch blocks are stored transposed ([i][j]) so that the n
// threads of a block touch n consecutive floats; each thread only ever reads back what it wrote
// itself, so the scratch needs no synchronisation. dS is parked in scratch while a chunk is
// rebuilt, so at most one n-float row array is live per thread. The u gradient is shared by the
// batch: each block writes its partial sum and a last kernel adds them over b in a fixed order
// (deterministic, no atomics).
//
// Packed sequences (cu_seqlens, b == 1): one block per (sequence, head), walking only that sequence's
// steps from and to its own state row (block_walk in wkv6_kernels.cuh); the split and chunked variants
// take no cu_seqlens (ops.wkv6 runs them per sequence).
//
// Everything accumulates in float32; float64 inputs are left to the CPU kernels. expf becomes the
// hardware approximation under --use_fast_math (a few ulp, well inside float32 tolerances). All
// launches go on torch's current stream (CUDA graphs, torch.compile).
#include "cuda/cuda_common.cuh"
#include "cuda/wkv6_kernels.cuh"

namespace rwkv_vision {
namespace {

// ---------------------------------------------------------------------------------------------
// Host side.

template <typename T, int N>
void forward_launch(const Wkv6Dims& d, const Tensor& r, const Tensor& k, const Tensor& v,
                    const Tensor& w, const Tensor& u, const Tensor& s0, Tensor& y, Tensor& sT,
                    const int64_t* cu, int64_t states, cudaStream_t stream, const char* what) {
  wkv6_forward_kernel<T, N><<<static_cast<unsigned>(states * d.H), N, 0, stream>>>(
      d.T, d.H, cptr<T>(r), cptr<T>(k), cptr<T>(v), cptr<float>(w), cptr<float>(u),
      cptr<float>(s0), mptr<T>(y), mptr<float>(sT), cu);
  check_launch(what, "wkv6_forward_kernel");
}

template <typename T>
std::tuple<Tensor, Tensor> forward_impl(const char* what, const Wkv6Dims& d, const Tensor& r,
                                        const Tensor& k, const Tensor& v, const Tensor& w,
                                        const Tensor& u, const Tensor& s0, Wkv6Kernel kernel,
                                        int64_t segments, const int64_t* cu, int64_t states) {
  Tensor y = torch::stable::new_empty(r, {d.B, d.T, d.H, d.N});
  Tensor sT = torch::stable::new_empty(s0, {states, d.H, d.N, d.N});
  if (states * d.H == 0) return {y, sT};
  const cudaStream_t stream = current_stream(r.get_device_index());
#ifdef RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS
  if (kernel == Wkv6Kernel::kCudaSplit) {
    wkv6_forward_split_launch<T>(what, d, r, k, v, w, u, s0, y, sT, stream);
    return {y, sT};
  }
  if (kernel == Wkv6Kernel::kCudaChunked) {
    wkv6_forward_chunked_launch<T>(what, d, r, k, v, w, u, s0, y, sT, segments, stream);
    return {y, sT};
  }
#else
  (void)kernel, (void)segments;  // check_kernel_choice admits only kDefault in this build
#endif
  switch (d.N) {
    case 32: forward_launch<T, 32>(d, r, k, v, w, u, s0, y, sT, cu, states, stream, what); break;
    case 64: forward_launch<T, 64>(d, r, k, v, w, u, s0, y, sT, cu, states, stream, what); break;
    case 128: forward_launch<T, 128>(d, r, k, v, w, u, s0, y, sT, cu, states, stream, what); break;
    default: STD_TORCH_CHECK(false, what, ": unsupported head size n = ", d.N);
  }
  return {y, sT};
}

template <typename T, int N>
void backward_launch(const Wkv6Dims& d, const Tensor& r, const Tensor& k, const Tensor& v,
                     const Tensor& w, const Tensor& u, const Tensor& s0, const Tensor& dy,
                     const Tensor& dsT, Tensor& dr, Tensor& dk, Tensor& dv, Tensor& dw,
                     Tensor& ds0, float* du_part, float* scratch, int64_t C, int64_t n_chunks,
                     int64_t scratch_per_block, const int64_t* cu, int64_t states,
                     cudaStream_t stream, const char* what) {
  const unsigned blocks = static_cast<unsigned>(states * d.H);
  wkv6_backward_rows_kernel<T, N><<<blocks, N, 0, stream>>>(
      d.T, d.H, C, n_chunks, scratch_per_block, cptr<T>(r), cptr<T>(k), cptr<T>(v),
      cptr<float>(w), cptr<float>(u), cptr<float>(s0), cptr<T>(dy), cptr<float>(dsT), mptr<T>(dr),
      mptr<T>(dk), mptr<float>(dw), du_part, scratch, cu);
  check_launch(what, "wkv6_backward_rows_kernel");
  wkv6_backward_cols_kernel<T, N><<<blocks, N, 0, stream>>>(
      d.T, d.H, cptr<T>(r), cptr<T>(k), cptr<float>(w), cptr<float>(u), cptr<T>(dy),
      cptr<float>(dsT), mptr<T>(dv), mptr<float>(ds0), cu);
  check_launch(what, "wkv6_backward_cols_kernel");
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_impl(
    const char* what, const Wkv6Dims& d, const Tensor& r, const Tensor& k, const Tensor& v,
    const Tensor& w, const Tensor& u, const Tensor& s0, const Tensor& dy, const Tensor& dsT,
    Wkv6Kernel kernel, int64_t segments, const int64_t* cu, int64_t states) {
  Tensor dr = torch::stable::new_empty(r, {d.B, d.T, d.H, d.N});
  Tensor dk = torch::stable::new_empty(r, {d.B, d.T, d.H, d.N});
  Tensor dv = torch::stable::new_empty(r, {d.B, d.T, d.H, d.N});
  Tensor dw = torch::stable::new_empty(w, {d.B, d.T, d.H, d.N});
  Tensor du = torch::stable::new_empty(u, {d.H, d.N});
  Tensor ds0 = torch::stable::new_empty(s0, {states, d.H, d.N, d.N});
  if (d.H == 0) return {dr, dk, dv, dw, du, ds0};
#ifdef RWKV_VISION_EXPERIMENTAL_CUDA_KERNELS
  // The split variant has no backward of its own: it shares the recurrent one below.
  if (d.B > 0 && kernel == Wkv6Kernel::kCudaChunked) {
    wkv6_backward_chunked_launch<T>(what, d, r, k, v, w, u, s0, dy, dsT, dr, dk, dv, dw, du, ds0,
                                    segments, current_stream(r.get_device_index()));
    return {dr, dk, dv, dw, du, ds0};
  }
#else
  (void)kernel, (void)segments;
#endif

  // With cu_seqlens one block per (sequence, head); the scratch is sized for the whole row (no walk is
  // longer), each block using what its own walk needs.
  const int64_t BH = states * d.H, NN = d.N * d.N;
  const int64_t C = checkpoint_spacing(d.T);
  const int64_t n_chunks = (d.T + C - 1) / C;
  const int64_t scratch_per_block = (n_chunks + C + 1) * NN;
  // One float32 scratch tensor: per-block checkpoints / chunk states / parked dS, then du partials.
  const int64_t scratch_numel = BH * scratch_per_block + BH * d.N;
  Tensor scratch = torch::stable::new_empty(s0, {scratch_numel}, ScalarType::Float);
  float* p_scratch = mptr<float>(scratch);
  float* p_du_part = p_scratch + BH * scratch_per_block;

  const cudaStream_t stream = current_stream(r.get_device_index());
  if (BH > 0) {
    switch (d.N) {
      case 32:
        backward_launch<T, 32>(d, r, k, v, w, u, s0, dy, dsT, dr, dk, dv, dw, ds0, p_du_part,
                               p_scratch, C, n_chunks, scratch_per_block, cu, states, stream, what);
        break;
      case 64:
        backward_launch<T, 64>(d, r, k, v, w, u, s0, dy, dsT, dr, dk, dv, dw, ds0, p_du_part,
                               p_scratch, C, n_chunks, scratch_per_block, cu, states, stream, what);
        break;
      case 128:
        backward_launch<T, 128>(d, r, k, v, w, u, s0, dy, dsT, dr, dk, dv, dw, ds0, p_du_part,
                                p_scratch, C, n_chunks, scratch_per_block, cu, states, stream, what);
        break;
      default: STD_TORCH_CHECK(false, what, ": unsupported head size n = ", d.N);
    }
  }
  // du is written even for b = 0 (all zeros).
  const int64_t HN = d.H * d.N;
  constexpr int kReduceThreads = 256;
  wkv6_du_reduce_kernel<<<static_cast<unsigned>((HN + kReduceThreads - 1) / kReduceThreads),
                          kReduceThreads, 0, stream>>>(states, HN, p_du_part, mptr<float>(du));
  check_launch(what, "wkv6_du_reduce_kernel");
  return {dr, dk, dv, dw, du, ds0};
}

}  // namespace

std::tuple<Tensor, Tensor> wkv6_forward_cuda(Tensor r, Tensor k, Tensor v, Tensor w, Tensor u,
                                             Tensor s0, int64_t kernel_code, int64_t segments,
                                             std::optional<Tensor> cu_seqlens) {
  const char* what = "rwkv_vision::wkv6_forward";
  const Wkv6Kernel kernel = check_kernel_choice(what, kernel_code, segments, true);
  check_all_on_device(what, r, {{"k", &k}, {"v", &v}, {"w", &w}, {"u", &u}, {"initial_state", &s0}});
  const int64_t states = check_cu_seqlens(what, cu_seqlens, r, kernel_code, true);
  const int64_t* cu = cu_seqlens.has_value() ? cptr<int64_t>(*cu_seqlens) : nullptr;
  const Wkv6Dims d = check_wkv6_inputs(what, r, k, v, w, u, s0, states);
  check_supported(what, d, r.scalar_type());
  torch::stable::accelerator::DeviceGuard guard(r.get_device_index());
  switch (r.scalar_type()) {
    case ScalarType::Float:
      return forward_impl<float>(what, d, r, k, v, w, u, s0, kernel, segments, cu, states);
    case ScalarType::BFloat16:
      return forward_impl<__nv_bfloat16>(what, d, r, k, v, w, u, s0, kernel, segments, cu, states);
    case ScalarType::Half:
      return forward_impl<__half>(what, d, r, k, v, w, u, s0, kernel, segments, cu, states);
    default: STD_TORCH_CHECK(false, what, ": unsupported dtype on CUDA");
  }
  return {};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> wkv6_backward_cuda(
    Tensor r, Tensor k, Tensor v, Tensor w, Tensor u, Tensor s0, Tensor dy, Tensor dsT,
    int64_t kernel_code, int64_t segments, std::optional<Tensor> cu_seqlens) {
  const char* what = "rwkv_vision::wkv6_backward";
  const Wkv6Kernel kernel = check_kernel_choice(what, kernel_code, segments, true);
  check_all_on_device(what, r, {{"k", &k}, {"v", &v}, {"w", &w}, {"u", &u}, {"initial_state", &s0},
                                {"dy", &dy}, {"dsT", &dsT}});
  const int64_t states = check_cu_seqlens(what, cu_seqlens, r, kernel_code, true);
  const int64_t* cu = cu_seqlens.has_value() ? cptr<int64_t>(*cu_seqlens) : nullptr;
  const Wkv6Dims d = check_wkv6_inputs(what, r, k, v, w, u, s0, states);
  check_same_layout(what, "dy", dy, r);
  STD_TORCH_CHECK(dy.scalar_type() == r.scalar_type(), what, ": dy must have the dtype of r");
  check_state(what, "dsT", dsT, Wkv6Dims{states, d.T, d.H, d.N}, acc_type(r.scalar_type()));
  check_supported(what, d, r.scalar_type());
  torch::stable::accelerator::DeviceGuard guard(r.get_device_index());
  switch (r.scalar_type()) {
    case ScalarType::Float:
      return backward_impl<float>(what, d, r, k, v, w, u, s0, dy, dsT, kernel, segments, cu, states);
    case ScalarType::BFloat16:
      return backward_impl<__nv_bfloat16>(what, d, r, k, v, w, u, s0, dy, dsT, kernel, segments, cu,
                                          states);
    case ScalarType::Half:
      return backward_impl<__half>(what, d, r, k, v, w, u, s0, dy, dsT, kernel, segments, cu, states);
    default: STD_TORCH_CHECK(false, what, ": unsupported dtype on CUDA");
  }
  return {};
}

}  // namespace rwkv_vision
