// GPU convolutions (kernels/cuda/conv.cu, cuDNN) and matrix products (kernels/cuda/gemm.cu, cuBLAS) against their
// CPU twins (kernels/cpu/{conv,gemm}.cpp), forward and backward-data, at fp32 and tf32, over a matrix of geometries;
// then the Conv / Gemm / MatMul ops dispatching to the GPU (Context::device == CUDA) against the same ops on the CPU.
// Without a device, or in a CPU-only build, every case prints SKIPPED and passes.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "tests/gpu_test_util.h"

#ifdef CAMRT_WITH_CUDA
#include "engine/ops/op.h"
#include "kernels/cpu/conv.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cuda/conv.h"
#include "kernels/cuda/gemm.h"

using namespace camrt;
using nlohmann::json;

namespace {

// ---------------- data, device buffers, comparisons ----------------

// Deterministic values in [-1, 1) from a 32-bit LCG (Numerical Recipes constants). levels > 0 snaps them to a grid
// of 2 * levels values (exact zeros and activation bounds included), for the activation-mask ties.
std::vector<float> lcg_values(int64_t n, uint32_t seed, int levels = 0) {
  std::vector<float> v(static_cast<size_t>(n));
  uint32_t s = seed * 2654435761u + 12345u;
  for (float& x : v) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<float>(s >> 8) / static_cast<float>(1 << 23) - 1.f;
    if (levels > 0) x = std::floor(x * static_cast<float>(levels)) / static_cast<float>(levels);
  }
  return v;
}

std::vector<float> abs_of(const std::vector<float>& v) {
  std::vector<float> a(v.size());
  for (size_t i = 0; i < v.size(); ++i) a[i] = std::fabs(v[i]);
  return a;
}

DeviceBuffer upload(CudaRuntime& rt, const void* host, size_t bytes) {
  DeviceBuffer d(rt, bytes, "test data");
  copy_to_device(rt, d.data(), host, bytes);
  return d;
}
DeviceBuffer upload(CudaRuntime& rt, const std::vector<float>& host) {
  return upload(rt, host.data(), host.size() * sizeof(float));
}
std::vector<float> download(CudaRuntime& rt, const DeviceBuffer& d, size_t n) {
  std::vector<float> host(n);
  copy_to_host(rt, host.data(), d.data(), n * sizeof(float));  // synchronizes: kernel errors surface here
  return host;
}
float* f32(const DeviceBuffer& d) { return reinterpret_cast<float*>(d.data()); }

const float kNaN = std::numeric_limits<float>::quiet_NaN();

// Elements where |got - want| > tol(i) (a NaN anywhere counts as outside: an unwritten poisoned output shows here).
// Prints the first few offenders so a failure on the GPU machine says where.
template <typename Tol>
int64_t count_outside(const std::vector<float>& got, const std::vector<float>& want, Tol tol) {
  REQUIRE(got.size() == want.size());
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double diff = std::fabs(double(got[i]) - double(want[i]));
    if (diff <= tol(i)) continue;  // false for NaN
    if (++bad <= 5) MESSAGE("element " << i << ": got " << got[i] << ", want " << want[i] << ", tolerance " << tol(i));
  }
  return bad;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

// ---------------- tolerances ----------------
//
// Both sides compute a sum of `terms` products in float. Any summation order lies within
// terms * 2^-24 * mag of the exact value (the gamma_n bound, to first order; mag = the sum of |products|, computed
// by running the CPU twin on |inputs|), so the two differ by at most twice that. cuDNN may also pick transform
// algorithms (Winograd, FFT), whose rounding errors spread over a tile or a whole plane and grow with the
// transform (Winograd F(4x4,3x3) measures ~10x, F(6x6,3x3) ~100x the error of direct summation; FFT grows with
// log2 of its size): 256 * 2^-24 times the largest output magnitude covers them. An indexing mistake is off by at
// least one whole product, ~mag / terms >= 1e-3 * mag here, far above either term.
// TF32 (inputs rounded or truncated to a 10-bit mantissa: relative error <= 2^-10 per input, so <= 2^-9 per
// product, with fp32 accumulation) adds 2^-9 * mag; for convolutions also 2^-7 * the largest magnitude, since a
// transform algorithm rounds transformed tiles whose values exceed the outputs' by the transform's gain (~4). That
// is loose (0.8 %): the fp32 runs carry the tight check, tf32 checks that the tensor-core path is wired right.
constexpr double kEps = 1.0 / (1 << 24);

struct Tolerance {
  Precision precision = Precision::FP32;
  int64_t terms = 1;
  bool transforms = false;  // convolutions: cuDNN may use Winograd / FFT; cuBLAS GEMMs sum directly
  double bound(double mag, double max_mag) const {
    double t = 2.0 * double(terms + 2) * kEps * mag + 1e-30;
    if (transforms) t += 256 * kEps * max_mag;
    if (precision != Precision::FP32) t += std::ldexp(1.0, -9) * mag + (transforms ? std::ldexp(1.0, -7) * max_mag : 0.0);
    return t;
  }
};

auto tolerance_from(const Tolerance& tol, const std::vector<float>& mag) {
  double max_mag = 0;
  for (float m : mag) max_mag = std::max(max_mag, double(m));
  return [tol, &mag, max_mag](size_t i) { return tol.bound(mag[i], max_mag); };
}

// Restores the shared runtime's precision when a test case leaves, whatever it asserted.
struct PrecisionScope {
  CudaRuntime& rt;
  Precision saved;
  PrecisionScope(CudaRuntime& runtime, Precision p) : rt(runtime), saved(runtime.precision()) { rt.set_precision(p); }
  ~PrecisionScope() { rt.set_precision(saved); }
};

// ---------------- convolution geometries ----------------

struct ConvCase {
  const char* what;
  Conv2dShape s;
  bool bias;
  FusedActivation act;
};

Conv2dShape conv_shape(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t kh, int64_t kw, int64_t sh,
                       int64_t sw, int64_t dh, int64_t dw, int64_t pt, int64_t pl, int64_t pb, int64_t pr, int64_t g) {
  Conv2dShape s;
  s.batch = n;
  s.in_channels = c;
  s.in_h = h;
  s.in_w = w;
  s.out_channels = k;
  s.kernel_h = kh;
  s.kernel_w = kw;
  s.stride_h = sh;
  s.stride_w = sw;
  s.dilation_h = dh;
  s.dilation_w = dw;
  s.pad_top = pt;
  s.pad_left = pl;
  s.pad_bottom = pb;
  s.pad_right = pr;
  s.groups = g;
  return s;
}

FusedActivation relu() {
  FusedActivation a;
  a.kind = FusedActivation::kRelu;
  return a;
}
FusedActivation clip(float lo, float hi) {
  FusedActivation a;
  a.kind = FusedActivation::kClip;
  a.min = lo;
  a.max = hi;
  return a;
}

// Odd sizes, batch > 1, groups (dense, grouped, depthwise, depthwise with multiplier), strides, dilations,
// symmetric and asymmetric pads (larger at the end as SAME_UPPER makes them, larger at the beginning, on one axis
// only), 1x1, 1-D, with and without bias, each fused activation (relu with a bias takes cuDNN's fused call).
const std::vector<ConvCase>& conv_cases() {
  static const std::vector<ConvCase> cases = {
      {"dense 3x3 pad 1, bias", conv_shape(2, 3, 11, 13, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1), true, {}},
      {"dense 3x3 pad 1, bias + relu (fused call)", conv_shape(2, 5, 9, 10, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1), true, relu()},
      {"depthwise 3x3 stride 2, bias + relu", conv_shape(2, 8, 9, 7, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 8), true, relu()},
      {"depthwise x2 5x5 pad 2", conv_shape(2, 4, 6, 6, 8, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2, 4), true, {}},
      {"grouped, strides (2,1), dilations (2,1), asymmetric pads, relu without bias",
       conv_shape(2, 6, 10, 9, 4, 3, 2, 2, 1, 2, 1, 0, 1, 2, 0, 2), false, relu()},
      {"1x1, batch 3, bias", conv_shape(3, 16, 7, 7, 12, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1), true, {}},
      {"1x1 stride 2, no bias", conv_shape(2, 6, 9, 8, 5, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 1), false, {}},
      {"SAME_UPPER stride 2 (pads 0,0,1,1), bias + clip", conv_shape(1, 4, 8, 8, 6, 3, 3, 2, 2, 1, 1, 0, 0, 1, 1, 1), true,
       clip(-0.5f, 0.5f)},
      {"pads larger at the beginning (2,1,0,3), stride 3", conv_shape(2, 3, 10, 11, 4, 3, 3, 3, 3, 1, 1, 2, 1, 0, 3, 1),
       false, {}},
      {"1-D: kernel 5, stride 2, dilation 2, pads (2,3), bias + relu",
       conv_shape(2, 5, 1, 17, 7, 1, 5, 1, 2, 1, 2, 0, 2, 0, 3, 1), true, relu()},
      {"ResNet-like 3x3, 32 -> 64 channels, bias + relu", conv_shape(2, 32, 28, 28, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1),
       true, relu()},
      {"7x7 stride 2 pad 3 stem", conv_shape(2, 3, 33, 31, 16, 7, 7, 2, 2, 1, 1, 3, 3, 3, 3, 1), true, {}},
  };
  return cases;
}

int64_t numel_in(const Conv2dShape& s) { return s.batch * s.in_channels * s.in_h * s.in_w; }
int64_t numel_out(const Conv2dShape& s) { return s.batch * s.out_channels * s.out_h() * s.out_w(); }
int64_t numel_weight(const Conv2dShape& s) { return s.out_channels * (s.in_channels / s.groups) * s.kernel_h * s.kernel_w; }

std::vector<float> cpu_conv_forward(const std::vector<float>& x, const std::vector<float>& w, const float* bias,
                                    const Conv2dShape& s, const FusedActivation& act, ThreadPool& pool) {
  std::vector<float> out(size_t(numel_out(s)));
  std::vector<uint8_t> ws(conv2d_workspace_bytes(s, pool.num_threads()));
  conv2d_forward(out.data(), x.data(), w.data(), bias, s, act, ws.empty() ? nullptr : ws.data(), ws.size(), pool);
  return out;
}

std::vector<float> cpu_conv_backward(std::vector<float> dx, const std::vector<float>& dy, const std::vector<float>& w,
                                     const Conv2dShape& s, ThreadPool& pool) {
  std::vector<uint8_t> ws(conv2d_backward_data_workspace_bytes(s, pool.num_threads()));
  conv2d_backward_data(dx.data(), dy.data(), w.data(), s, ws.empty() ? nullptr : ws.data(), ws.size(), pool);
  return dx;
}

void check_conv_forward(CudaRuntime& rt, const ConvCase& c, Precision precision, ThreadPool& pool, uint32_t seed) {
  INFO(c.what << " at " << precision_name(precision));
  PrecisionScope scope(rt, precision);
  const Conv2dShape& s = c.s;
  const std::vector<float> x = lcg_values(numel_in(s), seed), w = lcg_values(numel_weight(s), seed + 1);
  const std::vector<float> bias = lcg_values(s.out_channels, seed + 2);
  const float* bias_host = c.bias ? bias.data() : nullptr;
  const std::vector<float> want = cpu_conv_forward(x, w, bias_host, s, c.act, pool);
  const std::vector<float> abs_bias = abs_of(bias);
  const std::vector<float> mag =
      cpu_conv_forward(abs_of(x), abs_of(w), c.bias ? abs_bias.data() : nullptr, s, FusedActivation{}, pool);

  const size_t ws_bytes = cuda::conv2d_workspace_bytes(rt, s, cuda::ConvDirection::kForward);
  DeviceBuffer ws(rt, ws_bytes, "conv workspace");
  DeviceBuffer dx = upload(rt, x), dw = upload(rt, w), db = upload(rt, bias);
  DeviceBuffer dout = upload(rt, std::vector<float>(size_t(numel_out(s)), kNaN));  // every element must be written
  const int64_t allocations = rt.device_allocations();
  for (int repeat = 0; repeat < 2; ++repeat)  // the second call runs from the cached algorithm (and fusion choice)
    cuda::conv2d_forward(f32(dout), f32(dx), f32(dw), c.bias ? f32(db) : nullptr, s, c.act, ws.data(), ws.bytes(), rt);
  const std::vector<float> got = download(rt, dout, want.size());
  CHECK(rt.device_allocations() == allocations);  // launchers allocate nothing
  Tolerance tol{precision, (s.in_channels / s.groups) * s.kernel_h * s.kernel_w + 1, true};
  CHECK(count_outside(got, want, tolerance_from(tol, mag)) == 0);
}

void check_conv_backward(CudaRuntime& rt, const ConvCase& c, Precision precision, ThreadPool& pool, uint32_t seed) {
  INFO(c.what << " backward at " << precision_name(precision));
  PrecisionScope scope(rt, precision);
  const Conv2dShape& s = c.s;
  const std::vector<float> w = lcg_values(numel_weight(s), seed + 1), dy = lcg_values(numel_out(s), seed + 3);
  const std::vector<float> prefill = lcg_values(numel_in(s), seed + 4);  // dx accumulates
  const std::vector<float> want = cpu_conv_backward(prefill, dy, w, s, pool);
  const std::vector<float> mag = cpu_conv_backward(abs_of(prefill), abs_of(dy), abs_of(w), s, pool);

  const size_t ws_bytes = cuda::conv2d_workspace_bytes(rt, s, cuda::ConvDirection::kBackwardData);
  DeviceBuffer ws(rt, ws_bytes, "conv backward workspace");
  DeviceBuffer ddx = upload(rt, prefill), ddy = upload(rt, dy), dw = upload(rt, w);
  const int64_t allocations = rt.device_allocations();
  cuda::conv2d_backward_data(f32(ddx), f32(ddy), f32(dw), s, ws.data(), ws.bytes(), rt);
  const std::vector<float> got = download(rt, ddx, want.size());
  CHECK(rt.device_allocations() == allocations);
  // Each dx element sums at most out_channels / groups * kh * kw products, plus the pre-filled value.
  Tolerance tol{precision, (s.out_channels / s.groups) * s.kernel_h * s.kernel_w + 1, true};
  CHECK(count_outside(got, want, tolerance_from(tol, mag)) == 0);
}

// ---------------- GEMM cases ----------------

struct GemmCase {
  int64_t m, n, k;
  bool trans_a, trans_b;
  float alpha, beta;
  bool bias_row, bias_col;
  FusedActivation act;
};

// C = act(alpha op(A) op(B) + beta C + bias) with leading dims larger than the matrices (pad 3), compared with the
// CPU gemm; the padding columns must come back untouched.
void check_gemm(CudaRuntime& rt, const GemmCase& t, Precision precision, ThreadPool& pool, uint32_t seed) {
  INFO("gemm m " << t.m << " n " << t.n << " k " << t.k << " transA " << t.trans_a << " transB " << t.trans_b
                 << " alpha " << t.alpha << " beta " << t.beta << " bias_row " << t.bias_row << " bias_col "
                 << t.bias_col << " act " << int(t.act.kind) << " at " << precision_name(precision));
  PrecisionScope scope(rt, precision);
  const int64_t a_rows = t.trans_a ? t.k : t.m, a_cols = t.trans_a ? t.m : t.k;
  const int64_t b_rows = t.trans_b ? t.n : t.k, b_cols = t.trans_b ? t.k : t.n;
  const int64_t lda = a_cols + 3, ldb = b_cols + 3, ldc = t.n + 3;
  const std::vector<float> a = lcg_values(a_rows * lda, seed), b = lcg_values(b_rows * ldb, seed + 1);
  const std::vector<float> c0 = lcg_values(t.m * ldc, seed + 2);
  const std::vector<float> bias_row = lcg_values(t.m, seed + 3), bias_col = lcg_values(t.n, seed + 4);
  GemmEpilogue epi;
  epi.bias_row = t.bias_row ? bias_row.data() : nullptr;
  epi.bias_col = t.bias_col ? bias_col.data() : nullptr;
  epi.act = t.act;
  std::vector<float> want = c0;
  gemm(want.data(), ldc, a.data(), lda, t.trans_a, b.data(), ldb, t.trans_b, t.m, t.n, t.k, t.alpha, t.beta, epi,
       nullptr, 0, pool);
  // Magnitudes: |alpha| |A| |B| + |beta| |C| + |biases|, no activation (1-Lipschitz).
  const std::vector<float> abs_row = abs_of(bias_row), abs_col = abs_of(bias_col);
  GemmEpilogue abs_epi;
  abs_epi.bias_row = t.bias_row ? abs_row.data() : nullptr;
  abs_epi.bias_col = t.bias_col ? abs_col.data() : nullptr;
  std::vector<float> mag = abs_of(c0);
  gemm(mag.data(), ldc, abs_of(a).data(), lda, t.trans_a, abs_of(b).data(), ldb, t.trans_b, t.m, t.n, t.k,
       std::fabs(t.alpha), std::fabs(t.beta), abs_epi, nullptr, 0, pool);

  DeviceBuffer da = upload(rt, a), dbuf = upload(rt, b), dc = upload(rt, c0);
  DeviceBuffer drow = upload(rt, bias_row), dcol = upload(rt, bias_col);
  GemmEpilogue dev_epi = epi;
  dev_epi.bias_row = t.bias_row ? f32(drow) : nullptr;
  dev_epi.bias_col = t.bias_col ? f32(dcol) : nullptr;
  cuda::gemm(f32(dc), ldc, f32(da), lda, t.trans_a, f32(dbuf), ldb, t.trans_b, t.m, t.n, t.k, t.alpha, t.beta, dev_epi,
             rt);
  const std::vector<float> got = download(rt, dc, c0.size());
  Tolerance tol{precision, t.k + 2, false};  // k products, beta * C and the bias
  const auto within = tolerance_from(tol, mag);
  int64_t bad = 0, padding_changed = 0;
  for (int64_t i = 0; i < t.m; ++i)
    for (int64_t j = 0; j < ldc; ++j) {
      const size_t e = size_t(i * ldc + j);
      if (j >= t.n) {
        padding_changed += !same_bits(got[e], c0[e]);
        continue;
      }
      const double diff = std::fabs(double(got[e]) - double(want[e]));
      if (!(diff <= within(e)) && ++bad <= 5) MESSAGE("(" << i << ", " << j << "): got " << got[e] << ", want " << want[e]);
    }
  CHECK(bad == 0);
  CHECK(padding_changed == 0);
}

// ---------------- ops on both devices ----------------

Node make_node(const std::string& op, json attrs, size_t num_inputs) {
  Node n;
  n.op = op;
  n.name = "/gpu_" + op;
  for (size_t i = 0; i < num_inputs; ++i) n.inputs.push_back("in" + std::to_string(i));
  n.outputs = {"out"};
  n.attrs = std::move(attrs);
  return n;
}

std::unique_ptr<Op> build(const Node& node) {
  OpFactory f = find_op(node.op);
  const bool registered = f != nullptr;
  REQUIRE_MESSAGE(registered, "op " << node.op << " is not registered");
  return f(node);
}

HostTensor random_tensor(const Shape& shape, uint32_t seed) {
  HostTensor t(DType::F32, shape);
  const std::vector<float> v = lcg_values(t.numel(), seed);
  std::copy(v.begin(), v.end(), t.f32());
  return t;
}

std::vector<float> floats(const HostTensor& t) { return std::vector<float>(t.f32(), t.f32() + t.numel()); }

struct In {
  HostTensor t;
  bool constant = false;
};

struct OpRun {
  HostTensor y;
  std::vector<HostTensor> dx;
};

// Runs the op forward, then backward of dy into input gradients pre-filled with lcg values (wrt[i]: input i gets
// one), on `device`, with the workspace the op asks for on that device. Every input is uploaded on the GPU,
// constants included (as the executor uploads weights).
OpRun run_op(CudaRuntime& rt, Device device, const Node& node, const std::vector<In>& ins, const HostTensor& dy,
             const std::vector<bool>& wrt, bool guided = false) {
  auto op = build(node);
  std::vector<TensorDesc> descs;
  for (const In& in : ins) descs.push_back(TensorDesc{in.t.dtype, in.t.shape, in.constant ? &in.t : nullptr});
  const std::vector<TensorDesc> out_desc = op->infer(descs);
  REQUIRE(out_desc.size() == 1);
  REQUIRE(out_desc[0].shape == dy.shape);
  ThreadPool pool(2);
  Context ctx{device, device == Device::CPU ? &pool : nullptr, device == Device::CUDA ? &rt : nullptr};
  ctx.guided_relu = guided;
  const size_t ws_bytes = std::max(op->workspace_bytes(descs, ctx), op->backward_workspace_bytes(descs, ctx));
  const bool gpu = device == Device::CUDA;
  std::vector<uint8_t> host_ws(gpu ? 0 : ws_bytes);
  DeviceBuffer dev_ws(rt, gpu ? ws_bytes : 0, "op workspace");
  ctx.workspace = gpu ? static_cast<void*>(dev_ws.data()) : (host_ws.empty() ? nullptr : host_ws.data());
  ctx.workspace_bytes = ws_bytes;

  OpRun run;
  run.y = HostTensor(DType::F32, out_desc[0].shape);
  for (size_t i = 0; i < ins.size(); ++i) {
    HostTensor d(DType::F32, wrt[i] ? ins[i].t.shape : Shape{0});
    const std::vector<float> pre = lcg_values(d.numel(), 500 + uint32_t(i));
    std::copy(pre.begin(), pre.end(), d.f32());
    run.dx.push_back(std::move(d));
  }
  // Tensors on the device (buffers) or views of the host copies.
  std::vector<DeviceBuffer> buffers;
  const auto place = [&](HostTensor& t) {
    if (!gpu) return t.view();
    buffers.push_back(upload(rt, t.bytes.data(), t.bytes.size()));
    return Tensor{buffers.back().data(), t.dtype, t.shape, Device::CUDA};
  };
  std::vector<HostTensor> inputs;
  for (const In& in : ins) inputs.push_back(in.t);
  std::vector<Tensor> x_views;
  for (HostTensor& t : inputs) x_views.push_back(place(t));
  std::vector<const Tensor*> x_ptrs;
  for (const Tensor& v : x_views) x_ptrs.push_back(&v);
  std::vector<float> poison(size_t(run.y.numel()), kNaN);
  std::memcpy(run.y.f32(), poison.data(), poison.size() * sizeof(float));
  Tensor y_view = place(run.y);
  HostTensor dy_copy = dy;
  const Tensor dy_view = place(dy_copy);
  std::vector<Tensor> dx_views(ins.size());
  std::vector<Tensor*> dx_ptrs(ins.size(), nullptr);
  for (size_t i = 0; i < ins.size(); ++i) {
    dx_views[i] = place(run.dx[i]);
    if (wrt[i]) dx_ptrs[i] = &dx_views[i];
  }

  op->forward(ctx, x_ptrs, {&y_view});
  op->backward(ctx, x_ptrs, {&y_view}, {&dy_view}, dx_ptrs);
  if (gpu) {
    copy_to_host(rt, run.y.bytes.data(), y_view.data, run.y.bytes.size());
    for (size_t i = 0; i < ins.size(); ++i)
      copy_to_host(rt, run.dx[i].bytes.data(), dx_views[i].data, run.dx[i].bytes.size());
  }
  return run;
}

// For the op tests: inputs in [-1, 1), so every product is below 1 and mag <= terms (+1 for a bias or C, +1 for the
// pre-filled gradient); the fp32 bound above with that mag, and the transform slack for convolutions.
double op_tolerance(int64_t terms, bool conv) {
  const double mag = double(terms + 2);
  return Tolerance{Precision::FP32, terms, conv}.bound(mag, mag);
}

void compare_runs(const OpRun& gpu, const OpRun& cpu, double tol) {
  CHECK(gpu.y.shape == cpu.y.shape);
  const auto within = [tol](size_t) { return tol; };
  CHECK(count_outside(floats(gpu.y), floats(cpu.y), within) == 0);
  REQUIRE(gpu.dx.size() == cpu.dx.size());
  for (size_t i = 0; i < gpu.dx.size(); ++i) {
    INFO("gradient of input " << i);
    CHECK(count_outside(floats(gpu.dx[i]), floats(cpu.dx[i]), within) == 0);
  }
}

}  // namespace
#endif  // CAMRT_WITH_CUDA

// ---------------- convolution launchers ----------------

TEST_CASE("gpu: conv2d forward matches the CPU twin at fp32 (groups, depthwise, strides, dilations, asymmetric pads, 1x1, 1-D)") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  ThreadPool pool(2);
  uint32_t seed = 1;
  for (const ConvCase& c : conv_cases()) check_conv_forward(*runtime, c, Precision::FP32, pool, seed += 10);
#endif
}

TEST_CASE("gpu: conv2d forward at tf32 stays within the 10-bit-mantissa bound") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  ThreadPool pool(2);
  uint32_t seed = 2;
  for (const ConvCase& c : conv_cases()) check_conv_forward(*runtime, c, Precision::TF32, pool, seed += 10);
#endif
}

TEST_CASE("gpu: conv2d backward-data accumulates into dx and matches the CPU twin at fp32 and tf32") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  ThreadPool pool(2);
  uint32_t seed = 3;
  for (const ConvCase& c : conv_cases()) {
    check_conv_backward(*runtime, c, Precision::FP32, pool, seed += 10);
    check_conv_backward(*runtime, c, Precision::TF32, pool, seed);
  }
#endif
}

TEST_CASE("gpu: conv2d workspace covers the zero-padded copy for asymmetric pads, and the algorithm is cached") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  PrecisionScope scope(*runtime, Precision::FP32);
  // SAME_UPPER, stride 2: pads (0, 0, 1, 1) need the input copied into a (2, 4, 9, 9) buffer.
  const Conv2dShape s = conv_shape(2, 4, 8, 8, 6, 3, 3, 2, 2, 1, 1, 0, 0, 1, 1, 1);
  for (cuda::ConvDirection direction : {cuda::ConvDirection::kForward, cuda::ConvDirection::kBackwardData}) {
    const size_t bytes = cuda::conv2d_workspace_bytes(*runtime, s, direction);
    CHECK(bytes >= size_t(2 * 4 * 9 * 9) * sizeof(float));
    // Asked again: the same answer, from the cache (a different choice would break plans sized with the first).
    CHECK(cuda::conv2d_workspace_bytes(*runtime, s, direction) == bytes);
  }
  // Symmetric pads need no copy: the workspace is cuDNN's alone, within the cap (small shapes: the 32 MiB floor).
  const Conv2dShape sym = conv_shape(2, 4, 8, 8, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1);
  CHECK(cuda::conv2d_workspace_bytes(*runtime, sym, cuda::ConvDirection::kForward) <= cuda::kConvWorkspaceMinCapBytes);
  // A workspace smaller than asked is refused with an error, not overrun.
  const size_t need = cuda::conv2d_workspace_bytes(*runtime, s, cuda::ConvDirection::kForward);
  DeviceBuffer x(*runtime, size_t(2 * 4 * 8 * 8) * sizeof(float), "x"), w(*runtime, size_t(6 * 4 * 9) * sizeof(float), "w");
  DeviceBuffer y(*runtime, size_t(2 * 6 * 4 * 4) * sizeof(float), "y"), ws(*runtime, need, "ws");
  CHECK_THROWS_AS(cuda::conv2d_forward(f32(y), f32(x), f32(w), nullptr, s, FusedActivation{}, ws.data(), need - 4, *runtime),
                  Error);
#endif
}

TEST_CASE("gpu: conv2d activation mask equals the CPU twin bit for bit (relu, guided relu, clip, none, in place)") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  ThreadPool pool(2);
  const int64_t n = 1001;
  // y on a 1/4 grid: exact zeros and exact clip bounds (-0.5, 0.5), where the strict comparisons decide.
  const std::vector<float> y = lcg_values(n, 7, 4), dy = lcg_values(n, 8, 4);
  const std::vector<FusedActivation> acts = {relu(), clip(-0.5f, 0.5f), FusedActivation{}};
  for (const FusedActivation& act : acts)
    for (bool guided : {false, true})
      for (bool in_place : {false, true}) {
        INFO("act " << int(act.kind) << " guided " << guided << " in place " << in_place);
        std::vector<float> want(static_cast<size_t>(n));
        conv2d_activation_backward(want.data(), dy.data(), y.data(), n, act, guided, pool);
        DeviceBuffer dy_dev = upload(*runtime, dy), y_dev = upload(*runtime, y);
        DeviceBuffer out = upload(*runtime, std::vector<float>(size_t(n), kNaN));
        float* masked = in_place ? f32(dy_dev) : f32(out);
        cuda::conv2d_activation_backward(masked, f32(dy_dev), f32(y_dev), n, act, guided, runtime->stream());
        const std::vector<float> got = download(*runtime, in_place ? dy_dev : out, size_t(n));
        int64_t differ = 0, zeros = 0;
        for (int64_t i = 0; i < n; ++i) {
          differ += !same_bits(got[size_t(i)], want[size_t(i)]);
          zeros += got[size_t(i)] == 0.f;
        }
        CHECK(differ == 0);
        if (act.kind != FusedActivation::kNone) CHECK(zeros > n / 10);  // the mask did block something
      }
#endif
}

// ---------------- GEMM launchers ----------------

TEST_CASE("gpu: gemm matches the CPU gemm for every transpose, alpha, beta, bias and activation, at fp32 and tf32") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  ThreadPool pool(2);
  std::vector<GemmCase> cases;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      cases.push_back({37, 29, 53, ta, tb, 1.f, 0.f, false, false, {}});
      cases.push_back({5, 131, 17, ta, tb, -0.75f, 1.f, true, false, relu()});
      cases.push_back({64, 1, 300, ta, tb, 2.f, 0.5f, false, true, clip(-1.f, 1.f)});
    }
  cases.push_back({1, 1000, 512, false, true, 1.f, 0.f, false, true, {}});  // a classifier head: (1, 512) x W^T + b
  cases.push_back({9, 7, 0, false, false, 1.f, 0.5f, true, true, {}});      // K = 0: C = beta C + bias
  cases.push_back({9, 7, 0, true, false, 1.f, 0.f, false, false, relu()});  // K = 0, beta = 0: C = act(0)
  uint32_t seed = 100;
  for (const GemmCase& t : cases)
    for (Precision p : {Precision::FP32, Precision::TF32}) check_gemm(*runtime, t, p, pool, seed += 7);
#endif
}

TEST_CASE("gpu: gemm_strided_batched matches per-matrix CPU gemms, shared operands included") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  ThreadPool pool(2);
  PrecisionScope scope(*runtime, Precision::FP32);
  struct Case {
    int64_t m, n, k, batch;
    bool trans_a, trans_b, share_a, share_b;
    float alpha, beta;
  };
  const std::vector<Case> cases = {
      {7, 9, 11, 4, false, false, false, false, 1.f, 0.f},
      {7, 9, 11, 3, true, false, true, false, 1.f, 1.f},   // one A for every item (stride 0), accumulate
      {6, 5, 13, 5, false, true, false, true, 0.5f, 0.f},  // one B for every item
      {16, 3, 2, 2, true, true, false, false, -1.f, 0.25f},
      {4, 4, 0, 3, false, false, false, false, 1.f, 0.5f},  // K = 0
  };
  uint32_t seed = 300;
  for (const Case& c : cases) {
    INFO("m " << c.m << " n " << c.n << " k " << c.k << " batch " << c.batch << " transA " << c.trans_a << " transB "
              << c.trans_b << " shareA " << c.share_a << " shareB " << c.share_b);
    const int64_t lda = c.trans_a ? c.m : c.k, ldb = c.trans_b ? c.k : c.n, ldc = c.n;
    const int64_t size_a = c.m * c.k, size_b = c.k * c.n, size_c = c.m * c.n;
    const int64_t stride_a = c.share_a ? 0 : size_a, stride_b = c.share_b ? 0 : size_b;
    const std::vector<float> a = lcg_values(c.share_a ? size_a : size_a * c.batch, seed += 3);
    const std::vector<float> b = lcg_values(c.share_b ? size_b : size_b * c.batch, seed + 1);
    const std::vector<float> c0 = lcg_values(size_c * c.batch, seed + 2);
    std::vector<float> want = c0, mag = abs_of(c0);
    const std::vector<float> abs_a = abs_of(a), abs_b = abs_of(b);
    for (int64_t t = 0; t < c.batch; ++t) {
      gemm(want.data() + t * size_c, ldc, a.data() + t * stride_a, lda, c.trans_a, b.data() + t * stride_b, ldb,
           c.trans_b, c.m, c.n, c.k, c.alpha, c.beta, GemmEpilogue{}, nullptr, 0, pool);
      gemm(mag.data() + t * size_c, ldc, abs_a.data() + t * stride_a, lda, c.trans_a, abs_b.data() + t * stride_b, ldb,
           c.trans_b, c.m, c.n, c.k, std::fabs(c.alpha), std::fabs(c.beta), GemmEpilogue{}, nullptr, 0, pool);
    }
    DeviceBuffer da = upload(*runtime, a), db = upload(*runtime, b), dc = upload(*runtime, c0);
    cuda::gemm_strided_batched(f32(dc), ldc, size_c, f32(da), lda, stride_a, c.trans_a, f32(db), ldb, stride_b,
                               c.trans_b, c.m, c.n, c.k, c.batch, c.alpha, c.beta, *runtime);
    const std::vector<float> got = download(*runtime, dc, c0.size());
    CHECK(count_outside(got, want, tolerance_from(Tolerance{Precision::FP32, c.k + 1, false}, mag)) == 0);
  }
  // Products into one shared C would race: refused.
  DeviceBuffer buf(*runtime, 64 * sizeof(float), "buf");
  CHECK_THROWS_AS(cuda::gemm_strided_batched(f32(buf), 2, 0, f32(buf), 2, 4, false, f32(buf), 2, 4, false, 2, 2, 2, 3,
                                             1.f, 0.f, *runtime),
                  Error);
#endif
}

TEST_CASE("gpu: broadcast_matrix and broadcast_matrix_backward match host loops for every C shape") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  const int64_t m = 37, n = 300;
  const std::vector<float> dy = lcg_values(m * n, 11);
  for (const auto& shape : std::vector<std::pair<int64_t, int64_t>>{{1, n}, {m, 1}, {1, 1}, {m, n}}) {
    const int64_t rows = shape.first, cols = shape.second;
    INFO("C (" << rows << ", " << cols << ")");
    const std::vector<float> c = lcg_values(rows * cols, 12), prefill = lcg_values(rows * cols, 13);
    DeviceBuffer dc = upload(*runtime, c), y = upload(*runtime, std::vector<float>(size_t(m * n), kNaN));
    cuda::broadcast_matrix(f32(y), f32(dc), m, n, rows, cols, runtime->stream());
    const std::vector<float> got_y = download(*runtime, y, size_t(m * n));
    int64_t differ = 0;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j)
        differ += !same_bits(got_y[size_t(i * n + j)], c[size_t((rows == 1 ? 0 : i) * cols + (cols == 1 ? 0 : j))]);
    CHECK(differ == 0);

    const float scale = 0.75f;
    DeviceBuffer ddy = upload(*runtime, dy), grad = upload(*runtime, prefill);
    cuda::broadcast_matrix_backward(f32(grad), f32(ddy), m, n, rows, cols, scale, runtime->stream());
    const std::vector<float> got = download(*runtime, grad, prefill.size());
    std::vector<double> sum(prefill.size(), 0.0), mag(prefill.size(), 0.0);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        const size_t e = size_t((rows == 1 ? 0 : i) * cols + (cols == 1 ? 0 : j));
        sum[e] += dy[size_t(i * n + j)];
        mag[e] += std::fabs(dy[size_t(i * n + j)]);
      }
    // Double sums (error ~1e-16 * mag), then float roundings of scale * sum and of the addition: 2 ulps.
    int64_t bad = 0;
    for (size_t e = 0; e < got.size(); ++e) {
      const double want = double(prefill[e]) + double(scale) * sum[e];
      const double tol = 2 * kEps * 2 * (std::fabs(prefill[e]) + scale * mag[e]) + 1e-12;
      bad += !(std::fabs(got[e] - want) <= tol);
    }
    CHECK(bad == 0);
  }
#endif
}

// ---------------- ops on the GPU ----------------

TEST_CASE("gpu: Conv op forward and backward on the GPU match the CPU op (auto_pad, groups, fused relu / clip, 1-D)") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  PrecisionScope scope(*runtime, Precision::FP32);
  struct Case {
    json attrs;
    Shape x, w;
    bool bias, guided;
  };
  const std::vector<Case> cases = {
      {{{"pads", {1, 1, 1, 1}}}, {2, 8, 7, 6}, {6, 8, 3, 3}, true, false},
      {{{"auto_pad", "SAME_UPPER"}, {"strides", {2, 2}}, {"group", 2}}, {2, 4, 9, 8}, {6, 2, 3, 3}, true, false},
      {{{"auto_pad", "SAME_LOWER"}, {"strides", {2, 2}}, {"activation", "relu"}}, {1, 3, 8, 9}, {5, 3, 4, 4}, true, true},
      {{{"group", 8}, {"strides", {2, 2}}, {"pads", {1, 1, 1, 1}}, {"activation", "relu"}}, {2, 8, 7, 6}, {16, 1, 3, 3}, false, false},
      {{{"group", 2}, {"activation", "clip"}, {"activation_min", -0.5}, {"activation_max", 0.5}, {"dilations", {2, 1}}},
       {2, 8, 7, 6}, {4, 4, 2, 2}, true, false},
      {{{"pads", {2, 1}}, {"strides", {2}}, {"activation", "relu"}}, {2, 5, 19}, {7, 5, 4}, true, false},  // 1-D
  };
  for (const Case& c : cases) {
    INFO("Conv " << c.attrs.dump() << " x " << shape_str(c.x) << " w " << shape_str(c.w) << " guided " << c.guided);
    const Node node = make_node("Conv", c.attrs, c.bias ? 3 : 2);
    std::vector<In> ins = {{random_tensor(c.x, 1)}, {random_tensor(c.w, 2), true}};
    if (c.bias) ins.push_back({random_tensor({c.w[0]}, 3), true});
    std::vector<TensorDesc> descs;
    for (const In& in : ins) descs.push_back(TensorDesc{DType::F32, in.t.shape, in.constant ? &in.t : nullptr});
    const Shape y_shape = build(node)->infer(descs)[0].shape;
    const HostTensor dy = random_tensor(y_shape, 4);
    std::vector<bool> wrt(ins.size(), false);
    wrt[0] = true;
    const OpRun gpu = run_op(*runtime, Device::CUDA, node, ins, dy, wrt, c.guided);
    const OpRun cpu = run_op(*runtime, Device::CPU, node, ins, dy, wrt, c.guided);
    int64_t terms = c.w[1];
    for (size_t d = 2; d < c.w.size(); ++d) terms *= c.w[d];
    terms = std::max(terms, c.w[0] * terms / c.w[1]);  // forward: Cin/g * k taps; backward: Cout * k >= Cout/g * k
    compare_runs(gpu, cpu, op_tolerance(terms, true));
  }
#endif
}

TEST_CASE("gpu: Conv op with a fused residual input matches the CPU op (cuDNN conv+bias+z+relu, epilogue otherwise), dZ too") {
  // Y = act(conv(X, W) + B + Z): with relu the one cuDNN call (alpha2 = 1), with clip or no activation the
  // epilogue kernel adding Z; backward: dX through the conv, dZ = the masked dy (guided too).
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  PrecisionScope scope(*runtime, Precision::FP32);
  struct Case {
    json attrs;
    Shape x, w;
    bool guided;
  };
  const std::vector<Case> cases = {
      {{{"pads", {1, 1, 1, 1}}, {"activation", "relu"}}, {2, 8, 7, 6}, {8, 8, 3, 3}, false},
      {{{"activation", "relu"}}, {2, 16, 5, 5}, {32, 16, 1, 1}, true},  // a bottleneck's 1x1 projection, guided
      {{{"pads", {1, 1, 1, 1}}, {"activation", "clip"}, {"activation_min", -0.5}, {"activation_max", 0.5}}, {1, 4, 6, 6}, {4, 4, 3, 3}, false},
      {{{"strides", {2, 2}}}, {2, 4, 8, 8}, {6, 4, 2, 2}, false},
  };
  for (const Case& c : cases) {
    INFO("Conv + residual " << c.attrs.dump() << " x " << shape_str(c.x) << " w " << shape_str(c.w) << " guided " << c.guided);
    std::vector<In> ins = {{random_tensor(c.x, 1)}, {random_tensor(c.w, 2), true}, {random_tensor({c.w[0]}, 3), true}};
    std::vector<TensorDesc> descs;
    for (const In& in : ins) descs.push_back(TensorDesc{DType::F32, in.t.shape, in.constant ? &in.t : nullptr});
    const Shape y_shape = build(make_node("Conv", c.attrs, 3))->infer(descs)[0].shape;
    ins.push_back({random_tensor(y_shape, 5)});
    const Node node = make_node("Conv", c.attrs, 4);
    const HostTensor dy = random_tensor(y_shape, 4);
    const std::vector<bool> wrt = {true, false, false, true};
    const OpRun gpu = run_op(*runtime, Device::CUDA, node, ins, dy, wrt, c.guided);
    const OpRun cpu = run_op(*runtime, Device::CPU, node, ins, dy, wrt, c.guided);
    int64_t terms = 1;
    for (size_t d = 1; d < c.w.size(); ++d) terms *= c.w[d];
    terms = std::max(terms, c.w[0] * terms / c.w[1]) + 1;  // + the residual term
    compare_runs(gpu, cpu, op_tolerance(terms, true));
  }
#endif
}

TEST_CASE("gpu: Gemm op forward and backward (dA, dB, dC for each C shape) on the GPU match the CPU op") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  PrecisionScope scope(*runtime, Precision::FP32);
  struct Case {
    json attrs;
    Shape a, b, c;  // c empty: no C
  };
  const std::vector<Case> cases = {
      {json::object(), {6, 40}, {40, 9}, {9}},
      {{{"transB", 1}}, {3, 64}, {100, 64}, {100}},
      {{{"transA", 1}, {"alpha", 0.5}, {"beta", 2.0}}, {40, 6}, {40, 9}, {6, 1}},
      {{{"transA", 1}, {"transB", 1}, {"beta", 0.25}}, {33, 7}, {5, 33}, {1, 1}},
      {{{"alpha", -1.5}}, {7, 12}, {12, 5}, {7, 5}},
      {json::object(), {4, 12}, {12, 5}, {}},
  };
  for (const Case& c : cases) {
    INFO("Gemm " << c.attrs.dump() << " A " << shape_str(c.a) << " B " << shape_str(c.b) << " C " << shape_str(c.c));
    const bool has_c = !c.c.empty();
    const Node node = make_node("Gemm", c.attrs, has_c ? 3 : 2);
    std::vector<In> ins = {{random_tensor(c.a, 1)}, {random_tensor(c.b, 2)}};
    if (has_c) ins.push_back({random_tensor(c.c, 3)});
    std::vector<TensorDesc> descs;
    for (const In& in : ins) descs.push_back(TensorDesc{DType::F32, in.t.shape, nullptr});
    auto op = build(node);
    const Shape y_shape = op->infer(descs)[0].shape;
    const HostTensor dy = random_tensor(y_shape, 4);
    const std::vector<bool> wrt(ins.size(), true);
    const OpRun gpu = run_op(*runtime, Device::CUDA, node, ins, dy, wrt);
    const OpRun cpu = run_op(*runtime, Device::CPU, node, ins, dy, wrt);
    // Largest sum: K products forward, N or M products in dA / dB, M * N terms of dy in a scalar dC (|alpha|,
    // |beta| <= 2: a factor 2 on the magnitude).
    const int64_t m = y_shape[0], n = y_shape[1], k = c.a[0] * c.a[1] / m;
    compare_runs(gpu, cpu, 2 * op_tolerance(std::max({k, m, n, has_c ? m * n : 0}), false));
  }
#endif
}

TEST_CASE("gpu: MatMul op forward and backward with broadcast batch dims on the GPU match the CPU op") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  PrecisionScope scope(*runtime, Precision::FP32);
  struct Case {
    Shape a, b;
    bool a_constant, b_constant;
  };
  const std::vector<Case> cases = {
      {{3, 1, 5, 7}, {4, 7, 6}, false, false},     // batch (3, 4): A broadcast along 4, B along 3
      {{2, 3, 4, 5}, {2, 3, 5, 6}, false, false},  // no broadcast: one run of 6
      {{4, 5}, {3, 5, 2}, false, false},           // 2-D A shared by B's batch
      {{2, 1, 3, 4}, {3, 4, 5}, false, false},
      {{6}, {2, 6, 3}, false, false},              // 1-D A
      {{2, 3, 4}, {4}, false, false},              // 1-D B: A's batch folds into rows
      {{2, 3, 8}, {8, 5}, false, true},            // a weight: dA only, folded
  };
  for (const Case& c : cases) {
    INFO("MatMul A " << shape_str(c.a) << " B " << shape_str(c.b));
    const Node node = make_node("MatMul", json::object(), 2);
    const std::vector<In> ins = {{random_tensor(c.a, 1), c.a_constant}, {random_tensor(c.b, 2), c.b_constant}};
    std::vector<TensorDesc> descs;
    for (const In& in : ins) descs.push_back(TensorDesc{DType::F32, in.t.shape, in.constant ? &in.t : nullptr});
    const Shape y_shape = build(node)->infer(descs)[0].shape;
    const HostTensor dy = random_tensor(y_shape, 4);
    const std::vector<bool> wrt = {!c.a_constant, !c.b_constant};
    const OpRun gpu = run_op(*runtime, Device::CUDA, node, ins, dy, wrt);
    const OpRun cpu = run_op(*runtime, Device::CPU, node, ins, dy, wrt);
    // Largest sum: a broadcast operand's gradient adds up to (batch items) x (N or M) products.
    int64_t items = 1;
    for (size_t d = 0; d + 2 < y_shape.size(); ++d) items *= y_shape[d];
    // Every M, N, K here is <= 8: K products forward, at most items * 8 in a broadcast operand's gradient.
    const int64_t terms = items * 8 + 8;
    compare_runs(gpu, cpu, op_tolerance(terms, false));
  }
#endif
}
