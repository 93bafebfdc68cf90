// CUDA twins of kernels/cpu/softmax.h: Softmax over one axis of a tensor viewed as (outer, dim, inner), forward
// (max subtracted first) and backward from the output alone. Same arguments and meaning, with a stream.
#pragma once
#include <cstdint>

#include "kernels/cuda/runtime.h"

namespace camrt::cuda {

// y, x: (outer, dim, inner); y may equal x. Softmax along dim.
void softmax_forward(float* y, const float* x, int64_t outer, int64_t dim, int64_t inner, cudaStream_t stream);

// dx += y * (dy - sum_d(dy * y)) along dim. dx, dy, y: (outer, dim, inner); dx must not alias dy or y. The dot
// product accumulates in double, in a fixed order (bit-reproducible run to run).
void softmax_backward(float* dx, const float* dy, const float* y, int64_t outer, int64_t dim, int64_t inner,
                      cudaStream_t stream);

}  // namespace camrt::cuda
