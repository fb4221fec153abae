// CPU stand-in for CUDA's <mma.h> (WMMA), for tests/cuda_emu: every lane holds the whole tile and
// does the whole operation, so the results are those of the warp-wide operation; loads and stores
// are warp-synchronous, as on the GPU (no lane stores a tile before every lane has loaded the last).
// Only what rwkv_vision's kernels use: float / TF32 tiles of 16 x 16 x 8.
#pragma once

#include "../emu.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int kRows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int kCols = std::is_same<Use, matrix_a>::value ? K : N;
  static constexpr int num_elements = kRows * kCols;
  float x[num_elements];
  float at(int r, int c) const { return x[r * kCols + c]; }
};

// TF32: 10 explicit mantissa bits, rounded to nearest with ties away from zero (cvt.rna.tf32.f32).
inline float __float_to_tf32(float f) {
  std::uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & ~0x1fffu;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

// WMMA's contract on the GPU: a 256-bit aligned pointer and a leading dimension that is a multiple of
// 16 bytes. Broken, it is undefined behaviour there; here it stops the run.
inline void check_pointer(const float* p, unsigned ldm, const char* what) {
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0 || ldm % 4 != 0) {
    std::fprintf(stderr, "emu: %s with a pointer not 32-byte aligned or ldm %u not a multiple of 4\n", what, ldm);
    std::abort();
  }
}

template <typename Frag>
void load_tile(Frag& f, const float* p, unsigned ldm, bool row_major) {
  check_pointer(p, ldm, "wmma::load_matrix_sync");
  emu::warp_barrier();
  for (int r = 0; r < Frag::kRows; ++r)
    for (int c = 0; c < Frag::kCols; ++c)
      f.x[r * Frag::kCols + c] = row_major ? p[r * ldm + c] : p[r + c * ldm];
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const float* p, unsigned ldm) {
  static_assert(!std::is_same<Use, accumulator>::value, "an accumulator load names its layout");
  load_tile(f, p, ldm, std::is_same<Layout, row_major>::value);
}

template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ldm, layout_t layout) {
  load_tile(f, p, ldm, layout == mem_row_major);
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  check_pointer(p, ldm, "wmma::store_matrix_sync");
  emu::warp_barrier();
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (layout == mem_row_major ? p[r * ldm + c] : p[r + c * ldm]) = f.at(r, c);
  emu::warp_barrier();
}

template <int M, int N, int K>
void fill_fragment(fragment<accumulator, M, N, K, float>& f, float value) {
  for (float& e : f.x) e = value;
}

template <int M, int N, int K, typename LA, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, precision::tf32, LA>& a,
              const fragment<matrix_b, M, N, K, precision::tf32, LB>& b,
              const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      float acc = c.at(m, n);
      for (int k = 0; k < K; ++k) acc += a.at(m, k) * b.at(k, n);
      out[m * N + n] = acc;
    }
  std::memcpy(d.x, out, sizeof out);
}

}  // namespace wmma
}  // namespace nvcuda
