// Layout conversions between the two ways camrt stores a 4-d activation: NCHW float32 (every op's reference
// layout) and channels-last NHWC (what tensor-core convolutions read fastest; channels-last storage,
// PlanOptions::channels_last), whose elements are IEEE half (uint16_t bits) or float32. Also used for conv
// weights: OIHW float32 -> OHWI is the same transposition with images = out channels, channels = in channels per
// group, positions = kernel_h * kernel_w. CUDA twins with the same arguments: kernels/cuda/layout.h
// (bit-identical: a conversion to half rounds once, a float32 one copies).
#pragma once
#include <cstdint>

#include "kernels/cpu/parallel.h"

namespace camrt {

// out[(i * positions + p) * channels + c] = half(in[(i * channels + c) * positions + p]), round to nearest even.
// out: (images, positions, channels) half bits; in: (images, channels, positions) float. No aliasing.
void nchw_to_nhwc(uint16_t* out, const float* in, int64_t images, int64_t channels, int64_t positions,
                  ThreadPool& pool);

// The same transposition in float32: out[(i * positions + p) * channels + c] = in[(i * channels + c) * positions + p]
// (a copy, NaN payloads kept). out: (images, positions, channels); in: (images, channels, positions). No aliasing.
void nchw_to_nhwc(float* out, const float* in, int64_t images, int64_t channels, int64_t positions,
                  ThreadPool& pool);

// The inverses: out[(i * channels + c) * positions + p] = float(in[(i * positions + p) * channels + c]) (exact).
// out: (images, channels, positions) float; in: (images, positions, channels) half bits or float. No aliasing.
void nhwc_to_nchw(float* out, const uint16_t* in, int64_t images, int64_t channels, int64_t positions,
                  ThreadPool& pool);
void nhwc_to_nchw(float* out, const float* in, int64_t images, int64_t channels, int64_t positions,
                  ThreadPool& pool);

}  // namespace camrt
