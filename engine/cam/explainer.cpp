// The CAM methods' orchestration: which passes run, in which plan, and how their results are combined.
// Formulas live in kernels/cpu/cam.cpp; this file decides only data flow (see explainer.h).
#include "engine/cam/explainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <set>

#include "kernels/cpu/cam.h"

namespace camrt {

namespace {

using Clock = std::chrono::steady_clock;
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

HostTensor copy_of(const Tensor& t) {
  HostTensor out(t.dtype, t.shape);
  if (!out.bytes.empty()) std::memcpy(out.bytes.data(), t.data, out.bytes.size());
  return out;
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
    } catch (...) {
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

struct Explainer::Impl {
  const Graph& graph;
  ThreadPool& pool;
  ExplainOptions options;
  TargetRule rule;
  int64_t batch = 0, channels = 0, height = 0, width = 0;
  int64_t classes = 0;        // output channels (dim 1)
  int64_t out_per_image = 0;  // output elements per image
  int64_t out_spatial = 1;    // output positions per channel (segmentation outputs)
  std::string input_name;
  std::vector<int> layer_ids;          // value ids of the explained tensors
  std::vector<std::string> layer_tensors;
  bool any_gradient = false, any_guided = false, any_score = false, any_ablation = false;
  std::unique_ptr<Executor> main, guided, score;
  std::vector<std::unique_ptr<Executor>> tails;  // per layer, for Ablation-CAM

  Impl(const Graph& g, ThreadPool& p) : graph(g), pool(p) {}

  // d(score)/d(output) for target t: one-hot on the logit, or the softmax derivative p_c (delta_cj - p_j).
  std::vector<float> seed_for(const float* logits, const std::vector<int64_t>& cls) const {
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
        continue;
      }
      if (!rule.softmax) {
        s[cls[b]] = 1.f;
        continue;
      }
      const std::vector<double> p = softmax(z);
      for (int64_t j = 0; j < classes; ++j) s[j] = static_cast<float>(p[cls[b]] * ((j == cls[b]) - p[j]));
    }
    return seed;
  }

  std::vector<double> softmax(const float* z) const {
    const float max_z = *std::max_element(z, z + classes);
    std::vector<double> p(static_cast<size_t>(classes));
    double sum = 0;
    for (int64_t j = 0; j < classes; ++j) sum += p[j] = std::exp(double(z[j]) - max_z);
    for (auto& v : p) v /= sum;
    return p;
  }

  // The explained score of one output row: logit z_c, or softmax(z)_c.
  float score_of(const float* z, int64_t c) const {
    if (rule.kind == TargetRule::Region) {
      const float* m = options.region_mask->f32();
      double y = 0;
      for (int64_t i = 0; i < out_spatial; ++i) y += double(m[i]) * z[c * out_spatial + i];
      return static_cast<float>(y);
    }
    if (rule.kind == TargetRule::Similarity) {
      const float* v = options.concept_vector->f32();
      double ee = 0, vv = 0, ev = 0;
      for (int64_t j = 0; j < out_per_image; ++j) ee += double(z[j]) * z[j], vv += double(v[j]) * v[j], ev += double(z[j]) * v[j];
      return static_cast<float>(ev / std::sqrt(ee * vv));
    }
    if (!rule.softmax) return z[c];
    return static_cast<float>(softmax(z)[c]);
  }

  std::vector<std::vector<int64_t>> resolve_targets(const float* logits) const {
    std::vector<std::vector<int64_t>> targets;
    const int64_t count = rule.kind == TargetRule::TopK ? std::min(rule.value, classes) : 1;
    targets.assign(static_cast<size_t>(count), std::vector<int64_t>(static_cast<size_t>(batch)));
    if (rule.kind == TargetRule::Region || rule.kind == TargetRule::Similarity) {
      CAMRT_CHECK(rule.value < classes, "--target region class " << rule.value << " is out of range: the output has " << classes << " channels");
      for (auto& t : targets) std::fill(t.begin(), t.end(), rule.value);
      return targets;
    }
    for (int64_t b = 0; b < batch; ++b) {
      const float* z = logits + b * classes;
      std::vector<int64_t> order(static_cast<size_t>(classes));
      for (int64_t j = 0; j < classes; ++j) order[j] = j;
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) { return z[a] > z[c]; });
      for (int64_t t = 0; t < count; ++t) {
        int64_t c = order[t];
        if (rule.kind == TargetRule::Class) {
          CAMRT_CHECK(rule.value < classes, "--target class " << rule.value << " is out of range: the model has " << classes << " classes");
          c = rule.value;
        }
        targets[t][b] = c;
      }
    }
    return targets;
  }

  // Per layer and target: raw maps (B, h, w) of one method before post-processing.
  void raw_map(std::vector<float>& cam, const std::string& method, size_t layer, const HostTensor& A, const HostTensor* G,
               const std::vector<int64_t>& cls, const HostTensor& x, const std::vector<HostTensor>* smooth_d) {
    const int64_t K = A.shape[1], h = A.shape[2], w = A.shape[3];
    const int64_t B = batch;
    cam.assign(static_cast<size_t>(B * h * w), 0.f);
    std::vector<float> weights(static_cast<size_t>(B * K));
    GradCamVariant variant;
    auto project = [&](const float* weighted) {  // --eigen-smooth: Eigen-CAM projection of weighted activations
      eigen_cam_forward(cam.data(), weighted, B, K, h, w, pool, nullptr);
    };
    auto from_channel_weights = [&]() {
      if (options.eigen_smooth) {
        std::vector<float> scaled(static_cast<size_t>(A.numel()));
        scale_channels(scaled.data(), A.f32(), weights.data(), B, K, h, w, pool);
        project(scaled.data());
      } else {
        weighted_channel_sum(cam.data(), weights.data(), A.f32(), B, K, h, w, pool);
      }
    };
    if (variant_of(method, &variant)) {
      if (options.eigen_smooth) {
        std::vector<float> weighted(static_cast<size_t>(A.numel()));
        grad_cam_weighted_activations(weighted.data(), A.f32(), G->f32(), B, K, h, w, variant, pool);
        project(weighted.data());
      } else {
        grad_cam_forward(cam.data(), A.f32(), G->f32(), B, K, h, w, variant, pool);
      }
    } else if (method == "smooth-gradcampp") {
      const auto& d = *smooth_d;
      smooth_gradcampp_channel_weights(weights.data(), A.f32(), d[0].f32(), d[1].f32(), d[2].f32(), B, K, h, w, pool);
      from_channel_weights();
    } else if (method == "normgrad") {
      normgrad_forward(cam.data(), A.f32(), G->f32(), B, K, h, w, pool);
    } else if (method == "eigencam") {
      eigen_cam_forward(cam.data(), A.f32(), B, K, h, w, pool, nullptr);
    } else if (method == "eigengradcam") {
      std::vector<float> product(static_cast<size_t>(A.numel()));
      elementwise_product(product.data(), G->f32(), A.f32(), A.numel(), pool);
      eigen_cam_forward(cam.data(), product.data(), B, K, h, w, pool, nullptr);
    } else if (method == "cam") {
      const HostTensor& fc = fc_weight_for(layer, K);
      if (options.eigen_smooth) {
        for (int64_t b = 0; b < B; ++b)
          for (int64_t k = 0; k < K; ++k) weights[b * K + k] = fc.f32()[cls[b] * K + k];
        from_channel_weights();
      } else {
        class_activation_map(cam.data(), fc.f32(), cls.data(), A.f32(), B, K, h, w, fc.shape[0], pool);
      }
    } else if (method == "scorecam") {
      scorecam(weights, A, cls, x);
      from_channel_weights();
    } else if (method == "ablationcam") {
      ablationcam(weights, layer, A, cls);
      from_channel_weights();
    } else {
      CAMRT_FAIL("method '" << method << "' has no map of its own");
    }
    if (method == "layercam" && options.layercam_tanh) layercam_tanh_scale(cam.data(), B, h * w, pool);
  }

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

  // Score-CAM channel weights: masked inputs pushed through the score plan in chunks.
  void scorecam(std::vector<float>& weights, const HostTensor& A, const std::vector<int64_t>& cls, const HostTensor& x) {
    const int64_t K = A.shape[1], h = A.shape[2], w = A.shape[3];
    const int64_t plane = channels * height * width;
    std::vector<float> masks(static_cast<size_t>(K * height * width));
    std::vector<float> scores(static_cast<size_t>(batch * K));
    std::vector<uint8_t> constant(static_cast<size_t>(batch * K), 0);
    if (options.scorecam_paper) scorecam_constant_channels(constant.data(), A.f32(), batch, K, h, w, pool);
    const int64_t chunk = score->descs()[score->input_ids()[0]].shape[0];
    Tensor in = score->input(input_name);
    for (int64_t b = 0; b < batch; ++b) {
      scorecam_masks(masks.data(), A.f32() + b * K * h * w, 1, K, h, w, height, width, pool);
      for (int64_t k0 = 0; k0 < K; k0 += chunk) {
        const int64_t n = std::min(chunk, K - k0);
        apply_mask(in.f32(), x.f32() + b * plane, masks.data() + k0 * height * width, n, channels, height, width, pool);
        if (n < chunk) std::memset(in.f32() + n * plane, 0, static_cast<size_t>((chunk - n) * plane) * sizeof(float));
        score->forward();
        const Tensor out = score->value(graph.output_ids()[0]);
        for (int64_t i = 0; i < n; ++i) {
          const float* z = out.f32() + i * out_per_image;
          scores[b * K + k0 + i] = options.scorecam_paper ? static_cast<float>(softmax(z)[cls[b]]) : score_of(z, cls[b]);
        }
      }
    }
    if (options.scorecam_paper) scorecam_paper_weights(weights.data(), scores.data(), constant.data(), batch, K);
    else softmax_weights(weights.data(), scores.data(), batch, K);
  }

  // Ablation-CAM channel weights: ablated copies of A pushed through the tail plan (from the layer on).
  void ablationcam(std::vector<float>& weights, size_t layer, const HostTensor& A, const std::vector<int64_t>& cls) {
    const int64_t K = A.shape[1], h = A.shape[2], w = A.shape[3];
    Executor& tail = *tails[layer];
    const int64_t chunk = tail.descs()[tail.input_ids()[0]].shape[0];
    std::vector<float> values(static_cast<size_t>(batch)), y(static_cast<size_t>(batch)), y_ablated(static_cast<size_t>(batch * K));
    ablation_values(values.data(), A.f32(), batch, K, h, w, pool);
    Tensor in = tail.input(layer_tensors[layer]);
    const int64_t per_copy = K * h * w;
    for (int64_t b = 0; b < batch; ++b) {
      y[b] = score_of(last_logits + b * out_per_image, cls[b]);
      for (int64_t k0 = 0; k0 < K; k0 += chunk) {
        const int64_t n = std::min(chunk, K - k0);
        ablation_batch(in.f32(), A.f32() + b * per_copy, values[b], k0, n, K, h, w, pool);
        if (n < chunk) std::memset(in.f32() + n * per_copy, 0, static_cast<size_t>((chunk - n) * per_copy) * sizeof(float));
        tail.forward();
        const Tensor out = tail.value(graph.output_ids()[0]);
        for (int64_t i = 0; i < n; ++i) y_ablated[b * K + k0 + i] = score_of(out.f32() + i * out_per_image, cls[b]);
      }
    }
    ablation_weights(weights.data(), y.data(), y_ablated.data(), batch, K);
  }

  const float* last_logits = nullptr;

  // The whole pipeline for one input (one aug-smooth variant): maps[method][t] (B, H, W) or (B, C, H, W).
  std::map<std::string, std::vector<HostTensor>> run_once(const HostTensor& x, const std::vector<std::vector<int64_t>>& targets,
                                                          std::map<std::string, double>& timings, bool forwarded) {
    const size_t T = targets.size(), L = layer_ids.size();
    std::map<std::string, std::vector<HostTensor>> maps;
    auto t0 = Clock::now();
    if (!forwarded) {
      main->set_input(input_name, x);
      main->forward();
      timings["forward"] += ms_since(t0);
    }
    const Tensor out = main->value(graph.output_ids()[0]);
    HostTensor logits = copy_of(out);
    last_logits = logits.f32();
    std::vector<HostTensor> A;
    for (int id : layer_ids) A.push_back(copy_of(main->value(id)));

    for (size_t t = 0; t < T; ++t) {
      std::vector<HostTensor> G;
      if (any_gradient) {
        t0 = Clock::now();
        main->backward(seed_for(logits.f32(), targets[t]).data());
        for (const auto& name : layer_tensors) G.push_back(copy_of(main->gradient(name)));
        timings["backward"] += ms_since(t0);
      }
      // Smooth Grad-CAM++: noisy copies through forward + backward, means of G, G^2, G^3 per layer.
      std::vector<std::vector<HostTensor>> smooth(L);
      if (std::find(options.methods.begin(), options.methods.end(), "smooth-gradcampp") != options.methods.end()) {
        t0 = Clock::now();
        smooth_moments(x, targets[t], smooth);
        timings["smooth-gradcampp"] += ms_since(t0);
      }
      HostTensor guided_grad;
      if (any_guided) {
        t0 = Clock::now();
        guided->set_input(input_name, x);
        guided->forward();
        const Tensor guided_logits = guided->value(graph.output_ids()[0]);
        guided->backward(seed_for(guided_logits.f32(), targets[t]).data(), /*guided=*/true);
        guided_grad = copy_of(guided->gradient(input_name));
        timings["guided-backprop"] += ms_since(t0);
      }
      HostTensor gradcam_final;  // for guided-gradcam
      for (const std::string& method : options.methods) {
        if (method == "guided-backprop") {
          maps[method].push_back(guided_grad);
          continue;
        }
        const std::string map_method = method == "guided-gradcam" ? "gradcam" : method;
        t0 = Clock::now();
        HostTensor per_layer(DType::F32, {static_cast<int64_t>(L), batch, height, width});
        std::vector<float> cam;
        for (size_t l = 0; l < L; ++l) {
          raw_map(cam, map_method, l, A[l], any_gradient ? &G[l] : nullptr, targets[t], x, &smooth[l]);
          postprocess_layer(per_layer.f32() + l * batch * height * width, cam.data(), batch, A[l].shape[2], A[l].shape[3],
                            height, width, map_method != "normgrad", pool);
        }
        HostTensor final_map(DType::F32, {batch, height, width});
        aggregate_layers(final_map.f32(), per_layer.f32(), static_cast<int64_t>(L), batch, height, width, pool);
        if (method == "guided-gradcam") {
          HostTensor combined(DType::F32, {batch, channels, height, width});
          guided_gradcam(combined.f32(), guided_grad.f32(), final_map.f32(), batch, channels, height, width, pool);
          maps[method].push_back(std::move(combined));
        } else {
          maps[method].push_back(std::move(final_map));
        }
        timings[method] += ms_since(t0);
      }
    }
    return maps;
  }

  void smooth_moments(const HostTensor& x, const std::vector<int64_t>& cls, std::vector<std::vector<HostTensor>>& d) {
    const size_t L = layer_ids.size();
    for (size_t l = 0; l < L; ++l) {
      const Shape& shape = main->descs()[layer_ids[l]].shape;
      d[l] = {HostTensor(DType::F32, shape), HostTensor(DType::F32, shape), HostTensor(DType::F32, shape)};
    }
    const int64_t n = options.smooth_samples, plane = channels * height * width;
    if (options.smooth_noise)
      CAMRT_CHECK(options.smooth_noise->shape == (Shape{n, batch, channels, height, width}),
                  "smooth noise must be " << shape_str({n, batch, channels, height, width}));
    std::mt19937_64 rng(options.seed);
    HostTensor noisy(DType::F32, x.shape);
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t b = 0; b < batch; ++b) {
        const float* xb = x.f32() + b * plane;
        // sigma = 0.2 * (max x - min x) per image (spec).
        const auto [lo, hi] = std::minmax_element(xb, xb + plane);
        std::normal_distribution<float> normal(0.f, 0.2f * (*hi - *lo));
        const float* injected = options.smooth_noise ? options.smooth_noise->f32() + (s * batch + b) * plane : nullptr;
        for (int64_t i = 0; i < plane; ++i) noisy.f32()[b * plane + i] = xb[i] + (injected ? injected[i] : normal(rng));
      }
      main->set_input(input_name, noisy);
      main->forward();
      main->backward(seed_for(main->value(graph.output_ids()[0]).f32(), cls).data());
      for (size_t l = 0; l < L; ++l) {
        const Tensor g = main->gradient(layer_tensors[l]);
        smooth_gradcampp_accumulate(d[l][0].f32(), d[l][1].f32(), d[l][2].f32(), g.f32(), g.numel(), pool);
      }
    }
    for (size_t l = 0; l < L; ++l)
      for (auto& t : d[l])
        for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] /= static_cast<float>(n);
    // Later targets' backward passes read the clean forward's activations again.
    main->set_input(input_name, x);
    main->forward();
  }
};

Explainer::Explainer(const Graph& graph, int64_t batch, ExplainOptions options, ThreadPool& pool)
    : impl_(std::make_unique<Impl>(graph, pool)), options_(std::move(options)) {
  Impl& m = *impl_;
  m.options = options_;
  m.rule = parse_target(options_.target);
  CAMRT_CHECK(!options_.methods.empty(), "no CAM method given");
  CAMRT_CHECK(graph.input_ids().size() == 1, graph.source_name() << ": explain needs a model with one input");
  CAMRT_CHECK(options_.smooth_samples >= 1 && options_.chunk >= 1, "smooth samples and chunk must be positive");
  for (const auto& method : options_.methods) {
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
  m.batch = batch;
  m.channels = in_shape[1];
  m.height = in_shape[2];
  m.width = in_shape[3];

  std::vector<std::string> layers = options_.layers;
  if (layers.empty() || (layers.size() == 1 && layers[0] == "auto")) {
    const std::string layer = graph.default_explain_layer();
    CAMRT_CHECK(!layer.empty(), graph.source_name() << ": no default explanation layer (no spatial layer before global pooling); pass --layer");
    layers = {layer};
  }
  const bool map_methods = std::any_of(options_.methods.begin(), options_.methods.end(),
                                       [](const std::string& s) { return s != "guided-backprop"; });
  for (const auto& name : layers) {
    int id = graph.find_value(name);
    if (id < 0) {
      const int node = graph.find_node(name);
      CAMRT_CHECK(node >= 0, graph.source_name() << ": --layer '" << name << "' is neither a node nor a tensor name");
      id = graph.nodes()[node].outputs[0];
    }
    m.layer_ids.push_back(id);
    m.layer_tensors.push_back(graph.values()[id].name);
    const int producer = graph.values()[id].producer;
    layer_names_.push_back(producer >= 0 ? graph.nodes()[producer].node->name : graph.values()[id].name);
  }

  PlanOptions main_options;
  main_options.keep = m.layer_tensors;
  if (m.any_gradient) main_options.grad_targets = m.layer_tensors;
  main_options.repeat_backward = true;  // several targets / smooth samples reuse one forward's activations
  m.main = std::make_unique<Executor>(graph, shapes, pool, main_options);
  for (int id : m.layer_ids) {
    const Shape& s = m.main->descs()[id].shape;
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
  if (region) {
    CAMRT_CHECK(options_.region_mask && options_.region_mask->dtype == DType::F32 && options_.region_mask->numel() == m.out_spatial,
                "--target region needs a float32 mask with " << m.out_spatial << " values (the output's spatial size "
                                                             << shape_str(Shape(out_shape.begin() + 2, out_shape.end())) << ")");
  }
  if (similarity) {
    CAMRT_CHECK(options_.concept_vector && options_.concept_vector->dtype == DType::F32 && options_.concept_vector->numel() == m.out_per_image,
                "--target similarity needs a float32 concept vector with " << m.out_per_image << " values (the embedding size)");
  }
  CAMRT_CHECK(!options_.scorecam_paper || (!region && !similarity), "--scorecam paper needs a classification output");
  if (m.any_guided) {
    PlanOptions guided_options;
    guided_options.grad_targets = {m.input_name};
    m.guided = std::make_unique<Executor>(graph, shapes, pool, guided_options);
  }
  if (m.any_score) m.score = std::make_unique<Executor>(graph, graph.input_shapes_for_batch(options_.chunk), pool);
  if (m.any_ablation) {
    for (const auto& tensor : m.layer_tensors) {
      PlanOptions tail_options;
      tail_options.start_from = tensor;
      m.tails.push_back(std::make_unique<Executor>(graph, graph.input_shapes_for_batch(options_.chunk), pool, tail_options));
    }
  }
}

Explainer::~Explainer() = default;

const PlanStats& Explainer::main_plan_stats() const { return impl_->main->stats(); }

Explanation Explainer::run(const HostTensor& input) {
  Impl& m = *impl_;
  CAMRT_CHECK(input.dtype == DType::F32 && input.shape == (Shape{m.batch, m.channels, m.height, m.width}),
              "explain input must be float32 " << shape_str({m.batch, m.channels, m.height, m.width}) << ", got "
                                               << dtype_name(input.dtype) << " " << shape_str(input.shape));
  Explanation result;
  result.layers = layer_names_;
  // Targets come from the clean input; aug-smooth variants explain the same classes.
  auto t0 = Clock::now();
  m.main->set_input(m.input_name, input);
  m.main->forward();
  result.timings_ms["forward"] += ms_since(t0);
  result.logits = copy_of(m.main->value(m.graph.output_ids()[0]));
  result.classes = m.resolve_targets(result.logits.f32());

  if (!options_.aug_smooth) {
    auto maps = m.run_once(input, result.classes, result.timings_ms, /*forwarded=*/true);
    for (const auto& method : options_.methods) {
      MethodResult r{method, {}};
      const auto& per_target = maps.at(method);
      Shape shape = per_target[0].shape;
      shape.insert(shape.begin(), static_cast<int64_t>(per_target.size()));
      r.maps = HostTensor(DType::F32, shape);
      const size_t bytes = per_target[0].bytes.size();
      for (size_t t = 0; t < per_target.size(); ++t) std::memcpy(r.maps.bytes.data() + t * bytes, per_target[t].bytes.data(), bytes);
      result.results.push_back(std::move(r));
    }
    return result;
  }
  // Aug-smooth (spec step 5): horizontal flip x {0.9, 1.0, 1.1}; maps flipped back, averaged, not renormalized.
  const int64_t W = m.width, rows = input.numel() / W;
  auto flip = [&](HostTensor& t) {
    const int64_t w = t.shape.back(), n = t.numel() / w;
    for (int64_t r = 0; r < n; ++r) std::reverse(t.f32() + r * w, t.f32() + (r + 1) * w);
  };
  std::map<std::string, std::vector<HostTensor>> sums;
  int variants = 0;
  for (bool flipped : {false, true}) {
    for (float factor : {0.9f, 1.0f, 1.1f}) {
      HostTensor x = input;
      for (int64_t i = 0; i < rows * W; ++i) x.f32()[i] *= factor;
      if (flipped) flip(x);
      auto maps = m.run_once(x, result.classes, result.timings_ms, /*forwarded=*/false);
      for (auto& [method, per_target] : maps) {
        auto& acc = sums[method];
        for (size_t t = 0; t < per_target.size(); ++t) {
          if (flipped) flip(per_target[t]);
          if (acc.size() <= t) acc.push_back(HostTensor(DType::F32, per_target[t].shape));
          for (int64_t i = 0; i < acc[t].numel(); ++i) acc[t].f32()[i] += per_target[t].f32()[i];
        }
      }
      ++variants;
    }
  }
  for (const auto& method : options_.methods) {
    auto& per_target = sums.at(method);
    Shape shape = per_target[0].shape;
    shape.insert(shape.begin(), static_cast<int64_t>(per_target.size()));
    MethodResult r{method, HostTensor(DType::F32, shape)};
    const int64_t n = per_target[0].numel();
    for (size_t t = 0; t < per_target.size(); ++t)
      for (int64_t i = 0; i < n; ++i) r.maps.f32()[t * n + i] = per_target[t].f32()[i] / variants;
    result.results.push_back(std::move(r));
  }
  return result;
}

}  // namespace camrt
