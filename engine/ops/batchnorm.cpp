// BatchNormalization at inference (running statistics): shape inference, CPU forward and backward. The
// statistics fold into a per-channel scale and shift (kernels/cpu/batchnorm.cpp) held in the plan's workspace;
// output 0 may share input 0's buffer. Training mode is rejected. The backward is dx = dy * scale: the
// statistics are constants, so it reads only gamma and var, never X or Y.
#include <algorithm>
#include <vector>

#include "engine/ops/factories.h"
#include "kernels/cpu/batchnorm.h"
#if CAMRT_WITH_CUDA
#include "kernels/cuda/batchnorm.h"
#endif

namespace camrt {

namespace {


std::string input_name(const Node& node, size_t i) {
  return i < node.inputs.size() ? node.inputs[i] : "#" + std::to_string(i);
}

class BatchNormOp final : public Op {
 public:
  explicit BatchNormOp(const Node& node) : Op(node) {
    epsilon_ = attr_float("epsilon", 1e-5f);
    CAMRT_CHECK(attr_int("training_mode", 0) == 0,
                where(node_) << ": training_mode = 1 is not supported: camrt runs BatchNormalization for inference only");
    // Opset < 9 spatial = 0 means per-activation statistics, shaped (C, H, W) instead of (C,).
    CAMRT_CHECK(attr_int("spatial", 1) == 1, where(node_) << ": spatial = 0 is not supported");
  }

  std::vector<TensorDesc> infer(const std::vector<TensorDesc>& inputs) const override {
    expect_inputs(inputs, 5, 5);
    size_t outputs = 0;
    for (const std::string& name : node_.outputs) outputs += !name.empty();
    CAMRT_CHECK(outputs == 1, where(node_) << ": running mean/variance outputs mean training mode, which is not supported");
    const TensorDesc& x = inputs[0];
    for (size_t i = 0; i < inputs.size(); ++i) {
      CAMRT_CHECK(inputs[i].present, where(node_) << ": input " << i << " is required");
      CAMRT_CHECK(inputs[i].dtype == DType::F32, where(node_) << ": input '" << input_name(node_, i) << "' must be F32, got "
                                                              << dtype_name(inputs[i].dtype));
    }
    CAMRT_CHECK(x.shape.size() >= 2, where(node_) << ": input '" << input_name(node_, 0) << "' must be (N, C, ...), got "
                                                  << shape_str(x.shape));
    const int64_t channels = x.shape[1];
    static const char* const kRoles[] = {"X", "scale", "B", "mean", "var"};
    for (size_t i = 1; i < 5; ++i)
      CAMRT_CHECK(inputs[i].shape.size() == 1 && (channels < 0 || inputs[i].shape[0] == channels),
                  where(node_) << ": " << kRoles[i] << " '" << input_name(node_, i) << "' has shape "
                               << shape_str(inputs[i].shape) << ", expected (" << channels << ",)");
    return {TensorDesc{DType::F32, x.shape}};
  }

  // Room for the folded scale and shift: (C,) each. The same on the GPU, where the fold runs on the device.
  size_t workspace_bytes(const std::vector<TensorDesc>& inputs, const Context&) const override {
    return 2 * static_cast<size_t>(std::max<int64_t>(0, inputs.at(0).shape.at(1))) * sizeof(float);
  }

  bool can_run_in_place() const override { return true; }

  void forward(const Context& ctx, const std::vector<const Tensor*>& inputs,
               const std::vector<Tensor*>& outputs) const override {
    check_context(ctx);
    const Tensor& x = *inputs.at(0);
    Tensor& y = *outputs.at(0);
    const int64_t batch = x.shape.at(0), channels = x.shape.at(1);
    const int64_t inner = channels == 0 || batch == 0 ? 0 : x.numel() / (batch * channels);
    for (size_t i = 1; i < 5; ++i)
      CAMRT_CHECK(inputs.at(i) != nullptr && inputs[i]->numel() == channels,
                  where(node_) << ": input '" << input_name(node_, i) << "' must hold " << channels << " values");
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      // gamma, beta, mean and var are device memory: the fold runs on the device into the plan's workspace.
      float* scale = device_workspace(ctx, 2 * static_cast<size_t>(channels) * sizeof(float));
      float* shift = scale + channels;
      cudaStream_t stream = ctx.cuda->stream();
      cuda::batchnorm_fold(scale, shift, inputs[1]->f32(), inputs[2]->f32(), inputs[3]->f32(), inputs[4]->f32(),
                           channels, epsilon_, stream);
      cuda::batchnorm_forward(y.f32(), x.f32(), scale, shift, batch, channels, inner, stream);
      return;
    }
#endif
    // The plan's workspace (sized by workspace_bytes) keeps the steady state allocation-free; a caller
    // without one (tests, one-off runs) gets a temporary buffer.
    const size_t need = 2 * static_cast<size_t>(channels) * sizeof(float);
    std::vector<float> fallback;
    float* scale = static_cast<float*>(ctx.workspace);
    if (ctx.workspace == nullptr || ctx.workspace_bytes < need) {
      fallback.resize(2 * static_cast<size_t>(channels));
      scale = fallback.data();
    }
    float* shift = scale + channels;
    batchnorm_fold(scale, shift, inputs[1]->f32(), inputs[2]->f32(), inputs[3]->f32(), inputs[4]->f32(), channels,
                   epsilon_);
    batchnorm_forward(y.f32(), x.f32(), scale, shift, batch, channels, inner, *ctx.pool);
  }

  // Only scale (gamma) and var are read; they are weights in every exported CNN, so this normally keeps no
  // activation alive. X, B and mean are not read.
  BackwardNeeds backward_needs(const std::vector<TensorDesc>& inputs, size_t num_outputs) const override {
    BackwardNeeds needs{std::vector<bool>(inputs.size(), false), std::vector<bool>(num_outputs, false)};
    if (inputs.size() > 1) needs.inputs[1] = true;
    if (inputs.size() > 4) needs.inputs[4] = true;
    return needs;
  }

  // Room for the folded scale: (C,).
  size_t backward_workspace_bytes(const std::vector<TensorDesc>& inputs, const Context&) const override {
    return static_cast<size_t>(std::max<int64_t>(0, inputs.at(0).shape.at(1))) * sizeof(float);
  }

  void backward(const Context& ctx, const std::vector<const Tensor*>& inputs, const std::vector<const Tensor*>&,
                const std::vector<const Tensor*>& doutputs, const std::vector<Tensor*>& dinputs) const override {
    check_context(ctx);
    for (size_t i = 1; i < dinputs.size(); ++i)
      CAMRT_CHECK(dinputs[i] == nullptr, where(node_) << ": no gradient for '" << input_name(node_, i)
                                                      << "': camrt computes activation gradients only");
    if (dinputs.empty() || dinputs[0] == nullptr || doutputs.empty() || doutputs[0] == nullptr) return;
    const Tensor& x = *inputs.at(0);
    const Tensor& dy = *doutputs[0];
    Tensor& dx = *dinputs[0];
    const int64_t batch = x.shape.at(0), channels = x.shape.at(1);
    const int64_t inner = channels == 0 || batch == 0 ? 0 : x.numel() / (batch * channels);
    CAMRT_CHECK(dx.dtype == DType::F32 && dy.dtype == DType::F32 && dx.numel() == x.numel() && dy.numel() == x.numel(),
                where(node_) << ": gradient buffers " << shape_str(dx.shape) << " / " << shape_str(dy.shape)
                             << " do not match input '" << input_name(node_, 0) << "' " << shape_str(x.shape));
    for (size_t i : {size_t(1), size_t(4)})
      CAMRT_CHECK(inputs.at(i) != nullptr && inputs[i]->numel() == channels,
                  where(node_) << ": input '" << input_name(node_, i) << "' must hold " << channels << " values");
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      float* scale = device_workspace(ctx, static_cast<size_t>(channels) * sizeof(float));
      cudaStream_t stream = ctx.cuda->stream();
      cuda::batchnorm_fold_scale(scale, inputs[1]->f32(), inputs[4]->f32(), channels, epsilon_, stream);
      cuda::batchnorm_backward(dx.f32(), dy.f32(), scale, batch, channels, inner, stream);
      return;
    }
#endif
    const size_t need = static_cast<size_t>(channels) * sizeof(float);
    std::vector<float> fallback;  // as in forward: only for callers without a planned workspace
    float* scale = static_cast<float*>(ctx.workspace);
    if (ctx.workspace == nullptr || ctx.workspace_bytes < need) {
      fallback.resize(static_cast<size_t>(channels));
      scale = fallback.data();
    }
    batchnorm_fold_scale(scale, inputs[1]->f32(), inputs[4]->f32(), channels, epsilon_);
    batchnorm_backward(dx.f32(), dy.f32(), scale, batch, channels, inner, *ctx.pool);
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

#if CAMRT_WITH_CUDA
  // The plan's device workspace for the folded statistics. Unlike the CPU path there is no temporary fallback:
  // allocating device memory per call is what the plan's workspace exists to avoid.
  float* device_workspace(const Context& ctx, size_t need) const {
    CAMRT_CHECK(need == 0 || (ctx.workspace != nullptr && ctx.workspace_bytes >= need),
                where(node_) << ": needs " << need << " bytes of device workspace, got " << ctx.workspace_bytes);
    return static_cast<float*>(ctx.workspace);
  }
#endif

  float epsilon_ = 1e-5f;
};

}  // namespace

std::unique_ptr<Op> make_batch_norm(const Node& node) { return std::make_unique<BatchNormOp>(node); }

}  // namespace camrt
