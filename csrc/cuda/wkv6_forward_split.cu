// A second CUDA forward kernel of the WKV6 recurrence, with four threads per state column.
//
// STATUS: written and compiled without a GPU; it has never run. It is used only when the environment
// variable RWKV_VISION_CUDA_FORWARD=split is set, so that the first GPU session can test it
// (tests/ops/test_wkv6_cuda.py runs every forward test under both kernels) and time it against the
// default one-thread-per-column kernel (benchmarks/wkv6.py prints both) before making it the default.
//
// Why it should be faster: the default forward has one thread per value channel, so a (b, h) block
// is n threads and the whole launch is b * h * n threads: at b = 8, h = 32, n = 64 that is 512 warps
// for 132 SMs, about one warp per scheduler, with no other warp to run while one waits on shared
// memory or on its 64-long chain of dependent multiply-adds into y. Here each column is shared by P = 4
// adjacent lanes, each owning every fourth row of it (rows p, p + 4, ...; interleaved so that the four
// lanes read four consecutive shared-memory words, conflict-free). The lanes' partial sums for y meet
// through two warp shuffles. Four times the warps, a quarter of the dependent chain, the same total
// arithmetic. The 4n threads of a block also load the step's four vectors r, k, w, v one element each,
// one step ahead in registers, into double-buffered shared memory (one __syncthreads per step, as in
// wkv6_cuda.cu).
#include "cuda/cuda_common.cuh"


namespace rwkv_vision {
namespace {

constexpr int kLanesPerColumn = 4;

template <typename T, int N>
__global__ void __launch_bounds__(kLanesPerColumn * N)
    wkv6_forward_split_kernel(int64_t T_, int64_t H, const T* __restrict__ r,
                              const T* __restrict__ k, const T* __restrict__ v,
                              const float* __restrict__ w, const float* __restrict__ u,
                              const float* __restrict__ s0, T* __restrict__ y,
                              float* __restrict__ sT) {
  constexpr int P = kLanesPerColumn;
  constexpr int R = N / P;  // rows per thread
  constexpr int64_t NN = int64_t(N) * N;
  const int64_t bh = blockIdx.x, b = bh / H, h = bh % H;
  const int tid = threadIdx.x;
  const int i = tid / P;  // the column (value channel) this thread works on
  const int p = tid % P;  // its rows: j = q * P + p
  const int vec = tid / N;  // which step vector this thread loads: 0 r, 1 k, 2 w, 3 v (warp-uniform)
  const int c = tid % N;    // and which element of it
  const int64_t stride = H * N;
  const int64_t base = (b * T_ * H + h) * N;

  __shared__ __align__(16) float sm[2][4][N];  // [parity][r, k, exp(w), v][channel]

  float S[R], uu[R];
  {
    const float* src = s0 + bh * NN;
#pragma unroll
    for (int q = 0; q < R; ++q) {
      S[q] = src[(q * P + p) * N + i];
      uu[q] = u[h * N + q * P + p];
    }
  }

  auto load = [&](int64_t t) -> float {
    const int64_t off = base + t * stride + c;
    switch (vec) {
      case 0: return to_f(r[off]);
      case 1: return to_f(k[off]);
      case 2: return w[off];
      default: return to_f(v[off]);
    }
  };

  float next = load(0);
  int par = 0;
  for (int64_t t = 0; t < T_; ++t) {
    const float cur = next;
    if (t + 1 < T_) next = load(t + 1);
    sm[par][vec][c] = vec == 2 ? __expf(cur) : cur;
    __syncthreads();
    const float vi = sm[par][3][i];
    float acc = 0.f;
#pragma unroll
    for (int q = 0; q < R; ++q) {
      const int j = q * P + p;
      const float rj = sm[par][0][j], kj = sm[par][1][j], ej = sm[par][2][j];
      acc = fmaf(rj, fmaf(uu[q] * kj, vi, S[q]), acc);
      S[q] = fmaf(ej, S[q], kj * vi);
    }
    // The P lanes of a column are adjacent (P divides 32), so two xor-shuffles sum them.
    acc += __shfl_xor_sync(0xffffffffu, acc, 1);
    acc += __shfl_xor_sync(0xffffffffu, acc, 2);
    if (p == 0) y[base + t * stride + i] = from_f<T>(acc);
    par ^= 1;
  }

  float* dst = sT + bh * NN;
#pragma unroll
  for (int q = 0; q < R; ++q) dst[(q * P + p) * N + i] = S[q];
}

template <typename T, int N>
void launch(const Wkv6Dims& d, const Tensor& r, const Tensor& k, const Tensor& v, const Tensor& w,
            const Tensor& u, const Tensor& s0, Tensor& y, Tensor& sT, cudaStream_t stream,
            const char* what) {
  static_assert(N % 32 == 0 && 32 % kLanesPerColumn == 0, "a column's lanes must share a warp");
  wkv6_forward_split_kernel<T, N><<<static_cast<unsigned>(d.B * d.H), kLanesPerColumn * N, 0, stream>>>(
      d.T, d.H, cptr<T>(r), cptr<T>(k), cptr<T>(v), cptr<float>(w), cptr<float>(u),
      cptr<float>(s0), mptr<T>(y), mptr<float>(sT));
  check_launch(what, "wkv6_forward_split_kernel");
}

}  // namespace

template <typename T>
void wkv6_forward_split_launch(const char* what, const Wkv6Dims& d, const Tensor& r,
                               const Tensor& k, const Tensor& v, const Tensor& w, const Tensor& u,
                               const Tensor& s0, Tensor& y, Tensor& sT, cudaStream_t stream) {
  switch (d.N) {
    case 32: launch<T, 32>(d, r, k, v, w, u, s0, y, sT, stream, what); break;
    case 64: launch<T, 64>(d, r, k, v, w, u, s0, y, sT, stream, what); break;
    case 128: launch<T, 128>(d, r, k, v, w, u, s0, y, sT, stream, what); break;
    default: STD_TORCH_CHECK(false, what, ": unsupported head size n = ", d.N);
  }
}

template void wkv6_forward_split_launch<float>(const char*, const Wkv6Dims&, const Tensor&,
                                               const Tensor&, const Tensor&, const Tensor&,
                                               const Tensor&, const Tensor&, Tensor&, Tensor&,
                                               cudaStream_t);
template void wkv6_forward_split_launch<__nv_bfloat16>(const char*, const Wkv6Dims&, const Tensor&,
                                                       const Tensor&, const Tensor&, const Tensor&,
                                                       const Tensor&, const Tensor&, Tensor&,
                                                       Tensor&, cudaStream_t);
template void wkv6_forward_split_launch<__half>(const char*, const Wkv6Dims&, const Tensor&,
                                                const Tensor&, const Tensor&, const Tensor&,
                                                const Tensor&, const Tensor&, Tensor&, Tensor&,
                                                cudaStream_t);

}  // namespace rwkv_vision
