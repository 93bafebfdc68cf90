// Channels-last storage (PlanOptions::channels_last) on the CPU reference twins. Half: which nodes run on NHWC half
// and where the plan converts, that a plan's backward part stays float32 (bit for bit what a float32 plan computes
// where no half value reaches it), and how close the half forward comes to float32 and to PyTorch on the golden
// models, forward, Grad-CAM and every CAM method through the Explainer's plans (Score-CAM chunks, Ablation-CAM
// tails, noisy copies). Float32: the same plans compute the NCHW plans' values.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>

#include "engine/cam/explainer.h"
#include "engine/executor.h"
#include "engine/npy.h"
#include "weights/onnx/onnx_import.h"

using namespace camrt;
namespace fs = std::filesystem;

namespace {

const fs::path kResnet18 = fs::path(CAMRT_SOURCE_DIR) / "tests/fixtures/models/resnet18";

struct Fixture {
  Graph plain{import_onnx((kResnet18 / "model.onnx").string()), "resnet18"};
  HostTensor x = read_npy((kResnet18 / "input.npy").string());
  std::string input = plain.values()[plain.input_ids()[0]].name;
  // The last spatial activation: the input of the global average pool.
  std::string last_activation() const {
    for (const auto& node : plain.nodes())
      if (node.node->op == "GlobalAveragePool") return plain.values()[node.inputs[0]].name;
    return {};
  }
};

int64_t count_ops(const Graph& graph, const std::string& op) {
  int64_t n = 0;
  for (const auto& node : graph.nodes()) n += node.node->op == op;
  return n;
}

double max_abs(const float* a, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(double(a[i])));
  return m;
}

double max_abs_diff(const float* a, const float* b, int64_t n) {
  double d = 0;
  for (int64_t i = 0; i < n; ++i) d = std::max(d, std::fabs(double(a[i]) - double(b[i])));
  return d;
}

PlanOptions with_half(PlanOptions options) {
  options.channels_last = ChannelsLast::kHalf;
  return options;
}

}  // namespace

TEST_CASE("half storage: every conv and max pool of a forward plan runs half; two conversions; logits near float32") {
  Fixture f;
  const auto fused = f.plain.fused({});
  ThreadPool pool(2);
  Executor reference(*fused, {{f.input, f.x.shape}}, pool);
  Executor half(*fused, {{f.input, f.x.shape}}, pool, with_half({}));
  CHECK(reference.stats().channels_last_nodes == 0);
  CHECK(reference.stats().conversions == 0);
  CHECK(half.stats().channels_last_nodes == count_ops(*fused, "Conv") + count_ops(*fused, "MaxPool"));
  // The input into half, the last activation back to float32 for the global average pool: nothing in between.
  CHECK(half.stats().conversions == 2);
  // Half activations take half the bytes: all buffers together (no reuse), the two converted copies included,
  // come to less than the float32 plan's (0.82 of it on this fixture, whose float32 input and head weigh in). The
  // arena's peak need not move here: the float32 input stays alive for the whole plan.
  CHECK(half.stats().naive_bytes < reference.stats().naive_bytes);

  const int out = fused->output_ids()[0];
  reference.set_input(f.input, f.x);
  reference.forward();
  const HostTensor want = reference.fetch(out);
  half.set_input(f.input, f.x);
  half.forward();
  const HostTensor got = half.fetch(out);
  half.forward();
  const HostTensor again = half.fetch(out);
  REQUIRE(want.shape == got.shape);
  CHECK(max_abs_diff(got.f32(), again.f32(), got.numel()) == 0.0);  // deterministic
  // fp16 keeps 11 significant bits: each of the ~20 layers rounds its output to a relative 2^-11 (4.9e-4), and the
  // errors add up through the depth. 1% of the largest logit bounds that with room; a layout mistake (a transposed
  // channel order, a wrong weight layout) moves logits by their own size.
  const double scale = max_abs(want.f32(), want.numel());
  REQUIRE(scale > 0);
  const double err = max_abs_diff(want.f32(), got.f32(), want.numel()) / scale;
  MESSAGE("resnet18 fixture, half storage vs float32: max logit error " << err << " of the largest logit");
  CHECK(err < 1e-2);
  CHECK(err > 0);  // it did run in half
}

TEST_CASE("half storage: a Grad-CAM plan runs its forward half and its backward float32; a guided plan stays float32") {
  Fixture f;
  const std::string layer = f.last_activation();
  REQUIRE(!layer.empty());
  const auto fused = f.plain.fused({layer});
  ThreadPool pool(2);
  PlanOptions gradcam;
  gradcam.grad_targets = {layer};
  gradcam.keep = {layer};
  Executor reference(*fused, {{f.input, f.x.shape}}, pool, gradcam);
  Executor half(*fused, {{f.input, f.x.shape}}, pool, with_half(gradcam));
  CHECK(half.stats().channels_last_nodes == count_ops(*fused, "Conv") + count_ops(*fused, "MaxPool"));
  CHECK(half.stats().conversions == 2);  // input in; the explained layer out (kept, and read by the pool)

  const int out = fused->output_ids()[0];
  const int64_t classes = reference.descs()[out].shape[1];
  std::vector<float> seed(static_cast<size_t>(f.x.shape[0] * classes), 0.f);
  for (int64_t b = 0; b < f.x.shape[0]; ++b) seed[static_cast<size_t>(b * classes + (7 * b + 3) % classes)] = 1.f;
  for (Executor* e : {&reference, &half}) {
    e->set_input(f.input, f.x);
    e->forward();
    e->backward(seed.data());
  }
  const Tensor a_want = reference.value(layer), a_got = half.value(layer);
  REQUIRE(a_want.shape == a_got.shape);
  CHECK(a_got.dtype == DType::F32);
  CHECK(a_got.layout == Layout::NCHW);
  const double a_scale = max_abs(a_want.f32(), a_want.numel());
  const double a_err = max_abs_diff(a_want.f32(), a_got.f32(), a_want.numel()) / a_scale;
  MESSAGE("explained activation, half vs float32: " << a_err << " of its largest value");
  CHECK(a_err < 1e-2);
  // From the logits down to the layer everything is float32 and reads no half value: the gradient of a linear head
  // (pool, flatten, fc) does not depend on the activations at all, so it is the float32 plan's bit for bit.
  const Tensor g_want = reference.gradient(layer), g_got = half.gradient(layer);
  CHECK(max_abs(g_want.f32(), g_want.numel()) > 0);
  CHECK(max_abs_diff(g_want.f32(), g_got.f32(), g_want.numel()) == 0.0);

  // Guided Backprop to the input: every node runs backward, so none runs half and the plan is the float32 one.
  PlanOptions guided;
  guided.grad_targets = {f.input};
  const auto fused_input = f.plain.fused({f.input});
  Executor guided_half(*fused_input, {{f.input, f.x.shape}}, pool, with_half(guided));
  CHECK(guided_half.stats().channels_last_nodes == 0);
  CHECK(guided_half.stats().conversions == 0);
}

TEST_CASE("half storage: every CAM method's maps through half-storage plans stay near the float32 maps") {
  Fixture f;
  ThreadPool pool(2);
  ExplainOptions options;
  options.methods = {"gradcam", "gradcampp", "layercam", "eigencam", "scorecam", "ablationcam", "guided-gradcam",
                     "smooth-gradcampp"};
  options.smooth_samples = 2;
  options.chunk = 16;
  ExplainOptions half_options = options;
  half_options.channels_last = ChannelsLast::kHalf;
  Explainer reference(f.plain, f.x.shape[0], options, pool);
  Explainer half(f.plain, f.x.shape[0], half_options, pool);
  CHECK(reference.main_plan_stats().channels_last_nodes == 0);
  CHECK(half.main_plan_stats().channels_last_nodes > 0);
  const Explanation want = reference.run(f.x), got = half.run(f.x);
  CHECK(want.classes == got.classes);
  REQUIRE(want.results.size() == got.results.size());
  for (size_t i = 0; i < want.results.size(); ++i) {
    const std::string& method = want.results[i].method;
    CAPTURE(method);
    REQUIRE(want.results[i].maps.shape == got.results[i].maps.shape);
    const double err = max_abs_diff(want.results[i].maps.f32(), got.results[i].maps.f32(), want.results[i].maps.numel());
    MESSAGE(method << ": max map difference, half storage vs float32: " << err);
    // Maps are normalized to [0, 1]. The activations the map weighs carry fp16's ~1e-3 relative error, and
    // Score-CAM's and Ablation-CAM's weights are differences of scores from half forwards; 5% bounds what fp16 does
    // to a map and catches what a wrong layout would (maps then differ by their own size).
    CHECK(err < 5e-2);
  }
}

TEST_CASE("half storage: every golden model (depthwise, SE gates, concat, BN) stays near PyTorch's logits, fused or not") {
  // Each model of tests/fixtures/models against the PyTorch logits its generator recorded (tools/golden): half
  // storage mixes half nodes with float32 ones that read their outputs (SE gates' broadcasting Mul, DenseNet's
  // Concat, hardswish), so every kind of conversion boundary is crossed somewhere.
  const fs::path root = fs::path(CAMRT_SOURCE_DIR) / "tests/fixtures/models";
  ThreadPool pool(2);
  int64_t models = 0;
  for (const auto& entry : fs::directory_iterator(root)) {
    const fs::path dir = entry.path();
    if (!fs::exists(dir / "model.onnx") || !fs::exists(dir / "logits.npy")) continue;
    const Graph plain(import_onnx((dir / "model.onnx").string()), dir.filename().string());
    const auto fused = plain.fused({});
    const HostTensor x = read_npy((dir / "input.npy").string());
    const HostTensor torch_logits = read_npy((dir / "logits.npy").string());
    const std::string input = plain.values()[plain.input_ids()[0]].name;
    const std::string name = dir.filename().string();
    const double scale = max_abs(torch_logits.f32(), torch_logits.numel());
    // How much this model amplifies one fp16-sized error: the float32 plan's logits for the input scaled by
    // (1 +- 2^-11), signs alternating pseudo-randomly. Small random-weight nets differ a lot here (resnet18 moves
    // 0.07% of its largest logit, the width-0.25 MobileNetV2 fixture 0.96%, measured).
    HostTensor nudged = x;
    uint32_t state = 1;
    for (int64_t i = 0; i < x.numel(); ++i) {
      state = state * 1664525u + 1013904223u;
      nudged.f32()[i] *= 1.f + ((state >> 31) ? 1.f : -1.f) * std::ldexp(1.f, -11);
    }
    Executor reference(plain, {{input, x.shape}}, pool);
    reference.set_input(input, nudged);
    reference.forward();
    const HostTensor nudged_logits = reference.fetch(plain.output_ids()[0]);
    const double sensitivity = max_abs_diff(nudged_logits.f32(), torch_logits.f32(), scale > 0 ? torch_logits.numel() : 0) / scale;
    for (const Graph* graph : {&plain, static_cast<const Graph*>(fused.get())}) {
      CAPTURE(name);
      const bool is_fused = graph != &plain;
      CAPTURE(is_fused);
      Executor half(*graph, {{input, x.shape}}, pool, with_half({}));
      CHECK(half.stats().channels_last_nodes > 0);
      half.set_input(input, x);
      half.forward();
      const HostTensor got = half.fetch(graph->output_ids()[0]);
      REQUIRE(got.numel() == torch_logits.numel());
      const double err = max_abs_diff(got.f32(), torch_logits.f32(), got.numel()) / scale;
      MESSAGE(name << std::string(is_fused ? " (fused)" : "") << ": half storage vs PyTorch logits " << err << " of the largest (one "
                   << "fp16 nudge of the input: " << sensitivity << "), " << half.stats().channels_last_nodes << " half nodes, "
                   << half.stats().conversions << " conversions");
      // Half storage rounds every layer's output by a relative 2^-11, each such error amplified about as the input
      // nudge is (less for later layers): a few nudges' worth, at least the 1e-2 of the first test case. A layout
      // mistake moves logits by their own size.
      CHECK(err < std::max(1e-2, 5 * sensitivity));
    }
    ++models;
  }
  CHECK(models >= 5);
}

TEST_CASE("channels-last float: every golden model's NHWC float32 plan computes what its NCHW plan computes") {
  // Float32 channels-last changes where elements lie, not their values: the CPU twin transposes exactly and runs
  // the same convolution; only the bias is added after the convolution's sum instead of inside the depthwise
  // kernel's, a reordering of one addition. So the logits agree to float32 rounding (exactly, for most models).
  const fs::path root = fs::path(CAMRT_SOURCE_DIR) / "tests/fixtures/models";
  ThreadPool pool(2);
  int64_t models = 0;
  for (const auto& entry : fs::directory_iterator(root)) {
    const fs::path dir = entry.path();
    if (!fs::exists(dir / "model.onnx") || !fs::exists(dir / "input.npy")) continue;
    const Graph plain(import_onnx((dir / "model.onnx").string()), dir.filename().string());
    const auto fused = plain.fused({});
    const HostTensor x = read_npy((dir / "input.npy").string());
    const std::string input = plain.values()[plain.input_ids()[0]].name;
    const std::string name = dir.filename().string();
    CAPTURE(name);
    PlanOptions nhwc;
    nhwc.channels_last = ChannelsLast::kFloat;
    Executor reference(*fused, {{input, x.shape}}, pool);
    Executor channels_last(*fused, {{input, x.shape}}, pool, nhwc);
    CHECK(channels_last.stats().channels_last_nodes > 0);
    CHECK(channels_last.stats().channels_last_nodes == [&] {
      Executor half(*fused, {{input, x.shape}}, pool, with_half({}));
      return half.stats().channels_last_nodes;  // the same nodes as half storage
    }());
    for (Executor* e : {&reference, &channels_last}) {
      e->set_input(input, x);
      e->forward();
    }
    const int out = fused->output_ids()[0];
    const HostTensor want = reference.fetch(out), got = channels_last.fetch(out);
    const double scale = max_abs(want.f32(), want.numel());
    const double err = max_abs_diff(want.f32(), got.f32(), want.numel()) / scale;
    MESSAGE(name << ": channels-last float32 vs NCHW logits " << err << " of the largest");
    CHECK(err < 1e-5);  // float32 reorderings of a few additions, amplified by the depth: far below fp16's 1e-3
    ++models;
  }
  CHECK(models >= 5);
}

TEST_CASE("channels-last float: every CAM method's maps equal the NCHW plans' maps bit for bit on resnet18") {
  Fixture f;
  ThreadPool pool(2);
  ExplainOptions options;
  options.methods = {"gradcam", "gradcampp", "layercam", "eigencam", "scorecam", "ablationcam", "guided-gradcam",
                     "smooth-gradcampp"};
  options.smooth_samples = 2;
  options.chunk = 16;
  ExplainOptions nhwc_options = options;
  nhwc_options.channels_last = ChannelsLast::kFloat;
  Explainer reference(f.plain, f.x.shape[0], options, pool);
  Explainer nhwc(f.plain, f.x.shape[0], nhwc_options, pool);
  CHECK(nhwc.main_plan_stats().channels_last_nodes > 0);
  const Explanation want = reference.run(f.x), got = nhwc.run(f.x);
  CHECK(want.classes == got.classes);
  REQUIRE(want.results.size() == got.results.size());
  for (size_t i = 0; i < want.results.size(); ++i) {
    CAPTURE(want.results[i].method);
    const double err =
        max_abs_diff(want.results[i].maps.f32(), got.results[i].maps.f32(), want.results[i].maps.numel());
    // resnet18 has no depthwise conv, so not even the bias moves: the same float32 operations, bit for bit.
    CHECK(err == 0.0);
  }
}
