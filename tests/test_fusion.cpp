// Activation fusion (engine/fusion.h): which pairs merge and which must not, names that still resolve, and plans
// of the fused graph computing exactly what the unfused graph computes: forward values, gradients (plain and
// Guided Backprop) and every CAM method's maps, on a hand-made residual net and on the resnet18 golden fixture.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "engine/cam/explainer.h"
#include "engine/executor.h"
#include "engine/npy.h"
#include "weights/onnx/onnx_import.h"

using namespace camrt;
namespace fs = std::filesystem;

namespace {

HostTensor random_tensor(const Shape& shape, uint32_t seed, float scale = 0.5f) {
  HostTensor t(DType::F32, shape);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = normal(rng);
  return t;
}

Node node(const std::string& op, const std::string& name, std::vector<std::string> inputs, std::string output,
          nlohmann::json attrs = nlohmann::json::object()) {
  Node n;
  n.op = op;
  n.name = name;
  n.inputs = std::move(inputs);
  n.outputs = {std::move(output)};
  n.attrs = std::move(attrs);
  return n;
}

// x -> conv1 -> relu1 -> conv2 -> (+ relu1's output) -> relu2 -> conv3 (1x1) -> clip [0, 6] -> GAP -> flatten
// -> gemm. Fusable pairs: conv1+relu1, add+relu2, conv3+clip; then conv2 + the residual Add (+relu2) as one.
Model residual_model(bool logits_and_conv1 = false) {
  Model m;
  m.inputs = {ValueInfo{"x", DType::F32, {-1, 3, 8, 8}}};
  m.outputs = {ValueInfo{"y", DType::F32, {-1, 5}}};
  if (logits_and_conv1) m.outputs.push_back(ValueInfo{"c1", DType::F32, {-1, 4, 8, 8}});
  m.weights["w1"] = random_tensor({4, 3, 3, 3}, 1);
  m.weights["b1"] = random_tensor({4}, 2);
  m.weights["w2"] = random_tensor({4, 4, 3, 3}, 3);
  m.weights["b2"] = random_tensor({4}, 4);
  m.weights["w3"] = random_tensor({6, 4, 1, 1}, 5, 2.f);  // large: some values clip at 6
  m.weights["fc_w"] = random_tensor({5, 6}, 6);
  m.weights["fc_b"] = random_tensor({5}, 7);
  const nlohmann::json pad1 = {{"pads", {1, 1, 1, 1}}};
  m.nodes = {node("Conv", "conv1", {"x", "w1", "b1"}, "c1", pad1),
             node("Relu", "relu1", {"c1"}, "r1"),
             node("Conv", "conv2", {"r1", "w2", "b2"}, "c2", pad1),
             node("Add", "add", {"c2", "r1"}, "s"),
             node("Relu", "relu2", {"s"}, "r2"),
             node("Conv", "conv3", {"r2", "w3"}, "c3"),
             node("Clip", "clip", {"c3"}, "r3", {{"min", 0.0}, {"max", 6.0}}),
             node("GlobalAveragePool", "gap", {"r3"}, "g"),
             node("Flatten", "flatten", {"g"}, "f"),
             node("Gemm", "fc", {"f", "fc_w", "fc_b"}, "y", {{"transB", 1}})};
  return m;
}

double max_abs_diff(const float* a, const float* b, int64_t n) {
  double d = 0;
  for (int64_t i = 0; i < n; ++i) d = std::max(d, std::fabs(double(a[i]) - double(b[i])));
  return d;
}

// Forward output y and the gradient of y[:, 2] w.r.t. `target` on both graphs (guided or not).
struct Pass {
  HostTensor y, grad;
};
Pass run_pass(const Graph& graph, const HostTensor& x, const std::string& target, bool guided, ThreadPool& pool) {
  PlanOptions options;
  options.grad_targets = {target};
  Executor executor(graph, {{"x", x.shape}}, pool, options);
  executor.set_input("x", x);
  executor.forward();
  Pass pass;
  pass.y = executor.fetch(graph.find_value("y"));
  HostTensor seed(DType::F32, pass.y.shape);
  for (int64_t b = 0; b < x.shape[0]; ++b) seed.f32()[b * 5 + 2] = 1.f;
  executor.backward(seed, guided);
  const Tensor g = executor.gradient(target);
  pass.grad = HostTensor(DType::F32, g.shape);
  std::memcpy(pass.grad.bytes.data(), g.data, g.nbytes());
  return pass;
}

}  // namespace

TEST_CASE("fusion: Conv+Relu, Add+Relu, Conv+Clip and Conv+residual Add merge; absorbed names resolve to the fused node") {
  const auto model = std::make_shared<const Model>(residual_model());
  const Graph plain(model, "residual");
  const std::unique_ptr<Graph> fused = plain.fused({});
  CHECK(plain.fused_pairs() == 0);
  CHECK(fused->fused_pairs() == 4);
  CHECK(fused->nodes().size() == plain.nodes().size() - 4);
  // Pre-activation tensors and the conv output the Add read are gone; activation outputs remain, produced by the
  // fused nodes.
  CHECK(fused->find_value("c1") < 0);
  CHECK(fused->find_value("s") < 0);
  CHECK(fused->find_value("c3") < 0);
  CHECK(fused->find_value("c2") < 0);
  const int r2 = fused->find_value("r2");
  REQUIRE(r2 >= 0);
  const GraphNode& residual = fused->nodes()[fused->values()[r2].producer];
  CHECK(residual.node->op == "Conv");
  CHECK(residual.node->name == "conv2");
  CHECK(residual.node->inputs == std::vector<std::string>{"r1", "w2", "b2", "r1"});  // X, W, B, residual Z
  CHECK(residual.node->attrs.at("activation") == "relu");
  CHECK(fused->find_node("relu2") == fused->values()[r2].producer);
  CHECK(fused->find_node("add") == fused->values()[r2].producer);
  // It runs where the Add ran: after conv2's own position, before conv3.
  CHECK(fused->values()[r2].producer < fused->find_node("conv3"));
  const GraphNode& conv3 = fused->nodes()[fused->find_node("clip")];
  CHECK(conv3.node->name == "conv3");
  CHECK(conv3.node->attrs.at("activation") == "clip");
  CHECK(conv3.node->attrs.at("activation_min").get<float>() == 0.f);
  CHECK(conv3.node->attrs.at("activation_max").get<float>() == 6.f);
}

TEST_CASE("fusion: kept tensors, node names of kept layers and graph outputs are never absorbed") {
  const auto model = std::make_shared<const Model>(residual_model());
  const Graph plain(model, "residual");
  const auto keep_tensor = plain.fused({"c1"});
  CHECK(keep_tensor->fused_pairs() == 3);
  CHECK(keep_tensor->find_value("c1") >= 0);
  const auto keep_node = plain.fused({"conv3"});  // a node name keeps its first output
  CHECK(keep_node->fused_pairs() == 3);
  CHECK(keep_node->find_value("c3") >= 0);
  const auto keep_activation = plain.fused({"r1", "relu2"});  // activation outputs survive fusion anyway
  CHECK(keep_activation->fused_pairs() == 4);
  const auto keep_residual_input = plain.fused({"c2"});  // a kept conv output is no residual to absorb
  CHECK(keep_residual_input->fused_pairs() == 3);
  CHECK(keep_residual_input->nodes()[keep_residual_input->find_node("add")].node->op == "Add");

  const Graph two_outputs(std::make_shared<const Model>(residual_model(/*logits_and_conv1=*/true)), "residual2");
  const auto fused = two_outputs.fused({});
  CHECK(fused->fused_pairs() == 3);
  CHECK(fused->find_value("c1") >= 0);

  // A conv output read twice (by the Relu and by a second node) stays.
  Model shared = residual_model();
  shared.nodes.insert(shared.nodes.begin() + 2, node("Relu", "relu1b", {"c1"}, "r1b"));
  shared.nodes[3].inputs[0] = "r1b";  // conv2 reads the second relu
  const Graph shared_graph(std::make_shared<const Model>(shared), "shared");
  CHECK(shared_graph.fused({})->fused_pairs() == 3);  // add+relu2, conv3+clip, conv2+add
}

TEST_CASE("fusion: no residual fusion for an Add that broadcasts or a conv with an activation of its own") {
  // The Add's other operand is a (B, 4, 1, 1) pooled gate: a broadcast, not a residual.
  Model gate = residual_model();
  gate.nodes.insert(gate.nodes.begin() + 3, node("GlobalAveragePool", "pool_gate", {"r1"}, "gate"));
  gate.nodes[4].inputs = {"c2", "gate"};
  const Graph gate_graph(std::make_shared<const Model>(gate), "gate");
  const auto gate_fused = gate_graph.fused({});
  CHECK(gate_fused->fused_pairs() == 3);  // conv1+relu1, add+relu2, conv3+clip
  CHECK(gate_fused->nodes()[gate_fused->find_node("add")].node->op == "Add");
  // conv2 -> relu (fused into conv2) -> Add: act(conv) + z is not conv + z.
  Model activated = residual_model();
  activated.nodes.insert(activated.nodes.begin() + 3, node("Relu", "relu_c2", {"c2"}, "rc2"));
  activated.nodes[4].inputs = {"rc2", "r1"};
  const Graph activated_graph(std::make_shared<const Model>(activated), "activated");
  const auto activated_fused = activated_graph.fused({});
  CHECK(activated_fused->fused_pairs() == 4);  // conv1+relu1, conv2+relu_c2, add+relu2, conv3+clip
  CHECK(activated_fused->nodes()[activated_fused->find_node("add")].node->op == "Add");
}

TEST_CASE("fusion: the fused graph computes the same outputs and gradients, plain and guided, bit for bit") {
  const auto model = std::make_shared<const Model>(residual_model());
  const Graph plain(model, "residual");
  ThreadPool pool(2);
  const HostTensor x = random_tensor({2, 3, 8, 8}, 11, 1.f);
  for (const std::string target : {"x", "r1", "r2"}) {
    const auto fused = plain.fused({target});
    for (bool guided : {false, true}) {
      CAPTURE(target);
      CAPTURE(guided);
      const Pass want = run_pass(plain, x, target, guided, pool);
      const Pass got = run_pass(*fused, x, target, guided, pool);
      REQUIRE(want.y.shape == got.y.shape);
      CHECK(max_abs_diff(want.y.f32(), got.y.f32(), want.y.numel()) == 0.0);
      REQUIRE(want.grad.shape == got.grad.shape);
      double grad_max = 0;
      for (int64_t i = 0; i < want.grad.numel(); ++i) grad_max = std::max(grad_max, std::fabs(double(want.grad.f32()[i])));
      CHECK(grad_max > 0);  // the comparison below is about something
      CHECK(max_abs_diff(want.grad.f32(), got.grad.f32(), want.grad.numel()) == 0.0);
    }
  }
  // The Clip's both bounds are hit, so the fused clip and its gradient mask are exercised at both ends.
  PlanOptions keep_c3;
  keep_c3.keep = {"c3"};
  Executor executor(plain, {{"x", x.shape}}, pool, keep_c3);
  executor.set_input("x", x);
  executor.forward();
  const HostTensor c3 = executor.fetch(plain.find_value("c3"));
  int64_t below = 0, above = 0;
  for (int64_t i = 0; i < c3.numel(); ++i) below += c3.f32()[i] < 0.f, above += c3.f32()[i] > 6.f;
  CHECK(below > 0);
  CHECK(above > 0);
}

TEST_CASE("fusion: every CAM method gives the same maps on the fused and the unfused resnet18 fixture") {
  const fs::path dir = fs::path(CAMRT_SOURCE_DIR) / "tests/fixtures/models/resnet18";
  const auto model = std::make_shared<const Model>(import_onnx((dir / "model.onnx").string()));
  const Graph graph(model, "resnet18");
  CHECK(graph.fused({})->fused_pairs() == 25);  // 9 Conv+Relu, 8 residual Add+Relu, 8 Conv + residual Add
  const HostTensor x = read_npy((dir / "input.npy").string());
  ThreadPool pool(2);
  ExplainOptions options;
  options.methods = {"gradcam", "gradcampp", "xgradcam", "layercam", "eigencam", "normgrad", "scorecam",
                     "ablationcam", "guided-gradcam", "smooth-gradcampp"};
  options.smooth_samples = 2;
  options.chunk = 16;
  ExplainOptions unfused_options = options;
  unfused_options.fuse_activations = false;
  Explainer fused(graph, x.shape[0], options, pool);
  Explainer unfused(graph, x.shape[0], unfused_options, pool);
  CHECK(fused.layer_names() == unfused.layer_names());
  CHECK(fused.main_plan_stats().forward_nodes < unfused.main_plan_stats().forward_nodes);
  const Explanation a = fused.run(x), b = unfused.run(x);
  CHECK(a.classes == b.classes);
  REQUIRE(a.results.size() == b.results.size());
  for (size_t i = 0; i < a.results.size(); ++i) {
    CAPTURE(a.results[i].method);
    REQUIRE(a.results[i].maps.shape == b.results[i].maps.shape);
    CHECK(max_abs_diff(a.results[i].maps.f32(), b.results[i].maps.f32(), a.results[i].maps.numel()) == 0.0);
  }
}

TEST_CASE("fusion: a broadcasting Add + Relu/Clip fuses and its gradients (reduced over broadcast dims) match") {
  ThreadPool pool(2);
  for (const std::string activation : {"Relu", "Clip"}) {
    for (bool small_first : {false, true}) {
      CAPTURE(activation);
      CAPTURE(small_first);
      Model m;
      m.inputs = {ValueInfo{"x", DType::F32, {2, 3, 4, 5}}, ValueInfo{"b", DType::F32, {1, 3, 1, 1}}};
      m.outputs = {ValueInfo{"y", DType::F32, {2, 3, 4, 5}}};
      m.nodes = {node("Add", "add", small_first ? std::vector<std::string>{"b", "x"} : std::vector<std::string>{"x", "b"}, "s"),
                 activation == "Relu" ? node("Relu", "act", {"s"}, "y")
                                      : node("Clip", "act", {"s"}, "y", {{"min", -0.25}, {"max", 0.5}})};
      const Graph plain(std::make_shared<const Model>(m), "add");
      const auto fused = plain.fused({});
      REQUIRE(fused->fused_pairs() == 1);
      const HostTensor x = random_tensor({2, 3, 4, 5}, 21, 1.f), b = random_tensor({1, 3, 1, 1}, 22, 1.f);
      const HostTensor seed = random_tensor({2, 3, 4, 5}, 23, 1.f);
      auto run = [&](const Graph& g, std::vector<HostTensor>* grads) {
        PlanOptions options;
        options.grad_targets = {"x", "b"};
        Executor executor(g, {{"x", x.shape}, {"b", b.shape}}, pool, options);
        executor.set_input("x", x);
        executor.set_input("b", b);
        executor.forward();
        HostTensor y = executor.fetch(g.find_value("y"));
        executor.backward(seed);
        for (const char* name : {"x", "b"}) {
          const Tensor t = executor.gradient(name);
          grads->emplace_back(DType::F32, t.shape);
          std::memcpy(grads->back().bytes.data(), t.data, t.nbytes());
        }
        return y;
      };
      std::vector<HostTensor> want_grads, got_grads;
      const HostTensor want = run(plain, &want_grads), got = run(*fused, &got_grads);
      CHECK(max_abs_diff(want.f32(), got.f32(), want.numel()) == 0.0);
      for (size_t i = 0; i < 2; ++i) {
        CHECK(max_abs_diff(want_grads[i].f32(), got_grads[i].f32(), want_grads[i].numel()) == 0.0);
        double norm = 0;
        for (int64_t j = 0; j < want_grads[i].numel(); ++j) norm += std::fabs(want_grads[i].f32()[j]);
        CHECK(norm > 0);
      }
    }
  }
}

TEST_CASE("fusion: a Conv's residual input must be float32 of the output's shape") {
  Model m = residual_model();
  m.nodes[2].inputs = {"r1", "w2", "b2", "x"};  // x is (B, 3, 8, 8), the conv's output (B, 4, 8, 8)
  m.nodes.erase(m.nodes.begin() + 3);           // the Add
  m.nodes[3].inputs = {"c2"};                   // relu2 reads the conv
  const Graph graph(std::make_shared<const Model>(m), "bad-residual");
  CHECK_THROWS_WITH_AS(graph.infer(graph.input_shapes_for_batch(1)), doctest::Contains("residual Z"), Error);
}
