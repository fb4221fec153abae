// A small CUDA-on-CPU runtime for testing kernels where no GPU is at hand.
//
// Each thread of a block is a fiber (ucontext) with its own stack; the fibers of a block run one at a
// time, each until it reaches a barrier: __syncthreads (the whole block) or a warp-synchronous call
// (__shfl_xor_sync, the WMMA loads and stores of mma.h, for its warp). A barrier is released when
// every live thread it concerns waits there. Blocks run one after another.
//
// One warp at a time runs from one block barrier to the next while the others stand still (see
// run_block), in a random order: a hostile schedule for a missing barrier, where a thread that reads
// what another writes with no barrier between them often reads it before it is written. A barrier
// that only some of the threads reach is reported. What this does not model: memory races between threads with no barrier at all, shared
// memory bank conflicts, timing, and anything of the hardware past the arithmetic.
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

// The CUDA keywords the kernels use, as plain C++.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // block-scope __shared__ arrays: one copy, blocks run one at a time
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

namespace emu {

constexpr int kWarp = 32;
constexpr size_t kStackBytes = 256 * 1024;

enum class State { kRunnable, kBlockBarrier, kWarpBarrier, kDone };

struct Thread {
  ucontext_t context{};
  std::vector<char> stack;
  State state = State::kRunnable;
  unsigned index = 0;
};

struct Block {
  dim3 block_index, block_dim, grid_dim;
  std::vector<Thread> threads;
  ucontext_t scheduler{};
  Thread* current = nullptr;
  std::vector<float> shared;  // dynamic shared memory
  std::vector<float> exchange;  // one slot per thread, for shuffles
  const std::function<void()>* body = nullptr;
  std::string error;
};

inline Block& block() {
  static Block b;
  return b;
}

inline void yield_with(State state) {
  Block& b = block();
  Thread* self = b.current;
  self->state = state;
  swapcontext(&self->context, &b.scheduler);
}

inline void thread_entry() {
  Block& b = block();
  (*b.body)();
  b.current->state = State::kDone;
  // Returning ends the fiber and resumes uc_link, the scheduler.
}

// Runs one block to completion; throws on a deadlock (a barrier some live threads never reach).
inline void run_block(const std::function<void()>& body, size_t shared_bytes) {
  Block& b = block();
  const unsigned n = b.block_dim.x;
  if (b.threads.size() < n) b.threads.resize(n);
  b.shared.assign((shared_bytes + sizeof(float) - 1) / sizeof(float) + 32, std::nanf(""));
  b.exchange.assign(n, 0.f);
  b.body = &body;
  for (unsigned t = 0; t < n; ++t) {
    Thread& th = b.threads[t];
    th.index = t;
    th.state = State::kRunnable;
    if (th.stack.empty()) th.stack.resize(kStackBytes);
    getcontext(&th.context);
    th.context.uc_stack.ss_sp = th.stack.data();
    th.context.uc_stack.ss_size = th.stack.size();
    th.context.uc_link = &b.scheduler;
    makecontext(&th.context, thread_entry, 0);
  }
  // The schedule: a warp picked at random among those with a runnable thread runs alone, its threads
  // in random order, each to its next barrier, its warp barriers released as soon as all its live
  // threads wait there, until every one of its threads waits at __syncthreads or has exited. Then the
  // next warp. So each warp runs from one block barrier to the next while the others stand still, and
  // a dependency between threads that lacks its barrier shows whichever warp comes first. EMU_SEED
  // picks the sequence.
  static std::uint64_t seed = [] {
    const char* text = std::getenv("EMU_SEED");
    return text ? std::strtoull(text, nullptr, 10) : 1ull;
  }();
  auto random_below = [](unsigned bound) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    return unsigned((seed >> 33) % bound);
  };
  const unsigned warps = (n + kWarp - 1) / kWarp;
  std::vector<unsigned> lanes;
  for (;;) {
    std::vector<unsigned> ready;
    for (unsigned w = 0; w < warps; ++w)
      for (unsigned t = w * kWarp; t < n && t < (w + 1) * kWarp; ++t)
        if (b.threads[t].state == State::kRunnable) {
          ready.push_back(w);
          break;
        }
    if (!ready.empty()) {
      const unsigned w = ready[random_below(unsigned(ready.size()))];
      for (;;) {
        lanes.clear();
        for (unsigned t = w * kWarp; t < n && t < (w + 1) * kWarp; ++t)
          if (b.threads[t].state == State::kRunnable) lanes.push_back(t);
        if (lanes.empty()) break;
        for (unsigned q = unsigned(lanes.size()); q > 1; --q) std::swap(lanes[q - 1], lanes[random_below(q)]);
        for (unsigned t : lanes) {
          b.current = &b.threads[t];
          swapcontext(&b.scheduler, &b.threads[t].context);
        }
        bool all_at_warp_barrier = true, any = false;
        for (unsigned t = w * kWarp; t < n && t < (w + 1) * kWarp; ++t) {
          const State s = b.threads[t].state;
          if (s == State::kDone) continue;
          any = true;
          if (s != State::kWarpBarrier) all_at_warp_barrier = false;
        }
        if (any && all_at_warp_barrier)
          for (unsigned t = w * kWarp; t < n && t < (w + 1) * kWarp; ++t)
            if (b.threads[t].state == State::kWarpBarrier) b.threads[t].state = State::kRunnable;
      }
      continue;
    }
    // Nobody can run: every live thread waits at __syncthreads (release them), or it is a deadlock.
    bool any_live = false, all_block = true, any_done = false;
    for (unsigned t = 0; t < n; ++t) {
      const State s = b.threads[t].state;
      if (s == State::kDone) {
        any_done = true;
        continue;
      }
      any_live = true;
      if (s != State::kBlockBarrier) all_block = false;
    }
    if (!any_live) return;
    if (!all_block) throw std::runtime_error("deadlock: a warp waits at a warp barrier some of its threads never reach");
    // Threads that have exited do not count at a barrier on current GPUs, but none of ours exit
    // before their last barrier: treat it as the bug it would be here.
    if (any_done) throw std::runtime_error("__syncthreads reached by some threads after others exited");
    for (unsigned t = 0; t < n; ++t) b.threads[t].state = State::kRunnable;
  }
}

inline void launch(dim3 grid, dim3 block_dim, size_t shared_bytes, const std::function<void()>& body) {
  Block& b = block();
  b.grid_dim = grid;
  b.block_dim = block_dim;
  for (unsigned x = 0; x < grid.x; ++x) {
    b.block_index = dim3{x, 0, 0};
    run_block(body, shared_bytes);
  }
}

inline dim3 thread_index() { return dim3{block().current->index, 0, 0}; }

inline float* dynamic_shared() {
  // 128-byte aligned, like the GPU's.
  auto address = reinterpret_cast<std::uintptr_t>(block().shared.data());
  return reinterpret_cast<float*>((address + 127) / 128 * 128);
}

inline void warp_barrier() { yield_with(State::kWarpBarrier); }

inline float shfl_xor(unsigned mask, float value, int lane_mask) {
  if (mask != 0xffffffffu) throw std::runtime_error("emu: only full-warp shuffles are modelled");
  Block& b = block();
  const unsigned self = b.current->index, lane = self % kWarp;
  b.exchange[self] = value;
  warp_barrier();
  const float other = b.exchange[self - lane + (lane ^ unsigned(lane_mask))];
  warp_barrier();  // nobody overwrites a slot before every lane has read it
  return other;
}

}  // namespace emu

#define threadIdx (::emu::thread_index())
#define blockIdx (::emu::block().block_index)
#define blockDim (::emu::block().block_dim)
#define gridDim (::emu::block().grid_dim)

inline void __syncthreads() { emu::yield_with(emu::State::kBlockBarrier); }
inline float __shfl_xor_sync(unsigned mask, float value, int lane_mask) { return emu::shfl_xor(mask, value, lane_mask); }
inline float __expf(float x) { return std::exp(x); }
inline float __ldcg(const float* p) { return *p; }
[[noreturn]] inline void __trap() {
  std::fprintf(stderr, "emu: __trap() in a kernel\n");  // no exception may cross a fiber's edge
  std::abort();
}
