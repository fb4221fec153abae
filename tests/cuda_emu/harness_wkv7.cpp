// Runs rwkv_vision's WKV7 CUDA kernels (csrc/cuda/wkv7_kernels.cuh: the very source the GPU build
// compiles) on the CPU through emu.h, for tests/ops/test_wkv7_cuda_emulated.py.
//
//   harness_wkv7 seq DIR B T H N S     forward, then backward (both kernels), as wkv7_cuda.cu launches them;
//                                      S = 0: not packed (S = B sequences); S >= 1: DIR/cu.bin holds the
//                                      S + 1 int64 cu_seqlens offsets (B must be 1)
//   harness_wkv7 step DIR B H N        the decoding step, as wkv7_step_cuda.cu launches it
//
// seq reads DIR/{r,w,k,v,a,b,dy}.bin [B, T, H, N] and s0.bin, dsT.bin [S, H, N, N] (float32, native byte
// order) and writes y, sT, dr, dw, dk, dv, da, db, ds0 to DIR/<name>.bin. step reads r, w, k, v, a, b
// [B, H, N] and s0.bin (the state) and writes y [B, H, N] and state. Every output and every scratch buffer
// starts as NaN, so anything a kernel fails to write, or reads before writing, shows.
#include "cuda/wkv7_kernels.cuh"

#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

using Vec = std::vector<float>;

template <typename X>
std::vector<X> read(const std::string& path, size_t count) {
  std::vector<X> data(count);
  std::ifstream in(path, std::ios::binary);
  if (count && !in.read(reinterpret_cast<char*>(data.data()), std::streamsize(count * sizeof(X))))
    throw std::runtime_error("cannot read " + std::to_string(count) + " values from " + path);
  return data;
}

void write(const std::string& path, const Vec& data) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size() * sizeof(float)));
}

Vec nans(size_t n) { return Vec(n, std::nanf("")); }

template <int N>
void run_seq(const std::string& dir, int64_t B, int64_t T, int64_t H, int64_t S_arg) {
  const bool packed = S_arg > 0;
  const int64_t S = packed ? S_arg : B;
  if (packed && B != 1) throw std::runtime_error("packed sequences need B = 1");
  const size_t seq = size_t(B * T * H * N), state = size_t(S * H * N * N);
  const Vec r = read<float>(dir + "/r.bin", seq), w = read<float>(dir + "/w.bin", seq),
            k = read<float>(dir + "/k.bin", seq), v = read<float>(dir + "/v.bin", seq),
            a = read<float>(dir + "/a.bin", seq), b = read<float>(dir + "/b.bin", seq),
            dy = read<float>(dir + "/dy.bin", seq), s0 = read<float>(dir + "/s0.bin", state),
            dsT = read<float>(dir + "/dsT.bin", state);
  std::vector<int64_t> cu_host;
  if (packed) cu_host = read<int64_t>(dir + "/cu.bin", size_t(S + 1));
  const int64_t* cu = packed ? cu_host.data() : nullptr;
  Vec y = nans(seq), sT = nans(state), dr = nans(seq), dw = nans(seq), dk = nans(seq), dv = nans(seq),
      da = nans(seq), db = nans(seq), ds0 = nans(state);

  const dim3 grid{unsigned(S * H)}, threads{unsigned(N)};
  emu::launch(grid, threads, 0, [&] {
    rwkv_vision::wkv7_forward_kernel<float, N>(T, H, cu, r.data(), w.data(), k.data(), v.data(), a.data(),
                                               b.data(), s0.data(), y.data(), sT.data());
  });

  // wkv7_cuda.cu's backward_impl / backward_launch.
  const rwkv_vision::Wkv7BackwardPlan p = rwkv_vision::wkv7_plan_backward(B, T, H, N, S, packed);
  Vec scratch = nans(size_t(2 * p.seq_numel + p.ckpt_numel + p.block_numel));
  float* sa = scratch.data();
  float* dsa = sa + p.seq_numel;
  float* ckpt = dsa + p.seq_numel;
  float* blocks = ckpt + p.ckpt_numel;
  emu::launch(grid, threads, 0, [&] {
    rwkv_vision::wkv7_backward_cols_kernel<float, N>(T, H, p.C, cu, r.data(), w.data(), k.data(), v.data(),
                                                     a.data(), b.data(), s0.data(), dy.data(), dsT.data(),
                                                     dv.data(), ds0.data(), sa, dsa, ckpt);
  });
  emu::launch(grid, threads, 0, [&] {
    rwkv_vision::wkv7_backward_rows_kernel<float, N>(T, H, p.C, cu, r.data(), w.data(), k.data(), v.data(),
                                                     a.data(), b.data(), dy.data(), dsT.data(), sa, dsa, ckpt,
                                                     blocks, dr.data(), dw.data(), dk.data(), da.data(),
                                                     db.data());
  });
  for (const auto& [name, data] : {std::pair<const char*, const Vec*>{"y", &y}, {"sT", &sT}, {"dr", &dr},
                                   {"dw", &dw}, {"dk", &dk}, {"dv", &dv}, {"da", &da}, {"db", &db},
                                   {"ds0", &ds0}})
    write(dir + "/" + name + ".bin", *data);
  std::printf("ok: checkpoints every %lld steps, %lld slots\n", static_cast<long long>(p.C),
              static_cast<long long>(p.slots));
}

template <int N>
void run_step(const std::string& dir, int64_t B, int64_t H) {
  const size_t vec = size_t(B * H * N);
  const Vec r = read<float>(dir + "/r.bin", vec), w = read<float>(dir + "/w.bin", vec),
            k = read<float>(dir + "/k.bin", vec), v = read<float>(dir + "/v.bin", vec),
            a = read<float>(dir + "/a.bin", vec), b = read<float>(dir + "/b.bin", vec);
  Vec state = read<float>(dir + "/s0.bin", size_t(B * H * N * N)), y = nans(vec);
  emu::launch(dim3{unsigned(B * H)}, dim3{unsigned(N)}, 0, [&] {
    rwkv_vision::wkv7_step_kernel<float, N>(r.data(), w.data(), k.data(), v.data(), a.data(), b.data(),
                                            state.data(), y.data());
  });
  write(dir + "/y.bin", y);
  write(dir + "/state.bin", state);
  std::printf("ok\n");
}

template <typename Fn>
void for_head_size(int64_t n, Fn&& fn) {
  switch (n) {
    case 32: fn(std::integral_constant<int, 32>{}); break;
    case 64: fn(std::integral_constant<int, 64>{}); break;
    case 128: fn(std::integral_constant<int, 128>{}); break;
    default: throw std::runtime_error("N must be 32, 64 or 128");
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::vector<std::string> a(argv + 1, argv + argc);
    if (a.size() == 7 && a[0] == "seq") {
      const int64_t B = std::stoll(a[2]), T = std::stoll(a[3]), H = std::stoll(a[4]), S = std::stoll(a[6]);
      for_head_size(std::stoll(a[5]), [&](auto n) { run_seq<decltype(n)::value>(a[1], B, T, H, S); });
    } else if (a.size() == 5 && a[0] == "step") {
      const int64_t B = std::stoll(a[2]), H = std::stoll(a[3]);
      for_head_size(std::stoll(a[4]), [&](auto n) { run_step<decltype(n)::value>(a[1], B, H); });
    } else {
      std::fprintf(stderr, "usage: harness_wkv7 seq DIR B T H N S | step DIR B H N\n");
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
