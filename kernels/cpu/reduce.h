// CPU reduction kernels: mean over any set of axes of a contiguous tensor (forward and backward), and the
// double-accumulated contiguous sum that pooling and CAM weights share. Sums accumulate in double so a mean over a large
// plane does not drift with its size.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/cpu/parallel.h"

namespace camrt {

// Sum of n contiguous floats, accumulated in double.
double sum_f32(const float* x, int64_t n);  // x: (n)

// Mean of `in` over `axes` (sorted, unique, each in [0, rank)). `out` holds the kept dims in their
// order, so keepdims only changes the output's shape, not its data. A mean over zero elements is NaN.
// Empty `axes` copies the input.
void reduce_mean_forward(float* out,      // (kept dims of in_shape)
                         const float* in,  // in_shape
                         const std::vector<int64_t>& in_shape, const std::vector<int64_t>& axes, ThreadPool& pool);

// Backward of reduce_mean_forward: dx += dy broadcast back over `axes`, divided by the reduced count.
// dy holds the kept dims in order (keepdims does not matter, as in the forward).
void reduce_mean_backward(float* dx,        // in_shape
                          const float* dy,  // (kept dims of in_shape)
                          const std::vector<int64_t>& in_shape, const std::vector<int64_t>& axes, ThreadPool& pool);

}  // namespace camrt
