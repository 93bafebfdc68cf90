// CUDA twins of kernels/cpu/elementwise.h: Add, Sub, Mul, Div with numpy broadcasting (float32 and int64) and the
// float32 backward, walking the same BroadcastPlan (built on the host by make_broadcast_plan). The backward sums
// over broadcast dims with fixed-order reductions (no atomics), so its results are bit-reproducible run to run.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cpu/elementwise.h"  // BinaryOp, BroadcastPlan, make_broadcast_plan
#include "kernels/cuda/runtime.h"

namespace camrt::cuda {

// out = a op b; out: (plan.numel,) contiguous; a, b laid out as the plan says (device memory; the plan itself is
// host memory, passed to the kernel by value). out may alias a (or b) when that operand has the output's shape.
// Throws if the plan has more than 16 dims (after merging). Integer Div cannot throw from a kernel: division by
// zero gives 0 and INT64_MIN / -1 gives INT64_MIN (the CPU twin throws on both). act: out = act(a op b), float only.
void binary_forward(float* out, const float* a, const float* b, const BroadcastPlan& plan, BinaryOp op,
                    cudaStream_t stream, const FusedActivation& act = {});
void binary_forward(int64_t* out, const int64_t* a, const int64_t* b, const BroadcastPlan& plan, BinaryOp op,
                    cudaStream_t stream);

// Scratch binary_backward uses for this plan (partial sums when a small operand is reduced from a large output:
// the reduction is split over more blocks, then the partials are added in a fixed order). 0 when none helps.
size_t binary_backward_workspace_bytes(const BroadcastPlan& plan);

// Backward of out = a op b, as the CPU twin: da += sum over broadcast dims of dy * d(out)/da, db likewise
// (nullptr: not wanted); dy: (plan.numel,). Reads: Add, Sub nothing but dy; Mul da<-b, db<-a; Div da<-b, db<-b and
// y (y != nullptr, -dy * y / b) or a (-dy * a / b^2). Sums accumulate in double. Gradients must not alias dy or
// the operands. workspace: device scratch of workspace_bytes (may be nullptr/0: the reductions then run in one
// pass per gradient element, equally deterministic but slower for a scalar operand).
void binary_backward(float* da, float* db, const float* dy, const float* a, const float* b, const float* y,
                     const BroadcastPlan& plan, BinaryOp op, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream);

}  // namespace camrt::cuda
