// The embedding API (engine/camrt.h): a thin owner of the model, graph, plans and thread pool. Every public call
// runs under the session's mutex and turns std::bad_alloc / std::length_error into camrt::Error; the engine below
// keeps no half-built state across a failed call (lazily made buffers are either complete or absent).
#include "engine/camrt.h"

#include <cstring>
#include <filesystem>
#include <new>
#include <stdexcept>

namespace camrt {

const char* version() { return CAMRT_VERSION; }

namespace {
[[noreturn]] void fail_out_of_memory(const std::string& model_json, const char* action, const char* detail) {
  CAMRT_FAIL(model_json << ": out of memory while " << action << (detail ? " (" : "") << (detail ? detail : "")
                        << (detail ? ")" : ""));
}
}  // namespace

template <typename Fn>
auto Session::locked(const char* action, Fn&& fn) -> decltype(fn()) {
  std::lock_guard<std::mutex> lock(mutex_);
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    fail_out_of_memory(model_json_, action, nullptr);
  } catch (const std::length_error& e) {  // a container asked for more than it can hold
    fail_out_of_memory(model_json_, action, e.what());
  }
}

// A function-try-block: the members are gone when the handler runs, so it names the model by the parameter.
Session::Session(const std::string& model_json, int64_t batch, ExplainOptions options, int num_threads, Device device,
                 Precision precision) try : model_json_(model_json), options_(std::move(options)) {
  CAMRT_CHECK(batch >= 1, "Session: batch must be at least 1");
  model_ = std::make_shared<const Model>(load_model(model_json));
  graph_ = std::make_unique<Graph>(model_, std::filesystem::path(model_json).filename().string());
  CAMRT_CHECK(graph_->input_ids().size() == 1, model_json << ": a Session needs a model with one input");
  pool_ = std::make_unique<ThreadPool>(num_threads);
  input_name_ = graph_->values()[graph_->input_ids()[0]].name;
  const auto shapes = graph_->input_shapes_for_batch(batch);
  input_shape_ = shapes.at(input_name_);
  PlanOptions plan;
  if (device == Device::CUDA) {
    cuda_ = std::make_unique<CudaRuntime>(0, precision);
    plan.cuda = cuda_.get();
  }
  predict_graph_ = options_.fuse_activations ? graph_->fused({}) : std::make_unique<Graph>(model_, graph_->source_name());
  plan.channels_last = options_.channels_last;
  if (!options_.methods.empty()) {
    explainer_ = std::make_unique<Explainer>(*graph_, batch, options_, *pool_, cuda_.get());
    plan.device_constants = explainer_->device_constants();  // the weights once on the GPU, not once per plan kind
  }
  predictor_ = std::make_unique<Executor>(*predict_graph_, shapes, *pool_, plan);
  input_ = HostTensor(DType::F32, input_shape_);
} catch (const std::bad_alloc&) {
  fail_out_of_memory(model_json, "loading and planning the model", nullptr);
} catch (const std::length_error& e) {
  fail_out_of_memory(model_json, "loading and planning the model", e.what());
}

Session::~Session() = default;

const Model& Session::model() const { return *model_; }
const Graph& Session::graph() const { return *graph_; }

const Tensor& Session::predict_unlocked(const float* input) {
  predictor_->set_input(input_name_, input);
  predictor_->forward();
  const int out = predict_graph_->output_ids()[0];
  const Tensor& device_view = predictor_->value(out);
  if (predictor_->device() == Device::CPU) return device_view;
  if (logits_.shape != device_view.shape || logits_.dtype != device_view.dtype) {
    logits_ = HostTensor(device_view.dtype, device_view.shape);
    logits_view_ = logits_.view();
  }
  predictor_->fetch(out, logits_.bytes.data());
  return logits_view_;
}

const Tensor& Session::predict(const float* input) {
  return locked("predicting", [&]() -> const Tensor& { return predict_unlocked(input); });
}

HostTensor Session::predict_copy(const float* input) {
  return locked("predicting", [&] {
    const Tensor& view = predict_unlocked(input);
    HostTensor out(view.dtype, view.shape);
    if (!out.bytes.empty()) std::memcpy(out.bytes.data(), view.data, out.bytes.size());
    return out;
  });
}

void Session::run_explainer(const float* input, Explanation& out) {
  CAMRT_CHECK(explainer_, "Session: no CAM methods were given in the options");
  if (input != input_.f32()) std::memcpy(input_.bytes.data(), input, input_.bytes.size());
  explainer_->run(input_, out);
}

// explanation_ is replaced only by a complete result: after a failed call it still holds the previous one.
const Explanation& Session::explain(const float* input) {
  return locked("explaining", [&]() -> const Explanation& {
    run_explainer(input, next_explanation_);
    std::swap(explanation_, next_explanation_);
    return explanation_;
  });
}

Explanation Session::explain_copy(const float* input) {
  return locked("explaining", [&] {
    Explanation out;
    run_explainer(input, out);
    return out;
  });
}

void Session::load_images(const std::vector<std::string>& paths) {
  CAMRT_CHECK(static_cast<int64_t>(paths.size()) == input_shape_[0],
              "Session: planned for " << input_shape_[0] << " images per call, got " << paths.size());
  CAMRT_CHECK(input_shape_[1] == 3, "Session: image inputs need a 3-channel model");
  CAMRT_CHECK(input_shape_[2] == input_shape_[3], "Session: image inputs need a square model input");
  const Preprocess& pre = model_->preprocess;
  const int64_t crop = input_shape_[2];
  const int64_t resize = std::max(crop, pre.resize * crop / std::max<int64_t>(pre.crop, 1));
  for (size_t i = 0; i < paths.size(); ++i)
    preprocess_image(input_.f32() + i * 3 * crop * crop, read_image(paths[i]), resize, crop, pre.mean.data(), pre.std.data());
}

const Explanation& Session::explain_images(const std::vector<std::string>& paths) {
  return locked("explaining images", [&]() -> const Explanation& {
    load_images(paths);
    run_explainer(input_.f32(), next_explanation_);
    std::swap(explanation_, next_explanation_);
    return explanation_;
  });
}

Explanation Session::explain_images_copy(const std::vector<std::string>& paths) {
  return locked("explaining images", [&] {
    load_images(paths);
    Explanation out;
    run_explainer(input_.f32(), out);
    return out;
  });
}

}  // namespace camrt
