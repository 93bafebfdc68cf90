// CUDA twins of kernels/cpu/layout.h: NCHW float32 <-> channels-last NHWC conversions of activations
// (channels-last storage, PlanOptions::channels_last; elements IEEE half bits or float32) and of conv weights
// (OIHW -> OHWI). Same arguments and results bit for bit (one rounding to half, to nearest even; float32 is
// copied), a stream in place of the thread pool. Device pointers; asynchronous on `stream`; no aliasing.
#pragma once
#include <cstdint>

#include "kernels/cuda/runtime.h"

namespace camrt::cuda {

// (images, channels, positions) float -> (images, positions, channels) half bits / float.
void nchw_to_nhwc(uint16_t* out, const float* in, int64_t images, int64_t channels, int64_t positions,
                  cudaStream_t stream);
void nchw_to_nhwc(float* out, const float* in, int64_t images, int64_t channels, int64_t positions,
                  cudaStream_t stream);
// (images, positions, channels) half bits / float -> (images, channels, positions) float.
void nhwc_to_nchw(float* out, const uint16_t* in, int64_t images, int64_t channels, int64_t positions,
                  cudaStream_t stream);
void nhwc_to_nchw(float* out, const float* in, int64_t images, int64_t channels, int64_t positions,
                  cudaStream_t stream);

}  // namespace camrt::cuda
