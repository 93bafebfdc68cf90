// libFuzzer target: the model.json reader (camrt::parse_model_json, the parser load_model uses) and, for a
// model it accepts, the Graph, shape inference and the memory plan for batch 1 on the CPU. Weights come from
// the input itself: metadata.fuzz_weights maps a weight name to a shape (float32, synthesized) or to
// {"i64": [values]} (a 1-D int64 constant, e.g. a Reshape target); the seeds list their models' weights so.
// Any input must either become a plan or throw camrt::Error; a crash, leak or hang is a finding.
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "engine/executor.h"
#include "engine/graph.h"
#include "weights/model.h"

namespace {

using json = nlohmann::json;

// Planning allocates the arena and workspace for real; shapes within the limits may still ask for gigabytes,
// which is legitimate for a real model but no use to a fuzzer (libFuzzer stops at 2 GiB of RSS).
constexpr size_t kMaxPlannedBytes = size_t(64) << 20;
// Synthesized weights: enough for the seed models (fashion-canvas has 0.43 M parameters), bounded per input.
constexpr int64_t kMaxWeightElements = int64_t(1) << 20;
constexpr size_t kMaxWeights = 256;

// The fuzzer's own look at the JSON, only to find metadata.fuzz_weights: refuse deep nesting as the library
// does (a deep document is the library's to reject, and nlohmann's copies recurse).
bool shallow(const char* text, size_t size) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < size; ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if ((c == '[' || c == '{') && ++depth > 64) {
      return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

std::map<std::string, camrt::HostTensor> synthesize_weights(const char* text, size_t size) {
  using namespace camrt;
  std::map<std::string, HostTensor> weights;
  if (!shallow(text, size)) return weights;
  const json doc = json::parse(text, text + size, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object() || !doc.contains("metadata") || !doc["metadata"].is_object()) return weights;
  const json& meta = doc["metadata"];
  if (!meta.contains("fuzz_weights") || !meta["fuzz_weights"].is_object()) return weights;
  int64_t budget = kMaxWeightElements;
  for (const auto& item : meta["fuzz_weights"].items()) {
    if (weights.size() >= kMaxWeights) break;
    const json& spec = item.value();
    if (spec.is_object() && spec.contains("i64") && spec["i64"].is_array()) {
      std::vector<int64_t> values;
      for (const json& v : spec["i64"])
        if (v.is_number_integer() && values.size() < 64) values.push_back(v.get<int64_t>());
      weights[item.key()] = make_i64({static_cast<int64_t>(values.size())}, values);
      continue;
    }
    if (!spec.is_array() || spec.size() > 8) continue;
    Shape shape;
    int64_t numel = 1;
    bool ok = true;
    for (const json& d : spec) {
      ok = ok && d.is_number_integer() && d.get<int64_t>() >= 0 && d.get<int64_t>() <= budget;
      if (!ok) break;
      shape.push_back(d.get<int64_t>());
      numel *= shape.back();  // each factor <= budget <= 2^20 and the product is checked against it below
      ok = numel <= budget;
    }
    if (!ok) continue;
    budget -= numel;
    HostTensor t(DType::F32, shape);
    // Small, varied, deterministic values: shape inference ignores them, folding code must not divide by zero.
    for (int64_t i = 0; i < numel; ++i) t.f32()[i] = 0.01f * static_cast<float>(i % 7 + 1);
    weights[item.key()] = std::move(t);
  }
  return weights;
}

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
  const char* text = reinterpret_cast<const char*>(data);
  try {
    camrt::Model model = camrt::parse_model_json(text, size, synthesize_weights(text, size), "fuzz/model.json");
    plan_batch_one(std::move(model), "model.json");
  } catch (const camrt::Error&) {
  }
  return 0;
}
