// Backward of pooling (MaxPool, AveragePool, GlobalAveragePool), ReduceMean, the view ops, Concat and Pad:
// central finite differences (tests/gradcheck.h) over many geometries, naive backward loops written here for
// larger threaded cases, PyTorch autograd values (first-max tie rule), accumulation into a pre-filled dx,
// and the backward_needs flags. Every direct backward call poisons the forward data the op did not flag, as
// the planner may overwrite it.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/ops/op.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/pool.h"
#include "tests/gradcheck.h"

using namespace camrt;
using camrt::testing::GradCheckResult;
using camrt::testing::gradcheck;
using nlohmann::json;

namespace {

// Finite-difference step: a power of two, so x +- h is exact for the dyadic inputs below and the step the
// checker assumes is the step it takes. 2h = 1/32 stays below the MaxPool grid spacing (1/8).
constexpr double kH = 1.0 / 64;

// A wrong gradient is off by at least one weight w (|w| ~ 0.5 on average), far above every tolerance here.
//
// Where the output holds exact copies of inputs (MaxPool on the distinct grid, views, Concat) the numeric
// side is exact but for double rounding in the loss sum (< 1e-12 / 2h). The analytic dx is a float sum of the
// weights of the n outputs reading the element, off by at most (n - 1) * 2^-24 * sum|w|: n <= 9 here (a
// stride-1 3x3 window), so <= 8 * 6e-8 * 9 = 4.3e-6.
constexpr double kCopyTol = 1e-5;
// Pad copies too, but edge/reflect pads let up to n = 48 outputs read one element (the corner of the
// (2, 2, 3, 4) case below): 47 * 6e-8 * 48 = 1.4e-4.
constexpr double kPadTol = 1.5e-4;
// Means: inputs are multiples of 2^-10 in [-1, 1), so float window sums are exact and only the final
// division rounds, by at most 2^-24 absolute for |y| < 2. An input feeds at most K <= 9 outputs (a 3x3
// stride-1 window, or 2x2x2), |w| < 1, and the two evaluations' errors add: K * 2 * 2^-24 / (2h) =
// 9 * 2^-24 * 64 = 3.4e-5; the analytic sum of K shares adds <= 8 * 2^-24 * 9 = 4.3e-6.
constexpr double kMeanTol = 5e-5;

Node make_node(const std::string& op, json attrs, size_t num_inputs = 1, size_t num_outputs = 1) {
  Node n;
  n.op = op;
  n.name = "/" + op + "_node";
  for (size_t i = 0; i < num_inputs; ++i) n.inputs.push_back("in" + std::to_string(i));
  for (size_t i = 0; i < num_outputs; ++i) n.outputs.push_back("out" + std::to_string(i));
  n.attrs = std::move(attrs);
  return n;
}

// A random permutation of {k / 8 : k in [-n/2, n/2)}: distinct values 1/8 apart, so no window has a tie or
// comes within 2h of one, and every value and value +- h is exact in float.
HostTensor distinct_grid(const Shape& shape, uint32_t seed) {
  HostTensor t(DType::F32, shape);
  std::vector<int64_t> k(static_cast<size_t>(t.numel()));
  std::iota(k.begin(), k.end(), -t.numel() / 2);
  std::shuffle(k.begin(), k.end(), std::mt19937(seed));
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = static_cast<float>(k[i]) / 8.f;
  return t;
}

// Random multiples of 2^-10 in [-1, 1): sums of a few are exact in float.
HostTensor dyadic_random(const Shape& shape, uint32_t seed) {
  HostTensor t(DType::F32, shape);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> k(-1024, 1023);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = static_cast<float>(k(rng)) / 1024.f;
  return t;
}

// min_grad: the loss must depend on the input at all (weights |w| ~ 0.5, divided by the largest mean count).
void expect_gradient(const GradCheckResult& r, double tolerance, double min_grad = 0.01) {
  CHECK(r.checked > 0);
  CHECK(r.max_abs_grad > min_grad);
  CHECK(r.max_abs_error <= tolerance);
}

// Gradient of a single-data-input op (input 0) with every other input constant and not differentiated.
GradCheckResult check_first_input(const Node& node, const std::vector<HostTensor>& inputs) {
  std::vector<bool> constant(inputs.size(), true), wrt(inputs.size(), false);
  constant[0] = false;
  wrt[0] = true;
  return gradcheck(node, inputs, constant, wrt, kH);
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
// starting from `prefill` when given (else zeros). Before backward, the forward values the op did not flag
// in backward_needs are overwritten (NaN for floats, garbage for integers), as the planner is free to do.
std::vector<HostTensor> run_backward(const Node& node, const std::vector<HostTensor>& inputs, const std::vector<bool>& constant,
                                     const std::vector<bool>& wrt, const HostTensor& dy,
                                     const std::vector<HostTensor>* prefill = nullptr) {
  ThreadPool pool(2);
  Context ctx{Device::CPU, &pool};
  auto op = build(node);
  const std::vector<TensorDesc> descs = descs_of(inputs, constant);
  const std::vector<TensorDesc> out_descs = op->infer(descs);
  REQUIRE(out_descs.size() == 1);
  REQUIRE(out_descs[0].shape == dy.shape);
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
  auto poison = [](HostTensor& t) {
    if (t.dtype == DType::F32)
      std::fill(t.f32(), t.f32() + t.numel(), std::numeric_limits<float>::quiet_NaN());
    else
      std::fill(t.bytes.begin(), t.bytes.end(), uint8_t(0xA5));
  };
  for (size_t i = 0; i < x.size(); ++i)
    if (!needs.inputs[i]) poison(x[i]);
  if (!needs.outputs[0]) poison(y);

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

// ---- naive pooling backward (any rank 1-3), written independently of the kernels' tap arithmetic ----

struct PoolCase {
  std::vector<int64_t> kernel, strides, pads, dilations;  // pads: begins then ends
  bool ceil = false;
};

json pool_attrs(const PoolCase& pc) {
  json a = {{"kernel_shape", pc.kernel}, {"ceil_mode", pc.ceil ? 1 : 0}};
  if (!pc.strides.empty()) a["strides"] = pc.strides;
  if (!pc.pads.empty()) a["pads"] = pc.pads;
  if (!pc.dilations.empty()) a["dilations"] = pc.dilations;
  return a;
}

// Output length by enumerating window starts (PyTorch's rule: in ceil mode the last window must start
// inside the input or the begin padding).
int64_t ref_out_len(int64_t in, int64_t k, int64_t s, int64_t d, int64_t pb, int64_t pe, bool ceil) {
  const int64_t extent = (k - 1) * d + 1, padded = in + pb + pe;
  int64_t n = 0;
  while (ceil ? (n * s < padded - extent + s && n * s < in + pb) : (n * s + extent <= padded)) ++n;
  return n;
}

// dx of pooling x (N, C, spatial...) with output gradient dy: every window's taps enumerated with bounds
// checks. Max: the first strictly greater value wins (PyTorch's loop). Mean: dy / count to every tap.
HostTensor ref_pool_backward(const HostTensor& x, const HostTensor& dy, const PoolCase& pc, bool is_max, bool cip) {
  const size_t nsp = x.shape.size() - 2;
  int64_t in[3] = {1, 1, 1}, k[3] = {1, 1, 1}, s[3] = {1, 1, 1}, d[3] = {1, 1, 1}, pb[3] = {0, 0, 0},
          pe[3] = {0, 0, 0}, out[3] = {1, 1, 1};
  for (size_t i = 0; i < nsp; ++i) {
    const size_t a = 3 - nsp + i;
    in[a] = x.shape[2 + i];
    k[a] = pc.kernel[i];
    if (!pc.strides.empty()) s[a] = pc.strides[i];
    if (!pc.dilations.empty()) d[a] = pc.dilations[i];
    if (!pc.pads.empty()) {
      pb[a] = pc.pads[i];
      pe[a] = pc.pads[nsp + i];
    }
    out[a] = ref_out_len(in[a], k[a], s[a], d[a], pb[a], pe[a], pc.ceil);
    REQUIRE(dy.shape[2 + i] == out[a]);
  }
  HostTensor dx(DType::F32, x.shape);
  const int64_t planes = x.shape[0] * x.shape[1], in_plane = in[0] * in[1] * in[2];
  const float* g = dy.f32();
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t o0 = 0; o0 < out[0]; ++o0)
      for (int64_t o1 = 0; o1 < out[1]; ++o1)
        for (int64_t o2 = 0; o2 < out[2]; ++o2, ++g) {
          std::vector<int64_t> taps;
          int64_t padded = 0;
          for (int64_t k0 = 0; k0 < k[0]; ++k0)
            for (int64_t k1 = 0; k1 < k[1]; ++k1)
              for (int64_t k2 = 0; k2 < k[2]; ++k2) {
                const int64_t pos[3] = {o0 * s[0] - pb[0] + k0 * d[0], o1 * s[1] - pb[1] + k1 * d[1],
                                        o2 * s[2] - pb[2] + k2 * d[2]};
                bool inside = true, inside_pads = true;
                for (int a = 0; a < 3; ++a) {
                  inside = inside && pos[a] >= 0 && pos[a] < in[a];
                  inside_pads = inside_pads && pos[a] >= -pb[a] && pos[a] < in[a] + pe[a];
                }
                padded += inside_pads;
                if (inside) taps.push_back(p * in_plane + (pos[0] * in[1] + pos[1]) * in[2] + pos[2]);
              }
          if (taps.empty()) continue;
          if (is_max) {
            int64_t best = taps[0];
            for (int64_t t : taps)
              if (x.f32()[t] > x.f32()[best]) best = t;
            dx.f32()[best] += *g;
          } else {
            const double count = static_cast<double>(cip ? padded : static_cast<int64_t>(taps.size()));
            for (int64_t t : taps) dx.f32()[t] += static_cast<float>(*g / count);
          }
        }
  return dx;
}

Shape pool_output_shape(const HostTensor& x, const PoolCase& pc) {
  const size_t nsp = x.shape.size() - 2;
  Shape out = {x.shape[0], x.shape[1]};
  for (size_t i = 0; i < nsp; ++i)
    out.push_back(ref_out_len(x.shape[2 + i], pc.kernel[i], pc.strides.empty() ? 1 : pc.strides[i],
                              pc.dilations.empty() ? 1 : pc.dilations[i], pc.pads.empty() ? 0 : pc.pads[i],
                              pc.pads.empty() ? 0 : pc.pads[nsp + i], pc.ceil));
  return out;
}

}  // namespace

// ---------------- pooling ----------------

TEST_CASE("MaxPool backward matches finite differences (2-D: stride, pads, dilation, ceil_mode, overlap)") {
  const std::vector<PoolCase> cases = {
      {{3, 3}, {2, 2}, {}, {}, false},                     // overlapping windows: kernel 3 stride 2
      {{3, 3}, {2, 2}, {1, 1, 1, 1}, {}, false},           // ResNet stem geometry
      {{3, 3}, {2, 2}, {0, 1, 1, 0}, {}, true},            // asymmetric pads + ceil_mode
      {{2, 2}, {1, 1}, {}, {2, 2}, false},                 // dilation, overlapping
      {{2, 3}, {2, 1}, {1, 0, 0, 1}, {1, 2}, true},        // rectangular, W dilation (generic path), ceil
      {{2, 2}, {2, 2}, {}, {}, true},                      // ceil_mode on an odd size: a clipped last window
      {{3, 3}, {1, 1}, {1, 1, 1, 1}, {}, false},           // stride 1: every input in up to 9 windows
  };
  for (const PoolCase& pc : cases) {
    INFO("attrs " << pool_attrs(pc).dump());
    const HostTensor x = distinct_grid({2, 3, 9, 11}, 11);
    expect_gradient(check_first_input(make_node("MaxPool", pool_attrs(pc)), {x}), kCopyTol);
  }
}

TEST_CASE("MaxPool backward matches finite differences (1-D and 3-D)") {
  {
    const PoolCase pc{{3}, {2}, {1, 1}, {}, true};
    expect_gradient(check_first_input(make_node("MaxPool", pool_attrs(pc)), {distinct_grid({2, 3, 15}, 3)}), kCopyTol);
  }
  {
    const PoolCase pc{{2}, {1}, {0, 0}, {3}, false};
    expect_gradient(check_first_input(make_node("MaxPool", pool_attrs(pc)), {distinct_grid({1, 2, 12}, 4)}), kCopyTol);
  }
  {
    const PoolCase pc{{2, 3, 2}, {2, 2, 1}, {1, 0, 0, 0, 1, 1}, {}, true};
    expect_gradient(check_first_input(make_node("MaxPool", pool_attrs(pc)), {distinct_grid({1, 2, 5, 6, 4}, 5)}), kCopyTol);
  }
}

TEST_CASE("MaxPool backward matches PyTorch autograd, ties going to the first maximum") {
  // Values printed by /usr/bin/python3 (torch 1.13.0a0), dy = 2^i so each dx sum shows which windows fed it:
  //   x = torch.tensor(<x below>).reshape(1, 1, 4, 5).requires_grad_()
  //   y = F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True)
  //   y.backward((2.0 ** torch.arange(y.numel(), dtype=torch.float32)).reshape(y.shape)); print(x.grad.flatten())
  // Case B: x = torch.full((1, 1, 4, 4), 5.0), F.max_pool2d(x, 2, stride=1, dilation=2), same dy.
  // Case C: x = [[nan, 1, nan], [2, 0, 4]] (1, 1, 2, 3), F.max_pool2d(x, (2, 3), stride=1), dy = 1: a NaN
  // output sends its gradient to the window's last NaN.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  struct Case {
    Shape shape;
    std::vector<float> x;
    PoolCase pc;
    std::vector<float> want;
  };
  const std::vector<Case> cases = {
      {{1, 1, 4, 5},
       {1, 3, 3, 2, 0, 3, 1, 3, 3, 2, 0, 2, 2, 1, 3, 1, 1, 0, 3, 3},
       {{3, 3}, {2, 2}, {1, 1, 1, 1}, {}, true},
       {0, 3, 0, 0, 0, 8, 0, 16, 36, 0, 0, 0, 0, 0, 0, 64, 0, 0, 384, 0}},
      {{1, 1, 4, 4},
       std::vector<float>(16, 5.f),
       {{2, 2}, {1, 1}, {}, {2, 2}, false},
       {1, 2, 0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
      {{1, 1, 2, 3}, {nan, 1, nan, 2, 0, 4}, {{2, 3}, {1, 1}, {}, {}, false}, {0, 0, 1, 0, 0, 0}},
  };
  for (size_t c = 0; c < cases.size(); ++c) {
    INFO("case " << c);
    const HostTensor x = make_f32(cases[c].shape, cases[c].x);
    const Shape y_shape = pool_output_shape(x, cases[c].pc);
    HostTensor dy(DType::F32, y_shape);
    for (int64_t i = 0; i < dy.numel(); ++i) dy.f32()[i] = c == 2 ? 1.f : std::ldexp(1.f, static_cast<int>(i));
    const auto dx = run_backward(make_node("MaxPool", pool_attrs(cases[c].pc)), {x}, {false}, {true}, dy);
    REQUIRE(dx[0].numel() == static_cast<int64_t>(cases[c].want.size()));
    for (int64_t i = 0; i < dx[0].numel(); ++i) {
      INFO("dx[" << i << "]");
      CHECK(dx[0].f32()[i] == cases[c].want[static_cast<size_t>(i)]);  // sums of distinct powers of two: exact
    }
  }
}

TEST_CASE("AveragePool backward matches finite differences (count_include_pad 0/1, ceil_mode, pads, 1-D, 3-D)") {
  const std::vector<std::pair<PoolCase, Shape>> cases = {
      {{{3, 3}, {2, 2}, {1, 1, 1, 1}, {}, true}, {2, 3, 8, 9}},
      {{{3, 3}, {1, 1}, {1, 1, 1, 1}, {}, false}, {1, 2, 6, 7}},   // K = 9 windows per input (kMeanTol)
      {{{2, 3}, {2, 2}, {0, 1, 1, 0}, {}, true}, {2, 2, 7, 8}},    // asymmetric pads, ceil windows past the pads
      {{{3, 2}, {3, 1}, {}, {}, true}, {1, 3, 8, 5}},              // ceil only, no pads
      {{{2, 2}, {1, 1}, {}, {2, 1}, false}, {1, 2, 6, 6}},         // dilation (generic path)
      {{{3}, {2}, {1, 2}, {}, true}, {2, 3, 10}},                  // 1-D
      {{{2, 2, 2}, {1, 2, 2}, {0, 1, 1, 1, 0, 0}, {}, true}, {1, 2, 3, 5, 4}},  // 3-D
  };
  for (const auto& [pc, shape] : cases) {
    for (int cip = 0; cip < 2; ++cip) {
      json attrs = pool_attrs(pc);
      attrs["count_include_pad"] = cip;
      INFO("attrs " << attrs.dump() << " input " << shape_str(shape));
      expect_gradient(check_first_input(make_node("AveragePool", attrs), {dyadic_random(shape, 21)}), kMeanTol);
    }
  }
}

TEST_CASE("GlobalAveragePool backward matches finite differences") {
  for (const Shape& shape : {Shape{2, 3, 5, 4}, Shape{2, 4, 6}, Shape{1, 2, 2, 3, 2}}) {
    INFO("input " << shape_str(shape));
    // Each input feeds one output: error <= 2 * 2^-24 / (2h) = 3.8e-6 (see kMeanTol).
    expect_gradient(check_first_input(make_node("GlobalAveragePool", json::object()), {dyadic_random(shape, 5)}), kMeanTol);
  }
}

TEST_CASE("pooling backward matches naive loops on many planes (threaded, ties, overlapping windows)") {
  // 4 * 32 planes split into several chunks over 2 workers. Values on a 2^-5 grid, so windows hold ties and
  // both sides must send each gradient to the first maximum. Every dx element sums the same windows in
  // the same (row-major) order on both sides, but the mean's share is rounded once in float on one side and
  // from double on the other: 1e-6 relative covers that.
  HostTensor x(DType::F32, {4, 32, 13, 15});
  std::mt19937 rng(9);
  std::uniform_int_distribution<int> k(-16, 15);
  for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] = static_cast<float>(k(rng)) / 32.f;
  const std::vector<PoolCase> cases = {
      {{3, 3}, {2, 2}, {1, 1, 1, 1}, {}, false},
      {{3, 3}, {2, 2}, {0, 1, 0, 1}, {}, true},
      {{2, 3}, {1, 2}, {}, {2, 1}, true},
  };
  for (const PoolCase& pc : cases) {
    const HostTensor dy = testing::random_tensor(pool_output_shape(x, pc), 13);
    for (int mode = 0; mode < 3; ++mode) {
      const bool is_max = mode == 0, cip = mode == 2;
      json attrs = pool_attrs(pc);
      if (!is_max) attrs["count_include_pad"] = cip ? 1 : 0;
      INFO("mode " << mode << " attrs " << attrs.dump());
      const auto got = run_backward(make_node(is_max ? "MaxPool" : "AveragePool", attrs), {x}, {false}, {true}, dy);
      const HostTensor want = ref_pool_backward(x, dy, pc, is_max, cip);
      int64_t mismatches = 0;
      for (int64_t i = 0; i < x.numel(); ++i)
        mismatches += !(std::fabs(got[0].f32()[i] - want.f32()[i]) <= 1e-6 * (1 + std::fabs(want.f32()[i])));
      CHECK(mismatches == 0);
    }
  }
}

// ---------------- ReduceMean ----------------

TEST_CASE("ReduceMean backward matches finite differences (axes sets, keepdims 0/1, axes input)") {
  const Shape shape = {2, 3, 4, 5};
  const std::vector<std::vector<int64_t>> axes_sets = {{2, 3}, {1}, {0, 2}, {-1}, {1, 3}, {0, 1, 2, 3}, {0}};
  for (const auto& axes : axes_sets) {
    for (int keepdims = 0; keepdims < 2; ++keepdims) {
      INFO("axes " << shape_str(axes) << " keepdims " << keepdims);
      // Each input feeds one output: error <= 2 * 2^-24 / (2h) (see kMeanTol).
      const json attrs = {{"axes", axes}, {"keepdims", keepdims}};
      // A mean over all 120 elements gives gradients w / 120.
      expect_gradient(check_first_input(make_node("ReduceMean", attrs), {dyadic_random(shape, 8)}), kMeanTol, 1e-3);
    }
  }
  // No axes: every axis.
  expect_gradient(check_first_input(make_node("ReduceMean", {{"keepdims", 0}}), {dyadic_random(shape, 8)}), kMeanTol, 1e-3);
  // Opset 18: axes as a constant input (not differentiated).
  const json attrs = {{"keepdims", 1}, {"onnx_opset", 18}};
  expect_gradient(check_first_input(make_node("ReduceMean", attrs, 2), {dyadic_random(shape, 8), make_i64({2}, {1, -2})}),
                  kMeanTol);
}

// ---------------- views and Concat ----------------

TEST_CASE("Flatten / Reshape / Squeeze / Unsqueeze backward is dy itself") {
  const HostTensor x = dyadic_random({2, 3, 1, 4}, 3);
  for (int axis : {0, 1, 2, -1})
    expect_gradient(check_first_input(make_node("Flatten", {{"axis", axis}}), {x}), kCopyTol);
  // Reshape's shape input is a constant seen by infer (gradcheck marks it constant, never differentiates it).
  expect_gradient(check_first_input(make_node("Reshape", json::object(), 2), {x, make_i64({3}, {0, -1, 2})}), kCopyTol);
  expect_gradient(check_first_input(make_node("Reshape", json::object(), 2), {x, make_i64({2}, {4, 6})}), kCopyTol);
  expect_gradient(check_first_input(make_node("Squeeze", {{"axes", {2}}}), {x}), kCopyTol);
  expect_gradient(check_first_input(make_node("Squeeze", json::object(), 2), {x, make_i64({1}, {-2})}), kCopyTol);
  expect_gradient(check_first_input(make_node("Unsqueeze", {{"axes", {0, 4}}}), {x}), kCopyTol);
  expect_gradient(check_first_input(make_node("Unsqueeze", json::object(), 2), {x, make_i64({1}, {1})}), kCopyTol);
}

TEST_CASE("Concat backward slices dy per input, skipping inputs that want no gradient") {
  for (int axis = 0; axis < 4; ++axis) {
    std::vector<HostTensor> inputs;
    for (int i = 0; i < 3; ++i) {
      Shape s = {2, 3, 4, 5};
      s[static_cast<size_t>(axis)] = 1 + i;  // different sizes along the axis
      inputs.push_back(dyadic_random(s, 30 + i));
    }
    for (size_t skip = 0; skip < 3; ++skip) {
      INFO("axis " << axis << ", input " << skip << " wants no gradient");
      std::vector<bool> wrt(3, true);
      wrt[skip] = false;
      expect_gradient(gradcheck(make_node("Concat", {{"axis", axis}}, 3), inputs, {false, false, false}, wrt, kH), kCopyTol);
    }
  }
  // Negative axis, all inputs differentiated.
  std::vector<HostTensor> inputs = {dyadic_random({2, 3, 2}, 1), dyadic_random({2, 3, 3}, 2)};
  expect_gradient(gradcheck(make_node("Concat", {{"axis", -1}}, 2), inputs, {false, false}, {true, true}, kH), kCopyTol);
}

// ---------------- Pad ----------------

TEST_CASE("Pad backward matches finite differences (constant, reflect, edge; negative pads)") {
  struct Case {
    Shape shape;
    std::vector<int64_t> pads;
  };
  const std::vector<Case> cases = {
      {{1, 2, 3, 4}, {0, 0, 1, 2, 0, 0, 2, 1}},
      {{1, 2, 4, 5}, {0, 0, -1, 2, 0, 0, 1, -2}},   // crop and pad on the same axes
      {{2, 2, 3, 4}, {0, 1, 2, 3, 1, 0, 2, 2}},     // pads on N and C too: whole rows repeated
      {{2, 1, 4, 4}, {0, 0, -1, -1, -1, 0, -2, 0}}, // pure crop
      {{7}, {3, 2}},                                // rank 1
      {{3, 5}, {2, -1, 1, 3}},                      // rank 2
  };
  for (const char* mode : {"constant", "reflect", "edge"}) {
    for (const Case& c : cases) {
      INFO("mode " << mode << " input " << shape_str(c.shape) << " pads " << shape_str(c.pads));
      const HostTensor pads = make_i64({static_cast<int64_t>(c.pads.size())}, c.pads);
      expect_gradient(check_first_input(make_node("Pad", {{"mode", mode}}, 2), {dyadic_random(c.shape, 17), pads}),
                      kPadTol);
    }
  }
  // Constant value and axes inputs (opset 18), both constants.
  const HostTensor x = dyadic_random({2, 3, 4}, 6);
  expect_gradient(check_first_input(make_node("Pad", {{"mode", "constant"}}, 4),
                                    {x, make_i64({4}, {1, -1, 2, 1}), make_f32({1}, {0.5f}), make_i64({2}, {2, 1})}),
                  kPadTol);
  expect_gradient(check_first_input(make_node("Pad", {{"mode", "reflect"}}, 4),
                                    {x, make_i64({2}, {2, 3}), make_f32({1}, {0.f}), make_i64({1}, {-1})}),
                  kPadTol);
}

TEST_CASE("Pad backward in reflect / edge mode gathers mirrored copies (hand-worked 1-D case)") {
  // x has 4 elements; pads (3, 2). Reflect reads x[3 2 1 | 0 1 2 3 | 2 1], edge reads x[0 0 0 | 0 1 2 3 | 3 3].
  const HostTensor x = make_f32({4}, {1, 2, 3, 4});
  HostTensor dy(DType::F32, {9});
  for (int i = 0; i < 9; ++i) dy.f32()[i] = std::ldexp(1.f, i);  // output position i contributes 2^i
  const HostTensor pads = make_i64({2}, {3, 2});
  const auto reflect = run_backward(make_node("Pad", {{"mode", "reflect"}}, 2), {x, pads}, {false, true}, {true, false}, dy);
  const std::vector<float> want_reflect = {8, 4 + 16 + 256, 2 + 32 + 128, 1 + 64};
  const auto edge = run_backward(make_node("Pad", {{"mode", "edge"}}, 2), {x, pads}, {false, true}, {true, false}, dy);
  const std::vector<float> want_edge = {1 + 2 + 4 + 8, 16, 32, 64 + 128 + 256};
  const auto constant = run_backward(make_node("Pad", {{"mode", "constant"}}, 2), {x, pads}, {false, true}, {true, false}, dy);
  const std::vector<float> want_constant = {8, 16, 32, 64};
  for (size_t i = 0; i < 4; ++i) {
    CHECK(reflect[0].f32()[i] == want_reflect[i]);
    CHECK(edge[0].f32()[i] == want_edge[i]);
    CHECK(constant[0].f32()[i] == want_constant[i]);
  }
}

// ---------------- accumulation and backward_needs ----------------

TEST_CASE("backward accumulates into a pre-filled dx") {
  struct Case {
    Node node;
    std::vector<HostTensor> inputs;
    std::vector<bool> constant, wrt;
  };
  const HostTensor x = distinct_grid({2, 3, 7, 8}, 2);
  std::vector<Case> cases = {
      {make_node("MaxPool", {{"kernel_shape", {3, 3}}, {"strides", {2, 2}}, {"pads", {1, 1, 1, 1}}}), {x}, {false}, {true}},
      {make_node("AveragePool", {{"kernel_shape", {3, 3}}, {"strides", {1, 1}}, {"ceil_mode", 1}}), {x}, {false}, {true}},
      {make_node("GlobalAveragePool", json::object()), {x}, {false}, {true}},
      {make_node("ReduceMean", {{"axes", {1, 3}}, {"keepdims", 0}}), {x}, {false}, {true}},
      {make_node("Reshape", json::object(), 2), {x, make_i64({2}, {6, -1})}, {false, true}, {true, false}},
      {make_node("Concat", {{"axis", 1}}, 3), {x, dyadic_random({2, 1, 7, 8}, 4), x}, {false, false, false}, {true, false, true}},
      {make_node("Pad", {{"mode", "reflect"}}, 2), {x, make_i64({8}, {0, 0, 2, -1, 0, 0, 1, 3})}, {false, true}, {true, false}},
  };
  for (const Case& c : cases) {
    INFO("op " << c.node.op);
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
      double max_grad = 0;
      int64_t mismatches = 0;
      for (int64_t e = 0; e < prefill[i].numel(); ++e) {
        const double want = double(prefill[i].f32()[e]) + double(fresh[i].f32()[e]);
        max_grad = std::max(max_grad, std::fabs(double(fresh[i].f32()[e])));
        // Each dx element takes at most 9 float additions in either order: 16 ulps of |values| <= 16 suffice.
        mismatches += !(std::fabs(added[i].f32()[e] - want) <= 16 * 16 * 6e-8);
      }
      CHECK(max_grad > 0.01);
      CHECK(mismatches == 0);
    }
  }
}

TEST_CASE("backward_needs keeps exactly what each backward reads") {
  const HostTensor x = dyadic_random({1, 2, 4, 4}, 1);
  struct Case {
    Node node;
    std::vector<HostTensor> inputs;
    std::vector<bool> want_inputs;
    bool want_output;
  };
  const HostTensor no_value(DType::F32, {0});  // stands for an omitted optional input ("")
  std::vector<Case> cases = {
      {make_node("MaxPool", {{"kernel_shape", {2, 2}}}), {x}, {true}, true},
      {make_node("AveragePool", {{"kernel_shape", {2, 2}}}), {x}, {false}, false},
      {make_node("GlobalAveragePool", json::object()), {x}, {false}, false},
      {make_node("ReduceMean", {{"axes", {2, 3}}}), {x}, {false}, false},
      {make_node("ReduceMean", {{"onnx_opset", 18}}, 2), {x, make_i64({1}, {1})}, {false, true}, false},
      {make_node("Flatten", json::object()), {x}, {false}, false},
      {make_node("Reshape", json::object(), 2), {x, make_i64({2}, {2, -1})}, {false, false}, false},
      {make_node("Squeeze", {{"axes", {0}}}), {x}, {false}, false},
      {make_node("Unsqueeze", json::object(), 2), {x, make_i64({1}, {0})}, {false, false}, false},
      {make_node("Concat", {{"axis", 1}}, 3), {x, x, x}, {false, false, false}, false},
      {make_node("Pad", json::object(), 2), {x, make_i64({8}, {0, 0, 1, 1, 0, 0, 1, 1})}, {false, true}, false},
      {make_node("Pad", json::object(), 4), {x, make_i64({2}, {1, 1}), make_f32({1}, {0.f}), make_i64({1}, {3})},
       {false, true, false, true}, false},
  };
  ThreadPool pool(1);
  Context ctx{Device::CPU, &pool};
  for (const Case& c : cases) {
    INFO("op " << c.node.op << " with " << c.inputs.size() << " inputs");
    auto op = build(c.node);
    const auto descs = descs_of(c.inputs, std::vector<bool>(c.inputs.size(), true));
    op->infer(descs);
    const BackwardNeeds needs = op->backward_needs(descs, 1);
    CHECK(needs.inputs == c.want_inputs);
    CHECK(needs.outputs == std::vector<bool>{c.want_output});
    // Only pools take a backward workspace on the CPU: the window taps of every output position per axis
    // (3 + 3 + the unused leading axis's 1 for a 2x2 kernel over 4x4), so their backward allocates nothing.
    const bool pool_op = c.node.op == "MaxPool" || c.node.op == "AveragePool";
    CHECK(op->backward_workspace_bytes(descs, ctx) == (pool_op ? 7 * sizeof(PoolTaps) : 0));
  }
  // An omitted optional input (Pad without a constant value but with axes) is not flagged.
  auto op = build(make_node("Pad", json::object(), 4));
  std::vector<TensorDesc> descs = descs_of({x, make_i64({2}, {1, 1}), no_value, make_i64({1}, {3})}, {true, true, true, true});
  descs[2].present = false;
  CHECK(op->backward_needs(descs, 1).inputs == std::vector<bool>{false, true, false, true});
}
