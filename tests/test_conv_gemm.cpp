// GEMM, convolution and the Conv / Gemm / MatMul ops against naive double-precision loops written here
// (the library has no reference path of its own to compare with), on odd sizes that hit every ragged edge,
// k-block, segment and threading path of the blocked kernels.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/ops/factories.h"
#include "engine/ops/op.h"
#include "kernels/cpu/conv.h"
#include "kernels/cpu/gemm.h"

using namespace camrt;

namespace {

std::vector<float> random_vector(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Tolerance for a float32 result whose exact value is a sum of `terms` products: any summation order is
// within terms * 2^-24 * sum(|products|) of the exact value (the standard gamma_n bound, to first order), so
// that bound, plus two roundings for the epilogue, is what a correct blocked kernel can be held to. Indexing
// mistakes produce errors of the order of the magnitude itself, far above it.
double tolerance(double magnitude, int64_t terms) {
  return double(terms + 2) * std::ldexp(1.0, -24) * magnitude + 1e-30;
}

double apply_reference_act(double x, const FusedActivation& act) {
  if (act.kind == FusedActivation::kRelu) return x > 0 ? x : 0;
  if (act.kind == FusedActivation::kClip) return std::min<double>(std::max<double>(x, act.min), act.max);
  return x;
}

struct GemmCase {
  int64_t m, n, k;
  bool trans_a, trans_b;
  float alpha, beta;
  bool bias_row, bias_col;
  FusedActivation::Kind act;
};

// Runs gemm on padded matrices (leading dims larger than needed) and checks every element.
void check_gemm(const GemmCase& t, ThreadPool& pool, bool own_workspace) {
  CAPTURE(t.m);
  CAPTURE(t.n);
  CAPTURE(t.k);
  CAPTURE(t.trans_a);
  CAPTURE(t.trans_b);
  CAPTURE(t.alpha);
  CAPTURE(t.beta);
  const int64_t a_rows = t.trans_a ? t.k : t.m, a_cols = t.trans_a ? t.m : t.k;
  const int64_t b_rows = t.trans_b ? t.n : t.k, b_cols = t.trans_b ? t.k : t.n;
  const int64_t lda = a_cols + 3, ldb = b_cols + 5, ldc = t.n + 2;
  const std::vector<float> a = random_vector(size_t(a_rows * lda), 1);
  const std::vector<float> b = random_vector(size_t(b_rows * ldb), 2);
  std::vector<float> c = random_vector(size_t(t.m * ldc), 3);
  if (t.beta == 0.f)  // beta == 0 must not read C: poison it
    for (float& x : c) x = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> c0 = c;
  const std::vector<float> bias_r = random_vector(size_t(t.m), 4), bias_c = random_vector(size_t(t.n), 5);
  GemmEpilogue epi;
  epi.bias_row = t.bias_row ? bias_r.data() : nullptr;
  epi.bias_col = t.bias_col ? bias_c.data() : nullptr;
  epi.act.kind = t.act;
  epi.act.min = -0.25f;
  epi.act.max = 0.5f;
  std::vector<unsigned char> ws(gemm_workspace_bytes(t.m, t.n, t.k, pool.num_threads()));
  gemm(c.data(), ldc, a.data(), lda, t.trans_a, b.data(), ldb, t.trans_b, t.m, t.n, t.k, t.alpha, t.beta, epi,
       own_workspace ? ws.data() : nullptr, own_workspace ? ws.size() : 0, pool);
  int64_t bad = 0;
  for (int64_t i = 0; i < t.m; ++i) {
    for (int64_t j = 0; j < t.n; ++j) {
      double sum = 0, mag = 0;
      for (int64_t p = 0; p < t.k; ++p) {
        const double av = t.trans_a ? a[size_t(p * lda + i)] : a[size_t(i * lda + p)];
        const double bv = t.trans_b ? b[size_t(j * ldb + p)] : b[size_t(p * ldb + j)];
        sum += av * bv;
        mag += std::fabs(av * bv);
      }
      double ref = t.alpha * sum;
      mag *= std::fabs(t.alpha);
      if (t.beta != 0.f) {
        ref += double(t.beta) * c0[size_t(i * ldc + j)];
        mag += std::fabs(double(t.beta) * c0[size_t(i * ldc + j)]);
      }
      if (t.bias_row) ref += bias_r[size_t(i)], mag += std::fabs(bias_r[size_t(i)]);
      if (t.bias_col) ref += bias_c[size_t(j)], mag += std::fabs(bias_c[size_t(j)]);
      ref = apply_reference_act(ref, epi.act);
      const double got = c[size_t(i * ldc + j)];
      if (!(std::fabs(got - ref) <= tolerance(mag, t.k))) {
        if (bad++ < 5) {
          MESSAGE("C[" << i << "," << j << "] = " << got << ", expected " << ref);
        }
      }
    }
    // The padding columns between rows must be untouched.
    for (int64_t j = t.n; j < ldc; ++j) {
      const float before = c0[size_t(i * ldc + j)], after = c[size_t(i * ldc + j)];
      if (!(before == after || (std::isnan(before) && std::isnan(after)))) ++bad;
    }
  }
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("gemm matches a double-precision reference on ragged sizes, transposes and epilogues") {
  ThreadPool pool(2);
  using A = FusedActivation;
  const GemmCase cases[] = {
      {1, 1, 1, false, false, 1.f, 0.f, false, false, A::kNone},
      {7, 17, 65, false, false, 1.f, 0.f, false, false, A::kNone},
      {65, 130, 7, false, false, 1.f, 0.f, true, false, A::kRelu},
      {17, 7, 130, true, false, 0.5f, 2.f, false, false, A::kNone},
      {130, 65, 17, false, true, 1.f, 1.f, false, true, A::kNone},
      {65, 65, 65, true, true, -1.5f, 0.5f, true, true, A::kClip},
      {1, 1000, 300, false, true, 1.f, 0.f, false, true, A::kNone},   // Linear at batch 1 (dot-product path)
      {7, 130, 65, false, true, 2.f, 0.f, true, false, A::kRelu},     // Linear at small batch
      {300, 70, 520, false, false, 1.f, 0.f, true, false, A::kRelu},  // several M and K blocks
      {20, 2100, 30, false, false, 1.f, 1.f, false, false, A::kNone}, // more than one N block
      {14, 32, 256, false, false, 1.f, 0.f, false, false, A::kNone},  // exact AVX-512 tile and K block
      {28, 64, 257, true, false, 1.f, 0.f, false, false, A::kNone},
      {3, 5, 0, false, false, 1.f, 0.5f, true, false, A::kNone},      // empty product: C = beta*C + bias
  };
  for (const GemmCase& t : cases) check_gemm(t, pool, true);
  SUBCASE("a null workspace is allocated internally") { check_gemm(cases[8], pool, false); }
  SUBCASE("one thread") {
    ThreadPool single(1);
    for (const GemmCase& t : cases) check_gemm(t, single, true);
  }
}

TEST_CASE("gemm rejects a workspace smaller than gemm_workspace_bytes") {
  ThreadPool pool(2);
  std::vector<float> a(64 * 64, 1.f), b(64 * 64, 1.f), c(64 * 64);
  std::vector<unsigned char> ws(16);
  CHECK_THROWS_AS(gemm(c.data(), 64, a.data(), 64, false, b.data(), 64, false, 64, 64, 64, 1.f, 0.f, GemmEpilogue{},
                       ws.data(), ws.size(), pool),
                  Error);
}

namespace {

// Direct 7-loop convolution in double; returns the output and, per element, the sum of |products|.
void conv_reference(const std::vector<float>& in, const std::vector<float>& weight, const float* bias,
                    const Conv2dShape& s, const FusedActivation& act, std::vector<double>* out,
                    std::vector<double>* magnitude) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w(), cg = s.in_channels / s.groups, mg = s.out_channels / s.groups;
  out->assign(size_t(s.batch * s.out_channels * oh_n * ow_n), 0.0);
  magnitude->assign(out->size(), 0.0);
  for (int64_t n = 0; n < s.batch; ++n)
    for (int64_t o = 0; o < s.out_channels; ++o)
      for (int64_t oh = 0; oh < oh_n; ++oh)
        for (int64_t ow = 0; ow < ow_n; ++ow) {
          double sum = bias ? bias[o] : 0.0, mag = bias ? std::fabs(bias[o]) : 0.0;
          const int64_t g = o / mg;
          for (int64_t c = 0; c < cg; ++c)
            for (int64_t kh = 0; kh < s.kernel_h; ++kh)
              for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
                const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dilation_h;
                const int64_t iw = ow * s.stride_w - s.pad_left + kw * s.dilation_w;
                if (ih < 0 || ih >= s.in_h || iw < 0 || iw >= s.in_w) continue;
                const double x = in[size_t(((n * s.in_channels + g * cg + c) * s.in_h + ih) * s.in_w + iw)];
                const double w = weight[size_t(((o * cg + c) * s.kernel_h + kh) * s.kernel_w + kw)];
                sum += x * w;
                mag += std::fabs(x * w);
              }
          const size_t idx = size_t(((n * s.out_channels + o) * oh_n + oh) * ow_n + ow);
          (*out)[idx] = apply_reference_act(sum, act);
          (*magnitude)[idx] = mag;
        }
}

Conv2dShape make_shape(int64_t batch, int64_t c, int64_t h, int64_t w, int64_t o, int64_t kh, int64_t kw) {
  Conv2dShape s;
  s.batch = batch;
  s.in_channels = c;
  s.in_h = h;
  s.in_w = w;
  s.out_channels = o;
  s.kernel_h = kh;
  s.kernel_w = kw;
  return s;
}

void check_conv(const Conv2dShape& s, bool with_bias, FusedActivation act, ThreadPool& pool) {
  CAPTURE(s.batch);
  CAPTURE(s.in_channels);
  CAPTURE(s.out_channels);
  CAPTURE(s.groups);
  CAPTURE(s.in_h);
  CAPTURE(s.in_w);
  CAPTURE(s.kernel_h);
  CAPTURE(s.kernel_w);
  CAPTURE(s.stride_h);
  CAPTURE(s.dilation_h);
  CAPTURE(s.pad_top);
  CAPTURE(s.pad_right);
  REQUIRE(conv2d_shape_error(s).empty());
  const std::vector<float> in = random_vector(size_t(s.batch * s.in_channels * s.in_h * s.in_w), 11);
  const std::vector<float> weight =
      random_vector(size_t(s.out_channels * (s.in_channels / s.groups) * s.kernel_h * s.kernel_w), 12);
  const std::vector<float> bias = random_vector(size_t(s.out_channels), 13);
  std::vector<float> out(size_t(s.batch * s.out_channels * s.out_h() * s.out_w()),
                         std::numeric_limits<float>::quiet_NaN());
  std::vector<unsigned char> ws(conv2d_workspace_bytes(s, pool.num_threads()));
  conv2d_forward(out.data(), in.data(), weight.data(), with_bias ? bias.data() : nullptr, s, act, ws.data(),
                 ws.size(), pool);
  std::vector<double> ref, mag;
  conv_reference(in, weight, with_bias ? bias.data() : nullptr, s, act, &ref, &mag);
  const int64_t terms = (s.in_channels / s.groups) * s.kernel_h * s.kernel_w;
  int64_t bad = 0;
  for (size_t i = 0; i < out.size(); ++i)
    if (!(std::fabs(out[i] - ref[i]) <= tolerance(mag[i], terms)))
      if (bad++ < 5) MESSAGE("out[" << i << "] = " << out[i] << ", expected " << ref[i]);
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("conv2d_forward matches a direct double-precision convolution") {
  ThreadPool pool(2);
  const FusedActivation none;
  FusedActivation relu;
  relu.kind = FusedActivation::kRelu;
  FusedActivation clip;
  clip.kind = FusedActivation::kClip;
  clip.min = -0.5f;
  clip.max = 1.f;

  SUBCASE("3x3 pad 1 with bias, batch 2") {
    Conv2dShape s = make_shape(2, 3, 9, 11, 8, 3, 3);
    s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 1;
    check_conv(s, true, none, pool);
  }
  SUBCASE("wide enough for several k blocks, M panels and image-straddling column panels") {
    Conv2dShape s = make_shape(3, 40, 20, 20, 70, 3, 3);  // K = 360, N = 3 * 400
    s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 1;
    check_conv(s, true, relu, pool);
  }
  SUBCASE("groups 2") {
    Conv2dShape s = make_shape(2, 4, 7, 6, 6, 3, 3);
    s.groups = 2;
    s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 1;
    check_conv(s, true, none, pool);
  }
  SUBCASE("groups 8 (enough groups to spread the groups over the threads)") {
    Conv2dShape s = make_shape(2, 16, 9, 8, 24, 3, 3);
    s.groups = 8;
    s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 1;
    check_conv(s, true, relu, pool);
  }
  SUBCASE("depthwise stride 2") {
    Conv2dShape s = make_shape(2, 5, 9, 10, 5, 3, 3);
    s.groups = 5;
    s.stride_h = s.stride_w = 2;
    s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 1;
    check_conv(s, true, relu, pool);
  }
  SUBCASE("depthwise with channel multiplier 2, no bias") {
    Conv2dShape s = make_shape(1, 3, 8, 8, 6, 3, 3);
    s.groups = 3;
    s.pad_top = s.pad_left = 1;
    s.pad_bottom = s.pad_right = 2;
    check_conv(s, false, clip, pool);
  }
  SUBCASE("depthwise 5x5 dilation 2") {
    Conv2dShape s = make_shape(2, 4, 12, 11, 4, 5, 5);
    s.groups = 4;
    s.dilation_h = s.dilation_w = 2;
    s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 4;
    check_conv(s, true, none, pool);
  }
  SUBCASE("depthwise on rows wide enough for the vectorized interior kernels (3x3 and 5x5, strides 1 and 2)") {
    for (int64_t k : {3, 5})
      for (int64_t stride : {1, 2}) {
        Conv2dShape s = make_shape(2, 6, 23, 45, 6, k, k);
        s.groups = 6;
        s.stride_h = s.stride_w = stride;
        s.pad_top = s.pad_left = k / 2;
        s.pad_bottom = s.pad_right = k / 2 + 1;
        check_conv(s, true, relu, pool);
      }
  }
  SUBCASE("stride 2, dilation 2, asymmetric pads") {
    Conv2dShape s = make_shape(2, 5, 13, 12, 9, 3, 3);
    s.stride_h = s.stride_w = 2;
    s.dilation_h = s.dilation_w = 2;
    s.pad_top = 1;
    s.pad_left = 2;
    s.pad_bottom = 0;
    s.pad_right = 3;
    check_conv(s, true, none, pool);
  }
  SUBCASE("different strides and dilations per axis") {
    Conv2dShape s = make_shape(1, 6, 15, 14, 10, 3, 2);
    s.stride_h = 1;
    s.stride_w = 3;
    s.dilation_h = 2;
    s.dilation_w = 1;
    s.pad_top = 2;
    s.pad_bottom = 1;
    check_conv(s, false, relu, pool);
  }
  SUBCASE("1x1 stride 1 (input read as the GEMM's B), batch 3, no bias") {
    check_conv(make_shape(3, 24, 7, 5, 33, 1, 1), false, none, pool);
  }
  SUBCASE("1x1 stride 2 (im2col path)") {
    Conv2dShape s = make_shape(2, 16, 9, 9, 20, 1, 1);
    s.stride_h = s.stride_w = 2;
    check_conv(s, true, none, pool);
  }
  SUBCASE("1x1 with groups 4") {
    Conv2dShape s = make_shape(2, 16, 6, 6, 8, 1, 1);
    s.groups = 4;
    check_conv(s, true, relu, pool);
  }
  SUBCASE("7x7 stride 2 pad 3 (ResNet stem shape, small)") {
    Conv2dShape s = make_shape(2, 3, 30, 30, 16, 7, 7);
    s.stride_h = s.stride_w = 2;
    s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 3;
    check_conv(s, true, relu, pool);
  }
  SUBCASE("kernel larger than the input, covered by padding") {
    Conv2dShape s = make_shape(1, 2, 3, 2, 4, 5, 5);
    s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 2;
    check_conv(s, true, none, pool);
  }
  SUBCASE("single input channel, several outputs (direct path)") {
    Conv2dShape s = make_shape(2, 1, 10, 10, 4, 3, 3);
    s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 1;
    check_conv(s, true, none, pool);
  }
  SUBCASE("1-D as H = 1") {
    Conv2dShape s = make_shape(2, 6, 1, 50, 8, 1, 5);
    s.stride_w = 2;
    s.pad_left = 2;
    s.pad_right = 1;
    check_conv(s, true, none, pool);
  }
}

TEST_CASE("conv2d_shape_error describes invalid sizes") {
  Conv2dShape s = make_shape(1, 6, 8, 8, 4, 3, 3);
  s.groups = 4;  // does not divide 6
  CHECK(conv2d_shape_error(s).find("group") != std::string::npos);
  s.groups = 1;
  s.kernel_h = 9;  // larger than the unpadded input
  CHECK(conv2d_shape_error(s).find("larger") != std::string::npos);
  s.kernel_h = 3;
  CHECK(conv2d_shape_error(s).empty());
}

namespace {

Node make_node(const std::string& op, nlohmann::json attrs, size_t num_inputs) {
  Node node;
  node.op = op;
  node.name = "test_" + op;
  for (size_t i = 0; i < num_inputs; ++i) node.inputs.push_back("in" + std::to_string(i));
  node.outputs = {"out"};
  node.attrs = std::move(attrs);
  return node;
}

HostTensor random_tensor(const Shape& shape, uint32_t seed) {
  HostTensor t(DType::F32, shape);
  const std::vector<float> v = random_vector(size_t(t.numel()), seed);
  std::copy(v.begin(), v.end(), t.f32());
  return t;
}

std::vector<TensorDesc> descs_of(const std::vector<const HostTensor*>& inputs) {
  std::vector<TensorDesc> descs;
  for (const HostTensor* t : inputs) {
    TensorDesc d;
    if (t) {
      d.dtype = t->dtype;
      d.shape = t->shape;
    } else {
      d.present = false;
    }
    descs.push_back(d);
  }
  return descs;
}

// Builds the op through the registry, infers, allocates output and workspace, runs forward.
HostTensor run_op(const std::string& op_type, const nlohmann::json& attrs, const std::vector<const HostTensor*>& inputs,
                  ThreadPool& pool) {
  OpFactory factory = find_op(op_type);
  REQUIRE(static_cast<bool>(factory));
  std::unique_ptr<Op> op = factory(make_node(op_type, attrs, inputs.size()));
  const std::vector<TensorDesc> descs = descs_of(inputs);
  const std::vector<TensorDesc> out_descs = op->infer(descs);
  REQUIRE(out_descs.size() == 1);
  HostTensor out(DType::F32, out_descs[0].shape);
  Context ctx;
  ctx.pool = &pool;
  std::vector<unsigned char> ws(op->workspace_bytes(descs, ctx));
  ctx.workspace = ws.data();
  ctx.workspace_bytes = ws.size();
  std::vector<Tensor> views;
  for (const HostTensor* t : inputs) views.push_back(t ? t->view() : Tensor{});
  std::vector<const Tensor*> in_ptrs;
  for (size_t i = 0; i < inputs.size(); ++i) in_ptrs.push_back(inputs[i] ? &views[i] : nullptr);
  Tensor out_view = out.view();
  op->forward(ctx, in_ptrs, {&out_view});
  return out;
}

Shape infer_shape(const std::string& op_type, const nlohmann::json& attrs, const std::vector<Shape>& shapes) {
  std::unique_ptr<Op> op = find_op(op_type)(make_node(op_type, attrs, shapes.size()));
  std::vector<TensorDesc> descs;
  for (const Shape& s : shapes) {
    TensorDesc d;
    d.shape = s;
    descs.push_back(d);
  }
  return op->infer(descs).at(0).shape;
}

// Compares an op's output with conv_reference for the equivalent Conv2dShape.
void check_conv_op(const nlohmann::json& attrs, const Shape& x_shape, const Shape& w_shape, bool with_bias,
                   const Conv2dShape& expected, const FusedActivation& act, ThreadPool& pool) {
  const HostTensor x = random_tensor(x_shape, 21), w = random_tensor(w_shape, 22),
                   b = random_tensor({w_shape[0]}, 23);
  std::vector<const HostTensor*> inputs = {&x, &w};
  if (with_bias) inputs.push_back(&b);
  const HostTensor out = run_op("Conv", attrs, inputs, pool);
  REQUIRE(out.numel() == expected.batch * expected.out_channels * expected.out_h() * expected.out_w());
  std::vector<float> xv(x.f32(), x.f32() + x.numel()), wv(w.f32(), w.f32() + w.numel());
  std::vector<double> ref, mag;
  conv_reference(xv, wv, with_bias ? b.f32() : nullptr, expected, act, &ref, &mag);
  const int64_t terms = (expected.in_channels / expected.groups) * expected.kernel_h * expected.kernel_w;
  int64_t bad = 0;
  for (int64_t i = 0; i < out.numel(); ++i)
    if (!(std::fabs(out.f32()[i] - ref[size_t(i)]) <= tolerance(mag[size_t(i)], terms))) ++bad;
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("ConvOp infers shapes for explicit pads and every auto_pad mode") {
  using nlohmann::json;
  CHECK(infer_shape("Conv", json{{"pads", {1, 1, 1, 1}}}, {{2, 3, 9, 11}, {8, 3, 3, 3}}) == Shape{2, 8, 9, 11});
  CHECK(infer_shape("Conv", json{{"strides", {2, 2}}, {"pads", {3, 3, 3, 3}}}, {{1, 3, 224, 224}, {64, 3, 7, 7}}) ==
        Shape{1, 64, 112, 112});
  // SAME_*: ceil(in / stride), whatever the kernel.
  CHECK(infer_shape("Conv", json{{"auto_pad", "SAME_UPPER"}, {"strides", {2, 2}}}, {{1, 4, 7, 6}, {5, 4, 3, 3}}) ==
        Shape{1, 5, 4, 3});
  CHECK(infer_shape("Conv", json{{"auto_pad", "SAME_LOWER"}, {"strides", {2, 3}}}, {{1, 4, 7, 8}, {5, 4, 3, 3}}) ==
        Shape{1, 5, 4, 3});
  CHECK(infer_shape("Conv", json{{"auto_pad", "VALID"}, {"strides", {2, 2}}}, {{1, 4, 7, 8}, {5, 4, 3, 3}}) ==
        Shape{1, 5, 3, 3});
  // 1-D conv: (N, C, L).
  CHECK(infer_shape("Conv", json{{"pads", {2, 1}}, {"strides", {2}}}, {{2, 6, 50}, {8, 6, 5}}) == Shape{2, 8, 25});
  // Grouped: W's second dim is C / group.
  CHECK(infer_shape("Conv", json{{"group", 2}}, {{1, 4, 5, 5}, {6, 2, 3, 3}}) == Shape{1, 6, 3, 3});
}

TEST_CASE("ConvOp SAME_UPPER and SAME_LOWER put the odd pad at opposite ends") {
  ThreadPool pool(2);
  const FusedActivation none;
  // Input 6 with kernel 3 and stride 2: output 3, total pad (3-1)*2 + 3 - 6 = 1.
  Conv2dShape s = make_shape(1, 2, 6, 6, 3, 3, 3);
  s.stride_h = s.stride_w = 2;
  s.pad_bottom = s.pad_right = 1;
  check_conv_op(nlohmann::json{{"auto_pad", "SAME_UPPER"}, {"strides", {2, 2}}}, {1, 2, 6, 6}, {3, 2, 3, 3}, true, s,
                none, pool);
  s.pad_bottom = s.pad_right = 0;
  s.pad_top = s.pad_left = 1;
  check_conv_op(nlohmann::json{{"auto_pad", "SAME_LOWER"}, {"strides", {2, 2}}}, {1, 2, 6, 6}, {3, 2, 3, 3}, true, s,
                none, pool);
}

TEST_CASE("ConvOp forward: 2-D with pads and fused activation, 1-D, grouped") {
  ThreadPool pool(2);
  FusedActivation relu;
  relu.kind = FusedActivation::kRelu;
  FusedActivation clip;
  clip.kind = FusedActivation::kClip;
  clip.min = 0.f;
  clip.max = 0.75f;
  const FusedActivation none;
  {
    Conv2dShape s = make_shape(2, 3, 9, 10, 8, 3, 3);
    s.pad_top = 1, s.pad_left = 0, s.pad_bottom = 2, s.pad_right = 1;
    s.dilation_h = 2;
    check_conv_op(nlohmann::json{{"pads", {1, 0, 2, 1}}, {"dilations", {2, 1}}, {"activation", "relu"}},
                  {2, 3, 9, 10}, {8, 3, 3, 3}, true, s, relu, pool);
  }
  {
    Conv2dShape s = make_shape(2, 6, 1, 50, 8, 1, 5);
    s.stride_w = 2;
    s.pad_left = 2, s.pad_right = 1;
    check_conv_op(nlohmann::json{{"pads", {2, 1}}, {"strides", {2}}, {"kernel_shape", {5}}}, {2, 6, 50}, {8, 6, 5},
                  false, s, none, pool);
  }
  {
    Conv2dShape s = make_shape(1, 8, 6, 6, 8, 3, 3);
    s.groups = 8;
    s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 1;
    check_conv_op(nlohmann::json{{"group", 8}, {"pads", {1, 1, 1, 1}}, {"activation", "clip"}, {"activation_min", 0.0},
                                 {"activation_max", 0.75}},
                  {1, 8, 6, 6}, {8, 1, 3, 3}, true, s, clip, pool);
  }
}

TEST_CASE("ConvOp rejects inconsistent inputs with errors naming the node") {
  using nlohmann::json;
  const auto message_of = [](const json& attrs, const std::vector<Shape>& shapes) -> std::string {
    try {
      infer_shape("Conv", attrs, shapes);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  std::string m = message_of(json::object(), {{1, 3, 8, 8}, {8, 4, 3, 3}});
  CHECK(m.find("test_Conv") != std::string::npos);
  CHECK(m.find("input channels") != std::string::npos);
  m = message_of(json{{"group", 4}}, {{1, 6, 8, 8}, {8, 2, 3, 3}});
  CHECK(m.find("group 4 must divide") != std::string::npos);
  m = message_of(json::object(), {{1, 3, 4, 8, 8}, {8, 3, 3, 3, 3}});
  CHECK(m.find("1-D and 2-D") != std::string::npos);
  m = message_of(json{{"kernel_shape", {5, 5}}}, {{1, 3, 8, 8}, {8, 3, 3, 3}});
  CHECK(m.find("kernel_shape") != std::string::npos);
  m = message_of(json{{"pads", {1, 1}}}, {{1, 3, 8, 8}, {8, 3, 3, 3}});
  CHECK(m.find("pads") != std::string::npos);
  m = message_of(json::object(), {{1, 3, 2, 2}, {8, 3, 3, 3}});
  CHECK(m.find("larger than the padded input") != std::string::npos);
  CHECK_THROWS_AS(make_conv(make_node("Conv", json{{"auto_pad", "SAME"}}, 2)), Error);
  CHECK_THROWS_AS(make_conv(make_node("Conv", json{{"activation", "gelu"}}, 2)), Error);
}

namespace {

// Reference for one (M, N) slice of a matmul with explicit strides.
void check_matrix_product(const float* got, const float* a, int64_t a_rs, int64_t a_cs, const float* b, int64_t b_rs,
                          int64_t b_cs, int64_t m, int64_t n, int64_t k, int64_t* bad) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double sum = 0, mag = 0;
      for (int64_t p = 0; p < k; ++p) {
        const double prod = double(a[i * a_rs + p * a_cs]) * b[p * b_rs + j * b_cs];
        sum += prod;
        mag += std::fabs(prod);
      }
      if (!(std::fabs(got[i * n + j] - sum) <= tolerance(mag, k))) ++*bad;
    }
}

}  // namespace

TEST_CASE("GemmOp: Linear layer (transB, bias C), general C with alpha/beta, scalar C") {
  ThreadPool pool(2);
  using nlohmann::json;
  const HostTensor x = random_tensor({3, 40}, 31), w = random_tensor({25, 40}, 32), bias = random_tensor({25}, 33);
  {
    const HostTensor y = run_op("Gemm", json{{"transB", 1}}, {&x, &w, &bias}, pool);
    REQUIRE(y.shape == Shape{3, 25});
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < 25; ++j) {
        double sum = bias.f32()[j], mag = std::fabs(bias.f32()[j]);
        for (int64_t p = 0; p < 40; ++p) {
          sum += double(x.f32()[i * 40 + p]) * w.f32()[j * 40 + p];
          mag += std::fabs(double(x.f32()[i * 40 + p]) * w.f32()[j * 40 + p]);
        }
        CHECK(std::fabs(y.f32()[i * 25 + j] - sum) <= tolerance(mag, 40));
      }
  }
  const HostTensor at = random_tensor({40, 30}, 34), b = random_tensor({40, 20}, 35), c = random_tensor({30, 20}, 36),
                   c_row = random_tensor({30, 1}, 37);
  for (const HostTensor* cc : {&c, &c_row}) {
    const HostTensor y = run_op("Gemm", json{{"transA", 1}, {"alpha", 0.5}, {"beta", -2.0}}, {&at, &b, cc}, pool);
    REQUIRE(y.shape == Shape{30, 20});
    for (int64_t i = 0; i < 30; ++i)
      for (int64_t j = 0; j < 20; ++j) {
        const double cv = cc->shape[1] == 1 ? cc->f32()[i] : cc->f32()[i * 20 + j];
        double sum = 0, mag = 2.0 * std::fabs(cv);
        for (int64_t p = 0; p < 40; ++p) {
          sum += double(at.f32()[p * 30 + i]) * b.f32()[p * 20 + j];
          mag += 0.5 * std::fabs(double(at.f32()[p * 30 + i]) * b.f32()[p * 20 + j]);
        }
        CHECK(std::fabs(y.f32()[i * 20 + j] - (0.5 * sum - 2.0 * cv)) <= tolerance(mag, 40));
      }
  }
  const HostTensor scalar = make_f32({}, {1.5f});
  const HostTensor a2 = random_tensor({4, 6}, 38), b2 = random_tensor({6, 5}, 39);
  const HostTensor y = run_op("Gemm", json::object(), {&a2, &b2, &scalar}, pool);
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 5; ++j) {
      double sum = 1.5;
      for (int64_t p = 0; p < 6; ++p) sum += double(a2.f32()[i * 6 + p]) * b2.f32()[p * 5 + j];
      CHECK(std::fabs(y.f32()[i * 5 + j] - sum) <= 1e-5);
    }
  CHECK_THROWS_AS(infer_shape("Gemm", json::object(), {{4, 6}, {5, 5}}), Error);
  CHECK_THROWS_AS(infer_shape("Gemm", json::object(), {{4, 6}, {6, 5}, {3, 5}}), Error);
}

TEST_CASE("MatMulOp: numpy promotion of 1-D operands and broadcast batch dims") {
  ThreadPool pool(2);
  using nlohmann::json;
  CHECK(infer_shape("MatMul", json::object(), {{4}, {4, 3}}) == Shape{3});
  CHECK(infer_shape("MatMul", json::object(), {{2, 5, 4}, {4}}) == Shape{2, 5});
  CHECK(infer_shape("MatMul", json::object(), {{4}, {4}}) == Shape{});
  CHECK(infer_shape("MatMul", json::object(), {{2, 1, 3, 4}, {5, 4, 6}}) == Shape{2, 5, 3, 6});
  CHECK_THROWS_AS(infer_shape("MatMul", json::object(), {{2, 3, 4}, {3, 4, 6}}), Error);
  CHECK_THROWS_AS(infer_shape("MatMul", json::object(), {{3, 4}, {5, 6}}), Error);

  int64_t bad = 0;
  {  // broadcast: A (2, 1, 3, 4) x B (5, 4, 6) -> (2, 5, 3, 6)
    const HostTensor a = random_tensor({2, 1, 3, 4}, 41), b = random_tensor({5, 4, 6}, 42);
    const HostTensor y = run_op("MatMul", json::object(), {&a, &b}, pool);
    REQUIRE(y.shape == Shape{2, 5, 3, 6});
    for (int64_t i = 0; i < 2; ++i)
      for (int64_t j = 0; j < 5; ++j)
        check_matrix_product(y.f32() + (i * 5 + j) * 18, a.f32() + i * 12, 4, 1, b.f32() + j * 24, 6, 1, 3, 6, 4, &bad);
  }
  {  // batched A, 2-D B (folded into one GEMM)
    const HostTensor a = random_tensor({2, 3, 7}, 43), b = random_tensor({7, 9}, 44);
    const HostTensor y = run_op("MatMul", json::object(), {&a, &b}, pool);
    REQUIRE(y.shape == Shape{2, 3, 9});
    check_matrix_product(y.f32(), a.f32(), 7, 1, b.f32(), 9, 1, 6, 9, 7, &bad);
  }
  {  // vector x batched matrix: (4) x (3, 4, 2) -> (3, 2)
    const HostTensor a = random_tensor({4}, 45), b = random_tensor({3, 4, 2}, 46);
    const HostTensor y = run_op("MatMul", json::object(), {&a, &b}, pool);
    REQUIRE(y.shape == Shape{3, 2});
    for (int64_t t = 0; t < 3; ++t) check_matrix_product(y.f32() + t * 2, a.f32(), 0, 1, b.f32() + t * 8, 2, 1, 1, 2, 4, &bad);
  }
  {  // batched matrix x vector: (2, 5, 4) x (4) -> (2, 5)
    const HostTensor a = random_tensor({2, 5, 4}, 47), b = random_tensor({4}, 48);
    const HostTensor y = run_op("MatMul", json::object(), {&a, &b}, pool);
    REQUIRE(y.shape == Shape{2, 5});
    check_matrix_product(y.f32(), a.f32(), 4, 1, b.f32(), 1, 0, 10, 1, 4, &bad);
  }
  CHECK(bad == 0);
}
