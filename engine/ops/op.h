// Op: one node of the graph, with its attributes parsed once. Each op family lives in its own file
// (engine/ops/conv.cpp, ...) with shape inference and forward side by side; the arithmetic is in
// kernels/cpu (and kernels/cuda later). Ops hold no shape-dependent state: one Op serves every plan
// (batch size) of a graph, so infer/forward receive everything they need.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cuda/runtime.h"
#include "weights/model.h"

namespace camrt {

// Channels-last storage of a plan's forward-only part (PlanOptions::channels_last): off, NHWC half, NHWC float32,
// or automatic (half at --precision fp16 on the GPU).
enum class ChannelsLast : uint8_t { kAuto, kOff, kHalf, kFloat };

// What shape inference knows about a value: dtype, shape and, for weights and folded constants,
// the data itself (Reshape reads its target shape from it).
struct TensorDesc {
  DType dtype = DType::F32;
  Shape shape;
  const HostTensor* constant = nullptr;
  bool present = true;  // false for an omitted optional input ("" in the node's input list)
  Layout layout = Layout::NCHW;  // NHWC: a channels-last form (PlanOptions::channels_last)
};

// Everything a kernel may use while running: the device, the CPU workers, the plan's scratch area (sized
// from Op::workspace_bytes; device memory when device == CUDA), and for the GPU the runtime holding the
// stream, cuBLAS/cuDNN handles, precision and algorithm cache. Ops dispatch on `device`:
//   #if CAMRT_WITH_CUDA
//     if (ctx.device == Device::CUDA) { cuda_launcher(..., ctx.cuda->stream()); return; }
//   #endif
struct Context {
  Device device = Device::CPU;
  ThreadPool* pool = nullptr;
  CudaRuntime* cuda = nullptr;  // set when device == CUDA
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // Guided Backprop: every ReLU's backward passes dy only where its input > 0 and dy > 0.
  bool guided_relu = false;
  // Backward of an op with backward_over_seeds(): doutputs and dinputs hold this many stacked seeds (dim 0 times
  // seeds) while inputs and outputs are the forward values of one (PlanOptions::seeds_per_backward).
  int64_t seeds = 1;
};

// Which forward tensors an op's backward reads, so the planner keeps exactly those alive.
struct BackwardNeeds {
  std::vector<bool> inputs;   // per input: backward reads its forward value
  std::vector<bool> outputs;  // per output: backward reads its forward value
};

class Op {
 public:
  explicit Op(const Node& node) : node_(node) {}
  virtual ~Op() = default;
  const Node& node() const { return node_; }

  // Checks the inputs (count, dtypes, shapes) and attributes; returns one desc per output.
  // Errors thrown here are prefixed with the node's name and op by the caller.
  virtual std::vector<TensorDesc> infer(const std::vector<TensorDesc>& inputs) const = 0;
  // Scratch bytes forward needs for these inputs (after infer accepted them).
  virtual size_t workspace_bytes(const std::vector<TensorDesc>& inputs, const Context& ctx) const {
    (void)inputs;
    (void)ctx;
    return 0;
  }
  // Channels-last storage (PlanOptions::channels_last): true if forward() also runs with every 4-d input and
  // output in Layout::NHWC, as float32 or as half (DType::F16), 4-d weights then OHWI in the same type, other
  // inputs (a bias) as they are. workspace_bytes() is then asked with those inputs' descs in that layout and type.
  virtual bool forward_channels_last(const std::vector<TensorDesc>& inputs) const {
    (void)inputs;
    return false;
  }
  // True if output 0 may share the buffer of input 0 (same size, element-wise dependency only).
  virtual bool can_run_in_place() const { return false; }
  // inputs[i] is nullptr for an omitted optional input. Output tensors are pre-allocated views.
  virtual void forward(const Context& ctx, const std::vector<const Tensor*>& inputs,
                       const std::vector<Tensor*>& outputs) const = 0;

  // --- Backward (activation gradients only; weight gradients are never computed) ---
  // Which forward values backward reads. Default: every input, no output.
  virtual BackwardNeeds backward_needs(const std::vector<TensorDesc>& inputs, size_t num_outputs) const {
    return BackwardNeeds{std::vector<bool>(inputs.size(), true), std::vector<bool>(num_outputs, false)};
  }
  // True if backward() handles Context::seeds > 1 itself: stacked gradients, one seed's forward values. Ops that
  // read activations and say false run once per seed instead.
  virtual bool backward_over_seeds() const { return false; }
  // Scratch bytes backward needs (shares the plan's workspace with forward). With seeds, the caller passes the
  // inputs' shapes at seeds times the batch.
  virtual size_t backward_workspace_bytes(const std::vector<TensorDesc>& inputs, const Context& ctx) const {
    return workspace_bytes(inputs, ctx);
  }
  // ACCUMULATES input gradients: dinputs[i] += d(score)/d(input i). dinputs[i] is nullptr where no gradient is
  // wanted (constants, or inputs off the path to the explained layer). inputs/outputs are the forward views
  // (nullptr only for omitted optional inputs) with correct shapes; only the data of values flagged by
  // backward_needs is guaranteed intact (others may be overwritten). doutputs[j] is nullptr where no gradient
  // flows. Gradients have the shape and dtype (float32) of their forward value.
  // The executor zero-fills every gradient buffer before the first contribution, so ops may always add.
  virtual void backward(const Context& ctx, const std::vector<const Tensor*>& inputs,
                        const std::vector<const Tensor*>& outputs, const std::vector<const Tensor*>& doutputs,
                        const std::vector<Tensor*>& dinputs) const {
    (void)ctx; (void)inputs; (void)outputs; (void)doutputs; (void)dinputs;
    CAMRT_FAIL("node '" << node_.name << "' (" << node_.op << "): backward is not implemented");
  }

 protected:
  // Attribute access with errors that name the node and the attribute.
  bool has_attr(const std::string& key) const;
  int64_t attr_int(const std::string& key, int64_t fallback) const;
  float attr_float(const std::string& key, float fallback) const;
  std::string attr_string(const std::string& key, const std::string& fallback) const;
  std::vector<int64_t> attr_ints(const std::string& key, const std::vector<int64_t>& fallback) const;
  std::vector<float> attr_floats(const std::string& key, const std::vector<float>& fallback) const;
  // Throws unless inputs.size() is within [min_count, max_count].
  void expect_inputs(const std::vector<TensorDesc>& inputs, size_t min_count, size_t max_count) const;
  // Normalizes a possibly negative axis into [0, rank); throws if out of range.
  int64_t normalize_axis(int64_t axis, int64_t rank) const;

  Node node_;
};

// "node 'NAME' (OP)": how every message names a node.
inline std::string where(const Node& node) { return "node '" + node.name + "' (" + node.op + ")"; }

using OpFactory = std::unique_ptr<Op> (*)(const Node& node);

// The op registry: one line per op type (engine/ops/registry.cpp). Returns nullptr if unknown.
OpFactory find_op(const std::string& op_type);
// Sorted list of supported op types, for messages and the ONNX importer.
std::vector<std::string> supported_ops();

}  // namespace camrt
