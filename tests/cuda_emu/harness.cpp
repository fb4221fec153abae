// Runs rwkv_vision's CUDA kernels (the csrc/cuda/*_kernel(s).cuh headers: the very source the GPU build
// compiles) on the CPU through emu.h, for tests/ops/test_cuda_kernels_emulated.py.
//
//   harness chunked DIR B T H N SEGMENTS    wkv6_chunked_kernels.cuh, forward and backward (SEGMENTS 0:
//                                           as the host would choose on a 132-multiprocessor GPU)
//   harness recurrent DIR B T H N           wkv6_kernels.cuh, forward and backward
//   harness recurrent_packed DIR T H N S    the same with cu_seqlens: S sequences packed into one row
//                                           (b = 1), offsets DIR/cu.bin (int64 [S + 1]); states [S, H, N, N]
//   harness split DIR B T H N               wkv6_forward_split_kernel.cuh, forward
//   harness step DIR B H N                  wkv6_step_kernel.cuh
//
// A sequence mode reads DIR/{r,k,v,w,dy}.bin [B, T, H, N], u.bin [H, N], s0.bin and dsT.bin
// [B, H, N, N] (float32, native byte order) and writes y, sT and, with a backward, dr, dk, dv, dw, du,
// ds0 to DIR/<name>.bin. The step mode reads r, k, v, w [B, H, N], u and s0 (the state) and writes y
// [B, H, N] and state. The launch sequences are those of the host code in the matching .cu file
// (for the chunked one, plan_segments with the given count or a GPU's multiprocessor count).
//
//   harness --selftest
//
// checks that the emulator catches a missing __syncthreads and a barrier not all threads reach.
#include "cuda/wkv6_chunked_kernels.cuh"
#include "cuda/wkv6_forward_split_kernel.cuh"
#include "cuda/wkv6_kernels.cuh"
#include "cuda/wkv6_step_kernel.cuh"

#include <cstdio>
#include <fstream>
#include <new>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

namespace {

using rwkv_vision::Pass;
// Buffers 256-byte aligned, like torch's CUDA allocations, so that mma.h's alignment check means
// what it would on the GPU.
template <typename T>
struct Aligned256 {
  using value_type = T;
  Aligned256() = default;
  template <typename U>
  Aligned256(const Aligned256<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(256))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(256)); }
  template <typename U>
  bool operator==(const Aligned256<U>&) const { return true; }
  template <typename U>
  bool operator!=(const Aligned256<U>&) const { return false; }
};
using Vec = std::vector<float, Aligned256<float>>;

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

// The host's plan, with the count given (0: chosen as for a GPU of 132 multiprocessors).
std::pair<int, int64_t> segments_for(int64_t wanted, int64_t blocks, int64_t chunks) {
  const rwkv_vision::SegmentPlan plan = rwkv_vision::plan_segments(wanted, blocks, chunks, 132);
  return {plan.segments, plan.seg_chunks};
}

template <int N, Pass kPass>
void run_forward(const Dims& d, int64_t wanted, const Vec& r, const Vec& k, const Vec& v, const Vec& w,
                 const Vec& u, const Vec& s0, float* states, float* y, float* sT) {
  using G = rwkv_vision::FwdGeometry<N>;
  const int64_t chunks = (d.T + rwkv_vision::kL - 1) / rwkv_vision::kL;
  const int64_t blocks = d.B * d.H * G::kGroups;
  const auto [segments, seg_chunks] = segments_for(wanted, blocks, chunks);
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

// The inputs of a sequence mode, and its outputs, NaN until written: anything a kernel fails to write shows.
struct Sequence {
  Dims d;
  size_t seq, state;
  Vec r, k, v, w, dy, u, s0, dsT;
  Vec y, sT, dr, dk, dv, dw, du, ds0;
  // states: the number of state rows (B, or the number of packed sequences).
  Sequence(const std::string& dir, const Dims& dims, int64_t states = -1)
      : d(dims), seq(size_t(d.B * d.T * d.H * d.N)), state(size_t((states < 0 ? d.B : states) * d.H * d.N * d.N)),
        r(read(dir + "/r.bin", seq)), k(read(dir + "/k.bin", seq)), v(read(dir + "/v.bin", seq)),
        w(read(dir + "/w.bin", seq)), dy(read(dir + "/dy.bin", seq)), u(read(dir + "/u.bin", size_t(d.H * d.N))),
        s0(read(dir + "/s0.bin", state)), dsT(read(dir + "/dsT.bin", state)), y(seq, std::nanf("")),
        sT(state, std::nanf("")), dr(seq, std::nanf("")), dk(seq, std::nanf("")), dv(seq, std::nanf("")),
        dw(seq, std::nanf("")), du(size_t(d.H * d.N), std::nanf("")), ds0(state, std::nanf("")) {}
  void write_forward(const std::string& dir) const {
    write(dir + "/y.bin", y);
    write(dir + "/sT.bin", sT);
  }
  void write_backward(const std::string& dir) const {
    for (const auto& [name, data] : {std::pair<const char*, const Vec*>{"dr", &dr}, {"dk", &dk}, {"dv", &dv},
                                     {"dw", &dw}, {"du", &du}, {"ds0", &ds0}})
      write(dir + "/" + name + ".bin", *data);
  }
};

template <int N>
void run_chunked(const std::string& dir, const Dims& d, int64_t wanted) {
  Sequence q(dir, d);
  const Vec &r = q.r, &k = q.k, &v = q.v, &w = q.w, &dy = q.dy, &u = q.u, &s0 = q.s0, &dsT = q.dsT;
  Vec &y = q.y, &sT = q.sT, &dr = q.dr, &dk = q.dk, &dv = q.dv, &dw = q.dw, &du = q.du, &ds0 = q.ds0;
  run_forward<N, Pass::kOutputs>(d, wanted, r, k, v, w, u, s0, nullptr, y.data(), sT.data());
  q.write_forward(dir);

  const int64_t chunks = (d.T + rwkv_vision::kL - 1) / rwkv_vision::kL;
  Vec states(size_t(d.B * d.H * chunks * N * N), std::nanf(""));
  run_forward<N, Pass::kStates>(d, wanted, r, k, v, w, u, s0, states.data(), nullptr, nullptr);

  using G = rwkv_vision::BwdGeometry<N>;
  const int64_t blocks = d.B * d.H;
  const auto [segments, seg_chunks] = segments_for(wanted, blocks, chunks);
  const int64_t seg_len = seg_chunks * rwkv_vision::kL;
  Vec seg_dstate(size_t(blocks * (segments - 1) * N * N), std::nanf(""));
  Vec seg_decay(size_t(blocks * (segments - 1) * N), std::nanf(""));
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
    rwkv_vision::wkv6_du_reduce_kernel(d.B * segments, HN, du_part.data(), du.data());
  });
  q.write_backward(dir);
  std::printf("ok: %d segments, %lld chunks\n", segments, static_cast<long long>(chunks));
}

// wkv6_cuda.cu's forward_launch and backward_launch / backward_impl. With `packed` (S sequences, cu
// their int64 offsets) one block per (sequence, head), as the host launches them for cu_seqlens.
template <int N>
void run_recurrent(const std::string& dir, const Dims& d, int64_t packed = -1) {
  std::vector<int64_t> cu_host;
  if (packed >= 0) {
    cu_host.resize(size_t(packed + 1));
    std::ifstream in(dir + "/cu.bin", std::ios::binary);
    if (!in.read(reinterpret_cast<char*>(cu_host.data()), std::streamsize(cu_host.size() * sizeof(int64_t))))
      throw std::runtime_error("cannot read cu.bin");
  }
  const int64_t* cu = packed >= 0 ? cu_host.data() : nullptr;
  const int64_t states = packed >= 0 ? packed : d.B;
  Sequence q(dir, d, states);
  const dim3 blocks{unsigned(states * d.H)}, threads{unsigned(N)};
  emu::launch(blocks, threads, 0, [&] {
    rwkv_vision::wkv6_forward_kernel<float, N>(d.T, d.H, q.r.data(), q.k.data(), q.v.data(), q.w.data(),
                                               q.u.data(), q.s0.data(), q.y.data(), q.sT.data(), cu);
  });
  q.write_forward(dir);
  const int64_t NN = int64_t(N) * N, C = rwkv_vision::checkpoint_spacing(d.T), n_chunks = (d.T + C - 1) / C;
  const int64_t scratch_per_block = (n_chunks + C + 1) * NN;
  Vec scratch(size_t(states * d.H * scratch_per_block), std::nanf("")),
      du_part(size_t(states * d.H * N), std::nanf(""));
  emu::launch(blocks, threads, 0, [&] {
    rwkv_vision::wkv6_backward_rows_kernel<float, N>(
        d.T, d.H, C, n_chunks, scratch_per_block, q.r.data(), q.k.data(), q.v.data(), q.w.data(), q.u.data(),
        q.s0.data(), q.dy.data(), q.dsT.data(), q.dr.data(), q.dk.data(), q.dw.data(), du_part.data(), scratch.data(),
        cu);
  });
  emu::launch(blocks, threads, 0, [&] {
    rwkv_vision::wkv6_backward_cols_kernel<float, N>(d.T, d.H, q.r.data(), q.k.data(), q.w.data(), q.u.data(),
                                                     q.dy.data(), q.dsT.data(), q.dv.data(), q.ds0.data(), cu);
  });
  const int64_t HN = d.H * N;
  emu::launch(dim3{unsigned((HN + 255) / 256)}, dim3{256}, 0, [&] {
    rwkv_vision::wkv6_du_reduce_kernel(states, HN, du_part.data(), q.du.data());
  });
  q.write_backward(dir);
  std::printf("ok: checkpoints every %lld steps\n", static_cast<long long>(C));
}

// wkv6_forward_split.cu's launch.
template <int N>
void run_split(const std::string& dir, const Dims& d) {
  Sequence q(dir, d);
  emu::launch(dim3{unsigned(d.B * d.H)}, dim3{unsigned(rwkv_vision::kLanesPerColumn * N)}, 0, [&] {
    rwkv_vision::wkv6_forward_split_kernel<float, N>(d.T, d.H, q.r.data(), q.k.data(), q.v.data(), q.w.data(),
                                                     q.u.data(), q.s0.data(), q.y.data(), q.sT.data());
  });
  q.write_forward(dir);
  std::printf("ok\n");
}

// wkv6_step_cuda.cu's step_impl.
template <int N>
void run_step(const std::string& dir, const Dims& d) {
  const size_t vec = size_t(d.B * d.H * N);
  const Vec r = read(dir + "/r.bin", vec), k = read(dir + "/k.bin", vec), v = read(dir + "/v.bin", vec),
            w = read(dir + "/w.bin", vec), u = read(dir + "/u.bin", size_t(d.H * N));
  Vec state = read(dir + "/s0.bin", size_t(d.B * d.H * N * N)), y(vec, std::nanf(""));
  emu::launch(dim3{unsigned(d.B * d.H)}, dim3{unsigned(N)}, 0, [&] {
    rwkv_vision::wkv6_step_kernel<float, N>(int(d.H), r.data(), k.data(), v.data(), w.data(), u.data(),
                                            state.data(), y.data());
  });
  write(dir + "/y.bin", y);
  write(dir + "/state.bin", state);
  std::printf("ok\n");
}

template <template <int> class Mode, typename... Args>
void for_head_size(int64_t n, Args&&... args) {
  switch (n) {
    case 32: Mode<32>::run(args...); break;
    case 64: Mode<64>::run(args...); break;
    case 128: Mode<128>::run(args...); break;
    default: throw std::runtime_error("N must be 32, 64 or 128");
  }
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

#define RWKV_VISION_MODE(NAME, FN)                                    \
  template <int N>                                                    \
  struct NAME {                                                       \
    template <typename... Args>                                       \
    static void run(Args&&... args) { FN<N>(args...); }               \
  };
RWKV_VISION_MODE(Chunked, run_chunked)
RWKV_VISION_MODE(Recurrent, run_recurrent)
RWKV_VISION_MODE(Split, run_split)
RWKV_VISION_MODE(Step, run_step)
#undef RWKV_VISION_MODE

int main(int argc, char** argv) {
  try {
    const std::vector<std::string> a(argv + 1, argv + argc);
    if (a.size() == 1 && a[0] == "--selftest") return selftest();
    auto dims = [&](size_t at) { return Dims{std::stoll(a[at]), std::stoll(a[at + 1]), std::stoll(a[at + 2]), std::stoll(a[at + 3])}; };
    if (a.size() == 7 && a[0] == "chunked") {
      const Dims d = dims(2);
      for_head_size<Chunked>(d.N, a[1], d, std::stoll(a[6]));
    } else if (a.size() == 6 && a[0] == "recurrent") {
      const Dims d = dims(2);
      for_head_size<Recurrent>(d.N, a[1], d);
    } else if (a.size() == 6 && a[0] == "recurrent_packed") {
      const Dims d{1, std::stoll(a[2]), std::stoll(a[3]), std::stoll(a[4])};
      for_head_size<Recurrent>(d.N, a[1], d, std::stoll(a[5]));
    } else if (a.size() == 6 && a[0] == "split") {
      const Dims d = dims(2);
      for_head_size<Split>(d.N, a[1], d);
    } else if (a.size() == 5 && a[0] == "step") {
      const Dims d{std::stoll(a[2]), 1, std::stoll(a[3]), std::stoll(a[4])};
      for_head_size<Step>(d.N, a[1], d);
    } else {
      std::fprintf(stderr, "usage: harness chunked DIR B T H N SEGMENTS | recurrent|split DIR B T H N | "
                           "recurrent_packed DIR T H N S | "
                           "step DIR B H N | --selftest\n");
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
