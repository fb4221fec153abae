// The split CUDA forward kernel of the WKV6 recurrence, four threads per state column (Wkv6Kernel::
// kCudaSplit; its backward is the recurrent one of wkv6_cuda.cu).
//
// Why: the recurrent forward (wkv6_cuda.cu) has one thread per value channel, so a (b, h) block
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
#include "cuda/wkv6_forward_split_kernel.cuh"

namespace rwkv_vision {
namespace {

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
