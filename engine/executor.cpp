// Planning and running one forward pass; see executor.h. Step numbering: graph inputs are written at step 0,
// node i runs at step i + 1, and "end" (num_nodes + 1) marks values that must outlive the pass.
#include "engine/executor.h"

#include <algorithm>
#include <set>

namespace camrt {

Executor::Executor(const Graph& graph, const std::map<std::string, Shape>& input_shapes, ThreadPool& pool,
                   PlanOptions options)
    : graph_(graph), pool_(pool) {
  descs_ = graph_.infer(input_shapes);
  const auto& values = graph_.values();
  const auto& nodes = graph_.nodes();
  const int64_t end_step = static_cast<int64_t>(nodes.size()) + 1;

  std::vector<bool> keep(values.size(), false);
  for (const std::string& name : options.keep) {
    int id = graph_.find_value(name);
    if (id < 0) {
      const int node = graph_.find_node(name);
      if (node >= 0) id = nodes[node].outputs[0];
    }
    CAMRT_CHECK(id >= 0, graph_.source_name() << ": no node or tensor named '" << name << "' to keep");
    keep[id] = true;
  }
  for (int id : graph_.output_ids()) keep[id] = true;
  for (int id : graph_.input_ids()) keep[id] = true;

  auto last_use = [&](int id) {
    int64_t last = values[id].producer + 1;
    for (int consumer : values[id].consumers) last = std::max<int64_t>(last, consumer + 1);
    return keep[id] ? end_step : last;
  };

  // Buffers: one per non-constant value, except in-place outputs that take over their input's buffer.
  buffer_of_value_.assign(values.size(), -1);
  readable_after_.assign(values.size(), false);
  auto new_buffer = [&](int id, int64_t first_step) {
    buffer_of_value_[id] = static_cast<int>(buffers_.size());
    const size_t bytes = static_cast<size_t>(checked_numel(descs_[id].shape)) * dtype_size(descs_[id].dtype);
    buffers_.push_back(BufferRequest{bytes, first_step, last_use(id)});
  };
  for (int id : graph_.input_ids()) new_buffer(id, 0);
  for (size_t n = 0; n < nodes.size(); ++n) {
    const GraphNode& gn = nodes[n];
    const int64_t step = static_cast<int64_t>(n) + 1;
    for (size_t o = 0; o < gn.outputs.size(); ++o) {
      const int out = gn.outputs[o];
      if (o == 0 && gn.op->can_run_in_place() && !gn.inputs.empty() && gn.inputs[0] >= 0) {
        const int in = gn.inputs[0];
        const bool in_is_activation = values[in].constant == nullptr && buffer_of_value_[in] >= 0;
        const bool same_bytes = descs_[in].dtype == descs_[out].dtype &&
                                checked_numel(descs_[in].shape) == checked_numel(descs_[out].shape);
        // The input must die here: nobody reads it later and nobody asked to keep it.
        if (in_is_activation && same_bytes && !keep[in] && last_use(in) == step) {
          const int buffer = buffer_of_value_[in];
          buffer_of_value_[out] = buffer;
          buffers_[buffer].last_step = std::max(buffers_[buffer].last_step, last_use(out));
          ++stats_.in_place_count;
          continue;
        }
      }
      new_buffer(out, step);
    }
  }
  memory_plan_ = plan_memory(buffers_);
  stats_.arena_bytes = memory_plan_.arena_bytes;
  stats_.naive_bytes = memory_plan_.naive_bytes;
  for (const auto& [name, tensor] : graph_.model().weights) stats_.weight_bytes += tensor.bytes.size();

  // A value is intact after forward if its buffer was never handed to a later tensor.
  for (size_t id = 0; id < values.size(); ++id) {
    if (values[id].constant) {
      readable_after_[id] = true;
    } else if (buffer_of_value_[id] >= 0) {
      readable_after_[id] = keep[id] && buffers_[buffer_of_value_[id]].last_step == end_step;
    }
  }
  // A kept value that was aliased by an in-place successor is not intact; in-place never takes a kept
  // input, but a kept value produced in place over a dead input is fine (it owns the buffer from then on).

  context_.device = Device::CPU;
  context_.pool = &pool_;
  for (const GraphNode& gn : nodes) {
    std::vector<TensorDesc> inputs;
    for (int id : gn.inputs) {
      TensorDesc d;
      if (id >= 0) d = descs_[id];
      else d.present = false;
      inputs.push_back(d);
    }
    stats_.workspace_bytes = std::max(stats_.workspace_bytes, gn.op->workspace_bytes(inputs, context_));
  }
  const size_t workspace_offset = (memory_plan_.arena_bytes + 63) / 64 * 64;
  arena_ = Arena(workspace_offset + stats_.workspace_bytes, Device::CPU);
  context_.workspace = stats_.workspace_bytes ? arena_.data() + workspace_offset : nullptr;
  context_.workspace_bytes = stats_.workspace_bytes;

  views_.resize(values.size());
  for (size_t id = 0; id < values.size(); ++id) {
    Tensor& view = views_[id];
    view.dtype = descs_[id].dtype;
    view.shape = descs_[id].shape;
    view.device = Device::CPU;
    if (values[id].constant) {
      view.data = const_cast<uint8_t*>(values[id].constant->bytes.data());
    } else if (buffer_of_value_[id] >= 0) {
      view.data = arena_.data() + memory_plan_.offsets[buffer_of_value_[id]];
    }
  }
  steps_.resize(nodes.size());
  for (size_t n = 0; n < nodes.size(); ++n) {
    for (int id : nodes[n].inputs) steps_[n].inputs.push_back(id >= 0 ? &views_[id] : nullptr);
    for (int id : nodes[n].outputs) steps_[n].outputs.push_back(&views_[id]);
  }
}

void Executor::set_input(const std::string& name, const HostTensor& data) {
  const int id = graph_.find_value(name);
  CAMRT_CHECK(id >= 0 && graph_.values()[id].input_index >= 0,
              graph_.source_name() << ": '" << name << "' is not a graph input");
  const Tensor& view = views_[id];
  CAMRT_CHECK(data.shape == view.shape && data.dtype == view.dtype,
              graph_.source_name() << ": input '" << name << "' planned as " << dtype_name(view.dtype) << " "
                                   << shape_str(view.shape) << ", got " << dtype_name(data.dtype) << " "
                                   << shape_str(data.shape));
  if (!data.bytes.empty()) std::memcpy(view.data, data.bytes.data(), data.bytes.size());
}

void Executor::forward() {
  const auto& nodes = graph_.nodes();
  for (size_t n = 0; n < nodes.size(); ++n) {
    try {
      nodes[n].op->forward(context_, steps_[n].inputs, steps_[n].outputs);
    } catch (const Error& e) {
      const std::string msg = e.what();
      const Node& node = *nodes[n].node;
      throw Error(graph_.source_name() + ": " +
                      (msg.find(node.name) == std::string::npos ? "node '" + node.name + "' (" + node.op + "): " + msg
                                                                 : msg),
                  e.file(), e.line(), e.expression().c_str());
    }
  }
}

Tensor Executor::value(const std::string& tensor_name) const {
  const int id = graph_.find_value(tensor_name);
  CAMRT_CHECK(id >= 0, graph_.source_name() << ": no tensor named '" << tensor_name << "'");
  return value(id);
}

Tensor Executor::value(int value_id) const {
  CAMRT_CHECK(value_id >= 0 && value_id < static_cast<int>(views_.size()), "value id " << value_id << " out of range");
  CAMRT_CHECK(readable_after_[value_id], graph_.source_name() << ": tensor '" << graph_.values()[value_id].name
                                                              << "' is not kept after the forward pass (add it to PlanOptions::keep)");
  return views_[value_id];
}

bool Executor::is_readable_after_forward(int value_id) const { return readable_after_[value_id]; }

std::map<std::string, HostTensor> run_model(const Graph& graph, const std::map<std::string, HostTensor>& inputs,
                                            ThreadPool& pool) {
  std::map<std::string, Shape> shapes;
  for (const auto& [name, tensor] : inputs) shapes[name] = tensor.shape;
  Executor executor(graph, shapes, pool);
  for (const auto& [name, tensor] : inputs) executor.set_input(name, tensor);
  executor.forward();
  std::map<std::string, HostTensor> outputs;
  for (int id : graph.output_ids()) {
    const Tensor view = executor.value(id);
    HostTensor out(view.dtype, view.shape);
    if (!out.bytes.empty()) std::memcpy(out.bytes.data(), view.data, out.bytes.size());
    outputs[graph.values()[id].name] = std::move(out);
  }
  return outputs;
}

}  // namespace camrt
