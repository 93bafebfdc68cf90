// CPU BatchNormalization (inference): the running statistics fold into one per-channel scale and shift,
// then y = x * scale[c] + shift[c]. The backward (dx = dy * scale[c]) reuses the folded scale.
#pragma once
#include <cstdint>

#include "kernels/cpu/parallel.h"

namespace camrt {

// scale = gamma / sqrt(var + epsilon), shift = beta - mean * scale, computed in double.
// scale, shift, gamma, beta, mean, var: (C,)
void batchnorm_fold(float* scale, float* shift, const float* gamma, const float* beta, const float* mean,
                    const float* var, int64_t channels, float epsilon);

// y = x * scale[c] + shift[c]. y, x: (N, C, inner), y may equal x; scale, shift: (C,)
void batchnorm_forward(float* y, const float* x, const float* scale, const float* shift, int64_t batch,
                       int64_t channels, int64_t inner, ThreadPool& pool);

// scale = gamma / sqrt(var + epsilon) alone (the backward needs no shift), bit-identical to batchnorm_fold's.
// scale, gamma, var: (C,)
void batchnorm_fold_scale(float* scale, const float* gamma, const float* var, int64_t channels, float epsilon);

// dx += dy * scale[c] (inference mode: the statistics are constants). dx, dy: (N, C, inner); scale: (C,)
void batchnorm_backward(float* dx, const float* dy, const float* scale, int64_t batch, int64_t channels, int64_t inner,
                        ThreadPool& pool);

}  // namespace camrt
