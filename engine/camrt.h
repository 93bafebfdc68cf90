// camrt's public C++ API for embedding: load a model, create a Session for a batch size and a set of CAM
// methods (planned once, no allocation per call in the executor), run predict/explain on float buffers or
// image files, and read logits and maps in place. Everything throws camrt::Error with a one-line message, out of
// memory included (a failed call leaves the session usable: the next call works and gives the same results).
//
//   camrt::Session session("models/resnet50/model.json", /*batch=*/1, {/*methods=*/{"gradcam"}});
//   const camrt::Explanation& ex = session.explain_images({"cat.jpg"});
//   const float* map = ex.results[0].maps.f32();   // (targets, batch, H, W) in [0, 1]
#pragma once
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/cam/explainer.h"
#include "engine/error.h"
#include "engine/executor.h"
#include "engine/image/image.h"
#include "engine/tensor.h"
#include "weights/model.h"

namespace camrt {

// The library's version, e.g. "0.1.0".
const char* version();

// Threads: every call locks the session, so one Session may be shared by several threads; calls then run one
// at a time. predict(), explain() and explain_images() return views owned by the session that the next call
// (from any thread) overwrites: threads sharing a session use the *_copy variants, which return their own
// copy. For parallel throughput give each thread its own Session (each plans its own memory; they share
// nothing but the read-only model file). model(), graph() and input_shape() never change after construction.
class Session {
 public:
  // Loads model_json (and its safetensors). batch: images per call. num_threads <= 0: all cores.
  // device CUDA: plans, weights and every kernel on GPU 0 (precision applies to convolutions and GEMMs).
  Session(const std::string& model_json, int64_t batch, ExplainOptions options = {}, int num_threads = 0,
          Device device = Device::CPU, Precision precision = Precision::TF32);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const Model& model() const;
  const Graph& graph() const;
  // (batch, C, H, W) of the input this session was planned for.
  const Shape& input_shape() const { return input_shape_; }

  // Logits (batch, classes) for a preprocessed float NCHW buffer of batch*C*H*W floats. The view stays valid
  // until the next call on this session. In the steady state predict() and explain() allocate nothing, on the
  // host or the device (tests/steady_state_allocations.cpp counts).
  const Tensor& predict(const float* input);
  // Every method of the session's options on a preprocessed buffer; the result is owned by the session and
  // valid until the next call.
  const Explanation& explain(const float* input);
  // Decodes and preprocesses (the model's resize/crop/mean/std) exactly `batch` image files, then explains.
  const Explanation& explain_images(const std::vector<std::string>& paths);
  // The same three, returning a copy the caller owns: for threads sharing this session.
  HostTensor predict_copy(const float* input);
  Explanation explain_copy(const float* input);
  Explanation explain_images_copy(const std::vector<std::string>& paths);
  // The preprocessed input of the last explain or explain_images call (batch, C, H, W); overwritten by the
  // next call like the views above.
  const HostTensor& last_input() const { return input_; }
  // The GPU runtime of a CUDA session (device memory accounting), null on the CPU.
  const CudaRuntime* cuda_runtime() const { return cuda_.get(); }

 private:
  // Runs fn under the lock; std::bad_alloc / std::length_error become camrt::Error naming `action` and the model.
  template <typename Fn>
  auto locked(const char* action, Fn&& fn) -> decltype(fn());
  const Tensor& predict_unlocked(const float* input);
  // Explains input into out (reusing its storage).
  void run_explainer(const float* input, Explanation& out);
  void load_images(const std::vector<std::string>& paths);

  std::string model_json_;  // as given: error messages name it
  std::mutex mutex_;        // serializes every call (see the class comment)
  std::shared_ptr<const Model> model_;
  std::unique_ptr<Graph> graph_;
  std::unique_ptr<Graph> predict_graph_;  // the predictor's plan: activation-fused (see ExplainOptions)
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<CudaRuntime> cuda_;  // declared before the plans that use it, so it outlives them
  std::unique_ptr<Executor> predictor_;
  std::unique_ptr<Explainer> explainer_;
  ExplainOptions options_;
  Shape input_shape_;
  std::string input_name_;
  HostTensor input_;
  HostTensor logits_;   // predict()'s host copy on the GPU
  Tensor logits_view_;  // and its view
  // explain()'s result, and the one the next call fills: swapped in only once complete, so a failed call leaves
  // the previous result in place; after two calls both hold their tensors and a call allocates nothing.
  Explanation explanation_, next_explanation_;
};

}  // namespace camrt
