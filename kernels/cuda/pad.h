// CUDA twins of kernels/cpu/pad.h: N-D padding (ONNX Pad; constant, reflect and edge modes; negative pads crop),
// forward and backward. Same arguments and meaning, with a stream. The dims and pads arrays are HOST memory (they
// travel to the kernel by value); the tensors are device memory. Ranks up to 16.
#pragma once
#include <cstdint>

#include "kernels/cpu/pad.h"  // PadMode
#include "kernels/cuda/runtime.h"

namespace camrt::cuda {

// out: (out_dims), in: (in_dims); out_dims[d] == in_dims[d] + pads_begin[d] + pads_end[d].
void pad_forward(float* out, const float* in, const int64_t* in_dims, const int64_t* out_dims,
                 const int64_t* pads_begin, int64_t rank, PadMode mode, float value, cudaStream_t stream);
// As above with the constant value read on the device from value_device (one float; nullptr: use `value`), so
// a value held in a device tensor (Pad's optional third input) is never read on the host.
void pad_forward(float* out, const float* in, const int64_t* in_dims, const int64_t* out_dims,
                 const int64_t* pads_begin, int64_t rank, PadMode mode, float value, const float* value_device,
                 cudaStream_t stream);

// dx += the gradient of pad_forward: each dx element gathers, in ascending output order (as the CPU twin adds
// them), the dy of every output position that reads it. No atomics: bit-identical to the CPU twin.
// dx: (in_dims), dy: (out_dims).
void pad_backward(float* dx, const float* dy, const int64_t* in_dims, const int64_t* out_dims,
                  const int64_t* pads_begin, int64_t rank, PadMode mode, cudaStream_t stream);

}  // namespace camrt::cuda
