// MaxPool and AveragePool (1-D, 2-D, 3-D; ONNX opsets 11-21) and GlobalAveragePool (any rank >= 3):
// attributes, output shapes, forward and backward dispatch. The arithmetic is in kernels/cpu/pool.cpp. Pads
// never materialise: kernels clip each window, so pad values never enter a max or a sum. Only MaxPool's
// backward reads forward data (input and output, to find each window's argmax); the averages need shapes only.
// On the GPU the twins in kernels/cuda/pool.cu run with the same geometry; none needs a workspace.
#include <algorithm>

#include "engine/ops/factories.h"
#include "kernels/cpu/pool.h"
#if CAMRT_WITH_CUDA
#include "kernels/cuda/pool.h"
#endif

namespace camrt {

namespace {

enum class PoolKind { Max, Average };

class PoolOp : public Op {
 public:
  PoolOp(const Node& node, PoolKind kind) : Op(node), kind_(kind) {
    kernel_ = attr_ints("kernel_shape", {});
    CAMRT_CHECK(!kernel_.empty() && kernel_.size() <= 3,
                where() << "attribute 'kernel_shape' must list 1 to 3 sizes, got " << kernel_.size());
    strides_ = attr_ints("strides", {});
    pads_ = attr_ints("pads", {});
    dilations_ = attr_ints("dilations", {});
    ceil_mode_ = attr_int("ceil_mode", 0) != 0;
    auto_pad_ = attr_string("auto_pad", "NOTSET");
    CAMRT_CHECK(auto_pad_ == "NOTSET" || auto_pad_ == "VALID" || auto_pad_ == "SAME_UPPER" || auto_pad_ == "SAME_LOWER",
                where() << "unknown auto_pad '" << auto_pad_ << "' (expected NOTSET, VALID, SAME_UPPER or SAME_LOWER)");
    if (kind_ == PoolKind::Average) {
      count_include_pad_ = attr_int("count_include_pad", 0) != 0;
    } else {
      CAMRT_CHECK(attr_int("storage_order", 0) == 0, where() << "storage_order=1 (column-major indices) is not supported");
      CAMRT_CHECK(node.outputs.size() < 2 || node.outputs[1].empty(),
                  where() << "the Indices output ('" << node.outputs[1] << "') is not supported");
    }
    const size_t n = kernel_.size();
    CAMRT_CHECK(strides_.empty() || strides_.size() == n, where() << "'strides' must have " << n << " values");
    CAMRT_CHECK(dilations_.empty() || dilations_.size() == n, where() << "'dilations' must have " << n << " values");
    CAMRT_CHECK(pads_.empty() || pads_.size() == 2 * n, where() << "'pads' must have " << 2 * n << " values");
    for (size_t i = 0; i < n; ++i) {
      CAMRT_CHECK(kernel_[i] >= 1, where() << "kernel_shape must be positive");
      CAMRT_CHECK(strides_.empty() || strides_[i] >= 1, where() << "strides must be positive");
      CAMRT_CHECK(dilations_.empty() || dilations_[i] >= 1, where() << "dilations must be positive");
    }
    bool any_pad = false;
    for (int64_t p : pads_) {
      CAMRT_CHECK(p >= 0, where() << "pads must be non-negative");
      any_pad = any_pad || p != 0;
    }
    CAMRT_CHECK(!any_pad || auto_pad_ == "NOTSET", where() << "explicit pads cannot be combined with auto_pad=" << auto_pad_);
  }

  std::vector<TensorDesc> infer(const std::vector<TensorDesc>& inputs) const override {
    expect_inputs(inputs, 1, 1);
    CAMRT_CHECK(inputs[0].dtype == DType::F32, where() << "expected F32 input, got " << dtype_name(inputs[0].dtype));
    TensorDesc out;
    out.shape = output_shape(inputs[0].shape);
    return {out};
  }

  // 2-D max pooling also runs channels-last (half or float32): a max picks one of its inputs, exact in any type.
  bool forward_channels_last(const std::vector<TensorDesc>& inputs) const override {
    return kind_ == PoolKind::Max && inputs.size() == 1 && inputs[0].shape.size() == 4;
  }

  void forward(const Context& ctx, const std::vector<const Tensor*>& inputs,
               const std::vector<Tensor*>& outputs) const override {
    const Tensor& x = *inputs[0];
    Tensor& y = *outputs[0];
    const PoolGeometry g = geometry(x.shape);
    CAMRT_CHECK(is_output_shape(y.shape, x.shape, g),
                where() << "output buffer " << shape_str(y.shape) << ", expected " << shape_str(output_shape(x.shape)));
    if (x.layout == Layout::NHWC) {
      CAMRT_CHECK(kind_ == PoolKind::Max && y.layout == Layout::NHWC && y.dtype == x.dtype,
                  where() << "channels-last storage: max pooling only, output in the input's layout and type");
      if (x.dtype == DType::F16) max_pool_nhwc(ctx, static_cast<const uint16_t*>(x.data), static_cast<uint16_t*>(y.data), x, g);
      else max_pool_nhwc(ctx, x.f32(), y.f32(), x, g);
      return;
    }
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      CAMRT_CHECK(ctx.cuda && x.device == Device::CUDA && y.device == Device::CUDA,
                  where() << "the GPU forward needs device tensors and Context::cuda");
      if (kind_ == PoolKind::Max)
        cuda::max_pool_forward(y.f32(), x.f32(), g, ctx.cuda->stream());
      else
        cuda::average_pool_forward(y.f32(), x.f32(), g, count_include_pad_, ctx.cuda->stream());
      return;
    }
#endif
    CAMRT_CHECK(x.device == Device::CPU && ctx.pool, where() << "the CPU forward needs host tensors and Context::pool");
    if (kind_ == PoolKind::Max)
      max_pool_forward(y.f32(), x.f32(), g, *ctx.pool);
    else
      average_pool_forward(y.f32(), x.f32(), g, count_include_pad_, *ctx.pool);
  }

  template <typename T>
  void max_pool_nhwc(const Context& ctx, const T* in, T* out, const Tensor& x, const PoolGeometry& g) const {
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      cuda::max_pool_forward_nhwc(out, in, x.shape[0], x.shape[1], g, ctx.cuda->stream());
      return;
    }
#endif
    max_pool_forward_nhwc(out, in, x.shape[0], x.shape[1], g, *ctx.pool);
  }

  BackwardNeeds backward_needs(const std::vector<TensorDesc>& inputs, size_t num_outputs) const override {
    // MaxPool finds each window's argmax by comparing its input with its output; no Indices output is kept.
    const bool is_max = kind_ == PoolKind::Max;
    return BackwardNeeds{std::vector<bool>(inputs.size(), is_max), std::vector<bool>(num_outputs, is_max)};
  }

  void backward(const Context& ctx, const std::vector<const Tensor*>& inputs, const std::vector<const Tensor*>& outputs,
                const std::vector<const Tensor*>& doutputs, const std::vector<Tensor*>& dinputs) const override {
    if (dinputs.empty() || !dinputs[0] || doutputs.empty() || !doutputs[0]) return;
    const Tensor& x = *inputs[0];
    const Tensor& dy = *doutputs[0];
    Tensor& dx = *dinputs[0];
    const PoolGeometry g = geometry(x.shape);
    CAMRT_CHECK(dx.shape == x.shape && dx.dtype == DType::F32,
                where() << "input gradient " << shape_str(dx.shape) << " does not match input " << shape_str(x.shape));
    CAMRT_CHECK(is_output_shape(dy.shape, x.shape, g) && dy.dtype == DType::F32,
                where() << "output gradient " << shape_str(dy.shape) << ", expected " << shape_str(output_shape(x.shape)));
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      CAMRT_CHECK(ctx.cuda && dx.device == Device::CUDA && dy.device == Device::CUDA,
                  where() << "the GPU backward needs device tensors and Context::cuda");
      if (kind_ == PoolKind::Max) {
        const Tensor& y = *outputs[0];
        CAMRT_CHECK(is_output_shape(y.shape, x.shape, g) && x.device == Device::CUDA && y.device == Device::CUDA,
                    where() << "forward output " << shape_str(y.shape) << ", expected " << shape_str(output_shape(x.shape)) << " on the GPU");
        cuda::max_pool_backward(dx.f32(), dy.f32(), x.f32(), y.f32(), g, ctx.cuda->stream());
      } else {
        cuda::average_pool_backward(dx.f32(), dy.f32(), g, count_include_pad_, ctx.cuda->stream());
      }
      return;
    }
#endif
    CAMRT_CHECK(dx.device == Device::CPU && ctx.pool, where() << "the CPU backward needs host tensors and Context::pool");
    if (kind_ == PoolKind::Max) {
      const Tensor& y = *outputs[0];
      CAMRT_CHECK(is_output_shape(y.shape, x.shape, g),
                  where() << "forward output " << shape_str(y.shape) << ", expected " << shape_str(output_shape(x.shape)));
      max_pool_backward(dx.f32(), dy.f32(), x.f32(), y.f32(), g, *ctx.pool, ctx.workspace, ctx.workspace_bytes);
    } else {
      average_pool_backward(dx.f32(), dy.f32(), g, count_include_pad_, *ctx.pool, ctx.workspace, ctx.workspace_bytes);
    }
  }

  // The CPU backward's window taps (kernels/cpu/pool.h); the GPU kernels need none.
  size_t backward_workspace_bytes(const std::vector<TensorDesc>& inputs, const Context& ctx) const override {
    return ctx.device == Device::CPU ? pool_backward_scratch_bytes(geometry(inputs.at(0).shape)) : 0;
  }

 private:
  std::string where() const { return "node '" + node_.name + "' (" + node_.op + "): "; }

  // The output shape for input x (N, C, then the geometry's output sizes).
  Shape output_shape(const Shape& x) const {
    const PoolGeometry g = geometry(x);
    Shape out = {x[0], x[1]};
    for (size_t i = 0; i < kernel_.size(); ++i) out.push_back(g.out[3 - kernel_.size() + i]);
    checked_numel(out);
    return out;
  }
  // y == output_shape(x) for g = geometry(x), without making a Shape (forward and backward check it every call).
  bool is_output_shape(const Shape& y, const Shape& x, const PoolGeometry& g) const {
    const size_t n = kernel_.size();
    if (y.size() != n + 2 || x.size() != n + 2 || y[0] != x[0] || y[1] != x[1]) return false;
    for (size_t i = 0; i < n; ++i)
      if (y[2 + i] != g.out[3 - n + i]) return false;
    return true;
  }

  // The kernel geometry for input x, checked; allocates nothing. Spatial axis i of an n-D pool maps to geometry
  // axis 3 - n + i, so the leading geometry axes of 1-D and 2-D pools stay size 1.
  PoolGeometry geometry(const Shape& x) const {
    const size_t n = kernel_.size();
    CAMRT_CHECK(x.size() == n + 2, where() << "input " << shape_str(x) << " must have rank " << n + 2
                                           << " (N, C and the " << n << " spatial dims of kernel_shape)");
    PoolGeometry geometry;
    CAMRT_CHECK(x[0] >= 0 && x[1] >= 0 && !__builtin_mul_overflow(x[0], x[1], &geometry.planes),
                where() << "input " << shape_str(x) << ": N * C out of range");
    // Attributes come from model files: bounded first, so the extent and padded-span arithmetic cannot overflow
    // (2^31 is far beyond any real kernel, stride, dilation, pad or input side).
    constexpr int64_t kMaxAttribute = int64_t(1) << 31;
    for (const std::vector<int64_t>* list : {&kernel_, &strides_, &dilations_, &pads_})
      for (int64_t v : *list)
        CAMRT_CHECK(v >= -kMaxAttribute && v <= kMaxAttribute, where() << "attribute value " << v << " is out of range (|v| <= 2^31)");
    for (size_t i = 2; i < x.size(); ++i)
      CAMRT_CHECK(x[i] <= kMaxAttribute, where() << "input " << shape_str(x) << ": spatial size out of range");
    for (size_t i = 0; i < n; ++i) {
      const int64_t in = x[2 + i], k = kernel_[i];
      const int64_t s = strides_.empty() ? 1 : strides_[i];
      const int64_t d = dilations_.empty() ? 1 : dilations_[i];
      const int64_t extent = (k - 1) * d + 1;  // input positions one window spans
      int64_t pad_begin = pads_.empty() ? 0 : pads_[i];
      int64_t pad_end = pads_.empty() ? 0 : pads_[n + i];
      int64_t o = 0;
      if (auto_pad_ == "SAME_UPPER" || auto_pad_ == "SAME_LOWER") {
        // Output ceil(in / s); the total pad making that fit is split, the odd one at the end (UPPER)
        // or at the beginning (LOWER). ceil_mode does not apply.
        o = (in + s - 1) / s;
        const int64_t total = std::max<int64_t>(0, (o - 1) * s + extent - in);
        pad_begin = auto_pad_ == "SAME_UPPER" ? total / 2 : total - total / 2;
        pad_end = total - pad_begin;
      } else {
        const int64_t span = in + pad_begin + pad_end - extent;  // VALID: pads are zero
        CAMRT_CHECK(span >= 0, where() << "input " << shape_str(x) << " is too small: spatial dim " << i << " ("
                                       << in << " + pads " << pad_begin << "+" << pad_end
                                       << ") is shorter than the kernel extent " << extent);
        if (ceil_mode_ && auto_pad_ == "NOTSET") {
          o = (span + s - 1) / s + 1;
          // The last window must start inside the input or the begin padding (PyTorch / ONNX rule).
          if ((o - 1) * s >= in + pad_begin) --o;
        } else {
          o = span / s + 1;
        }
      }
      CAMRT_CHECK(o >= 0, where() << "input " << shape_str(x) << ": negative output size");
      const size_t a = 3 - n + i;
      geometry.in[a] = in;
      geometry.out[a] = o;
      geometry.kernel[a] = k;
      geometry.stride[a] = s;
      geometry.dilation[a] = d;
      geometry.pad_begin[a] = pad_begin;
      geometry.pad_end[a] = pad_end;
    }
    int64_t total = geometry.planes;  // the output's element count must be representable (checked_numel's rule)
    for (int64_t o : geometry.out)
      CAMRT_CHECK(!__builtin_mul_overflow(total, o, &total), where() << "input " << shape_str(x) << ": output size out of range");
    return geometry;
  }

  PoolKind kind_;
  std::vector<int64_t> kernel_, strides_, pads_, dilations_;
  bool ceil_mode_ = false;
  bool count_include_pad_ = false;
  std::string auto_pad_;
};

class GlobalAveragePoolOp : public Op {
 public:
  using Op::Op;

  std::vector<TensorDesc> infer(const std::vector<TensorDesc>& inputs) const override {
    expect_inputs(inputs, 1, 1);
    const Shape& x = inputs[0].shape;
    CAMRT_CHECK(inputs[0].dtype == DType::F32, where() << "expected F32 input, got " << dtype_name(inputs[0].dtype));
    CAMRT_CHECK(x.size() >= 3, where() << "input " << shape_str(x) << " must have rank >= 3 (N, C, spatial...)");
    TensorDesc out;
    out.shape = output_shape(x);
    return {out};
  }

  void forward(const Context& ctx, const std::vector<const Tensor*>& inputs,
               const std::vector<Tensor*>& outputs) const override {
    const Tensor& x = *inputs[0];
    Tensor& y = *outputs[0];
    CAMRT_CHECK(x.rank() >= 3 && is_output_shape(y.shape, x.shape),
                where() << "output buffer " << shape_str(y.shape) << " does not fit input " << shape_str(x.shape));
    const int64_t planes = x.shape[0] * x.shape[1];
    const int64_t spatial = planes == 0 ? 0 : x.numel() / planes;
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      CAMRT_CHECK(ctx.cuda && x.device == Device::CUDA && y.device == Device::CUDA,
                  where() << "the GPU forward needs device tensors and Context::cuda");
      cuda::global_average_pool_forward(y.f32(), x.f32(), planes, spatial, ctx.cuda->stream());
      return;
    }
#endif
    CAMRT_CHECK(x.device == Device::CPU && ctx.pool, where() << "the CPU forward needs host tensors and Context::pool");
    global_average_pool_forward(y.f32(), x.f32(), planes, spatial, *ctx.pool);
  }

  BackwardNeeds backward_needs(const std::vector<TensorDesc>& inputs, size_t num_outputs) const override {
    return BackwardNeeds{std::vector<bool>(inputs.size(), false), std::vector<bool>(num_outputs, false)};
  }

  void backward(const Context& ctx, const std::vector<const Tensor*>& inputs, const std::vector<const Tensor*>& outputs,
                const std::vector<const Tensor*>& doutputs, const std::vector<Tensor*>& dinputs) const override {
    (void)outputs;
    if (dinputs.empty() || !dinputs[0] || doutputs.empty() || !doutputs[0]) return;
    const Tensor& x = *inputs[0];
    const Tensor& dy = *doutputs[0];
    Tensor& dx = *dinputs[0];
    CAMRT_CHECK(x.rank() >= 3 && dx.shape == x.shape && dx.dtype == DType::F32 && dy.dtype == DType::F32 &&
                    is_output_shape(dy.shape, x.shape),
                where() << "gradients " << shape_str(dx.shape) << " / " << shape_str(dy.shape) << " do not fit input "
                        << shape_str(x.shape));
    const int64_t planes = x.shape[0] * x.shape[1];
    const int64_t spatial = planes == 0 ? 0 : x.numel() / planes;
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      CAMRT_CHECK(ctx.cuda && dx.device == Device::CUDA && dy.device == Device::CUDA,
                  where() << "the GPU backward needs device tensors and Context::cuda");
      cuda::global_average_pool_backward(dx.f32(), dy.f32(), planes, spatial, ctx.cuda->stream());
      return;
    }
#endif
    CAMRT_CHECK(dx.device == Device::CPU && ctx.pool, where() << "the CPU backward needs host tensors and Context::pool");
    global_average_pool_backward(dx.f32(), dy.f32(), planes, spatial, *ctx.pool);
  }

 private:
  std::string where() const { return "node '" + node_.name + "' (" + node_.op + "): "; }
  static Shape output_shape(const Shape& x) {
    Shape out(x.size(), 1);
    out[0] = x[0];
    out[1] = x[1];
    return out;
  }
  // y == output_shape(x), without making a Shape (forward and backward check it on every call).
  static bool is_output_shape(const Shape& y, const Shape& x) {
    if (y.size() != x.size() || y.size() < 2 || y[0] != x[0] || y[1] != x[1]) return false;
    return std::all_of(y.begin() + 2, y.end(), [](int64_t d) { return d == 1; });
  }
};

}  // namespace

std::unique_ptr<Op> make_max_pool(const Node& node) { return std::make_unique<PoolOp>(node, PoolKind::Max); }
std::unique_ptr<Op> make_average_pool(const Node& node) { return std::make_unique<PoolOp>(node, PoolKind::Average); }
std::unique_ptr<Op> make_global_average_pool(const Node& node) { return std::make_unique<GlobalAveragePoolOp>(node); }

}  // namespace camrt
