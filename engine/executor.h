// Executor: one plan of a Graph for fixed input shapes. At construction it infers every shape, decides which
// outputs may overwrite their input in place, assigns every activation (and, when a backward pass is planned,
// every gradient) an offset in one arena with the liveness planner, sizes one workspace for all ops, and
// prepares every node's tensor views. forward() and backward() then only run kernels: no allocation, no lookups.
//
// Backward: with PlanOptions::grad_targets the plan also holds a backward pass from graph output 0 down to those
// tensors (never further): only nodes on a path target -> output run backward, and only the forward values their
// backward reads (Op::backward_needs) are kept alive for it; everything else is reused as usual.
// Tail plans: PlanOptions::start_from runs only the part of the network after one tensor, which becomes the
// plan's input (Ablation-CAM continues the network from the explained layer this way).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/graph.h"
#include "engine/memory/arena.h"
#include "engine/memory/device_constants.h"
#include "engine/memory/planner.h"

namespace camrt {

struct PlanOptions {
  // Tensor names (or node names: their first output) that must stay readable after forward() (and backward()).
  std::vector<std::string> keep;
  // Tensors (or node names) whose gradient backward() computes. Empty: no backward pass is planned.
  std::vector<std::string> grad_targets;
  // backward() will be called more than once per forward (several targets): the forward values the backward
  // reads then stay alive until the end instead of being reused by gradients once read.
  bool repeat_backward = false;
  // Seeds per backward pass (top-k targets, ...): backward() takes this many seeds stacked along dim 0 of output 0
  // and computes all their gradients in one pass, the forward values shared; gradient s of a value is rows
  // [s*n, (s+1)*n) of a (S*n, ...) gradient. Ops whose backward reads no activation (conv backward-data, Gemm,
  // pooling means, reshapes) run once over all seeds, as do ops that take the seeds themselves
  // (Op::backward_over_seeds: Conv with a fused activation masks seed by seed, then one backward-data); the others
  // once per seed. Planned only where every tensor the backward touches has the batch in dim 0; otherwise 1
  // (seeds_per_backward() says which).
  int64_t seeds_per_backward = 1;
  // If set, a tensor (or node name) that becomes the plan's only input: only nodes downstream of it run.
  // input_shapes still name the graph inputs (shapes are inferred for the whole graph).
  std::string start_from;
  // Run on the GPU of this runtime: arena and workspace in device memory, ops on its stream. Null: the CPU.
  CudaRuntime* cuda = nullptr;
  // The graph's constants on that GPU, shared by all plans of the graph; uploaded by the executor if null.
  std::shared_ptr<const DeviceConstants> device_constants;
  // Channels-last storage: nodes that run before the backward pass and only forward (no backward step; every
  // node of a plan without one) keep their 4-d activations NHWC where their op can (Op::forward_channels_last:
  // convolutions and max pooling), the form tensor-core convolutions read; as half (fp16 tensor cores) or float32.
  // Each value is stored as its producer writes it and, where a reader wants the other form, also converted right
  // after it (a float32 NCHW copy for kept values, outputs, other ops and the backward pass; a channels-last copy
  // of an NCHW input of a channels-last node). On the GPU the 4-d weights come from DeviceConstants' OHWI copies
  // (made for the same form); on the CPU the plan converts them. kAuto: half for GPU plans whose runtime computes
  // at fp16 (--precision fp16), else off. On the CPU the channels-last kernels are reference twins (for tests).
  ChannelsLast channels_last = ChannelsLast::kAuto;
  // GPU: capture forward() and backward() in CUDA graphs on their second call (the first warms up cuDNN/cuBLAS)
  // and replay them afterwards. Work that cannot be captured keeps running eagerly.
  bool cuda_graphs = true;
};

// The channels-last form a plan with this setting uses on this runtime (null: the CPU): kOff, kHalf or kFloat (the
// kAuto rule in one place).
ChannelsLast resolve_channels_last(ChannelsLast setting, const CudaRuntime* cuda);
// "auto", "off", "half", "float"; throws naming the accepted values otherwise.
ChannelsLast parse_channels_last(const std::string& name);

struct PlanStats {
  size_t arena_bytes = 0;      // planned peak of activations and gradients
  size_t naive_bytes = 0;      // one buffer per tensor, no reuse
  size_t workspace_bytes = 0;  // shared scratch for ops (im2col, ...)
  size_t weight_bytes = 0;     // constants, stored once per graph
  size_t staging_bytes = 0;    // pinned host memory for input/output transfers (GPU plans)
  int64_t in_place_count = 0;  // outputs that reuse their input's buffer
  int64_t forward_nodes = 0;   // nodes run by forward()
  int64_t backward_nodes = 0;  // nodes run by backward()
  int64_t kept_for_backward = 0;  // forward values kept alive for the backward pass
  int64_t channels_last_nodes = 0;  // nodes run on NHWC activations (PlanOptions::channels_last)
  int64_t conversions = 0;          // NCHW float32 <-> channels-last conversions per forward
};

class Executor {
 public:
  Executor(const Graph& graph, const std::map<std::string, Shape>& input_shapes, ThreadPool& pool,
           PlanOptions options = {});
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  ~Executor();
  const Graph& graph() const { return graph_; }
  Device device() const { return context_.device; }
  CudaRuntime* cuda() const { return context_.cuda; }
  const std::vector<TensorDesc>& descs() const { return descs_; }
  const PlanStats& stats() const { return stats_; }
  const MemoryPlan& memory_plan() const { return memory_plan_; }
  const std::vector<BufferRequest>& buffer_requests() const { return buffers_; }
  // The plan's input value ids: the graph inputs, or the start_from tensor.
  const std::vector<int>& input_ids() const { return input_ids_; }
  // Seeds one backward() call takes (PlanOptions::seeds_per_backward, or 1 where it could not be planned).
  int64_t seeds_per_backward() const { return seeds_; }

  // Copies host data into an input's buffer; shape and dtype must match the plan. On the GPU the copy goes
  // through pinned staging and is queued on the stream (it waits for the previous call's work first).
  void set_input(const std::string& name, const HostTensor& data);
  void set_input(const std::string& name, const void* host_data);
  // A writable view of an input's buffer, to fill in place (device memory in a GPU plan).
  const Tensor& input(const std::string& name);
  // Runs the planned nodes in order (CPU workers, or queued on the GPU stream without waiting).
  void forward();
  // Runs the backward pass after forward(): seed (shape of graph output 0, dim 0 times seeds_per_backward()) is
  // d(score)/d(output). guided: Guided Backprop (ReLU backward passes only positive gradients). May be called
  // several times after one forward (one call per group of targets); kept activations stay intact.
  void backward(const HostTensor& seed, bool guided = false);
  // Same, reading the seeds from a float buffer with output 0's element count times seeds_per_backward().
  void backward(const float* seed, bool guided = false);
  // The seed's buffer (on the plan's device), to be written in place, e.g. by a kernel reading the logits; then
  // backward_from_seed() runs the pass on it without a host copy (so a caller can capture the whole thing).
  const Tensor& seed_buffer() const;
  void backward_from_seed(bool guided = false);
  // Why capturing this plan in a CUDA graph failed, if it did (the plan then keeps running eagerly, correct but
  // with a launch per kernel); empty otherwise.
  const std::string& capture_failure() const { return capture_failure_; }
  // A view of a value after forward(): inputs, graph outputs, constants and kept values. In a GPU plan the
  // view's data is device memory (Tensor::device says so); fetch() copies to the host.
  const Tensor& value(const std::string& tensor_name) const;
  const Tensor& value(int value_id) const;
  // Copies a readable value (or, with gradient = true, a grad target's gradient) to host memory of its size;
  // waits for the GPU.
  void fetch(int value_id, void* host, bool gradient = false) const;
  HostTensor fetch(int value_id) const;
  // The gradient of a grad target after backward().
  const Tensor& gradient(const std::string& tensor_name) const;
  bool is_readable_after_forward(int value_id) const;
  // Value id for a tensor or node name (node: its first output); throws naming the graph if neither.
  int resolve(const std::string& tensor_or_node_name) const;

 private:
  struct Step {
    int node = -1;  // -1: a conversion between inputs[0] and outputs[0] (NCHW float32 <-> channels-last)
    std::vector<const Tensor*> inputs;
    std::vector<Tensor*> outputs;
    // Backward only:
    std::vector<const Tensor*> outputs_read;  // forward outputs as the backward sees them
    std::vector<const Tensor*> doutputs;
    std::vector<Tensor*> dinputs;
    std::vector<int> zero_before;  // gradient value ids to zero-fill before this step
    // Several seeds per pass, and this op's backward reads activations: one call per seed, on these slices of the
    // gradients (inputs and outputs_read are then the forward values as they are).
    struct SeedSlice {
      std::vector<Tensor> doutputs, dinputs;  // empty Tensor where no gradient flows
      std::vector<const Tensor*> doutput_ptrs;
      std::vector<Tensor*> dinput_ptrs;
    };
    std::vector<SeedSlice> seed_slices;
    // Several seeds per pass and an op that takes them all at once (Op::backward_over_seeds): stacked gradients,
    // one seed's forward values, Context::seeds set.
    bool over_seeds = false;
  };

  const Graph& graph_;
  ThreadPool& pool_;
  std::vector<TensorDesc> descs_;          // per value id
  std::vector<int> input_ids_;
  std::vector<int> buffer_of_value_;       // per value id; -1 for constants and values not computed
  std::vector<int> buffer_of_gradient_;    // per value id; -1 where no gradient is planned
  std::vector<bool> readable_after_;       // per value id
  std::vector<int> grad_target_ids_;
  int seed_value_ = -1;
  int64_t seeds_ = 1;
  std::vector<BufferRequest> buffers_;
  MemoryPlan memory_plan_;
  PlanStats stats_;
  Arena arena_;
  Context context_;
  std::shared_ptr<const DeviceConstants> device_constants_;
  // Pinned host memory (GPU plans), owned so that a constructor failing after allocating it releases it.
  struct PinnedRelease {
    CudaRuntime* cuda;  // no initializer here: GCC then cannot default-construct it inside the incomplete Executor
    void operator()(uint8_t* pointer) const { cuda->release_pinned(pointer); }
  };
  std::unique_ptr<uint8_t, PinnedRelease> staging_;
  // CUDA graphs: [0] forward, [1] backward, [2] guided backward; runs counted to capture on the second.
  struct Replay {
    std::unique_ptr<StreamGraph> graph;
    int64_t runs = 0;
    bool failed = false;
  };
  std::string capture_failure_;
  bool use_graphs_ = false;
  Replay replays_[3];
  void run_forward_steps();
  void convert(const Tensor& from, const Tensor& to) const;
  void run_backward_steps();
  // Runs `steps` eagerly, or through the replay's graph once it is captured.
  template <typename Steps>
  void run_maybe_captured(Replay& replay, Steps steps);
  std::vector<HostTensor> nhwc_constants_;  // CPU: OHWI copies of the weights channels-last nodes read
  std::vector<Tensor> views_;           // per value id, then the channels-last forms
  std::vector<Tensor> gradient_views_;  // per value id (dim 0 times seeds_)
  std::vector<Tensor> wide_views_;      // per value id: views_ with the shapes of a pass over seeds_ seeds
  std::vector<Step> forward_steps_, backward_steps_;
};

// Convenience for tools and tests: plans for the given inputs, runs one forward, returns the graph outputs by name.
// cuda: run on that GPU instead of the CPU.
std::map<std::string, HostTensor> run_model(const Graph& graph, const std::map<std::string, HostTensor>& inputs,
                                            ThreadPool& pool, CudaRuntime* cuda = nullptr);

}  // namespace camrt
