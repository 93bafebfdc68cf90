// CUDA twins of kernels/cpu/layout.h: NCHW float32 <-> NHWC half conversions of activations (and of conv
// weights, OIHW -> OHWI). Same arguments and results bit for bit (one rounding, to nearest even), a stream in
// place of the thread pool. Device pointers; asynchronous on `stream`; no aliasing.
#pragma once
#include <cstdint>

#include "kernels/cuda/runtime.h"

namespace camrt::cuda {

void nchw_to_nhwc_half(uint16_t* out, const float* in, int64_t images, int64_t channels, int64_t positions,
                       cudaStream_t stream);
void nhwc_half_to_nchw(float* out, const uint16_t* in, int64_t images, int64_t channels, int64_t positions,
                       cudaStream_t stream);

}  // namespace camrt::cuda
