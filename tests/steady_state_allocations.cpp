// The steady state allocates nothing on the host: after warm-up calls, Session::explain / Session::predict and
// Explainer::run into a reused Explanation make no operator new call, on any thread (the issue's "no host
// allocation per call in the steady state; count them in a test"; the device side is counted in test_gpu_device
// and test_gpu_models). A binary of its own because it replaces the global operator new, which the main test
// binary must not (its tests allocate freely).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <random>
#include <vector>

#include "engine/camrt.h"
#include "engine/npy.h"
#include "tests/gpu_test_util.h"
#include "tests/replace_new.h"
#include "weights/onnx/onnx_import.h"

namespace {
std::atomic<int64_t> g_allocations{0};
std::atomic<bool> g_counting{false};
}  // namespace

// Every operator new of the binary comes here (tests/replace_new.h): counted while g_counting is set.
void* replaced_new(std::size_t size, std::size_t alignment, bool nothrow) {
  if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1, std::memory_order_relaxed);
  return allocate_for_new(size, alignment, nothrow);
}

using namespace camrt;
namespace fs = std::filesystem;

namespace {

const fs::path kSource = CAMRT_SOURCE_DIR;

// operator new calls made while fn runs (every thread: the pool's workers run the kernels).
template <typename Fn>
int64_t allocations_during(Fn&& fn) {
  g_allocations = 0;
  g_counting = true;
  fn();
  g_counting = false;
  return g_allocations.load();
}

std::vector<float> random_input(const Shape& shape, uint32_t seed) {
  std::vector<float> x(static_cast<size_t>(checked_numel(shape)));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (float& v : x) v = normal(rng);
  return x;
}

// Every method of the spec but CAM (the shipped model's default layer is not the one before its pooling).
ExplainOptions all_methods() {
  ExplainOptions options;
  options.methods = {"gradcam", "gradcam-neg", "gradcampp", "xgradcam", "hirescam", "gradcam-ew", "layercam",
                     "normgrad", "eigencam", "eigengradcam", "scorecam", "ablationcam", "smooth-gradcampp",
                     "guided-backprop", "guided-gradcam"};
  options.smooth_samples = 3;
  return options;
}

void check_session(Device device) {
  const std::string model = (kSource / "weights/models/fashion-canvas/model.json").string();
  Session session(model, 2, all_methods(), 2, device);
  const std::vector<float> x = random_input(session.input_shape(), 1);
  for (int i = 0; i < 3; ++i) session.explain(x.data());  // warm-up: plans' first runs, captures, result tensors
  CHECK(allocations_during([&] {
          for (int i = 0; i < 3; ++i) session.explain(x.data());
        }) == 0);
  for (int i = 0; i < 2; ++i) session.predict(x.data());
  CHECK(allocations_during([&] {
          for (int i = 0; i < 3; ++i) session.predict(x.data());
        }) == 0);
  // And the results still change with the input (the calls did run).
  const std::vector<float> y = random_input(session.input_shape(), 2);
  const float before = session.explain(x.data()).results[0].maps.f32()[100];
  const float after = session.explain(y.data()).results[0].maps.f32()[100];
  CHECK(before != after);
}

}  // namespace

TEST_CASE("steady state: Session explain (every method) and predict allocate nothing on the host (CPU)") {
  check_session(Device::CPU);
}

TEST_CASE("steady state: Explainer::run into a reused Explanation allocates nothing (residual, SE, top-k, aug-smooth)") {
  // resnet18 (residual Adds) and mobilenet_v3_small (squeeze-excitation Muls, hardswish) from the golden fixtures;
  // top-3 targets (stacked seeds) and aug-smooth (its own host scratch) on top of the default path.
  ThreadPool pool(2);
  for (const std::string name : {"resnet18", "mobilenet_v3_small"}) {
    CAPTURE(name);
    const fs::path dir = kSource / "tests/fixtures/models" / name;
    const Graph graph(import_onnx((dir / "model.onnx").string()), name);
    const HostTensor x = read_npy((dir / "input.npy").string());
    for (bool aug : {false, true}) {
      CAPTURE(aug);
      ExplainOptions options;
      options.methods = {"gradcam", "scorecam", "guided-gradcam"};
      options.target = "top3";
      options.aug_smooth = aug;
      options.chunk = 16;
      Explainer explainer(graph, x.shape[0], options, pool);
      Explanation out;
      for (int i = 0; i < 2; ++i) explainer.run(x, out);
      CHECK(allocations_during([&] { explainer.run(x, out); }) == 0);
      REQUIRE(out.results.size() == 3);
      CHECK(out.results[0].maps.numel() == 3 * x.shape[0] * x.shape[2] * x.shape[3]);
    }
  }
}

TEST_CASE("gpu steady state: Session explain (every method) and predict allocate nothing on the host (GPU)") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
  (void)runtime;  // the Session makes its own
  check_session(Device::CUDA);
}
