// N-D padding (ONNX Pad): constant, reflect and edge modes over a row-major tensor of any rank.
#pragma once
#include <cstdint>

#include "kernels/cpu/parallel.h"

namespace camrt {

enum class PadMode { Constant, Reflect, Edge };

// out: (out_dims), in: (in_dims); pads_begin/pads_end per dim may be negative (cropping).
// out_dims[d] == in_dims[d] + pads_begin[d] + pads_end[d].
void pad_forward(float* out, const float* in, const int64_t* in_dims, const int64_t* out_dims,
                 const int64_t* pads_begin, int64_t rank, PadMode mode, float value, ThreadPool& pool);

}  // namespace camrt
