// CPU Softmax over one axis of a tensor viewed as (outer, dim, inner); numerically stable (the maximum
// along the axis is subtracted first). ONNX's opset < 13 "flatten at axis" form is inner = 1.
#pragma once
#include <cstdint>

#include "kernels/cpu/parallel.h"

namespace camrt {

// y, x: (outer, dim, inner); y may equal x. Softmax along dim.
void softmax_forward(float* y, const float* x, int64_t outer, int64_t dim, int64_t inner, ThreadPool& pool);

}  // namespace camrt
