// Golden CAMs: for every fixture model and input with PyTorch dumps under tests/fixtures/models/*/cam/
// (tools/golden/make_golden.py, autograd + the cam-spec formulas in float64), camrt's target-layer activation,
// its gradient (the backward pass down to the layer), and the final map of every method must match.
// Tolerances are the spec's ("Numerical tolerances"): 1e-4 for gradient methods and Eigen-CAM; 1e-3 for
// Score-CAM, Ablation-CAM and the Grad-CAM++ family (divisions by small numbers amplify float32 rounding).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "engine/cam/explainer.h"
#include "engine/npy.h"
#include "weights/onnx/onnx_import.h"

using namespace camrt;
namespace fs = std::filesystem;

namespace {

double max_abs_diff(const float* a, const float* b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}
double max_abs(const float* a, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(double(a[i])));
  return m;
}

double tolerance_for(const std::string& method) {
  if (method == "scorecam" || method == "ablationcam" || method == "gradcampp" || method == "smooth-gradcampp") return 1e-3;
  return 1e-4;
}

struct GoldenCase {
  fs::path model_dir, cam_dir;
};

std::vector<GoldenCase> golden_cases() {
  std::vector<GoldenCase> cases;
  const fs::path root = fs::path(CAMRT_SOURCE_DIR) / "tests/fixtures/models";
  if (!fs::exists(root)) return cases;
  for (const auto& model : fs::directory_iterator(root)) {
    const fs::path cam = model.path() / "cam";
    if (!fs::exists(cam)) continue;
    for (const auto& input : fs::directory_iterator(cam))
      if (input.is_directory() && fs::exists(input.path() / "gradient.npy")) cases.push_back({model.path(), input.path()});
  }
  std::sort(cases.begin(), cases.end(), [](const GoldenCase& a, const GoldenCase& b) { return a.cam_dir < b.cam_dir; });
  return cases;
}

std::string target_layer_of(const fs::path& model_dir) {
  std::ifstream in(model_dir / "meta.json");
  const nlohmann::json meta = nlohmann::json::parse(in);
  return meta.at("target_layer").get<std::string>();
}

HostTensor input_for(const GoldenCase& c) {
  if (fs::exists(c.cam_dir / "input.npy")) return read_npy((c.cam_dir / "input.npy").string());
  return read_npy((c.model_dir / "input.npy").string());
}

}  // namespace

TEST_CASE("golden cams: activation and gradient at the target layer match PyTorch autograd") {
  const auto cases = golden_cases();
  if (cases.empty()) {
    std::cout << "SKIPPED golden cams: no cam fixtures (run tools/golden/make_golden.py)\n";
    return;
  }
  ThreadPool pool(2);
  for (const auto& c : cases) {
    const std::string name = c.model_dir.filename().string() + "/" + c.cam_dir.filename().string();
    CAPTURE(name);
    Graph graph(import_onnx((c.model_dir / "model.onnx").string()), name);
    const HostTensor x = input_for(c);
    const HostTensor A_ref = read_npy((c.cam_dir / "activation.npy").string());
    const HostTensor G_ref = read_npy((c.cam_dir / "gradient.npy").string());
    const HostTensor target = read_npy((c.cam_dir / "target.npy").string());
    const std::string layer = target_layer_of(c.model_dir);
    const std::string input_name = graph.values()[graph.input_ids()[0]].name;
    PlanOptions options;
    options.grad_targets = {layer};
    Executor executor(graph, {{input_name, x.shape}}, pool, options);
    // The backward keeps only what it reads: fewer values than the forward computes.
    CHECK(executor.stats().kept_for_backward < static_cast<int64_t>(graph.nodes().size()));
    executor.set_input(input_name, x);
    executor.forward();
    const Tensor A = executor.value(layer);
    REQUIRE(A.shape == A_ref.shape);
    // Activations: float32 forward vs float32 PyTorch; relative to the largest activation.
    CHECK(max_abs_diff(A.f32(), A_ref.f32(), A.numel()) <= 1e-4 * max_abs(A_ref.f32(), A_ref.numel()));
    const Tensor logits = executor.value(graph.output_ids()[0]);
    const int64_t B = logits.shape[0], classes = logits.shape[1];
    const std::vector<int64_t> cls = target.to_int64();
    HostTensor seed(DType::F32, logits.shape);
    for (int64_t b = 0; b < B; ++b) seed.f32()[b * classes + cls[b]] = 1.f;
    executor.backward(seed);
    const Tensor G = executor.gradient(layer);
    REQUIRE(G.shape == G_ref.shape);
    const double g_err = max_abs_diff(G.f32(), G_ref.f32(), G.numel()), g_max = max_abs(G_ref.f32(), G_ref.numel());
    std::cout << "golden gradient " << name << ": max abs error " << g_err << " (max |G| " << g_max << ")\n";
    CHECK(g_err <= 1e-4 * g_max);
  }
}

TEST_CASE("golden cams: every method's final map matches the PyTorch reference") {
  const auto cases = golden_cases();
  if (cases.empty()) {
    std::cout << "SKIPPED golden cams: no cam fixtures (run tools/golden/make_golden.py)\n";
    return;
  }
  ThreadPool pool(2);
  for (const auto& c : cases) {
    const std::string name = c.model_dir.filename().string() + "/" + c.cam_dir.filename().string();
    Graph graph(import_onnx((c.model_dir / "model.onnx").string()), name);
    const HostTensor x = input_for(c);
    ExplainOptions options;
    options.layers = {target_layer_of(c.model_dir)};
    options.methods.clear();
    for (const auto& method : cam_method_names())
      if (fs::exists(c.cam_dir / (method + ".npy"))) options.methods.push_back(method);
    REQUIRE(!options.methods.empty());
    if (fs::exists(c.cam_dir / "smooth_noise.npy"))
      options.smooth_noise = std::make_shared<HostTensor>(read_npy((c.cam_dir / "smooth_noise.npy").string()));
    else
      options.methods.erase(std::remove(options.methods.begin(), options.methods.end(), "smooth-gradcampp"), options.methods.end());
    Explainer explainer(graph, x.shape[0], options, pool);
    const Explanation ex = explainer.run(x);
    for (const MethodResult& r : ex.results) {
      CAPTURE(name);
      CAPTURE(r.method);
      const HostTensor ref = read_npy((c.cam_dir / (r.method + ".npy")).string());
      REQUIRE(r.maps.numel() == ref.numel());  // (1, B, ...) vs (B, ...)
      const double err = max_abs_diff(r.maps.f32(), ref.f32(), ref.numel());
      // Input-space methods are raw gradients: relative to their largest magnitude.
      const bool raw = r.method == "guided-backprop" || r.method == "guided-gradcam";
      const double bound = raw ? 1e-4 * max_abs(ref.f32(), ref.numel()) : tolerance_for(r.method);
      std::cout << "golden cam " << name << " " << r.method << ": max abs error " << err << " (bound " << bound << ")\n";
      CHECK(err <= bound);
    }
  }
}
