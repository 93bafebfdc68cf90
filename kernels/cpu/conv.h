// CPU 2-D convolution forward (NCHW input, OIHW weights), with groups, strides, dilations, asymmetric pads,
// optional bias and a fused activation. Grouped/dense convs run as GEMMs whose B operand is im2col'ed straight
// into the GEMM's packed panels (1x1 stride-1 convs read the input as is); depthwise convs use a direct kernel.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"

namespace camrt {

// Sizes of one convolution. A 1-D conv is a 2-D conv with in_h = kernel_h = 1, stride_h = 1 and zero H pads.
struct Conv2dShape {
  int64_t batch = 1;
  int64_t in_channels = 0, in_h = 0, in_w = 0;
  int64_t out_channels = 0, kernel_h = 1, kernel_w = 1;
  int64_t stride_h = 1, stride_w = 1;
  int64_t dilation_h = 1, dilation_w = 1;
  int64_t pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  int64_t groups = 1;

  int64_t out_h() const { return (in_h + pad_top + pad_bottom - dilation_h * (kernel_h - 1) - 1) / stride_h + 1; }
  int64_t out_w() const { return (in_w + pad_left + pad_right - dilation_w * (kernel_w - 1) - 1) / stride_w + 1; }
};

// Empty if the sizes describe a valid convolution (positive sizes, groups dividing both channel counts,
// output at least 1x1), else what is wrong. Allocates nothing when valid, so ops can call it every forward.
std::string conv2d_shape_error(const Conv2dShape& s);

// Scratch bytes conv2d_forward needs for these sizes when run on a pool of num_threads.
size_t conv2d_workspace_bytes(const Conv2dShape& s, int num_threads);

// out = act(conv(in, weight) + bias), or with a residual act((conv(in, weight) + bias) + residual).
// out: (batch, out_channels, out_h, out_w); in: (batch, in_channels, in_h, in_w);
// weight: (out_channels, in_channels / groups, kernel_h, kernel_w); bias: (out_channels,) or null;
// residual: out's shape, or null (a residual Add fused into the conv: engine/fusion.h). out must not alias it.
// workspace must hold conv2d_workspace_bytes(s, pool.num_threads()) bytes (may be null when that is 0).
void conv2d_forward(float* out, const float* in, const float* weight, const float* bias, const Conv2dShape& s,
                    const FusedActivation& act, void* workspace, size_t workspace_bytes, ThreadPool& pool,
                    const float* residual = nullptr);

// out = act(out + residual), element-wise: the residual Add of a fused conv, in the order the separate Add
// computes it (so fused and unfused plans agree bit for bit). out, residual: (n,).
void conv2d_residual_activation(float* out, const float* residual, int64_t n, const FusedActivation& act,
                                ThreadPool& pool);

// dz += g: the residual's gradient, g being dy masked by the fused activation (conv2d_activation_backward).
void conv2d_residual_backward(float* dz, const float* g, int64_t n, ThreadPool& pool);

// --- Channels-last storage (PlanOptions::channels_last): NHWC activations and OHWI weights, as half (uint16_t
// bits, kernels/cpu/half.h) or float32; the bias float32 either way. ---

// The channels-last path takes 2-D convs with symmetric pads (cuDNN's one pad per axis; others stay NCHW).
bool conv2d_channels_last_supported(const Conv2dShape& s);

// Scratch bytes conv2d_forward_nhwc needs on a pool of num_threads (either element type).
size_t conv2d_forward_nhwc_workspace_bytes(const Conv2dShape& s, int num_threads);

// out = act(conv(in, weight) + bias + residual) in NHWC: the convolution accumulates in float32 and its result is
// stored (rounded to half in the half overload: what cuDNN writes to a half output), then conv2d_epilogue_nhwc
// adds, activates and stores again. out: (batch, out_h, out_w, out_channels); in: (batch, in_h, in_w,
// in_channels); weight: (out_channels, kernel_h, kernel_w, in_channels / groups); residual: out's shape, or null.
// The CPU twin of the cuDNN path: it transposes to NCHW float32 in the workspace and runs conv2d_forward, a
// reference, not a fast path (the float overload computes what the NCHW conv computes, up to the bias being
// added after the convolution's sum rather than inside it).
void conv2d_forward_nhwc(uint16_t* out, const uint16_t* in, const uint16_t* weight, const float* bias,
                         const Conv2dShape& s, const FusedActivation& act, void* workspace, size_t workspace_bytes,
                         ThreadPool& pool, const uint16_t* residual = nullptr);
void conv2d_forward_nhwc(float* out, const float* in, const float* weight, const float* bias, const Conv2dShape& s,
                         const FusedActivation& act, void* workspace, size_t workspace_bytes, ThreadPool& pool,
                         const float* residual = nullptr);

// In place over (positions, channels) NHWC data: y = act((y + bias[c]) + residual), float32 additions in that
// order (half elements widened, the result rounded once); bias and residual may be null.
void conv2d_epilogue_nhwc(uint16_t* y, const float* bias, const uint16_t* residual, int64_t positions,
                          int64_t channels, const FusedActivation& act, ThreadPool& pool);
void conv2d_epilogue_nhwc(float* y, const float* bias, const float* residual, int64_t positions, int64_t channels,
                          const FusedActivation& act, ThreadPool& pool);

// --- Backward (input gradient only; weight and bias gradients are never computed) ---

// Scratch bytes conv2d_backward_data needs on a pool of num_threads: none for depthwise convs, the GEMM's
// packing buffers for 1x1 stride-1 unpadded convs, else a column matrix (Cg*KH*KW, images*OH*OW) for a few
// images of one group plus the GEMM's packing buffers (once per thread when groups run concurrently).
size_t conv2d_backward_data_workspace_bytes(const Conv2dShape& s, int num_threads);

// dx += conv_transpose(dy, weight): the gradient of conv2d_forward's pre-activation output w.r.t. its input
// (mask dy with conv2d_activation_backward first when the conv has a fused activation).
// dx: (batch, in_channels, in_h, in_w); dy: (batch, out_channels, out_h, out_w);
// weight: (out_channels, in_channels / groups, kernel_h, kernel_w).
// workspace must hold conv2d_backward_data_workspace_bytes(s, pool.num_threads()) bytes.
void conv2d_backward_data(float* dx, const float* dy, const float* weight, const Conv2dShape& s, void* workspace,
                          size_t workspace_bytes, ThreadPool& pool);

// masked = dy where the fused activation's derivative is 1, else 0, decided from the conv's output y:
// relu: y > 0 (0 at the kink, as PyTorch), and also dy > 0 when guided_relu (Guided Backprop); clip:
// min < y < max strictly (PyTorch's hardtanh_backward); kNone: a copy. masked, dy, y: (n,); masked may alias dy.
void conv2d_activation_backward(float* masked, const float* dy, const float* y, int64_t n, const FusedActivation& act,
                                bool guided_relu, ThreadPool& pool);

}  // namespace camrt
