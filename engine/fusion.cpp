// Activation and residual fusion (see engine/fusion.h): passes over the node list. Activation pairs are decided
// from tensor names alone (Conv and Add apply the activation element-wise to the output they produce); a
// residual Add also needs both operands to have one shape (an Add that broadcasts is not a residual).
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

// The Add's operands are a Conv's output (read by this Add only) and a same-shaped activation Z: the Conv with Z
// as its fourth input and the Add's activation, in place of the Add. absorbed: updated for the Add's name.
bool fuse_residual(const Model& model, std::vector<Node>& nodes, size_t add_index, const std::vector<bool>& removed,
                   const std::map<std::string, size_t>& producer, const std::map<std::string, int>& reader_count,
                   const std::set<std::string>& observable, const std::map<std::string, Shape>& shapes,
                   size_t* conv_index) {
  const Node& add = nodes[add_index];
  if (add.op != "Add" || add.inputs.size() != 2 || add.outputs.size() != 1 || !add.attrs.is_object()) return false;
  for (const auto& [key, value] : add.attrs.items())  // anything else (a legacy broadcast/axis) is not a plain add
    if (key != "activation" && key != "activation_min" && key != "activation_max" && key != "onnx_opset") return false;
  for (int side = 0; side < 2; ++side) {
    const std::string& conv_out = add.inputs[side];
    const std::string& z = add.inputs[1 - side];
    if (conv_out == z || model.weights.count(z)) return false;  // x + x, or a constant operand (a bias-like Add)
    auto p = producer.find(conv_out);
    if (p == producer.end() || removed[p->second] || p->second >= add_index) continue;
    const Node& conv = nodes[p->second];
    if (conv.op != "Conv" || conv.outputs.size() != 1 || conv.inputs.size() > 3 || !conv.attrs.is_object() ||
        conv.attrs.contains("activation"))
      continue;
    if (observable.count(conv_out) || reader_count.at(conv_out) != 1) continue;
    auto zs = shapes.find(z), cs = shapes.find(conv_out);
    if (zs == shapes.end() || cs == shapes.end() || zs->second != cs->second) continue;
    Node fused = conv;
    fused.inputs.resize(3);  // X, W, B ("" when the conv has none)
    fused.inputs.push_back(z);
    for (const auto& [key, value] : add.attrs.items())
      if (key != "onnx_opset") fused.attrs[key] = value;
    fused.outputs = add.outputs;
    nodes[add_index] = std::move(fused);
    *conv_index = p->second;
    return true;
  }
  return false;
}

FusedNodes fuse_activations(const Model& model, const std::vector<std::string>& keep,
                            const std::map<std::string, Shape>* shapes) {
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
  if (!shapes) return result;

  // Residual fusion over the activation-fused list: the fused conv takes the Add's place.
  std::vector<Node>& list = result.nodes;
  std::map<std::string, size_t> producer;
  std::map<std::string, int> reader_count;
  for (size_t n = 0; n < list.size(); ++n) {
    for (const std::string& output : list[n].outputs) producer[output] = n;
    for (const std::string& input : list[n].inputs)
      if (!input.empty()) ++reader_count[input];
  }
  std::vector<bool> removed(list.size(), false);
  for (size_t n = 0; n < list.size(); ++n) {
    const std::string add_name = list[n].name;
    size_t conv = 0;
    if (!fuse_residual(model, list, n, removed, producer, reader_count, observable, *shapes, &conv)) continue;
    removed[conv] = true;
    for (auto& [absorbed_name, fused_name] : result.absorbed)
      if (fused_name == add_name) fused_name = list[n].name;  // a Relu the Add had absorbed
    result.absorbed[add_name] = list[n].name;
  }
  std::vector<Node> kept;
  for (size_t n = 0; n < list.size(); ++n)
    if (!removed[n]) kept.push_back(std::move(list[n]));
  list = std::move(kept);
  return result;
}

}  // namespace camrt
