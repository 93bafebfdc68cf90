// CPU Softmax (forward and backward) over one axis of a tensor viewed as (outer, dim, inner); numerically
// stable (the maximum along the axis is subtracted first). ONNX's opset < 13 "flatten at axis" form is inner = 1.
#pragma once
#include <cstdint>

#include "kernels/cpu/parallel.h"

namespace camrt {

// y, x: (outer, dim, inner); y may equal x. Softmax along dim.
void softmax_forward(float* y, const float* x, int64_t outer, int64_t dim, int64_t inner, ThreadPool& pool);

// dx += y * (dy - sum_d(dy * y)) along dim, from the forward output alone. dx, dy, y: (outer, dim, inner);
// dx must not alias dy or y. The dot product along dim accumulates in double.
void softmax_backward(float* dx, const float* dy, const float* y, int64_t outer, int64_t dim, int64_t inner,
                      ThreadPool& pool);

}  // namespace camrt
