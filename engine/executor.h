// Executor: one plan of a Graph for fixed input shapes. At construction it infers every shape, decides which
// outputs may overwrite their input in place, assigns every activation an offset in one arena with the
// liveness planner, sizes one workspace for all ops, and prepares every node's tensor views. forward() then
// only runs kernels: no allocation, no lookups. Values named in PlanOptions::keep stay readable after
// forward (the backward pass and CAM methods read them); everything else may be overwritten.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "engine/graph.h"
#include "engine/memory/arena.h"
#include "engine/memory/planner.h"

namespace camrt {

struct PlanOptions {
  // Tensor names (or node names: their first output) that must stay alive after forward().
  std::vector<std::string> keep;
};

struct PlanStats {
  size_t arena_bytes = 0;      // planned activation peak (including graph inputs and outputs)
  size_t naive_bytes = 0;      // one buffer per tensor, no reuse
  size_t workspace_bytes = 0;  // shared scratch for ops (im2col, ...)
  size_t weight_bytes = 0;     // constants, stored once per graph
  int64_t in_place_count = 0;  // outputs that reuse their input's buffer
};

class Executor {
 public:
  Executor(const Graph& graph, const std::map<std::string, Shape>& input_shapes, ThreadPool& pool,
           PlanOptions options = {});
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  const Graph& graph() const { return graph_; }
  const std::vector<TensorDesc>& descs() const { return descs_; }
  const PlanStats& stats() const { return stats_; }
  const MemoryPlan& memory_plan() const { return memory_plan_; }
  const std::vector<BufferRequest>& buffer_requests() const { return buffers_; }

  // Copies data into the graph input's buffer; shape and dtype must match the plan.
  void set_input(const std::string& name, const HostTensor& data);
  // Runs every node in order on the CPU workers.
  void forward();
  // A view of a value after forward(): graph inputs, graph outputs, constants and kept values.
  Tensor value(const std::string& tensor_name) const;
  Tensor value(int value_id) const;
  // True if the value's buffer is still intact after forward().
  bool is_readable_after_forward(int value_id) const;

 private:
  const Graph& graph_;
  ThreadPool& pool_;
  std::vector<TensorDesc> descs_;      // per value id
  std::vector<int> buffer_of_value_;   // per value id; -1 for constants
  std::vector<bool> readable_after_;   // per value id
  std::vector<BufferRequest> buffers_;
  MemoryPlan memory_plan_;
  PlanStats stats_;
  Arena arena_;
  Context context_;
  std::vector<Tensor> views_;  // per value id
  struct Step {
    std::vector<const Tensor*> inputs;
    std::vector<Tensor*> outputs;
  };
  std::vector<Step> steps_;  // per node
};

// Convenience for tools and tests: plans for the given inputs, runs one forward, returns the graph outputs by name.
std::map<std::string, HostTensor> run_model(const Graph& graph, const std::map<std::string, HostTensor>& inputs,
                                            ThreadPool& pool);

}  // namespace camrt
