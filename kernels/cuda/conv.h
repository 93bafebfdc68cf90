// CUDA 2-D convolution (NCHW fp32 storage, OIHW weights) on cuDNN: forward with optional bias and fused
// activation, backward-data (accumulating), and the fused activation's gradient mask. Mirrors kernels/cpu/conv.h
// (same Conv2dShape, same argument order) with a CudaRuntime in place of the thread pool. The algorithm for each
// (sizes, direction, precision) is chosen once by cuDNN's heuristics and cached in the runtime; the *_workspace_bytes
// functions make that choice at plan time, so the launchers find it and allocate nothing.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/conv.h"  // Conv2dShape, FusedActivation (plain structs, shared with the CPU backend)
#include "kernels/cuda/runtime.h"

namespace camrt::cuda {

// Workspace an algorithm may ask for: at least 32 MiB, else four times the convolution's own input + output
// bytes. The plan's one workspace is the largest any op asks for and edge deployment plans memory up front, so it
// grows with the batch, not with the model: a batch-1 ResNet-50 explanation (98 MiB of weights) stays within its
// 160 MiB budget, while a batch of 32 or a Score-CAM chunk of 256 may use the workspace-hungry fast algorithms
// (the first H200 run, capped at a flat 32 MiB, ran VGG-16 at batch 32 five times slower than PyTorch).
constexpr size_t kConvWorkspaceMinCapBytes = size_t(32) << 20;

enum class ConvDirection : uint8_t { kForward, kBackwardData };

// Device scratch bytes `direction` needs for these sizes at the runtime's current precision: cuDNN's workspace
// for the chosen algorithm plus, for asymmetric pads (which cuDNN cannot express), a zero-padded copy of the
// input (forward) or of the input gradient (backward). Chooses and caches the algorithm: call at plan time.
size_t conv2d_workspace_bytes(CudaRuntime& runtime, const Conv2dShape& s, ConvDirection direction);

// out = act(conv(in, weight) + bias), or with a residual act(conv(in, weight) + bias + residual), as the CPU
// conv2d_forward (conv + bias + residual + ReLU is one cuDNN call; other combinations one epilogue kernel).
// out: (batch, out_channels, out_h, out_w); in: (batch, in_channels, in_h, in_w);
// weight: (out_channels, in_channels / groups, kernel_h, kernel_w); bias: (out_channels,) or null;
// residual: out's shape, or null. workspace: device memory of at least conv2d_workspace_bytes(runtime, s,
// kForward) bytes (null when that is 0). out must not alias in or residual. Asynchronous on runtime.stream().
void conv2d_forward(float* out, const float* in, const float* weight, const float* bias, const Conv2dShape& s,
                    const FusedActivation& act, void* workspace, size_t workspace_bytes, CudaRuntime& runtime,
                    const float* residual = nullptr);

// --- Channels-last storage (PlanOptions::channels_last): the twins of kernels/cpu/conv.h's NHWC functions. NHWC
// activations and OHWI weights in half or float32, float32 bias, fp32 accumulation; half runs on fp16 tensor cores
// whatever the runtime's precision, float32 at the runtime's precision (tf32 or fp32 math). Symmetric pads only
// (conv2d_channels_last_supported). ---

// cuDNN's workspace for the channels-last forward in half or float32 (chooses and caches its algorithm: call at
// plan time). Throws if cuDNN offers no deterministic algorithm for it.
size_t conv2d_forward_nhwc_workspace_bytes(CudaRuntime& runtime, const Conv2dShape& s, bool half);

// out = act(conv(in, weight) + bias + residual): with a bias and ReLU one cuDNN call where cuDNN takes the
// combination (in the half overload with the bias rounded to half, as cuDNN takes it in the data's type, and the
// result rounded to half once); otherwise cuDNN writes the convolution (rounded to half in the half overload),
// then the epilogue kernel. The workspace (conv2d_forward_nhwc_workspace_bytes) also holds the half bias.
// Asynchronous on runtime.stream().
void conv2d_forward_nhwc(uint16_t* out, const uint16_t* in, const uint16_t* weight, const float* bias,
                         const Conv2dShape& s, const FusedActivation& act, void* workspace, size_t workspace_bytes,
                         CudaRuntime& runtime, const uint16_t* residual = nullptr);
void conv2d_forward_nhwc(float* out, const float* in, const float* weight, const float* bias, const Conv2dShape& s,
                         const FusedActivation& act, void* workspace, size_t workspace_bytes, CudaRuntime& runtime,
                         const float* residual = nullptr);

// Whether cuDNN refused the one-call conv + bias + ReLU (+ residual) for this conv in this storage, so that it runs
// as the convolution and an epilogue kernel: known once the conv has run (false before). For tests and the
// device check (cuDNN documents few of the combinations it fuses).
bool conv2d_bias_relu_unfused(CudaRuntime& runtime, const Conv2dShape& s, bool channels_last, bool half, bool residual);

// In place over (positions, channels) NHWC data, bit for bit as the CPU twin.
void conv2d_epilogue_nhwc(uint16_t* y, const float* bias, const uint16_t* residual, int64_t positions,
                          int64_t channels, const FusedActivation& act, cudaStream_t stream);
void conv2d_epilogue_nhwc(float* y, const float* bias, const float* residual, int64_t positions, int64_t channels,
                          const FusedActivation& act, cudaStream_t stream);

// dz += g (the residual's gradient: dy masked by the fused activation), as the CPU twin. Asynchronous.
void conv2d_residual_backward(float* dz, const float* g, int64_t n, cudaStream_t stream);

// dx += conv_transpose(dy, weight): the gradient of the pre-activation output w.r.t. the input, ACCUMULATED
// into dx (mask dy with conv2d_activation_backward first when the conv has a fused activation).
// dx: (batch, in_channels, in_h, in_w); dy: (batch, out_channels, out_h, out_w);
// weight: (out_channels, in_channels / groups, kernel_h, kernel_w).
// workspace: at least conv2d_workspace_bytes(runtime, s, kBackwardData) bytes. Asynchronous.
void conv2d_backward_data(float* dx, const float* dy, const float* weight, const Conv2dShape& s, void* workspace,
                          size_t workspace_bytes, CudaRuntime& runtime);

// masked = dy where the fused activation passes the gradient, decided from the conv's output y, exactly as the
// CPU twin: relu: y > 0 (and dy > 0 when guided_relu); clip: min < y < max; kNone: a copy.
// masked, dy, y: (n,); masked may alias dy.
void conv2d_activation_backward(float* masked, const float* dy, const float* y, int64_t n, const FusedActivation& act,
                                bool guided_relu, cudaStream_t stream);

}  // namespace camrt::cuda
