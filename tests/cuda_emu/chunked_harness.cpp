// Runs the chunked WKV6 CUDA kernels (csrc/cuda/wkv6_chunked_kernels.cuh, the very source the GPU
// build compiles) on the CPU through emu.h, for tests/ops/test_wkv6_chunked_emulated.py.
//
//   chunked_harness DIR B T H N SEGMENTS
//
// reads DIR/{r,k,v,w,dy}.bin [B, T, H, N], u.bin [H, N], s0.bin and dsT.bin [B, H, N, N] (float32,
// native byte order), runs the forward (y, sT) and the backward (dr, dk, dv, dw, du, ds0) with
// SEGMENTS time segments, and writes each result to DIR/<name>.bin. The launch sequence is that of
// run_forward / run_backward in csrc/cuda/wkv6_chunked_cuda.cu, with the segment count given.
//
//   chunked_harness --selftest
//
// checks that the emulator catches a missing __syncthreads and a deadlock (exit 0 when it does).
#include "cuda/wkv6_chunked_kernels.cuh"

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

namespace {

using rwkv_vision::Pass;
using Vec = std::vector<float>;

Vec read(const std::string& path, size_t count) {
  Vec data(count);
  std::ifstream in(path, std::ios::binary);
  if (!in.read(reinterpret_cast<char*>(data.data()), std::streamsize(count * sizeof(float))))
    throw std::runtime_error("cannot read " + std::to_string(count) + " floats from " + path);
  return data;
}

void write(const std::string& path, const Vec& data) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size() * sizeof(float)));
}

struct Dims {
  int64_t B, T, H, N;
};

// The host's choice made explicit: `wanted` segments, none empty.
std::pair<int, int64_t> segments_for(int64_t wanted, int64_t chunks) {
  wanted = std::min(wanted, chunks);
  const int64_t seg_chunks = (chunks + wanted - 1) / wanted;
  return {int((chunks + seg_chunks - 1) / seg_chunks), seg_chunks};
}

template <int N, Pass kPass>
void run_forward(const Dims& d, int64_t wanted, const Vec& r, const Vec& k, const Vec& v, const Vec& w,
                 const Vec& u, const Vec& s0, float* states, float* y, float* sT) {
  using G = rwkv_vision::FwdGeometry<N>;
  const int64_t chunks = (d.T + rwkv_vision::kL - 1) / rwkv_vision::kL;
  const int64_t blocks = d.B * d.H * G::kGroups;
  const auto [segments, seg_chunks] = segments_for(wanted, chunks);
  const int64_t seg_len = seg_chunks * rwkv_vision::kL;
  Vec seg_state(size_t(d.B * d.H * (segments - 1) * N * N), std::nanf(""));
  Vec seg_decay(size_t(d.B * d.H * (segments - 1) * N), std::nanf(""));
  auto pass = [&](auto kernel, int launched, float* st, float* yy) {
    emu::launch(dim3{unsigned(blocks * launched)}, dim3{unsigned(rwkv_vision::kFwdThreads)}, G::kBytes, [&] {
      kernel(d.T, d.H, seg_len, segments, launched, chunks, r.data(), k.data(), v.data(), w.data(), u.data(),
             s0.data(), seg_state.data(), seg_decay.data(), st, yy, sT);
    });
  };
  if (segments > 1) {
    pass(rwkv_vision::wkv6_chunked_forward_kernel<float, N, Pass::kLocal>, segments - 1, nullptr, nullptr);
    emu::launch(dim3{unsigned(d.B * d.H)}, dim3{256}, 0, [&] {
      rwkv_vision::wkv6_chunked_combine_kernel(N, segments, false, s0.data(), seg_state.data(), seg_decay.data());
    });
  }
  pass(rwkv_vision::wkv6_chunked_forward_kernel<float, N, kPass>, segments, states, y);
}

template <int N>
void run(const std::string& dir, const Dims& d, int64_t wanted) {
  const size_t seq = size_t(d.B * d.T * d.H * N), state = size_t(d.B * d.H * N * N);
  const Vec r = read(dir + "/r.bin", seq), k = read(dir + "/k.bin", seq), v = read(dir + "/v.bin", seq),
            w = read(dir + "/w.bin", seq), dy = read(dir + "/dy.bin", seq), u = read(dir + "/u.bin", size_t(d.H * N)),
            s0 = read(dir + "/s0.bin", state), dsT = read(dir + "/dsT.bin", state);
  // Outputs start as NaN: anything a kernel fails to write shows.
  Vec y(seq, std::nanf("")), sT(state, std::nanf(""));
  run_forward<N, Pass::kOutputs>(d, wanted, r, k, v, w, u, s0, nullptr, y.data(), sT.data());
  write(dir + "/y.bin", y);
  write(dir + "/sT.bin", sT);

  const int64_t chunks = (d.T + rwkv_vision::kL - 1) / rwkv_vision::kL;
  Vec states(size_t(d.B * d.H * chunks * N * N), std::nanf(""));
  run_forward<N, Pass::kStates>(d, wanted, r, k, v, w, u, s0, states.data(), nullptr, nullptr);

  using G = rwkv_vision::BwdGeometry<N>;
  const auto [segments, seg_chunks] = segments_for(wanted, chunks);
  const int64_t seg_len = seg_chunks * rwkv_vision::kL, blocks = d.B * d.H;
  Vec seg_dstate(size_t(blocks * (segments - 1) * N * N), std::nanf(""));
  Vec seg_decay(size_t(blocks * (segments - 1) * N), std::nanf(""));
  Vec dr(seq, std::nanf("")), dk(seq, std::nanf("")), dv(seq, std::nanf("")), dw(seq, std::nanf(""));
  Vec ds0(state, std::nanf("")), du(size_t(d.H * N), std::nanf(""));
  Vec du_part(size_t(d.B * segments * d.H * N), std::nanf(""));
  auto pass = [&](auto kernel, int launched, bool full) {
    emu::launch(dim3{unsigned(blocks * launched)}, dim3{unsigned(rwkv_vision::kBwdThreads)}, G::kBytes, [&] {
      kernel(d.T, d.H, seg_len, segments, chunks, r.data(), k.data(), v.data(), w.data(), u.data(), dy.data(),
             dsT.data(), states.data(), seg_dstate.data(), seg_decay.data(), full ? dr.data() : nullptr,
             full ? dk.data() : nullptr, full ? dv.data() : nullptr, full ? dw.data() : nullptr,
             full ? ds0.data() : nullptr, full ? du_part.data() : nullptr);
    });
  };
  if (segments > 1) {
    pass(rwkv_vision::wkv6_chunked_backward_kernel<float, N, false>, segments - 1, false);
    emu::launch(dim3{unsigned(blocks)}, dim3{256}, 0, [&] {
      rwkv_vision::wkv6_chunked_combine_kernel(N, segments, true, dsT.data(), seg_dstate.data(), seg_decay.data());
    });
  }
  pass(rwkv_vision::wkv6_chunked_backward_kernel<float, N, true>, segments, true);
  const int64_t HN = d.H * N;
  emu::launch(dim3{unsigned((HN + 255) / 256)}, dim3{256}, 0, [&] {
    rwkv_vision::wkv6_chunked_du_kernel(d.B * segments, HN, du_part.data(), du.data());
  });
  for (const auto& [name, data] : {std::pair<const char*, const Vec*>{"dr", &dr}, {"dk", &dk}, {"dv", &dv},
                                   {"dw", &dw}, {"du", &du}, {"ds0", &ds0}})
    write(dir + "/" + name + ".bin", *data);
  std::printf("ok: %d segments, %lld chunks\n", segments, static_cast<long long>(chunks));
}

// --selftest: a kernel that reads what thread 0 wrote, without and with a barrier between; and one
// whose threads wait at a barrier only half of them reach.
float* g_out;

void racy_kernel(bool with_barrier) {
  float* smem = rwkv_vision::dynamic_shared_floats();
  if (threadIdx.x == 0) smem[0] = 42.f;
  if (with_barrier) __syncthreads();
  g_out[threadIdx.x] = smem[0];
}

void half_barrier_kernel() {
  if (threadIdx.x < 32) __syncthreads();
}

int selftest() {
  Vec out(64);
  g_out = out.data();
  emu::launch(dim3{1}, dim3{64}, 64, [] { racy_kernel(true); });
  bool synced = true;
  for (float x : out) synced = synced && x == 42.f;
  emu::launch(dim3{1}, dim3{64}, 64, [] { racy_kernel(false); });
  bool race_seen = false;  // some thread ran to its read before thread 0 had written
  for (float x : out) race_seen = race_seen || !(x == 42.f);
  bool deadlock_seen = false;
  try {
    emu::launch(dim3{1}, dim3{64}, 0, [] { half_barrier_kernel(); });
  } catch (const std::runtime_error&) {
    deadlock_seen = true;
  }
  std::printf("synced %d, race seen %d, bad barrier seen %d\n", synced, race_seen, deadlock_seen);
  return synced && race_seen && deadlock_seen ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc == 2 && std::string(argv[1]) == "--selftest") return selftest();
    if (argc != 7) {
      std::fprintf(stderr, "usage: %s DIR B T H N SEGMENTS | --selftest\n", argv[0]);
      return 2;
    }
    const Dims d{std::stoll(argv[2]), std::stoll(argv[3]), std::stoll(argv[4]), std::stoll(argv[5])};
    const int64_t segments = std::stoll(argv[6]);
    switch (d.N) {
      case 32: run<32>(argv[1], d, segments); break;
      case 64: run<64>(argv[1], d, segments); break;
      case 128: run<128>(argv[1], d, segments); break;
      default: std::fprintf(stderr, "N must be 32, 64 or 128\n"); return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
