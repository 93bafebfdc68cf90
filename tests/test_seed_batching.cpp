// Several seeds per backward pass (PlanOptions::seeds_per_backward): one pass over S stacked seeds gives exactly
// the gradients of S passes of one seed each, plain and Guided Backprop, for gradient targets deep in the network
// (every op kind's backward on the path, once over all seeds or once per seed) and at the input; models whose
// tensors do not carry the batch in dim 0 fall back to one seed per pass.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "engine/executor.h"
#include "engine/npy.h"
#include "weights/onnx/onnx_import.h"

using namespace camrt;
namespace fs = std::filesystem;

namespace {

const fs::path kModels = fs::path(CAMRT_SOURCE_DIR) / "tests/fixtures/models";

std::vector<float> random_values(int64_t n, uint32_t seed) {
  std::vector<float> v(static_cast<size_t>(n));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (auto& x : v) x = normal(rng);
  return v;
}

// Gradients of `targets` for S random seeds: from one plan taking all S per pass, and from a plan taking one
// per pass called S times, on the model's graph or its fused graph (convs with a fused ReLU and a residual input
// take the seeds at once: Op::backward_over_seeds). Compared bit for bit.
void check_stacked_equals_separate(const std::string& model, const std::vector<std::string>& targets, bool guided,
                                   int64_t S, bool fused = false) {
  const Graph plain(import_onnx((kModels / model / "model.onnx").string()), model);
  const std::unique_ptr<Graph> fused_graph = fused ? plain.fused(targets) : nullptr;
  const Graph& graph = fused ? *fused_graph : plain;
  ThreadPool pool(2);
  const HostTensor x = read_npy((kModels / model / "input.npy").string());
  const std::string input = graph.values()[graph.input_ids()[0]].name;
  PlanOptions options;
  options.grad_targets = targets;
  options.repeat_backward = true;
  Executor one(graph, {{input, x.shape}}, pool, options);
  options.seeds_per_backward = S;
  Executor stacked(graph, {{input, x.shape}}, pool, options);
  REQUIRE(stacked.seeds_per_backward() == S);
  REQUIRE(one.seeds_per_backward() == 1);

  const int out = graph.output_ids()[0];
  const int64_t seed_numel = checked_numel(one.descs()[out].shape);
  const std::vector<float> seeds = random_values(S * seed_numel, 11);
  one.set_input(input, x);
  one.forward();
  stacked.set_input(input, x);
  stacked.forward();
  stacked.backward(seeds.data(), guided);
  for (int64_t s = 0; s < S; ++s) {
    one.backward(seeds.data() + s * seed_numel, guided);
    for (const std::string& target : targets) {
      CAPTURE(target);
      CAPTURE(s);
      const Tensor expected = one.gradient(target);
      const Tensor got = stacked.gradient(target);
      REQUIRE(got.shape[0] == S * expected.shape[0]);
      const float* slice = got.f32() + s * expected.numel();
      int64_t differ = 0;
      double largest = 0;
      for (int64_t i = 0; i < expected.numel(); ++i) {
        differ += slice[i] != expected.f32()[i];
        largest = std::max(largest, std::fabs(double(expected.f32()[i])));
      }
      CHECK(differ == 0);
      CHECK(largest > 0);  // the comparison compared something
    }
  }
}

}  // namespace

TEST_CASE("seed batching: resnet18, an early layer and the input, plain and guided") {
  // The model's own nodes (no fusion): per-seed steps (Relu, MaxPool read activations) and all-seed steps (Conv,
  // residual Add, GlobalAveragePool, Flatten, Gemm read none). Target 1: the stem's MaxPool output.
  Graph graph(import_onnx((kModels / "resnet18" / "model.onnx").string()), "resnet18");
  const std::string early = graph.nodes()[2].outputs.empty() ? "" : graph.values()[graph.nodes()[2].outputs[0]].name;
  const std::string input = graph.values()[graph.input_ids()[0]].name;
  check_stacked_equals_separate("resnet18", {early, input}, false, 3);
  check_stacked_equals_separate("resnet18", {input}, true, 2);
}

TEST_CASE("seed batching: the fused resnet18 (conv+ReLU, conv+residual+ReLU take all seeds at once), plain and guided") {
  Graph graph(import_onnx((kModels / "resnet18" / "model.onnx").string()), "resnet18");
  REQUIRE(graph.fused({})->fused_pairs() > 0);
  const std::string input = graph.values()[graph.input_ids()[0]].name;
  check_stacked_equals_separate("resnet18", {input}, false, 3, /*fused=*/true);
  check_stacked_equals_separate("resnet18", {input}, true, 3, /*fused=*/true);
}

TEST_CASE("seed batching: mobilenet_v3_small (squeeze-excitation gates, hardswish) at the input") {
  Graph graph(import_onnx((kModels / "mobilenet_v3_small" / "model.onnx").string()), "m");
  check_stacked_equals_separate("mobilenet_v3_small", {graph.values()[graph.input_ids()[0]].name}, false, 3);
}

TEST_CASE("seed batching: a model that only runs at its own batch falls back to one seed per pass") {
  // x (1, 2, 4, 4) -> Relu -> Reshape to the fixed shape (1, 32) -> Gemm: at batch 2 the Reshape cannot hold.
  Model m;
  m.inputs = {ValueInfo{"x", DType::F32, {1, 2, 4, 4}}};
  m.outputs = {ValueInfo{"y", DType::F32, {1, 3}}};
  HostTensor shape(DType::I64, {2});
  reinterpret_cast<int64_t*>(shape.bytes.data())[0] = 1;
  reinterpret_cast<int64_t*>(shape.bytes.data())[1] = 32;
  m.weights["shape"] = shape;
  HostTensor w(DType::F32, {32, 3});
  const std::vector<float> wv = random_values(96, 3);
  std::memcpy(w.f32(), wv.data(), wv.size() * sizeof(float));
  m.weights["w"] = w;
  auto node = [](const std::string& op, std::vector<std::string> in, const std::string& out) {
    Node n;
    n.op = op;
    n.name = op;
    n.inputs = std::move(in);
    n.outputs = {out};
    return n;
  };
  m.nodes = {node("Relu", {"x"}, "r"), node("Reshape", {"r", "shape"}, "flat"), node("MatMul", {"flat", "w"}, "y")};
  Graph graph(std::move(m), "fixed-batch");
  ThreadPool pool(1);
  PlanOptions options;
  options.grad_targets = {"x"};
  options.seeds_per_backward = 4;
  Executor plan(graph, {{"x", {1, 2, 4, 4}}}, pool, options);
  CHECK(plan.seeds_per_backward() == 1);
  CHECK(plan.gradient("x").shape == (Shape{1, 2, 4, 4}));
  HostTensor x(DType::F32, {1, 2, 4, 4});
  const std::vector<float> xv = random_values(32, 4);
  std::memcpy(x.f32(), xv.data(), xv.size() * sizeof(float));
  plan.set_input("x", x);
  plan.forward();
  const std::vector<float> seed = {1.f, 0.f, 0.f};
  plan.backward(seed.data());
  // dy/dx = w[:, 0] where x > 0, else 0.
  const float* g = plan.gradient("x").f32();
  for (int64_t i = 0; i < 32; ++i) CHECK(g[i] == (xv[i] > 0 ? wv[i * 3] : 0.f));
}
