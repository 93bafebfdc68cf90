// Model: camrt's in-memory form of a converted network, exactly what model.json + model.safetensors
// hold (spec: weights/FORMAT.md). Nodes are in topological order; weights are named as in the source
// model. Loading and saving validate everything: a Model that load_model returns is well-formed JSON-wise,
// while graph-level checks (unknown ops, shapes) happen when the engine builds a Graph from it.
#pragma once
#include <array>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/tensor.h"

namespace camrt {

inline constexpr int kModelFormatVersion = 1;

struct ValueInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;  // dims may be -1 (dynamic); inputs conventionally have shape[0] == -1, the batch
};

struct Node {
  std::string op;    // ONNX op type, e.g. "Conv"
  std::string name;  // ONNX node name, e.g. "/layer4/layer4.2/relu_2/Relu"
  std::vector<std::string> inputs;   // tensor names; "" marks an omitted optional input
  std::vector<std::string> outputs;  // tensor names
  nlohmann::json attrs = nlohmann::json::object();  // ONNX attribute names; ints, floats, strings, lists
};

struct Preprocess {
  int64_t resize = 256;  // shorter side after resize
  int64_t crop = 224;    // center crop (square)
  std::array<float, 3> mean = {0.485f, 0.456f, 0.406f};
  std::array<float, 3> std = {0.229f, 0.224f, 0.225f};
};

struct Model {
  std::vector<ValueInfo> inputs;
  std::vector<ValueInfo> outputs;
  std::vector<Node> nodes;
  std::map<std::string, HostTensor> weights;  // initializers and folded constants
  Preprocess preprocess;
  std::vector<std::string> labels;  // optional class labels, index = class id
  std::string explain_layer;        // default explanation layer (node name), may be empty
  nlohmann::json metadata = nlohmann::json::object();  // producer, source file, opset, ...
};

// Reads DIR/model.json (or any NAME.json) and the safetensors file it names. Errors name the file.
Model load_model(const std::string& json_path);
// The same checks on model.json text already in memory, with its weights given instead of read from the file
// the JSON names (load_model reads the text, then calls the same parser). source_name prefixes every error.
Model parse_model_json(const char* text, size_t size, std::map<std::string, HostTensor> weights,
                       const std::string& source_name);
// Writes DIR/model.json and DIR/model.safetensors atomically (temporary names, then rename).
void save_model(const Model& model, const std::string& dir);

}  // namespace camrt
