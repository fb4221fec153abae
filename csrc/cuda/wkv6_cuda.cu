// CUDA kernels of the WKV6 recurrence.
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
// Everything accumulates in float32; float64 inputs are left to the CPU kernels. expf becomes the
// hardware approximation under --use_fast_math (a few ulp, well inside float32 tolerances). All
// launches go on torch's current stream (CUDA graphs, torch.compile).
#include "cuda/cuda_common.cuh"

#include <cmath>
#include <cstdlib>
#include <cstring>

namespace rwkv_vision {
namespace {

// The backward scratch is written and read back by the same thread within one kernel: read it
// through L2 (ld.global.cg), never through the read-only data path the compiler may otherwise pick
// for loads it merges with loads of the __restrict__ const inputs.
__device__ __forceinline__ float load_scratch(const float* p) { return __ldcg(p); }

// ---------------------------------------------------------------------------------------------
// Kernels. Every kernel runs with blockDim.x == N and gridDim.x == B * H (block bh = b * H + h).
// Element (b, t, h, c) of a [b, t, h, n] tensor is at ((b * T + t) * H + h) * N + c, so consecutive
// steps of one (b, h) are H * N apart.
//
// The per-step vectors are double-buffered in shared memory: step s writes buffer s & 1, syncs
// once, then reads it. Step s + 2 writes that buffer again only after passing the sync of step
// s + 1, which every thread reaches after its reads of step s, so one __syncthreads per step is
// enough. The rows kernel keeps one running parity over all its phases, so this holds across them.

template <typename T, int N>
__global__ void __launch_bounds__(N)
    wkv6_forward_kernel(int64_t T_, int64_t H, const T* __restrict__ r, const T* __restrict__ k,
                        const T* __restrict__ v, const float* __restrict__ w,
                        const float* __restrict__ u, const float* __restrict__ s0,
                        T* __restrict__ y, float* __restrict__ sT) {
  constexpr int64_t NN = int64_t(N) * N;
  const int64_t bh = blockIdx.x, b = bh / H, h = bh % H;
  const int i = threadIdx.x;  // value channel: this thread owns column i of S
  const int64_t stride = H * N;
  const int64_t base = (b * T_ * H + h) * N + i;

  __shared__ __align__(16) float sr[2][N];
  __shared__ __align__(16) float sk[2][N];
  __shared__ __align__(16) float se[2][N];
  __shared__ __align__(16) float srku[2][N];

  const float ui = u[h * N + i];
  float S[N];  // S[j] = state[j][i]
  {
    const float* src = s0 + bh * NN + i;
#pragma unroll
    for (int j = 0; j < N; ++j) S[j] = src[j * N];
  }

  // Registers prefetch the next step's inputs while the current one is computed.
  float nr = to_f(r[base]), nk = to_f(k[base]), nv = to_f(v[base]), nw = w[base];
  int par = 0;
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t off = base + t * stride;
    const float rv = nr, kv = nk, vv = nv, wv = nw;
    if (t + 1 < T_) {
      const int64_t nx = off + stride;
      nr = to_f(r[nx]);
      nk = to_f(k[nx]);
      nv = to_f(v[nx]);
      nw = w[nx];
    }
    sr[par][i] = rv;
    sk[par][i] = kv;
    se[par][i] = expf(wv);
    srku[par][i] = rv * ui * kv;
    __syncthreads();
    float acc = 0.f, bonus = 0.f;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      acc += sr[par][j] * S[j];
      bonus += srku[par][j];
      S[j] = se[par][j] * S[j] + sk[par][j] * vv;
    }
    y[off] = from_f<T>(acc + bonus * vv);
    par ^= 1;
  }

  float* dst = sT + bh * NN + i;
#pragma unroll
  for (int j = 0; j < N; ++j) dst[j * N] = S[j];
}

// Row-owned backward: thread j owns row j of S and of dS; computes dr, dk, dw and the per-block du.
// Per block, `scratch` holds n_chunks checkpoints, C chunk states and one parked dS, each an n x n
// float block stored transposed (element [j][i] at i * N + j).
template <typename T, int N>
__global__ void __launch_bounds__(N)
    wkv6_backward_rows_kernel(int64_t T_, int64_t H, int64_t C, int64_t n_chunks,
                              int64_t scratch_per_block, const T* __restrict__ r,
                              const T* __restrict__ k, const T* __restrict__ v,
                              const float* __restrict__ w, const float* __restrict__ u,
                              const float* __restrict__ s0, const T* __restrict__ dy,
                              const float* __restrict__ dsT, T* __restrict__ dr,
                              T* __restrict__ dk, float* __restrict__ dw,
                              float* __restrict__ du_part, float* __restrict__ scratch) {
  constexpr int64_t NN = int64_t(N) * N;
  const int64_t bh = blockIdx.x, b = bh / H, h = bh % H;
  const int j = threadIdx.x;  // key channel: this thread owns row j
  const int64_t stride = H * N;
  const int64_t base = (b * T_ * H + h) * N + j;

  float* ckpt = scratch + bh * scratch_per_block;  // [n_chunks][N][N]: state before step c * C
  float* states = ckpt + n_chunks * NN;            // [C][N][N]: state before step t0 + m
  float* parked = states + C * NN;                 // [N][N]: dS between two chunks

  __shared__ __align__(16) float sv[2][N];
  __shared__ __align__(16) float sdy[2][N];

  const float uj = u[h * N + j];
  int par = 0;

  // Sweep 1: the state before every C-th step (the last chunk's start included).
  {
    float S[N];
    const float* src = s0 + bh * NN + int64_t(j) * N;
#pragma unroll
    for (int i = 0; i < N; ++i) S[i] = src[i];
    {
      float* dst = ckpt + j;
#pragma unroll
      for (int i = 0; i < N; ++i) dst[i * N] = S[i];
    }
    for (int64_t c = 0; c + 1 < n_chunks; ++c) {
      for (int64_t tt = 0; tt < C; ++tt) {
        const int64_t off = base + (c * C + tt) * stride;
        sv[par][j] = to_f(v[off]);
        const float kj = to_f(k[off]), ej = expf(w[off]);
        __syncthreads();
#pragma unroll
        for (int i = 0; i < N; ++i) S[i] = ej * S[i] + kj * sv[par][i];
        par ^= 1;
      }
      float* dst = ckpt + (c + 1) * NN + j;
#pragma unroll
      for (int i = 0; i < N; ++i) dst[i * N] = S[i];
    }
  }

  // Sweep 2, chunk by chunk from the end. dS (dL/d(state after step t)) starts as dsT, parked
  // transposed like every later dS, so that every chunk loads it the same way.
  {
    const float* src = dsT + bh * NN + int64_t(j) * N;
    float* dst = parked + j;
#pragma unroll
    for (int i = 0; i < N; ++i) dst[i * N] = src[i];
  }
  float du_acc = 0.f;
  for (int64_t c = n_chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * C;
    const int64_t len = (T_ - t0 < C) ? (T_ - t0) : C;  // >= 1: t0 < T_ for every chunk

    // Rebuild states[m] = state before step t0 + m, m in [0, len).
    {
      float S[N];
      const float* src = ckpt + c * NN + j;
#pragma unroll
      for (int i = 0; i < N; ++i) S[i] = load_scratch(src + i * N);
      for (int64_t m = 0;; ++m) {
        float* dst = states + m * NN + j;
#pragma unroll
        for (int i = 0; i < N; ++i) dst[i * N] = S[i];
        if (m + 1 >= len) break;  // uniform over the block: the sync below is safe
        const int64_t off = base + (t0 + m) * stride;
        sv[par][j] = to_f(v[off]);
        const float kj = to_f(k[off]), ej = expf(w[off]);
        __syncthreads();
#pragma unroll
        for (int i = 0; i < N; ++i) S[i] = ej * S[i] + kj * sv[par][i];
        par ^= 1;
      }
    }

    // Walk the chunk backwards. dS holds dL/d(state after step t).
    {
      float dS[N];
      {
        const float* src = parked + j;
#pragma unroll
        for (int i = 0; i < N; ++i) dS[i] = load_scratch(src + i * N);
      }
      for (int64_t m = len - 1; m >= 0; --m) {
        const int64_t off = base + (t0 + m) * stride;
        sv[par][j] = to_f(v[off]);
        sdy[par][j] = to_f(dy[off]);
        const float rj = to_f(r[off]), kj = to_f(k[off]), ej = expf(w[off]);
        __syncthreads();
        float dot_gy_v = 0.f;
#pragma unroll
        for (int i = 0; i < N; ++i) dot_gy_v += sdy[par][i] * sv[par][i];
        const float* Sp = states + m * NN + j;  // state before step t0 + m, row j
        float acc_r = 0.f, acc_k = 0.f, acc_w = 0.f;
#pragma unroll
        for (int i = 0; i < N; ++i) {
          const float s = load_scratch(Sp + i * N), g = dS[i], gy = sdy[par][i];
          acc_r += gy * s;
          acc_k += sv[par][i] * g;
          acc_w += s * g;
          dS[i] = ej * g + rj * gy;
        }
        dr[off] = from_f<T>(uj * kj * dot_gy_v + acc_r);
        dk[off] = from_f<T>(rj * uj * dot_gy_v + acc_k);
        dw[off] = ej * acc_w;
        du_acc += rj * kj * dot_gy_v;
        par ^= 1;
      }
      if (c > 0) {  // dS after chunk 0 is ds0, written by the column kernel
        float* dst = parked + j;
#pragma unroll
        for (int i = 0; i < N; ++i) dst[i * N] = dS[i];
      }
    }
  }
  du_part[bh * N + j] = du_acc;
}

// Column-owned backward: thread i owns column i of dS; computes dv and ds0. Needs no state.
template <typename T, int N>
__global__ void __launch_bounds__(N)
    wkv6_backward_cols_kernel(int64_t T_, int64_t H, const T* __restrict__ r,
                              const T* __restrict__ k, const float* __restrict__ w,
                              const float* __restrict__ u, const T* __restrict__ dy,
                              const float* __restrict__ dsT, T* __restrict__ dv,
                              float* __restrict__ ds0) {
  constexpr int64_t NN = int64_t(N) * N;
  const int64_t bh = blockIdx.x, b = bh / H, h = bh % H;
  const int i = threadIdx.x;  // value channel: this thread owns column i of dS
  const int64_t stride = H * N;
  const int64_t base = (b * T_ * H + h) * N + i;

  __shared__ __align__(16) float sr[2][N];
  __shared__ __align__(16) float sk[2][N];
  __shared__ __align__(16) float se[2][N];
  __shared__ __align__(16) float skru[2][N];

  const float ui = u[h * N + i];
  float dS[N];  // dS[j] = dL/dstate[j][i]
  {
    const float* src = dsT + bh * NN + i;
#pragma unroll
    for (int j = 0; j < N; ++j) dS[j] = src[j * N];
  }

  const int64_t last = base + (T_ - 1) * stride;
  float nr = to_f(r[last]), nk = to_f(k[last]), nw = w[last], ng = to_f(dy[last]);
  int par = 0;
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t off = base + t * stride;
    const float rv = nr, kv = nk, wv = nw, gy = ng;
    if (t > 0) {
      const int64_t nx = off - stride;
      nr = to_f(r[nx]);
      nk = to_f(k[nx]);
      nw = w[nx];
      ng = to_f(dy[nx]);
    }
    sr[par][i] = rv;
    sk[par][i] = kv;
    se[par][i] = expf(wv);
    skru[par][i] = kv * rv * ui;
    __syncthreads();
    float sum_kru = 0.f, acc = 0.f;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      sum_kru += skru[par][j];
      const float g = dS[j];
      acc += sk[par][j] * g;
      dS[j] = se[par][j] * g + sr[par][j] * gy;
    }
    dv[off] = from_f<T>(gy * sum_kru + acc);
    par ^= 1;
  }

  float* dst = ds0 + bh * NN + i;
#pragma unroll
  for (int j = 0; j < N; ++j) dst[j * N] = dS[j];
}

// du[h, n] = sum over b of du_part[b, h, n], b in increasing order.
__global__ void wkv6_du_reduce_kernel(int64_t B, int64_t HN, const float* __restrict__ du_part,
                                      float* __restrict__ du) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= HN) return;
  float acc = 0.f;
  for (int64_t b = 0; b < B; ++b) acc += du_part[b * HN + idx];
  du[idx] = acc;
}

// ---------------------------------------------------------------------------------------------
// Host side.

// Checkpoint spacing for a sequence of length t: ceil(sqrt(t)), at least 1.
int64_t chunk_length(int64_t t) {
  int64_t c = static_cast<int64_t>(std::sqrt(static_cast<double>(t)));
  if (c < 1) c = 1;
  while (c * c < t) ++c;
  while (c > 1 && (c - 1) * (c - 1) >= t) --c;
  return c;
}

template <typename T, int N>
void forward_launch(const Wkv6Dims& d, const Tensor& r, const Tensor& k, const Tensor& v,
                    const Tensor& w, const Tensor& u, const Tensor& s0, Tensor& y, Tensor& sT,
                    cudaStream_t stream, const char* what) {
  wkv6_forward_kernel<T, N><<<static_cast<unsigned>(d.B * d.H), N, 0, stream>>>(
      d.T, d.H, cptr<T>(r), cptr<T>(k), cptr<T>(v), cptr<float>(w), cptr<float>(u),
      cptr<float>(s0), mptr<T>(y), mptr<float>(sT));
  check_launch(what, "wkv6_forward_kernel");
}

template <typename T>
std::tuple<Tensor, Tensor> forward_impl(const char* what, const Wkv6Dims& d, const Tensor& r,
                                        const Tensor& k, const Tensor& v, const Tensor& w,
                                        const Tensor& u, const Tensor& s0) {
  Tensor y = torch::stable::new_empty(r, {d.B, d.T, d.H, d.N});
  Tensor sT = torch::stable::new_empty(s0, {d.B, d.H, d.N, d.N});
  if (d.B * d.H == 0) return {y, sT};
  const cudaStream_t stream = current_stream(r.get_device_index());
  switch (forward_kernel_choice(what)) {
    case ForwardKernel::kSplit:
      wkv6_forward_split_launch<T>(what, d, r, k, v, w, u, s0, y, sT, stream);
      return {y, sT};
    case ForwardKernel::kChunked:
      wkv6_forward_chunked_launch<T>(what, d, r, k, v, w, u, s0, y, sT, stream);
      return {y, sT};
    case ForwardKernel::kRecurrent:
      break;
  }
  switch (d.N) {
    case 32: forward_launch<T, 32>(d, r, k, v, w, u, s0, y, sT, stream, what); break;
    case 64: forward_launch<T, 64>(d, r, k, v, w, u, s0, y, sT, stream, what); break;
    case 128: forward_launch<T, 128>(d, r, k, v, w, u, s0, y, sT, stream, what); break;
    default: STD_TORCH_CHECK(false, what, ": unsupported head size n = ", d.N);
  }
  return {y, sT};
}

template <typename T, int N>
void backward_launch(const Wkv6Dims& d, const Tensor& r, const Tensor& k, const Tensor& v,
                     const Tensor& w, const Tensor& u, const Tensor& s0, const Tensor& dy,
                     const Tensor& dsT, Tensor& dr, Tensor& dk, Tensor& dv, Tensor& dw,
                     Tensor& ds0, float* du_part, float* scratch, int64_t C, int64_t n_chunks,
                     int64_t scratch_per_block, cudaStream_t stream, const char* what) {
  const unsigned blocks = static_cast<unsigned>(d.B * d.H);
  wkv6_backward_rows_kernel<T, N><<<blocks, N, 0, stream>>>(
      d.T, d.H, C, n_chunks, scratch_per_block, cptr<T>(r), cptr<T>(k), cptr<T>(v),
      cptr<float>(w), cptr<float>(u), cptr<float>(s0), cptr<T>(dy), cptr<float>(dsT), mptr<T>(dr),
      mptr<T>(dk), mptr<float>(dw), du_part, scratch);
  check_launch(what, "wkv6_backward_rows_kernel");
  wkv6_backward_cols_kernel<T, N><<<blocks, N, 0, stream>>>(
      d.T, d.H, cptr<T>(r), cptr<T>(k), cptr<float>(w), cptr<float>(u), cptr<T>(dy),
      cptr<float>(dsT), mptr<T>(dv), mptr<float>(ds0));
  check_launch(what, "wkv6_backward_cols_kernel");
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_impl(
    const char* what, const Wkv6Dims& d, const Tensor& r, const Tensor& k, const Tensor& v,
    const Tensor& w, const Tensor& u, const Tensor& s0, const Tensor& dy, const Tensor& dsT) {
  Tensor dr = torch::stable::new_empty(r, {d.B, d.T, d.H, d.N});
  Tensor dk = torch::stable::new_empty(r, {d.B, d.T, d.H, d.N});
  Tensor dv = torch::stable::new_empty(r, {d.B, d.T, d.H, d.N});
  Tensor dw = torch::stable::new_empty(w, {d.B, d.T, d.H, d.N});
  Tensor du = torch::stable::new_empty(u, {d.H, d.N});
  Tensor ds0 = torch::stable::new_empty(s0, {d.B, d.H, d.N, d.N});
  if (d.H == 0) return {dr, dk, dv, dw, du, ds0};
  if (d.B > 0 && backward_kernel_choice(what) == BackwardKernel::kChunked) {
    wkv6_backward_chunked_launch<T>(what, d, r, k, v, w, u, s0, dy, dsT, dr, dk, dv, dw, du, ds0,
                                    current_stream(r.get_device_index()));
    return {dr, dk, dv, dw, du, ds0};
  }

  const int64_t BH = d.B * d.H, NN = d.N * d.N;
  const int64_t C = chunk_length(d.T);
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
                               p_scratch, C, n_chunks, scratch_per_block, stream, what);
        break;
      case 64:
        backward_launch<T, 64>(d, r, k, v, w, u, s0, dy, dsT, dr, dk, dv, dw, ds0, p_du_part,
                               p_scratch, C, n_chunks, scratch_per_block, stream, what);
        break;
      case 128:
        backward_launch<T, 128>(d, r, k, v, w, u, s0, dy, dsT, dr, dk, dv, dw, ds0, p_du_part,
                                p_scratch, C, n_chunks, scratch_per_block, stream, what);
        break;
      default: STD_TORCH_CHECK(false, what, ": unsupported head size n = ", d.N);
    }
  }
  // du is written even for b = 0 (all zeros).
  const int64_t HN = d.H * d.N;
  constexpr int kReduceThreads = 256;
  wkv6_du_reduce_kernel<<<static_cast<unsigned>((HN + kReduceThreads - 1) / kReduceThreads),
                          kReduceThreads, 0, stream>>>(d.B, HN, p_du_part, mptr<float>(du));
  check_launch(what, "wkv6_du_reduce_kernel");
  return {dr, dk, dv, dw, du, ds0};
}

}  // namespace

namespace {
const char* env_choice(const char* name) {
  const char* choice = std::getenv(name);
  return choice == nullptr || *choice == '\0' ? "recurrent" : choice;
}
}  // namespace

ForwardKernel forward_kernel_choice(const char* what) {
  const char* choice = env_choice("RWKV_VISION_CUDA_FORWARD");
  if (std::strcmp(choice, "recurrent") == 0) return ForwardKernel::kRecurrent;
  if (std::strcmp(choice, "split") == 0) return ForwardKernel::kSplit;
  if (std::strcmp(choice, "chunked") == 0) return ForwardKernel::kChunked;
  STD_TORCH_CHECK(false, what, ": RWKV_VISION_CUDA_FORWARD must be recurrent, split or chunked, got '",
                  choice, "'");
  return ForwardKernel::kRecurrent;
}

BackwardKernel backward_kernel_choice(const char* what) {
  const char* choice = env_choice("RWKV_VISION_CUDA_BACKWARD");
  if (std::strcmp(choice, "recurrent") == 0) return BackwardKernel::kRecurrent;
  if (std::strcmp(choice, "chunked") == 0) return BackwardKernel::kChunked;
  STD_TORCH_CHECK(false, what, ": RWKV_VISION_CUDA_BACKWARD must be recurrent or chunked, got '",
                  choice, "'");
  return BackwardKernel::kRecurrent;
}

std::tuple<Tensor, Tensor> wkv6_forward_cuda(Tensor r, Tensor k, Tensor v, Tensor w, Tensor u,
                                             Tensor s0) {
  const char* what = "rwkv_vision::wkv6_forward";
  check_all_on_device(what, r, {{"k", &k}, {"v", &v}, {"w", &w}, {"u", &u}, {"initial_state", &s0}});
  const Wkv6Dims d = check_wkv6_inputs(what, r, k, v, w, u, s0);
  check_supported(what, d, r.scalar_type());
  torch::stable::accelerator::DeviceGuard guard(r.get_device_index());
  switch (r.scalar_type()) {
    case ScalarType::Float: return forward_impl<float>(what, d, r, k, v, w, u, s0);
    case ScalarType::BFloat16: return forward_impl<__nv_bfloat16>(what, d, r, k, v, w, u, s0);
    case ScalarType::Half: return forward_impl<__half>(what, d, r, k, v, w, u, s0);
    default: STD_TORCH_CHECK(false, what, ": unsupported dtype on CUDA");
  }
  return {};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> wkv6_backward_cuda(
    Tensor r, Tensor k, Tensor v, Tensor w, Tensor u, Tensor s0, Tensor dy, Tensor dsT) {
  const char* what = "rwkv_vision::wkv6_backward";
  check_all_on_device(what, r, {{"k", &k}, {"v", &v}, {"w", &w}, {"u", &u}, {"initial_state", &s0},
                                {"dy", &dy}, {"dsT", &dsT}});
  const Wkv6Dims d = check_wkv6_inputs(what, r, k, v, w, u, s0);
  check_same_layout(what, "dy", dy, r);
  STD_TORCH_CHECK(dy.scalar_type() == r.scalar_type(), what, ": dy must have the dtype of r");
  check_state(what, "dsT", dsT, d, acc_type(r.scalar_type()));
  check_supported(what, d, r.scalar_type());
  torch::stable::accelerator::DeviceGuard guard(r.get_device_index());
  switch (r.scalar_type()) {
    case ScalarType::Float:
      return backward_impl<float>(what, d, r, k, v, w, u, s0, dy, dsT);
    case ScalarType::BFloat16:
      return backward_impl<__nv_bfloat16>(what, d, r, k, v, w, u, s0, dy, dsT);
    case ScalarType::Half:
      return backward_impl<__half>(what, d, r, k, v, w, u, s0, dy, dsT);
    default: STD_TORCH_CHECK(false, what, ": unsupported dtype on CUDA");
  }
  return {};
}

}  // namespace rwkv_vision
