// Conv (ONNX): attribute parsing, shape inference (explicit pads or auto_pad), the CPU forward and the CPU
// backward (input gradient only) for 1-D and 2-D convolutions; a 1-D conv runs as a 2-D conv with H = 1.
// The arithmetic is kernels/cpu/conv.cpp and, on the GPU, kernels/cuda/conv.cu (cuDNN; its algorithm is chosen
// when workspace_bytes is asked at plan time).
// camrt extensions, set by the fusion pass (engine/fusion.h): attribute "activation" ("relu" | "clip", with
// "activation_min"/"activation_max") fuses the following activation into the conv's output pass; a fourth input
// Z (the output's shape) fuses a residual Add: Y = act(conv(X, W) + B + Z).
#include <algorithm>
#include <limits>

#include "engine/ops/factories.h"
#include "kernels/cpu/conv.h"
#if CAMRT_WITH_CUDA
#include "kernels/cuda/conv.h"
#endif

namespace camrt {

namespace {

class ConvOp : public Op {
 public:
  explicit ConvOp(const Node& node) : Op(node) {
    kernel_shape_ = attr_ints("kernel_shape", {});
    strides_ = attr_ints("strides", {});
    dilations_ = attr_ints("dilations", {});
    pads_ = attr_ints("pads", {});
    group_ = attr_int("group", 1);
    auto_pad_ = attr_string("auto_pad", "NOTSET");
    CAMRT_CHECK(auto_pad_ == "NOTSET" || auto_pad_ == "SAME_UPPER" || auto_pad_ == "SAME_LOWER" ||
                    auto_pad_ == "VALID",
                where() << ": auto_pad '" << auto_pad_ << "' is not NOTSET, SAME_UPPER, SAME_LOWER or VALID");
    CAMRT_CHECK(group_ >= 1, where() << ": group must be >= 1, got " << group_);
    const std::string activation = attr_string("activation", "");
    if (activation == "relu") {
      act_.kind = FusedActivation::kRelu;
    } else if (activation == "clip") {
      act_.kind = FusedActivation::kClip;
      act_.min = attr_float("activation_min", -std::numeric_limits<float>::infinity());
      act_.max = attr_float("activation_max", std::numeric_limits<float>::infinity());
      CAMRT_CHECK(act_.min <= act_.max,
                  where() << ": activation_min " << act_.min << " is above activation_max " << act_.max);
    } else {
      CAMRT_CHECK(activation.empty(), where() << ": unknown fused activation '" << activation << "' (relu or clip)");
    }
  }

  std::vector<TensorDesc> infer(const std::vector<TensorDesc>& inputs) const override {
    expect_inputs(inputs, 2, 4);
    const TensorDesc& x = inputs[0];
    const TensorDesc& w = inputs[1];
    CAMRT_CHECK(x.present && w.present, where() << ": input X and weight W are required");
    CAMRT_CHECK(x.dtype == DType::F32 && w.dtype == DType::F32,
                where() << ": only float32 is supported (X " << dtype_name(x.dtype) << ", W " << dtype_name(w.dtype)
                        << ")");
    const Conv2dShape s = geometry(x.shape, w.shape);
    if (inputs.size() > 2 && inputs[2].present) {
      const TensorDesc& b = inputs[2];
      CAMRT_CHECK(b.dtype == DType::F32, where() << ": bias B must be float32");
      CAMRT_CHECK(b.shape == Shape{s.out_channels},
                  where() << ": bias B " << shape_str(b.shape) << " must be (" << s.out_channels << ",)");
    }
    TensorDesc out;
    out.dtype = DType::F32;
    if (x.shape.size() == 3) out.shape = {s.batch, s.out_channels, s.out_w()};
    else out.shape = {s.batch, s.out_channels, s.out_h(), s.out_w()};
    if (inputs.size() > 3 && inputs[3].present) {
      const TensorDesc& z = inputs[3];
      CAMRT_CHECK(z.dtype == DType::F32 && z.shape == out.shape,
                  where() << ": residual Z " << dtype_name(z.dtype) << " " << shape_str(z.shape)
                          << " must be float32 of the output's shape " << shape_str(out.shape));
    }
    return {out};
  }

  // 2-D convs with symmetric pads (what cuDNN expresses without an explicit padding copy).
  bool forward_channels_last(const std::vector<TensorDesc>& inputs) const override {
    if (inputs.size() < 2 || !inputs[0].present || !inputs[1].present || inputs[0].shape.size() != 4) return false;
    return conv2d_channels_last_supported(geometry(inputs[0].shape, inputs[1].shape));
  }

  size_t workspace_bytes(const std::vector<TensorDesc>& inputs, const Context& ctx) const override {
    const int threads = ctx.pool ? ctx.pool->num_threads() : 1;
    if (inputs.at(0).layout == Layout::NHWC) {  // channels-last storage
      const Conv2dShape s = geometry(inputs.at(0).shape, inputs.at(1).shape);
#if CAMRT_WITH_CUDA
      if (ctx.device == Device::CUDA) {
        CAMRT_CHECK(ctx.cuda, where() << ": a GPU plan needs Context::cuda");
        return cuda::conv2d_forward_nhwc_workspace_bytes(*ctx.cuda, s, inputs.at(0).dtype == DType::F16);
      }
#endif
      return conv2d_forward_nhwc_workspace_bytes(s, threads);
    }
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      CAMRT_CHECK(ctx.cuda, where() << ": a GPU plan needs Context::cuda");
      return cuda::conv2d_workspace_bytes(*ctx.cuda, geometry(inputs.at(0).shape, inputs.at(1).shape),
                                          cuda::ConvDirection::kForward);
    }
#endif
    return conv2d_workspace_bytes(geometry(inputs.at(0).shape, inputs.at(1).shape), threads);
  }

  void forward(const Context& ctx, const std::vector<const Tensor*>& inputs,
               const std::vector<Tensor*>& outputs) const override {
    CAMRT_CHECK(inputs.size() >= 2 && inputs[0] && inputs[1] && outputs.size() == 1 && outputs[0],
                where() << ": forward needs X, W and one output");
    const Conv2dShape s = geometry(inputs[0]->shape, inputs[1]->shape);
    const float* bias = inputs.size() > 2 && inputs[2] ? inputs[2]->f32() : nullptr;
    if (inputs[0]->layout == Layout::NHWC) {
      if (inputs[0]->dtype == DType::F16) forward_nhwc<uint16_t>(ctx, s, inputs, *outputs[0], bias);
      else forward_nhwc<float>(ctx, s, inputs, *outputs[0], bias);
      return;
    }
    const float* residual = inputs.size() > 3 && inputs[3] ? inputs[3]->f32() : nullptr;
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      CAMRT_CHECK(ctx.cuda, where() << ": the GPU forward needs Context::cuda");
      cuda::conv2d_forward(outputs[0]->f32(), inputs[0]->f32(), inputs[1]->f32(), bias, s, act_, ctx.workspace,
                           ctx.workspace_bytes, *ctx.cuda, residual);
      return;
    }
#endif
    CAMRT_CHECK(ctx.device == Device::CPU, where() << ": this build has no CUDA backend");
    CAMRT_CHECK(ctx.pool, where() << ": the context has no thread pool");
    conv2d_forward(outputs[0]->f32(), inputs[0]->f32(), inputs[1]->f32(), bias, s, act_, ctx.workspace,
                   ctx.workspace_bytes, *ctx.pool, residual);
  }

  // dx = conv_transpose(dy, W) reads W only; a fused activation also reads the output Y, which says where dy
  // passes (relu: y > 0; clip: min < y < max). X, B and Z are never read (dZ is the masked dy itself).
  BackwardNeeds backward_needs(const std::vector<TensorDesc>& inputs, size_t num_outputs) const override {
    BackwardNeeds needs{std::vector<bool>(inputs.size(), false),
                        std::vector<bool>(num_outputs, act_.kind != FusedActivation::kNone)};
    if (inputs.size() > 1) needs.inputs[1] = true;
    return needs;
  }

  // The masked dy (fused activation only) first, then the kernel's column matrix and GEMM buffers.
  size_t backward_workspace_bytes(const std::vector<TensorDesc>& inputs, const Context& ctx) const override {
    const Conv2dShape s = geometry(inputs.at(0).shape, inputs.at(1).shape);
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      CAMRT_CHECK(ctx.cuda, where() << ": a GPU plan needs Context::cuda");
      return masked_dy_bytes(s, kCudaAlignBytes) +
             cuda::conv2d_workspace_bytes(*ctx.cuda, s, cuda::ConvDirection::kBackwardData);
    }
#endif
    return masked_dy_bytes(s) + conv2d_backward_data_workspace_bytes(s, ctx.pool ? ctx.pool->num_threads() : 1);
  }

  void backward(const Context& ctx, const std::vector<const Tensor*>& inputs, const std::vector<const Tensor*>& outputs,
                const std::vector<const Tensor*>& doutputs, const std::vector<Tensor*>& dinputs) const override {
    for (size_t i = 1; i < dinputs.size() && i < 3; ++i)
      CAMRT_CHECK(dinputs[i] == nullptr, where() << ": no gradient for " << (i == 1 ? "weight W" : "bias B") << " '"
                                                 << (i < node_.inputs.size() ? node_.inputs[i] : std::string())
                                                 << "': camrt computes activation gradients only");
    Tensor* dz = dinputs.size() > 3 ? dinputs[3] : nullptr;
    const bool dx_wanted = !dinputs.empty() && dinputs[0];
    if ((!dx_wanted && !dz) || doutputs.empty() || !doutputs[0]) return;
    CAMRT_CHECK(inputs.size() >= 2 && inputs[0] && inputs[1], where() << ": backward needs X and W");
    // Context::seeds stacked seeds: the gradients are seeds times the batch (one backward-data over all of them),
    // X and Y one seed's; the activation mask is taken seed by seed against the same Y.
    const Conv2dShape one = geometry(inputs[0]->shape, inputs[1]->shape);
    const int64_t seeds = ctx.seeds;
    Conv2dShape s = one;
    s.batch *= seeds;
    const Tensor& dy = *doutputs[0];
    const int64_t out_numel = one.batch * one.out_channels * one.out_h() * one.out_w();  // one seed's
    CAMRT_CHECK(seeds >= 1 && dy.dtype == DType::F32 && dy.shape.size() == inputs[0]->shape.size() && dy.numel() == seeds * out_numel,
                where() << ": output gradient " << shape_str(dy.shape) << " does not match the conv's output");
    CAMRT_CHECK(!dx_wanted || (dinputs[0]->dtype == DType::F32 && dinputs[0]->numel() == seeds * inputs[0]->numel()),
                where() << ": input gradient " << shape_str(dinputs[0]->shape) << " does not match X " << shape_str(inputs[0]->shape));
    CAMRT_CHECK(!dz || (dz->dtype == DType::F32 && dz->numel() == seeds * out_numel),
                where() << ": residual gradient " << shape_str(dz->shape) << " does not match the conv's output");
    // dy through the fused activation's derivative (from Y: backward_needs flagged it), into the workspace; that
    // masked dy is the residual's gradient as it is, and the conv's pre-activation gradient.
    const bool masks = act_.kind != FusedActivation::kNone;
    CAMRT_CHECK(!masks || (outputs.size() == 1 && outputs[0] && outputs[0]->numel() == out_numel),
                where() << ": backward of the fused activation needs the forward output Y");
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      CAMRT_CHECK(ctx.cuda, where() << ": the GPU backward needs Context::cuda");
      const float* g = dy.f32();
      const size_t used = masked_dy_bytes(s, kCudaAlignBytes);
      if (masks) {  // as below, on the device
        CAMRT_CHECK(ctx.workspace && ctx.workspace_bytes >= used,
                    where() << ": backward workspace of " << ctx.workspace_bytes << " bytes, need at least " << used);
        float* masked = static_cast<float*>(ctx.workspace);
        for (int64_t seed = 0; seed < seeds; ++seed)
          cuda::conv2d_activation_backward(masked + seed * out_numel, dy.f32() + seed * out_numel, outputs[0]->f32(),
                                           out_numel, act_, ctx.guided_relu, ctx.cuda->stream());
        g = masked;
      }
      if (dz) cuda::conv2d_residual_backward(dz->f32(), g, seeds * out_numel, ctx.cuda->stream());
      void* ws = ctx.workspace ? static_cast<unsigned char*>(ctx.workspace) + used : nullptr;
      if (dx_wanted) cuda::conv2d_backward_data(dinputs[0]->f32(), g, inputs[1]->f32(), s, ws, ctx.workspace_bytes - used, *ctx.cuda);
      return;
    }
#endif
    CAMRT_CHECK(ctx.device == Device::CPU, where() << ": this build has no CUDA backend");
    CAMRT_CHECK(ctx.pool, where() << ": the context has no thread pool");
    const float* g = dy.f32();
    const size_t used = masked_dy_bytes(s);
    if (masks) {
      CAMRT_CHECK(ctx.workspace && ctx.workspace_bytes >= used,
                  where() << ": backward workspace of " << ctx.workspace_bytes << " bytes, need at least " << used);
      float* masked = static_cast<float*>(ctx.workspace);
      for (int64_t seed = 0; seed < seeds; ++seed)
        conv2d_activation_backward(masked + seed * out_numel, dy.f32() + seed * out_numel, outputs[0]->f32(), out_numel,
                                   act_, ctx.guided_relu, *ctx.pool);
      g = masked;
    }
    if (dz) conv2d_residual_backward(dz->f32(), g, seeds * out_numel, *ctx.pool);
    void* ws = ctx.workspace ? static_cast<unsigned char*>(ctx.workspace) + used : nullptr;
    if (dx_wanted) conv2d_backward_data(dinputs[0]->f32(), g, inputs[1]->f32(), s, ws, ctx.workspace_bytes - used, *ctx.pool);
  }

  // Stacked seeds in one backward-data call; only the activation mask goes seed by seed.
  bool backward_over_seeds() const override { return true; }

 private:
  // cuDNN's workspace follows the masked dy on the GPU: keep it at cudaMalloc's 256-byte alignment.
  static constexpr size_t kCudaAlignBytes = 256;

  // Workspace bytes for dy masked by the fused activation (a multiple of `align`, so what follows stays aligned).
  size_t masked_dy_bytes(const Conv2dShape& s, size_t align = 64) const {
    if (act_.kind == FusedActivation::kNone) return 0;
    const size_t floats = size_t(s.batch * s.out_channels * s.out_h() * s.out_w());
    return (floats * sizeof(float) + align - 1) / align * align;
  }

  std::string where() const { return "node '" + node_.name + "' (" + node_.op + ")"; }

  // Channels-last storage: X, W, Z and Y NHWC (W as OHWI) in T (uint16_t: half bits, or float), B float32.
  template <typename T>
  void forward_nhwc(const Context& ctx, const Conv2dShape& s, const std::vector<const Tensor*>& inputs, Tensor& y,
                    const float* bias) const {
    const DType type = sizeof(T) == 2 ? DType::F16 : DType::F32;
    const Tensor* z = inputs.size() > 3 ? inputs[3] : nullptr;
    auto fits = [&](const Tensor* t) { return !t || (t->dtype == type && t->layout == Layout::NHWC); };
    CAMRT_CHECK(fits(inputs[0]) && fits(inputs[1]) && fits(z) && fits(&y),
                where() << ": channels-last storage needs X, W, Z and Y NHWC of one type");
    const auto* x = static_cast<const T*>(inputs[0]->data);
    const auto* w = static_cast<const T*>(inputs[1]->data);
    const auto* residual = z ? static_cast<const T*>(z->data) : nullptr;
    auto* out = static_cast<T*>(y.data);
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      CAMRT_CHECK(ctx.cuda, where() << ": the GPU forward needs Context::cuda");
      cuda::conv2d_forward_nhwc(out, x, w, bias, s, act_, ctx.workspace, ctx.workspace_bytes, *ctx.cuda, residual);
      return;
    }
#endif
    CAMRT_CHECK(ctx.device == Device::CPU && ctx.pool, where() << ": no CPU thread pool (or no CUDA backend)");
    conv2d_forward_nhwc(out, x, w, bias, s, act_, ctx.workspace, ctx.workspace_bytes, *ctx.pool, residual);
  }

  // Checks X and W against each other and the attributes, and returns the kernel's view of the conv.
  // Runs on every forward, so it allocates nothing (fixed arrays for the at most two spatial dims).
  Conv2dShape geometry(const Shape& x, const Shape& w) const {
    const size_t rank = x.size();
    CAMRT_CHECK(rank == 3 || rank == 4, where() << ": input X " << shape_str(x)
                                                << " must be (N, C, L) or (N, C, H, W); only 1-D and 2-D convs are supported");
    CAMRT_CHECK(w.size() == rank, where() << ": weight W " << shape_str(w) << " must have the rank of X " << shape_str(x));
    const size_t spatial = rank - 2;
    const int64_t channels = x[1], out_channels = w[0];
    CAMRT_CHECK(channels % group_ == 0 && out_channels % group_ == 0,
                where() << ": group " << group_ << " must divide the input channels " << channels
                        << " and the output channels " << out_channels);
    CAMRT_CHECK(w[1] * group_ == channels,
                where() << ": weight W " << shape_str(w) << " expects " << w[1] * group_
                        << " input channels (W.shape[1] * group " << group_ << "), but X " << shape_str(x) << " has "
                        << channels);
    int64_t kernel[2], strides[2], dilations[2], pads[4] = {0, 0, 0, 0};  // pads: begins, then ends
    for (size_t d = 0; d < spatial; ++d) kernel[d] = w[2 + d];
    if (!kernel_shape_.empty()) {
      bool same = kernel_shape_.size() == spatial;
      for (size_t d = 0; same && d < spatial; ++d) same = kernel_shape_[d] == kernel[d];
      CAMRT_CHECK(same, where() << ": kernel_shape " << shape_str(kernel_shape_) << " disagrees with weight W "
                                << shape_str(w));
    }
    const auto per_axis = [&](const std::vector<int64_t>& v, const char* name, int64_t* out) {
      CAMRT_CHECK(v.empty() || v.size() == spatial,
                  where() << ": " << name << " has " << v.size() << " values for " << spatial << " spatial dims");
      for (size_t d = 0; d < spatial; ++d) {
        out[d] = v.empty() ? 1 : v[d];
        CAMRT_CHECK(out[d] >= 1, where() << ": " << name << " must be >= 1, got " << out[d]);
      }
    };
    per_axis(strides_, "strides", strides);
    per_axis(dilations_, "dilations", dilations);
    if (auto_pad_ == "NOTSET") {
      if (!pads_.empty()) {
        CAMRT_CHECK(pads_.size() == 2 * spatial,
                    where() << ": pads has " << pads_.size() << " values, expected " << 2 * spatial);
        for (size_t i = 0; i < 2 * spatial; ++i) {
          CAMRT_CHECK(pads_[i] >= 0, where() << ": pads must be non-negative, got " << pads_[i]);
          pads[i] = pads_[i];
        }
      }
    } else if (auto_pad_ != "VALID") {
      // SAME_*: output = ceil(input / stride); an odd total pad puts the extra element at the end (SAME_UPPER)
      // or at the beginning (SAME_LOWER).
      for (size_t d = 0; d < spatial; ++d) {
        const int64_t in = x[2 + d];
        const int64_t out = (in + strides[d] - 1) / strides[d];
        const int64_t span = dilations[d] * (kernel[d] - 1) + 1;
        const int64_t total = std::max<int64_t>(0, (out - 1) * strides[d] + span - in);
        const int64_t small = total / 2, large = total - small;
        pads[d] = auto_pad_ == "SAME_UPPER" ? small : large;
        pads[d + spatial] = auto_pad_ == "SAME_UPPER" ? large : small;
      }
    }
    Conv2dShape s;
    s.batch = x[0];
    s.in_channels = channels;
    s.out_channels = out_channels;
    s.groups = group_;
    if (spatial == 1) {  // (N, C, L) runs as (N, C, 1, L)
      s.in_h = 1;
      s.in_w = x[2];
      s.kernel_w = kernel[0];
      s.stride_w = strides[0];
      s.dilation_w = dilations[0];
      s.pad_left = pads[0];
      s.pad_right = pads[1];
    } else {
      s.in_h = x[2];
      s.in_w = x[3];
      s.kernel_h = kernel[0];
      s.kernel_w = kernel[1];
      s.stride_h = strides[0];
      s.stride_w = strides[1];
      s.dilation_h = dilations[0];
      s.dilation_w = dilations[1];
      s.pad_top = pads[0];
      s.pad_left = pads[1];
      s.pad_bottom = pads[2];
      s.pad_right = pads[3];
    }
    const std::string error = conv2d_shape_error(s);
    CAMRT_CHECK(error.empty(), where() << ": " << error << " (X " << shape_str(x) << ", W " << shape_str(w) << ")");
    return s;
  }

  std::vector<int64_t> kernel_shape_, strides_, dilations_, pads_;
  int64_t group_ = 1;
  std::string auto_pad_;
  FusedActivation act_;
};

}  // namespace

std::unique_ptr<Op> make_conv(const Node& node) { return std::make_unique<ConvOp>(node); }

}  // namespace camrt
