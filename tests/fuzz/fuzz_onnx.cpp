// libFuzzer target: the ONNX decoder and importer (camrt convert) and, for a model that imports, the Graph,
// shape inference and the memory plan for batch 1 on the CPU. Any input must either become a plan or throw
// camrt::Error; a crash, leak, hang or an allocation beyond the limits in engine/limits.h is a finding.
#include <cstddef>
#include <cstdint>
#include <memory>

#include "engine/error.h"
#include "engine/executor.h"
#include "engine/graph.h"
#include "weights/onnx/onnx_import.h"

namespace {

// Planning allocates the arena and workspace for real; shapes within the limits may still ask for gigabytes,
// which is legitimate for a real model but no use to a fuzzer (libFuzzer stops at 2 GiB of RSS).
constexpr size_t kMaxPlannedBytes = size_t(64) << 20;

void plan_batch_one(camrt::Model model, const char* source) {
  using namespace camrt;
  const Graph graph(std::move(model), source);
  const std::map<std::string, Shape> shapes = graph.input_shapes_for_batch(1);
  const std::vector<TensorDesc> descs = graph.infer(shapes);
  if (descs.size() != graph.values().size()) __builtin_trap();
  size_t activation_bytes = 0;
  for (size_t id = 0; id < descs.size(); ++id) {
    if (graph.values()[id].constant) continue;
    // Graph::infer guarantees every shape it returns is within the limits (no overflow, no negative dim).
    for (int64_t d : descs[id].shape)
      if (d < 0) __builtin_trap();
    activation_bytes += static_cast<size_t>(checked_numel(descs[id].shape)) * dtype_size(descs[id].dtype);
    if (activation_bytes > kMaxPlannedBytes) return;
  }
  static ThreadPool pool(1);  // one for the whole run: threads per input would dominate the time
  Context ctx;
  ctx.pool = &pool;
  for (const GraphNode& gn : graph.nodes()) {
    std::vector<TensorDesc> inputs;
    for (int id : gn.inputs) {
      TensorDesc desc;
      if (id < 0)
        desc.present = false;
      else
        desc = descs[static_cast<size_t>(id)];
      inputs.push_back(desc);
    }
    if (gn.op->workspace_bytes(inputs, ctx) > kMaxPlannedBytes) return;
  }
  Executor plan(graph, shapes, pool);
  if (plan.buffer_requests().size() <= 512 && !plan_is_valid(plan.buffer_requests(), plan.memory_plan()))
    __builtin_trap();
  (void)graph.default_explain_layer();
  // The activation-fused graph that predict and explain plan: never more nodes, and it plans the same way.
  const auto fused = graph.fused({});
  if (fused->nodes().size() + static_cast<size_t>(fused->fused_pairs()) != graph.nodes().size()) __builtin_trap();
  Executor fused_plan(*fused, shapes, pool);
  if (fused_plan.buffer_requests().size() <= 512 && !plan_is_valid(fused_plan.buffer_requests(), fused_plan.memory_plan()))
    __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    camrt::Model model = camrt::import_onnx_bytes(data, size, "fuzz.onnx");
    plan_batch_one(std::move(model), "fuzz.onnx");
  } catch (const camrt::Error&) {
  }
  return 0;
}
