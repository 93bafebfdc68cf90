// Backward of Conv (input gradient, fused relu/clip), Gemm (dA, dB, dC) and MatMul (dA, dB): central finite
// differences (tests/gradcheck.h) over many geometries, naive double-precision loops written here for larger
// threaded cases, PyTorch autograd values, accumulation into a pre-filled dx, the backward_needs flags and the
// refusal of weight gradients. Every direct backward call poisons the forward data the op did not flag.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/ops/op.h"
#include "kernels/cpu/parallel.h"
#include "tests/gradcheck.h"

using namespace camrt;
using camrt::testing::GradCheckResult;
using camrt::testing::gradcheck;
using nlohmann::json;

namespace {

// Finite-difference step: a power of two, so x +- h is exact for the grid inputs below.
constexpr double kH = 1.0 / 64;

// Inputs for the finite-difference checks lie on a 1/8 grid: x in [-1, 1), weights in [-3/8, 3/8], biases and
// Gemm's C on the same grid (plus 1/128 for conv biases, see kConvBiasOffset). Every product is then a multiple
// of 2^-6 (2^-12 with x +- h), and every forward output, a sum of at most 56 such products below 2^6, is exact in
// float whatever the summation order. So the numeric side is exact but for the double rounding of the loss
// (< 1e-12), and the op is linear in x: no truncation error either. The analytic dx sums n <= 36 products
// |W * w| <= 3/8 (w: the checker's weights in [-1, 1)) in float: error <= n * 2^-24 * n * 3/8 = 2.9e-5.
// A wrong gradient is off by one product, |W * w| ~ 0.1 on average, far above.
constexpr double kConvTol = 3e-5;
// Gemm / MatMul here: at most 7 products |alpha * B * w| <= 0.75 per element: 7 * 2^-24 * 7 * 0.75 = 2.2e-6.
constexpr double kGemmTol = 5e-6;

Node make_node(const std::string& op, json attrs, size_t num_inputs = 1, size_t num_outputs = 1) {
  Node n;
  n.op = op;
  n.name = "/" + op + "_node";
  for (size_t i = 0; i < num_inputs; ++i) n.inputs.push_back("in" + std::to_string(i));
  for (size_t i = 0; i < num_outputs; ++i) n.outputs.push_back("out" + std::to_string(i));
  n.attrs = std::move(attrs);
  return n;
}

// Random multiples of 1/8 in [lo, hi] (lo, hi multiples of 1/8).
HostTensor grid(const Shape& shape, uint32_t seed, double lo = -1, double hi = 0.875, double offset = 0) {
  HostTensor t(DType::F32, shape);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> k(static_cast<int>(lo * 8), static_cast<int>(hi * 8));
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = static_cast<float>(k(rng) / 8.0 + offset);
  return t;
}

HostTensor grid_weight(const Shape& shape, uint32_t seed) { return grid(shape, seed, -0.375, 0.375); }

HostTensor make_f32(const Shape& shape, const std::vector<float>& v) {
  HostTensor t(DType::F32, shape);
  REQUIRE(static_cast<size_t>(t.numel()) == v.size());
  std::copy(v.begin(), v.end(), t.f32());
  return t;
}

void expect_gradient(const GradCheckResult& r, double tolerance, double min_grad = 0.05) {
  CHECK(r.checked > 0);
  CHECK(r.max_abs_grad > min_grad);  // the loss depends on the input at all
  CHECK(r.max_abs_error <= tolerance);
}

std::unique_ptr<Op> build(const Node& node) {
  OpFactory f = find_op(node.op);
  const bool registered = f != nullptr;
  REQUIRE_MESSAGE(registered, "op " << node.op << " is not registered");
  return f(node);
}

std::vector<TensorDesc> descs_of(const std::vector<HostTensor>& inputs, const std::vector<bool>& constant) {
  std::vector<TensorDesc> d;
  for (size_t i = 0; i < inputs.size(); ++i)
    d.push_back(TensorDesc{inputs[i].dtype, inputs[i].shape, constant[i] ? &inputs[i] : nullptr});
  return d;
}

// Forward, then backward of the op's only output with gradient dy into dx buffers for the inputs in wrt,
// starting from `prefill` when given (else zeros). Before backward, the forward values the op did not flag in
// backward_needs are overwritten with NaN, as the planner is free to do.
std::vector<HostTensor> run_backward(const Node& node, const std::vector<HostTensor>& inputs, const std::vector<bool>& constant,
                                     const std::vector<bool>& wrt, const HostTensor& dy,
                                     const std::vector<HostTensor>* prefill = nullptr, bool guided = false) {
  ThreadPool pool(2);
  Context ctx{Device::CPU, &pool};
  ctx.guided_relu = guided;
  auto op = build(node);
  const std::vector<TensorDesc> descs = descs_of(inputs, constant);
  const std::vector<TensorDesc> out_descs = op->infer(descs);
  REQUIRE(out_descs.size() == 1);
  REQUIRE(out_descs[0].shape == dy.shape);
  std::vector<uint8_t> workspace(std::max(op->workspace_bytes(descs, ctx), op->backward_workspace_bytes(descs, ctx)));
  ctx.workspace = workspace.empty() ? nullptr : workspace.data();
  ctx.workspace_bytes = workspace.size();
  std::vector<HostTensor> x = inputs;
  HostTensor y(out_descs[0].dtype, out_descs[0].shape);
  std::vector<Tensor> x_views;
  for (auto& t : x) x_views.push_back(t.view());
  std::vector<const Tensor*> x_ptrs;
  for (auto& v : x_views) x_ptrs.push_back(&v);
  Tensor y_view = y.view();
  op->forward(ctx, x_ptrs, {&y_view});

  const BackwardNeeds needs = op->backward_needs(descs, 1);
  REQUIRE(needs.inputs.size() == inputs.size());
  REQUIRE(needs.outputs.size() == 1);
  const auto poison = [](HostTensor& t) { std::fill(t.f32(), t.f32() + t.numel(), std::numeric_limits<float>::quiet_NaN()); };
  for (size_t i = 0; i < x.size(); ++i)
    if (!needs.inputs[i]) poison(x[i]);
  if (!needs.outputs[0]) poison(y);
  // The forward's scratch data is garbage to the backward too.
  std::fill(workspace.begin(), workspace.end(), uint8_t(0xFF));

  std::vector<HostTensor> dx;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!wrt[i])
      dx.emplace_back(DType::F32, Shape{0});
    else if (prefill)
      dx.push_back((*prefill)[i]);
    else
      dx.emplace_back(DType::F32, inputs[i].shape);
  }
  std::vector<Tensor> dx_views;
  for (auto& t : dx) dx_views.push_back(t.view());
  std::vector<Tensor*> dx_ptrs;
  for (size_t i = 0; i < dx.size(); ++i) dx_ptrs.push_back(wrt[i] ? &dx_views[i] : nullptr);
  const Tensor y_const = y.view(), dy_view = dy.view();
  op->backward(ctx, x_ptrs, {&y_const}, {&dy_view}, dx_ptrs);
  return dx;
}

// ---------------- Conv ----------------

struct ConvCase {
  Shape x, w;
  json attrs;  // ONNX attributes; "pads" explicit unless auto_pad is tested
  bool bias;
};

// Offset of conv biases: products and sums of grid values are multiples of 1/64, so with the bias an odd
// multiple of 1/128 every pre-activation is at least 1/128 from any multiple of 1/64 (0 and the clip bounds
// used below), while moving x by h shifts it by at most h * 3/8 = 3/512 < 1/128: no finite difference crosses a kink.
constexpr double kConvBiasOffset = 1.0 / 128;

std::vector<HostTensor> conv_inputs(const ConvCase& c, uint32_t seed) {
  std::vector<HostTensor> in = {grid(c.x, seed), grid_weight(c.w, seed + 1)};
  if (c.bias) in.push_back(grid({c.w[0]}, seed + 2, -0.5, 0.5, kConvBiasOffset));
  return in;
}

// Geometry of a conv case for the naive loops (explicit pads; 1-D as H = 1).
struct NaiveConv {
  int64_t n, cin, h, w, cout, kh, kw, sh = 1, sw = 1, dh = 1, dw = 1, pt = 0, pl = 0, group = 1, oh, ow;
};

NaiveConv naive_geometry(const ConvCase& c) {
  const bool one_d = c.x.size() == 3;
  NaiveConv g;
  g.n = c.x[0];
  g.cin = c.x[1];
  g.h = one_d ? 1 : c.x[2];
  g.w = c.x.back();
  g.cout = c.w[0];
  g.kh = one_d ? 1 : c.w[2];
  g.kw = c.w.back();
  const size_t sp = c.x.size() - 2;
  int64_t pb = 0, pe = 0;  // pads on H (2-D only)
  int64_t pl = 0, pr = 0;
  if (c.attrs.contains("strides")) {
    g.sh = one_d ? 1 : c.attrs["strides"][0].get<int64_t>();
    g.sw = c.attrs["strides"][sp - 1].get<int64_t>();
  }
  if (c.attrs.contains("dilations")) {
    g.dh = one_d ? 1 : c.attrs["dilations"][0].get<int64_t>();
    g.dw = c.attrs["dilations"][sp - 1].get<int64_t>();
  }
  if (c.attrs.contains("pads")) {
    const auto& p = c.attrs["pads"];
    if (one_d) {
      pl = p[0].get<int64_t>();
      pr = p[1].get<int64_t>();
    } else {
      pb = p[0].get<int64_t>();
      pl = p[1].get<int64_t>();
      pe = p[2].get<int64_t>();
      pr = p[3].get<int64_t>();
    }
  }
  g.pt = pb;
  g.pl = pl;
  if (c.attrs.contains("group")) g.group = c.attrs["group"].get<int64_t>();
  g.oh = (g.h + pb + pe - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.ow = (g.w + pl + pr - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  return g;
}

// Calls fn(x index, w index, y index) for every in-bounds tap of the convolution.
template <typename Fn>
void for_each_tap(const NaiveConv& g, Fn fn) {
  const int64_t cg = g.cin / g.group, mg = g.cout / g.group;
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t oc = 0; oc < g.cout; ++oc)
      for (int64_t oh = 0; oh < g.oh; ++oh)
        for (int64_t ow = 0; ow < g.ow; ++ow)
          for (int64_t c = 0; c < cg; ++c)
            for (int64_t kh = 0; kh < g.kh; ++kh)
              for (int64_t kw = 0; kw < g.kw; ++kw) {
                const int64_t ih = oh * g.sh - g.pt + kh * g.dh, iw = ow * g.sw - g.pl + kw * g.dw;
                if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) continue;
                const int64_t ic = (oc / mg) * cg + c;
                fn(((n * g.cin + ic) * g.h + ih) * g.w + iw, ((oc * cg + c) * g.kh + kh) * g.kw + kw,
                   ((n * g.cout + oc) * g.oh + oh) * g.ow + ow);
              }
}

// Pre-activation conv output in double.
std::vector<double> naive_conv(const ConvCase& c, const std::vector<HostTensor>& in) {
  const NaiveConv g = naive_geometry(c);
  std::vector<double> y(static_cast<size_t>(g.n * g.cout * g.oh * g.ow), 0.0);
  for (size_t i = 0; i < y.size(); ++i) y[i] = c.bias ? in[2].f32()[(i / (g.oh * g.ow)) % g.cout] : 0.0;
  for_each_tap(g, [&](int64_t xi, int64_t wi, int64_t yi) { y[yi] += double(in[0].f32()[xi]) * in[1].f32()[wi]; });
  return y;
}

// dx = conv_transpose(dy, W) in double, and per element the bound on a float sum of its products
// ((terms + 2) * 2^-24 * sum |products|, as tests/test_conv_gemm.cpp derives).
void naive_conv_backward(const ConvCase& c, const HostTensor& w, const HostTensor& dy, std::vector<double>* dx,
                         std::vector<double>* bound) {
  const NaiveConv g = naive_geometry(c);
  const size_t nx = static_cast<size_t>(g.n * g.cin * g.h * g.w);
  dx->assign(nx, 0.0);
  std::vector<double> mag(nx, 0.0);
  std::vector<int64_t> terms(nx, 0);
  for_each_tap(g, [&](int64_t xi, int64_t wi, int64_t yi) {
    const double p = double(w.f32()[wi]) * dy.f32()[yi];
    (*dx)[xi] += p;
    mag[xi] += std::fabs(p);
    ++terms[xi];
  });
  bound->resize(nx);
  for (size_t i = 0; i < nx; ++i) (*bound)[i] = double(terms[i] + 2) * std::ldexp(1.0, -24) * mag[i] + 1e-30;
}

Shape conv_output_shape(const ConvCase& c, const std::vector<HostTensor>& in) {
  auto op = build(make_node("Conv", c.attrs, in.size()));
  return op->infer(descs_of(in, std::vector<bool>(in.size(), true)))[0].shape;
}

GradCheckResult check_conv(const ConvCase& c, uint32_t seed) {
  const std::vector<HostTensor> in = conv_inputs(c, seed);
  std::vector<bool> constant(in.size(), true), wrt(in.size(), false);
  constant[0] = false;
  wrt[0] = true;
  return gradcheck(make_node("Conv", c.attrs, in.size()), in, constant, wrt, kH);
}

// Geometries the forward supports: dense, grouped, depthwise (multiplier 1 and 2), strides, dilations,
// asymmetric pads, 1x1 (the direct GEMM path and, strided, the col2im path), 1-D, auto_pad; batch 2 mostly.
// n = Cout_g * KH * KW <= 36 and Cin_g * KH * KW <= 56 everywhere (see kConvTol).
std::vector<ConvCase> conv_cases() {
  return {
      {{2, 3, 6, 7}, {4, 3, 3, 3}, {{"pads", {1, 1, 1, 1}}}, true},                                       // dense
      {{2, 4, 6, 5}, {4, 2, 3, 3}, {{"group", 2}, {"pads", {1, 0, 0, 1}}}, false},                        // groups 2
      {{2, 6, 5, 6}, {6, 2, 2, 3}, {{"group", 3}, {"strides", {2, 1}}, {"pads", {0, 1, 1, 0}}}, true},   // groups 3
      {{2, 3, 7, 6}, {3, 1, 3, 3}, {{"group", 3}, {"pads", {1, 1, 1, 1}}}, true},                         // depthwise
      {{2, 3, 7, 6}, {6, 1, 3, 3}, {{"group", 3}, {"strides", {2, 2}}, {"pads", {0, 1, 2, 1}}}, false},  // multiplier 2
      {{1, 2, 9, 9}, {2, 1, 5, 5}, {{"group", 2}, {"strides", {2, 2}}, {"dilations", {2, 1}}, {"pads", {4, 2, 3, 2}}},
       true},                                                                                             // dw 5x5
      {{2, 3, 9, 8}, {4, 3, 3, 3}, {{"strides", {2, 2}}, {"pads", {1, 1, 1, 1}}}, false},                 // stride 2
      {{1, 3, 9, 9}, {2, 3, 3, 3}, {{"dilations", {2, 2}}, {"pads", {2, 2, 2, 2}}}, true},                // dilation 2
      {{2, 2, 8, 7}, {3, 2, 3, 2}, {{"dilations", {2, 3}}, {"strides", {1, 2}}}, false},                  // no pads
      {{2, 2, 5, 6}, {3, 2, 2, 3}, {{"strides", {1, 2}}, {"pads", {0, 2, 1, 0}}}, true},                  // asymmetric
      {{2, 5, 4, 5}, {3, 5, 1, 1}, json::object(), true},                                                 // 1x1 (GEMM into dx)
      {{2, 4, 3, 3}, {6, 2, 1, 1}, {{"group", 2}}, false},                                                // grouped 1x1
      {{2, 3, 5, 5}, {4, 3, 1, 1}, {{"strides", {2, 2}}}, true},                                          // strided 1x1 (col2im)
      {{2, 3, 4, 4}, {2, 3, 1, 1}, {{"pads", {1, 0, 0, 1}}}, false},                                      // padded 1x1
      {{2, 3, 10}, {4, 3, 3}, {{"strides", {2}}, {"pads", {1, 2}}, {"dilations", {2}}}, true},            // 1-D
      {{2, 4, 9}, {4, 1, 3}, {{"group", 4}, {"pads", {1, 1}}}, false},                                    // 1-D depthwise
      {{2, 4, 6}, {3, 4, 1}, json::object(), true},                                                       // 1-D 1x1
  };
}

TEST_CASE("Conv input gradient matches finite differences (groups, depthwise, strides, dilations, pads, 1x1, 1-D)") {
  uint32_t seed = 100;
  for (const ConvCase& c : conv_cases()) {
    INFO("X " << shape_str(c.x) << " W " << shape_str(c.w) << " attrs " << c.attrs.dump() << " bias " << c.bias);
    expect_gradient(check_conv(c, seed += 10), kConvTol);
  }
}

TEST_CASE("Conv input gradient with auto_pad SAME_UPPER / SAME_LOWER / VALID") {
  for (const char* mode : {"SAME_UPPER", "SAME_LOWER", "VALID"}) {
    for (const ConvCase& c : {ConvCase{{2, 2, 7, 6}, {3, 2, 3, 2}, {{"auto_pad", mode}, {"strides", {2, 2}}}, true},
                              ConvCase{{1, 3, 6, 7}, {3, 1, 3, 3}, {{"auto_pad", mode}, {"group", 3}}, false},
                              ConvCase{{2, 2, 9}, {2, 2, 4}, {{"auto_pad", mode}, {"strides", {2}}}, false}}) {
      INFO("X " << shape_str(c.x) << " W " << shape_str(c.w) << " attrs " << c.attrs.dump());
      expect_gradient(check_conv(c, 7), kConvTol);
    }
  }
}

TEST_CASE("Conv with a fused relu / clip: gradient matches finite differences, masked where the activation is flat") {
  const std::vector<ConvCase> base = {
      {{2, 3, 6, 7}, {4, 3, 3, 3}, {{"pads", {1, 1, 1, 1}}, {"strides", {1, 2}}}, true},   // GEMM + col2im
      {{2, 3, 7, 6}, {6, 1, 3, 3}, {{"group", 3}, {"pads", {1, 1, 1, 1}}}, true},          // depthwise
      {{2, 5, 4, 5}, {3, 5, 1, 1}, json::object(), true},                                 // 1x1
      {{2, 3, 10}, {4, 3, 3}, {{"pads", {1, 1}}}, true},                                  // 1-D
  };
  // Clip bounds are multiples of 1/64 (see kConvBiasOffset), inside the range of the outputs.
  const std::vector<json> activations = {{{"activation", "relu"}},
                                         {{"activation", "clip"}, {"activation_min", -0.25}, {"activation_max", 0.5}},
                                         {{"activation", "clip"}, {"activation_min", 0.0}, {"activation_max", 0.75}}};
  uint32_t seed = 300;
  for (const ConvCase& b : base) {
    for (const json& act : activations) {
      ConvCase c = b;
      c.attrs.update(act);
      INFO("X " << shape_str(c.x) << " W " << shape_str(c.w) << " attrs " << c.attrs.dump());
      seed += 10;
      // The margin the finite differences rely on, and that the activation masks some outputs and passes others.
      const std::vector<HostTensor> in = conv_inputs(c, seed);
      const std::vector<double> z = naive_conv(c, in);
      const double lo = act.value("activation_min", 0.0), hi = act.value("activation_max", 1e30);
      double margin = 1e30;
      int64_t flat = 0, live = 0;
      for (double v : z) {
        margin = std::min({margin, std::fabs(v - lo), std::fabs(v - hi)});
        (v > lo && v < hi ? live : flat) += 1;
      }
      CHECK(margin >= 1.0 / 128);
      CHECK(flat > 0);
      CHECK(live > 0);
      expect_gradient(check_conv(c, seed), kConvTol);
    }
  }
}

TEST_CASE("Conv input gradient matches PyTorch autograd (stride 2, pad 1, groups 2, batch 2)") {
  // Values from /usr/bin/python3 (torch 1.13.0a0):
  //   import torch; torch.set_num_threads(2)
  //   W=torch.tensor([((i*7)%11-5)/8 for i in range(72)]).reshape(4,2,3,3)
  //   g=torch.tensor([((i*5)%9-4)/4 for i in range(48)]).reshape(2,4,3,2)
  //   x=(torch.arange(160.)/160).reshape(2,4,5,4).requires_grad_()
  //   y=torch.nn.functional.conv2d(x,W,stride=2,padding=1,groups=2); y.backward(g); print(x.grad.flatten().tolist())
  // Every value is a sum of a few products of multiples of 1/8 and 1/4: exact in float on both sides.
  const std::vector<float> want = {
      0.03125, 0.34375, -0.59375, 0.15625, -0.34375, 0.21875, 1.25, -0.5, -0.09375, 0.71875, 0.6875, -0.4375, -0.25,
      0.625, -0.0625, -0.84375, -0.21875, 0.8125, 0.5625, -0.46875, 0.15625, -1.03125, 0.3125, 0.03125, 0.40625, 0.0,
      -0.40625, -0.4375, 0.1875, 0.15625, -0.5, 0.4375, 0.46875, 1.1875, -0.90625, 0.03125, 0.21875, 0.21875, -0.46875,
      0.5625, -0.625, -0.6875, 0.15625, 0.28125, 0.0, -1.28125, -0.15625, 0.53125, -0.46875, -0.71875, 0.3125, 0.1875,
      -0.03125, -1.34375, -0.1875, 0.34375, -0.3125, -0.75, 0.46875, 0.09375, -0.4375, 0.28125, 0.25, -0.3125,
      -0.84375, 0.96875, 0.53125, -0.5, -0.46875, 0.21875, 0.21875, -0.25, -0.90625, 1.1875, 0.46875, -0.375, -0.5,
      0.15625, 0.1875, -0.1875, -0.34375, 0.90625, 0.4375, -0.5, -0.0625, 1.71875, -0.4375, -0.40625, -0.46875,
      -0.40625, 0.03125, 0.3125, 0.03125, 0.4375, -0.34375, 0.65625, -0.59375, -0.3125, -0.09375, 0.28125, 0.25,
      0.28125, -0.4375, 0.6875, 0.59375, -0.09375, -0.5, 1.25, 0.28125, -0.21875, 0.15625, -0.59375, 0.65625,
      -0.59375, 0.40625, 0.03125, 0.3125, -0.15625, 0.1875, -0.46875, -0.15625, 0.34375, 0.625, 0.0, -0.09375, 1.0625,
      1.15625, -0.59375, 0.0, 0.875, -0.625, -0.375, -0.125, 1.84375, 0.0, -0.78125, 0.15625, 0.84375, -0.46875,
      -0.46875, 0.3125, -1.03125, 0.15625, -0.125, 0.65625, 0.5, -0.5, 0.15625, 0.28125, 0.3125, -0.4375, 0.5,
      0.59375, -0.6875, -0.84375, 1.125, 0.25, 0.25, -0.46875, 0.5625};
  HostTensor x(DType::F32, {2, 4, 5, 4}), w(DType::F32, {4, 2, 3, 3}), dy(DType::F32, {2, 4, 3, 2});
  for (int i = 0; i < 160; ++i) x.f32()[i] = static_cast<float>(i / 160.0);
  for (int i = 0; i < 72; ++i) w.f32()[i] = static_cast<float>(((i * 7) % 11 - 5) / 8.0);
  for (int i = 0; i < 48; ++i) dy.f32()[i] = static_cast<float>(((i * 5) % 9 - 4) / 4.0);
  const json attrs = {{"strides", {2, 2}}, {"pads", {1, 1, 1, 1}}, {"group", 2}, {"kernel_shape", {3, 3}}};
  const auto dx = run_backward(make_node("Conv", attrs, 2), {x, w}, {false, true}, {true, false}, dy);
  REQUIRE(dx[0].numel() == 160);
  for (int i = 0; i < 160; ++i) {
    INFO("dx[" << i << "]");
    CHECK(dx[0].f32()[i] == want[static_cast<size_t>(i)]);
  }
}

TEST_CASE("Conv input gradient matches naive loops on larger threaded shapes (with guided fused relu)") {
  // Channel counts large enough that the GEMMs block over K and M and col2im / depthwise split over both workers;
  // 4 or more groups run concurrently on the 2 workers.
  const std::vector<ConvCase> cases = {
      {{2, 32, 15, 14}, {48, 32, 3, 3}, {{"pads", {1, 1, 1, 1}}}, true},
      {{3, 32, 13, 12}, {64, 8, 3, 3}, {{"group", 4}, {"strides", {2, 2}}, {"pads", {1, 0, 1, 1}}}, false},
      {{2, 64, 9, 10}, {64, 4, 3, 3}, {{"group", 16}, {"pads", {1, 1, 1, 1}}}, true},  // many small groups
      {{2, 48, 17, 16}, {48, 1, 3, 3}, {{"group", 48}, {"strides", {2, 2}}, {"pads", {1, 1, 1, 1}}}, true},
      {{2, 16, 11, 11}, {32, 1, 5, 5}, {{"group", 16}, {"dilations", {2, 2}}, {"pads", {4, 4, 4, 4}}}, false},
      {{2, 40, 9, 9}, {72, 40, 1, 1}, json::object(), true},
      {{3, 32, 7, 9}, {48, 8, 1, 1}, {{"group", 4}}, false},
      {{2, 24, 11, 11}, {40, 24, 1, 1}, {{"strides", {2, 2}}}, true},
      {{2, 32, 50}, {40, 32, 5}, {{"pads", {2, 2}}, {"strides", {3}}}, true},
      // Image chunking of the backward GEMM (about 512 columns each): 300-pixel maps go 2 + 1 images, with groups
      // running concurrently too; a 624-pixel map goes one image at a time.
      {{3, 8, 20, 15}, {12, 8, 3, 3}, {{"pads", {1, 1, 1, 1}}}, true},
      {{3, 32, 20, 15}, {32, 4, 3, 3}, {{"group", 8}, {"pads", {1, 1, 1, 1}}}, false},
      {{2, 4, 26, 24}, {8, 4, 3, 3}, {{"pads", {1, 1, 1, 1}}}, true},
  };
  uint32_t seed = 500;
  for (ConvCase c : cases) {
    for (int mode = 0; mode < 3; ++mode) {  // plain, fused relu, fused relu in Guided Backprop
      if (mode > 0) c.attrs["activation"] = "relu";
      INFO("X " << shape_str(c.x) << " W " << shape_str(c.w) << " attrs " << c.attrs.dump() << " mode " << mode);
      seed += 3;
      std::vector<HostTensor> in = {testing::random_tensor(c.x, seed), testing::random_tensor(c.w, seed + 1)};
      if (c.bias) in.push_back(testing::random_tensor({c.w[0]}, seed + 2));
      const Shape y_shape = conv_output_shape(c, in);
      const HostTensor dy = testing::random_tensor(y_shape, seed + 3);
      // The reference masks dy itself from the double pre-activation (relu: z > 0; guided also dy > 0). Where
      // |z| < 1e-4 the float forward might round to the other side of 0, so dy is set to 0 there beforehand.
      HostTensor dy_used = dy;
      HostTensor masked = dy;
      int64_t masked_count = 0;
      if (mode > 0) {
        const std::vector<double> z = naive_conv(c, in);
        for (int64_t i = 0; i < dy.numel(); ++i) {
          if (std::fabs(z[static_cast<size_t>(i)]) < 1e-4) dy_used.f32()[i] = masked.f32()[i] = 0.f;
          const bool pass = z[static_cast<size_t>(i)] > 0 && (mode == 1 || dy.f32()[i] > 0);
          if (!pass) masked.f32()[i] = 0.f;
          masked_count += !pass;
        }
        CHECK(masked_count > 0);
      }
      std::vector<bool> constant(in.size(), true), wrt(in.size(), false);
      constant[0] = false;
      wrt[0] = true;
      const auto got = run_backward(make_node("Conv", c.attrs, in.size()), in, constant, wrt, dy_used, nullptr, mode == 2);
      std::vector<double> want, bound;
      naive_conv_backward(c, in[1], masked, &want, &bound);
      int64_t mismatches = 0;
      double max_want = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        mismatches += !(std::fabs(got[0].f32()[i] - want[i]) <= bound[i]);
        max_want = std::max(max_want, std::fabs(want[i]));
      }
      CHECK(max_want > 0.1);
      CHECK(mismatches == 0);
    }
  }
}

// ---------------- Gemm ----------------

struct GemmCase {
  int trans_a, trans_b;
  Shape c;          // shape of C; {0} for no C
  bool c_runtime;   // C differentiated (else a constant)
};

// Y = alpha * op(A) op(B) + beta * C with M = 3, K = 4, N = 5 (or the given sizes).
std::vector<HostTensor> gemm_inputs(int trans_a, int trans_b, const Shape& c, int64_t m, int64_t k, int64_t n,
                                    uint32_t seed, bool grid_values) {
  const Shape a_shape = trans_a ? Shape{k, m} : Shape{m, k}, b_shape = trans_b ? Shape{n, k} : Shape{k, n};
  const auto make = [&](const Shape& s, uint32_t sd) { return grid_values ? grid(s, sd) : testing::random_tensor(s, sd); };
  std::vector<HostTensor> in = {make(a_shape, seed), make(b_shape, seed + 1)};
  if (!(c.size() == 1 && c[0] == 0)) in.push_back(make(c, seed + 2));
  return in;
}

TEST_CASE("Gemm gradients match finite differences: every transA/transB, alpha, dA, dB, dC for each C shape") {
  // alpha, beta: multiples of 1/4, so the forward stays exact (see kConvTol).
  const json base = {{"alpha", 0.75}, {"beta", 0.5}};
  const std::vector<Shape> c_shapes = {{0}, {5}, {1, 5}, {3, 5}, {3, 1}, {}, {1}, {1, 1}};
  uint32_t seed = 700;
  for (int ta = 0; ta < 2; ++ta) {
    for (int tb = 0; tb < 2; ++tb) {
      for (const Shape& cs : c_shapes) {
        json attrs = base;
        attrs["transA"] = ta;
        attrs["transB"] = tb;
        const std::vector<HostTensor> in = gemm_inputs(ta, tb, cs, 3, 4, 5, seed += 5, true);
        INFO("transA " << ta << " transB " << tb << " C " << (in.size() > 2 ? shape_str(cs) : "none"));
        // A and B both runtime (dA and dB), C runtime (dC).
        const std::vector<bool> all(in.size(), true), none(in.size(), false);
        const GradCheckResult r = gradcheck(make_node("Gemm", attrs, in.size()), in, none, all, kH);
        // A scalar C sums 15 gradients: the double sum is exact but for 1e-15, well within kGemmTol.
        expect_gradient(r, kGemmTol);
        // B a constant weight: dA alone.
        std::vector<bool> constant(in.size(), false), wrt(in.size(), false);
        constant[1] = true;
        wrt[0] = true;
        expect_gradient(gradcheck(make_node("Gemm", attrs, in.size()), in, constant, wrt, kH), kGemmTol);
      }
    }
  }
  // Default alpha = beta = 1 with a (N,) bias (the Linear layer the forward runs through the epilogue).
  const std::vector<HostTensor> in = gemm_inputs(0, 1, {5}, 3, 4, 5, 9, true);
  expect_gradient(gradcheck(make_node("Gemm", {{"transB", 1}}, 3), in, {false, false, false}, {true, true, true}, kH),
                  kGemmTol);
  // beta = 0: C contributes nothing, so its gradient stays 0 (the checker's numeric gradient is 0 too).
  const GradCheckResult r =
      gradcheck(make_node("Gemm", {{"beta", 0.0}}, 3), gemm_inputs(0, 0, {3, 5}, 3, 4, 5, 11, true), {false, true, false},
                {false, false, true}, kH);
  CHECK(r.checked == 15);
  CHECK(r.max_abs_error == 0);
}

// Naive double Gemm gradients: dA, dB (as stored, i.e. transposed back) and dC reduced to C's shape.
void naive_gemm_backward(int ta, int tb, double alpha, double beta, const std::vector<HostTensor>& in, const HostTensor& dy,
                         int64_t m, int64_t k, int64_t n, std::vector<double>* da, std::vector<double>* db,
                         std::vector<double>* dc) {
  const float* a = in[0].f32();
  const float* b = in[1].f32();
  const auto a_at = [&](int64_t i, int64_t p) { return ta ? i + p * m : i * k + p; };  // index of op(A)[i, p]
  const auto b_at = [&](int64_t p, int64_t j) { return tb ? p + j * k : p * n + j; };  // index of op(B)[p, j]
  da->assign(static_cast<size_t>(m * k), 0.0);
  db->assign(static_cast<size_t>(k * n), 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t p = 0; p < k; ++p) {
        const double g = alpha * dy.f32()[i * n + j];
        (*da)[static_cast<size_t>(a_at(i, p))] += g * b[b_at(p, j)];
        (*db)[static_cast<size_t>(b_at(p, j))] += g * a[a_at(i, p)];
      }
  dc->clear();
  if (in.size() > 2) {
    const Shape& cs = in[2].shape;
    const int64_t rows = cs.size() == 2 ? cs[0] : 1, cols = cs.empty() ? 1 : cs.back();
    dc->assign(static_cast<size_t>(rows * cols), 0.0);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j)
        (*dc)[static_cast<size_t>((rows == 1 ? 0 : i) * cols + (cols == 1 ? 0 : j))] += beta * dy.f32()[i * n + j];
  }
}

TEST_CASE("Gemm gradients match naive loops on blocked sizes (every transpose, alpha, runtime B and C)") {
  // M = 37, K = 300, N = 70: past the GEMM's register tiles and its k-block, ragged everywhere; M = 5 takes the
  // skinny (transB) path for dA.
  uint32_t seed = 900;
  for (int64_t m : {37, 5}) {
    for (int ta = 0; ta < 2; ++ta) {
      for (int tb = 0; tb < 2; ++tb) {
        const int64_t k = 300, n = 70;
        const Shape cs = ta ? Shape{m, 1} : Shape{n};
        const json attrs = {{"alpha", -1.5}, {"beta", 0.25}, {"transA", ta}, {"transB", tb}};
        INFO("M " << m << " transA " << ta << " transB " << tb);
        const std::vector<HostTensor> in = gemm_inputs(ta, tb, cs, m, k, n, seed += 5, false);
        const HostTensor dy = testing::random_tensor({m, n}, seed + 4);
        const auto got = run_backward(make_node("Gemm", attrs, 3), in, {false, false, false}, {true, true, true}, dy);
        std::vector<double> da, db, dc;
        naive_gemm_backward(ta, tb, -1.5, 0.25, in, dy, m, k, n, &da, &db, &dc);
        // Products |alpha * a * dy| <= 1.5 summed over at most max(N, M) = 70 terms: (70 + 2) * 2^-24 * 70 * 1.5.
        const double tol = 72 * std::ldexp(1.0, -24) * 70 * 1.5;
        const std::vector<const std::vector<double>*> want = {&da, &db, &dc};
        for (size_t i = 0; i < 3; ++i) {
          INFO("input " << i);
          REQUIRE(static_cast<size_t>(got[i].numel()) == want[i]->size());
          double max_err = 0;
          for (size_t e = 0; e < want[i]->size(); ++e) max_err = std::max(max_err, std::fabs(got[i].f32()[e] - (*want[i])[e]));
          CHECK(max_err <= tol);
        }
      }
    }
  }
}

// ---------------- MatMul ----------------

TEST_CASE("MatMul gradients match finite differences: 2-D, 1-D promotion, broadcast batch dims") {
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{3, 4}, {4, 5}},
      {{4}, {4, 5}},           // 1-D A: (1, 4)
      {{3, 4}, {4}},           // 1-D B: (4, 1)
      {{4}, {4}},              // dot product, scalar output
      {{2, 3, 4}, {4, 5}},     // batched A, shared B (folded into one GEMM)
      {{2, 3, 3, 4}, {4}},     // batched A, 1-D B
      {{3, 4}, {2, 4, 5}},     // shared A, batched B
      {{4}, {2, 3, 4, 5}},     // 1-D A, batched B
      {{2, 1, 3, 4}, {3, 4, 2}},  // batch (2, 3): A broadcast along dim 1, B along dim 0
      {{1, 3, 4}, {2, 4, 5}},  // size-1 batch dim of A
      {{2, 2, 3, 4}, {2, 1, 4, 3}},
  };
  uint32_t seed = 1100;
  for (const auto& [a_shape, b_shape] : cases) {
    INFO("A " << shape_str(a_shape) << " B " << shape_str(b_shape));
    const std::vector<HostTensor> in = {grid(a_shape, seed += 5), grid(b_shape, seed + 1)};
    // A shared over up to 3 batch entries sums 3 * 5 products: within kGemmTol's 7 (per-entry GEMMs of <= 5 terms
    // each, accumulated: 15 terms, |b * w| <= 1: 17 * 2^-24 * 15 = 1.5e-5). Use the larger bound here.
    expect_gradient(gradcheck(make_node("MatMul", json::object(), 2), in, {false, false}, {true, true}, kH), 2e-5);
    // Constant B (a weight): dA only.
    expect_gradient(gradcheck(make_node("MatMul", json::object(), 2), in, {false, true}, {true, false}, kH), 2e-5);
  }
}

TEST_CASE("MatMul gradients match naive loops on a larger broadcast batch") {
  // A (3, 1, 40, 70), B (4, 70, 33): batch (3, 4); dA sums over B's 4, dB over A's 3.
  const HostTensor a = testing::random_tensor({3, 1, 40, 70}, 1), b = testing::random_tensor({4, 70, 33}, 2);
  const HostTensor dy = testing::random_tensor({3, 4, 40, 33}, 3);
  const auto got = run_backward(make_node("MatMul", json::object(), 2), {a, b}, {false, false}, {true, true}, dy);
  std::vector<double> da(static_cast<size_t>(a.numel()), 0.0), db(static_cast<size_t>(b.numel()), 0.0);
  for (int64_t s = 0; s < 3; ++s)
    for (int64_t t = 0; t < 4; ++t)
      for (int64_t i = 0; i < 40; ++i)
        for (int64_t j = 0; j < 33; ++j) {
          const double g = dy.f32()[((s * 4 + t) * 40 + i) * 33 + j];
          for (int64_t p = 0; p < 70; ++p) {
            da[static_cast<size_t>((s * 40 + i) * 70 + p)] += g * b.f32()[(t * 70 + p) * 33 + j];
            db[static_cast<size_t>((t * 70 + p) * 33 + j)] += g * a.f32()[(s * 40 + i) * 70 + p];
          }
        }
  // dA: 4 * 33 = 132 products |b * dy| < 1; dB: 3 * 40 = 120. (132 + 2) * 2^-24 * 132 = 1.1e-3 (loose but rigorous).
  const double tol = 134 * std::ldexp(1.0, -24) * 132;
  double err_a = 0, err_b = 0;
  for (size_t i = 0; i < da.size(); ++i) err_a = std::max(err_a, std::fabs(got[0].f32()[i] - da[i]));
  for (size_t i = 0; i < db.size(); ++i) err_b = std::max(err_b, std::fabs(got[1].f32()[i] - db[i]));
  CHECK(err_a <= tol);
  CHECK(err_b <= tol);
}

// ---------------- accumulation, backward_needs, errors ----------------

TEST_CASE("Conv / Gemm / MatMul backward accumulates into a pre-filled gradient") {
  struct Case {
    Node node;
    std::vector<HostTensor> inputs;
    std::vector<bool> constant, wrt;
  };
  const HostTensor x = testing::random_tensor({2, 8, 7, 6}, 1);
  std::vector<Case> cases = {
      {make_node("Conv", {{"pads", {1, 1, 1, 1}}}, 3), {x, testing::random_tensor({6, 8, 3, 3}, 2), testing::random_tensor({6}, 3)},
       {false, true, true}, {true, false, false}},
      {make_node("Conv", {{"group", 8}, {"strides", {2, 2}}, {"pads", {1, 1, 1, 1}}}, 2), {x, testing::random_tensor({16, 1, 3, 3}, 4)},
       {false, true}, {true, false}},
      {make_node("Conv", {{"activation", "relu"}}, 2), {x, testing::random_tensor({5, 8, 1, 1}, 5)}, {false, true}, {true, false}},
      {make_node("Conv", {{"group", 2}, {"activation", "clip"}, {"activation_min", -0.5}, {"activation_max", 0.5}}, 2),
       {x, testing::random_tensor({4, 4, 2, 2}, 6)}, {false, true}, {true, false}},
      {make_node("Gemm", {{"transA", 1}, {"alpha", 0.5}}, 3),
       {testing::random_tensor({6, 4}, 7), testing::random_tensor({6, 9}, 8), testing::random_tensor({4, 1}, 9)},
       {false, false, false}, {true, true, true}},
      {make_node("Gemm", {{"transB", 1}}, 3),
       {testing::random_tensor({4, 6}, 7), testing::random_tensor({9, 6}, 8), testing::random_tensor({9}, 9)},
       {false, true, true}, {true, false, false}},
      {make_node("MatMul", json::object(), 2), {testing::random_tensor({2, 1, 3, 4}, 10), testing::random_tensor({3, 4, 5}, 11)},
       {false, false}, {true, true}},
  };
  for (const Case& c : cases) {
    INFO("op " << c.node.op << " attrs " << c.node.attrs.dump());
    auto op = build(c.node);
    const Shape y_shape = op->infer(descs_of(c.inputs, c.constant))[0].shape;
    const HostTensor dy = testing::random_tensor(y_shape, 99);
    std::vector<HostTensor> prefill;
    for (size_t i = 0; i < c.inputs.size(); ++i)
      prefill.push_back(c.wrt[i] ? testing::random_tensor(c.inputs[i].shape, 50 + static_cast<uint32_t>(i), -4.f, 4.f)
                                 : HostTensor(DType::F32, {0}));
    const auto fresh = run_backward(c.node, c.inputs, c.constant, c.wrt, dy);
    const auto added = run_backward(c.node, c.inputs, c.constant, c.wrt, dy, &prefill);
    for (size_t i = 0; i < c.inputs.size(); ++i) {
      if (!c.wrt[i]) continue;
      INFO("input " << i);
      double max_grad = 0, max_err = 0;
      for (int64_t e = 0; e < prefill[i].numel(); ++e) {
        const double want = double(prefill[i].f32()[e]) + double(fresh[i].f32()[e]);
        max_grad = std::max(max_grad, std::fabs(double(fresh[i].f32()[e])));
        max_err = std::max(max_err, std::fabs(added[i].f32()[e] - want));
      }
      CHECK(max_grad > 0.1);
      // Adding into 4 + |grad| instead of 0 changes the float rounding of the sums: each of at most 72 terms
      // (8 channels * 9 taps) may round differently by 2^-24 * (4 + |partial sum| <= 4 + 72): 72 * 76 * 6e-8.
      CHECK(max_err <= 72 * 76 * 6e-8);
    }
  }
}

TEST_CASE("Conv / Gemm / MatMul backward_needs keep only what backward reads") {
  const HostTensor x = testing::random_tensor({1, 4, 5, 5}, 1), w = testing::random_tensor({6, 4, 3, 3}, 2);
  const HostTensor wd = testing::random_tensor({4, 1, 3, 3}, 3), bias = testing::random_tensor({6}, 4);
  const HostTensor a = testing::random_tensor({3, 4}, 5), b = testing::random_tensor({4, 5}, 6), c = testing::random_tensor({5}, 7);
  struct Case {
    Node node;
    std::vector<HostTensor> inputs;
    std::vector<bool> constant, want_inputs;
    bool want_output;
  };
  const std::vector<Case> cases = {
      // Conv: W only (a constant, so nothing is kept); the fused activation adds the output.
      {make_node("Conv", {{"pads", {1, 1, 1, 1}}}, 3), {x, w, bias}, {false, true, true}, {false, true, false}, false},
      {make_node("Conv", json::object(), 2), {x, w}, {false, true}, {false, true}, false},
      {make_node("Conv", {{"group", 4}}, 2), {x, wd}, {false, true}, {false, true}, false},
      {make_node("Conv", {{"activation", "relu"}}, 3), {x, w, bias}, {false, true, true}, {false, true, false}, true},
      {make_node("Conv", {{"group", 4}, {"activation", "clip"}, {"activation_max", 6.0}}, 2), {x, wd}, {false, true}, {false, true}, true},
      // Gemm / MatMul: dA reads B, dB reads A; C is never read.
      {make_node("Gemm", json::object(), 3), {a, b, c}, {false, true, true}, {false, true, false}, false},
      {make_node("Gemm", json::object(), 3), {a, b, c}, {false, false, false}, {true, true, false}, false},
      {make_node("Gemm", json::object(), 3), {a, b, c}, {true, false, true}, {true, false, false}, false},
      {make_node("Gemm", json::object(), 2), {a, b}, {true, true}, {false, false}, false},
      {make_node("MatMul", json::object(), 2), {a, b}, {false, true}, {false, true}, false},
      {make_node("MatMul", json::object(), 2), {a, b}, {true, false}, {true, false}, false},
      {make_node("MatMul", json::object(), 2), {a, b}, {false, false}, {true, true}, false},
  };
  ThreadPool pool(2);
  Context ctx{Device::CPU, &pool};
  for (const Case& cs : cases) {
    INFO("op " << cs.node.op << " attrs " << cs.node.attrs.dump() << " constant " << cs.constant[0] << cs.constant[1]);
    auto op = build(cs.node);
    const auto descs = descs_of(cs.inputs, cs.constant);
    op->infer(descs);
    const BackwardNeeds needs = op->backward_needs(descs, 1);
    CHECK(needs.inputs == cs.want_inputs);
    CHECK(needs.outputs == std::vector<bool>{cs.want_output});
  }
  // Workspaces: a dense conv needs its column matrix (Cin * 3 * 3 = 36 rows, 5 * 5 = 25 columns); depthwise none;
  // a fused activation adds the masked dy (Cout * 25 floats).
  const auto conv_ws = [&](const json& attrs, const HostTensor& weight) {
    auto op = build(make_node("Conv", attrs, 2));
    return op->backward_workspace_bytes(descs_of({x, weight}, {false, true}), ctx);
  };
  CHECK(conv_ws({{"pads", {1, 1, 1, 1}}}, w) >= 36 * 25 * sizeof(float));
  CHECK(conv_ws({{"group", 4}, {"pads", {1, 1, 1, 1}}}, wd) == 0);
  CHECK(conv_ws({{"group", 4}, {"pads", {1, 1, 1, 1}}, {"activation", "relu"}}, wd) >= 4 * 25 * sizeof(float));
  CHECK(conv_ws({{"pads", {1, 1, 1, 1}}, {"activation", "relu"}}, w) >=
        conv_ws({{"pads", {1, 1, 1, 1}}}, w) + 6 * 25 * sizeof(float));
}

TEST_CASE("Conv refuses weight and bias gradients") {
  const HostTensor x = testing::random_tensor({1, 2, 4, 4}, 1), w = testing::random_tensor({3, 2, 3, 3}, 2);
  const HostTensor bias = testing::random_tensor({3}, 3), dy = testing::random_tensor({1, 3, 2, 2}, 4);
  for (size_t asked = 1; asked < 3; ++asked) {
    std::vector<bool> wrt = {true, false, false};
    wrt[asked] = true;
    std::string message;
    try {
      run_backward(make_node("Conv", json::object(), 3), {x, w, bias}, {false, false, false}, wrt, dy);
    } catch (const Error& e) {
      message = e.what();
    }
    INFO("gradient asked for input " << asked << ": " << message);
    CHECK(message.find("camrt computes activation gradients only") != std::string::npos);
    CHECK(message.find("/Conv_node") != std::string::npos);
    CHECK(message.find(asked == 1 ? "weight W 'in1'" : "bias B 'in2'") != std::string::npos);
  }
}

}  // namespace
