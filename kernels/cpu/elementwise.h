// CPU binary arithmetic (Add, Sub, Mul, Div) with numpy multidirectional broadcasting, float32 and int64, and
// its float32 backward. A BroadcastPlan drops size-1 output dims and merges neighbours, so the common CNN shapes
// reach tight loops: same shape, (N, C, HW) op (C) and (N*C, HW) op (N*C); anything else walks strides.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/cpu/gemm.h"  // FusedActivation
#include "kernels/cpu/parallel.h"

namespace camrt {

enum class BinaryOp : uint8_t { Add, Sub, Mul, Div };

const char* binary_op_name(BinaryOp op);

// Numpy broadcast of two shapes; returns false (out untouched) when they do not broadcast.
bool broadcast_shapes(const std::vector<int64_t>& a_shape, const std::vector<int64_t>& b_shape,
                      std::vector<int64_t>* out_shape);

// out = a op b seen as a walk over `dims` (row-major, out contiguous), reading a at sum(i_k * a_strides[k])
// and b likewise. Strides are 0 along dims an operand broadcasts; the last dim's strides are 0 or 1.
// The backward (reducing dy over a broadcast operand's zero-stride dims) walks the same plan.
struct BroadcastPlan {
  std::vector<int64_t> dims;       // collapsed output dims, rank >= 1 (a scalar output is (1,))
  std::vector<int64_t> a_strides;  // element strides of a per collapsed dim
  std::vector<int64_t> b_strides;  // element strides of b per collapsed dim
  int64_t numel = 0;               // product of dims
};

// Throws camrt::Error if the shapes do not broadcast.
BroadcastPlan make_broadcast_plan(const std::vector<int64_t>& a_shape, const std::vector<int64_t>& b_shape);

// out: (plan.numel,) contiguous; a, b: laid out as the plan says. out may alias a (or b) when that operand
// has the output's shape. Integer Div truncates toward zero and throws on division by zero or overflow.
// act: a fused activation applied to each result (float only), out = act(a op b), as a Relu/Clip after it would.
void binary_forward(float* out, const float* a, const float* b, const BroadcastPlan& plan, BinaryOp op,
                    ThreadPool& pool, const FusedActivation& act = {});
void binary_forward(int64_t* out, const int64_t* a, const int64_t* b, const BroadcastPlan& plan, BinaryOp op,
                    ThreadPool& pool);

// Backward of out = a op b (float32): da += sum of dy * d(out)/da over the output positions that read each
// element of a (the broadcast dims are summed out), db likewise. da, db: laid out as a and b (nullptr: not
// wanted); dy: (plan.numel,) contiguous. What each gradient reads:
//   Add, Sub: nothing but dy.  Mul: da reads b, db reads a.
//   Div: da reads b (dy / b); db reads b and y when y != nullptr (-dy * y / b), else a (-dy * a / b^2).
// Sums accumulate in double. Gradients must not alias dy or the operands.
void binary_backward(float* da, float* db, const float* dy, const float* a, const float* b, const float* y,
                     const BroadcastPlan& plan, BinaryOp op, ThreadPool& pool);

}  // namespace camrt
