// The CAM methods' orchestration: which passes run, in which plan, and how their results are combined.
// Formulas live in kernels/cpu/cam.cpp; this file decides only data flow (see explainer.h).
#include "engine/cam/explainer.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <new>
#include <random>
#include <set>
#include <stdexcept>
#include <string_view>

#include "kernels/cpu/cam.h"
#if CAMRT_WITH_CUDA
#include "kernels/cuda/cam.h"
#endif

namespace camrt {

namespace {

using Clock = std::chrono::steady_clock;
using Timings = std::map<std::string, double, std::less<>>;

// timings[stage] += ms without making a string once the stage is there. A stage left NaN by begin_timings from an
// earlier call starts again at 0 (end_timings drops the ones this call did not reach).
void add_time(Timings& timings, std::string_view stage, double ms) {
  auto it = timings.find(stage);
  if (it == timings.end()) it = timings.emplace(std::string(stage), 0.0).first;
  if (std::isnan(it->second)) it->second = 0.0;
  it->second += ms;
}
void begin_timings(Timings& timings) {
  for (auto& stage : timings) stage.second = std::nan("");
}
void end_timings(Timings& timings) {
  for (auto it = timings.begin(); it != timings.end();) it = std::isnan(it->second) ? timings.erase(it) : std::next(it);
}

// Aug-smooth's variants (spec post-processing step 5): horizontal flip x brightness factor.
constexpr int64_t kAugSmoothVariants = 6;
constexpr bool kAugSmoothFlipped[kAugSmoothVariants] = {false, false, false, true, true, true};
constexpr float kAugSmoothFactor[kAugSmoothVariants] = {0.9f, 1.0f, 1.1f, 0.9f, 1.0f, 1.1f};
double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

struct MethodInfo {
  const char* name;
  bool needs_gradient;  // reads G at the explained layer
  bool guided;          // needs the Guided Backprop plan
};

constexpr MethodInfo kMethods[] = {
    {"cam", false, false},           {"gradcam", true, false},     {"gradcam-neg", true, false},
    {"hirescam", true, false},       {"gradcam-ew", true, false},  {"gradcampp", true, false},
    {"smooth-gradcampp", true, false}, {"xgradcam", true, false},  {"layercam", true, false},
    {"eigencam", false, false},      {"eigengradcam", true, false}, {"normgrad", true, false},
    {"scorecam", false, false},      {"ablationcam", false, false}, {"guided-backprop", false, true},
    {"guided-gradcam", true, true},
};

const MethodInfo& method_info(const std::string& name) {
  for (const auto& m : kMethods)
    if (name == m.name) return m;
  std::string all;
  for (const auto& m : kMethods) all += std::string(all.empty() ? "" : ", ") + m.name;
  CAMRT_FAIL("unknown CAM method '" << name << "' (methods: " << all << ")");
}

bool variant_of(const std::string& method, GradCamVariant* v) {
  static const std::map<std::string, GradCamVariant> table = {
      {"gradcam", GradCamVariant::GradCam},         {"gradcam-neg", GradCamVariant::GradCamNeg},
      {"hirescam", GradCamVariant::HiResCam},       {"gradcam-ew", GradCamVariant::GradCamElementwise},
      {"gradcampp", GradCamVariant::GradCamPlusPlus}, {"xgradcam", GradCamVariant::XGradCam},
      {"layercam", GradCamVariant::LayerCam},       {"guided-gradcam", GradCamVariant::GradCam},
  };
  auto it = table.find(method);
  if (it == table.end()) return false;
  *v = it->second;
  return true;
}


// How the explained score y is read from the output: a logit, or a softmax probability.
struct TargetRule {
  enum Kind { Predicted, Class, TopK, Region, Similarity } kind = Predicted;
  int64_t value = 0;  // class for Class and Region, k for TopK
  bool softmax = false;
};

TargetRule parse_target(const std::string& text) {
  TargetRule rule;
  std::string rest = text;
  if (rest.rfind("softmax", 0) == 0) {
    rule.softmax = true;
    rest = rest.substr(7);
    if (!rest.empty()) {
      CAMRT_CHECK(rest[0] == ':', "--target '" << text << "': expected softmax:CLASS");
      rest = rest.substr(1);
    }
  }
  auto parse_int = [&](const std::string& s) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(s, &used);
    } catch (const std::logic_error&) {  // invalid_argument, out_of_range; std::bad_alloc goes on up
      used = 0;
    }
    CAMRT_CHECK(!s.empty() && used == s.size() && v >= 0,
                "--target '" << text << "': expected a class index, softmax:C, topK or predicted");
    return static_cast<int64_t>(v);
  };
  if (rest.empty() || rest == "predicted") return rule;
  if (rest == "similarity") {
    CAMRT_CHECK(!rule.softmax, "--target '" << text << "': softmax does not apply to similarity");
    rule.kind = TargetRule::Similarity;
    return rule;
  }
  if (rest.rfind("region:", 0) == 0) {
    CAMRT_CHECK(!rule.softmax, "--target '" << text << "': softmax does not apply to a region");
    rule.kind = TargetRule::Region;
    rule.value = parse_int(rest.substr(7));
    return rule;
  }
  if (rest.rfind("top", 0) == 0) {
    rule.kind = TargetRule::TopK;
    rule.value = parse_int(rest.substr(3));
    CAMRT_CHECK(rule.value >= 1, "--target '" << text << "': k must be at least 1");
    return rule;
  }
  rule.kind = TargetRule::Class;
  rule.value = parse_int(rest);
  return rule;
}

}  // namespace

const std::vector<std::string>& cam_method_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& m : kMethods) n.emplace_back(m.name);
    return n;
  }();
  return names;
}

bool is_cam_method(const std::string& name) {
  for (const auto& m : kMethods)
    if (name == m.name) return true;
  return false;
}

namespace {

// The CAM kernels on the plan's device: every call below goes to kernels/cpu (threads) or kernels/cuda (the
// runtime's stream) with the same arguments, so the orchestration in Explainer::Impl is written once. Pointers
// are on that device; scratch comes from the Impl's buffers, never from an allocation per call.
struct CamKernels {
  Device device = Device::CPU;
  ThreadPool* pool = nullptr;
  CudaRuntime* cuda = nullptr;
  bool gpu() const { return device == Device::CUDA; }
#if CAMRT_WITH_CUDA
  cudaStream_t stream() const { return cuda->stream(); }
#define CAMRT_CAM_DISPATCH(cpu_call, gpu_call) \
  do {                                         \
    if (gpu()) {                               \
      cuda::gpu_call;                          \
    } else {                                   \
      cpu_call;                                \
    }                                          \
  } while (0)
#else
#define CAMRT_CAM_DISPATCH(cpu_call, gpu_call) cpu_call
#endif

  void grad_cam(float* cam, const float* A, const float* G, int64_t B, int64_t K, int64_t h, int64_t w, GradCamVariant v,
                [[maybe_unused]] void* scratch, [[maybe_unused]] size_t scratch_bytes) const {
    if (!gpu() && grad_cam_has_channel_weights(v)) {  // the two-call form, weights in the scratch: no allocation
      float* weights = static_cast<float*>(scratch);
      grad_cam_channel_weights(weights, A, G, B, K, h, w, v, *pool);
      weighted_channel_sum(cam, weights, A, B, K, h, w, *pool);
      return;
    }
    CAMRT_CAM_DISPATCH(grad_cam_forward(cam, A, G, B, K, h, w, v, *pool),
                       grad_cam_forward(cam, A, G, B, K, h, w, v, scratch, scratch_bytes, stream()));
  }
  void grad_cam_terms(float* out, const float* A, const float* G, int64_t B, int64_t K, int64_t h, int64_t w,
                      GradCamVariant v, [[maybe_unused]] void* scratch,
                      [[maybe_unused]] size_t scratch_bytes) const {
    CAMRT_CAM_DISPATCH(grad_cam_weighted_activations(out, A, G, B, K, h, w, v, *pool),
                       grad_cam_weighted_activations(out, A, G, B, K, h, w, v, scratch, scratch_bytes, stream()));
  }
  void channel_sum(float* cam, const float* weights, const float* A, int64_t B, int64_t K, int64_t h, int64_t w) const {
    CAMRT_CAM_DISPATCH(weighted_channel_sum(cam, weights, A, B, K, h, w, *pool),
                       weighted_channel_sum(cam, weights, A, B, K, h, w, stream()));
  }
  void scale(float* out, const float* A, const float* weights, int64_t B, int64_t K, int64_t h, int64_t w) const {
    CAMRT_CAM_DISPATCH(scale_channels(out, A, weights, B, K, h, w, *pool),
                       scale_channels(out, A, weights, B, K, h, w, stream()));
  }
  void product(float* out, const float* a, const float* b, int64_t n) const {
    CAMRT_CAM_DISPATCH(elementwise_product(out, a, b, n, *pool), elementwise_product(out, a, b, n, stream()));
  }
  void smooth_accumulate(float* D1, float* D2, float* D3, const float* G, int64_t n) const {
    CAMRT_CAM_DISPATCH(smooth_gradcampp_accumulate(D1, D2, D3, G, n, *pool),
                       smooth_gradcampp_accumulate(D1, D2, D3, G, n, stream()));
  }
  void smooth_weights(float* weights, const float* A, const float* D1, const float* D2, const float* D3, int64_t B,
                      int64_t K, int64_t h, int64_t w) const {
    CAMRT_CAM_DISPATCH(smooth_gradcampp_channel_weights(weights, A, D1, D2, D3, B, K, h, w, *pool),
                       smooth_gradcampp_channel_weights(weights, A, D1, D2, D3, B, K, h, w, stream()));
  }
  void normgrad(float* cam, const float* A, const float* G, int64_t B, int64_t K, int64_t h, int64_t w) const {
    CAMRT_CAM_DISPATCH(normgrad_forward(cam, A, G, B, K, h, w, *pool), normgrad_forward(cam, A, G, B, K, h, w, stream()));
  }
  void eigen(float* cam, const float* A, int64_t B, int64_t K, int64_t h, int64_t w, void* scratch,
             [[maybe_unused]] size_t scratch_bytes) const {
    CAMRT_CAM_DISPATCH(eigen_cam_forward(cam, A, B, K, h, w, *pool, static_cast<float*>(scratch)),
                       eigen_cam_forward(cam, A, B, K, h, w, scratch, scratch_bytes, stream()));
  }
  size_t eigen_scratch_bytes([[maybe_unused]] int64_t B, int64_t K, int64_t h, int64_t w) const {
#if CAMRT_WITH_CUDA
    if (gpu()) return cuda::eigen_cam_scratch_bytes(B, K, h, w);
#endif
    return eigen_cam_scratch_floats(K, h, w, pool->num_threads()) * sizeof(float);
  }
  size_t grad_cam_scratch(int64_t B, int64_t K, GradCamVariant v) const {
#if CAMRT_WITH_CUDA
    if (gpu()) return cuda::grad_cam_scratch_bytes(B, K, v);
#endif
    return grad_cam_has_channel_weights(v) ? static_cast<size_t>(B * K) * sizeof(float) : 0;  // the weights
  }
  void cam(float* out, const float* fc, const int64_t* classes, const float* A, int64_t B, int64_t K, int64_t h,
           int64_t w, int64_t num_classes) const {
    CAMRT_CAM_DISPATCH(class_activation_map(out, fc, classes, A, B, K, h, w, num_classes, *pool),
                       class_activation_map(out, fc, classes, A, B, K, h, w, num_classes, stream()));
  }
  void masks(float* out, const float* A, int64_t B, int64_t K, int64_t h, int64_t w, int64_t H, int64_t W) const {
    CAMRT_CAM_DISPATCH(scorecam_masks(out, A, B, K, h, w, H, W, *pool), scorecam_masks(out, A, B, K, h, w, H, W, stream()));
  }
  void mask_input(float* out, const float* x, const float* m, int64_t n, int64_t C, int64_t H, int64_t W) const {
    CAMRT_CAM_DISPATCH(apply_mask(out, x, m, n, C, H, W, *pool), apply_mask(out, x, m, n, C, H, W, stream()));
  }
  void constant_channels(uint8_t* is_constant, const float* A, int64_t B, int64_t K, int64_t h, int64_t w) const {
    CAMRT_CAM_DISPATCH(scorecam_constant_channels(is_constant, A, B, K, h, w, *pool),
                       scorecam_constant_channels(is_constant, A, B, K, h, w, stream()));
  }
  // values: (B) on the device; the CPU path reads it directly, the GPU kernel reads it on the device.
  void ablation_min_values(float* values, const float* A, int64_t B, int64_t K, int64_t h, int64_t w) const {
    CAMRT_CAM_DISPATCH(ablation_values(values, A, B, K, h, w, *pool), ablation_values(values, A, B, K, h, w, stream()));
  }
  void ablated_copies(float* out, const float* A_image, const float* value, int64_t k0, int64_t n, int64_t K, int64_t h,
                      int64_t w) const {
    CAMRT_CAM_DISPATCH(ablation_batch(out, A_image, *value, k0, n, K, h, w, *pool),
                       ablation_batch(out, A_image, value, k0, n, K, h, w, stream()));
  }
  void postprocess(float* out, float* cam, int64_t B, int64_t h, int64_t w, int64_t H, int64_t W, bool relu) const {
    CAMRT_CAM_DISPATCH(postprocess_layer(out, cam, B, h, w, H, W, relu, *pool),
                       postprocess_layer(out, cam, B, h, w, H, W, relu, stream()));
  }
  void aggregate(float* out, const float* per_layer, int64_t L, int64_t B, int64_t H, int64_t W) const {
    CAMRT_CAM_DISPATCH(aggregate_layers(out, per_layer, L, B, H, W, *pool), aggregate_layers(out, per_layer, L, B, H, W, stream()));
  }
  void tanh_scale(float* maps, int64_t count, int64_t hw) const {
    CAMRT_CAM_DISPATCH(layercam_tanh_scale(maps, count, hw, *pool), layercam_tanh_scale(maps, count, hw, stream()));
  }
  void rank(int64_t* classes, const float* logits, int64_t B, int64_t C, int64_t T, int64_t fixed_class) const {
    CAMRT_CAM_DISPATCH(rank_targets(classes, logits, B, C, T, fixed_class),
                       rank_targets(classes, logits, B, C, T, fixed_class, stream()));
  }
  void seeds(float* seeds, const int64_t* classes, const float* logits, int64_t B, int64_t C, int64_t first,
             int64_t count, int64_t S, bool softmax) const {
    CAMRT_CAM_DISPATCH(target_seeds(seeds, classes, logits, B, C, first, count, S, softmax),
                       target_seeds(seeds, classes, logits, B, C, first, count, S, softmax, stream()));
  }
  void noise_sigma(float* sigma, const float* x, int64_t B, int64_t plane) const {
    CAMRT_CAM_DISPATCH(smooth_noise_sigma(sigma, x, B, plane), smooth_noise_sigma(sigma, x, B, plane, stream()));
  }
  void noisy_copies(float* out, const float* x, const float* z, const float* sigma, int64_t first, int64_t count,
                    int64_t S, int64_t B, int64_t N, int64_t plane, bool scaled) const {
    CAMRT_CAM_DISPATCH(smooth_noisy_copies(out, x, z, sigma, first, count, S, B, N, plane, scaled, *pool),
                       smooth_noisy_copies(out, x, z, sigma, first, count, S, B, N, plane, scaled, stream()));
  }
  void scores(float* out, const float* logits, const int64_t* classes, int64_t class_stride, int64_t rows, int64_t C,
              bool softmax) const {
    CAMRT_CAM_DISPATCH(target_scores(out, logits, classes, class_stride, rows, C, softmax),
                       target_scores(out, logits, classes, class_stride, rows, C, softmax, stream()));
  }
  void score_softmax(float* w, const float* scores, int64_t B, int64_t K) const {
    CAMRT_CAM_DISPATCH(softmax_weights(w, scores, B, K), softmax_weights(w, scores, B, K, stream()));
  }
  void score_paper(float* w, const float* probs, const uint8_t* is_constant, int64_t B, int64_t K) const {
    CAMRT_CAM_DISPATCH(scorecam_paper_weights(w, probs, is_constant, B, K),
                       scorecam_paper_weights(w, probs, is_constant, B, K, stream()));
  }
  void ablation(float* w, const float* y, const float* y_ablated, int64_t B, int64_t K) const {
    CAMRT_CAM_DISPATCH(ablation_weights(w, y, y_ablated, B, K), ablation_weights(w, y, y_ablated, B, K, stream()));
  }
  void guided(float* out, const float* g, const float* cam, int64_t B, int64_t C, int64_t H, int64_t W) const {
    CAMRT_CAM_DISPATCH(guided_gradcam(out, g, cam, B, C, H, W, *pool), guided_gradcam(out, g, cam, B, C, H, W, stream()));
  }
#undef CAMRT_CAM_DISPATCH

  // Copies between buffers of this device, and between the host and this device.
  void copy(void* dst, const void* src, size_t bytes) const {
    if (gpu()) copy_on_device(*cuda, dst, src, bytes);
    else if (bytes && dst != src) std::memcpy(dst, src, bytes);
  }
  void upload(void* dst, const void* host, size_t bytes) const {
    if (gpu()) copy_to_device(*cuda, dst, host, bytes);
    else if (bytes) std::memcpy(dst, host, bytes);
  }
  void download(void* host, const void* src, size_t bytes) const {
    if (gpu()) copy_to_host(*cuda, host, src, bytes);
    else if (bytes) std::memcpy(host, src, bytes);
  }
  void zero(void* dst, size_t bytes) const {
    if (gpu()) fill_zero(*cuda, dst, bytes);
    else if (bytes) std::memset(dst, 0, bytes);
  }
  // Timings are host clocks: on the GPU they wait for the queued work first.
  void wait() const {
    if (gpu()) cuda->synchronize();
  }
};

}  // namespace

struct Explainer::Impl {
  std::shared_ptr<const Graph> planned_graph;  // the graph every plan runs: activation-fused unless disabled
  const Graph& graph;
  ThreadPool& pool;
  CamKernels k;
  ExplainOptions options;
  TargetRule rule;
  int64_t batch = 0, channels = 0, height = 0, width = 0;
  // False for a model whose input has a fixed batch (no -1 dim): its plans run at that batch only, so noisy
  // copies and aug-smooth variants go one per pass.
  bool dynamic_batch = true;
  int64_t classes = 0;        // output channels (dim 1)
  int64_t out_per_image = 0;  // output elements per image
  int64_t out_spatial = 1;    // output positions per channel (segmentation outputs)
  std::string input_name;
  std::vector<int> layer_ids;          // value ids of the explained tensors
  std::vector<std::string> layer_tensors;
  std::vector<Shape> layer_shapes;     // (B, K, h, w) per layer
  bool any_gradient = false, any_guided = false, any_score = false, any_ablation = false;
  std::unique_ptr<Executor> main, guided, score;
  // Smooth Grad-CAM++: noisy copies batched smooth_per_pass at a time (S x B images) through one forward and one
  // backward of this plan, so the main plan's activations stay those of the clean input.
  std::unique_ptr<Executor> smooth;
  int64_t smooth_per_pass = 1;
  // Its noise on the device, made at plan time: standard normals (samples, noise_batch, C, H, W) drawn as
  // std::normal_distribution draws them from the seed, scaled per image in the pass (or the injected noise as is).
  const float* smooth_z = nullptr;
  bool smooth_z_scaled = true;
  // Targets (top-k) whose gradients one backward pass computes: the main and guided plans' seeds per backward.
  int64_t seeds_per_pass = 1;
  std::vector<std::unique_ptr<Executor>> tails;  // per layer, for Ablation-CAM

  // Aug-smooth: the variants explained variants_per_pass at a time as one batch of this plan set (P x B images,
  // variant p in rows [p*B, (p+1)*B)); null where one variant per pass (then this Impl explains each in turn).
  std::unique_ptr<Impl> variants;
  int64_t variants_per_pass = 1;
  // Images per noise draw of Smooth Grad-CAM++: image i takes the noise of image i mod noise_batch, drawn as a
  // plan of noise_batch images draws it (the variant plans reproduce the unbatched variants' noise).
  int64_t noise_batch = 0;

  Impl(std::shared_ptr<const Graph> g, ThreadPool& p) : planned_graph(std::move(g)), graph(*planned_graph), pool(p) {}
  // Plans every pass the methods need for `batch` images (the Explainer's constructor, and the aug-smooth
  // variant plans). explained: the layers' tensor names in `graph`.
  void plan(int64_t batch, const ExplainOptions& requested, const std::vector<std::string>& explained,
            CudaRuntime* cuda, std::shared_ptr<const DeviceConstants> constants);

  // Working buffers on the plan's device, by name: allocated on first use, reused by every later call of the
  // same shapes (the steady state allocates nothing).
  std::map<std::string, Arena, std::less<>> buffers;
  template <typename T = float>
  T* buffer(std::string_view name, int64_t count) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(count, 1)) * sizeof(T);
    auto it = buffers.find(name);
    if (it == buffers.end()) it = buffers.emplace(std::string(name), Arena()).first;
    Arena& arena = it->second;
    // A failed allocation leaves the old (smaller or empty) arena in place: the next call tries again.
    if (arena.bytes() < bytes) {
      try {
        arena = Arena(bytes, k.device, k.cuda, it->first.c_str());
      } catch (const Error& e) {
        throw Error(graph.source_name() + ": " + e.what(), e.file(), e.line(), e.expression().c_str());
      }
    }
    return reinterpret_cast<T*>(arena.data());
  }
  // Host-side buffers (logits of chunks, scores, weights computed on the host), reused the same way.
  std::map<std::string, std::vector<float>, std::less<>> host_buffers;
  std::vector<float>& host_buffer(std::string_view name, int64_t count) {
    auto it = host_buffers.find(name);
    if (it == host_buffers.end()) it = host_buffers.emplace(std::string(name), std::vector<float>()).first;
    auto& v = it->second;
    if (v.size() < static_cast<size_t>(count)) v.resize(static_cast<size_t>(count));
    return v;
  }
  // The seeds of targets [first, first + count) stacked for one backward pass of a plan taking `per_pass` seeds
  // (unused slots zero: their gradients are zero and never read).
  std::vector<float> stacked_seeds(const float* logits, const std::vector<std::vector<int64_t>>& targets, size_t first,
                                   size_t count, int64_t per_pass) const {
    const size_t one = static_cast<size_t>(batch * out_per_image);
    std::vector<float> seeds(static_cast<size_t>(per_pass) * one, 0.f);
    for (size_t i = 0; i < count; ++i) {
      const std::vector<float> seed = seed_for(logits, targets[first + i]);
      std::copy(seed.begin(), seed.end(), seeds.begin() + i * one);
    }
    return seeds;
  }

  // d(score)/d(output) of a region or similarity target, made on the host (logit and softmax targets: the
  // target_seeds kernel, on the device).
  std::vector<float> seed_for(const float* logits, const std::vector<int64_t>& cls) const {
    CAMRT_CHECK(rule.kind == TargetRule::Region || rule.kind == TargetRule::Similarity, "seed_for: a device-seeded target");
    std::vector<float> seed(static_cast<size_t>(batch * out_per_image), 0.f);
    for (int64_t b = 0; b < batch; ++b) {
      const float* z = logits + b * out_per_image;
      float* s = seed.data() + b * out_per_image;
      if (rule.kind == TargetRule::Region) {  // y = sum_ij m_ij O_cij
        const float* m = options.region_mask->f32();
        for (int64_t i = 0; i < out_spatial; ++i) s[cls[b] * out_spatial + i] = m[i];
        continue;
      }
      if (rule.kind == TargetRule::Similarity) {  // y = cos(e, v): dy/de = v/(|e||v|) - cos e/|e|^2
        const float* v = options.concept_vector->f32();
        double ee = 0, vv = 0, ev = 0;
        for (int64_t j = 0; j < out_per_image; ++j) ee += double(z[j]) * z[j], vv += double(v[j]) * v[j], ev += double(z[j]) * v[j];
        const double ne = std::sqrt(ee), nv = std::sqrt(vv), cosine = ev / (ne * nv);
        for (int64_t j = 0; j < out_per_image; ++j) s[j] = static_cast<float>(v[j] / (ne * nv) - cosine * z[j] / ee);
      }
    }
    return seed;
  }

  // The explained score of one output row for a region or similarity target, on the host (logit and softmax
  // targets: the target_scores kernel, on the device).
  float score_of(const float* z, int64_t c) const {
    CAMRT_CHECK(rule.kind == TargetRule::Region || rule.kind == TargetRule::Similarity, "score_of: a device-scored target");
    if (rule.kind == TargetRule::Region) {
      const float* m = options.region_mask->f32();
      double y = 0;
      for (int64_t i = 0; i < out_spatial; ++i) y += double(m[i]) * z[c * out_spatial + i];
      return static_cast<float>(y);
    }
    const float* v = options.concept_vector->f32();  // similarity: cos(e, v)
    double ee = 0, vv = 0, ev = 0;
    for (int64_t j = 0; j < out_per_image; ++j) ee += double(z[j]) * z[j], vv += double(v[j]) * v[j], ev += double(z[j]) * v[j];
    return static_cast<float>(ev / std::sqrt(ee * vv));
  }

  // Per layer and target: raw maps (B, h, w) of one method before post-processing, on the plan's device.
  // A, G: the layer's activation and gradient (B, K, h, w); x: the input on the device; smooth: D1..D3 means.
  // cls_device: the targets (B) on the device; cls_host: the same on the host, where the pass made host copies
  // (only methods that decide on the host read it).
  void raw_map(float* cam, const std::string& method, size_t layer, const float* A, const float* G,
               const int64_t* cls_device, const std::vector<int64_t>* cls_host, const float* x_device,
               float* const* smooth) {
    const Shape& shape = layer_shapes[layer];
    const int64_t B = batch, K = shape[1], h = shape[2], w = shape[3];
    float* weights = buffer("weights", B * K);
    auto project = [&](const float* weighted) {  // --eigen-smooth: Eigen-CAM projection of weighted activations
      const size_t bytes = k.eigen_scratch_bytes(B, K, h, w);
      k.eigen(cam, weighted, B, K, h, w, buffer<uint8_t>("eigen scratch", static_cast<int64_t>(bytes)), bytes);
    };
    auto from_channel_weights = [&]() {
      if (options.eigen_smooth) {
        float* scaled = buffer("weighted", B * K * h * w);
        k.scale(scaled, A, weights, B, K, h, w);
        project(scaled);
      } else {
        k.channel_sum(cam, weights, A, B, K, h, w);
      }
    };
    GradCamVariant variant;
    if (variant_of(method, &variant)) {
      const size_t bytes = k.grad_cam_scratch(B, K, variant);
      uint8_t* scratch = buffer<uint8_t>("grad-cam scratch", static_cast<int64_t>(bytes));
      if (options.eigen_smooth) {
        float* weighted = buffer("weighted", B * K * h * w);
        k.grad_cam_terms(weighted, A, G, B, K, h, w, variant, scratch, bytes);
        project(weighted);
      } else {
        k.grad_cam(cam, A, G, B, K, h, w, variant, scratch, bytes);
      }
    } else if (method == "smooth-gradcampp") {
      k.smooth_weights(weights, A, smooth[0], smooth[1], smooth[2], B, K, h, w);
      from_channel_weights();
    } else if (method == "normgrad") {
      k.normgrad(cam, A, G, B, K, h, w);
    } else if (method == "eigencam") {
      project(A);
    } else if (method == "eigengradcam") {
      float* product = buffer("weighted", B * K * h * w);
      k.product(product, G, A, B * K * h * w);
      project(product);
    } else if (method == "cam") {
      const HostTensor& fc = fc_weight_for(layer, K);
      if (options.eigen_smooth) {  // the targets' fc rows as channel weights (a pass with host copies)
        std::vector<float>& host = host_buffer("weights", B * K);
        for (int64_t b = 0; b < B; ++b)
          for (int64_t c = 0; c < K; ++c) host[b * K + c] = fc.f32()[(*cls_host)[b] * K + c];
        k.upload(weights, host.data(), static_cast<size_t>(B * K) * sizeof(float));
        from_channel_weights();
      } else {
        // The fc weights go up once, on the first (never captured) pass; the classes are the pass's own.
        float* fc_device = buffer("fc " + std::to_string(layer), fc.numel());
        if (fc_uploaded.insert(layer).second) {
          try {
            k.upload(fc_device, fc.f32(), fc.bytes.size());
          } catch (...) {
            fc_uploaded.erase(layer);
            throw;
          }
        }
        k.cam(cam, fc_device, cls_device, A, B, K, h, w, fc.shape[0]);
      }
    } else if (method == "scorecam") {
      scorecam(weights, layer, A, cls_device, cls_host ? cls_host->data() : nullptr, x_device);
      from_channel_weights();
    } else if (method == "ablationcam") {
      ablationcam(weights, layer, A, cls_device, cls_host ? cls_host->data() : nullptr);
      from_channel_weights();
    } else {
      CAMRT_FAIL("method '" << method << "' has no map of its own");
    }
    if (method == "layercam" && options.layercam_tanh) k.tanh_scale(cam, B, h * w);
  }

  std::set<size_t> fc_uploaded;  // layers whose fc weights are in their device buffer

  // CAM applies only to layer -> global average pool -> (flatten) -> one fully connected layer.
  std::map<size_t, HostTensor> fc_cache;
  const HostTensor& fc_weight_for(size_t layer, int64_t K) {
    auto it = fc_cache.find(layer);
    if (it != fc_cache.end()) return it->second;
    const auto& values = graph.values();
    const auto& nodes = graph.nodes();
    const std::string layer_name = values[layer_ids[layer]].name;
    auto only_consumer = [&](int id) -> const GraphNode* {
      if (values[id].consumers.size() != 1) return nullptr;
      return &nodes[values[id].consumers[0]];
    };
    const std::string why = "CAM needs the layer to be followed by global average pooling and one fully connected layer";
    const GraphNode* pool_node = only_consumer(layer_ids[layer]);
    CAMRT_CHECK(pool_node && (pool_node->node->op == "GlobalAveragePool" || pool_node->node->op == "ReduceMean"),
                graph.source_name() << ": layer '" << layer_name << "': " << why);
    const GraphNode* next = only_consumer(pool_node->outputs[0]);
    while (next && (next->node->op == "Flatten" || next->node->op == "Reshape" || next->node->op == "Squeeze" ||
                    next->node->op == "Dropout" || next->node->op == "Identity"))
      next = only_consumer(next->outputs[0]);
    CAMRT_CHECK(next && (next->node->op == "Gemm" || next->node->op == "MatMul") && next->inputs.size() >= 2 &&
                    values[next->inputs[1]].constant,
                graph.source_name() << ": layer '" << layer_name << "': " << why);
    const HostTensor& w = *values[next->inputs[1]].constant;
    const bool trans_b = next->node->op == "Gemm" && next->node->attrs.value("transB", 0) != 0;
    CAMRT_CHECK(w.shape.size() == 2 && w.dtype == DType::F32, graph.source_name() << ": layer '" << layer_name << "': " << why);
    HostTensor out(DType::F32, {trans_b ? w.shape[0] : w.shape[1], K});
    const int64_t C = out.shape[0];
    CAMRT_CHECK((trans_b ? w.shape[1] : w.shape[0]) == K, graph.source_name() << ": layer '" << layer_name << "': the fully connected layer has "
                                                                                << (trans_b ? w.shape[1] : w.shape[0]) << " inputs, the layer " << K << " channels");
    for (int64_t c = 0; c < C; ++c)
      for (int64_t k = 0; k < K; ++k) out.f32()[c * K + k] = trans_b ? w.f32()[c * K + k] : w.f32()[k * C + c];
    return fc_cache[layer] = std::move(out);
  }

  // scores[r] = the explained score of output row r (rows of `outputs`, on the device) for class
  // cls[r * stride] (cls on the device; cls_host the same targets on the host). Logit and softmax targets (and
  // --scorecam paper, always the softmax) are scored on the device; region and similarity targets, whose mask and
  // concept vector live on the host, there.
  void score_rows(float* scores, const float* outputs, int64_t rows, const int64_t* cls, const int64_t* cls_host,
                  int64_t stride, bool softmax) {
    if (device_targets) {
      k.scores(scores, outputs, cls, stride, rows, classes, softmax || rule.softmax);
      return;
    }
    std::vector<float>& z = host_buffer("score rows", rows * out_per_image);
    k.download(z.data(), outputs, static_cast<size_t>(rows * out_per_image) * sizeof(float));
    std::vector<float>& y = host_buffer("scores", rows);
    for (int64_t r = 0; r < rows; ++r) y[r] = score_of(z.data() + r * out_per_image, cls_host[r * stride]);
    k.upload(scores, y.data(), static_cast<size_t>(rows) * sizeof(float));
  }

  // Score-CAM channel weights: masks and masked inputs made on the device, pushed through the score plan in
  // chunks, each chunk's outputs scored on the device; nothing comes back to the host.
  void scorecam(float* weights, size_t layer, const float* A, const int64_t* cls, const int64_t* cls_host,
                const float* x_device) {
    const Shape& shape = layer_shapes[layer];
    const int64_t K = shape[1], h = shape[2], w = shape[3];
    const int64_t plane = channels * height * width;
    float* masks = buffer("score masks", K * height * width);
    float* scores = buffer("scores", batch * K);
    const int64_t chunk = score->descs()[score->input_ids()[0]].shape[0];
    const Tensor& in = score->input(input_name);
    const float* outputs = score->value(graph.output_ids()[0]).f32();
    for (int64_t b = 0; b < batch; ++b) {
      k.masks(masks, A + b * K * h * w, 1, K, h, w, height, width);
      for (int64_t k0 = 0; k0 < K; k0 += chunk) {
        const int64_t n = std::min(chunk, K - k0);
        k.mask_input(in.f32(), x_device + b * plane, masks + k0 * height * width, n, channels, height, width);
        if (n < chunk) k.zero(in.f32() + n * plane, static_cast<size_t>((chunk - n) * plane) * sizeof(float));
        score->forward();
        score_rows(scores + b * K + k0, outputs, n, cls + b, cls_host ? cls_host + b : nullptr, 0, options.scorecam_paper);
      }
    }
    if (options.scorecam_paper) {
      uint8_t* constant = buffer<uint8_t>("constant channels", batch * K);
      k.constant_channels(constant, A, batch, K, h, w);
      k.score_paper(weights, scores, constant, batch, K);
    } else {
      k.score_softmax(weights, scores, batch, K);
    }
  }

  // Ablation-CAM channel weights: ablated copies of A made on the device and pushed through the tail plan (from
  // the layer on), never through the layers before it; scored on the device like Score-CAM's.
  void ablationcam(float* weights, size_t layer, const float* A, const int64_t* cls, const int64_t* cls_host) {
    const Shape& shape = layer_shapes[layer];
    const int64_t K = shape[1], h = shape[2], w = shape[3];
    Executor& tail = *tails[layer];
    const int64_t chunk = tail.descs()[tail.input_ids()[0]].shape[0];
    // The clean scores of every target (cls is the target's slice of classes_buffer()), kept for
    // check_ablation_scores.
    float* y = buffer("ablation y", target_count * batch) + (cls - classes_buffer());
    float* y_ablated = buffer("ablation scores", batch * K);
    float* values = buffer("ablation values", batch);
    k.ablation_min_values(values, A, batch, K, h, w);
    const int out_id = graph.output_ids()[0];
    score_rows(y, main->value(out_id).f32(), batch, cls, cls_host, 1, false);  // the clean input's scores
    const Tensor& in = tail.input(layer_tensors[layer]);
    const float* outputs = tail.value(out_id).f32();
    const int64_t per_copy = K * h * w;
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t k0 = 0; k0 < K; k0 += chunk) {
        const int64_t n = std::min(chunk, K - k0);
        k.ablated_copies(in.f32(), A + b * per_copy, values + b, k0, n, K, h, w);
        if (n < chunk) k.zero(in.f32() + n * per_copy, static_cast<size_t>((chunk - n) * per_copy) * sizeof(float));
        tail.forward();
        score_rows(y_ablated + b * K + k0, outputs, n, cls + b, cls_host ? cls_host + b : nullptr, 0, false);
      }
    }
    k.ablation(weights, y, y_ablated, batch, K);
  }

  // Host copies of the logits and targets of the last pass, for what decides on the host (region and similarity
  // seeds and scores, CAM's eigen-smoothed weights).
  std::vector<float> host_logits;
  std::vector<std::vector<int64_t>> host_targets;

  // Plan-time facts of the pass: how many targets, whether they are ranked on the device from the logits, and
  // whether anything in the pass needs the host (then it is never captured).
  int64_t target_count = 1;
  bool device_targets = true;
  bool host_decisions = false;
  // The whole pass (forward, targets, backward, every method's map) in one CUDA graph: captured on the second
  // run, replayed after. The plans inside then run eagerly (their own graphs off).
  bool capture_pass = false;
  bool capturing = false;
  std::unique_ptr<StreamGraph> pass_graph;
  int64_t pass_runs = 0;
  bool pass_failed = false;
  std::string capture_failure;  // why, if it did

  // Adds the time since t0 to a stage, waiting for the device first; inside a capture nothing runs yet, so
  // stages are not timed there (a replayed pass is timed as "pass").
  void lap(Timings& timings, const char* stage, Clock::time_point& t0) {
    if (capturing) return;
    k.wait();
    add_time(timings, stage, ms_since(t0));
    t0 = Clock::now();
  }

  int64_t* classes_buffer() { return buffer<int64_t>("classes", target_count * batch); }
  // The maps of method m (index in options.methods) for target t; named at plan time (final_names[m][t]).
  std::vector<std::vector<std::string>> final_names;
  // Per layer (sized at plan time): its activation in the main plan, and, rewritten for every target, its
  // gradient and Smooth Grad-CAM++'s moments.
  std::vector<const float*> layer_activations, layer_gradients;
  std::vector<std::array<float*, 3>> smooth_moment_pointers;
  static bool with_channels(const std::string& method) { return method == "guided-backprop" || method == "guided-gradcam"; }
  float* final_buffer(size_t m, size_t t) {
    return buffer(final_names[m][t], batch * (with_channels(options.methods[m]) ? channels : 1) * height * width);
  }

  // The main plan's forward pass and the targets in classes_buffer(): ranked from the logits on the device, or
  // the rule's class (region, similarity); given_targets: already there.
  void forward_and_targets(bool given_targets) {
    main->forward();
    if (given_targets) return;
    int64_t* targets = classes_buffer();
    if (device_targets) {
      k.rank(targets, main->value(graph.output_ids()[0]).f32(), batch, classes, target_count,
             rule.kind == TargetRule::Class ? rule.value : -1);
    } else {
      std::vector<int64_t> fixed(static_cast<size_t>(target_count * batch), rule.value);
      k.upload(targets, fixed.data(), fixed.size() * sizeof(int64_t));
    }
  }

  // One explanation of the input already in the main plan's input buffer: forward, targets, backward(s), and every
  // method's map in its final buffer on the device (collect() copies them back). given_targets: the targets are
  // already in classes_buffer() (aug-smooth variants explain the clean input's targets); else they are ranked
  // from the logits, or set from the rule. Everything is queued on the plan's device; with host_decisions false
  // nothing here waits for it, so run_pass can capture it.
  void enqueue_pass(bool given_targets, Timings& timings) {
    const size_t T = static_cast<size_t>(target_count), L = layer_ids.size();
    const int out_id = graph.output_ids()[0];
    auto t0 = Clock::now();
    forward_and_targets(given_targets);
    lap(timings, "forward", t0);
    int64_t* targets = classes_buffer();
    if (host_decisions) {
      host_logits.resize(static_cast<size_t>(batch * out_per_image));
      main->fetch(out_id, host_logits.data());
      std::vector<int64_t> flat(T * static_cast<size_t>(batch));
      k.download(flat.data(), targets, flat.size() * sizeof(int64_t));
      host_targets.assign(T, {});
      for (size_t t = 0; t < T; ++t) host_targets[t].assign(flat.begin() + t * batch, flat.begin() + (t + 1) * batch);
    }
    // The input and the activations stay in the main plan's arena (kept) until the next call.
    const float* x_device = main->input(input_name).f32();
    std::vector<const float*>& A = layer_activations;  // sized L at plan time
    for (size_t l = 0; l < L; ++l) A[l] = main->value(layer_ids[l]).f32();

    // Guided Backprop: one forward of its own plan on the same input (its ReLUs' backward differs, not its forward).
    if (any_guided) {
      const Tensor& guided_input = guided->input(input_name);
      k.copy(guided_input.data, x_device, guided_input.nbytes());
      guided->forward();
      lap(timings, "guided-backprop", t0);
    }
    // Targets in groups of seeds_per_pass: one backward per group computes the gradients of all its targets.
    const size_t group = static_cast<size_t>(seeds_per_pass);
    for (size_t g0 = 0; g0 < T; g0 += group) {
      const size_t in_group = std::min(group, T - g0);
      // d(score)/d(output) for the group's targets, written into a plan's seed buffer: on the device from the
      // logits, or (region, similarity) from the host.
      auto backward = [&](Executor& plan, bool guided_relu) {
        if (device_targets) {
          k.seeds(plan.seed_buffer().f32(), targets, plan.value(out_id).f32(), batch, classes,
                  static_cast<int64_t>(g0), static_cast<int64_t>(in_group), plan.seeds_per_backward(), rule.softmax);
          plan.backward_from_seed(guided_relu);
        } else {
          plan.backward(stacked_seeds(host_logits.data(), host_targets, g0, in_group, plan.seeds_per_backward()).data(), guided_relu);
        }
      };
      if (any_gradient) {
        backward(*main, false);
        lap(timings, "backward", t0);
      }
      if (any_guided) {
        backward(*guided, true);
        lap(timings, "guided-backprop", t0);
      }
      for (size_t t = g0; t < g0 + in_group; ++t) {
        const int64_t seed = static_cast<int64_t>(t - g0);  // the target's slice of the group's gradients
        std::vector<const float*>& G = layer_gradients;  // sized L at plan time
        if (any_gradient)
          for (size_t l = 0; l < L; ++l) G[l] = main->gradient(layer_tensors[l]).f32() + seed * checked_numel(layer_shapes[l]);
        // Smooth Grad-CAM++: noisy copies through forward + backward, means of G, G^2, G^3 per layer.
        std::vector<std::array<float*, 3>>& moments = smooth_moment_pointers;  // sized L at plan time
        if (smooth) {
          smooth_moments(x_device, targets + t * batch, host_decisions ? &host_targets[t] : nullptr, moments);
          lap(timings, "smooth-gradcampp", t0);
        }
        const int64_t image_numel = batch * channels * height * width;
        const float* guided_grad = any_guided ? guided->gradient(input_name).f32() + seed * image_numel : nullptr;
        for (size_t m = 0; m < options.methods.size(); ++m) {
          const std::string& method = options.methods[m];
          float* out = final_buffer(m, t);
          if (method == "guided-backprop") {
            k.copy(out, guided_grad, static_cast<size_t>(image_numel) * sizeof(float));
            lap(timings, "guided-backprop", t0);
            continue;
          }
          static const std::string kGradcam = "gradcam";
          const std::string& map_method = method == "guided-gradcam" ? kGradcam : method;
          const int64_t plane = batch * height * width;
          float* per_layer = buffer("per layer", static_cast<int64_t>(L) * plane);
          for (size_t l = 0; l < L; ++l) {
            const Shape& shape = layer_shapes[l];
            float* cam = buffer("cam", batch * shape[2] * shape[3]);
            raw_map(cam, map_method, l, A[l], G[l], targets + t * batch, host_decisions ? &host_targets[t] : nullptr,
                    x_device, moments[l].data());
            k.postprocess(per_layer + l * plane, cam, batch, shape[2], shape[3], height, width, map_method != "normgrad");
          }
          if (method == "guided-gradcam") {
            float* final_map = buffer("final", plane);
            k.aggregate(final_map, per_layer, static_cast<int64_t>(L), batch, height, width);
            k.guided(out, guided_grad, final_map, batch, channels, height, width);
          } else {
            k.aggregate(out, per_layer, static_cast<int64_t>(L), batch, height, width);
          }
          lap(timings, method.c_str(), t0);
        }
      }
    }
  }

  // Runs enqueue_pass: eagerly, or (capture_pass) eagerly on the first call (cuDNN/cuBLAS set-up and every
  // working buffer allocated), captured into one CUDA graph on the second, replayed from then on.
  void run_pass(bool given_targets, Timings& timings) {
    if (!capture_pass || pass_failed) return enqueue_pass(given_targets, timings);
    const auto t0 = Clock::now();
    if (!pass_graph && pass_runs == 0) {  // counted once it succeeded: a failed first call is first again
      enqueue_pass(given_targets, timings);
      ++pass_runs;
      return;
    }
    if (!pass_graph) {
      pass_graph = std::make_unique<StreamGraph>(*k.cuda);
      pass_graph->begin_capture();
      capturing = true;
      bool captured = false;
      try {
        enqueue_pass(given_targets, timings);
        capturing = false;
        captured = pass_graph->end_capture();
        if (!captured) capture_failure = pass_graph->failure();
      } catch (const std::exception& e) {  // a call the capture refused, or a real error: the eager pass tells which
        capturing = false;
        pass_graph->end_capture();
        capture_failure = e.what();
      } catch (...) {
        capturing = false;
        pass_graph->end_capture();
        capture_failure = "a non-standard exception";
      }
      if (!captured) {  // eager from now on (a real error throws again there)
        pass_graph.reset();
        pass_failed = true;
        return enqueue_pass(given_targets, timings);
      }
    }
    pass_graph->launch();
    k.wait();
    add_time(timings, "pass", ms_since(t0));
  }

  // The last pass's logits and targets (T, B), copied back into result's tensors and vectors (reused where they
  // fit already).
  std::vector<int64_t> host_classes;  // (T * B) staging
  // Aug-smooth's host scratch, reused by every call: the pass's input (P*B images), its classes, each method's maps.
  HostTensor aug_input;
  std::vector<HostTensor> aug_pass;
  std::vector<int64_t> aug_classes;
  Shape aug_shape;
  void collect_targets(Explanation& result) {
    const size_t T = static_cast<size_t>(target_count);
    const int out_id = graph.output_ids()[0];
    const Tensor& logits = main->value(out_id);
    if (result.logits.shape != logits.shape || result.logits.dtype != logits.dtype)
      result.logits = HostTensor(logits.dtype, logits.shape);
    main->fetch(out_id, result.logits.bytes.data());
    host_classes.resize(T * static_cast<size_t>(batch));
    k.download(host_classes.data(), classes_buffer(), host_classes.size() * sizeof(int64_t));
    result.classes.resize(T);
    for (size_t t = 0; t < T; ++t)
      result.classes[t].assign(host_classes.begin() + t * batch, host_classes.begin() + (t + 1) * batch);
  }

  // Ablation-CAM divides by the clean score y. The CPU twin of the weights throws where y == 0; the device kernel
  // writes NaN weights there instead (it cannot throw), and this check after the pass throws the same error.
  void check_ablation_scores() {
    if (!any_ablation || !k.gpu()) return;
    const size_t n = static_cast<size_t>(target_count * batch);
    std::vector<float>& y = host_buffer("ablation y", static_cast<int64_t>(n));  // reused: no allocation per call
    k.download(y.data(), buffer("ablation y", target_count * batch), n * sizeof(float));
    k.wait();
    for (size_t i = 0; i < n; ++i)
      CAMRT_CHECK(y[i] != 0.f, "Ablation-CAM: the target score of image " << int64_t(i) % batch % noise_batch
                                                                          << " is exactly 0, so (y - y_k) / y is undefined");
  }

  // The last pass's maps of method m, copied back into maps (T, B, H, W) or (T, B, C, H, W), reused if it fits.
  void collect_maps(size_t m, HostTensor& maps) {
    const int64_t T = target_count;
    const bool channel_maps = with_channels(options.methods[m]);
    const int64_t dims[] = {T, batch, channels, height, width};
    const size_t rank = channel_maps ? 5 : 4;
    bool fits = maps.dtype == DType::F32 && maps.shape.size() == rank;
    for (size_t d = 0, src = 0; fits && d < rank; ++d, ++src) {
      if (!channel_maps && src == 2) ++src;  // no channel dim
      fits = maps.shape[d] == dims[src];
    }
    if (!fits)
      maps = HostTensor(DType::F32, channel_maps ? Shape{T, batch, channels, height, width} : Shape{T, batch, height, width});
    const size_t bytes = maps.bytes.size() / static_cast<size_t>(T);
    for (int64_t t = 0; t < T; ++t) k.download(maps.bytes.data() + t * bytes, final_buffer(m, static_cast<size_t>(t)), bytes);
  }

  // Smooth Grad-CAM++'s moments for one target: cls_device its classes (B) on the device, cls the same on the host
  // (region and similarity targets only). The noisy copies are made on the device from the input there.
  void smooth_moments(const float* x_device, const int64_t* cls_device, const std::vector<int64_t>* cls,
                      std::vector<std::array<float*, 3>>& d) {
    const size_t L = layer_ids.size();
    for (size_t l = 0; l < L; ++l) {
      const int64_t n = checked_numel(layer_shapes[l]);
      for (int i = 0; i < 3; ++i) {
        d[l][i] = buffer("smooth D" + std::to_string(i + 1) + " " + std::to_string(l), n);
        k.zero(d[l][i], static_cast<size_t>(n) * sizeof(float));
      }
    }
    const int64_t n = options.smooth_samples, plane = channels * height * width;
    float* sigma = buffer("smooth sigma", batch);
    k.noise_sigma(sigma, x_device, batch, plane);
    // Passes of S noisy copies: copy s of image b is row s * B + b of the S x B batch, with sample s0 + s's noise
    // whatever S is, so every S gives the same copies.
    const int64_t S = smooth_per_pass;
    float* noisy = smooth->input(input_name).f32();
    const int out_id = graph.output_ids()[0];
    const int64_t per_copy_out = batch * out_per_image;
    for (int64_t s0 = 0; s0 < n; s0 += S) {
      const int64_t count = std::min(S, n - s0);  // copies in this pass; the rest of the batch is zeros, unused
      k.noisy_copies(noisy, x_device, smooth_z, sigma, s0, count, S, batch, noise_batch, plane, smooth_z_scaled);
      smooth->forward();
      // One seed per copy, from that copy's own outputs (the softmax target's derivative depends on them); the
      // zero-filled copies of a partial pass get zero seeds.
      if (device_targets) {
        float* seeds = smooth->seed_buffer().f32();
        const float* outputs = smooth->value(out_id).f32();
        for (int64_t s = 0; s < S; ++s)
          k.seeds(seeds + s * per_copy_out, cls_device, outputs + s * per_copy_out, batch, classes, 0, s < count ? 1 : 0,
                  1, rule.softmax);
        smooth->backward_from_seed();
      } else {
        std::vector<float>& logits = host_buffer("smooth logits", S * per_copy_out);
        std::vector<float>& seeds = host_buffer("smooth seeds", S * per_copy_out);
        smooth->fetch(out_id, logits.data());
        std::fill(seeds.begin(), seeds.begin() + S * per_copy_out, 0.f);
        for (int64_t s = 0; s < count; ++s) {
          const std::vector<float> seed = seed_for(logits.data() + s * per_copy_out, *cls);
          std::copy(seed.begin(), seed.end(), seeds.begin() + s * per_copy_out);
        }
        smooth->backward(seeds.data());
      }
      for (size_t l = 0; l < L; ++l) {
        const Tensor& g = smooth->gradient(layer_tensors[l]);
        const int64_t per_copy = g.numel() / S;
        for (int64_t s = 0; s < count; ++s)
          k.smooth_accumulate(d[l][0], d[l][1], d[l][2], g.f32() + s * per_copy, per_copy);
      }
    }
    // Sums to means: scale every channel by 1/n (the channel-scaling kernel with constant weights, made at plan
    // time).
    for (size_t l = 0; l < L; ++l) {
      const Shape& shape = layer_shapes[l];
      const float* inverse = buffer("inverse n", shape[0] * shape[1]);
      for (float* t : d[l]) k.scale(t, t, inverse, shape[0], shape[1], shape[2], shape[3]);
    }
  }
};

Explainer::Explainer(const Graph& model_graph, int64_t batch, ExplainOptions options, ThreadPool& pool, CudaRuntime* cuda)
    : options_(std::move(options)) {
  // The explained layers, as tensors of the model's graph: they must survive fusion.
  std::vector<std::string> layers = options_.layers;
  if (layers.empty() || (layers.size() == 1 && layers[0] == "auto")) {
    const std::string layer = model_graph.default_explain_layer();
    CAMRT_CHECK(!layer.empty(), model_graph.source_name() << ": no default explanation layer (no spatial layer before global pooling); pass --layer");
    layers = {layer};
  }
  std::vector<std::string> layer_tensors;
  for (const auto& name : layers) {
    int id = model_graph.find_value(name);
    if (id < 0) {
      const int node = model_graph.find_node(name);
      CAMRT_CHECK(node >= 0, model_graph.source_name() << ": --layer '" << name << "' is neither a node nor a tensor name");
      id = model_graph.nodes()[node].outputs[0];
    }
    layer_tensors.push_back(model_graph.values()[id].name);
    const int producer = model_graph.values()[id].producer;
    layer_names_.push_back(producer >= 0 ? model_graph.nodes()[producer].node->name : model_graph.values()[id].name);
  }
  impl_ = std::make_unique<Impl>(options_.fuse_activations ? std::shared_ptr<const Graph>(model_graph.fused(layer_tensors))
                                                           : std::make_shared<Graph>(model_graph.shared_model(), model_graph.source_name()),
                                 pool);
  // Every plan runs on the same device and shares one copy of the weights there.
  if (cuda)
    constants_ = std::make_shared<const DeviceConstants>(impl_->graph, *cuda, resolve_channels_last(options_.channels_last, cuda));
  const std::shared_ptr<const DeviceConstants>& constants = constants_;
  impl_->plan(batch, options_, layer_tensors, cuda, constants);
  if (options_.aug_smooth) {
    // Variants per pass: on the GPU as many of the six as a quarter of the free memory holds at the main plan's
    // bytes per image (evened out over the passes); on the CPU one unless --chunk says otherwise (a bigger batch's
    // activations fall out of cache there, as for Smooth Grad-CAM++'s copies).
    int64_t per_pass = options_.chunk > 0 ? options_.chunk / batch : 1;
    if (cuda && options_.chunk == 0) {
      size_t free_bytes = 0, total_bytes = 0;
      cuda->memory_info(&free_bytes, &total_bytes);
      const PlanStats& s = impl_->main->stats();
      const double plan_bytes = std::max(1.0, double(s.arena_bytes + s.workspace_bytes));
      per_pass = int64_t(double(free_bytes) / 4.0 / plan_bytes);
    }
    per_pass = impl_->dynamic_batch ? std::clamp<int64_t>(per_pass, 1, kAugSmoothVariants) : 1;
    const int64_t passes = (kAugSmoothVariants + per_pass - 1) / per_pass;
    per_pass = (kAugSmoothVariants + passes - 1) / passes;
    impl_->variants_per_pass = per_pass;
    if (per_pass > 1) {
      // The variant plans do all the explaining; the main plan only picks the targets from the clean input.
      impl_->guided.reset();
      impl_->score.reset();
      impl_->smooth.reset();
      impl_->tails.clear();
      ExplainOptions variant_options = options_;
      variant_options.aug_smooth = false;
      impl_->variants = std::make_unique<Impl>(impl_->planned_graph, pool);
      impl_->variants->noise_batch = batch;
      impl_->variants->plan(per_pass * batch, variant_options, layer_tensors, cuda, constants);
    }
  }
}

void Explainer::Impl::plan(int64_t batch, const ExplainOptions& requested, const std::vector<std::string>& explained,
                           CudaRuntime* cuda, std::shared_ptr<const DeviceConstants> constants) {
  Impl& m = *this;
  m.options = requested;
  m.noise_batch = m.noise_batch > 0 ? m.noise_batch : batch;
  m.k.device = cuda ? Device::CUDA : Device::CPU;
  m.k.pool = &pool;
  m.k.cuda = cuda;
  auto plan_options = [&]() {
    PlanOptions o;
    o.cuda = cuda;
    o.device_constants = constants;
    o.cuda_graphs = !m.capture_pass;  // inside the pass's own graph every plan runs eagerly
    o.channels_last = options.channels_last;
    return o;
  };
  m.rule = parse_target(options.target);
  CAMRT_CHECK(!options.methods.empty(), "no CAM method given");
  CAMRT_CHECK(graph.input_ids().size() == 1, graph.source_name() << ": explain needs a model with one input");
  CAMRT_CHECK(options.smooth_samples >= 1 && options.chunk >= 0, "smooth samples must be positive and chunk not negative");
  for (const auto& method : options.methods) {
    const MethodInfo& info = method_info(method);
    m.any_gradient |= info.needs_gradient;
    m.any_guided |= info.guided;
    m.any_score |= method == "scorecam";
    m.any_ablation |= method == "ablationcam";
  }
  m.input_name = graph.values()[graph.input_ids()[0]].name;
  const auto shapes = graph.input_shapes_for_batch(batch);
  const Shape& in_shape = shapes.at(m.input_name);
  CAMRT_CHECK(in_shape.size() == 4, graph.source_name() << ": explain needs an image input (B, C, H, W), got " << shape_str(in_shape));
  m.dynamic_batch = graph.input_shapes_for_batch(batch + 1).at(m.input_name)[0] == batch + 1;
  CAMRT_CHECK(in_shape[0] == batch, graph.source_name() << ": input '" << m.input_name << "' has the fixed shape "
                                                        << shape_str(in_shape) << ", not a batch of " << batch);
  m.batch = batch;
  m.channels = in_shape[1];
  m.height = in_shape[2];
  m.width = in_shape[3];

  const bool map_methods = std::any_of(options.methods.begin(), options.methods.end(),
                                       [](const std::string& s) { return s != "guided-backprop"; });
  for (const auto& tensor : explained) {
    const int id = graph.find_value(tensor);
    CAMRT_CHECK(id >= 0, graph.source_name() << ": layer tensor '" << tensor << "' vanished from the planned graph");
    m.layer_ids.push_back(id);
    m.layer_tensors.push_back(tensor);
  }

  // Top-k: the gradients of all k targets from one backward pass over k stacked seeds (engine/executor.h), at
  // most kMaxSeedsPerPass at a time: the gradient buffers grow with it.
  if (m.rule.kind == TargetRule::TopK) {
    constexpr int64_t kMaxSeedsPerPass = 16;
    const Shape out = graph.infer(shapes)[graph.output_ids()[0]].shape;
    const int64_t classes = out.size() >= 2 ? out[1] : 1;
    m.target_count = std::max<int64_t>(1, std::min(m.rule.value, classes));
    m.seeds_per_pass = std::clamp<int64_t>(m.target_count, 1, kMaxSeedsPerPass);
  }
  // Logit and softmax targets are ranked, seeded and scored on the device, Smooth Grad-CAM++'s noise made there;
  // what still decides on the host (region and similarity seeds and scores, CAM's eigen-smoothed weights) keeps
  // the pass out of a CUDA graph. Otherwise, on the GPU, the whole pass is one graph, Score-CAM's and
  // Ablation-CAM's chunked forwards and the noisy copies included.
  auto requested_method = [&](const char* name) {
    return std::find(options.methods.begin(), options.methods.end(), name) != options.methods.end();
  };
  m.device_targets = m.rule.kind == TargetRule::Predicted || m.rule.kind == TargetRule::Class || m.rule.kind == TargetRule::TopK;
  m.host_decisions = !m.device_targets || (requested_method("cam") && options.eigen_smooth);
  m.capture_pass = cuda != nullptr && !m.host_decisions;
  // The main and guided plans run one backward per group of seeds_per_pass targets. With one group the
  // activations their backward reads are reused as soon as it has read them; with more (or where a plan fell
  // back to one seed per pass) they stay for every group's pass.
  auto backward_plan = [&](PlanOptions o) {
    o.seeds_per_backward = m.seeds_per_pass;
    o.repeat_backward = m.target_count > m.seeds_per_pass;
    auto plan = std::make_unique<Executor>(graph, shapes, pool, o);
    if (!o.repeat_backward && !o.grad_targets.empty() && m.target_count > plan->seeds_per_backward()) {
      o.repeat_backward = true;
      plan = std::make_unique<Executor>(graph, shapes, pool, o);
    }
    return plan;
  };
  PlanOptions main_options = plan_options();
  main_options.keep = m.layer_tensors;
  if (m.any_gradient) main_options.grad_targets = m.layer_tensors;
  m.main = backward_plan(main_options);
  for (int id : m.layer_ids) {
    const Shape& s = m.main->descs()[id].shape;
    m.layer_shapes.push_back(s);
    CAMRT_CHECK(!map_methods || s.size() == 4, graph.source_name() << ": layer '" << graph.values()[id].name
                                                                   << "' has shape " << shape_str(s) << "; CAM methods need a (B, K, h, w) activation");
  }
  const Shape& out_shape = m.main->descs()[graph.output_ids()[0]].shape;
  const bool region = m.rule.kind == TargetRule::Region, similarity = m.rule.kind == TargetRule::Similarity;
  CAMRT_CHECK(out_shape.size() >= 2 && out_shape[0] == batch && (region || out_shape.size() == 2),
              graph.source_name() << ": explain needs a (B, classes) output" << (region ? " or a (B, C, ...) segmentation output" : "")
                                  << ", got " << shape_str(out_shape));
  m.classes = out_shape[1];
  m.out_per_image = checked_numel(out_shape) / batch;
  m.out_spatial = m.out_per_image / m.classes;
  if (m.rule.kind == TargetRule::Class)
    CAMRT_CHECK(m.rule.value < m.classes, "--target class " << m.rule.value << " is out of range: the model has " << m.classes << " classes");
  if (region)
    CAMRT_CHECK(m.rule.value < m.classes, "--target region class " << m.rule.value << " is out of range: the output has " << m.classes << " channels");
  if (requested_method("cam")) {
    for (size_t l = 0; l < m.layer_ids.size(); ++l) {
      const HostTensor& fc = m.fc_weight_for(l, m.layer_shapes[l][1]);
      CAMRT_CHECK(fc.shape[0] >= m.classes, graph.source_name() << ": CAM: the fully connected layer has " << fc.shape[0]
                                                                << " outputs, the model " << m.classes << " classes");
    }
  }
  if (region) {
    CAMRT_CHECK(options.region_mask && options.region_mask->dtype == DType::F32 && options.region_mask->numel() == m.out_spatial,
                "--target region needs a float32 mask with " << m.out_spatial << " values (the output's spatial size "
                                                             << shape_str(Shape(out_shape.begin() + 2, out_shape.end())) << ")");
  }
  if (similarity) {
    CAMRT_CHECK(options.concept_vector && options.concept_vector->dtype == DType::F32 && options.concept_vector->numel() == m.out_per_image,
                "--target similarity needs a float32 concept vector with " << m.out_per_image << " values (the embedding size)");
  }
  CAMRT_CHECK(!options.scorecam_paper || (!region && !similarity), "--scorecam paper needs a classification output");
  m.layer_activations.assign(m.layer_ids.size(), nullptr);
  m.layer_gradients.assign(m.layer_ids.size(), nullptr);
  m.smooth_moment_pointers.assign(m.layer_ids.size(), std::array<float*, 3>{nullptr, nullptr, nullptr});
  m.final_names.assign(options.methods.size(), {});
  for (size_t i = 0; i < options.methods.size(); ++i)
    for (int64_t t = 0; t < m.target_count; ++t) m.final_names[i].push_back("final " + options.methods[i] + " " + std::to_string(t));
  PlanOptions guided_options = plan_options();
  guided_options.grad_targets = {m.input_name};
  if (m.any_guided) m.guided = backward_plan(guided_options);
  // A plan falls back to one seed per pass where the model's tensors do not all carry the batch in dim 0. The
  // groups then are smaller than the plans were made for: plan both again for them, so each keeps its activations
  // for the repeated backward passes.
  int64_t planned_seeds = m.seeds_per_pass;
  if (m.any_gradient) planned_seeds = std::min(planned_seeds, m.main->seeds_per_backward());
  if (m.any_guided) planned_seeds = std::min(planned_seeds, m.guided->seeds_per_backward());
  if (planned_seeds < m.seeds_per_pass) {
    m.seeds_per_pass = planned_seeds;
    m.main = backward_plan(main_options);
    if (m.any_guided) m.guided = backward_plan(guided_options);
  }
  // Score-CAM / Ablation-CAM push K images (or activations) per image through extra forwards. On the GPU the
  // batch of those forwards is what a quarter of the free memory holds, priced at the main plan's bytes per image
  // (forward and backward: an overestimate for a forward), capped at 256 and evened out so no chunk runs mostly
  // padding. On the CPU a large batch buys nothing: 16.
  auto auto_chunk = [&]() -> int64_t {
    if (!cuda) return 16;
    int64_t K = 1;
    for (const Shape& s : m.layer_shapes) K = std::max<int64_t>(K, s.size() == 4 ? s[1] : 1);
    size_t free_bytes = 0, total_bytes = 0;
    cuda->memory_info(&free_bytes, &total_bytes);
    const PlanStats& s = m.main->stats();
    const double per_image = std::max(1.0, double(s.arena_bytes + s.workspace_bytes) / double(batch));
    const int64_t fits = std::clamp<int64_t>(int64_t(double(free_bytes) / 4.0 / per_image), 1, 256);
    const int64_t chunks = (K + fits - 1) / fits;
    return (K + chunks - 1) / chunks;
  };
  const int64_t chunk = options.chunk > 0 ? options.chunk : auto_chunk();
  if (m.any_score) m.score = std::make_unique<Executor>(graph, graph.input_shapes_for_batch(chunk), pool, plan_options());
  if (std::find(options.methods.begin(), options.methods.end(), "smooth-gradcampp") != options.methods.end()) {
    // As many noisy copies per pass as the extra-forward chunk allows (each copy is `batch` images): on the GPU,
    // where one launch-bound pass costs about what eight do. On the CPU one copy at a time unless --chunk says
    // otherwise: there the batch-8 plan's activations fall out of cache (ResNet-50, one image, 8 copies, 2 threads,
    // `camrt explain --method smooth-gradcampp --chunk 8` vs the default: 533-552 ms against 413-461 ms, measured).
    const int64_t copies = options.chunk > 0 || cuda ? chunk / batch : 1;
    m.smooth_per_pass = m.dynamic_batch ? std::clamp<int64_t>(copies, 1, options.smooth_samples) : 1;
    PlanOptions smooth_options = plan_options();
    smooth_options.grad_targets = m.layer_tensors;
    m.smooth = std::make_unique<Executor>(graph, graph.input_shapes_for_batch(m.smooth_per_pass * batch), pool, smooth_options);
    // The noise, once: drawn from one generator seeded options.seed in (sample, image, pixel) order, with a fresh
    // std::normal_distribution per (sample, image) as a per-call draw would use, at stddev 1 (the pass scales it:
    // y * sigma + 0, the distribution's own arithmetic). A variant plan's images take image b % noise_batch's.
    const int64_t samples = options.smooth_samples, N = m.noise_batch, plane = m.channels * m.height * m.width;
    std::vector<float> z(static_cast<size_t>(samples * N * plane));
    if (options.smooth_noise) {
      CAMRT_CHECK(options.smooth_noise->dtype == DType::F32 && options.smooth_noise->shape == (Shape{samples, N, m.channels, m.height, m.width}),
                  "smooth noise must be float32 " << shape_str({samples, N, m.channels, m.height, m.width}));
      std::memcpy(z.data(), options.smooth_noise->f32(), z.size() * sizeof(float));
      m.smooth_z_scaled = false;
    } else {
      std::mt19937_64 rng(options.seed);
      for (int64_t r = 0; r < samples * N; ++r) {
        std::normal_distribution<float> normal(0.f, 1.f);
        for (int64_t i = 0; i < plane; ++i) z[r * plane + i] = normal(rng);
      }
    }
    float* z_device = m.buffer("smooth noise", static_cast<int64_t>(z.size()));
    m.k.upload(z_device, z.data(), z.size() * sizeof(float));
    m.smooth_z = z_device;
    for (size_t l = 0; l < m.layer_shapes.size(); ++l) {
      const int64_t BK = m.layer_shapes[l][0] * m.layer_shapes[l][1];
      std::vector<float> inverse(static_cast<size_t>(BK), 1.f / static_cast<float>(samples));
      m.k.upload(m.buffer("inverse n", BK), inverse.data(), inverse.size() * sizeof(float));
    }
  }
  if (m.any_ablation) {
    for (const auto& tensor : m.layer_tensors) {
      PlanOptions tail_options = plan_options();
      tail_options.start_from = tensor;
      m.tails.push_back(std::make_unique<Executor>(graph, graph.input_shapes_for_batch(chunk), pool, tail_options));
    }
  }
}

Explainer::~Explainer() = default;

const PlanStats& Explainer::main_plan_stats() const { return impl_->main->stats(); }

std::string Explainer::capture_failure() const {
  return impl_->capture_pass ? impl_->capture_failure : impl_->main->capture_failure();
}

Explanation Explainer::run(const HostTensor& input) {
  Explanation out;
  run(input, out);
  return out;
}

void Explainer::run(const HostTensor& input, Explanation& out) {
  try {
    run_unguarded(input, out);
  } catch (const std::bad_alloc&) {
    CAMRT_FAIL(impl_->graph.source_name() << ": out of memory while explaining");
  } catch (const std::length_error& e) {
    CAMRT_FAIL(impl_->graph.source_name() << ": out of memory while explaining (" << e.what() << ")");
  }
}

void Explainer::run_unguarded(const HostTensor& input, Explanation& result) {
  Impl& m = *impl_;
  const bool input_fits = input.dtype == DType::F32 && input.shape.size() == 4 && input.shape[0] == m.batch &&
                          input.shape[1] == m.channels && input.shape[2] == m.height && input.shape[3] == m.width;
  CAMRT_CHECK(input_fits, "explain input must be float32 " << shape_str({m.batch, m.channels, m.height, m.width})
                                                           << ", got " << dtype_name(input.dtype) << " " << shape_str(input.shape));
  if (result.layers != layer_names_) result.layers = layer_names_;
  const size_t M = options_.methods.size();
  if (result.results.size() != M) result.results.resize(M);
  for (size_t i = 0; i < M; ++i)
    if (result.results[i].method != options_.methods[i]) result.results[i].method = options_.methods[i];
  begin_timings(result.timings_ms);
  // Host <-> device copies are timed apart ("upload", "download"), so a benchmark can compare the device work
  // with frameworks that time tensors already on the device.
  auto t0 = Clock::now();
  m.main->set_input(m.input_name, input);
  m.k.wait();
  add_time(result.timings_ms, "upload", ms_since(t0));

  if (!options_.aug_smooth) {
    m.run_pass(/*given_targets=*/false, result.timings_ms);
    m.check_ablation_scores();
    t0 = Clock::now();
    m.collect_targets(result);
    for (size_t i = 0; i < M; ++i) m.collect_maps(i, result.results[i].maps);
    add_time(result.timings_ms, "download", ms_since(t0));
    end_timings(result.timings_ms);
    return;
  }
  // Targets come from the clean input; aug-smooth variants explain the same classes.
  t0 = Clock::now();
  m.forward_and_targets(/*given_targets=*/false);
  m.k.wait();
  add_time(result.timings_ms, "forward", ms_since(t0));
  m.collect_targets(result);
  // Aug-smooth (spec step 5): horizontal flip x {0.9, 1.0, 1.1}; maps flipped back, averaged, not renormalized.
  // P variants per pass: one batch of the variant plans (variant p of a pass in rows [p*B, (p+1)*B)), or with P = 1
  // one variant at a time through the main plans. The maps are summed into result's tensors.
  Impl& runner = m.variants ? *m.variants : m;
  const int64_t P = m.variants ? m.variants_per_pass : 1, B = m.batch, W = m.width;
  const int64_t image = input.numel() / B;
  auto flip_rows = [W](float* data, int64_t count) {  // reverses every row of W values
    for (int64_t r = 0; r < count / W; ++r) std::reverse(data + r * W, data + (r + 1) * W);
  };
  HostTensor& x = m.aug_input;
  const bool x_fits = x.shape.size() == 4 && x.shape[0] == P * B && x.shape[1] == m.channels && x.shape[2] == m.height &&
                      x.shape[3] == W;
  if (!x_fits) x = HostTensor(DType::F32, {P * B, m.channels, m.height, W});
  const size_t T = result.classes.size();
  std::vector<int64_t>& flat = m.aug_classes;  // (T, P*B): each target's classes once per variant in the pass
  flat.resize(T * static_cast<size_t>(P * B));
  for (size_t t = 0; t < T; ++t)
    for (int64_t p = 0; p < P; ++p)
      std::copy(result.classes[t].begin(), result.classes[t].end(), flat.begin() + (t * P + p) * B);
  for (int64_t v0 = 0; v0 < kAugSmoothVariants; v0 += P) {  // P divides the variant count (see the constructor)
    for (int64_t p = 0; p < P; ++p) {
      float* rows = x.f32() + p * B * image;
      for (int64_t i = 0; i < B * image; ++i) rows[i] = input.f32()[i] * kAugSmoothFactor[v0 + p];
      if (kAugSmoothFlipped[v0 + p]) flip_rows(rows, B * image);
    }
    t0 = Clock::now();
    runner.main->set_input(runner.input_name, x);
    runner.k.upload(runner.classes_buffer(), flat.data(), flat.size() * sizeof(int64_t));
    runner.k.wait();
    add_time(result.timings_ms, "upload", ms_since(t0));
    runner.run_pass(/*given_targets=*/true, result.timings_ms);
    runner.check_ablation_scores();
    for (size_t i = 0; i < M; ++i) {
      t0 = Clock::now();
      if (m.aug_pass.size() != M) m.aug_pass.resize(M);
      HostTensor& pass = m.aug_pass[i];  // (T, P*B, ...)
      runner.collect_maps(i, pass);
      add_time(result.timings_ms, "download", ms_since(t0));
      Shape& shape = m.aug_shape;
      shape.assign(pass.shape.begin(), pass.shape.end());
      shape[1] = B;
      HostTensor& acc = result.results[i].maps;
      if (acc.shape != shape || acc.dtype != DType::F32) acc = HostTensor(DType::F32, shape);
      if (v0 == 0) std::fill(acc.bytes.begin(), acc.bytes.end(), uint8_t(0));
      const int64_t per_target = acc.numel() / shape[0];  // one target of one variant: B images
      for (int64_t t = 0; t < shape[0]; ++t) {
        for (int64_t p = 0; p < P; ++p) {
          float* variant_map = pass.f32() + (t * P + p) * per_target;
          if (kAugSmoothFlipped[v0 + p]) flip_rows(variant_map, per_target);
          float* sum = acc.f32() + t * per_target;
          for (int64_t j = 0; j < per_target; ++j) sum[j] += variant_map[j];
        }
      }
    }
  }
  for (size_t i = 0; i < M; ++i) {
    HostTensor& maps = result.results[i].maps;
    for (int64_t j = 0; j < maps.numel(); ++j) maps.f32()[j] /= static_cast<float>(kAugSmoothVariants);
  }
  end_timings(result.timings_ms);
}

}  // namespace camrt
