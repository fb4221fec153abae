// A chunked CUDA forward of the WKV6 recurrence: 16 steps at a time, as tensor-core matrix products.
//
// STATUS: written and compiled without a GPU; it has never run. It is used only when the environment
// variable RWKV_VISION_CUDA_FORWARD=chunked is set, so that the first GPU session can test it
// (tests/ops/test_wkv6_cuda.py runs the forward tests under every kernel) and time it against the
// recurrent kernels (benchmarks/wkv6.py prints all of them) before one of them becomes the default.
//
// Why: the recurrent kernels walk t dependent steps of n multiply-adds per thread, so their time is
// the latency of that chain, not the arithmetic. Here a block walks t / 16 chunks instead, and each
// chunk is three small matrix products that tensor cores do in a few instructions (the algebra is the
// one of ops/wkv6_chunked.py; letters as there, A_t the cumulative log-decay from the chunk start up to
// and including step t, S the n x n state at the chunk start, j key channel, i value channel):
//
//   Y  = (r * exp(A_{t-1})) S  +  P V          P[t][s] = sum_j r_t[j] k_s[j] exp(A_{t-1}[j] - A_s[j]), s < t
//                                              P[t][t] = sum_j r_t[j] u[j] k_t[j]  (the bonus)
//   S' = exp(A_15) * S  +  (k * exp(A_15 - A))^T V
//
// Every exponent is <= 0, so nothing overflows whatever the decays. (An exponent is a difference of
// float32 running sums, so it carries an absolute error of about ulp(|A|): 3e-5 for a chunk's decay of
// e^-300, far past what trained RWKV-6 layers use.) P is formed pair by pair (120
// pairs of n channels per chunk, in float32 on the CUDA cores); the products run on tensor cores in
// TF32 (10-bit mantissa, float32 range and accumulation), about 5e-4 relative error per product.
//
// Parallelism: one block per (batch, head, group of up to 64 value columns). Where b * h is too small
// to fill the GPU (one long sequence), time is also split into G segments run in parallel, in three
// launches: (A) each segment but the last runs from a zero state, keeping only its final state and its
// total decay; (B) a short sequential pass over segments turns those into each segment's true initial
// state; (C) every segment runs from its initial state and writes its outputs. A and C each cost about
// one pass of the arithmetic, so segments are used only where they buy at least 2x parallelism.
//
// Shared memory holds the state columns of the block, the chunk's inputs and the derived tiles; it is
// above the 48 KiB static limit for n >= 64, so it is dynamic and the kernel opts in to more.
#include "cuda/cuda_common.cuh"

#include <mma.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace rwkv_vision {
namespace {

using namespace nvcuda;

constexpr int kL = 16;  // steps per chunk: the height of a WMMA tile
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;

// Shared-memory geometry for head size N. Tiles read by WMMA need row lengths that are a multiple of
// 8 floats (32-byte aligned rows); the raw tiles read only by the pair loop instead get a row length
// of N + 2, so that the 16 rows x 2 channels a warp reads at once fall in 32 different banks.
template <int N>
struct Geometry {
  static constexpr int NC = N < 64 ? N : 64;  // value columns per block
  static constexpr int kGroups = N / NC;
  static constexpr int LDW = N + 8;    // [kL][N] WMMA tiles: r exp(A_prev), k exp(A_last - A)
  static constexpr int LDR = N + 2;    // [kL][N] raw tiles: r, k, A
  static constexpr int LDC = NC + 8;   // [*][NC] tiles: S, v, y
  static constexpr int LDP = kL + 8;   // [kL][kL] tile: P
  // Offsets in floats, each a multiple of 8 (32 bytes).
  static constexpr int round8(int x) { return (x + 7) / 8 * 8; }
  static constexpr int oS = 0;
  static constexpr int oRd = oS + round8(N * LDC);
  static constexpr int oKd = oRd + round8(kL * LDW);
  static constexpr int oV = oKd + round8(kL * LDW);
  static constexpr int oP = oV + round8(kL * LDC);
  static constexpr int oY = oP + round8(kL * LDP);
  static constexpr int oR = oY + round8(kL * LDC);
  static constexpr int oK = oR + round8(kL * LDR);
  static constexpr int oA = oK + round8(kL * LDR);
  static constexpr int oE = oA + round8(kL * LDR);
  static constexpr int oU = oE + round8(N);
  static constexpr int kFloats = oU + round8(N);
  static constexpr size_t kBytes = size_t(kFloats) * sizeof(float);
};

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragAT = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

template <typename Frag>
__device__ __forceinline__ void to_tf32(Frag& f) {
#pragma unroll
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = wmma::__float_to_tf32(f.x[e]);
}

// acc += a (16 x 8K, row-major, leading dimension lda) @ b (8K x 16, row-major, ldb).
template <int K8>
__device__ __forceinline__ void mma_rows(FragC& acc, const float* a, int lda, const float* b, int ldb) {
#pragma unroll
  for (int q = 0; q < K8; ++q) {
    FragA fa;
    FragB fb;
    wmma::load_matrix_sync(fa, a + q * 8, lda);
    wmma::load_matrix_sync(fb, b + q * 8 * ldb, ldb);
    to_tf32(fa);
    to_tf32(fb);
    wmma::mma_sync(acc, fa, fb, acc);
  }
}

// One launch of the chunk loop. kOutputs: phase C (outputs y, and the final state from the last
// segment); otherwise phase A (the segment's final state from a zero start and its total decay).
// Block index = ((bh * segments_launched) + g) * kGroups + group.
template <typename T, int N, bool kOutputs>
__global__ void __launch_bounds__(kThreads)
    wkv6_chunked_forward_kernel(int64_t T_, int64_t H, int64_t seg_len, int segments,
                                int segments_launched, const T* __restrict__ r,
                                const T* __restrict__ k, const T* __restrict__ v,
                                const float* __restrict__ w, const float* __restrict__ u,
                                const float* __restrict__ s0, float* __restrict__ seg_state,
                                float* __restrict__ seg_decay, T* __restrict__ y,
                                float* __restrict__ sT) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // TF32 tensor cores need sm_80; the host never launches this on older devices
#else
  using G = Geometry<N>;
  constexpr int NC = G::NC, LDW = G::LDW, LDR = G::LDR, LDC = G::LDC, LDP = G::LDP;
  constexpr int64_t NN = int64_t(N) * N;
  extern __shared__ __align__(128) float smem[];
  float* sS = smem + G::oS;    // [N][LDC]  state columns col0 .. col0 + NC
  float* sRd = smem + G::oRd;  // [kL][LDW] r_t exp(A_{t-1})
  float* sKd = smem + G::oKd;  // [kL][LDW] k_s exp(A_15 - A_s)
  float* sV = smem + G::oV;    // [kL][LDC] v, this block's columns
  float* sP = smem + G::oP;    // [kL][LDP] P (lower triangle and diagonal)
  float* sY = smem + G::oY;    // [kL][LDC] y before conversion
  float* sR = smem + G::oR;    // [kL][LDR] r
  float* sK = smem + G::oK;    // [kL][LDR] k
  float* sA = smem + G::oA;    // [kL][LDR] w, then A (inclusive cumulative sum)
  float* sE = smem + G::oE;    // [N] exp(A_15): the chunk's decay of the state rows
  float* sU = smem + G::oU;    // [N] u

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int group = blockIdx.x % G::kGroups;
  const int64_t seg_block = blockIdx.x / G::kGroups;
  const int g = int(seg_block % segments_launched);
  const int64_t bh = seg_block / segments_launched, b = bh / H, h = bh % H;
  const int col0 = group * NC;
  const int64_t t_begin = g * seg_len;
  const int64_t t_end = t_begin + seg_len < T_ ? t_begin + seg_len : T_;
  const int64_t stride = H * N;
  const int64_t base = (b * T_ * H + h) * N;  // element (b, t, h, c) is at base + t * stride + c

  // The initial state: s0 for the first segment, the state phase B left for the others, zero in A.
  const float* init = nullptr;
  if (kOutputs) init = g == 0 ? s0 + bh * NN : seg_state + (bh * (segments - 1) + g - 1) * NN;
  for (int e = tid; e < N * NC; e += kThreads) {
    const int j = e / NC, i = e % NC;
    sS[j * LDC + i] = init ? init[j * N + col0 + i] : 0.f;
  }
  for (int c = tid; c < N; c += kThreads) sU[c] = u[h * N + c];
  float total_log_decay = 0.f;  // phase A, thread c < N: sum of w over the segment
  __syncthreads();

  for (int64_t t0 = t_begin; t0 < t_end; t0 += kL) {
    // 1. The chunk's inputs. Steps past the segment get r = k = v = 0 and w = 0 (no input, no decay),
    //    which leaves both the kept outputs and the state unchanged.
    for (int e = tid; e < kL * N; e += kThreads) {
      const int s = e / N, c = e % N;
      const int64_t t = t0 + s;
      float rv = 0.f, kv = 0.f, wv = 0.f;
      if (t < t_end) {
        const int64_t off = base + t * stride + c;
        rv = to_f(r[off]);
        kv = to_f(k[off]);
        wv = w[off];
      }
      sR[s * LDR + c] = rv;
      sK[s * LDR + c] = kv;
      sA[s * LDR + c] = wv;
    }
    for (int e = tid; e < kL * NC; e += kThreads) {
      const int s = e / NC, i = e % NC;
      const int64_t t = t0 + s;
      sV[s * LDC + i] = t < t_end ? to_f(v[base + t * stride + col0 + i]) : 0.f;
    }
    __syncthreads();

    // 2. A, one key channel per thread (kThreads >= N).
    if (tid < N) {
      float a = 0.f;
#pragma unroll
      for (int s = 0; s < kL; ++s) {
        a += sA[s * LDR + tid];
        sA[s * LDR + tid] = a;
      }
      sE[tid] = __expf(a);
      total_log_decay += a;
    }
    __syncthreads();

    // 3. The decayed tiles, and P.
    for (int e = tid; e < kL * N; e += kThreads) {
      const int s = e / N, c = e % N;
      const float a = sA[s * LDR + c];
      const float a_prev = s > 0 ? sA[(s - 1) * LDR + c] : 0.f;
      const float a_last = sA[(kL - 1) * LDR + c];
      sKd[s * LDW + c] = sK[s * LDR + c] * __expf(a_last - a);
      if (kOutputs) sRd[s * LDW + c] = sR[s * LDR + c] * __expf(a_prev);
    }
    if (kOutputs) {
      // A warp takes a row t of P; its lane 2s + p sums channels p, p + 2, ... of entry (t, s), and the
      // two halves meet through one shuffle. Entries above the diagonal come out 0.
      const int s = lane / 2, p = lane % 2;
      for (int t = warp; t < kL; t += kWarps) {
        float acc = 0.f;
        for (int c = p; c < N; c += 2) {
          const float a_prev = t > 0 ? sA[(t - 1) * LDR + c] : 0.f;
          const float x = a_prev - sA[s * LDR + c];  // <= 0 where it is used (s < t)
          const float coef = s < t ? __expf(x) : (s == t ? sU[c] : 0.f);
          acc = fmaf(sR[t * LDR + c] * sK[s * LDR + c], coef, acc);
        }
        acc += __shfl_xor_sync(0xffffffffu, acc, 1);
        if (p == 0) sP[t * LDP + s] = acc;
      }
    }
    __syncthreads();

    // 4. Y = Rd S + P V, one 16-column tile per warp.
    if (kOutputs) {
      for (int tile = warp; tile < NC / 16; tile += kWarps) {
        const int cn = tile * 16;
        FragC acc;
        wmma::fill_fragment(acc, 0.f);
        mma_rows<N / 8>(acc, sRd, LDW, sS + cn, LDC);
        mma_rows<kL / 8>(acc, sP, LDP, sV + cn, LDC);
        wmma::store_matrix_sync(sY + cn, acc, LDC, wmma::mem_row_major);
      }
      __syncthreads();
      for (int e = tid; e < kL * NC; e += kThreads) {
        const int s = e / NC, i = e % NC;
        const int64_t t = t0 + s;
        if (t < t_end) y[base + t * stride + col0 + i] = from_f<T>(sY[s * LDC + i]);
      }
    }

    // 5. S = exp(A_15) * S + Kd^T V: scale the rows, then one 16 x 16 tile per warp at a time.
    for (int e = tid; e < N * NC; e += kThreads) {
      const int j = e / NC, i = e % NC;
      sS[j * LDC + i] *= sE[j];
    }
    __syncthreads();
    for (int tile = warp; tile < (N / 16) * (NC / 16); tile += kWarps) {
      const int jm = (tile / (NC / 16)) * 16, cn = (tile % (NC / 16)) * 16;
      FragC acc;
      wmma::load_matrix_sync(acc, sS + jm * LDC + cn, LDC, wmma::mem_row_major);
#pragma unroll
      for (int q = 0; q < kL / 8; ++q) {
        // Kd^T as a column-major matrix_a: element (j, s) is sKd[s][j].
        FragAT fa;
        FragB fb;
        wmma::load_matrix_sync(fa, sKd + q * 8 * LDW + jm, LDW);
        wmma::load_matrix_sync(fb, sV + q * 8 * LDC + cn, LDC);
        to_tf32(fa);
        to_tf32(fb);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(sS + jm * LDC + cn, acc, LDC, wmma::mem_row_major);
    }
    __syncthreads();
  }

  // The state after the segment: sT for the last segment of phase C, the segment slot in phase A.
  float* dst = nullptr;
  if (kOutputs) {
    if (g == segments - 1) dst = sT + bh * NN;
  } else {
    dst = seg_state + (bh * (segments - 1) + g) * NN;
    if (group == 0 && tid < N) seg_decay[(bh * (segments - 1) + g) * N + tid] = __expf(total_log_decay);
  }
  if (dst != nullptr) {
    for (int e = tid; e < N * NC; e += kThreads) {
      const int j = e / NC, i = e % NC;
      dst[j * N + col0 + i] = sS[j * LDC + i];
    }
  }
#endif
}

// Phase B: slot g (g < G - 1) holds segment g's final state from a zero start; replace it by the true
// state entering segment g + 1, S_{g+1} = decay_g * S_g + slot_g, S_0 = s0. One block per (b, h), one
// thread per few state elements, sequential over segments.
__global__ void wkv6_chunked_combine_kernel(int N, int segments, const float* __restrict__ s0,
                                            float* __restrict__ seg_state,
                                            const float* __restrict__ seg_decay) {
  const int64_t bh = blockIdx.x, NN = int64_t(N) * N;
  for (int64_t e = threadIdx.x; e < NN; e += blockDim.x) {
    const int64_t j = e / N;
    float cur = s0[bh * NN + e];
    for (int g = 0; g + 1 < segments; ++g) {
      const int64_t slot = bh * (segments - 1) + g;
      cur = fmaf(seg_decay[slot * N + j], cur, seg_state[slot * NN + e]);
      seg_state[slot * NN + e] = cur;
    }
  }
}

int multiprocessors(int device) {
  int count = 0;
  if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return 132;
  }
  return count;
}

// G: RWKV_VISION_CUDA_SEGMENTS if set; otherwise enough segments for about two blocks per
// multiprocessor, each segment at least 8 chunks long (shorter ones pay more for phase A than they
// gain).
int64_t choose_segments(const char* what, int64_t blocks, int64_t chunks, int device) {
  if (const char* forced = std::getenv("RWKV_VISION_CUDA_SEGMENTS")) {
    char* end = nullptr;
    const long value = std::strtol(forced, &end, 10);
    STD_TORCH_CHECK(end != forced && *end == '\0' && value >= 1, what,
                    ": RWKV_VISION_CUDA_SEGMENTS must be a positive integer, got '", forced, "'");
    return std::min<int64_t>(value, chunks);
  }
  const int64_t target = 2 * int64_t(multiprocessors(device));
  if (blocks >= target) return 1;
  const int64_t wanted = (target + blocks - 1) / blocks;
  return std::max<int64_t>(1, std::min<int64_t>(wanted, chunks / 8));
}

template <typename T, int N, bool kOutputs>
void launch_phase(const char* what, int64_t grid, const Wkv6Dims& d, int64_t seg_len, int segments,
                  int launched, const Tensor& r, const Tensor& k, const Tensor& v, const Tensor& w,
                  const Tensor& u, const Tensor& s0, float* seg_state, float* seg_decay, T* y,
                  float* sT, cudaStream_t stream) {
  using G = Geometry<N>;
  auto kernel = wkv6_chunked_forward_kernel<T, N, kOutputs>;
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(G::kBytes));
  STD_TORCH_CHECK(err == cudaSuccess, what, ": the chunked forward needs ", G::kBytes,
                  " bytes of shared memory per block: ", cudaGetErrorString(err));
  kernel<<<static_cast<unsigned>(grid), kThreads, G::kBytes, stream>>>(
      d.T, d.H, seg_len, segments, launched, cptr<T>(r), cptr<T>(k), cptr<T>(v), cptr<float>(w),
      cptr<float>(u), cptr<float>(s0), seg_state, seg_decay, y, sT);
  check_launch(what, "wkv6_chunked_forward_kernel");
}

template <typename T, int N>
void launch(const char* what, const Wkv6Dims& d, const Tensor& r, const Tensor& k, const Tensor& v,
            const Tensor& w, const Tensor& u, const Tensor& s0, Tensor& y, Tensor& sT,
            cudaStream_t stream) {
  using G = Geometry<N>;
  const int device = r.get_device_index();
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    (void)cudaGetLastError();
  }
  STD_TORCH_CHECK(major >= 8, what,
                  ": RWKV_VISION_CUDA_FORWARD=chunked needs a GPU of compute capability 8.0 or newer "
                  "(TF32 tensor cores); this one is ", major, ".x");
  const int64_t chunks = (d.T + kL - 1) / kL;
  const int64_t per_segment = d.B * d.H * G::kGroups;
  int64_t segments = choose_segments(what, per_segment, chunks, device);
  const int64_t seg_chunks = (chunks + segments - 1) / segments;
  segments = (chunks + seg_chunks - 1) / seg_chunks;  // no empty segment
  const int64_t seg_len = seg_chunks * kL;
  STD_TORCH_CHECK(per_segment * segments <= int64_t(INT_MAX), what, ": b * h * segments = ",
                  per_segment * segments, " exceeds the CUDA grid limit");
  const int G_ = static_cast<int>(segments);

  Tensor seg_state = s0, seg_decay = s0;  // placeholders, unused when there is one segment
  float* p_state = nullptr;
  float* p_decay = nullptr;
  if (G_ > 1) {
    seg_state = torch::stable::new_empty(s0, {d.B, d.H, segments - 1, d.N, d.N});
    seg_decay = torch::stable::new_empty(s0, {d.B, d.H, segments - 1, d.N});
    p_state = mptr<float>(seg_state);
    p_decay = mptr<float>(seg_decay);
    launch_phase<T, N, false>(what, per_segment * (G_ - 1), d, seg_len, G_, G_ - 1, r, k, v, w, u,
                              s0, p_state, p_decay, nullptr, nullptr, stream);
    wkv6_chunked_combine_kernel<<<static_cast<unsigned>(d.B * d.H), 256, 0, stream>>>(
        N, G_, cptr<float>(s0), p_state, p_decay);
    check_launch(what, "wkv6_chunked_combine_kernel");
  }
  launch_phase<T, N, true>(what, per_segment * G_, d, seg_len, G_, G_, r, k, v, w, u, s0, p_state,
                           p_decay, mptr<T>(y), mptr<float>(sT), stream);
}

}  // namespace

template <typename T>
void wkv6_forward_chunked_launch(const char* what, const Wkv6Dims& d, const Tensor& r,
                                 const Tensor& k, const Tensor& v, const Tensor& w, const Tensor& u,
                                 const Tensor& s0, Tensor& y, Tensor& sT, cudaStream_t stream) {
  switch (d.N) {
    case 32: launch<T, 32>(what, d, r, k, v, w, u, s0, y, sT, stream); break;
    case 64: launch<T, 64>(what, d, r, k, v, w, u, s0, y, sT, stream); break;
    case 128: launch<T, 128>(what, d, r, k, v, w, u, s0, y, sT, stream); break;
    default: STD_TORCH_CHECK(false, what, ": unsupported head size n = ", d.N);
  }
}

#define RWKV_VISION_INSTANTIATE(T)                                                                 \
  template void wkv6_forward_chunked_launch<T>(const char*, const Wkv6Dims&, const Tensor&,        \
                                               const Tensor&, const Tensor&, const Tensor&,        \
                                               const Tensor&, const Tensor&, Tensor&, Tensor&,     \
                                               cudaStream_t);
RWKV_VISION_INSTANTIATE(float)
RWKV_VISION_INSTANTIATE(__nv_bfloat16)
RWKV_VISION_INSTANTIATE(__half)
#undef RWKV_VISION_INSTANTIATE

}  // namespace rwkv_vision
