// CPU stand-in for csrc/cuda/device_common.cuh, for tests/cuda_emu (float tensors only).
#pragma once

#include "../../emu.h"

namespace rwkv_vision {

inline float to_f(float x) { return x; }

template <typename T>
T from_f(float x);
template <>
inline float from_f<float>(float x) { return x; }

inline float* dynamic_shared_floats() { return emu::dynamic_shared(); }

}  // namespace rwkv_vision
