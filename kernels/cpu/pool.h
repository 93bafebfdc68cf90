// CPU pooling kernels (MaxPool, AveragePool, GlobalAveragePool), forward and backward, over N*C independent
// planes with up to three spatial dims: a 1-D or 2-D pool is a 3-D pool whose leading spatial dims have size 1
// (kernel 1, stride 1, no pads). Window arithmetic lives in pool_taps so forward and backward agree on it.
#pragma once
#include <algorithm>
#include <cstdint>

#include "kernels/cpu/parallel.h"

namespace camrt {

// Geometry of one pooling call, spatial dims as (D, H, W).
struct PoolGeometry {
  int64_t planes = 0;                 // N * C
  int64_t in[3] = {1, 1, 1};          // input spatial size
  int64_t out[3] = {1, 1, 1};         // output spatial size
  int64_t kernel[3] = {1, 1, 1};
  int64_t stride[3] = {1, 1, 1};
  int64_t dilation[3] = {1, 1, 1};
  int64_t pad_begin[3] = {0, 0, 0};
  // End pads only bound count_include_pad's divisor: with ceil_mode a window may run past them,
  // and those extra positions count for nothing (ONNX / PyTorch rule).
  int64_t pad_end[3] = {0, 0, 0};

  int64_t in_plane() const { return in[0] * in[1] * in[2]; }
  int64_t out_plane() const { return out[0] * out[1] * out[2]; }
};

// The kernel taps of output position `o` along one axis: tap k reads input index start + k * dilation.
struct PoolTaps {
  int64_t start;         // input index of tap 0; negative inside the begin padding
  int64_t k_begin;       // taps [k_begin, k_end) land inside the input
  int64_t k_end;
  int64_t padded_count;  // taps that land inside begin pad + input + end pad
};

inline PoolTaps pool_taps(const PoolGeometry& g, int axis, int64_t o) {
  const int64_t d = g.dilation[axis], k = g.kernel[axis], n = g.in[axis];
  PoolTaps t;
  t.start = o * g.stride[axis] - g.pad_begin[axis];
  // First tap at index >= 0 and first tap at index >= limit; ceil divisions of non-negative numerators.
  auto first_tap_at = [&](int64_t limit) {
    const int64_t gap = limit - t.start;
    return gap <= 0 ? int64_t(0) : std::min(k, (gap + d - 1) / d);
  };
  t.k_begin = first_tap_at(0);
  t.k_end = std::max(t.k_begin, first_tap_at(n));
  t.padded_count = first_tap_at(n + g.pad_end[axis]);  // start >= -pad_begin, so every tap before is counted
  return t;
}

// Max over each window, ignoring padding; NaN propagates (as in PyTorch). A window with no input tap
// (only possible with pads >= the kernel extent) yields -inf.
void max_pool_forward(float* out,      // (planes, out[0], out[1], out[2])
                      const float* in,  // (planes, in[0], in[1], in[2])
                      const PoolGeometry& g, ThreadPool& pool);

// Max pooling over channels-last data (channels-last storage, PlanOptions::channels_last), IEEE half bits or
// float32: the windows and rules of max_pool_forward (NaN propagates, a window with no input tap yields -inf);
// g.planes is ignored (images * channels planes). Taps are visited in max_pool_forward's order with its
// comparison, and max picks one of its inputs, so nothing is rounded:
// - float: equal bit for bit to max_pool_forward of the same values in NCHW (NaN payloads included);
// - half: equal bit for bit to float_to_half(max_pool_forward) of the same values in NCHW float (a NaN comes out
//   quiet, its sign and payload kept, as float_to_half leaves it).
void max_pool_forward_nhwc(uint16_t* out,      // (images, out[0], out[1], out[2], channels) half bits
                           const uint16_t* in,  // (images, in[0], in[1], in[2], channels) half bits
                           int64_t images, int64_t channels, const PoolGeometry& g, ThreadPool& pool);
void max_pool_forward_nhwc(float* out,      // (images, out[0], out[1], out[2], channels)
                           const float* in,  // (images, in[0], in[1], in[2], channels)
                           int64_t images, int64_t channels, const PoolGeometry& g, ThreadPool& pool);

// Mean over each window. count_include_pad: divide by the taps inside input + pads, else by the taps
// inside the input (a window with none yields NaN, 0/0).
void average_pool_forward(float* out,      // (planes, out[0], out[1], out[2])
                          const float* in,  // (planes, in[0], in[1], in[2])
                          const PoolGeometry& g, bool count_include_pad, ThreadPool& pool);

// Mean of each plane.
void global_average_pool_forward(float* out,      // (planes)
                                 const float* in,  // (planes, spatial)
                                 int64_t planes, int64_t spatial, ThreadPool& pool);

// --- Backward: dx += d(sum(dy * y))/dx. Overlapping windows add into the same dx element, so the work is
// split over planes only, never within a plane. The window taps are computed once per call, into `scratch`
// (pool_backward_scratch_bytes: an op's backward workspace, so a plan's steady state allocates nothing) or,
// without it, into a vector of their own. ---

size_t pool_backward_scratch_bytes(const PoolGeometry& g);

// Each window's dy goes to one input tap: the first (window order d, h, w) whose value equals the forward
// output, as PyTorch's argmax picks the first maximum on ties. A NaN output (NaN propagated) sends it to the
// window's last NaN, PyTorch's choice too. Windows with no input tap send nothing.
void max_pool_backward(float* dx,        // (planes, in[0], in[1], in[2])
                       const float* dy,  // (planes, out[0], out[1], out[2])
                       const float* in,  // (planes, in[0], in[1], in[2]): forward input
                       const float* out, // (planes, out[0], out[1], out[2]): forward output
                       const PoolGeometry& g, ThreadPool& pool, void* scratch = nullptr, size_t scratch_bytes = 0);

// Each window's dy / count goes to every input tap of the window (count as in the forward).
void average_pool_backward(float* dx,        // (planes, in[0], in[1], in[2])
                           const float* dy,  // (planes, out[0], out[1], out[2])
                           const PoolGeometry& g, bool count_include_pad, ThreadPool& pool, void* scratch = nullptr,
                           size_t scratch_bytes = 0);

// dy[p] / spatial goes to every element of plane p.
void global_average_pool_backward(float* dx,        // (planes, spatial)
                                  const float* dy,  // (planes)
                                  int64_t planes, int64_t spatial, ThreadPool& pool);

}  // namespace camrt
