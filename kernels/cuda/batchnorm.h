// CUDA twins of kernels/cpu/batchnorm.h (BatchNormalization at inference): the statistics fold into a per-channel
// scale and shift on the device (the weights are device memory there), then y = x * scale[c] + shift[c]; the
// backward is dx += dy * scale[c]. Same arguments and meaning as the CPU launchers, with a stream.
#pragma once
#include <cstdint>

#include "kernels/cuda/runtime.h"

namespace camrt::cuda {

// scale = gamma / sqrt(var + epsilon), shift = beta - mean * scale, in double as the CPU fold (scale bit-identical;
// shift too unless the CPU build fuses the multiply-subtract).
// scale, shift (outputs, device scratch), gamma, beta, mean, var: (C,)
void batchnorm_fold(float* scale, float* shift, const float* gamma, const float* beta, const float* mean,
                    const float* var, int64_t channels, float epsilon, cudaStream_t stream);

// y = x * scale[c] + shift[c]. y, x: (N, C, inner), y may equal x; scale, shift: (C,)
void batchnorm_forward(float* y, const float* x, const float* scale, const float* shift, int64_t batch,
                       int64_t channels, int64_t inner, cudaStream_t stream);

// scale = gamma / sqrt(var + epsilon) alone, bit-identical to batchnorm_fold's. scale, gamma, var: (C,)
void batchnorm_fold_scale(float* scale, const float* gamma, const float* var, int64_t channels, float epsilon,
                          cudaStream_t stream);

// dx += dy * scale[c]. dx, dy: (N, C, inner); scale: (C,)
void batchnorm_backward(float* dx, const float* dy, const float* scale, int64_t batch, int64_t channels,
                        int64_t inner, cudaStream_t stream);

}  // namespace camrt::cuda
