// Softmax: shape inference, CPU forward and backward (kernels in kernels/cpu/softmax.cpp); the backward reads
// only the output. ONNX changed the meaning of `axis` at opset 13: before, the input is flattened to 2-D at
// axis and normalised over all trailing dims (default axis 1); from 13 on, only that one axis is normalised
// (default -1). The importer records the model's opset in the "onnx_opset" attribute; without it, opset 13
// semantics apply.
#include "engine/ops/factories.h"
#include "kernels/cpu/softmax.h"
#if CAMRT_WITH_CUDA
#include "kernels/cuda/softmax.h"
#endif

namespace camrt {

namespace {


class SoftmaxOp final : public Op {
 public:
  explicit SoftmaxOp(const Node& node) : Op(node) {
    flatten_ = attr_int("onnx_opset", 13) < 13;
    axis_ = attr_int("axis", flatten_ ? 1 : -1);
  }

  std::vector<TensorDesc> infer(const std::vector<TensorDesc>& inputs) const override {
    expect_inputs(inputs, 1, 1);
    CAMRT_CHECK(inputs[0].present, where(node_) << ": input 0 is required");
    CAMRT_CHECK(inputs[0].dtype == DType::F32, where(node_) << ": input must be F32, got " << dtype_name(inputs[0].dtype));
    const int64_t rank = static_cast<int64_t>(inputs[0].shape.size());
    CAMRT_CHECK(rank >= 1, where(node_) << ": input must have rank >= 1, got a scalar");
    normalize_axis(axis_, rank);  // throws with the node's name if out of range
    return {TensorDesc{DType::F32, inputs[0].shape}};
  }

  void forward(const Context& ctx, const std::vector<const Tensor*>& inputs,
               const std::vector<Tensor*>& outputs) const override {
    check_context(ctx);
    const Tensor& x = *inputs.at(0);
    Tensor& y = *outputs.at(0);
    int64_t outer, dim, inner;
    view_3d(x.shape, &outer, &dim, &inner);
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      cuda::softmax_forward(y.f32(), x.f32(), outer, dim, inner, ctx.cuda->stream());
      return;
    }
#endif
    softmax_forward(y.f32(), x.f32(), outer, dim, inner, *ctx.pool);
  }

  // dx = y * (dy - sum(dy * y)) along the normalised dims: the output alone suffices.
  BackwardNeeds backward_needs(const std::vector<TensorDesc>& inputs, size_t num_outputs) const override {
    BackwardNeeds needs{std::vector<bool>(inputs.size(), false), std::vector<bool>(num_outputs, false)};
    if (num_outputs > 0) needs.outputs[0] = true;
    return needs;
  }

  size_t backward_workspace_bytes(const std::vector<TensorDesc>&, const Context&) const override { return 0; }

  void backward(const Context& ctx, const std::vector<const Tensor*>& inputs, const std::vector<const Tensor*>& outputs,
                const std::vector<const Tensor*>& doutputs, const std::vector<Tensor*>& dinputs) const override {
    check_context(ctx);
    if (dinputs.empty() || dinputs[0] == nullptr || doutputs.empty() || doutputs[0] == nullptr) return;
    const Tensor& y = *outputs.at(0);
    const Tensor& dy = *doutputs[0];
    Tensor& dx = *dinputs[0];
    const int64_t n = inputs.at(0)->numel();
    CAMRT_CHECK(dx.dtype == DType::F32 && dy.dtype == DType::F32 && dx.numel() == n && dy.numel() == n && y.numel() == n,
                where(node_) << ": gradient buffers " << shape_str(dx.shape) << " / " << shape_str(dy.shape)
                             << " do not match the input " << shape_str(inputs[0]->shape));
    int64_t outer, dim, inner;
    view_3d(y.shape, &outer, &dim, &inner);
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      cuda::softmax_backward(dx.f32(), dy.f32(), y.f32(), outer, dim, inner, ctx.cuda->stream());
      return;
    }
#endif
    softmax_backward(dx.f32(), dy.f32(), y.f32(), outer, dim, inner, *ctx.pool);
  }

 private:
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

  // The (outer, dim, inner) view of a shape: dim is the axis (opset >= 13) or every dim from axis on.
  void view_3d(const Shape& shape, int64_t* outer, int64_t* dim, int64_t* inner) const {
    const int64_t rank = static_cast<int64_t>(shape.size());
    const int64_t axis = normalize_axis(axis_, rank);
    *outer = *dim = *inner = 1;
    for (int64_t k = 0; k < rank; ++k) {
      if (k < axis) {
        *outer *= shape[k];
      } else if (k == axis || flatten_) {
        *dim *= shape[k];
      } else {
        *inner *= shape[k];
      }
    }
  }

  bool flatten_ = false;  // opset < 13: normalise over every dim from axis on
  int64_t axis_ = -1;
};

}  // namespace

std::unique_ptr<Op> make_softmax(const Node& node) { return std::make_unique<SoftmaxOp>(node); }

}  // namespace camrt
