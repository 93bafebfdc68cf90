// Small models built in code for tests of the explain pipeline, shared by the CPU and GPU suites.
#pragma once
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "weights/model.h"

namespace camrt::testing {

// x (B, 2, 6, 6) -> Reshape (2, 6B, 6) -> Relu -> Reshape back -> conv 2->4 -> Relu "a" -> conv 4->16 -> Relu ->
// conv 16->16 -> Relu -> GlobalAveragePool -> Flatten -> Gemm 16->5 "y", with 3x3 convs (pad 1) and seeded weights. Between the Reshapes
// the batch is not in dim 0, so a plan whose backward reaches the input (Guided Backprop) takes one seed per pass
// while one ending at "a" stacks them. fixed_batch > 0: the input has that fixed batch instead of -1. Class 4's
// row of the last layer is zero (weights and bias): its logit is exactly 0 whatever the input.
inline Model batch_folding_model(int64_t fixed_batch) {
  auto tensor = [](Shape shape, uint32_t seed) {
    HostTensor t(DType::F32, std::move(shape));
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.f, 0.5f);
    for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = normal(rng);
    return t;
  };
  auto shape_tensor = [](std::vector<int64_t> dims) {
    HostTensor t(DType::I64, {static_cast<int64_t>(dims.size())});
    std::memcpy(t.bytes.data(), dims.data(), dims.size() * sizeof(int64_t));
    return t;
  };
  auto node = [](const std::string& op, const std::string& name, std::vector<std::string> inputs, const std::string& output,
                 nlohmann::json attrs = nlohmann::json::object()) {
    Node n;
    n.op = op;
    n.name = name;
    n.inputs = std::move(inputs);
    n.outputs = {output};
    n.attrs = std::move(attrs);
    return n;
  };
  const int64_t batch_dim = fixed_batch > 0 ? fixed_batch : -1;
  Model m;
  m.inputs = {ValueInfo{"x", DType::F32, {batch_dim, 2, 6, 6}}};
  m.outputs = {ValueInfo{"y", DType::F32, {batch_dim, 5}}};
  m.weights["folded"] = shape_tensor({2, -1, 6});
  m.weights["unfolded"] = shape_tensor({-1, 2, 6, 6});
  m.weights["w1"] = tensor({4, 2, 3, 3}, 1);
  m.weights["b1"] = tensor({4}, 2);
  m.weights["w2"] = tensor({16, 4, 3, 3}, 3);
  m.weights["b2"] = tensor({16}, 4);
  m.weights["w3"] = tensor({16, 16, 3, 3}, 7);
  m.weights["b3"] = tensor({16}, 8);
  m.weights["fc_w"] = tensor({5, 16}, 5);
  m.weights["fc_b"] = tensor({5}, 6);
  for (int64_t i = 0; i < 16; ++i) m.weights["fc_w"].f32()[4 * 16 + i] = 0.f;
  m.weights["fc_b"].f32()[4] = 0.f;
  const nlohmann::json pad1 = {{"pads", {1, 1, 1, 1}}};
  m.nodes = {node("Reshape", "fold", {"x", "folded"}, "xf"),
             node("Relu", "relu0", {"xf"}, "rf"),
             node("Reshape", "unfold", {"rf", "unfolded"}, "r0"),
             node("Conv", "conv1", {"r0", "w1", "b1"}, "c1", pad1),
             node("Relu", "relu1", {"c1"}, "a"),
             node("Conv", "conv2", {"a", "w2", "b2"}, "c2", pad1),
             node("Relu", "relu2", {"c2"}, "r2"),
             node("Conv", "conv3", {"r2", "w3", "b3"}, "c3", pad1),
             node("Relu", "relu3", {"c3"}, "r3"),
             node("GlobalAveragePool", "gap", {"r3"}, "g"),
             node("Flatten", "flatten", {"g"}, "f"),
             node("Gemm", "fc", {"f", "fc_w", "fc_b"}, "y", {{"transB", 1}})};
  return m;
}

inline HostTensor random_images(int64_t B, uint32_t seed) {
  HostTensor x(DType::F32, {B, 2, 6, 6});
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] = normal(rng);
  return x;
}

}  // namespace camrt::testing
