// CUDA twins of kernels/cpu/activation.h (Relu, LeakyRelu, Clip, Sigmoid, HardSigmoid, HardSwish), forward and
// backward, plus the two helpers Identity/Dropout need on the GPU. Same arguments and meaning as the CPU
// launchers, with a stream instead of a pool; y may alias x. Pointers are device memory unless stated.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/activation.h"  // Activation, ActivationParams, activation_backward_reads_output
#include "kernels/cuda/runtime.h"

namespace camrt::cuda {

// y = f(x) element by element; y, x: (n,), y may equal x.
void activation_forward(float* y, const float* x, int64_t n, Activation kind, const ActivationParams& params,
                        cudaStream_t stream);
// As above; for Clip, min_bound / max_bound (device pointers to one float each, nullptr: use params.min / max)
// override the bounds, so bounds held in device tensors (Clip opset >= 11 inputs) are never read on the host.
void activation_forward(float* y, const float* x, int64_t n, Activation kind, const ActivationParams& params,
                        const float* min_bound, const float* max_bound, cudaStream_t stream);

// dx += dy * f'(saved); dx, dy, saved: (n,). Same derivative conventions as the CPU twin (PyTorch's autograd at
// the kinks; guided_relu applies to Relu only). dx must not alias dy or saved.
void activation_backward(float* dx, const float* dy, const float* saved, int64_t n, Activation kind,
                         const ActivationParams& params, bool guided_relu, cudaStream_t stream);
// As above with Clip's bounds from device memory (see activation_forward).
void activation_backward(float* dx, const float* dy, const float* saved, int64_t n, Activation kind,
                         const ActivationParams& params, const float* min_bound, const float* max_bound,
                         bool guided_relu, cudaStream_t stream);

// dx += dy (Identity/Dropout backward): cuda::accumulate in kernels/cuda/copy.h.

// Sets `bytes` bytes at dst to `value` (Dropout's all-true mask).
void fill_bytes(void* dst, uint8_t value, size_t bytes, cudaStream_t stream);

}  // namespace camrt::cuda
