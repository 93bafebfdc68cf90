// Layout and precision conversions between the two ways camrt stores a 4-d activation: NCHW float32 (every
// op's reference layout) and NHWC IEEE half (channels last, what tensor-core convolutions read fastest; see
// PlanOptions::half_storage). Also used for conv weights: OIHW float32 -> OHWI half is the same transposition
// with images = out channels, channels = in channels per group, positions = kernel_h * kernel_w.
// CUDA twins with the same arguments: kernels/cuda/layout.h (bit-identical: a conversion rounds once).
#pragma once
#include <cstdint>

#include "kernels/cpu/parallel.h"

namespace camrt {

// out[(i * positions + p) * channels + c] = half(in[(i * channels + c) * positions + p]), round to nearest even.
// out: (images, positions, channels) half bits; in: (images, channels, positions) float. No aliasing.
void nchw_to_nhwc_half(uint16_t* out, const float* in, int64_t images, int64_t channels, int64_t positions,
                       ThreadPool& pool);

// The inverse: out[(i * channels + c) * positions + p] = float(in[(i * positions + p) * channels + c]) (exact).
void nhwc_half_to_nchw(float* out, const uint16_t* in, int64_t images, int64_t channels, int64_t positions,
                       ThreadPool& pool);

}  // namespace camrt
