// CUDA pooling launchers (MaxPool, AveragePool, GlobalAveragePool), forward and backward: the twins of
// kernels/cpu/pool.h, same arguments and meaning (PoolGeometry is shared), a stream instead of the ThreadPool.
// Backward kernels gather (one thread per dx element, windows visited in output order): no atomics, and each
// dx element sums the same terms in the same order as the CPU kernel, so results are bit-reproducible.
#pragma once
#include <cstdint>

#include "kernels/cpu/pool.h"
#include "kernels/cuda/runtime.h"

namespace camrt::cuda {

// Max over each window, ignoring padding; NaN propagates; a window with no input tap yields -inf.
void max_pool_forward(float* out,      // (planes, out[0], out[1], out[2])
                      const float* in,  // (planes, in[0], in[1], in[2])
                      const PoolGeometry& g, cudaStream_t stream);

// Max pooling over channels-last data (PlanOptions::channels_last), half bits or float32, the twins of the CPU
// max_pool_forward_nhwc: same windows and rules, bit-identical output; g.planes is ignored.
void max_pool_forward_nhwc(uint16_t* out,      // (images, out[0], out[1], out[2], channels) half bits
                           const uint16_t* in,  // (images, in[0], in[1], in[2], channels) half bits
                           int64_t images, int64_t channels, const PoolGeometry& g, cudaStream_t stream);
void max_pool_forward_nhwc(float* out,      // (images, out[0], out[1], out[2], channels)
                           const float* in,  // (images, in[0], in[1], in[2], channels)
                           int64_t images, int64_t channels, const PoolGeometry& g, cudaStream_t stream);

// Mean over each window, divisor as in the CPU twin (count_include_pad: taps inside input + pads).
void average_pool_forward(float* out,      // (planes, out[0], out[1], out[2])
                          const float* in,  // (planes, in[0], in[1], in[2])
                          const PoolGeometry& g, bool count_include_pad, cudaStream_t stream);

// Mean of each plane, accumulated in double (spatial == 0 gives NaN).
void global_average_pool_forward(float* out,      // (planes)
                                 const float* in,  // (planes, spatial)
                                 int64_t planes, int64_t spatial, cudaStream_t stream);

// dx += each window's dy at its argmax: the first tap (window order d, h, w) equal to the forward output, or
// the window's last NaN when the output is NaN (the CPU twin's rule).
void max_pool_backward(float* dx,         // (planes, in[0], in[1], in[2])
                       const float* dy,   // (planes, out[0], out[1], out[2])
                       const float* in,   // (planes, in[0], in[1], in[2]): forward input
                       const float* out,  // (planes, out[0], out[1], out[2]): forward output
                       const PoolGeometry& g, cudaStream_t stream);

// dx += each window's dy / count at every input tap of the window.
void average_pool_backward(float* dx,        // (planes, in[0], in[1], in[2])
                           const float* dy,  // (planes, out[0], out[1], out[2])
                           const PoolGeometry& g, bool count_include_pad, cudaStream_t stream);

// dx += dy[p] / spatial over plane p.
void global_average_pool_backward(float* dx,        // (planes, spatial)
                                  const float* dy,  // (planes)
                                  int64_t planes, int64_t spatial, cudaStream_t stream);

}  // namespace camrt::cuda
