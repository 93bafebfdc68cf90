// Planning and running forward and backward passes; see executor.h. Step numbering: plan inputs are written
// at step 0, the k-th active node runs forward at step k + 1, the j-th backward node at step N + 1 + j, and
// "end" (after the last backward step) marks values that must outlive the pass.
#include "engine/executor.h"

#include <algorithm>
#include <set>

#include "kernels/cpu/layout.h"
#if CAMRT_WITH_CUDA
#include "kernels/cuda/layout.h"
#endif

namespace camrt {

ChannelsLast resolve_channels_last(ChannelsLast setting, const CudaRuntime* cuda) {
  if (setting != ChannelsLast::kAuto) return setting;
  return cuda && cuda->precision() == Precision::FP16 ? ChannelsLast::kHalf : ChannelsLast::kOff;
}

ChannelsLast parse_channels_last(const std::string& name) {
  if (name == "auto") return ChannelsLast::kAuto;
  if (name == "off") return ChannelsLast::kOff;
  if (name == "half") return ChannelsLast::kHalf;
  if (name == "float") return ChannelsLast::kFloat;
  CAMRT_FAIL("unknown channels-last form '" << name << "' (expected auto, off, half or float)");
}

int Executor::resolve(const std::string& name) const {
  int id = graph_.find_value(name);
  if (id < 0) {
    const int node = graph_.find_node(name);
    if (node >= 0) id = graph_.nodes()[node].outputs[0];
  }
  CAMRT_CHECK(id >= 0, graph_.source_name() << ": no node or tensor named '" << name << "'");
  return id;
}

Executor::Executor(const Graph& graph, const std::map<std::string, Shape>& input_shapes, ThreadPool& pool,
                   PlanOptions options)
    : graph_(graph), pool_(pool) {
  descs_ = graph_.infer(input_shapes);
  const auto& values = graph_.values();
  const auto& nodes = graph_.nodes();
  const size_t num_values = values.size();

  // --- Which nodes run forward, and what the plan's inputs are.
  std::vector<bool> available(num_values, false);  // constant, plan input, or produced by an active node
  for (size_t id = 0; id < num_values; ++id) available[id] = values[id].constant != nullptr;
  std::vector<int> active;  // node indices in forward order
  if (options.start_from.empty()) {
    input_ids_ = graph_.input_ids();
    for (size_t n = 0; n < nodes.size(); ++n) active.push_back(static_cast<int>(n));
  } else {
    CAMRT_CHECK(options.grad_targets.empty(), "a tail plan (start_from) has no backward pass");
    const int start = resolve(options.start_from);
    input_ids_ = {start};
    std::vector<bool> downstream(num_values, false);
    downstream[start] = true;
    for (size_t n = 0; n < nodes.size(); ++n) {
      bool reads_downstream = false;
      for (int id : nodes[n].inputs) reads_downstream |= id >= 0 && downstream[id];
      if (!reads_downstream) continue;
      for (int id : nodes[n].inputs)
        CAMRT_CHECK(id < 0 || downstream[id] || values[id].constant,
                    graph_.source_name() << ": cannot run the network from '" << options.start_from << "' on: node '"
                                         << nodes[n].node->name << "' also reads '" << values[id].name
                                         << "', computed before it");
      for (int id : nodes[n].outputs) downstream[id] = true;
      active.push_back(static_cast<int>(n));
    }
  }
  for (int id : input_ids_) available[id] = true;
  for (int n : active)
    for (int id : nodes[n].outputs) available[id] = true;
  const int64_t num_forward = static_cast<int64_t>(active.size());
  std::vector<int64_t> forward_step_of_node(nodes.size(), -1);
  for (int64_t k = 0; k < num_forward; ++k) forward_step_of_node[active[k]] = k + 1;

  // --- Backward: values that depend on a target (requires) and that output 0 depends on (ancestor).
  std::vector<bool> flows(num_values, false);  // a gradient buffer exists for this value
  std::vector<int> backward_nodes;             // node indices in backward (reverse) order
  if (!options.grad_targets.empty()) {
    const int out0 = graph_.output_ids().at(0);
    std::vector<bool> requires(num_values, false), ancestor(num_values, false);
    for (const std::string& name : options.grad_targets) {
      const int id = resolve(name);
      CAMRT_CHECK(!values[id].constant, graph_.source_name() << ": '" << name << "' is a weight; camrt computes activation gradients only");
      requires[id] = true;
      grad_target_ids_.push_back(id);
    }
    for (int n : active) {
      bool any = false;
      for (int id : nodes[n].inputs) any |= id >= 0 && requires[id];
      if (any)
        for (int id : nodes[n].outputs) requires[id] = true;
    }
    ancestor[out0] = true;
    for (auto it = active.rbegin(); it != active.rend(); ++it) {
      bool any = false;
      for (int id : nodes[*it].outputs) any |= ancestor[id];
      if (any)
        for (int id : nodes[*it].inputs)
          if (id >= 0) ancestor[id] = true;
    }
    for (size_t id = 0; id < num_values; ++id) flows[id] = requires[id] && ancestor[id] && !values[id].constant;
    for (int id : grad_target_ids_)
      CAMRT_CHECK(flows[id], graph_.source_name() << ": the output '" << values[out0].name << "' does not depend on '"
                                                   << values[id].name << "', so it has no gradient there");
    for (auto it = active.rbegin(); it != active.rend(); ++it) {
      bool in_flows = false, out_flows = false;
      for (int id : nodes[*it].inputs) in_flows |= id >= 0 && flows[id];
      for (int id : nodes[*it].outputs) out_flows |= flows[id];
      if (in_flows && out_flows) backward_nodes.push_back(*it);
    }
    seed_value_ = out0;
  }
  const int64_t num_backward = static_cast<int64_t>(backward_nodes.size());
  const int64_t end_step = num_forward + num_backward + 2;
  auto backward_step = [&](int64_t j) { return num_forward + 1 + j; };

  // --- Lifetimes of forward values.
  std::vector<bool> keep(num_values, false);
  for (const std::string& name : options.keep) keep[resolve(name)] = true;
  for (int id : graph_.output_ids()) keep[id] = keep[id] || available[id];
  for (int id : input_ids_) keep[id] = true;
  for (int id : grad_target_ids_) keep[id] = true;
  std::vector<int64_t> backward_last_step(num_values, 0);  // last backward step reading the forward value
  std::vector<bool> needed_by_backward(num_values, false);
  std::vector<bool> reads_activations(static_cast<size_t>(num_backward), false);  // per backward step
  for (int64_t j = 0; j < num_backward; ++j) {
    const GraphNode& gn = nodes[backward_nodes[j]];
    std::vector<TensorDesc> in_descs;
    for (int id : gn.inputs) {
      TensorDesc d;
      if (id >= 0) d = descs_[id];
      else d.present = false;
      in_descs.push_back(d);
    }
    const BackwardNeeds needs = gn.op->backward_needs(in_descs, gn.outputs.size());
    auto extend = [&](int id) {
      if (id < 0 || values[id].constant) return;
      needed_by_backward[id] = true;
      reads_activations[j] = true;
      backward_last_step[id] = std::max(backward_last_step[id], options.repeat_backward ? end_step : backward_step(j));
    };
    for (size_t i = 0; i < gn.inputs.size() && i < needs.inputs.size(); ++i)
      if (needs.inputs[i]) extend(gn.inputs[i]);
    for (size_t i = 0; i < gn.outputs.size() && i < needs.outputs.size(); ++i)
      if (needs.outputs[i]) extend(gn.outputs[i]);
  }
  for (size_t id = 0; id < num_values; ++id) stats_.kept_for_backward += needed_by_backward[id] ? 1 : 0;

  // --- Several seeds per backward pass: the shapes of a pass over S seeds are those of the graph at S times the
  // batch, which is what the gradients are. Only where every tensor the backward touches scales in dim 0 alone
  // (the batch), so that seed s is one contiguous slice; otherwise one seed per pass.
  std::vector<TensorDesc> wide_descs = descs_;
  if (options.seeds_per_backward > 1 && num_backward > 0) {
    const int64_t S = options.seeds_per_backward;
    std::map<std::string, Shape> wide_shapes = input_shapes;
    for (auto& [name, shape] : wide_shapes)
      if (!shape.empty()) shape[0] *= S;
    bool batch_major = true;
    try {
      wide_descs = graph_.infer(wide_shapes);
    } catch (const Error&) {  // e.g. a Reshape to a fixed batch: the model only runs at its own batch
      batch_major = false;
    }
    auto scales_with_batch = [&](int id) {
      if (id < 0 || values[id].constant) return true;
      const Shape& narrow = descs_[id].shape;
      const Shape& wide = wide_descs[id].shape;
      return !narrow.empty() && wide.size() == narrow.size() && wide[0] == narrow[0] * S &&
             std::equal(narrow.begin() + 1, narrow.end(), wide.begin() + 1);
    };
    for (int64_t j = 0; j < num_backward && batch_major; ++j) {
      for (int id : nodes[backward_nodes[j]].inputs) batch_major = batch_major && scales_with_batch(id);
      for (int id : nodes[backward_nodes[j]].outputs) batch_major = batch_major && scales_with_batch(id);
    }
    if (batch_major) seeds_ = S;
    else wide_descs = descs_;
  }

  auto input_descs = [&](const GraphNode& gn, const std::vector<TensorDesc>& shapes_of) {
    std::vector<TensorDesc> in;
    for (int id : gn.inputs) {
      TensorDesc d;
      if (id >= 0) d = shapes_of[id];
      else d.present = false;
      in.push_back(d);
    }
    return in;
  };

  // --- Channels-last storage: the nodes that only run forward and whose op can, run on NHWC data (their 4-d
  // float32 operands, activations and weights, in that form: half or float32). A value lives in the form its
  // producer writes (plan inputs: NCHW) and, where a reader wants the other, also in a copy converted right after
  // the producer, in the same step (the copy's buffer then cannot overlap anything alive there). Value ids name the
  // NCHW forms; channels-last forms get ids after the graph's values.
  const ChannelsLast channels_last = resolve_channels_last(options.channels_last, options.cuda);
  const DType nhwc_type = channels_last == ChannelsLast::kHalf ? DType::F16 : DType::F32;
  context_.device = options.cuda ? Device::CUDA : Device::CPU;
  context_.pool = &pool_;
  context_.cuda = options.cuda;
  std::vector<bool> nhwc_node(nodes.size(), false);
  auto nhwc_operand = [&](int id) { return id >= 0 && descs_[id].dtype == DType::F32 && descs_[id].shape.size() == 4; };
  if (channels_last != ChannelsLast::kOff) {
    std::vector<bool> runs_backward(nodes.size(), false);
    for (int n : backward_nodes) runs_backward[n] = true;
    for (int n : active) {
      if (runs_backward[n] || !nodes[n].op->forward_channels_last(input_descs(nodes[n], descs_))) continue;
      bool outputs_fit = true;
      for (int id : nodes[n].outputs) outputs_fit = outputs_fit && nhwc_operand(id);
      if (!outputs_fit) continue;
      // The channels-last form must also plan on this device: cuDNN may offer no NHWC algorithm for a shape. Asked
      // now (the choice is cached for the workspace pass below); a node it refuses stays NCHW, so a plan never
      // fails for being asked to store channels-last.
      std::vector<TensorDesc> in = input_descs(nodes[n], descs_);
      for (size_t i = 0; i < in.size(); ++i) {
        if (!nhwc_operand(nodes[n].inputs[i])) continue;
        in[i].dtype = nhwc_type;
        in[i].layout = Layout::NHWC;
      }
      try {
        nodes[n].op->workspace_bytes(in, context_);
        nhwc_node[n] = true;
        ++stats_.channels_last_nodes;
      } catch (const Error&) {
      }
    }
  }
  auto reads_nhwc = [&](int n, int id) { return nhwc_node[n] && nhwc_operand(id); };
  std::vector<bool> written_nhwc(num_values, false), nhwc_wanted(num_values, false), nchw_wanted(num_values, false);
  for (int n : active) {
    for (int id : nodes[n].outputs) written_nhwc[id] = nhwc_node[n];
    for (int id : nodes[n].inputs) {
      if (id < 0) continue;
      if (reads_nhwc(n, id)) nhwc_wanted[id] = true;
      else nchw_wanted[id] = true;
    }
  }
  for (size_t id = 0; id < num_values; ++id) nchw_wanted[id] = nchw_wanted[id] || keep[id] || needed_by_backward[id];
  std::vector<int> nhwc_form(num_values, -1);
  int num_nhwc_forms = 0;
  for (size_t id = 0; id < num_values; ++id)
    if (written_nhwc[id] || nhwc_wanted[id]) nhwc_form[id] = static_cast<int>(num_values) + num_nhwc_forms++;

  // --- Lifetimes of forward values, per form: from the producer's step (0 for plan inputs) to the last reader
  // of that form; "end" for kept values.
  std::vector<int64_t> last_step(num_values, 0), nhwc_last_step(num_values, 0);
  for (size_t id = 0; id < num_values; ++id) {
    if (values[id].producer >= 0 && forward_step_of_node[values[id].producer] >= 0)
      last_step[id] = nhwc_last_step[id] = forward_step_of_node[values[id].producer];
    for (int consumer : values[id].consumers) {
      const int64_t step = forward_step_of_node[consumer];
      if (step < 0) continue;
      int64_t& last = reads_nhwc(consumer, static_cast<int>(id)) ? nhwc_last_step[id] : last_step[id];
      last = std::max(last, step);
    }
    last_step[id] = std::max(last_step[id], backward_last_step[id]);
    if (keep[id]) last_step[id] = end_step;
  }

  // --- Forward buffers: one per computed value, except in-place outputs that take over their input's buffer.
  buffer_of_value_.assign(num_values, -1);
  std::vector<int> buffer_of_nhwc(num_values, -1);
  auto value_bytes = [&](int id) {
    return static_cast<size_t>(checked_numel(descs_[id].shape)) * dtype_size(descs_[id].dtype);
  };
  auto new_buffer = [&](int id, int64_t first_step) {
    buffer_of_value_[id] = static_cast<int>(buffers_.size());
    buffers_.push_back(BufferRequest{value_bytes(id), first_step, last_step[id]});
  };
  auto new_nhwc_buffer = [&](int id, int64_t first_step) {
    buffer_of_nhwc[id] = static_cast<int>(buffers_.size());
    const size_t bytes = static_cast<size_t>(checked_numel(descs_[id].shape)) * dtype_size(nhwc_type);
    buffers_.push_back(BufferRequest{bytes, first_step, std::max(first_step, nhwc_last_step[id])});
  };
  for (int id : input_ids_) {
    new_buffer(id, 0);
    if (nhwc_form[id] >= 0) new_nhwc_buffer(id, 0);
  }
  for (int n : active) {
    const GraphNode& gn = nodes[n];
    const int64_t step = forward_step_of_node[n];
    for (size_t o = 0; o < gn.outputs.size(); ++o) {
      const int out = gn.outputs[o];
      if (nhwc_form[out] >= 0) new_nhwc_buffer(out, step);
      if (written_nhwc[out]) {
        if (nchw_wanted[out]) new_buffer(out, step);
        continue;
      }
      if (o == 0 && gn.op->can_run_in_place() && !gn.inputs.empty() && gn.inputs[0] >= 0) {
        const int in = gn.inputs[0];
        const bool in_is_activation = values[in].constant == nullptr && buffer_of_value_[in] >= 0;
        const bool same_bytes = descs_[in].dtype == descs_[out].dtype && value_bytes(in) == value_bytes(out);
        // The input must die here: nobody reads it later (forward or backward) and nobody asked to keep it.
        if (in_is_activation && same_bytes && !keep[in] && last_step[in] == step) {
          const int buffer = buffer_of_value_[in];
          buffer_of_value_[out] = buffer;
          buffers_[buffer].last_step = std::max(buffers_[buffer].last_step, last_step[out]);
          ++stats_.in_place_count;
          continue;
        }
      }
      new_buffer(out, step);
    }
  }

  // --- Gradient buffers: live from the first backward step that contributes to them to the step that reads
  // them (their producer's backward), or to the end for targets.
  buffer_of_gradient_.assign(num_values, -1);
  std::vector<int64_t> first_grad_step(num_values, -1), last_grad_step(num_values, -1);
  for (int64_t j = 0; j < num_backward; ++j) {
    const GraphNode& gn = nodes[backward_nodes[j]];
    for (int id : gn.inputs)
      if (id >= 0 && flows[id] && first_grad_step[id] < 0) first_grad_step[id] = backward_step(j);
    for (int id : gn.outputs)
      if (flows[id]) last_grad_step[id] = backward_step(j);
  }
  backward_steps_.resize(static_cast<size_t>(num_backward));
  for (size_t id = 0; id < num_values; ++id) {
    if (!flows[id]) continue;
    int64_t first = first_grad_step[id], last = last_grad_step[id];
    if (static_cast<int>(id) == seed_value_) first = num_forward + 1;
    if (keep[id] && std::find(grad_target_ids_.begin(), grad_target_ids_.end(), static_cast<int>(id)) != grad_target_ids_.end())
      last = end_step;
    if (first < 0) continue;  // nothing contributes (cannot happen for values on a path)
    if (last < first) last = first;
    buffer_of_gradient_[id] = static_cast<int>(buffers_.size());
    buffers_.push_back(BufferRequest{static_cast<size_t>(checked_numel(wide_descs[id].shape)) * sizeof(float), first, last});
    if (static_cast<int>(id) != seed_value_) backward_steps_[first - num_forward - 1].zero_before.push_back(static_cast<int>(id));
  }

  memory_plan_ = plan_memory(buffers_);
  stats_.arena_bytes = memory_plan_.arena_bytes;
  stats_.naive_bytes = memory_plan_.naive_bytes;
  stats_.forward_nodes = num_forward;
  stats_.backward_nodes = num_backward;
  for (const auto& [name, tensor] : graph_.model().weights) stats_.weight_bytes += tensor.bytes.size();

  readable_after_.assign(num_values, false);
  for (size_t id = 0; id < num_values; ++id) {
    if (values[id].constant) readable_after_[id] = true;
    else if (buffer_of_value_[id] >= 0) readable_after_[id] = keep[id] && buffers_[buffer_of_value_[id]].last_step == end_step;
  }

  // --- Workspace, shared by every forward and backward step.
  for (int n : active) {
    std::vector<TensorDesc> in = input_descs(nodes[n], descs_);
    for (size_t i = 0; i < in.size(); ++i) {
      if (!reads_nhwc(n, nodes[n].inputs[i])) continue;
      in[i].dtype = nhwc_type;
      in[i].layout = Layout::NHWC;
    }
    stats_.workspace_bytes = std::max(stats_.workspace_bytes, nodes[n].op->workspace_bytes(in, context_));
  }
  for (int64_t j = 0; j < num_backward; ++j) {  // a step over all seeds at once sees the wide shapes
    const GraphNode& gn = nodes[backward_nodes[j]];
    const bool per_seed = seeds_ > 1 && reads_activations[j] && !gn.op->backward_over_seeds();
    stats_.workspace_bytes = std::max(stats_.workspace_bytes,
                                      gn.op->backward_workspace_bytes(input_descs(gn, per_seed ? descs_ : wide_descs), context_));
  }
  const size_t workspace_offset = (memory_plan_.arena_bytes + 255) / 256 * 256;
  try {
    arena_ = Arena(workspace_offset + stats_.workspace_bytes, context_.device, options.cuda);
  } catch (const Error& e) {  // out of (GPU) memory: say which model
    throw Error(graph_.source_name() + ": " + e.what(), e.file(), e.line(), e.expression().c_str());
  }
  bool nhwc_weights = false;  // some channels-last node reads a 4-d constant
  for (size_t id = 0; id < num_values; ++id) nhwc_weights = nhwc_weights || (values[id].constant && nhwc_form[id] >= 0);
  if (options.cuda) {
    device_constants_ = options.device_constants ? options.device_constants
                                                 : std::make_shared<const DeviceConstants>(graph_, *options.cuda, nhwc_weights ? channels_last : ChannelsLast::kOff);
    CAMRT_CHECK(device_constants_->serves(graph_),
                graph_.source_name() << ": the device constants given to the plan belong to another model");
    CAMRT_CHECK(!nhwc_weights || device_constants_->channels_last() == channels_last,
                graph_.source_name() << ": a channels-last plan needs the weights' OHWI copies in its type (DeviceConstants "
                                        "made for the same ChannelsLast form)");
    // Staging: the largest of the plan inputs (together), output 0 and the seed.
    size_t inputs_bytes = 0;
    for (int id : input_ids_) inputs_bytes += value_bytes(id);
    size_t outputs_bytes = 0;
    for (int id : graph_.output_ids())
      if (available[id]) outputs_bytes = std::max(outputs_bytes, value_bytes(id));
    stats_.staging_bytes = std::max(inputs_bytes, outputs_bytes);
    if (seed_value_ >= 0) stats_.staging_bytes = std::max(stats_.staging_bytes, static_cast<size_t>(seeds_) * value_bytes(seed_value_));
    staging_ = std::unique_ptr<uint8_t, PinnedRelease>(
        static_cast<uint8_t*>(options.cuda->allocate_pinned(stats_.staging_bytes, "input/output staging")),
        PinnedRelease{options.cuda});
    use_graphs_ = options.cuda_graphs;
  }
  context_.workspace = stats_.workspace_bytes ? arena_.data() + workspace_offset : nullptr;
  context_.workspace_bytes = stats_.workspace_bytes;

  // --- Views and steps.
  views_.resize(num_values + static_cast<size_t>(num_nhwc_forms));
  nhwc_constants_.reserve(static_cast<size_t>(num_nhwc_forms));
  gradient_views_.resize(num_values);
  wide_views_.resize(num_values);
  for (size_t id = 0; id < num_values; ++id) {
    Tensor& view = views_[id];
    view.dtype = descs_[id].dtype;
    view.shape = descs_[id].shape;
    view.device = context_.device;
    if (values[id].constant && device_constants_) view.data = device_constants_->data(static_cast<int>(id));
    else if (values[id].constant) view.data = const_cast<uint8_t*>(values[id].constant->bytes.data());
    else if (buffer_of_value_[id] >= 0) view.data = arena_.data() + memory_plan_.offsets[buffer_of_value_[id]];
    if (buffer_of_gradient_[id] >= 0) {
      gradient_views_[id] = Tensor{arena_.data() + memory_plan_.offsets[buffer_of_gradient_[id]], DType::F32,
                                   wide_descs[id].shape, context_.device};
    }
    wide_views_[id] = view;
    wide_views_[id].shape = wide_descs[id].shape;
    if (nhwc_form[id] < 0) continue;
    Tensor& nhwc = views_[static_cast<size_t>(nhwc_form[id])];
    nhwc = Tensor{nullptr, nhwc_type, descs_[id].shape, context_.device, Layout::NHWC};
    if (buffer_of_nhwc[id] >= 0) {
      nhwc.data = arena_.data() + memory_plan_.offsets[buffer_of_nhwc[id]];
    } else if (device_constants_) {
      nhwc.data = device_constants_->channels_last_data(static_cast<int>(id));
    } else {  // CPU: the plan's own OHWI copy of the weight
      const HostTensor& weight = *values[id].constant;
      nhwc_constants_.emplace_back(nhwc_type, weight.shape);
      Tensor copy = nhwc_constants_.back().view();
      copy.layout = Layout::NHWC;
      convert(weight.view(), copy);
      nhwc.data = nhwc_constants_.back().bytes.data();
    }
    CAMRT_CHECK(nhwc.data, graph_.source_name() << ": no channels-last form of '" << values[id].name << "'");
  }
  auto conversion = [&](const Tensor* from, Tensor* to) {
    Step step;
    step.inputs.push_back(from);
    step.outputs.push_back(to);
    forward_steps_.push_back(std::move(step));
    ++stats_.conversions;
  };
  for (int id : input_ids_)
    if (nhwc_form[id] >= 0) conversion(&views_[id], &views_[nhwc_form[id]]);
  for (int n : active) {
    Step step;
    step.node = n;
    for (int id : nodes[n].inputs)
      step.inputs.push_back(id < 0 ? nullptr : reads_nhwc(n, id) ? &views_[nhwc_form[id]] : &views_[id]);
    for (int id : nodes[n].outputs) step.outputs.push_back(written_nhwc[id] ? &views_[nhwc_form[id]] : &views_[id]);
    forward_steps_.push_back(std::move(step));
    for (int id : nodes[n].outputs) {
      if (written_nhwc[id] && nchw_wanted[id]) conversion(&views_[nhwc_form[id]], &views_[id]);
      else if (!written_nhwc[id] && nhwc_form[id] >= 0) conversion(&views_[id], &views_[nhwc_form[id]]);
    }
  }
  for (int64_t j = 0; j < num_backward; ++j) {
    Step& step = backward_steps_[j];
    const int n = backward_nodes[j];
    step.node = n;
    // Over all seeds at once the op sees every tensor at the wide shapes (their data beyond one seed is never
    // read: it reads no activation), or, if it reads activations and handles seeds itself, the forward values as
    // they are with Context::seeds set; seed by seed, the forward values and a slice of each gradient.
    const bool reads = seeds_ > 1 && reads_activations[j];
    const bool per_seed = reads && !nodes[n].op->backward_over_seeds();
    step.over_seeds = reads && !per_seed;
    std::vector<Tensor>& forward_views = reads ? views_ : wide_views_;
    for (int id : nodes[n].inputs) {
      step.inputs.push_back(id >= 0 ? &forward_views[id] : nullptr);
      step.dinputs.push_back(id >= 0 && flows[id] ? &gradient_views_[id] : nullptr);
    }
    for (int id : nodes[n].outputs) {
      step.outputs_read.push_back(&forward_views[id]);
      step.doutputs.push_back(flows[id] ? &gradient_views_[id] : nullptr);
    }
    if (!per_seed) continue;
    auto slice = [&](int id, int64_t s) {
      if (id < 0 || !flows[id]) return Tensor{};
      Tensor t = gradient_views_[id];
      t.shape = descs_[id].shape;
      t.data = static_cast<uint8_t*>(t.data) + static_cast<size_t>(s * checked_numel(descs_[id].shape)) * sizeof(float);
      return t;
    };
    step.seed_slices.resize(static_cast<size_t>(seeds_));
    for (int64_t s = 0; s < seeds_; ++s) {
      Step::SeedSlice& seed = step.seed_slices[s];
      for (int id : nodes[n].outputs) seed.doutputs.push_back(slice(id, s));
      for (int id : nodes[n].inputs) seed.dinputs.push_back(slice(id, s));
      for (size_t i = 0; i < seed.doutputs.size(); ++i) seed.doutput_ptrs.push_back(step.doutputs[i] ? &seed.doutputs[i] : nullptr);
      for (size_t i = 0; i < seed.dinputs.size(); ++i) seed.dinput_ptrs.push_back(step.dinputs[i] ? &seed.dinputs[i] : nullptr);
    }
  }
}

Executor::~Executor() = default;

void Executor::set_input(const std::string& name, const HostTensor& data) {
  const Tensor& view = input(name);
  CAMRT_CHECK(data.shape == view.shape && data.dtype == view.dtype,
              graph_.source_name() << ": input '" << name << "' planned as " << dtype_name(view.dtype) << " "
                                   << shape_str(view.shape) << ", got " << dtype_name(data.dtype) << " "
                                   << shape_str(data.shape));
  if (!data.bytes.empty()) set_input(name, data.bytes.data());
}

void Executor::set_input(const std::string& name, const void* host_data) {
  const Tensor& view = input(name);
  const size_t bytes = view.nbytes();
  if (context_.device == Device::CPU) {
    std::memcpy(view.data, host_data, bytes);
    return;
  }
  // The staging buffer may still feed the previous call's transfer: wait, then queue this one.
  context_.cuda->synchronize();
  std::memcpy(staging_.get(), host_data, bytes);
  copy_to_device(*context_.cuda, view.data, staging_.get(), bytes);
}

void Executor::fetch(int value_id, void* host, bool gradient) const {
  const Tensor& view = gradient ? gradient_views_.at(static_cast<size_t>(value_id)) : value(value_id);
  CAMRT_CHECK(!gradient || view.data, graph_.source_name() << ": no gradient planned for '" << graph_.values()[value_id].name << "'");
  const size_t bytes = view.nbytes();
  if (context_.device == Device::CPU) {
    std::memcpy(host, view.data, bytes);
    return;
  }
  if (bytes <= stats_.staging_bytes) {  // pinned: a full-speed DMA, then a host copy
    copy_to_host(*context_.cuda, staging_.get(), view.data, bytes);
    std::memcpy(host, staging_.get(), bytes);
  } else {
    copy_to_host(*context_.cuda, host, view.data, bytes);
  }
}

HostTensor Executor::fetch(int value_id) const {
  const Tensor& view = value(value_id);
  HostTensor out(view.dtype, view.shape);
  if (!out.bytes.empty()) fetch(value_id, out.bytes.data());
  return out;
}

const Tensor& Executor::input(const std::string& name) {
  const int id = graph_.find_value(name);
  CAMRT_CHECK(id >= 0 && std::find(input_ids_.begin(), input_ids_.end(), id) != input_ids_.end(),
              graph_.source_name() << ": '" << name << "' is not an input of this plan");
  return views_[id];
}

namespace {
// Ops name their node in most messages; make sure every message names it and the file exactly once.
[[noreturn]] void rethrow_with_node(const Error& e, const std::string& source, const Node& node, const char* pass) {
  const std::string msg = e.what();
  const std::string prefix = msg.find(node.name) == std::string::npos ? "node '" + node.name + "' (" + node.op + ")" + pass + ": " : "";
  throw Error(source + ": " + prefix + msg, e.file(), e.line(), e.expression().c_str());
}
}  // namespace

template <typename Steps>
void Executor::run_maybe_captured(Replay& replay, Steps steps) {
  if (!use_graphs_ || replay.failed) {
    steps();
    return;
  }
  if (replay.graph && replay.graph->captured()) {
    replay.graph->launch();
    return;
  }
  if (replay.runs++ == 0) {  // first call: eager, so cuDNN/cuBLAS finish their lazy setup outside a capture
    steps();
    return;
  }
  // Captured work is recorded, not run: launch it on success, run eagerly if the capture failed, whether it
  // failed at its end or by a step throwing (a call the capture refused, or a real error: the eager run tells
  // which, and throws again for a real one).
  replay.graph = std::make_unique<StreamGraph>(*context_.cuda);
  replay.graph->begin_capture();
  bool captured = false;
  try {
    steps();
    captured = replay.graph->end_capture();
    if (!captured) capture_failure_ = replay.graph->failure();
  } catch (const std::exception& e) {
    replay.graph->end_capture();
    capture_failure_ = e.what();
  } catch (...) {
    replay.graph->end_capture();
    capture_failure_ = "a non-standard exception";
  }
  if (captured) {
    replay.graph->launch();
  } else {
    replay.graph.reset();
    replay.failed = true;
    steps();
  }
}

void Executor::forward() {
  run_maybe_captured(replays_[0], [this] { run_forward_steps(); });
}

void Executor::run_forward_steps() {
  const auto& nodes = graph_.nodes();
  for (const Step& step : forward_steps_) {
    if (step.node < 0) {
      convert(*step.inputs[0], *step.outputs[0]);
      continue;
    }
    try {
      nodes[step.node].op->forward(context_, step.inputs, step.outputs);
    } catch (const Error& e) {
      rethrow_with_node(e, graph_.source_name(), *nodes[step.node].node, "");
    }
  }
}

// NCHW float32 <-> channels-last (NHWC half or float32), whichever way `from` and `to` say; on the plan's device
// (a host tensor on the CPU: weights converted at plan time).
void Executor::convert(const Tensor& from, const Tensor& to) const {
  const int64_t images = from.shape[0], channels = from.shape[1], positions = from.shape[2] * from.shape[3];
  const bool to_nhwc = to.layout == Layout::NHWC;
  const Tensor& nhwc = to_nhwc ? to : from;
  const bool half = nhwc.dtype == DType::F16;
  auto* half_data = static_cast<uint16_t*>(nhwc.data);
#if CAMRT_WITH_CUDA
  if (context_.device == Device::CUDA && from.device == Device::CUDA) {
    cudaStream_t stream = context_.cuda->stream();
    if (to_nhwc && half) cuda::nchw_to_nhwc(half_data, from.f32(), images, channels, positions, stream);
    else if (to_nhwc) cuda::nchw_to_nhwc(to.f32(), from.f32(), images, channels, positions, stream);
    else if (half) cuda::nhwc_to_nchw(to.f32(), half_data, images, channels, positions, stream);
    else cuda::nhwc_to_nchw(to.f32(), from.f32(), images, channels, positions, stream);
    return;
  }
#endif
  if (to_nhwc && half) nchw_to_nhwc(half_data, from.f32(), images, channels, positions, pool_);
  else if (to_nhwc) nchw_to_nhwc(to.f32(), from.f32(), images, channels, positions, pool_);
  else if (half) nhwc_to_nchw(to.f32(), half_data, images, channels, positions, pool_);
  else nhwc_to_nchw(to.f32(), from.f32(), images, channels, positions, pool_);
}

void Executor::backward(const HostTensor& seed, bool guided) {
  CAMRT_CHECK(seed_value_ >= 0, graph_.source_name() << ": this plan has no backward pass (no grad_targets)");
  const Shape& seed_shape = gradient_views_[seed_value_].shape;
  CAMRT_CHECK(seed.dtype == DType::F32 && seed.shape == seed_shape,
              graph_.source_name() << ": backward seed must be F32 " << shape_str(seed_shape) << ", got "
                                   << dtype_name(seed.dtype) << " " << shape_str(seed.shape));
  backward(seed.f32(), guided);
}

void Executor::backward(const float* seed, bool guided) {
  CAMRT_CHECK(seed_value_ >= 0, graph_.source_name() << ": this plan has no backward pass (no grad_targets)");
  const Tensor& d_output = gradient_views_[seed_value_];
  const bool gpu = context_.device == Device::CUDA;
  if (gpu) {
    context_.cuda->synchronize();  // staging may still feed an earlier transfer
    std::memcpy(staging_.get(), seed, d_output.nbytes());
    copy_to_device(*context_.cuda, d_output.data, staging_.get(), d_output.nbytes());
  } else {
    std::memcpy(d_output.data, seed, d_output.nbytes());
  }
  backward_from_seed(guided);
}

const Tensor& Executor::seed_buffer() const {
  CAMRT_CHECK(seed_value_ >= 0, graph_.source_name() << ": this plan has no backward pass (no grad_targets)");
  return gradient_views_[seed_value_];
}

void Executor::backward_from_seed(bool guided) {
  CAMRT_CHECK(seed_value_ >= 0, graph_.source_name() << ": this plan has no backward pass (no grad_targets)");
  // Reset however the pass ends (an Error or std::bad_alloc from an op): later passes are plain again.
  struct GuidedScope {
    Context& context;
    ~GuidedScope() { context.guided_relu = false; }
  } scope{context_};
  context_.guided_relu = guided;
  run_maybe_captured(replays_[guided ? 2 : 1], [this] { run_backward_steps(); });
}

void Executor::run_backward_steps() {
  const bool gpu = context_.device == Device::CUDA;
  const auto& nodes = graph_.nodes();
  for (const Step& step : backward_steps_) {
    for (int id : step.zero_before) {
      if (gpu) fill_zero(*context_.cuda, gradient_views_[id].data, gradient_views_[id].nbytes());
      else std::memset(gradient_views_[id].data, 0, gradient_views_[id].nbytes());
    }
    try {
      const Op& op = *nodes[step.node].op;
      if (step.over_seeds) {
        struct SeedsScope {  // back to one seed however the call ends
          Context& context;
          ~SeedsScope() { context.seeds = 1; }
        } scope{context_};
        context_.seeds = seeds_;
        op.backward(context_, step.inputs, step.outputs_read, step.doutputs, step.dinputs);
      } else if (step.seed_slices.empty()) {
        op.backward(context_, step.inputs, step.outputs_read, step.doutputs, step.dinputs);
      } else {
        for (const Step::SeedSlice& seed : step.seed_slices)
          op.backward(context_, step.inputs, step.outputs_read, seed.doutput_ptrs, seed.dinput_ptrs);
      }
    } catch (const Error& e) {
      rethrow_with_node(e, graph_.source_name(), *nodes[step.node].node, " backward");
    }
  }
}

const Tensor& Executor::value(const std::string& tensor_name) const { return value(resolve(tensor_name)); }

const Tensor& Executor::value(int value_id) const {
  CAMRT_CHECK(value_id >= 0 && value_id < static_cast<int>(readable_after_.size()), "value id " << value_id << " out of range");
  CAMRT_CHECK(readable_after_[value_id], graph_.source_name() << ": tensor '" << graph_.values()[value_id].name
                                                              << "' is not kept after the forward pass (add it to PlanOptions::keep)");
  return views_[value_id];
}

const Tensor& Executor::gradient(const std::string& tensor_name) const {
  const int id = resolve(tensor_name);
  CAMRT_CHECK(std::find(grad_target_ids_.begin(), grad_target_ids_.end(), id) != grad_target_ids_.end(),
              graph_.source_name() << ": '" << tensor_name << "' is not a gradient target of this plan");
  return gradient_views_[id];
}

bool Executor::is_readable_after_forward(int value_id) const { return readable_after_[value_id]; }

std::map<std::string, HostTensor> run_model(const Graph& graph, const std::map<std::string, HostTensor>& inputs,
                                            ThreadPool& pool, CudaRuntime* cuda) {
  std::map<std::string, Shape> shapes;
  for (const auto& [name, tensor] : inputs) shapes[name] = tensor.shape;
  PlanOptions options;
  options.cuda = cuda;
  Executor executor(graph, shapes, pool, options);
  for (const auto& [name, tensor] : inputs) executor.set_input(name, tensor);
  executor.forward();
  std::map<std::string, HostTensor> outputs;
  for (int id : graph.output_ids()) outputs[graph.values()[id].name] = executor.fetch(id);
  return outputs;
}

}  // namespace camrt
