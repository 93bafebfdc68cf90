// Add, Sub, Mul, Div with numpy multidirectional broadcasting (float32 and int64): shape inference, CPU
// forward and float32 backward (gradients summed over broadcast dims); the loops are in
// kernels/cpu/elementwise.cpp. Output 0 may share input 0's buffer when the output has input 0's shape
// (forward checks this, see can_run_in_place).
// camrt extension (Add only): attribute "activation" ("relu" | "clip", with "activation_min"/"activation_max") fuses
// the activation that follows into the add, out = act(a + b); engine/fusion.cpp sets it for residual Add+Relu.
#include <algorithm>
#include <deque>
#include <limits>
#include <mutex>

#include "engine/ops/factories.h"
#include "kernels/cpu/conv.h"  // conv2d_activation_backward: the fused activation's gradient mask
#include "kernels/cpu/elementwise.h"
#if CAMRT_WITH_CUDA
#include "kernels/cuda/conv.h"
#include "kernels/cuda/elementwise.h"
#endif

namespace camrt {

namespace {


std::string input_name(const Node& node, size_t i) {
  return i < node.inputs.size() ? node.inputs[i] : "#" + std::to_string(i);
}

// The broadcast plan of each pair of input shapes, made on first use and kept: forward and backward run on every
// call and must not allocate, and the plans of one graph (one per batch size) share the op, so each pair is made
// once. Guarded for plans run from several threads; entries are never removed, so a returned plan stays valid.
class BroadcastPlans {
 public:
  const BroadcastPlan& get(const Shape& a, const Shape& b, const Node& node) const {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Entry& e : entries_)
      if (e.a == a && e.b == b) return e.plan;
    try {
      entries_.push_back(Entry{a, b, make_broadcast_plan(a, b)});
    } catch (const Error& e) {
      CAMRT_FAIL(where(node) << ": " << e.what());
    }
    return entries_.back().plan;
  }

 private:
  struct Entry {
    Shape a, b;
    BroadcastPlan plan;
  };
  mutable std::mutex mutex_;
  mutable std::deque<Entry> entries_;
};

class BinaryArithmeticOp final : public Op {
 public:
  BinaryArithmeticOp(const Node& node, BinaryOp op) : Op(node), op_(op) {
    const std::string activation = attr_string("activation", "");
    CAMRT_CHECK(activation.empty() || op_ == BinaryOp::Add,
                where(node_) << ": a fused activation is supported on Add only");
    if (activation == "relu") {
      act_.kind = FusedActivation::kRelu;
    } else if (activation == "clip") {
      act_.kind = FusedActivation::kClip;
      act_.min = attr_float("activation_min", -std::numeric_limits<float>::infinity());
      act_.max = attr_float("activation_max", std::numeric_limits<float>::infinity());
      CAMRT_CHECK(act_.min <= act_.max,
                  where(node_) << ": activation_min " << act_.min << " is above activation_max " << act_.max);
    } else {
      CAMRT_CHECK(activation.empty(), where(node_) << ": unknown fused activation '" << activation << "' (relu or clip)");
    }
  }

  std::vector<TensorDesc> infer(const std::vector<TensorDesc>& inputs) const override {
    expect_inputs(inputs, 2, 2);
    for (size_t i = 0; i < 2; ++i) {
      CAMRT_CHECK(inputs[i].present, where(node_) << ": input " << i << " is required");
      CAMRT_CHECK(inputs[i].dtype == DType::F32 || inputs[i].dtype == DType::I64,
                  where(node_) << ": input '" << input_name(node_, i) << "' has dtype " << dtype_name(inputs[i].dtype)
                               << "; only F32 and I64 are supported");
    }
    CAMRT_CHECK(inputs[0].dtype == inputs[1].dtype,
                where(node_) << ": inputs '" << input_name(node_, 0) << "' (" << dtype_name(inputs[0].dtype) << ") and '"
                             << input_name(node_, 1) << "' (" << dtype_name(inputs[1].dtype) << ") differ in dtype");
    CAMRT_CHECK(act_.kind == FusedActivation::kNone || inputs[0].dtype == DType::F32,
                where(node_) << ": a fused activation needs F32 inputs, got " << dtype_name(inputs[0].dtype));
    return {TensorDesc{inputs[0].dtype, broadcast_dynamic(inputs[0].shape, inputs[1].shape)}};
  }

  // The Op interface cannot see shapes here; true is only valid when the output has input 0's shape
  // (e.g. not for (1, C, 1, 1) + (N, C, H, W)). The executor must check that; forward rejects a wrong alias.
  bool can_run_in_place() const override { return true; }

  void forward(const Context& ctx, const std::vector<const Tensor*>& inputs,
               const std::vector<Tensor*>& outputs) const override {
    check_context(ctx);
    const Tensor& a = *inputs.at(0);
    const Tensor& b = *inputs.at(1);
    Tensor& out = *outputs.at(0);
    CAMRT_CHECK(a.dtype == b.dtype && out.dtype == a.dtype, where(node_) << ": dtypes of inputs and output differ");
    const BroadcastPlan& plan = plans_.get(a.shape, b.shape, node_);
    CAMRT_CHECK(plan.numel == out.numel(), where(node_) << ": output buffer " << shape_str(out.shape)
                                                        << " does not match the broadcast of " << shape_str(a.shape)
                                                        << " and " << shape_str(b.shape));
    // An output sharing an operand's buffer is only safe when that operand is as large as the output.
    for (const Tensor* in : {&a, &b})
      CAMRT_CHECK(out.data != in->data || in->numel() == plan.numel,
                  where(node_) << ": output shares the buffer of a broadcast input " << shape_str(in->shape));
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      // Integer Div by zero cannot be reported from a kernel: it yields 0 there (see kernels/cuda/elementwise.h).
      if (a.dtype == DType::F32) {
        cuda::binary_forward(out.f32(), a.f32(), b.f32(), plan, op_, ctx.cuda->stream(), act_);
      } else if (a.dtype == DType::I64) {
        cuda::binary_forward(out.i64(), a.i64(), b.i64(), plan, op_, ctx.cuda->stream());
      } else {
        CAMRT_FAIL(where(node_) << ": dtype " << dtype_name(a.dtype) << " is not supported");
      }
      return;
    }
#endif
    if (a.dtype == DType::F32) {
      binary_forward(out.f32(), a.f32(), b.f32(), plan, op_, *ctx.pool, act_);
    } else if (a.dtype == DType::I64) {
      try {
        binary_forward(out.i64(), a.i64(), b.i64(), plan, op_, *ctx.pool);
      } catch (const Error& e) {  // integer division by zero: say which node
        CAMRT_FAIL(where(node_) << ": " << e.what());
      }
    } else {
      CAMRT_FAIL(where(node_) << ": dtype " << dtype_name(a.dtype) << " is not supported");
    }
  }

  // Constants never receive a gradient, so an operand read only for the other's gradient is needed only when
  // that other operand is not a constant (x * weight keeps nothing; x * gate keeps both).
  //   Add, Sub: nothing (a fused activation: y, where dy passes).  Mul: a for db, b for da.
  //   Div: b for either gradient; db also needs a or y: a when a is smaller than the output (a broadcast
  //   operand is cheaper to keep), else y (a full-size a may then be overwritten by an in-place forward).
  BackwardNeeds backward_needs(const std::vector<TensorDesc>& inputs, size_t num_outputs) const override {
    BackwardNeeds needs{std::vector<bool>(inputs.size(), false), std::vector<bool>(num_outputs, false)};
    if (act_.kind != FusedActivation::kNone && num_outputs > 0) needs.outputs[0] = true;
    if (inputs.size() != 2 || op_ == BinaryOp::Add || op_ == BinaryOp::Sub) return needs;
    const bool da_wanted = inputs[0].constant == nullptr;
    const bool db_wanted = inputs[1].constant == nullptr;
    if (op_ == BinaryOp::Mul) {
      needs.inputs[0] = db_wanted;
      needs.inputs[1] = da_wanted;
      return needs;
    }
    needs.inputs[1] = da_wanted || db_wanted;
    if (db_wanted) {
      // backward decides from the run-time shapes with the same rule; with dynamic dims the rule's answer is not
      // known yet, so both are kept.
      const int full = operand_is_full(inputs[0].shape, inputs[1].shape);
      needs.inputs[0] = full != 1;
      if (num_outputs > 0) needs.outputs[0] = full != 0;
    }
    return needs;
  }

  // The CUDA backward may split the reduction onto a small operand (a bias, a scalar) over more blocks; its
  // partial sums live in the workspace. The CPU needs none.
  // A fused activation's masked dy comes first (output-sized, rounded to 256 bytes), the partial sums after it.
  size_t backward_workspace_bytes(const std::vector<TensorDesc>& inputs, const Context& ctx) const override {
    if (inputs.size() != 2 || inputs[0].dtype != DType::F32) return 0;
    for (const TensorDesc& d : inputs)
      for (int64_t n : d.shape)
        if (n < 0) return 0;  // not a concrete plan's shapes
    const BroadcastPlan& plan = plans_.get(inputs[0].shape, inputs[1].shape, node_);
    size_t bytes = masked_bytes(plan.numel);
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) bytes += cuda::binary_backward_workspace_bytes(plan);
#else
    (void)ctx;
#endif
    return bytes;
  }

  void backward(const Context& ctx, const std::vector<const Tensor*>& inputs, const std::vector<const Tensor*>& outputs,
                const std::vector<const Tensor*>& doutputs, const std::vector<Tensor*>& dinputs) const override {
    check_context(ctx);
    Tensor* da = dinputs.size() > 0 ? dinputs[0] : nullptr;
    Tensor* db = dinputs.size() > 1 ? dinputs[1] : nullptr;
    if ((da == nullptr && db == nullptr) || doutputs.empty() || doutputs[0] == nullptr) return;
    const Tensor& a = *inputs.at(0);
    const Tensor& b = *inputs.at(1);
    const Tensor& dy = *doutputs[0];
    CAMRT_CHECK(a.dtype == DType::F32 && b.dtype == DType::F32,
                where(node_) << ": no gradient through " << dtype_name(a.dtype) << " arithmetic (only F32 has a backward)");
    const BroadcastPlan& plan = plans_.get(a.shape, b.shape, node_);
    CAMRT_CHECK(dy.dtype == DType::F32 && dy.numel() == plan.numel,
                where(node_) << ": output gradient " << shape_str(dy.shape) << " does not match the output");
    for (size_t i = 0; i < 2; ++i) {
      const Tensor* d = i == 0 ? da : db;
      const Tensor& x = i == 0 ? a : b;
      CAMRT_CHECK(d == nullptr || (d->dtype == DType::F32 && d->numel() == x.numel()),
                  where(node_) << ": gradient buffer " << shape_str(d->shape) << " does not match input '"
                               << input_name(node_, i) << "' " << shape_str(x.shape));
    }
    // Div's db reads y when a is as large as the output (the rule backward_needs announced), else a.
    const float* y = nullptr;
    if (op_ == BinaryOp::Div && db != nullptr && a.numel() == plan.numel) y = outputs.at(0)->f32();
    // A fused activation: dy through its derivative first, decided from the output y (kept by backward_needs).
    const float* grad = dy.f32();
    unsigned char* scratch = static_cast<unsigned char*>(ctx.workspace);
    size_t scratch_bytes = ctx.workspace_bytes;
    if (act_.kind != FusedActivation::kNone) {
      const size_t bytes = masked_bytes(plan.numel);
      CAMRT_CHECK(outputs.size() == 1 && outputs[0] != nullptr && scratch != nullptr && scratch_bytes >= bytes,
                  where(node_) << ": backward of the fused activation needs the output and " << bytes << " bytes of workspace");
      float* masked = reinterpret_cast<float*>(scratch);
#if CAMRT_WITH_CUDA
      if (ctx.device == Device::CUDA) {
        cuda::conv2d_activation_backward(masked, grad, outputs[0]->f32(), plan.numel, act_, ctx.guided_relu,
                                         ctx.cuda->stream());
      } else
#endif
      {
        conv2d_activation_backward(masked, grad, outputs[0]->f32(), plan.numel, act_, ctx.guided_relu, *ctx.pool);
      }
      grad = masked;
      scratch += bytes;
      scratch_bytes -= bytes;
    }
    try {
#if CAMRT_WITH_CUDA
      if (ctx.device == Device::CUDA) {
        // Deterministic reductions (no atomics); the workspace (backward_workspace_bytes) holds partial sums.
        cuda::binary_backward(da ? da->f32() : nullptr, db ? db->f32() : nullptr, grad, a.f32(), b.f32(), y, plan,
                              op_, scratch_bytes ? scratch : nullptr, scratch_bytes, ctx.cuda->stream());
        return;
      }
#endif
      binary_backward(da ? da->f32() : nullptr, db ? db->f32() : nullptr, grad, a.f32(), b.f32(), y, plan, op_,
                      *ctx.pool);
    } catch (const Error& e) {
      CAMRT_FAIL(where(node_) << ": " << e.what());
    }
  }

 private:
  BroadcastPlans plans_;

  // CPU: a thread pool; CUDA (in a CUDA build): a runtime for the stream.
  void check_context(const Context& ctx) const {
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      CAMRT_CHECK(ctx.cuda != nullptr, where(node_) << ": the CUDA context has no runtime");
      return;
    }
#endif
    CAMRT_CHECK(ctx.device == Device::CPU, where(node_) << ": this build has no CUDA backend");
    CAMRT_CHECK(ctx.pool != nullptr, where(node_) << ": the CPU context has no thread pool");
  }

  // 1 if the operand with `shape` is as large as the broadcast of it with `other` (it broadcasts along no dim),
  // 0 if it is smaller, -1 if dynamic (-1) dims leave it open.
  static int operand_is_full(const Shape& shape, const Shape& other) {
    int result = 1;
    const size_t rank = std::max(shape.size(), other.size());
    for (size_t k = 0; k < rank; ++k) {
      const int64_t d = k < rank - shape.size() ? 1 : shape[k - (rank - shape.size())];
      const int64_t e = k < rank - other.size() ? 1 : other[k - (rank - other.size())];
      if (d == -1 && e == -1) {
        result = -1;  // two dynamic dims need not be equal: one may be 1 at run time
        continue;
      }
      if (d == e || e == 1) continue;  // equal, or the other operand broadcasts
      if (d == 1) {
        if (e == -1) {
          result = -1;  // a dynamic dim of 1 would keep it full, any other size would not
        } else {
          return 0;  // the operand broadcasts along this dim
        }
      }
      // d == -1 against a fixed e > 1: d must equal e at run time.
    }
    return result;
  }

  // Numpy broadcasting that tolerates dynamic dims (-1): a dynamic dim against 1 stays dynamic, against
  // k > 1 becomes k (the only size it can take at run time).
  Shape broadcast_dynamic(const Shape& a, const Shape& b) const {
    const size_t rank = std::max(a.size(), b.size());
    Shape out(rank);
    for (size_t k = 0; k < rank; ++k) {
      const int64_t da = k < rank - a.size() ? 1 : a[k - (rank - a.size())];
      const int64_t db = k < rank - b.size() ? 1 : b[k - (rank - b.size())];
      if (da == db || db == 1) {
        out[k] = da;
      } else if (da == 1) {
        out[k] = db;
      } else if (da == -1 || db == -1) {
        out[k] = da == -1 ? db : da;
      } else {
        CAMRT_FAIL(where(node_) << ": shapes " << shape_str(a) << " and " << shape_str(b) << " do not broadcast");
      }
    }
    return out;
  }

  size_t masked_bytes(int64_t numel) const {
    if (act_.kind == FusedActivation::kNone) return 0;
    return (static_cast<size_t>(numel) * sizeof(float) + 255) / 256 * 256;
  }

  BinaryOp op_;
  FusedActivation act_;
};

}  // namespace

std::unique_ptr<Op> make_add(const Node& node) { return std::make_unique<BinaryArithmeticOp>(node, BinaryOp::Add); }
std::unique_ptr<Op> make_sub(const Node& node) { return std::make_unique<BinaryArithmeticOp>(node, BinaryOp::Sub); }
std::unique_ptr<Op> make_mul(const Node& node) { return std::make_unique<BinaryArithmeticOp>(node, BinaryOp::Mul); }
std::unique_ptr<Op> make_div(const Node& node) { return std::make_unique<BinaryArithmeticOp>(node, BinaryOp::Div); }

}  // namespace camrt
