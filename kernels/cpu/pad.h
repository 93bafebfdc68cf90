// N-D padding (ONNX Pad): constant, reflect and edge modes over a row-major tensor of any rank, forward and
// backward. Negative pads crop.
#pragma once
#include <cstdint>

#include "kernels/cpu/parallel.h"

namespace camrt {

enum class PadMode { Constant, Reflect, Edge };

// out: (out_dims), in: (in_dims); pads_begin/pads_end per dim may be negative (cropping).
// out_dims[d] == in_dims[d] + pads_begin[d] + pads_end[d].
void pad_forward(float* out, const float* in, const int64_t* in_dims, const int64_t* out_dims,
                 const int64_t* pads_begin, int64_t rank, PadMode mode, float value, ThreadPool& pool);

// dx += the gradient of pad_forward: every output position that reads input element i adds its dy to dx[i]
// (constant mode: the interior crop of dy; reflect/edge: mirrored and edge copies too). dx: (in_dims),
// dy: (out_dims). Work is split over dx rows, so copies of one element never race.
void pad_backward(float* dx, const float* dy, const int64_t* in_dims, const int64_t* out_dims,
                  const int64_t* pads_begin, int64_t rank, PadMode mode, ThreadPool& pool);

}  // namespace camrt
