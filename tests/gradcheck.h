// Shared finite-difference gradient check for op backward passes (header-only, for the tests).
// The scalar loss is L = sum_j <w_j, y_j> with fixed random weights w_j per output, accumulated in double.
// The analytic gradient is Op::backward with dy_j = w_j; the numeric one is the central difference
// (L(x + h e_i) - L(x - h e_i)) / 2h per element. Inputs are float32 (camrt's storage), so h is not tiny:
// the central difference has O(h^2) truncation error, and float32 rounding of y contributes about
// 6e-8 * sum|w*y| / h. Callers choose inputs away from kinks (ReLU at 0, ties in MaxPool) by construction.
#pragma once
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/ops/op.h"

namespace camrt::testing {

struct GradCheckResult {
  double max_abs_error = 0;  // max |analytic - numeric| over checked elements
  double max_abs_grad = 0;   // max |numeric| (scale for a relative bound)
  int64_t checked = 0;       // elements compared
};

// inputs: all op inputs (F32 or I64); constant[i] marks inputs passed as constants to infer (e.g. shapes,
// weights); wrt[i] marks inputs to differentiate (must be F32). h: finite-difference step.
inline GradCheckResult gradcheck(const Node& node, const std::vector<HostTensor>& inputs, const std::vector<bool>& constant,
                                 const std::vector<bool>& wrt, double h = 1e-2, uint32_t seed = 7) {
  ThreadPool pool(2);
  auto factory = find_op(node.op);
  CAMRT_CHECK(factory, "gradcheck: unknown op " << node.op);
  std::unique_ptr<Op> op = factory(node);
  std::vector<TensorDesc> descs;
  for (size_t i = 0; i < inputs.size(); ++i)
    descs.push_back(TensorDesc{inputs[i].dtype, inputs[i].shape, constant[i] ? &inputs[i] : nullptr});
  const std::vector<TensorDesc> out_descs = op->infer(descs);
  Context ctx{Device::CPU, &pool};
  std::vector<uint8_t> workspace(std::max(op->workspace_bytes(descs, ctx), op->backward_workspace_bytes(descs, ctx)) + 64);
  ctx.workspace = workspace.data();
  ctx.workspace_bytes = workspace.size();

  std::vector<HostTensor> x = inputs;
  std::vector<HostTensor> y;
  for (const auto& d : out_descs) y.emplace_back(d.dtype, d.shape);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  std::vector<HostTensor> w;
  for (const auto& d : out_descs) {
    HostTensor t(DType::F32, d.shape);
    for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = uniform(rng);
    w.push_back(std::move(t));
  }
  auto views = [](std::vector<HostTensor>& ts) {
    std::vector<Tensor> v;
    for (auto& t : ts) v.push_back(t.view());
    return v;
  };
  auto loss = [&]() {
    std::vector<Tensor> xv = views(x), yv = views(y);
    std::vector<const Tensor*> in;
    std::vector<Tensor*> out;
    for (auto& t : xv) in.push_back(&t);
    for (auto& t : yv) out.push_back(&t);
    op->forward(ctx, in, out);
    double l = 0;
    for (size_t j = 0; j < y.size(); ++j)
      if (y[j].dtype == DType::F32)
        for (int64_t i = 0; i < y[j].numel(); ++i) l += double(w[j].f32()[i]) * double(y[j].f32()[i]);
    return l;
  };

  loss();  // forward at x, so y holds the forward outputs for backward
  std::vector<HostTensor> dx;
  for (size_t i = 0; i < inputs.size(); ++i) dx.emplace_back(DType::F32, wrt[i] ? inputs[i].shape : Shape{0});
  {
    std::vector<Tensor> xv = views(x), yv = views(y), wv = views(w), dxv = views(dx);
    std::vector<const Tensor*> in, out, dout;
    std::vector<Tensor*> din;
    for (auto& t : xv) in.push_back(&t);
    for (auto& t : yv) out.push_back(&t);
    for (auto& t : wv) dout.push_back(&t);
    for (size_t i = 0; i < dxv.size(); ++i) din.push_back(wrt[i] ? &dxv[i] : nullptr);
    op->backward(ctx, in, out, dout, din);
  }
  GradCheckResult r;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!wrt[i]) continue;
    for (int64_t e = 0; e < x[i].numel(); ++e) {
      const float saved = x[i].f32()[e];
      x[i].f32()[e] = static_cast<float>(saved + h);
      const double plus = loss();
      x[i].f32()[e] = static_cast<float>(saved - h);
      const double minus = loss();
      x[i].f32()[e] = saved;
      const double numeric = (plus - minus) / (2 * h);
      r.max_abs_error = std::max(r.max_abs_error, std::fabs(numeric - double(dx[i].f32()[e])));
      r.max_abs_grad = std::max(r.max_abs_grad, std::fabs(numeric));
      ++r.checked;
    }
  }
  return r;
}

// Random float32 tensor in [lo, hi).
inline HostTensor random_tensor(const Shape& shape, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  HostTensor t(DType::F32, shape);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = uniform(rng);
  return t;
}

}  // namespace camrt::testing
