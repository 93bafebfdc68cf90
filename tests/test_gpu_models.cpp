// The golden models and golden CAMs of the CPU suite, on the GPU: logits against PyTorch's, every CAM method
// against the PyTorch reference maps (same tolerances as test_golden_cams.cpp: cam-spec "Numerical tolerances"),
// two runs bit-identical, and the steady state allocating nothing (no cudaMalloc / cudaMallocHost per call).
// All at fp32 (no TF32) so the tolerances are the CPU's; one TF32 check with a bound that says why it is looser.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "engine/cam/explainer.h"
#include "engine/npy.h"
#include "tests/gpu_test_util.h"
#include "tests/small_models.h"
#include "weights/onnx/onnx_import.h"

using namespace camrt;
namespace fs = std::filesystem;

namespace {

double max_abs_diff(const float* a, const float* b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double e = std::fabs(double(a[i]) - double(b[i]));
    m = std::isnan(e) ? INFINITY : std::max(m, e);  // a NaN on one side only fails every bound
    if (std::isinf(m)) break;
  }
  return m;
}
double max_abs(const float* a, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(double(a[i])));
  return m;
}

std::vector<fs::path> model_dirs() {
  std::vector<fs::path> dirs;
  const fs::path root = fs::path(CAMRT_SOURCE_DIR) / "tests/fixtures/models";
  if (!fs::exists(root)) return dirs;
  for (const auto& e : fs::directory_iterator(root))
    if (fs::exists(e.path() / "model.onnx") && fs::exists(e.path() / "logits.npy")) dirs.push_back(e.path());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

fs::path fixture_dir(const std::string& name) { return fs::path(CAMRT_SOURCE_DIR) / "tests/fixtures/models" / name; }

// The bound on a GPU map against its reference (cam-spec "Numerical tolerances": 1e-4, 1e-3 for the methods that
// divide by small numbers; guided maps are raw values: 1e-4 of their largest).
double map_bound(const std::string& method, const float* ref, int64_t n) {
  if (method == "guided-backprop" || method == "guided-gradcam") return 1e-4 * max_abs(ref, n);
  const bool loose = method == "scorecam" || method == "ablationcam" || method == "gradcampp" || method == "smooth-gradcampp";
  return loose ? 1e-3 : 1e-4;
}

std::string target_layer_of(const fs::path& model_dir) {
  std::ifstream in(model_dir / "meta.json");
  return nlohmann::json::parse(in).at("target_layer").get<std::string>();
}

}  // namespace

TEST_CASE("gpu models: golden logits at fp32 and tf32") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
  ThreadPool pool(2);
  for (const fs::path& dir : model_dirs()) {
    const std::string name = dir.filename().string();
    CAPTURE(name);
    Graph graph(import_onnx((dir / "model.onnx").string()), name);
    const HostTensor x = read_npy((dir / "input.npy").string());
    const HostTensor ref = read_npy((dir / "logits.npy").string());
    const std::string input_name = graph.values()[graph.input_ids()[0]].name;
    for (Precision precision : {Precision::FP32, Precision::TF32}) {
      runtime->set_precision(precision);
      const auto out = run_model(graph, {{input_name, x}}, pool, runtime);
      const HostTensor& logits = out.begin()->second;
      REQUIRE(logits.numel() == ref.numel());
      const double err = max_abs_diff(logits.f32(), ref.f32(), ref.numel()) / max_abs(ref.f32(), ref.numel());
      std::cout << "gpu logits " << name << " " << precision_name(precision) << ": max rel error " << err << "\n";
      // fp32: the CPU suite's bound (1e-4 of the largest logit). TF32 rounds conv/GEMM inputs to a 10-bit
      // mantissa (relative 2^-11 ~ 5e-4 per product), accumulated over a few layers: 1e-2.
      CHECK(err <= (precision == Precision::FP32 ? 1e-4 : 1e-2));
      // The activation-fused graph (what predict and explain plan): cuDNN's fused conv + bias + relu, Add + relu.
      const auto fused = graph.fused({});
      const auto fused_out = run_model(*fused, {{input_name, x}}, pool, runtime);
      const HostTensor& fused_logits = fused_out.begin()->second;
      REQUIRE(fused_logits.numel() == ref.numel());
      const double fused_err = max_abs_diff(fused_logits.f32(), ref.f32(), ref.numel()) / max_abs(ref.f32(), ref.numel());
      std::cout << "gpu logits " << name << " " << precision_name(precision) << ", " << fused->fused_pairs()
                << " activations fused: max rel error " << fused_err << "\n";
      CHECK(fused_err <= (precision == Precision::FP32 ? 1e-4 : 1e-2));
    }
    runtime->set_precision(Precision::FP32);
  }
}

TEST_CASE("gpu models: every CAM method matches the PyTorch reference, deterministically, allocation-free") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
  runtime->set_precision(Precision::FP32);
  ThreadPool pool(2);
  for (const fs::path& dir : model_dirs()) {
    const fs::path cam_root = dir / "cam";
    if (!fs::exists(cam_root)) continue;
    for (const auto& input_dir : fs::directory_iterator(cam_root)) {
      const fs::path c = input_dir.path();
      if (!fs::is_directory(c) || !fs::exists(c / "gradient.npy")) continue;
      const std::string name = dir.filename().string() + "/" + c.filename().string();
      CAPTURE(name);
      Graph graph(import_onnx((dir / "model.onnx").string()), name);
      const HostTensor x = read_npy((fs::exists(c / "input.npy") ? c / "input.npy" : dir / "input.npy").string());
      ExplainOptions options;
      options.layers = {target_layer_of(dir)};
      options.methods.clear();
      for (const auto& method : cam_method_names())
        if (fs::exists(c / (method + ".npy"))) options.methods.push_back(method);
      if (fs::exists(c / "smooth_noise.npy"))
        options.smooth_noise = std::make_shared<HostTensor>(read_npy((c / "smooth_noise.npy").string()));
      else
        options.methods.erase(std::remove(options.methods.begin(), options.methods.end(), "smooth-gradcampp"), options.methods.end());
      Explainer explainer(graph, x.shape[0], options, pool, runtime);
      const Explanation first = explainer.run(x);
      const int64_t device_allocations = runtime->device_allocations(), host_allocations = runtime->host_allocations();
      const Explanation second = explainer.run(x);
      CHECK(runtime->device_allocations() == device_allocations);  // steady state: nothing allocated
      CHECK(runtime->host_allocations() == host_allocations);
      for (size_t i = 0; i < first.results.size(); ++i) {
        const MethodResult& r = first.results[i];
        CAPTURE(r.method);
        const HostTensor ref = read_npy((c / (r.method + ".npy")).string());
        REQUIRE(r.maps.numel() == ref.numel());
        const double err = max_abs_diff(r.maps.f32(), ref.f32(), ref.numel());
        const double bound = map_bound(r.method, ref.f32(), ref.numel());
        std::cout << "gpu cam " << name << " " << r.method << ": max abs error " << err << " (bound " << bound << ")\n";
        CHECK(err <= bound);
        // Fixed reduction orders and deterministic cuDNN/cuBLAS algorithms: the second run is bit-identical.
        CHECK(std::memcmp(r.maps.bytes.data(), second.results[i].maps.bytes.data(), r.maps.bytes.size()) == 0);
      }
    }
  }
}

TEST_CASE("gpu models: top-k seeds in one backward pass give the single-class maps") {
  // Three targets' seeds through one backward pass of the main and the Guided Backprop plans (batch 3B in the
  // ops that read no activation) against one explanation per class. cuDNN may pick another backward-data
  // algorithm at 3B than at B, so the bound is the GPU golden tests' 1e-4 (maps in [0, 1]; guided maps relative
  // to their largest value), not bit equality.
  CAMRT_GPU_TEST_RUNTIME(runtime);
  runtime->set_precision(Precision::FP32);
  ThreadPool pool(2);
  const fs::path dir = fixture_dir("mobilenet_v3_small");
  Graph graph(import_onnx((dir / "model.onnx").string()), "mobilenet_v3_small");
  const HostTensor x = read_npy((dir / "input.npy").string());
  ExplainOptions top;
  top.methods = {"gradcam", "layercam", "guided-backprop", "guided-gradcam"};
  top.target = "top3";
  const Explanation ex = Explainer(graph, x.shape[0], top, pool, runtime).run(x);
  REQUIRE(ex.classes.size() == 3);
  int compared = 0;
  for (size_t t = 0; t < 3; ++t) {
    if (ex.classes[t][0] != ex.classes[t][1]) continue;  // a fixed class applies to every image
    ExplainOptions one = top;
    one.target = std::to_string(ex.classes[t][0]);
    const Explanation single = Explainer(graph, x.shape[0], one, pool, runtime).run(x);
    for (size_t m = 0; m < top.methods.size(); ++m) {
      CAPTURE(top.methods[m]);
      const int64_t per_target = ex.results[m].maps.numel() / 3;
      const float* slice = ex.results[m].maps.f32() + t * per_target;
      const float* ref = single.results[m].maps.f32();
      CHECK(max_abs_diff(slice, ref, per_target) <= map_bound(top.methods[m], ref, per_target));
      ++compared;
    }
  }
  CHECK(compared > 0);
}

TEST_CASE("gpu models: aug-smooth variants batched on the device give the CPU's maps") {
  // On the GPU the six aug-smooth variants go through the variant plans together (free memory permitting); the
  // CPU explains them one at a time. fp32, the GPU golden tests' bounds.
  CAMRT_GPU_TEST_RUNTIME(runtime);
  runtime->set_precision(Precision::FP32);
  ThreadPool pool(2);
  const fs::path dir = fixture_dir("mobilenet_v3_small");
  Graph graph(import_onnx((dir / "model.onnx").string()), "mobilenet_v3_small");
  const HostTensor x = read_npy((dir / "input.npy").string());
  ExplainOptions options;
  options.methods = {"gradcam", "guided-backprop", "scorecam"};
  options.target = "top2";
  options.aug_smooth = true;
  const Explanation gpu = Explainer(graph, x.shape[0], options, pool, runtime).run(x);
  const Explanation cpu = Explainer(graph, x.shape[0], options, pool).run(x);
  for (size_t m = 0; m < options.methods.size(); ++m) {
    CAPTURE(options.methods[m]);
    const HostTensor& got = gpu.results[m].maps;
    const HostTensor& ref = cpu.results[m].maps;
    REQUIRE(got.shape == ref.shape);
    const double bound = map_bound(options.methods[m], ref.f32(), ref.numel());
    CHECK(max_abs_diff(got.f32(), ref.f32(), ref.numel()) <= bound);
  }
}

TEST_CASE("gpu models: a fixed-batch model and a guided plan without stacked seeds give the CPU's maps") {
  // On the GPU the chunks are automatic (several noisy copies / aug-smooth variants per pass where the model
  // allows): a model whose input has a fixed batch must still run one per pass. The batch-folding model's guided
  // plan takes one seed per pass while its main plan could take all: top-3 runs both one target per pass. And
  // Ablation-CAM of a target whose score is exactly 0 is the CPU's error, not a NaN map.
  CAMRT_GPU_TEST_RUNTIME(runtime);
  runtime->set_precision(Precision::FP32);
  ThreadPool pool(2);
  auto compare = [&](const Graph& graph, int64_t B, const ExplainOptions& options) {
    const HostTensor x = testing::random_images(B, 23);
    const Explanation gpu = Explainer(graph, B, options, pool, runtime).run(x);
    const Explanation cpu = Explainer(graph, B, options, pool).run(x);
    for (size_t m = 0; m < options.methods.size(); ++m) {
      CAPTURE(options.methods[m]);
      const HostTensor& got = gpu.results[m].maps;
      const HostTensor& ref = cpu.results[m].maps;
      REQUIRE(got.shape == ref.shape);
      CHECK(max_abs_diff(got.f32(), ref.f32(), ref.numel()) <= map_bound(options.methods[m], ref.f32(), ref.numel()));
    }
  };
  const Graph fixed(testing::batch_folding_model(1), "fixed-batch");
  ExplainOptions smooth;
  smooth.methods = {"smooth-gradcampp", "gradcam"};
  smooth.layers = {"relu1"};
  smooth.smooth_samples = 4;
  compare(fixed, 1, smooth);
  ExplainOptions aug;
  aug.methods = {"gradcam", "scorecam"};
  aug.layers = {"relu1"};
  aug.aug_smooth = true;
  compare(fixed, 1, aug);
  const Graph folding(testing::batch_folding_model(0), "batch-folding");
  ExplainOptions top;
  top.methods = {"gradcam", "guided-backprop", "guided-gradcam"};
  top.layers = {"relu1"};
  top.target = "top3";
  compare(folding, 2, top);
  ExplainOptions zero;
  zero.methods = {"ablationcam"};
  zero.layers = {"relu1"};
  zero.target = "4";
  CHECK_THROWS_WITH_AS(Explainer(folding, 2, zero, pool, runtime).run(testing::random_images(2, 24)),
                       doctest::Contains("exactly 0"), Error);
}

TEST_CASE("gpu models: the whole explain pass in one CUDA graph replays the eager pass bit for bit") {
  // Methods that decide nothing on the host: the pass (forward, device-ranked top-2 targets, one backward for
  // both, Guided Backprop, Score-CAM's and Ablation-CAM's chunked forwards scored on the device, Smooth
  // Grad-CAM++'s noisy copies made on the device, every map
  // normalized and upsampled) runs eagerly on the first call, is captured on the second and replayed on the third. All three bit-identical, no allocation after the first, and the CPU's
  // maps within the GPU golden tests' bounds.
  CAMRT_GPU_TEST_RUNTIME(runtime);
  runtime->set_precision(Precision::FP32);
  ThreadPool pool(2);
  const fs::path dir = fixture_dir("resnet18");
  Graph graph(import_onnx((dir / "model.onnx").string()), "resnet18");
  const HostTensor x = read_npy((dir / "input.npy").string());
  ExplainOptions options;
  options.methods = {"gradcam", "gradcampp", "layercam", "hirescam", "xgradcam", "normgrad", "eigencam",
                     "eigengradcam", "cam", "scorecam", "ablationcam", "smooth-gradcampp", "guided-backprop",
                     "guided-gradcam"};
  options.smooth_samples = 3;
  for (const char* target : {"top2", "softmax"}) {  // two targets in one backward; device-side softmax seeds
    CAPTURE(target);
    options.target = target;
    Explainer explainer(graph, x.shape[0], options, pool, runtime);
    const Explanation eager = explainer.run(x);
    const int64_t device_allocations = runtime->device_allocations(), host_allocations = runtime->host_allocations();
    const Explanation captured = explainer.run(x);
    const Explanation replayed = explainer.run(x);
    CHECK(runtime->device_allocations() == device_allocations);
    CHECK(runtime->host_allocations() == host_allocations);
    CHECK(eager.timings_ms.count("pass") == 0);
    INFO("capture failure: " << explainer.capture_failure());
    CHECK(replayed.timings_ms.count("pass") == 1);  // the replay ran as one graph
    const Explanation cpu = Explainer(graph, x.shape[0], options, pool).run(x);
    CHECK(eager.classes == cpu.classes);
    for (size_t m = 0; m < options.methods.size(); ++m) {
      CAPTURE(options.methods[m]);
      const HostTensor& a = eager.results[m].maps;
      CHECK(std::memcmp(a.bytes.data(), captured.results[m].maps.bytes.data(), a.bytes.size()) == 0);
      CHECK(std::memcmp(a.bytes.data(), replayed.results[m].maps.bytes.data(), a.bytes.size()) == 0);
      const HostTensor& ref = cpu.results[m].maps;
      REQUIRE(a.shape == ref.shape);
      const double bound = map_bound(options.methods[m], ref.f32(), ref.numel());
      CHECK(max_abs_diff(a.f32(), ref.f32(), ref.numel()) <= bound);
    }
  }
}
