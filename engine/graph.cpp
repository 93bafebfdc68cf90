// Graph construction and shape inference. All messages name the source file and the node, because the
// person reading them is looking at their exporter's layer names.
#include "engine/graph.h"

#include <set>

#include "engine/fusion.h"
#include "engine/limits.h"

namespace camrt {

namespace {

// A shape that a file stated or shape inference produced: rank, dims and size within engine/limits.h.
// Returns an empty string if it is fine, else what is wrong (the caller names the file and tensor).
std::string shape_problem(const Shape& shape, DType dtype) {
  if (static_cast<int64_t>(shape.size()) > limits::kMaxRank)
    return "rank " + std::to_string(shape.size()) + " exceeds " + std::to_string(limits::kMaxRank);
  int64_t numel = 1;
  bool zero = false;
  for (int64_t d : shape) {
    if (d < 0) return "negative dimension in " + shape_str(shape);
    zero = zero || d == 0;
  }
  if (zero) return "";
  for (int64_t d : shape)
    if (__builtin_mul_overflow(numel, d, &numel) || numel > limits::kMaxTensorElements)
      return shape_str(shape) + " has more than " + std::to_string(limits::kMaxTensorElements) + " elements";
  if (numel > limits::kMaxTensorBytes / static_cast<int64_t>(dtype_size(dtype)))
    return shape_str(shape) + " holds more than " + std::to_string(limits::kMaxTensorBytes) + " bytes";
  return "";
}

void check_name(const std::string& name, const std::string& source, const char* what) {
  CAMRT_CHECK(static_cast<int64_t>(name.size()) <= limits::kMaxNameBytes,
              source << ": " << what << " name of " << name.size() << " bytes (at most " << limits::kMaxNameBytes
                     << "), starting '" << name.substr(0, 40) << "'");
}

}  // namespace

Graph::Graph(std::shared_ptr<const Model> model, std::string source_name, GraphOptions options)
    : model_(std::move(model)), source_name_(std::move(source_name)) {
  CAMRT_CHECK(model_ != nullptr, "Graph: null model");
  const Model& m = *model_;
  // Ids are ints and every later pass walks these lists: refuse absurd counts before building anything.
  CAMRT_CHECK(static_cast<int64_t>(m.nodes.size()) <= limits::kMaxGraphNodes,
              source_name_ << ": " << m.nodes.size() << " nodes (at most " << limits::kMaxGraphNodes << ")");
  CAMRT_CHECK(static_cast<int64_t>(m.weights.size() + m.inputs.size()) <= limits::kMaxGraphValues,
              source_name_ << ": " << m.weights.size() << " weights and " << m.inputs.size() << " inputs (at most "
                           << limits::kMaxGraphValues << " values)");
  CAMRT_CHECK(static_cast<int64_t>(m.outputs.size()) <= limits::kMaxNodeInputs,
              source_name_ << ": " << m.outputs.size() << " graph outputs (at most " << limits::kMaxNodeInputs << ")");
  int64_t weight_bytes = 0;
  for (const auto& [name, tensor] : m.weights) {
    check_name(name, source_name_, "weight");
    const std::string problem = shape_problem(tensor.shape, tensor.dtype);
    CAMRT_CHECK(problem.empty(), source_name_ << ": weight '" << name << "': " << problem);
    CAMRT_CHECK(tensor.bytes.size() == static_cast<size_t>(checked_numel(tensor.shape)) * dtype_size(tensor.dtype),
                source_name_ << ": weight '" << name << "' " << shape_str(tensor.shape) << " holds "
                             << tensor.bytes.size() << " bytes");
    weight_bytes += static_cast<int64_t>(tensor.bytes.size());
    CAMRT_CHECK(weight_bytes <= limits::kMaxModelBytes,
                source_name_ << ": weights exceed " << limits::kMaxModelBytes << " bytes (at '" << name << "')");
  }
  for (const ValueInfo& input : m.inputs) {
    check_name(input.name, source_name_, "graph input");
    Shape batch_one = input.shape;
    for (int64_t& d : batch_one) {
      CAMRT_CHECK(d >= -1, source_name_ << ": graph input '" << input.name << "' has invalid shape " << shape_str(input.shape));
      if (d == -1) d = 1;
    }
    const std::string problem = shape_problem(batch_one, input.dtype);
    CAMRT_CHECK(problem.empty(), source_name_ << ": graph input '" << input.name << "': " << problem);
  }
  auto add_value = [&](const std::string& name) {
    CAMRT_CHECK(static_cast<int64_t>(values_.size()) < limits::kMaxGraphValues,
                source_name_ << ": more than " << limits::kMaxGraphValues << " tensors (at '" << name << "')");
    const int id = static_cast<int>(values_.size());
    Value value;
    value.name = name;
    values_.push_back(value);
    value_by_name_[name] = id;
    return id;
  };
  for (const auto& [name, tensor] : m.weights) values_[add_value(name)].constant = &tensor;
  for (size_t i = 0; i < m.inputs.size(); ++i) {
    const std::string& name = m.inputs[i].name;
    CAMRT_CHECK(!value_by_name_.count(name), source_name_ << ": graph input '" << name << "' is also a weight or listed twice");
    const int id = add_value(name);
    values_[id].input_index = static_cast<int>(i);
    input_ids_.push_back(id);
  }

  std::map<std::string, std::string> absorbed;  // activation node name -> fused node name
  if (options.fuse_activations) {
    // Residual fusion needs every tensor's shape (an Add that broadcasts is no residual): those of the plain
    // graph at batch 2 (where batch-sized tensors differ from batch-1 constants), or none if it does not infer.
    std::map<std::string, Shape> shapes;
    try {
      const Graph plain(model_, source_name_);
      const std::vector<TensorDesc> descs = plain.infer(plain.input_shapes_for_batch(2));
      for (size_t id = 0; id < descs.size(); ++id) shapes[plain.values()[id].name] = descs[id].shape;
    } catch (const Error&) {
      shapes.clear();  // the graph below reports what is wrong with the model, if anything
    }
    FusedNodes fusion = fuse_activations(m, options.keep, shapes.empty() ? nullptr : &shapes);
    fused_nodes_ = std::move(fusion.nodes);
    absorbed = std::move(fusion.absorbed);
    fused_pairs_ = static_cast<int64_t>(absorbed.size());
  }
  const std::vector<Node>& model_nodes = options.fuse_activations ? fused_nodes_ : m.nodes;
  std::vector<std::string> unknown;
  for (size_t n = 0; n < model_nodes.size(); ++n) {
    const Node& node = model_nodes[n];
    check_name(node.name, source_name_, "node");
    check_name(node.op, source_name_, "op");
    const std::string where = source_name_ + ": node '" + node.name + "' (" + node.op + ")";
    CAMRT_CHECK(static_cast<int64_t>(node.inputs.size()) <= limits::kMaxNodeInputs &&
                    static_cast<int64_t>(node.outputs.size()) <= limits::kMaxNodeInputs,
                where << ": " << node.inputs.size() << " inputs and " << node.outputs.size() << " outputs (at most "
                      << limits::kMaxNodeInputs << " each)");
    CAMRT_CHECK(!node.outputs.empty(), where << ": the node has no outputs");
    CAMRT_CHECK(!node_by_name_.count(node.name), where << ": duplicate node name");
    node_by_name_[node.name] = static_cast<int>(n);
    GraphNode gn;
    gn.node = &node;
    OpFactory factory = find_op(node.op);
    if (!factory) {
      unknown.push_back("'" + node.name + "' (" + node.op + ")");
    } else {
      try {
        gn.op = factory(node);  // reads and checks the node's attributes
      } catch (const Error& e) {
        const std::string msg = e.what();
        throw Error(source_name_ + ": " + (msg.find(node.name) == std::string::npos
                                               ? "node '" + node.name + "' (" + node.op + "): " + msg
                                               : msg),
                    e.file(), e.line(), e.expression().c_str());
      }
    }
    for (const std::string& input : node.inputs) {
      if (input.empty()) {
        gn.inputs.push_back(-1);
        continue;
      }
      auto it = value_by_name_.find(input);
      CAMRT_CHECK(it != value_by_name_.end(),
                  where << ": input '" << input << "' is neither a graph input, a weight, nor an output of an earlier node");
      gn.inputs.push_back(it->second);
      values_[it->second].consumers.push_back(static_cast<int>(n));
    }
    for (const std::string& output : node.outputs) {
      CAMRT_CHECK(!output.empty(), where << ": empty output name");
      check_name(output, where, "output");
      CAMRT_CHECK(!value_by_name_.count(output), where << ": output '" << output << "' is already defined by another node, input or weight");
      const int id = add_value(output);
      values_[id].producer = static_cast<int>(n);
      gn.outputs.push_back(id);
    }
    nodes_.push_back(std::move(gn));
  }
  if (!unknown.empty()) {
    std::string list;
    for (size_t i = 0; i < unknown.size(); ++i) list += (i ? ", " : "") + unknown[i];
    std::string supported;
    for (const auto& op : supported_ops()) supported += (supported.empty() ? "" : " ") + op;
    CAMRT_FAIL(source_name_ << ": " << unknown.size() << " node(s) with unsupported ops: " << list
                            << " (supported: " << supported << ")");
  }
  for (const auto& [activation, producer] : absorbed) node_by_name_.emplace(activation, node_by_name_.at(producer));
  for (size_t i = 0; i < m.outputs.size(); ++i) {
    const int id = find_value(m.outputs[i].name);
    CAMRT_CHECK(id >= 0, source_name_ << ": graph output '" << m.outputs[i].name << "' is not produced by any node");
    values_[id].output_index = static_cast<int>(i);
    output_ids_.push_back(id);
  }
}

std::unique_ptr<Graph> Graph::fused(const std::vector<std::string>& keep) const {
  GraphOptions options;
  options.fuse_activations = true;
  options.keep = keep;
  return std::make_unique<Graph>(model_, source_name_, std::move(options));
}

int Graph::find_value(const std::string& tensor_name) const {
  auto it = value_by_name_.find(tensor_name);
  return it == value_by_name_.end() ? -1 : it->second;
}

int Graph::find_node(const std::string& node_or_tensor_name) const {
  auto it = node_by_name_.find(node_or_tensor_name);
  if (it != node_by_name_.end()) return it->second;
  const int value = find_value(node_or_tensor_name);
  return value >= 0 ? values_[value].producer : -1;
}

std::map<std::string, Shape> Graph::input_shapes_for_batch(int64_t batch) const {
  std::map<std::string, Shape> shapes;
  for (const ValueInfo& input : model_->inputs) {
    Shape shape = input.shape;
    for (int64_t& d : shape) {
      CAMRT_CHECK(d == -1 || d >= 0, source_name_ << ": graph input '" << input.name << "' has invalid shape " << shape_str(input.shape));
      if (d == -1) d = batch;
    }
    shapes[input.name] = shape;
  }
  return shapes;
}

std::vector<TensorDesc> Graph::infer(const std::map<std::string, Shape>& input_shapes) const {
  std::vector<TensorDesc> descs(values_.size());
  std::vector<bool> known(values_.size(), false);
  for (size_t id = 0; id < values_.size(); ++id) {
    if (const HostTensor* c = values_[id].constant) {
      descs[id] = TensorDesc{c->dtype, c->shape, c};
      known[id] = true;
    }
  }
  for (int id : input_ids_) {
    const Value& v = values_[id];
    auto it = input_shapes.find(v.name);
    CAMRT_CHECK(it != input_shapes.end(), source_name_ << ": no shape given for graph input '" << v.name << "'");
    const ValueInfo& info = model_->inputs[v.input_index];
    CAMRT_CHECK(it->second.size() == info.shape.size(),
                source_name_ << ": graph input '" << v.name << "' expects rank " << info.shape.size() << " "
                             << shape_str(info.shape) << ", got " << shape_str(it->second));
    for (size_t d = 0; d < info.shape.size(); ++d)
      CAMRT_CHECK(info.shape[d] < 0 || info.shape[d] == it->second[d],
                  source_name_ << ": graph input '" << v.name << "' expects shape " << shape_str(info.shape) << ", got "
                               << shape_str(it->second));
    const std::string problem = shape_problem(it->second, info.dtype);
    CAMRT_CHECK(problem.empty(), source_name_ << ": graph input '" << v.name << "': " << problem);
    descs[id] = TensorDesc{info.dtype, it->second, nullptr};
    known[id] = true;
  }
  for (const GraphNode& gn : nodes_) {
    std::vector<TensorDesc> inputs;
    for (int id : gn.inputs) {
      if (id < 0) {
        TensorDesc absent;
        absent.present = false;
        inputs.push_back(absent);
      } else {
        inputs.push_back(descs[id]);
      }
    }
    std::vector<TensorDesc> outputs;
    try {
      outputs = gn.op->infer(inputs);
    } catch (const Error& e) {
      const std::string msg = e.what();
      // Ops already name their node; add the file so the user knows which model.
      throw Error(source_name_ + ": " + (msg.find(gn.node->name) == std::string::npos
                                             ? "node '" + gn.node->name + "' (" + gn.node->op + "): " + msg
                                             : msg),
                  e.file(), e.line(), e.expression().c_str());
    }
    CAMRT_CHECK(outputs.size() >= gn.outputs.size(),
                source_name_ << ": node '" << gn.node->name << "' (" << gn.node->op << ") has " << gn.outputs.size()
                             << " outputs but the op produces " << outputs.size());
    for (size_t i = 0; i < gn.outputs.size(); ++i) {
      // Every op checks its attributes, but a size no later pass could allocate is refused here once for all.
      const std::string problem = shape_problem(outputs[i].shape, outputs[i].dtype);
      CAMRT_CHECK(problem.empty(), source_name_ << ": node '" << gn.node->name << "' (" << gn.node->op << "): output '"
                                                << values_[gn.outputs[i]].name << "': " << problem);
      outputs[i].constant = nullptr;
      descs[gn.outputs[i]] = outputs[i];
    }
  }
  return descs;
}

int64_t Graph::parameter_count() const {
  int64_t count = 0;
  for (const auto& [name, tensor] : model_->weights)
    if (tensor.dtype == DType::F32 || tensor.dtype == DType::F16 || tensor.dtype == DType::F64) count += tensor.numel();
  return count;
}

std::string Graph::default_explain_layer() const {
  if (!model_->explain_layer.empty()) return model_->explain_layer;
  std::vector<TensorDesc> descs;
  try {
    descs = infer(input_shapes_for_batch(1));
  } catch (const Error&) {
    return "";
  }
  std::string last_spatial;
  for (const GraphNode& gn : nodes_) {
    if (gn.outputs.empty()) continue;
    const TensorDesc& out = descs[gn.outputs[0]];
    const std::string& op = gn.node->op;
    if (op == "GlobalAveragePool" || op == "Flatten" || op == "Gemm" || op == "MatMul" || op == "ReduceMean")
      if (!last_spatial.empty()) return last_spatial;
    // Pooling layers are skipped: CAM libraries explain the last feature layer before them
    // (e.g. VGG16's features.29 ReLU, not the MaxPool after it).
    const bool pooling = op == "MaxPool" || op == "AveragePool";
    if (!pooling && out.shape.size() == 4 && out.shape[2] * out.shape[3] > 1) last_spatial = gn.node->name;
  }
  return last_spatial;
}

}  // namespace camrt
