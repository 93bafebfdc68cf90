// Graph: a validated, executable view of a Model. Every tensor name becomes a value id; every node gets
// its Op (attributes parsed once) and resolved input/output ids. A Graph is immutable and shape-agnostic:
// shapes are inferred per set of input shapes (one Plan per batch size), so one Graph serves every plan
// and every backend.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/ops/op.h"
#include "weights/model.h"

namespace camrt {

struct Value {
  std::string name;
  const HostTensor* constant = nullptr;  // weights and folded constants
  int producer = -1;                     // node index, -1 for graph inputs and constants
  std::vector<int> consumers;            // node indices, in order (may repeat)
  int input_index = -1;                  // position among the graph inputs, or -1
  int output_index = -1;                 // position among the graph outputs, or -1
};

// How a Graph is built from its model. fuse_activations: merge Conv/Add + Relu/Clip pairs (engine/fusion.h) except
// where the intermediate tensor is a graph output or named in `keep`; plans of such a graph compute the same
// values with fewer kernels. Absorbed activation node names resolve (find_node) to the fused node.
struct GraphOptions {
  bool fuse_activations = false;
  std::vector<std::string> keep;  // tensor or node names that must stay computed (e.g. the explained layer)
};

struct GraphNode {
  const Node* node = nullptr;
  std::unique_ptr<Op> op;
  std::vector<int> inputs;   // value ids; -1 for an omitted optional input
  std::vector<int> outputs;  // value ids
};

class Graph {
 public:
  // Takes ownership of the model. Throws camrt::Error naming the node for unknown ops, undefined tensors,
  // tensors produced twice, or nodes out of topological order. source_name prefixes messages (the file).
  // The model is shared, not copied: weights can be large. Only its graph fields are read.
  explicit Graph(std::shared_ptr<const Model> model, std::string source_name = "model", GraphOptions options = {});
  explicit Graph(Model model, std::string source_name = "model", GraphOptions options = {})
      : Graph(std::make_shared<const Model>(std::move(model)), std::move(source_name), std::move(options)) {}
  // The same model as a fused graph (GraphOptions::fuse_activations) keeping those tensors; shares the weights.
  std::unique_ptr<Graph> fused(const std::vector<std::string>& keep) const;

  const Model& model() const { return *model_; }
  const std::shared_ptr<const Model>& shared_model() const { return model_; }
  const std::string& source_name() const { return source_name_; }
  const std::vector<Value>& values() const { return values_; }
  const std::vector<GraphNode>& nodes() const { return nodes_; }
  const std::vector<int>& input_ids() const { return input_ids_; }
  const std::vector<int>& output_ids() const { return output_ids_; }

  // Value id for a tensor name, or -1.
  int find_value(const std::string& tensor_name) const;
  // Node index for a node name, or for the name of one of its output tensors; -1 if neither.
  int find_node(const std::string& node_or_tensor_name) const;

  // The graph inputs' shapes with the dynamic batch (-1 dims) replaced by batch.
  std::map<std::string, Shape> input_shapes_for_batch(int64_t batch) const;
  // Shape inference over the whole graph: one desc per value id. Errors name the node and the file.
  std::vector<TensorDesc> infer(const std::map<std::string, Shape>& input_shapes) const;

  // Activation nodes merged into their producer (0 unless built with fuse_activations).
  int64_t fused_pairs() const { return fused_pairs_; }

  // Number of parameters (elements of all float weights).
  int64_t parameter_count() const;
  // The default explanation layer: the model's explain_layer if set, else the last node whose output is
  // spatial (rank 4 with h*w > 1), not a pooling layer, before the first global reduction. Empty if none.
  std::string default_explain_layer() const;

 private:
  std::shared_ptr<const Model> model_;
  std::string source_name_;
  std::vector<Node> fused_nodes_;  // the rewritten node list of a fused graph (GraphNode::node points here)
  int64_t fused_pairs_ = 0;
  std::vector<Value> values_;
  std::vector<GraphNode> nodes_;
  std::vector<int> input_ids_, output_ids_;
  std::map<std::string, int> value_by_name_;
  std::map<std::string, int> node_by_name_;
};

}  // namespace camrt
