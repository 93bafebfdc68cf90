// ReduceMean (ONNX opsets 11-21): axes come from the 'axes' attribute (opsets < 18) or from a second
// input (opset >= 18), which shape inference needs as a constant; forward and backward read the input's
// values again so a runtime axes tensor works too. The backward needs no forward data beyond that axes
// input. The arithmetic is in kernels/cpu/reduce.cpp and kernels/cuda/reduce.cu. On the GPU the axes input
// lives in device memory, which the host never reads: the constant's values seen by infer are used instead.
#include <algorithm>
#include <mutex>

#include "engine/ops/factories.h"
#include "kernels/cpu/reduce.h"
#if CAMRT_WITH_CUDA
#include "kernels/cuda/reduce.h"
#endif

namespace camrt {

namespace {

// Opset where ReduceMean's axes moved from an attribute to an input.
constexpr int64_t kAxesInputOpset = 18;

class ReduceMeanOp : public Op {
 public:
  explicit ReduceMeanOp(const Node& node) : Op(node) {
    // The importer records the model's opset; without it, the node's own form decides.
    const int64_t opset = attr_int("onnx_opset", 0);
    keepdims_ = attr_int("keepdims", 1) != 0;
    noop_with_empty_axes_ = attr_int("noop_with_empty_axes", 0) != 0;
    attr_axes_given_ = has_attr("axes");
    attr_axes_ = attr_ints("axes", {});
    input_axes_given_ = node.inputs.size() >= 2 && !node.inputs[1].empty();
    CAMRT_CHECK(node.inputs.size() <= 2, where() << "expected 1 or 2 inputs, got " << node.inputs.size());
    CAMRT_CHECK(!(attr_axes_given_ && input_axes_given_), where() << "axes given both as attribute and as input");
    CAMRT_CHECK(!input_axes_given_ || opset == 0 || opset >= kAxesInputOpset,
                where() << "axes as an input needs opset >= " << kAxesInputOpset << ", the model has opset " << opset);
  }

  std::vector<TensorDesc> infer(const std::vector<TensorDesc>& inputs) const override {
    expect_inputs(inputs, 1, 2);
    CAMRT_CHECK(inputs[0].dtype == DType::F32, where() << "expected F32 input, got " << dtype_name(inputs[0].dtype));
    std::vector<int64_t> raw = attr_axes_;
    if (input_axes_given_ && inputs.size() >= 2 && inputs[1].present) {
      const TensorDesc& a = inputs[1];
      CAMRT_CHECK(a.dtype == DType::I64 || a.dtype == DType::I32,
                  where() << "axes input must be I64, got " << dtype_name(a.dtype));
      CAMRT_CHECK(a.shape.size() <= 1, where() << "axes input must be 1-D, got " << shape_str(a.shape));
      if (a.constant) {
        raw = a.constant->to_int64();
        remember_constant_axes(raw);
      } else
        CAMRT_CHECK(checked_numel(a.shape) == 0, where() << "axes input '" << node_.inputs[1]
                                                          << "' must be a constant to infer the output shape");
    }
    const Shape& x = inputs[0].shape;
    const std::vector<int64_t> axes = resolve_axes(raw, static_cast<int64_t>(x.size()));
    TensorDesc out;
    out.shape = output_shape(x, axes);
    return {out};
  }

  void forward(const Context& ctx, const std::vector<const Tensor*>& inputs,
               const std::vector<Tensor*>& outputs) const override {
    const Tensor& x = *inputs[0];
    Tensor& y = *outputs[0];
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      CAMRT_CHECK(ctx.cuda && x.device == Device::CUDA && y.device == Device::CUDA,
                  where() << "the GPU forward needs device tensors and Context::cuda");
      const std::vector<int64_t> axes = resolve_axes(device_axes(inputs), x.rank());
      const Shape expected = output_shape(x.shape, axes);
      CAMRT_CHECK(y.numel() == checked_numel(expected),
                  where() << "output buffer " << shape_str(y.shape) << ", expected " << shape_str(expected));
      cuda::reduce_mean_forward(y.f32(), x.f32(), x.shape, axes, ctx.cuda->stream());
      return;
    }
#endif
    CAMRT_CHECK(x.device == Device::CPU && ctx.pool, where() << "the CPU forward needs host tensors and Context::pool");
    const std::vector<int64_t> axes = resolve_axes(runtime_axes(inputs), x.rank());
    const Shape expected = output_shape(x.shape, axes);
    CAMRT_CHECK(y.numel() == checked_numel(expected),
                where() << "output buffer " << shape_str(y.shape) << ", expected " << shape_str(expected));
    reduce_mean_forward(y.f32(), x.f32(), x.shape, axes, *ctx.pool);
  }

  BackwardNeeds backward_needs(const std::vector<TensorDesc>& inputs, size_t num_outputs) const override {
    // Only the axes input's values (a few int64s); the data input's shape suffices.
    BackwardNeeds needs{std::vector<bool>(inputs.size(), false), std::vector<bool>(num_outputs, false)};
    if (inputs.size() >= 2) needs.inputs[1] = inputs[1].present;
    return needs;
  }

  void backward(const Context& ctx, const std::vector<const Tensor*>& inputs, const std::vector<const Tensor*>& outputs,
                const std::vector<const Tensor*>& doutputs, const std::vector<Tensor*>& dinputs) const override {
    (void)outputs;
    if (dinputs.empty() || !dinputs[0] || doutputs.empty() || !doutputs[0]) return;
    const Tensor& x = *inputs[0];
    const Tensor& dy = *doutputs[0];
    Tensor& dx = *dinputs[0];
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      CAMRT_CHECK(ctx.cuda && dx.device == Device::CUDA && dy.device == Device::CUDA,
                  where() << "the GPU backward needs device tensors and Context::cuda");
      const std::vector<int64_t> axes = resolve_axes(device_axes(inputs), x.rank());
      const Shape expected = output_shape(x.shape, axes);
      CAMRT_CHECK(dx.shape == x.shape && dx.dtype == DType::F32,
                  where() << "input gradient " << shape_str(dx.shape) << " does not match input " << shape_str(x.shape));
      CAMRT_CHECK(dy.numel() == checked_numel(expected) && dy.dtype == DType::F32,
                  where() << "output gradient " << shape_str(dy.shape) << ", expected " << shape_str(expected));
      cuda::reduce_mean_backward(dx.f32(), dy.f32(), x.shape, axes, ctx.cuda->stream());
      return;
    }
#endif
    CAMRT_CHECK(dx.device == Device::CPU && ctx.pool, where() << "the CPU backward needs host tensors and Context::pool");
    const std::vector<int64_t> axes = resolve_axes(runtime_axes(inputs), x.rank());
    const Shape expected = output_shape(x.shape, axes);
    CAMRT_CHECK(dx.shape == x.shape && dx.dtype == DType::F32,
                where() << "input gradient " << shape_str(dx.shape) << " does not match input " << shape_str(x.shape));
    CAMRT_CHECK(dy.numel() == checked_numel(expected) && dy.dtype == DType::F32,
                where() << "output gradient " << shape_str(dy.shape) << ", expected " << shape_str(expected));
    reduce_mean_backward(dx.f32(), dy.f32(), x.shape, axes, *ctx.pool);
  }

 private:
  std::string where() const { return "node '" + node_.name + "' (" + node_.op + "): "; }

  // The raw axes: from the axes input's values when there is one, else the attribute.
  std::vector<int64_t> runtime_axes(const std::vector<const Tensor*>& inputs) const {
    std::vector<int64_t> raw = attr_axes_;
    if (inputs.size() >= 2 && inputs[1]) {
      const Tensor& a = *inputs[1];
      CAMRT_CHECK(a.device == Device::CPU, where() << "axes input must be in host memory");
      CAMRT_CHECK(a.dtype == DType::I64 || a.dtype == DType::I32, where() << "axes input must be I64, got " << dtype_name(a.dtype));
      raw.resize(static_cast<size_t>(a.numel()));
      for (size_t i = 0; i < raw.size(); ++i)
        raw[i] = a.dtype == DType::I32 ? static_cast<const int32_t*>(a.data)[i] : a.i64()[i];
    }
    return raw;
  }

  // The raw axes for a GPU run. An axes input in host memory is read as on the CPU; one in device memory is
  // never read: an empty one means "no axes" (its shape says so), any other must be the constant that infer
  // saw (infer rejects a non-empty runtime axes input), whose values were remembered then.
  std::vector<int64_t> device_axes(const std::vector<const Tensor*>& inputs) const {
    if (inputs.size() < 2 || !inputs[1]) return attr_axes_;
    const Tensor& a = *inputs[1];
    if (a.device == Device::CPU) return runtime_axes(inputs);
    if (a.numel() == 0) return attr_axes_;
    std::lock_guard<std::mutex> lock(constant_axes_mutex_);
    CAMRT_CHECK(constant_axes_known_, where() << "axes input '" << node_.inputs[1]
                                              << "' is in GPU memory and shape inference saw no constant for it");
    CAMRT_CHECK(static_cast<int64_t>(constant_axes_.size()) == a.numel(),
                where() << "axes input '" << node_.inputs[1] << "' has " << a.numel() << " values, the constant seen by"
                        << " shape inference " << constant_axes_.size());
    return constant_axes_;
  }

  // Called by infer: the axes constant's values, for device_axes. One graph constant per node, so every plan
  // (batch size) stores the same values; the lock only guards concurrent planning.
  void remember_constant_axes(const std::vector<int64_t>& raw) const {
    std::lock_guard<std::mutex> lock(constant_axes_mutex_);
    constant_axes_ = raw;
    constant_axes_known_ = true;
  }

  // The sorted set of reduced axes. No axes means all of them, unless noop_with_empty_axes.
  std::vector<int64_t> resolve_axes(const std::vector<int64_t>& raw, int64_t rank) const {
    std::vector<int64_t> axes;
    if (raw.empty()) {
      if (!noop_with_empty_axes_)
        for (int64_t a = 0; a < rank; ++a) axes.push_back(a);
      return axes;
    }
    for (int64_t a : raw) axes.push_back(normalize_axis(a, rank));
    std::sort(axes.begin(), axes.end());
    CAMRT_CHECK(std::adjacent_find(axes.begin(), axes.end()) == axes.end(), where() << "repeated axis in axes");
    return axes;
  }

  Shape output_shape(const Shape& x, const std::vector<int64_t>& axes) const {
    Shape out;
    for (size_t d = 0; d < x.size(); ++d) {
      const bool reduced = std::binary_search(axes.begin(), axes.end(), static_cast<int64_t>(d));
      if (!reduced)
        out.push_back(x[d]);
      else if (keepdims_)
        out.push_back(1);
    }
    return out;
  }

  bool keepdims_ = true;
  bool noop_with_empty_axes_ = false;
  bool attr_axes_given_ = false;
  bool input_axes_given_ = false;
  std::vector<int64_t> attr_axes_;
  // The axes input's constant values as infer last saw them (see device_axes).
  mutable std::mutex constant_axes_mutex_;
  mutable std::vector<int64_t> constant_axes_;
  mutable bool constant_axes_known_ = false;
};

}  // namespace

std::unique_ptr<Op> make_reduce_mean(const Node& node) { return std::make_unique<ReduceMeanOp>(node); }

}  // namespace camrt
