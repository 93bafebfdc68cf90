// Activation ops (Relu, LeakyRelu, Clip, Sigmoid, HardSigmoid, HardSwish) and Identity/Dropout: shape
// inference, CPU forward and backward; the arithmetic is in kernels/cpu/activation.cpp. All are element-wise,
// so output 0 may share input 0's buffer (can_run_in_place). Backward reads the output wherever it fixes the
// derivative exactly (Relu, Sigmoid, Clip, LeakyRelu with alpha >= 0), so in-place forward stays usable there;
// HardSigmoid, HardSwish and LeakyRelu with alpha < 0 read the input.
#include <cstring>
#include <limits>

#include "engine/ops/factories.h"
#include "kernels/cpu/activation.h"
#if CAMRT_WITH_CUDA
#include "kernels/cuda/activation.h"
#include "kernels/cuda/copy.h"
#endif

namespace camrt {

namespace {


// The input's tensor name for messages (the node may list fewer names than inputs in hand-built graphs).
std::string input_name(const Node& node, size_t i) {
  return i < node.inputs.size() ? node.inputs[i] : "#" + std::to_string(i);
}

ThreadPool& cpu_pool(const Context& ctx, const Node& node) {
  CAMRT_CHECK(ctx.device == Device::CPU, where(node) << ": this build has no CUDA backend");
  CAMRT_CHECK(ctx.pool != nullptr, where(node) << ": the CPU context has no thread pool");
  return *ctx.pool;
}

#if CAMRT_WITH_CUDA
cudaStream_t cuda_stream(const Context& ctx, const Node& node) {
  CAMRT_CHECK(ctx.cuda != nullptr, where(node) << ": the CUDA context has no runtime");
  return ctx.cuda->stream();
}
#endif

class ActivationOp final : public Op {
 public:
  ActivationOp(const Node& node, Activation kind) : Op(node), kind_(kind) {
    switch (kind_) {
      case Activation::LeakyRelu:
        params_.alpha = attr_float("alpha", 0.01f);
        break;
      case Activation::HardSigmoid:
        params_.alpha = attr_float("alpha", 0.2f);
        params_.beta = attr_float("beta", 0.5f);
        break;
      case Activation::Clip:
        // Opset < 11 attributes (the ONNX importer also moves constant opset >= 11 inputs here).
        params_.min = attr_float("min", -std::numeric_limits<float>::infinity());
        params_.max = attr_float("max", std::numeric_limits<float>::infinity());
        break;
      default:
        break;
    }
  }

  std::vector<TensorDesc> infer(const std::vector<TensorDesc>& inputs) const override {
    // Clip (opset >= 11): min and max may come as optional inputs 1 and 2.
    expect_inputs(inputs, 1, kind_ == Activation::Clip ? 3 : 1);
    CAMRT_CHECK(inputs[0].present, where(node_) << ": input 0 is required");
    CAMRT_CHECK(inputs[0].dtype == DType::F32,
                where(node_) << ": input '" << input_name(node_, 0) << "' must be F32, got " << dtype_name(inputs[0].dtype));
    for (size_t i = 1; i < inputs.size(); ++i) {
      if (!inputs[i].present) continue;
      const char* role = i == 1 ? "min" : "max";
      CAMRT_CHECK(inputs[i].dtype == DType::F32, where(node_) << ": " << role << " input '" << input_name(node_, i)
                                                              << "' must be F32, got " << dtype_name(inputs[i].dtype));
      bool scalar = true;
      for (int64_t d : inputs[i].shape) scalar = scalar && d == 1;
      CAMRT_CHECK(scalar, where(node_) << ": " << role << " input '" << input_name(node_, i) << "' must be a scalar, got shape "
                                       << shape_str(inputs[i].shape));
    }
    return {TensorDesc{DType::F32, inputs[0].shape}};
  }

  bool can_run_in_place() const override { return true; }

  void forward(const Context& ctx, const std::vector<const Tensor*>& inputs,
               const std::vector<Tensor*>& outputs) const override {
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      const Tensor& x = *inputs.at(0);
      // Clip's bound inputs are device tensors here: the kernel reads them, the host never does.
      cuda::activation_forward(outputs.at(0)->f32(), x.f32(), x.numel(), kind_, params_, device_bound(inputs, 1),
                               device_bound(inputs, 2), cuda_stream(ctx, node_));
      return;
    }
#endif
    ThreadPool& pool = cpu_pool(ctx, node_);
    const Tensor& x = *inputs.at(0);
    Tensor& y = *outputs.at(0);
    ActivationParams params = params_;
    if (kind_ == Activation::Clip) {
      // Bound inputs (constant or computed) are read here, so a runtime min/max works too; they override
      // the attributes, which an opset >= 11 node does not have.
      if (inputs.size() > 1 && inputs[1] != nullptr) params.min = read_bound(*inputs[1], 1);
      if (inputs.size() > 2 && inputs[2] != nullptr) params.max = read_bound(*inputs[2], 2);
    }
    activation_forward(y.f32(), x.f32(), x.numel(), kind_, params, pool);
  }

  BackwardNeeds backward_needs(const std::vector<TensorDesc>& inputs, size_t num_outputs) const override {
    BackwardNeeds needs{std::vector<bool>(inputs.size(), false), std::vector<bool>(num_outputs, false)};
    const bool from_output = activation_backward_reads_output(kind_, params_);
    if (from_output && num_outputs > 0) {
      needs.outputs[0] = true;
    } else if (!inputs.empty()) {
      needs.inputs[0] = true;
    }
    // Clip's backward compares y with the bounds, so bound inputs (scalars, usually constants) must survive.
    for (size_t i = 1; i < inputs.size(); ++i) needs.inputs[i] = inputs[i].present;
    return needs;
  }

  size_t backward_workspace_bytes(const std::vector<TensorDesc>&, const Context&) const override { return 0; }

  void backward(const Context& ctx, const std::vector<const Tensor*>& inputs, const std::vector<const Tensor*>& outputs,
                const std::vector<const Tensor*>& doutputs, const std::vector<Tensor*>& dinputs) const override {
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      check_no_bound_gradients(dinputs);
      if (dinputs.empty() || dinputs[0] == nullptr || doutputs.empty() || doutputs[0] == nullptr) return;
      const Tensor& saved = activation_backward_reads_output(kind_, params_) ? *outputs.at(0) : *inputs.at(0);
      const Tensor& dy = *doutputs[0];
      Tensor& dx = *dinputs[0];
      const int64_t n = inputs.at(0)->numel();
      check_gradients(dx, dy, saved, n, *inputs[0]);
      cuda::activation_backward(dx.f32(), dy.f32(), saved.f32(), n, kind_, params_, device_bound(inputs, 1),
                                device_bound(inputs, 2), ctx.guided_relu, cuda_stream(ctx, node_));
      return;
    }
#endif
    ThreadPool& pool = cpu_pool(ctx, node_);
    check_no_bound_gradients(dinputs);
    if (dinputs.empty() || dinputs[0] == nullptr || doutputs.empty() || doutputs[0] == nullptr) return;
    ActivationParams params = params_;
    if (kind_ == Activation::Clip) {
      if (inputs.size() > 1 && inputs[1] != nullptr) params.min = read_bound(*inputs[1], 1);
      if (inputs.size() > 2 && inputs[2] != nullptr) params.max = read_bound(*inputs[2], 2);
    }
    const Tensor& saved = activation_backward_reads_output(kind_, params_) ? *outputs.at(0) : *inputs.at(0);
    const Tensor& dy = *doutputs[0];
    Tensor& dx = *dinputs[0];
    const int64_t n = inputs.at(0)->numel();
    check_gradients(dx, dy, saved, n, *inputs[0]);
    // Guided Backprop changes ReLU only (as pytorch-grad-cam's GuidedBackpropReLUModel does); ReLU6 exported as
    // Clip keeps its plain gradient.
    activation_backward(dx.f32(), dy.f32(), saved.f32(), n, kind_, params, ctx.guided_relu, pool);
  }

 private:
  float read_bound(const Tensor& t, size_t index) const {
    CAMRT_CHECK(t.dtype == DType::F32 && t.numel() == 1 && t.device == Device::CPU,
                where(node_) << ": input '" << input_name(node_, index) << "' must be one F32 value on the CPU");
    return t.f32()[0];
  }

  void check_no_bound_gradients(const std::vector<Tensor*>& dinputs) const {
    for (size_t i = 1; i < dinputs.size(); ++i)
      CAMRT_CHECK(dinputs[i] == nullptr, where(node_) << ": no gradient flows to the bound input '" << input_name(node_, i)
                                                      << "' (Clip bounds are treated as constants)");
  }

  void check_gradients(const Tensor& dx, const Tensor& dy, const Tensor& saved, int64_t n, const Tensor& x) const {
    CAMRT_CHECK(dx.dtype == DType::F32 && dy.dtype == DType::F32 && dx.numel() == n && dy.numel() == n && saved.numel() == n,
                where(node_) << ": gradient buffers " << shape_str(dx.shape) << " / " << shape_str(dy.shape)
                             << " do not match input '" << input_name(node_, 0) << "' " << shape_str(x.shape));
  }

#if CAMRT_WITH_CUDA
  // Clip's bound input `index` as a device pointer for the kernel (nullptr: absent, the attribute applies).
  // Shape and dtype are host metadata, so they are checked here; the value stays on the device.
  const float* device_bound(const std::vector<const Tensor*>& inputs, size_t index) const {
    if (kind_ != Activation::Clip || inputs.size() <= index || inputs[index] == nullptr) return nullptr;
    const Tensor& t = *inputs[index];
    CAMRT_CHECK(t.dtype == DType::F32 && t.numel() == 1,
                where(node_) << ": input '" << input_name(node_, index) << "' must be one F32 value");
    return t.f32();
  }
#endif

  Activation kind_;
  ActivationParams params_;
};

// Identity, and Dropout at inference: output 0 is input 0; Dropout's optional mask output is all true.
class IdentityOp final : public Op {
 public:
  explicit IdentityOp(const Node& node) : Op(node), dropout_(node.op == "Dropout") {}

  std::vector<TensorDesc> infer(const std::vector<TensorDesc>& inputs) const override {
    // Dropout (opset >= 12): data, ratio, training_mode.
    expect_inputs(inputs, 1, dropout_ ? 3 : 1);
    CAMRT_CHECK(inputs[0].present, where(node_) << ": input 0 is required");
    CAMRT_CHECK(!node_.outputs.empty() && node_.outputs.size() <= (dropout_ ? 2u : 1u),
                where(node_) << ": unexpected number of outputs (" << node_.outputs.size() << ")");
    if (dropout_ && inputs.size() > 2 && inputs[2].present && inputs[2].constant != nullptr) {
      const std::vector<int64_t> mode = inputs[2].constant->to_int64();
      CAMRT_CHECK(mode.size() == 1 && mode[0] == 0,
                  where(node_) << ": training_mode must be false: camrt runs Dropout for inference only");
    }
    std::vector<TensorDesc> outs{TensorDesc{inputs[0].dtype, inputs[0].shape}};
    if (node_.outputs.size() > 1) outs.push_back(TensorDesc{DType::Bool, inputs[0].shape});
    return outs;
  }

  bool can_run_in_place() const override { return true; }

  void forward(const Context& ctx, const std::vector<const Tensor*>& inputs,
               const std::vector<Tensor*>& outputs) const override {
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      // training_mode (input 2) is device memory here; infer already rejected a constant true, and the ONNX
      // importer requires it to be a constant, so it is not re-read.
      const Tensor& x = *inputs.at(0);
      Tensor& y = *outputs.at(0);
      CAMRT_CHECK(y.dtype == x.dtype && y.nbytes() == x.nbytes(),
                  where(node_) << ": output buffer does not match input '" << input_name(node_, 0) << "'");
      cudaStream_t stream = cuda_stream(ctx, node_);
      if (y.data != x.data && x.nbytes() > 0) copy_on_device(*ctx.cuda, y.data, x.data, x.nbytes());
      if (outputs.size() > 1 && outputs[1] != nullptr) {
        Tensor& mask = *outputs[1];
        CAMRT_CHECK(mask.dtype == DType::Bool, where(node_) << ": mask output must be BOOL");
        cuda::fill_bytes(mask.data, 1, mask.nbytes(), stream);  // nothing is dropped at inference
      }
      return;
    }
#endif
    CAMRT_CHECK(ctx.device == Device::CPU, where(node_) << ": this build has no CUDA backend");
    if (dropout_ && inputs.size() > 2 && inputs[2] != nullptr) {
      const Tensor& mode = *inputs[2];
      CAMRT_CHECK(mode.dtype == DType::Bool && mode.numel() == 1 && static_cast<const uint8_t*>(mode.data)[0] == 0,
                  where(node_) << ": training_mode must be false: camrt runs Dropout for inference only");
    }
    const Tensor& x = *inputs.at(0);
    Tensor& y = *outputs.at(0);
    CAMRT_CHECK(y.dtype == x.dtype && y.nbytes() == x.nbytes(),
                where(node_) << ": output buffer does not match input '" << input_name(node_, 0) << "'");
    if (y.data != x.data && x.nbytes() > 0) std::memcpy(y.data, x.data, x.nbytes());
    if (outputs.size() > 1 && outputs[1] != nullptr) {
      Tensor& mask = *outputs[1];
      CAMRT_CHECK(mask.dtype == DType::Bool, where(node_) << ": mask output must be BOOL");
      if (mask.numel() > 0) std::memset(mask.data, 1, mask.nbytes());  // nothing is dropped at inference
    }
  }

  // dx += dy reads no forward value (the mask output carries no gradient; ratio and training_mode get none).
  BackwardNeeds backward_needs(const std::vector<TensorDesc>& inputs, size_t num_outputs) const override {
    return BackwardNeeds{std::vector<bool>(inputs.size(), false), std::vector<bool>(num_outputs, false)};
  }

  size_t backward_workspace_bytes(const std::vector<TensorDesc>&, const Context&) const override { return 0; }

  void backward(const Context& ctx, const std::vector<const Tensor*>& inputs, const std::vector<const Tensor*>&,
                const std::vector<const Tensor*>& doutputs, const std::vector<Tensor*>& dinputs) const override {
#if CAMRT_WITH_CUDA
    const bool on_gpu = ctx.device == Device::CUDA;
#else
    const bool on_gpu = false;
#endif
    if (!on_gpu) {
      CAMRT_CHECK(ctx.device == Device::CPU, where(node_) << ": this build has no CUDA backend");
      CAMRT_CHECK(ctx.pool != nullptr, where(node_) << ": the CPU context has no thread pool");
    }
    if (dinputs.empty() || dinputs[0] == nullptr || doutputs.empty() || doutputs[0] == nullptr) return;
    CAMRT_CHECK(inputs.at(0)->dtype == DType::F32,
                where(node_) << ": no gradient for input '" << input_name(node_, 0) << "' of dtype " << dtype_name(inputs[0]->dtype));
    const Tensor& dy = *doutputs[0];
    Tensor& dx = *dinputs[0];
    const int64_t n = dx.numel();
    CAMRT_CHECK(dx.dtype == DType::F32 && dy.dtype == DType::F32 && dy.numel() == n && inputs[0]->numel() == n,
                where(node_) << ": gradient buffers " << shape_str(dx.shape) << " / " << shape_str(dy.shape)
                             << " do not match input '" << input_name(node_, 0) << "' " << shape_str(inputs[0]->shape));
#if CAMRT_WITH_CUDA
    if (on_gpu) {
      cuda::accumulate(dx.f32(), dy.f32(), n, cuda_stream(ctx, node_));
      return;
    }
#endif
    float* d = dx.f32();
    const float* g = dy.f32();
    // ~32K floats: below that a memory-bound add is cheaper on one thread than waking the workers.
    ctx.pool->parallel_for(
        n, [=](int64_t begin, int64_t end) { for (int64_t i = begin; i < end; ++i) d[i] += g[i]; }, int64_t(1) << 15);
  }

 private:
  bool dropout_;
};

}  // namespace

std::unique_ptr<Op> make_relu(const Node& node) { return std::make_unique<ActivationOp>(node, Activation::Relu); }
std::unique_ptr<Op> make_leaky_relu(const Node& node) {
  return std::make_unique<ActivationOp>(node, Activation::LeakyRelu);
}
std::unique_ptr<Op> make_clip(const Node& node) { return std::make_unique<ActivationOp>(node, Activation::Clip); }
std::unique_ptr<Op> make_sigmoid(const Node& node) {
  return std::make_unique<ActivationOp>(node, Activation::Sigmoid);
}
std::unique_ptr<Op> make_hard_sigmoid(const Node& node) {
  return std::make_unique<ActivationOp>(node, Activation::HardSigmoid);
}
std::unique_ptr<Op> make_hard_swish(const Node& node) {
  return std::make_unique<ActivationOp>(node, Activation::HardSwish);
}
std::unique_ptr<Op> make_identity(const Node& node) { return std::make_unique<IdentityOp>(node); }

}  // namespace camrt
