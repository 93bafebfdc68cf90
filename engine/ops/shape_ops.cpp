// Flatten, Reshape, Squeeze, Unsqueeze (views: same bytes, new shape; they may run in place) and Concat
// (threaded copies of contiguous blocks). No arithmetic, so they move any dtype, I64 shape tensors included.
// Shape-giving second inputs (Reshape's shape, Squeeze/Unsqueeze axes) must be constants at inference.
// Backward (float32 gradients) reads no forward data: views add dy to dx as is, Concat adds dy's slices.
// On the GPU the same copies run on the stream (kernels/cuda/copy.cu); forward and backward read shapes and
// attributes only, never a shape-giving input's data, so device-resident constants are never read on the host.
#include <algorithm>
#include <cstring>

#include "engine/ops/factories.h"
#if CAMRT_WITH_CUDA
#include "kernels/cuda/copy.h"
#endif

namespace camrt {

namespace {

// Opset where Squeeze / Unsqueeze axes moved from an attribute to an input.
constexpr int64_t kAxesInputOpset = 13;
// A memcpy of 64 KiB takes a few microseconds, about what waking a worker costs: smaller pieces stay inline.
constexpr int64_t kMinBytesPerChunk = int64_t(64) << 10;
// Large blocks are split so one big input still spreads over all workers.
constexpr int64_t kPieceBytes = int64_t(256) << 10;

// Copies `rows` rows made of one contiguous block per source: row r of the output is
// src[0] block r, src[1] block r, ... (Concat; a plain copy is one source and one row).
void copy_blocks(uint8_t* dst, const std::vector<const uint8_t*>& srcs, const std::vector<int64_t>& block_bytes,
                 int64_t rows, ThreadPool& pool) {
  const size_t n = srcs.size();
  std::vector<int64_t> dst_offset(n), first_piece(n + 1, 0);
  int64_t row_bytes = 0;
  for (size_t i = 0; i < n; ++i) {
    dst_offset[i] = row_bytes;
    row_bytes += block_bytes[i];
    first_piece[i + 1] = first_piece[i] + std::max<int64_t>(1, (block_bytes[i] + kPieceBytes - 1) / kPieceBytes);
  }
  const int64_t pieces_per_row = first_piece[n];
  const int64_t items = rows * pieces_per_row;
  if (items == 0 || row_bytes == 0) return;
  const int64_t bytes_per_item = std::max<int64_t>(1, rows * row_bytes / items);
  pool.parallel_for(items, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item / pieces_per_row, piece = item % pieces_per_row;
      const size_t i = static_cast<size_t>(std::upper_bound(first_piece.begin(), first_piece.end(), piece) - first_piece.begin() - 1);
      const int64_t from = (piece - first_piece[i]) * kPieceBytes;
      const int64_t bytes = std::min(block_bytes[i] - from, kPieceBytes);
      if (bytes > 0)
        std::memcpy(dst + row * row_bytes + dst_offset[i] + from, srcs[i] + row * block_bytes[i] + from,
                    static_cast<size_t>(bytes));
    }
  }, std::max<int64_t>(1, kMinBytesPerChunk / bytes_per_item));
}

// dst[i] += src[i] for i < n: the view ops' backward (dy has dx's elements in the same order), the CPU twin of
// cuda::accumulate. Each element once, so bit-reproducible; no allocation.
void accumulate(float* dst, const float* src, int64_t n, ThreadPool& pool) {
  pool.parallel_for(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) dst[i] += src[i];
  }, std::max<int64_t>(1, kMinBytesPerChunk / int64_t(sizeof(float))));
}

// The reverse of copy_blocks for float gradients: row r of src is block 0, block 1, ... and dsts[i]'s row r
// gets block i added to it. A null dst skips its block (an input that wants no gradient).
void add_blocks(const std::vector<float*>& dsts, const float* src, const std::vector<int64_t>& block_elems,
                int64_t rows, ThreadPool& pool) {
  constexpr int64_t kPieceElems = kPieceBytes / int64_t(sizeof(float));
  const size_t n = dsts.size();
  std::vector<int64_t> src_offset(n), first_piece(n + 1, 0);
  int64_t row_elems = 0;
  for (size_t i = 0; i < n; ++i) {
    src_offset[i] = row_elems;
    row_elems += block_elems[i];
    const int64_t pieces = dsts[i] ? std::max<int64_t>(1, (block_elems[i] + kPieceElems - 1) / kPieceElems) : 0;
    first_piece[i + 1] = first_piece[i] + pieces;
  }
  const int64_t pieces_per_row = first_piece[n];
  const int64_t items = rows * pieces_per_row;
  if (items == 0 || row_elems == 0) return;
  const int64_t bytes_per_item = std::max<int64_t>(1, rows * row_elems * int64_t(sizeof(float)) / items);
  pool.parallel_for(items, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item / pieces_per_row, piece = item % pieces_per_row;
      // upper_bound - 1 skips the empty piece ranges of null dsts.
      const size_t i = static_cast<size_t>(std::upper_bound(first_piece.begin(), first_piece.end(), piece) - first_piece.begin() - 1);
      const int64_t from = (piece - first_piece[i]) * kPieceElems;
      const int64_t count = std::min(block_elems[i] - from, kPieceElems);
      float* d = dsts[i] + row * block_elems[i] + from;
      const float* g = src + row * row_elems + src_offset[i] + from;
      for (int64_t j = 0; j < count; ++j) d[j] += g[j];
    }
  }, std::max<int64_t>(1, kMinBytesPerChunk / bytes_per_item));
}

// Base of the view ops: the output holds input 0's bytes under a new shape.
class ViewOp : public Op {
 public:
  using Op::Op;
  bool can_run_in_place() const override { return true; }

  void forward(const Context& ctx, const std::vector<const Tensor*>& inputs,
               const std::vector<Tensor*>& outputs) const override {
    const Tensor& x = *inputs[0];
    Tensor& y = *outputs[0];
    CAMRT_CHECK(y.nbytes() == x.nbytes() && y.dtype == x.dtype,
                where() << "output buffer " << shape_str(y.shape) << " does not hold input " << shape_str(x.shape));
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      CAMRT_CHECK(ctx.cuda && x.device == Device::CUDA && y.device == Device::CUDA,
                  where() << "the GPU forward needs device tensors and Context::cuda");
      copy_on_device(*ctx.cuda, y.data, x.data, x.nbytes());  // nothing when it ran in place (same pointer)
      return;
    }
#endif
    CAMRT_CHECK(x.device == Device::CPU && ctx.pool, where() << "the CPU forward needs host tensors and Context::pool");
    if (y.data == x.data) return;  // ran in place: the bytes are already there
    copy_blocks(static_cast<uint8_t*>(y.data), {static_cast<const uint8_t*>(x.data)},
                {static_cast<int64_t>(x.nbytes())}, 1, *ctx.pool);
  }

  // Nothing: dy has dx's elements in the same order, and the shape-giving input only fixed the shape.
  BackwardNeeds backward_needs(const std::vector<TensorDesc>& inputs, size_t num_outputs) const override {
    return BackwardNeeds{std::vector<bool>(inputs.size(), false), std::vector<bool>(num_outputs, false)};
  }

  void backward(const Context& ctx, const std::vector<const Tensor*>& inputs, const std::vector<const Tensor*>& outputs,
                const std::vector<const Tensor*>& doutputs, const std::vector<Tensor*>& dinputs) const override {
    (void)inputs;
    (void)outputs;
    CAMRT_CHECK(dinputs.size() < 2 || !dinputs[1], where() << "the shape / axes input has no gradient");
    if (dinputs.empty() || !dinputs[0] || doutputs.empty() || !doutputs[0]) return;
    const Tensor& dy = *doutputs[0];
    Tensor& dx = *dinputs[0];
    CAMRT_CHECK(dx.dtype == DType::F32 && dy.dtype == DType::F32 && dx.numel() == dy.numel(),
                where() << "input gradient " << shape_str(dx.shape) << " does not hold output gradient " << shape_str(dy.shape));
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      CAMRT_CHECK(ctx.cuda && dx.device == Device::CUDA && dy.device == Device::CUDA,
                  where() << "the GPU backward needs device tensors and Context::cuda");
      cuda::accumulate(dx.f32(), dy.f32(), dx.numel(), ctx.cuda->stream());
      return;
    }
#endif
    CAMRT_CHECK(dx.device == Device::CPU && ctx.pool, where() << "the CPU backward needs host tensors and Context::pool");
    accumulate(dx.f32(), dy.f32(), dx.numel(), *ctx.pool);
  }

 protected:
  std::string where() const { return "node '" + node_.name + "' (" + node_.op + "): "; }

  static TensorDesc like(const TensorDesc& x, Shape shape) {
    TensorDesc out;
    out.dtype = x.dtype;
    out.shape = std::move(shape);
    return out;
  }

  // Integer list from a constant second input; fails if that input is only known at run time.
  std::vector<int64_t> constant_ints(const TensorDesc& desc, const char* what) const {
    CAMRT_CHECK(desc.dtype == DType::I64 || desc.dtype == DType::I32,
                where() << what << " input must be I64, got " << dtype_name(desc.dtype));
    CAMRT_CHECK(desc.shape.size() <= 1, where() << what << " input must be 1-D, got " << shape_str(desc.shape));
    CAMRT_CHECK(desc.constant, where() << what << " input '" << node_.inputs[1] << "' must be a constant");
    return desc.constant->to_int64();
  }
};

class FlattenOp : public ViewOp {
 public:
  using ViewOp::ViewOp;
  std::vector<TensorDesc> infer(const std::vector<TensorDesc>& inputs) const override {
    expect_inputs(inputs, 1, 1);
    const Shape& x = inputs[0].shape;
    const int64_t rank = static_cast<int64_t>(x.size());
    int64_t axis = attr_int("axis", 1);
    // Unlike most axes, Flatten's may equal rank (everything goes into the first dim).
    CAMRT_CHECK(axis >= -rank && axis <= rank, where() << "axis " << axis << " out of range for input " << shape_str(x));
    if (axis < 0) axis += rank;
    const Shape outer(x.begin(), x.begin() + axis), inner(x.begin() + axis, x.end());
    return {like(inputs[0], {checked_numel(outer), checked_numel(inner)})};
  }
};

class ReshapeOp : public ViewOp {
 public:
  explicit ReshapeOp(const Node& node) : ViewOp(node) {
    allowzero_ = attr_int("allowzero", 0) != 0;
    const bool from_input = node.inputs.size() >= 2 && !node.inputs[1].empty();
    CAMRT_CHECK(from_input != has_attr("shape"),
                where() << (from_input ? "target shape given both as input and as attribute 'shape'"
                                       : "needs a target shape (second input or attribute 'shape')"));
  }

  std::vector<TensorDesc> infer(const std::vector<TensorDesc>& inputs) const override {
    expect_inputs(inputs, 1, 2);
    const bool from_input = inputs.size() == 2 && inputs[1].present;
    const std::vector<int64_t> target = from_input ? constant_ints(inputs[1], "shape") : attr_ints("shape", {});
    const Shape& x = inputs[0].shape;
    const int64_t numel = checked_numel(x);
    Shape out(target.size());
    int64_t infer_at = -1;
    for (size_t i = 0; i < target.size(); ++i) {
      const int64_t v = target[i];
      if (v == -1) {
        CAMRT_CHECK(infer_at < 0, where() << "target shape " << shape_str(target) << " has more than one -1");
        infer_at = static_cast<int64_t>(i);
      } else if (v == 0 && !allowzero_) {
        CAMRT_CHECK(i < x.size(), where() << "cannot reshape " << shape_str(x) << " to " << shape_str(target)
                                          << ": 0 at index " << i << " copies a dim the input does not have");
        out[i] = x[i];
      } else {
        CAMRT_CHECK(v >= 0, where() << "cannot reshape " << shape_str(x) << " to " << shape_str(target)
                                    << ": invalid dim " << v);
        out[i] = v;
      }
    }
    if (infer_at >= 0) {
      int64_t known = 1;
      for (size_t i = 0; i < out.size(); ++i)
        if (static_cast<int64_t>(i) != infer_at) known = checked_numel({known, out[i]});
      CAMRT_CHECK(known != 0 && numel % known == 0,
                  where() << "cannot reshape " << shape_str(x) << " to " << shape_str(target));
      out[static_cast<size_t>(infer_at)] = numel / known;
    }
    CAMRT_CHECK(checked_numel(out) == numel, where() << "cannot reshape " << shape_str(x) << " to " << shape_str(target));
    return {like(inputs[0], out)};
  }

 private:
  bool allowzero_ = false;
};

// Squeeze and Unsqueeze: axes from the 'axes' attribute (opsets < 13) or a constant second input.
class AxesViewOp : public ViewOp {
 public:
  explicit AxesViewOp(const Node& node) : ViewOp(node) {
    const int64_t opset = attr_int("onnx_opset", 0);  // 0: unknown, the node's own form decides
    input_axes_ = node.inputs.size() >= 2 && !node.inputs[1].empty();
    CAMRT_CHECK(node.inputs.size() <= 2, where() << "expected 1 or 2 inputs, got " << node.inputs.size());
    CAMRT_CHECK(!(input_axes_ && has_attr("axes")), where() << "axes given both as attribute and as input");
    CAMRT_CHECK(!input_axes_ || opset == 0 || opset >= kAxesInputOpset,
                where() << "axes as an input needs opset >= " << kAxesInputOpset << ", the model has opset " << opset);
  }

 protected:
  // The raw axes, or none if the node gives none.
  std::vector<int64_t> raw_axes(const std::vector<TensorDesc>& inputs) const {
    expect_inputs(inputs, 1, 2);
    if (inputs.size() == 2 && inputs[1].present) return constant_ints(inputs[1], "axes");
    return attr_ints("axes", {});
  }

  // Normalized against `rank`, sorted, without repeats.
  std::vector<int64_t> normalized(const std::vector<int64_t>& raw, int64_t rank) const {
    std::vector<int64_t> axes;
    for (int64_t a : raw) axes.push_back(normalize_axis(a, rank));
    std::sort(axes.begin(), axes.end());
    CAMRT_CHECK(std::adjacent_find(axes.begin(), axes.end()) == axes.end(),
                where() << "repeated axis in axes " << shape_str(raw));
    return axes;
  }

  bool input_axes_ = false;
};

class SqueezeOp : public AxesViewOp {
 public:
  using AxesViewOp::AxesViewOp;
  std::vector<TensorDesc> infer(const std::vector<TensorDesc>& inputs) const override {
    const std::vector<int64_t> raw = raw_axes(inputs);
    const Shape& x = inputs[0].shape;
    Shape out;
    if (raw.empty()) {  // no axes: drop every size-1 dim
      for (int64_t d : x)
        if (d != 1) out.push_back(d);
    } else {
      const std::vector<int64_t> axes = normalized(raw, static_cast<int64_t>(x.size()));
      for (size_t d = 0; d < x.size(); ++d) {
        if (!std::binary_search(axes.begin(), axes.end(), static_cast<int64_t>(d))) {
          out.push_back(x[d]);
          continue;
        }
        CAMRT_CHECK(x[d] == 1, where() << "cannot squeeze axis " << d << " of " << shape_str(x) << ": its size is " << x[d]);
      }
    }
    return {like(inputs[0], out)};
  }
};

class UnsqueezeOp : public AxesViewOp {
 public:
  using AxesViewOp::AxesViewOp;
  std::vector<TensorDesc> infer(const std::vector<TensorDesc>& inputs) const override {
    const std::vector<int64_t> raw = raw_axes(inputs);
    CAMRT_CHECK(!raw.empty(), where() << "needs axes (attribute 'axes' or a second input)");
    const Shape& x = inputs[0].shape;
    // Axes index the output, whose rank is the input's plus one per axis.
    const int64_t out_rank = static_cast<int64_t>(x.size() + raw.size());
    const std::vector<int64_t> axes = normalized(raw, out_rank);
    Shape out;
    size_t next = 0;
    for (int64_t d = 0; d < out_rank; ++d)
      out.push_back(std::binary_search(axes.begin(), axes.end(), d) ? 1 : x[next++]);
    return {like(inputs[0], out)};
  }
};

class ConcatOp : public Op {
 public:
  explicit ConcatOp(const Node& node) : Op(node) {
    CAMRT_CHECK(has_attr("axis"), where() << "attribute 'axis' is required");
    axis_ = attr_int("axis", 0);
  }

  std::vector<TensorDesc> infer(const std::vector<TensorDesc>& inputs) const override {
    CAMRT_CHECK(!inputs.empty(), where() << "needs at least one input");
    std::vector<Shape> shapes;
    for (size_t i = 0; i < inputs.size(); ++i) {
      CAMRT_CHECK(inputs[i].present, where() << "input " << i << " is missing");
      CAMRT_CHECK(inputs[i].dtype == inputs[0].dtype, where() << "input " << i << " is " << dtype_name(inputs[i].dtype)
                                                              << " but input 0 is " << dtype_name(inputs[0].dtype));
      shapes.push_back(inputs[i].shape);
    }
    TensorDesc out;
    out.dtype = inputs[0].dtype;
    out.shape = output_shape(shapes);
    return {out};
  }

  void forward(const Context& ctx, const std::vector<const Tensor*>& inputs,
               const std::vector<Tensor*>& outputs) const override {
    Tensor& y = *outputs[0];
#if CAMRT_WITH_CUDA
    const bool on_gpu = ctx.device == Device::CUDA;
    CAMRT_CHECK(!on_gpu || (ctx.cuda && y.device == Device::CUDA), where() << "the GPU forward needs device tensors and Context::cuda");
#else
    const bool on_gpu = false;
#endif
    CAMRT_CHECK(on_gpu || (y.device == Device::CPU && ctx.pool), where() << "the CPU forward needs host tensors and Context::pool");
    std::vector<Shape> shapes;
    for (const Tensor* x : inputs) shapes.push_back(x->shape);
    const Shape expected = output_shape(shapes);
    CAMRT_CHECK(y.shape == expected, where() << "output buffer " << shape_str(y.shape) << ", expected " << shape_str(expected));
    const int64_t axis = normalize_axis(axis_, y.rank());
    const int64_t rows = checked_numel(Shape(y.shape.begin(), y.shape.begin() + axis));
    const int64_t inner = checked_numel(Shape(y.shape.begin() + axis + 1, y.shape.end()));
    const int64_t elem = static_cast<int64_t>(dtype_size(y.dtype));
    std::vector<const uint8_t*> srcs;
    std::vector<int64_t> block_bytes;
    for (const Tensor* x : inputs) {
      CAMRT_CHECK(x->dtype == y.dtype, where() << "input dtype " << dtype_name(x->dtype) << " differs from the output's");
      CAMRT_CHECK(x->device == y.device, where() << "inputs and output must be on the same device");
      srcs.push_back(static_cast<const uint8_t*>(x->data));
      block_bytes.push_back(x->shape[static_cast<size_t>(axis)] * inner * elem);
    }
#if CAMRT_WITH_CUDA
    if (on_gpu) {
      cuda::concat_forward(y.data, std::vector<const void*>(srcs.begin(), srcs.end()), block_bytes, rows, ctx.cuda->stream());
      return;
    }
#endif
    copy_blocks(static_cast<uint8_t*>(y.data), srcs, block_bytes, rows, *ctx.pool);
  }

  // Nothing: the slices of dy follow from the shapes alone.
  BackwardNeeds backward_needs(const std::vector<TensorDesc>& inputs, size_t num_outputs) const override {
    return BackwardNeeds{std::vector<bool>(inputs.size(), false), std::vector<bool>(num_outputs, false)};
  }

  void backward(const Context& ctx, const std::vector<const Tensor*>& inputs, const std::vector<const Tensor*>& outputs,
                const std::vector<const Tensor*>& doutputs, const std::vector<Tensor*>& dinputs) const override {
    (void)outputs;
    if (doutputs.empty() || !doutputs[0]) return;
    const Tensor& dy = *doutputs[0];
#if CAMRT_WITH_CUDA
    const bool on_gpu = ctx.device == Device::CUDA;
    CAMRT_CHECK(!on_gpu || ctx.cuda, where() << "the GPU backward needs Context::cuda");
#else
    const bool on_gpu = false;
#endif
    const Device device = on_gpu ? Device::CUDA : Device::CPU;
    CAMRT_CHECK(on_gpu || ctx.pool, where() << "the CPU backward needs Context::pool");
    CAMRT_CHECK(dinputs.size() == inputs.size(), where() << dinputs.size() << " input gradients for " << inputs.size() << " inputs");
    std::vector<Shape> shapes;
    for (const Tensor* x : inputs) shapes.push_back(x->shape);
    const Shape expected = output_shape(shapes);
    CAMRT_CHECK(dy.shape == expected && dy.dtype == DType::F32 && dy.device == device,
                where() << "output gradient " << shape_str(dy.shape) << ", expected " << shape_str(expected) << " on the "
                        << (on_gpu ? "GPU" : "CPU"));
    const int64_t axis = normalize_axis(axis_, dy.rank());
    const int64_t rows = checked_numel(Shape(dy.shape.begin(), dy.shape.begin() + axis));
    const int64_t inner = checked_numel(Shape(dy.shape.begin() + axis + 1, dy.shape.end()));
    std::vector<float*> dsts;
    std::vector<int64_t> block_elems;
    for (size_t i = 0; i < inputs.size(); ++i) {
      Tensor* dx = dinputs[i];
      CAMRT_CHECK(!dx || (dx->shape == inputs[i]->shape && dx->dtype == DType::F32 && dx->device == device),
                  where() << "gradient of input " << i << " does not match " << shape_str(inputs[i]->shape));
      dsts.push_back(dx ? dx->f32() : nullptr);
      block_elems.push_back(inputs[i]->shape[static_cast<size_t>(axis)] * inner);
    }
#if CAMRT_WITH_CUDA
    if (on_gpu) {
      cuda::concat_backward(dsts, dy.f32(), block_elems, rows, ctx.cuda->stream());
      return;
    }
#endif
    add_blocks(dsts, dy.f32(), block_elems, rows, *ctx.pool);
  }

 private:
  std::string where() const { return "node '" + node_.name + "' (" + node_.op + "): "; }

  Shape output_shape(const std::vector<Shape>& shapes) const {
    const Shape& first = shapes[0];
    CAMRT_CHECK(!first.empty(), where() << "cannot concatenate scalars");
    const int64_t axis = normalize_axis(axis_, static_cast<int64_t>(first.size()));
    Shape out = first;
    out[static_cast<size_t>(axis)] = 0;
    for (size_t i = 0; i < shapes.size(); ++i) {
      bool fits = shapes[i].size() == first.size();
      for (size_t d = 0; fits && d < first.size(); ++d) fits = static_cast<int64_t>(d) == axis || shapes[i][d] == first[d];
      CAMRT_CHECK(fits, where() << "cannot concatenate " << shape_str(shapes[i]) << " (input " << i << ") with "
                                << shape_str(first) << " along axis " << axis_);
      out[static_cast<size_t>(axis)] += shapes[i][static_cast<size_t>(axis)];
    }
    checked_numel(out);
    return out;
  }

  int64_t axis_ = 0;
};

}  // namespace

std::unique_ptr<Op> make_flatten(const Node& node) { return std::make_unique<FlattenOp>(node); }
std::unique_ptr<Op> make_reshape(const Node& node) { return std::make_unique<ReshapeOp>(node); }
std::unique_ptr<Op> make_squeeze(const Node& node) { return std::make_unique<SqueezeOp>(node); }
std::unique_ptr<Op> make_unsqueeze(const Node& node) { return std::make_unique<UnsqueezeOp>(node); }
std::unique_ptr<Op> make_concat(const Node& node) { return std::make_unique<ConcatOp>(node); }

}  // namespace camrt
