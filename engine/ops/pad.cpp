// Pad (ONNX): pads from the constant second input (opset >= 11) or the "pads" attribute (older opsets),
// constant value from the optional third input or the "value" attribute; optional axes input (opset 18).
// The backward reads only the pads and axes inputs (to rebuild the geometry), never the data or the output.
#include <cmath>
#include <mutex>
#include <optional>

#include "engine/ops/factories.h"
#include "kernels/cpu/pad.h"
#if CAMRT_WITH_CUDA
#include "kernels/cuda/pad.h"
#endif

namespace camrt {

namespace {

class PadOp : public Op {
 public:
  explicit PadOp(const Node& node) : Op(node) {
    const std::string mode = attr_string("mode", "constant");
    if (mode == "constant") mode_ = PadMode::Constant;
    else if (mode == "reflect") mode_ = PadMode::Reflect;
    else if (mode == "edge") mode_ = PadMode::Edge;
    else CAMRT_FAIL("node '" << node.name << "' (Pad): unsupported mode '" << mode << "'");
  }

  std::vector<TensorDesc> infer(const std::vector<TensorDesc>& inputs) const override {
    expect_inputs(inputs, 1, 4);
    CAMRT_CHECK(inputs[0].dtype == DType::F32, "node '" << node_.name << "' (Pad): input must be float32");
    const Shape& in = inputs[0].shape;
    const auto pads = resolve_pads(inputs, static_cast<int64_t>(in.size()));
    Shape out = in;
    for (size_t d = 0; d < in.size(); ++d) {
      out[d] = in[d] + pads[d] + pads[d + in.size()];
      CAMRT_CHECK(out[d] >= 0, "node '" << node_.name << "' (Pad): pads make dimension " << d << " negative");
      CAMRT_CHECK(mode_ == PadMode::Constant || in[d] > 0 || out[d] == 0,
                  "node '" << node_.name << "' (Pad): cannot " << (mode_ == PadMode::Edge ? "edge" : "reflect") << "-pad an empty dimension");
    }
#if CAMRT_WITH_CUDA
    remember_constants(inputs);
#endif
    return {TensorDesc{DType::F32, out}};
  }

  void forward(const Context& ctx, const std::vector<const Tensor*>& inputs, const std::vector<Tensor*>& outputs) const override {
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      CAMRT_CHECK(ctx.cuda, "node '" << node_.name << "' (Pad): the CUDA context has no runtime");
      const Tensor& x = *inputs[0];
      const auto pads = device_run_pads(inputs);
      // The value input is device memory: the kernel reads it (nullptr: the attribute).
      const float* value_device = inputs.size() > 2 && inputs[2] && inputs[2]->numel() > 0 ? inputs[2]->f32() : nullptr;
      cuda::pad_forward(outputs[0]->f32(), x.f32(), x.shape.data(), outputs[0]->shape.data(), pads.data(), x.rank(), mode_,
                        attr_float("value", 0.f), value_device, ctx.cuda->stream());
      return;
    }
#endif
    const Tensor& x = *inputs[0];  // (any rank)
    const auto pads = runtime_pads(inputs);
    float value = attr_float("value", 0.f);
    if (inputs.size() > 2 && inputs[2] && inputs[2]->numel() > 0) value = inputs[2]->f32()[0];
    pad_forward(outputs[0]->f32(), x.f32(), x.shape.data(), outputs[0]->shape.data(), pads.data(), x.rank(), mode_, value,
                *ctx.pool);
  }

  BackwardNeeds backward_needs(const std::vector<TensorDesc>& inputs, size_t num_outputs) const override {
    // The pads (input 1) and axes (input 3) values, a few int64s; the data input's shape suffices.
    BackwardNeeds needs{std::vector<bool>(inputs.size(), false), std::vector<bool>(num_outputs, false)};
    for (size_t i : {size_t(1), size_t(3)})
      if (i < inputs.size()) needs.inputs[i] = inputs[i].present;
    return needs;
  }

  void backward(const Context& ctx, const std::vector<const Tensor*>& inputs, const std::vector<const Tensor*>& outputs,
                const std::vector<const Tensor*>& doutputs, const std::vector<Tensor*>& dinputs) const override {
    (void)outputs;
    // The constant value (input 2) is a parameter, not an activation: its gradient is never requested.
    CAMRT_CHECK(dinputs.size() < 3 || !dinputs[2],
                "node '" << node_.name << "' (Pad): the gradient of the constant value input is not supported");
    if (dinputs.empty() || !dinputs[0] || doutputs.empty() || !doutputs[0]) return;
    const Tensor& x = *inputs[0];
    const Tensor& dy = *doutputs[0];
    Tensor& dx = *dinputs[0];
#if CAMRT_WITH_CUDA
    const bool on_gpu = ctx.device == Device::CUDA;
#else
    const bool on_gpu = false;
#endif
    if (!on_gpu)
      CAMRT_CHECK(dx.device == Device::CPU && ctx.pool, "node '" << node_.name << "' (Pad): only the CPU backward exists");
#if CAMRT_WITH_CUDA
    const auto pads = on_gpu ? device_run_pads(inputs) : runtime_pads(inputs);
#else
    const auto pads = runtime_pads(inputs);
#endif
    Shape expected = x.shape;
    for (size_t d = 0; d < x.shape.size(); ++d) expected[d] += pads[d] + pads[d + x.shape.size()];
    CAMRT_CHECK(dx.shape == x.shape && dx.dtype == DType::F32,
                "node '" << node_.name << "' (Pad): input gradient " << shape_str(dx.shape) << " does not match input "
                         << shape_str(x.shape));
    CAMRT_CHECK(dy.shape == expected && dy.dtype == DType::F32,
                "node '" << node_.name << "' (Pad): output gradient " << shape_str(dy.shape) << ", expected "
                         << shape_str(expected));
#if CAMRT_WITH_CUDA
    if (on_gpu) {
      CAMRT_CHECK(ctx.cuda, "node '" << node_.name << "' (Pad): the CUDA context has no runtime");
      cuda::pad_backward(dx.f32(), dy.f32(), x.shape.data(), dy.shape.data(), pads.data(), x.rank(), mode_,
                         ctx.cuda->stream());
      return;
    }
#endif
    pad_backward(dx.f32(), dy.f32(), x.shape.data(), dy.shape.data(), pads.data(), x.rank(), mode_, *ctx.pool);
  }

 private:
  // Pads as resolve_pads returns them, read from the run-time tensors (or the attribute).
  std::vector<int64_t> runtime_pads(const std::vector<const Tensor*>& inputs) const {
    std::vector<TensorDesc> descs;
    for (const Tensor* t : inputs) {
      TensorDesc d;
      if (t) {
        d.dtype = t->dtype;
        d.shape = t->shape;
      } else {
        d.present = false;
      }
      descs.push_back(d);
    }
    return resolve_pads(descs, inputs[0]->rank(), &inputs);
  }

  // Returns [begin_0..begin_{r-1}, end_0..end_{r-1}], reading constants at plan time or tensors at run time.
  std::vector<int64_t> resolve_pads(const std::vector<TensorDesc>& inputs, int64_t rank,
                                    const std::vector<const Tensor*>* runtime = nullptr) const {
    std::vector<int64_t> given;
    if (inputs.size() > 1 && inputs[1].present) {
      if (runtime && (*runtime)[1]) {
        const Tensor& t = *(*runtime)[1];
        CAMRT_CHECK(t.dtype == DType::I64, "node '" << node_.name << "' (Pad): pads must be int64");
        given.assign(t.i64(), t.i64() + t.numel());
      } else {
        CAMRT_CHECK(inputs[1].constant, "node '" << node_.name << "' (Pad): pads must be a constant");
        given = inputs[1].constant->to_int64();
      }
    } else {
      given = attr_ints("pads", {});
    }
    std::vector<int64_t> axes;
    if (inputs.size() > 3 && inputs[3].present) {
      if (runtime && (*runtime)[3]) axes.assign((*runtime)[3]->i64(), (*runtime)[3]->i64() + (*runtime)[3]->numel());
      else {
        CAMRT_CHECK(inputs[3].constant, "node '" << node_.name << "' (Pad): axes must be a constant");
        axes = inputs[3].constant->to_int64();
      }
    } else {
      for (int64_t d = 0; d < rank; ++d) axes.push_back(d);
    }
    CAMRT_CHECK(given.size() == 2 * axes.size(), "node '" << node_.name << "' (Pad): expected " << 2 * axes.size()
                                                          << " pad values, got " << given.size());
    std::vector<int64_t> pads(static_cast<size_t>(2 * rank), 0);
    for (size_t a = 0; a < axes.size(); ++a) {
      const int64_t d = normalize_axis(axes[a], rank);
      pads[d] = given[a];
      pads[d + rank] = given[a + axes.size()];
    }
    return pads;
  }

#if CAMRT_WITH_CUDA
  // On the GPU the pads (input 1) and axes (input 3) tensors are device memory, yet the launch needs them on the
  // host. infer insists they are constants, identical for every plan of the graph, so it keeps host copies here
  // (no shape-dependent state); forward and backward resolve the pads from these copies.
  void remember_constants(const std::vector<TensorDesc>& inputs) const {
    std::lock_guard<std::mutex> lock(constants_mutex_);
    for (size_t i : {size_t(1), size_t(3)})
      if (i < inputs.size() && inputs[i].present && inputs[i].constant) host_constants_[i] = *inputs[i].constant;
  }

  // runtime_pads for device tensors: shapes from the tensors, values from the copies infer kept.
  std::vector<int64_t> device_run_pads(const std::vector<const Tensor*>& inputs) const {
    std::optional<HostTensor> copies[4];
    {
      std::lock_guard<std::mutex> lock(constants_mutex_);
      for (size_t i = 0; i < 4; ++i) copies[i] = host_constants_[i];
    }
    std::vector<TensorDesc> descs;
    for (size_t i = 0; i < inputs.size(); ++i) {
      TensorDesc d;
      if (inputs[i]) {
        d.dtype = inputs[i]->dtype;
        d.shape = inputs[i]->shape;
        if (i == 1 || i == 3) {
          CAMRT_CHECK(i < 4 && copies[i].has_value(), "node '" << node_.name << "' (Pad): " << (i == 1 ? "pads" : "axes")
                                                               << " were not seen by infer (run infer before forward)");
          d.constant = &*copies[i];
        }
      } else {
        d.present = false;
      }
      descs.push_back(d);
    }
    return resolve_pads(descs, inputs[0]->rank());
  }

  mutable std::mutex constants_mutex_;
  mutable std::optional<HostTensor> host_constants_[4];  // by input index; only 1 (pads) and 3 (axes) are used
#endif

  PadMode mode_ = PadMode::Constant;
};

}  // namespace

std::unique_ptr<Op> make_pad(const Node& node) { return std::make_unique<PadOp>(node); }

}  // namespace camrt
