// Backward passes of the element-wise op families (activations, Identity/Dropout, Add/Sub/Mul/Div with
// broadcasting, BatchNormalization, Softmax): central finite differences (tests/gradcheck.h) on inputs kept away
// from kinks, a naive double-precision reference for large broadcast reductions, PyTorch autograd values at the
// kinks, and the contracts the executor relies on (accumulation, backward_needs flags, reading only flagged values).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>

#include "engine/ops/op.h"
#include "tests/gradcheck.h"

using namespace camrt;
using camrt::testing::gradcheck;
using camrt::testing::random_tensor;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// float32 unit roundoff (2^-24): the relative error of one rounding.
constexpr double kRoundoff = 5.96e-8;

Node make_node(const std::string& op, std::vector<std::string> inputs, std::vector<std::string> outputs = {"y"},
               nlohmann::json attrs = nlohmann::json::object()) {
  Node node;
  node.op = op;
  node.name = "n_" + op;
  node.inputs = std::move(inputs);
  node.outputs = std::move(outputs);
  node.attrs = std::move(attrs);
  return node;
}

std::unique_ptr<Op> build(const Node& node) {
  OpFactory factory = find_op(node.op);
  const bool registered = factory != nullptr;
  REQUIRE(registered);
  return factory(node);
}

// Moves every value closer than `margin` to a breakpoint out to breakpoint +- margin (keeping its side), so a
// finite difference with step h < margin never straddles a kink. Breakpoints must be > 2 * margin apart.
void push_from_breakpoints(HostTensor& t, const std::vector<float>& breakpoints, float margin) {
  for (size_t i = 0; i + 1 < breakpoints.size(); ++i) REQUIRE(breakpoints[i + 1] - breakpoints[i] > 2 * margin);
  for (int64_t i = 0; i < t.numel(); ++i) {
    float& v = t.f32()[i];
    for (float bp : breakpoints)
      if (std::fabs(v - bp) < margin) v = v >= bp ? bp + margin : bp - margin;
  }
  for (int64_t i = 0; i < t.numel(); ++i)
    for (float bp : breakpoints) REQUIRE(std::fabs(t.f32()[i] - bp) >= margin * 0.999f);
}

// Random values with |v| in [lo, hi] and random sign (Div denominators).
HostTensor signed_magnitudes(const Shape& shape, uint32_t seed, float lo, float hi) {
  HostTensor t = random_tensor(shape, seed, lo, hi);
  std::mt19937 rng(seed + 1000);
  for (int64_t i = 0; i < t.numel(); ++i)
    if (rng() & 1) t.f32()[i] = -t.f32()[i];
  return t;
}

std::vector<TensorDesc> descs_of(const std::vector<HostTensor>& inputs, const std::vector<bool>& constant) {
  std::vector<TensorDesc> descs;
  for (size_t i = 0; i < inputs.size(); ++i)
    descs.push_back(TensorDesc{inputs[i].dtype, inputs[i].shape, constant[i] ? &inputs[i] : nullptr, true});
  return descs;
}

// One op with concrete inputs: which are constants (no gradient, always intact).
struct Case {
  std::string label;
  Node node;
  std::vector<HostTensor> inputs;
  std::vector<bool> constant;
};

std::vector<HostTensor> forward_of(const Case& c, ThreadPool& pool) {
  std::unique_ptr<Op> op = build(c.node);
  std::vector<HostTensor> outs;
  for (const TensorDesc& d : op->infer(descs_of(c.inputs, c.constant))) outs.emplace_back(d.dtype, d.shape);
  std::vector<Tensor> in_views, out_views;
  for (const HostTensor& t : c.inputs) in_views.push_back(t.view());
  for (const HostTensor& t : outs) out_views.push_back(t.view());
  std::vector<const Tensor*> in;
  std::vector<Tensor*> out;
  for (Tensor& v : in_views) in.push_back(&v);
  for (Tensor& v : out_views) out.push_back(&v);
  Context ctx{Device::CPU, &pool};
  op->forward(ctx, in, out);
  return outs;
}

struct BackwardRun {
  float prefill = 0.f;      // dx starts filled with this (the executor zero-fills; ops must add)
  bool garble = false;      // overwrite every forward value backward_needs did not flag with NaN first
  bool guided_relu = false;
  uint32_t dy_seed = 11;
};

// Forward, then backward with random dy on every F32 output; returns one gradient per input (empty for constants).
std::vector<HostTensor> backward_of(const Case& c, ThreadPool& pool, const BackwardRun& run) {
  std::unique_ptr<Op> op = build(c.node);
  const std::vector<TensorDesc> descs = descs_of(c.inputs, c.constant);
  op->infer(descs);
  std::vector<HostTensor> x = c.inputs;
  std::vector<HostTensor> y = forward_of(c, pool);
  const BackwardNeeds needs = op->backward_needs(descs, y.size());
  REQUIRE(needs.inputs.size() == x.size());
  REQUIRE(needs.outputs.size() == y.size());
  if (run.garble) {
    for (size_t i = 0; i < x.size(); ++i)
      if (!needs.inputs[i] && !c.constant[i] && x[i].dtype == DType::F32) std::fill(x[i].f32(), x[i].f32() + x[i].numel(), kNaN);
    for (size_t j = 0; j < y.size(); ++j)
      if (!needs.outputs[j] && y[j].dtype == DType::F32) std::fill(y[j].f32(), y[j].f32() + y[j].numel(), kNaN);
  }
  std::vector<HostTensor> dy, dx;
  for (size_t j = 0; j < y.size(); ++j) dy.push_back(random_tensor(y[j].shape, run.dy_seed + static_cast<uint32_t>(j)));
  for (size_t i = 0; i < x.size(); ++i) {
    dx.emplace_back(DType::F32, c.constant[i] ? Shape{0} : x[i].shape);
    std::fill(dx[i].f32(), dx[i].f32() + dx[i].numel(), run.prefill);
  }
  std::vector<Tensor> xv, yv, dyv, dxv;
  for (auto& t : x) xv.push_back(t.view());
  for (auto& t : y) yv.push_back(t.view());
  for (auto& t : dy) dyv.push_back(t.view());
  for (auto& t : dx) dxv.push_back(t.view());
  std::vector<const Tensor*> in, out, dout;
  std::vector<Tensor*> din;
  for (auto& v : xv) in.push_back(&v);
  for (auto& v : yv) out.push_back(&v);
  for (size_t j = 0; j < y.size(); ++j) dout.push_back(y[j].dtype == DType::Bool ? nullptr : &dyv[j]);  // no mask grad
  for (size_t i = 0; i < x.size(); ++i) din.push_back(c.constant[i] ? nullptr : &dxv[i]);
  Context ctx{Device::CPU, &pool};
  ctx.guided_relu = run.guided_relu;
  std::vector<uint8_t> workspace(op->backward_workspace_bytes(descs, ctx));
  ctx.workspace = workspace.empty() ? nullptr : workspace.data();
  ctx.workspace_bytes = workspace.size();
  op->backward(ctx, in, out, dout, din);
  return dx;
}

double max_abs(const HostTensor& t) {
  double m = 0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, double(std::fabs(t.f32()[i])));
  return m;
}

// Finite-difference check with a tolerance built from the error sources (|w| <= 1 in gradcheck's loss):
//   truncation: h^2 / 6 * |f'''| per output an input element reaches (m3 bounds |f'''|, fanout counts outputs);
//   rounding of y: each affected y is rounded at x + h and x - h, 6e-8 * |y| each, divided by 2h;
//   the realised step float(x + h) - float(x - h) is 2h only to 6e-8 * |x| per side, a relative error
//   6e-8 * (|x| + h) / h on the numeric gradient;
//   float rounding of the analytic gradient itself, 1e-6 relative with margin.
// fanout: the most outputs one differentiated element affects (1 element-wise, the broadcast factor for a
// broadcast operand, the axis length for Softmax).
void check_gradient(const Case& c, const std::vector<bool>& wrt, double h, double m3, double fanout) {
  CAPTURE(c.label);
  ThreadPool pool(2);
  const std::vector<HostTensor> y = forward_of(c, pool);
  double ymax = 0, xmax = 0;
  int64_t wanted = 0;
  for (const HostTensor& t : y)
    if (t.dtype == DType::F32) ymax = std::max(ymax, max_abs(t));
  for (size_t i = 0; i < c.inputs.size(); ++i)
    if (wrt[i]) {
      xmax = std::max(xmax, max_abs(c.inputs[i]));
      wanted += c.inputs[i].numel();
    }
  const camrt::testing::GradCheckResult r = gradcheck(c.node, c.inputs, c.constant, wrt, h);
  const double tolerance = h * h / 6 * m3 * fanout + kRoundoff * fanout * ymax / h +
                           2 * kRoundoff * (xmax + h) / h * r.max_abs_grad + 1e-6 * r.max_abs_grad + 1e-7;
  CAPTURE(r.max_abs_error);
  CAPTURE(r.max_abs_grad);
  CAPTURE(tolerance);
  CHECK(r.checked == wanted);
  CHECK(r.max_abs_error <= tolerance);
  // Guard against a vacuous pass: the gradient must be non-trivial next to the tolerance.
  CHECK(r.max_abs_grad > 20 * tolerance);
}

Case activation_case(const std::string& label, const std::string& op, HostTensor x, nlohmann::json attrs = {}) {
  if (attrs.is_null()) attrs = nlohmann::json::object();
  return Case{label, make_node(op, {"x"}, {"y"}, attrs), {std::move(x)}, {false}};
}

const Shape kShape = {2, 3, 4, 5};

// Shapes (a, b) for the binary ops: every broadcast pattern the backward reduces along.
const std::vector<std::pair<Shape, Shape>> kBinaryShapes = {
    {{2, 3, 4, 5}, {2, 3, 4, 5}},  // same shape: element-wise
    {{2, 3, 4, 5}, {1, 3, 1, 1}},  // per-channel (BN-like, squeeze-excitation with batch 1)
    {{2, 3, 4, 5}, {2, 3, 1, 1}},  // per-sample channel gate (squeeze-excitation)
    {{2, 3, 4, 5}, {5}},           // last-dim bias, rank mismatch
    {{2, 3, 4, 5}, {}},            // rank-0 scalar
    {{1, 3, 1, 1}, {2, 3, 4, 5}},  // broadcast operand first (sign and orientation of Sub/Div)
    {{4, 5}, {2, 3, 4, 5}},        // rank mismatch, small operand first
    {{2, 1, 4, 1}, {3, 1, 5}},     // both operands broadcast, ranks differ
};

Case binary_case(const std::string& op, const Shape& as, const Shape& bs, uint32_t seed) {
  HostTensor a = random_tensor(as, seed, -2.f, 2.f);
  // Div: |b| in [1.5, 2.5] keeps 1/b smooth and |d^3(a/b)/db^3| = 6|a|/b^4 <= 6 * 2 / 1.5^4 < 2.4.
  HostTensor b = op == "Div" ? signed_magnitudes(bs, seed + 1, 1.5f, 2.5f) : random_tensor(bs, seed + 1, -2.f, 2.f);
  return Case{op + " " + shape_str(as) + " " + shape_str(bs), make_node(op, {"a", "b"}), {a, b}, {false, false}};
}

double broadcast_fanout(const Case& c) {
  ThreadPool pool(1);
  const int64_t out = forward_of(c, pool).at(0).numel();
  int64_t smallest = out;
  for (const HostTensor& t : c.inputs) smallest = std::min(smallest, t.numel());
  return double(out) / double(smallest);
}

// Every op with small inputs, for the contract tests (accumulation, flags, garbled unflagged values).
std::vector<Case> all_cases() {
  std::vector<Case> cases;
  HostTensor x = random_tensor(kShape, 3, -4.f, 4.f);
  push_from_breakpoints(x, {-3.f, -2.5f, -1.f, 0.f, 1.5f, 2.5f, 3.f}, 0.05f);
  cases.push_back(activation_case("Relu", "Relu", x));
  cases.push_back(activation_case("LeakyRelu 0.1", "LeakyRelu", x, {{"alpha", 0.1}}));
  cases.push_back(activation_case("LeakyRelu -0.5", "LeakyRelu", x, {{"alpha", -0.5}}));
  cases.push_back(activation_case("Clip attrs", "Clip", x, {{"min", -1.0}, {"max", 1.5}}));
  cases.push_back(Case{"Clip inputs", make_node("Clip", {"x", "lo", "hi"}), {x, make_f32({}, {0.f}), make_f32({}, {2.5f})},
                       {false, true, true}});
  cases.push_back(activation_case("Sigmoid", "Sigmoid", x));
  cases.push_back(activation_case("HardSigmoid", "HardSigmoid", x));
  cases.push_back(activation_case("HardSwish", "HardSwish", x));
  cases.push_back(activation_case("Identity", "Identity", x));
  cases.push_back(Case{"Dropout", make_node("Dropout", {"x"}, {"y", "mask"}), {x}, {false}});
  for (const char* op : {"Add", "Sub", "Mul", "Div"})
    for (const auto& [as, bs] : kBinaryShapes) cases.push_back(binary_case(op, as, bs, 21));
  // Mul/Div with a constant operand (a weight): the flags drop what only the constant's gradient would read.
  Case mul_const = binary_case("Mul", kShape, {1, 3, 1, 1}, 23);
  mul_const.constant = {false, true};
  cases.push_back(mul_const);
  Case div_const = binary_case("Div", kShape, {1, 3, 1, 1}, 25);
  div_const.constant = {false, true};
  cases.push_back(div_const);
  cases.push_back(Case{"BatchNormalization", make_node("BatchNormalization", {"x", "g", "b", "m", "v"}),
                       {x, random_tensor({3}, 4, 0.5f, 1.5f), random_tensor({3}, 5), random_tensor({3}, 6),
                        random_tensor({3}, 7, 0.1f, 1.f)},
                       {false, true, true, true, true}});
  cases.push_back(Case{"Softmax 13", make_node("Softmax", {"x"}, {"y"}, {{"axis", 1}}), {x}, {false}});
  cases.push_back(
      Case{"Softmax 11", make_node("Softmax", {"x"}, {"y"}, {{"axis", 1}, {"onnx_opset", 11}}), {x}, {false}});
  return cases;
}

}  // namespace

// ---- finite differences -------------------------------------------------------------------------------------

TEST_CASE("activation gradients match finite differences away from their kinks") {
  const double h = 1e-2;
  const float margin = 0.05f;  // > h: x +- h stays on one side of every breakpoint
  for (const Shape& shape : {kShape, Shape{7}, Shape{3, 11}}) {
    CAPTURE(shape_str(shape));
    HostTensor x = random_tensor(shape, 31, -2.f, 2.f);
    push_from_breakpoints(x, {0.f}, margin);
    // Piecewise linear: f''' = 0 on each side, only rounding remains.
    check_gradient(activation_case("Relu", "Relu", x), {true}, h, 0, 1);
    check_gradient(activation_case("LeakyRelu", "LeakyRelu", x, {{"alpha", 0.1}}), {true}, h, 0, 1);
    check_gradient(activation_case("LeakyRelu negative alpha", "LeakyRelu", x, {{"alpha", -0.5}}), {true}, h, 0, 1);
    check_gradient(activation_case("Identity", "Identity", x), {true}, h, 0, 1);
    check_gradient(Case{"Dropout with mask", make_node("Dropout", {"x"}, {"y", "mask"}), {x}, {false}}, {true}, h, 0, 1);

    HostTensor c = random_tensor(shape, 32, -3.f, 3.f);
    push_from_breakpoints(c, {-1.f, 1.5f}, margin);
    check_gradient(activation_case("Clip attrs", "Clip", c, {{"min", -1.0}, {"max", 1.5}}), {true}, h, 0, 1);
    HostTensor r6 = random_tensor(shape, 33, -2.f, 8.f);
    push_from_breakpoints(r6, {0.f, 6.f}, margin);
    check_gradient(Case{"Clip inputs (ReLU6)", make_node("Clip", {"x", "lo", "hi"}),
                        {r6, make_f32({}, {0.f}), make_f32({}, {6.f})}, {false, true, true}},
                   {true, false, false}, h, 0, 1);

    // |sigmoid'''| <= 1/8 (its maximum, at 0).
    check_gradient(activation_case("Sigmoid", "Sigmoid", random_tensor(shape, 34, -5.f, 5.f)), {true}, h, 0.125, 1);

    HostTensor hs = random_tensor(shape, 35, -4.f, 4.f);
    push_from_breakpoints(hs, {-2.5f, 2.5f}, margin);  // ONNX default alpha 0.2, beta 0.5
    check_gradient(activation_case("HardSigmoid default", "HardSigmoid", hs), {true}, h, 0, 1);
    HostTensor hs6 = random_tensor(shape, 36, -4.f, 4.f);
    push_from_breakpoints(hs6, {-3.f, 3.f}, margin);
    check_gradient(activation_case("HardSigmoid torch", "HardSigmoid", hs6, {{"alpha", 1.0 / 6}, {"beta", 0.5}}), {true},
                   h, 0, 1);
    // HardSwish is quadratic between the breakpoints: the central difference is exact there (f''' = 0).
    HostTensor sw = random_tensor(shape, 37, -5.f, 5.f);
    push_from_breakpoints(sw, {-3.f, 3.f}, margin);
    check_gradient(activation_case("HardSwish", "HardSwish", sw), {true}, h, 0, 1);
  }
}

TEST_CASE("Add/Sub/Mul/Div gradients match finite differences, summed over broadcast dims") {
  const double h = 1e-2;
  uint32_t seed = 100;
  for (const char* op : {"Add", "Sub", "Mul", "Div"}) {
    for (const auto& [as, bs] : kBinaryShapes) {
      const Case c = binary_case(op, as, bs, seed += 2);
      // Add, Sub, Mul are at most bilinear: f''' = 0. Div: |d^3 (a/b) / db^3| < 2.4 (see binary_case).
      check_gradient(c, {true, true}, h, std::string(op) == "Div" ? 2.4 : 0.0, broadcast_fanout(c));
    }
  }
}

TEST_CASE("BatchNormalization gradient matches finite differences (statistics are constants)") {
  const double h = 1e-2;
  for (const Shape& shape : {kShape, Shape{4, 3}, Shape{2, 3, 7}}) {
    const Case c{"BatchNormalization " + shape_str(shape), make_node("BatchNormalization", {"x", "g", "b", "m", "v"}),
                 {random_tensor(shape, 40, -2.f, 2.f), random_tensor({3}, 41, 0.5f, 1.5f), random_tensor({3}, 42),
                  random_tensor({3}, 43), random_tensor({3}, 44, 0.1f, 1.f)},
                 {false, true, true, true, true}};
    check_gradient(c, {true, false, false, false, false}, h, 0, 1);  // affine in x
  }
}

TEST_CASE("Softmax gradient matches finite differences for both opset semantics") {
  const double h = 1e-2;
  struct SoftmaxCase {
    Shape shape;
    nlohmann::json attrs;
  };
  const std::vector<SoftmaxCase> cases = {
      {kShape, {{"axis", -1}}},                      // rows (inner == 1)
      {kShape, {{"axis", 1}}},                       // columns, inner 20
      {kShape, {{"axis", 1}, {"onnx_opset", 11}}},   // flattened from axis 1 on: 60 per row
      {kShape, {{"onnx_opset", 11}}},                // opset < 13 default axis 1
      {{3, 70}, {{"axis", 0}}},                      // inner 70: a full 64-column block and a partial one
      {{2, 10}, nlohmann::json::object()},           // opset 13 default axis -1
  };
  for (const SoftmaxCase& sc : cases) {
    const Case c{"Softmax " + shape_str(sc.shape) + " " + sc.attrs.dump(), make_node("Softmax", {"x"}, {"y"}, sc.attrs),
                 {random_tensor(sc.shape, 50, -2.f, 2.f)}, {false}};
    // Moving x_e by t moves every y_k of its row. With s = y_e: d^3 y_k / dx_e^3 = y_k s (-6s^2 + 6s - 1) for k != e
    // and s (1 - s)(6s^2 - 6s + 1) for k == e; the sum of their magnitudes is <= 1 because the y_k sum to 1, and
    // so is the sum of |y_k| the rounding term sees. Hence m3 = 1, fanout = 1, whatever the axis length.
    check_gradient(c, {true}, h, 1.0, 1.0);
  }
}

// ---- large broadcast reductions against a naive reference (threaded and sliced paths) ------------------------

namespace {

// Flat index into an operand of shape `s` for output coordinates `coord` (numpy alignment from the right).
int64_t operand_index(const Shape& s, const Shape& coord) {
  int64_t index = 0;
  for (size_t k = 0; k < s.size(); ++k) {
    const int64_t c = coord[coord.size() - s.size() + k];
    index = index * s[k] + (s[k] == 1 ? 0 : c);
  }
  return index;
}

}  // namespace

TEST_CASE("binary backward matches a naive double reference on CNN-sized broadcasts") {
  ThreadPool pool(2);
  // 262144 outputs: more than 2 x 32K, so every path splits across both threads; the scalar case is reduced in
  // slices, the (C,) channels-last case in column blocks.
  const std::vector<std::pair<Shape, Shape>> shapes = {
      {{4, 64, 32, 32}, {4, 64, 32, 32}}, {{4, 64, 32, 32}, {4, 64, 1, 1}}, {{4, 64, 32, 32}, {1, 64, 1, 1}},
      {{4, 64, 32, 32}, {}},              {{4, 32, 32, 64}, {64}},          {{1, 64, 1, 1}, {4, 64, 32, 32}},
      {{4, 1, 32, 32}, {1, 64, 1, 1}},    {{4, 64, 32, 32}, {4, 1, 32, 32}},
  };
  uint32_t seed = 200;
  for (const char* op : {"Add", "Sub", "Mul", "Div"}) {
    for (const auto& [as, bs] : shapes) {
      const Case c = binary_case(op, as, bs, seed += 2);
      CAPTURE(c.label);
      BackwardRun run;
      run.prefill = 0.5f;
      const std::vector<HostTensor> got = backward_of(c, pool, run);
      // Reference: the same dy (backward_of draws it from dy_seed), every term in double.
      const HostTensor& a = c.inputs[0];
      const HostTensor& b = c.inputs[1];
      Shape out(std::max(as.size(), bs.size()));
      for (size_t k = 0; k < out.size(); ++k) {
        const int64_t da = k + as.size() < out.size() ? 1 : as[k + as.size() - out.size()];
        const int64_t db = k + bs.size() < out.size() ? 1 : bs[k + bs.size() - out.size()];
        out[k] = std::max(da, db);
      }
      const HostTensor dy = random_tensor(out, run.dy_seed);
      std::vector<double> ga(a.numel(), 0.5), gb(b.numel(), 0.5), sa(a.numel(), 0), sb(b.numel(), 0);
      Shape coord(out.size());
      for (int64_t i = 0; i < dy.numel(); ++i) {
        int64_t rest = i;
        for (size_t k = out.size(); k-- > 0;) {
          coord[k] = rest % out[k];
          rest /= out[k];
        }
        const int64_t ia = operand_index(as, coord), ib = operand_index(bs, coord);
        const double g = dy.f32()[i], x = a.f32()[ia], z = b.f32()[ib];
        double ta = g, tb = g;
        if (std::string(op) == "Sub") tb = -g;
        if (std::string(op) == "Mul") ta = g * z, tb = g * x;
        if (std::string(op) == "Div") ta = g / z, tb = -g * x / (z * z);
        ga[ia] += ta;
        gb[ib] += tb;
        sa[ia] += std::fabs(ta);
        sb[ib] += std::fabs(tb);
      }
      // Each term carries at most ~3 float roundings (y = a/b, dy * y, the final cast), 2e-7 relative; the
      // double sum adds nothing visible. 1e-6 of the absolute sum leaves a 5x margin.
      double worst = 0;
      for (int64_t i = 0; i < a.numel(); ++i)
        worst = std::max(worst, std::fabs(got[0].f32()[i] - ga[i]) / (1e-6 * (sa[i] + 0.5) ));
      for (int64_t i = 0; i < b.numel(); ++i)
        worst = std::max(worst, std::fabs(got[1].f32()[i] - gb[i]) / (1e-6 * (sb[i] + 0.5)));
      CHECK(worst <= 1.0);
    }
  }
}

// ---- the executor's contracts -------------------------------------------------------------------------------

TEST_CASE("backward accumulates: dx pre-filled with 1 ends as 1 + gradient, for every op") {
  ThreadPool pool(2);
  for (const Case& c : all_cases()) {
    CAPTURE(c.label);
    const std::vector<HostTensor> zero = backward_of(c, pool, BackwardRun{});
    BackwardRun ones;
    ones.prefill = 1.f;
    const std::vector<HostTensor> one = backward_of(c, pool, ones);
    double worst = 0, largest = 0;
    for (size_t i = 0; i < zero.size(); ++i) {
      for (int64_t e = 0; e < zero[i].numel(); ++e) {
        const double g = zero[i].f32()[e];
        // One float rounding of 1 + g (and possibly an FMA contraction): 2^-23 relative to 1 + |g|.
        worst = std::max(worst, std::fabs(one[i].f32()[e] - (1.0 + g)) / (1.2e-7 * (1.0 + std::fabs(g))));
        largest = std::max(largest, std::fabs(g));
      }
    }
    CHECK(worst <= 1.0);
    CHECK(largest > 0.05);  // a gradient that is all zeros would pass the sum check trivially
  }
}

TEST_CASE("backward reads only what backward_needs flags: unflagged values overwritten with NaN change nothing") {
  ThreadPool pool(2);
  for (const Case& c : all_cases()) {
    CAPTURE(c.label);
    const std::vector<HostTensor> intact = backward_of(c, pool, BackwardRun{});
    BackwardRun garbled;
    garbled.garble = true;
    const std::vector<HostTensor> got = backward_of(c, pool, garbled);
    for (size_t i = 0; i < intact.size(); ++i) {
      CAPTURE(i);
      CHECK(intact[i].bytes == got[i].bytes);  // bit-identical, so no NaN leaked in
    }
  }
}

TEST_CASE("backward_needs flags are as tight as the formulas allow") {
  auto needs = [](const Node& node, const std::vector<TensorDesc>& inputs, size_t outputs) {
    return build(node)->backward_needs(inputs, outputs);
  };
  const TensorDesc act{DType::F32, kShape};
  const HostTensor weight = random_tensor({1, 3, 1, 1}, 1);
  const TensorDesc small{DType::F32, {1, 3, 1, 1}};
  const TensorDesc small_const{DType::F32, {1, 3, 1, 1}, &weight};
  const HostTensor full_weight = random_tensor(kShape, 2);
  const TensorDesc full_const{DType::F32, kShape, &full_weight};
  using Flags = std::vector<bool>;
  auto expect = [&](const Node& node, const std::vector<TensorDesc>& inputs, size_t outputs, const Flags& in,
                    const Flags& out) {
    CAPTURE(node.op);
    CAPTURE(node.attrs.dump());
    const BackwardNeeds n = needs(node, inputs, outputs);
    CHECK(n.inputs == in);
    CHECK(n.outputs == out);
  };
  // Output only: the forward may run in place.
  expect(make_node("Relu", {"x"}), {act}, 1, {false}, {true});
  expect(make_node("Sigmoid", {"x"}), {act}, 1, {false}, {true});
  expect(make_node("LeakyRelu", {"x"}, {"y"}, {{"alpha", 0.1}}), {act}, 1, {false}, {true});
  expect(make_node("LeakyRelu", {"x"}, {"y"}, {{"alpha", 0.0}}), {act}, 1, {false}, {true});
  expect(make_node("LeakyRelu", {"x"}, {"y"}, {{"alpha", -0.5}}), {act}, 1, {true}, {false});
  expect(make_node("Clip", {"x"}, {"y"}, {{"min", 0.0}, {"max", 6.0}}), {act}, 1, {false}, {true});
  const HostTensor lo = make_f32({}, {0.f});
  TensorDesc absent;
  absent.present = false;
  expect(make_node("Clip", {"x", "lo", "hi"}), {act, TensorDesc{DType::F32, {}, &lo}, TensorDesc{DType::F32, {}, &lo}}, 1,
         {false, true, true}, {true});
  expect(make_node("Clip", {"x", "lo", ""}), {act, TensorDesc{DType::F32, {}, &lo}, absent}, 1, {false, true, false},
         {true});
  // Input only.
  expect(make_node("HardSigmoid", {"x"}), {act}, 1, {true}, {false});
  expect(make_node("HardSwish", {"x"}), {act}, 1, {true}, {false});
  // Nothing.
  expect(make_node("Identity", {"x"}), {act}, 1, {false}, {false});
  expect(make_node("Dropout", {"x"}, {"y", "mask"}), {act}, 2, {false}, {false, false});
  expect(make_node("Add", {"a", "b"}), {act, small}, 1, {false, false}, {false});
  expect(make_node("Sub", {"a", "b"}), {small, act}, 1, {false, false}, {false});
  // Mul: each operand for the other's gradient; none for a constant's.
  expect(make_node("Mul", {"a", "b"}), {act, small}, 1, {true, true}, {false});
  expect(make_node("Mul", {"a", "b"}), {act, small_const}, 1, {false, true}, {false});
  expect(make_node("Mul", {"a", "b"}), {small_const, act}, 1, {true, false}, {false});
  // Div: b always; for db, y when a is full-size, else a.
  expect(make_node("Div", {"a", "b"}), {act, small}, 1, {false, true}, {true});
  expect(make_node("Div", {"a", "b"}), {small, act}, 1, {true, true}, {false});
  expect(make_node("Div", {"a", "b"}), {act, small_const}, 1, {false, true}, {false});
  expect(make_node("Div", {"a", "b"}), {full_const, act}, 1, {false, true}, {true});
  // Dynamic dims: the run-time choice is open only when both could be 1 or not.
  expect(make_node("Div", {"a", "b"}), {TensorDesc{DType::F32, {-1, 3, 4, 5}}, small}, 1, {false, true}, {true});
  expect(make_node("Div", {"a", "b"}), {TensorDesc{DType::F32, {-1, 3, 4, 5}}, TensorDesc{DType::F32, {-1, 3, 1, 1}}},
         1, {true, true}, {true});
  // BatchNormalization: gamma and var only (constants in practice): no activation is kept.
  const TensorDesc c3{DType::F32, {3}, &lo};
  expect(make_node("BatchNormalization", {"x", "g", "b", "m", "v"}), {act, c3, c3, c3, c3}, 1,
         {false, true, false, false, true}, {false});
  expect(make_node("Softmax", {"x"}), {act}, 1, {false}, {true});
}

TEST_CASE("guided ReLU passes dy only where y > 0 and dy > 0; other activations ignore the flag") {
  ThreadPool pool(2);
  HostTensor x = random_tensor(kShape, 60, -2.f, 2.f);
  push_from_breakpoints(x, {0.f}, 0.05f);
  const Case relu = activation_case("Relu", "Relu", x);
  BackwardRun plain, guided;
  guided.guided_relu = true;
  const HostTensor g_plain = backward_of(relu, pool, plain)[0];
  const HostTensor g_guided = backward_of(relu, pool, guided)[0];
  const HostTensor dy = random_tensor(kShape, plain.dy_seed);  // the dy backward_of used
  int64_t blocked = 0, passed = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float xi = x.f32()[i], g = dy.f32()[i];
    CHECK(g_plain.f32()[i] == (xi > 0 ? g : 0.f));
    CHECK(g_guided.f32()[i] == (xi > 0 && g > 0 ? g : 0.f));
    blocked += xi > 0 && g < 0;
    passed += xi > 0 && g > 0;
  }
  CHECK(blocked > 10);  // the data really exercises the negative-dy case
  CHECK(passed > 10);
  // Guided Backprop rewrites ReLU only; LeakyRelu and Clip (ReLU6) keep their gradients.
  for (const Case& c : {activation_case("LeakyRelu", "LeakyRelu", x, {{"alpha", 0.1}}),
                        activation_case("Clip", "Clip", x, {{"min", 0.0}, {"max", 1.0}})}) {
    CAPTURE(c.label);
    CHECK(backward_of(c, pool, plain)[0].bytes == backward_of(c, pool, guided)[0].bytes);
  }
}

// PyTorch reference at and around the breakpoints, where finite differences cannot decide. Produced with
// (torch 1.13.0a0, Debian):
//   /usr/bin/python3 -c "import torch; F = torch.nn.functional;
//     x = torch.tensor([-4.0, -3.0000002, -3.0, -2.9999998, -1.5, 0.0, 0.7, 2.9999998, 3.0, 3.0000002, 4.0],
//                      requires_grad=True)
//     for f in [F.hardswish, F.hardsigmoid, lambda t: F.hardtanh(t, 0., 6.), torch.relu]:
//         x.grad = None; f(x).backward(torch.ones_like(x)); print([float(v) for v in x.grad])"
// (-3.0000002 and 2.9999998 are the float neighbours of -3 and 3.) aten's hardswish_backward uses x / 3 + 0.5
// for -3 <= x <= 3 (so -0.5 at -3 and 1.5 at 3), hardsigmoid_backward 1/6 for -3 < x < 3, hardtanh_backward 1 for
// min < x < max, threshold_backward 1 for x > 0.
TEST_CASE("HardSwish, HardSigmoid, Clip and Relu gradients at the kinks equal PyTorch autograd") {
  ThreadPool pool(1);
  const std::vector<float> points = {-4.f, std::nextafter(-3.f, -4.f), -3.f, std::nextafter(-3.f, 0.f), -1.5f, 0.f,
                                     0.7f, std::nextafter(3.f, 0.f),   3.f,  std::nextafter(3.f, 4.f),  4.f};
  const float sixth = 1.f / 6.f;
  struct Expected {
    Node node;
    std::vector<float> grad;
  };
  const std::vector<Expected> expected = {
      {make_node("HardSwish", {"x"}),
       {0.f, 0.f, -0.5f, -0.4999999403953552f, 0.f, 0.5f, 0.7333333492279053f, 1.5f, 1.5f, 1.f, 1.f}},
      // The ONNX export of F.hardsigmoid: HardSigmoid(alpha = 1/6, beta = 0.5).
      {make_node("HardSigmoid", {"x"}, {"y"}, {{"alpha", 1.0 / 6}, {"beta", 0.5}}),
       {0.f, 0.f, 0.f, sixth, sixth, sixth, sixth, sixth, 0.f, 0.f, 0.f}},
      {make_node("Clip", {"x"}, {"y"}, {{"min", 0.0}, {"max", 6.0}}), {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 1.f, 1.f, 1.f, 1.f, 1.f}},
      {make_node("Relu", {"x"}), {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 1.f, 1.f, 1.f, 1.f, 1.f}},
  };
  const HostTensor x = make_f32({static_cast<int64_t>(points.size())}, points);
  for (const Expected& e : expected) {
    CAPTURE(e.node.op);
    const Case c{e.node.op, e.node, {x}, {false}};
    std::unique_ptr<Op> op = build(c.node);
    std::vector<HostTensor> y = forward_of(c, pool);
    HostTensor dy = make_f32(x.shape, std::vector<float>(points.size(), 1.f));
    HostTensor dx(DType::F32, x.shape);
    Tensor xv = x.view(), yv = y[0].view(), dyv = dy.view(), dxv = dx.view();
    Context ctx{Device::CPU, &pool};
    op->backward(ctx, {&xv}, {&yv}, {&dyv}, {&dxv});
    for (size_t i = 0; i < points.size(); ++i) {
      CAPTURE(points[i]);
      CHECK(dx.f32()[i] == e.grad[i]);  // same formula in float: bit-identical
    }
  }
}

TEST_CASE("backward errors: int64 arithmetic and Clip bounds have no gradient") {
  ThreadPool pool(1);
  const Case add{"Add int64", make_node("Add", {"a", "b"}), {make_i64({2}, {1, 2}), make_i64({2}, {3, 4})}, {false, false}};
  try {
    backward_of(add, pool, BackwardRun{});
    FAIL("int64 backward did not throw");
  } catch (const Error& e) {
    const std::string message = e.what();
    CHECK(message.find("n_Add") != std::string::npos);
    CHECK(message.find("I64") != std::string::npos);
  }
  const Case clip{"Clip bound", make_node("Clip", {"x", "lo", "hi"}),
                  {random_tensor({4}, 1), make_f32({}, {-0.5f}), make_f32({}, {0.5f})}, {false, false, true}};
  try {
    backward_of(clip, pool, BackwardRun{});
    FAIL("a gradient for the Clip bound did not throw");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("'lo'") != std::string::npos);
  }
}
