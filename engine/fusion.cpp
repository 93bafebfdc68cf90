// Activation fusion (see engine/fusion.h): a pass over the node list, deciding pairs from tensor names alone
// (shapes are not needed: Conv and Add apply the activation element-wise to the output they produce).
#include "engine/fusion.h"

#include <limits>
#include <set>

namespace camrt {

namespace {

// A Clip bound: the attribute (opset < 11, or moved there by the importer) or a one-value F32 weight input.
// False if the bound is a computed tensor: such a Clip is left alone.
bool clip_bound(const Model& model, const Node& clip, size_t input, const char* attr, float fallback, float* bound) {
  *bound = fallback;
  if (clip.inputs.size() > input && !clip.inputs[input].empty()) {
    auto it = model.weights.find(clip.inputs[input]);
    if (it == model.weights.end() || it->second.dtype != DType::F32 || it->second.numel() != 1) return false;
    *bound = it->second.f32()[0];
    return true;
  }
  if (!clip.attrs.is_object()) return false;
  auto it = clip.attrs.find(attr);
  if (it == clip.attrs.end()) return true;
  if (!it->is_number()) return false;  // the op itself will say what is wrong with it
  *bound = it->get<float>();
  return true;
}

// The attributes that make `producer` apply `activation`, or false if the pair cannot be fused.
bool fused_attributes(const Model& model, const Node& producer, const Node& activation, nlohmann::json* attrs) {
  if (producer.op != "Conv" && producer.op != "Add") return false;
  if (producer.outputs.size() != 1 || !producer.attrs.is_object() || producer.attrs.contains("activation")) return false;
  *attrs = producer.attrs;
  if (activation.op == "Relu" && activation.inputs.size() == 1) {
    (*attrs)["activation"] = "relu";
    return true;
  }
  if (activation.op != "Clip" || activation.inputs.empty() || activation.inputs.size() > 3) return false;
  float lo = 0, hi = 0;
  if (!clip_bound(model, activation, 1, "min", -std::numeric_limits<float>::infinity(), &lo) ||
      !clip_bound(model, activation, 2, "max", std::numeric_limits<float>::infinity(), &hi) || !(lo <= hi))
    return false;
  (*attrs)["activation"] = "clip";
  // Infinite bounds stay absent (JSON has no infinity); the ops default to +-infinity.
  if (lo > -std::numeric_limits<float>::infinity()) (*attrs)["activation_min"] = lo;
  if (hi < std::numeric_limits<float>::infinity()) (*attrs)["activation_max"] = hi;
  return true;
}

}  // namespace

FusedNodes fuse_activations(const Model& model, const std::vector<std::string>& keep) {
  const std::vector<Node>& nodes = model.nodes;
  // Who reads each tensor (a node reading it twice counts twice), and which tensors must survive.
  std::map<std::string, std::vector<size_t>> readers;
  for (size_t n = 0; n < nodes.size(); ++n)
    for (const std::string& input : nodes[n].inputs)
      if (!input.empty()) readers[input].push_back(n);
  std::set<std::string> observable;
  for (const ValueInfo& output : model.outputs) observable.insert(output.name);
  for (const std::string& name : keep) {
    observable.insert(name);
    for (const Node& node : nodes)
      if (node.name == name && !node.outputs.empty()) observable.insert(node.outputs[0]);
  }

  FusedNodes result;
  std::vector<bool> absorbed(nodes.size(), false);
  for (size_t n = 0; n < nodes.size(); ++n) {
    if (absorbed[n]) continue;
    const Node& producer = nodes[n];
    Node fused = producer;
    if (producer.outputs.size() == 1 && !observable.count(producer.outputs[0])) {
      auto it = readers.find(producer.outputs[0]);
      if (it != readers.end() && it->second.size() == 1) {
        const size_t a = it->second[0];
        const Node& activation = nodes[a];
        nlohmann::json attrs;
        // The activation reads the producer's output as its data input (not as a Clip bound), and comes later.
        if (a > n && activation.inputs[0] == producer.outputs[0] &&
            fused_attributes(model, producer, activation, &attrs)) {
          fused.attrs = std::move(attrs);
          fused.outputs = activation.outputs;
          absorbed[a] = true;
          result.absorbed[activation.name] = producer.name;
        }
      }
    }
    result.nodes.push_back(std::move(fused));
  }
  return result;
}

}  // namespace camrt
