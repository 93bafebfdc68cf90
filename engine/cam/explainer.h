// Explainer: every CAM method of docs/cam-spec.md on top of the executor. One plan runs the forward pass and
// the backward pass down to the explained layer(s) only (Guided Backprop alone gets a plan down to the input);
// Score-CAM runs batched forwards of masked inputs through a second plan; Ablation-CAM continues the network
// from the explained layer through a tail plan, never recomputing the layers before it. All methods requested
// together share the forward and backward passes; top-k targets share one backward pass (stacked seeds). Targets
// are ranked, seeded and scored on the plan's device, so on the GPU a pass that decides nothing on the host (no
// region or similarity target) is captured once as one CUDA graph and replayed.
// The arithmetic is in kernels/cpu/cam.h and its CUDA twin kernels/cuda/cam.h: the same orchestration runs on
// either device (CamKernels in explainer.cpp dispatches).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/executor.h"

namespace camrt {

// Method names as in the spec (CLI --method, file names).
const std::vector<std::string>& cam_method_names();
bool is_cam_method(const std::string& name);

struct ExplainOptions {
  std::vector<std::string> methods = {"gradcam"};
  // Layers to explain: node or tensor names; empty or {"auto"}: the model's default explanation layer.
  std::vector<std::string> layers;
  // "" or "predicted": argmax class; "C": class index; "softmax:C": softmax probability of C (or
  // "softmax" for the predicted class); "topK": one map per each of the K highest classes;
  // "region:C": segmentation output O (B, C, ...), y = sum_ij m_ij O_cij with region_mask m;
  // "similarity": embedding output e (B, D), y = cos(e, v) with concept_vector v.
  std::string target;
  std::shared_ptr<const HostTensor> region_mask;     // (output spatial dims), float32
  std::shared_ptr<const HostTensor> concept_vector;  // (D,), float32
  bool aug_smooth = false;       // spec post-processing step 5
  bool eigen_smooth = false;     // spec post-processing step 6
  bool layercam_tanh = false;    // LayerCAM paper option for shallow layers
  bool scorecam_paper = false;   // --scorecam=paper weighting
  int64_t smooth_samples = 8;    // Smooth Grad-CAM++ noisy copies
  uint64_t seed = 0;             // Smooth Grad-CAM++ noise generator
  // Images per extra pass: Score-CAM / Ablation-CAM forwards, Smooth Grad-CAM++ noisy copies and aug-smooth
  // variants (chunk / batch copies of the batch per forward + backward); 0: from free memory on the GPU; on the
  // CPU 16 forwards and one copy or variant per pass (faster there: a bigger batch's activations fall out of cache).
  int64_t chunk = 0;
  // Plan on the activation-fused graph (engine/fusion.h; the explained layers stay tensors): same values, fewer
  // kernels. false: plan the model's nodes as they are (for comparisons).
  bool fuse_activations = true;
  // Channels-last storage of the plans' forward-only parts (PlanOptions::channels_last): automatic (half at
  // --precision fp16 on the GPU) unless set; on the CPU it runs the reference twins (for tests).
  ChannelsLast channels_last = ChannelsLast::kAuto;
  // Tests only: the Smooth Grad-CAM++ noise (n, B, C, H, W) to use instead of the generator's.
  std::shared_ptr<const HostTensor> smooth_noise;
};

struct MethodResult {
  std::string method;
  HostTensor maps;  // (T, B, H, W) in [0, 1]; guided-backprop and guided-gradcam: (T, B, C, H, W) raw values
};

struct Explanation {
  HostTensor logits;                           // (B, classes)
  std::vector<std::vector<int64_t>> classes;   // [target][image] class explained
  std::vector<std::string> layers;             // node names of the explained layers
  std::vector<MethodResult> results;           // in the order of ExplainOptions::methods
  // stage -> milliseconds: upload, forward, backward, per method, download; a pass replayed as one CUDA graph is
  // timed whole as "pass".
  // (std::less<>: stages are looked up by name without making a string, so a reused Explanation's timings
  // allocate nothing.)
  std::map<std::string, double, std::less<>> timings_ms;
};

class Explainer {
 public:
  // Plans for batch images of the model's input shape. Throws for unknown methods/layers or a target the
  // model cannot have (e.g. class out of range is checked at run time).
  // cuda: run every pass and CAM kernel on that GPU (only the maps and logits come back to the host).
  Explainer(const Graph& graph, int64_t batch, ExplainOptions options, ThreadPool& pool, CudaRuntime* cuda = nullptr);
  ~Explainer();

  // input: (B, C, H, W) float32, preprocessed. Out of memory is a camrt::Error; after any failed run the
  // next run works as if the failed one had never happened (working buffers are complete or absent).
  Explanation run(const HostTensor& input);
  // The same into `out`, reusing its tensors and vectors where their shapes already fit: an Explanation passed
  // back call after call makes the steady state allocate nothing on the host. After a failed run `out` holds
  // a partial result.
  void run(const HostTensor& input, Explanation& out);

  const ExplainOptions& options() const { return options_; }
  const std::vector<std::string>& layer_names() const { return layer_names_; }
  // Planned bytes of the main plan (activations kept for the backward included).
  const PlanStats& main_plan_stats() const;
  // Why the explain pass (or, where it is not captured whole, the main plan) could not be captured in a CUDA
  // graph, if it could not: it then runs eagerly, correct but slower. Empty otherwise.
  std::string capture_failure() const;
  // The weights on the GPU (null on the CPU), for other plans of the same model to share (Session's predictor).
  const std::shared_ptr<const DeviceConstants>& device_constants() const { return constants_; }

 private:
  void run_unguarded(const HostTensor& input, Explanation& out);
  struct Impl;
  std::unique_ptr<Impl> impl_;
  ExplainOptions options_;
  std::vector<std::string> layer_names_;
  std::shared_ptr<const DeviceConstants> constants_;
};

}  // namespace camrt
