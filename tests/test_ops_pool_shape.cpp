// Pooling, ReduceMean and the shape ops (Flatten, Reshape, Squeeze, Unsqueeze, Concat) on the CPU:
// each op runs through its registry factory (infer, then forward) and is compared against naive loops
// written here, against values printed by PyTorch and against ONNX conformance expectations.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <limits>

#include "engine/ops/op.h"
#include "kernels/cpu/parallel.h"

using namespace camrt;
using nlohmann::json;

namespace {

// A graph input for run_op: constants are visible to shape inference (TensorDesc::constant).
struct In {
  HostTensor t;
  bool constant = false;
};

Node make_node(const std::string& op, const std::string& name, json attrs, size_t num_inputs = 1) {
  Node n;
  n.op = op;
  n.name = name;
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

std::vector<TensorDesc> descs_of(const std::vector<In>& ins) {
  std::vector<TensorDesc> d;
  for (const In& in : ins) d.push_back(TensorDesc{in.t.dtype, in.t.shape, in.constant ? &in.t : nullptr});
  return d;
}

// infer, allocate, forward: the op's single output.
HostTensor run_op(const Node& node, const std::vector<In>& ins) {
  ThreadPool pool(2);
  Context ctx{Device::CPU, &pool};
  auto op = build(node);
  const std::vector<TensorDesc> out_desc = op->infer(descs_of(ins));
  REQUIRE(out_desc.size() >= 1);
  HostTensor out(out_desc[0].dtype, out_desc[0].shape);
  std::vector<Tensor> in_views;
  for (const In& in : ins) in_views.push_back(in.t.view());
  std::vector<const Tensor*> in_ptrs;
  for (const Tensor& v : in_views) in_ptrs.push_back(&v);
  Tensor out_view = out.view();
  op->forward(ctx, in_ptrs, {&out_view});
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// Deterministic values in [-1, 1) from a 32-bit LCG (Numerical Recipes constants).
HostTensor random_f32(const Shape& shape, uint32_t seed) {
  HostTensor t(DType::F32, shape);
  uint32_t s = seed;
  for (int64_t i = 0; i < t.numel(); ++i) {
    s = s * 1664525u + 1013904223u;
    t.f32()[i] = static_cast<float>(s >> 8) / static_cast<float>(1 << 23) - 1.f;
  }
  return t;
}

HostTensor iota_f32(const Shape& shape, float first = 0.f) {
  HostTensor t(DType::F32, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = first + static_cast<float>(i);
  return t;
}

std::vector<float> values(const HostTensor& t) { return std::vector<float>(t.f32(), t.f32() + t.numel()); }

// ---- naive pooling reference ----

struct PoolCase {
  std::vector<int64_t> kernel, strides, pads, dilations;  // pads: begins then ends
  bool ceil = false;
};

// Output length along one axis by enumerating windows (a different formulation from the op's formula):
// floor mode keeps windows that fit inside input + pads; ceil mode keeps windows that start before the
// padded end minus (extent - stride) and inside the input or the begin padding.
int64_t ref_out_len(int64_t in, int64_t k, int64_t s, int64_t d, int64_t pb, int64_t pe, bool ceil) {
  const int64_t extent = (k - 1) * d + 1, padded = in + pb + pe;
  int64_t n = 0;
  for (int64_t o = 0;; ++o) {
    const int64_t start = o * s;  // in padded coordinates
    const bool exists = ceil ? (start < padded - extent + s && start < in + pb) : (start + extent <= padded);
    if (!exists) break;
    ++n;
  }
  return n;
}

// Pools x (N, C, spatial...) the slow way: every tap of every window, bounds checked, sums in double.
HostTensor ref_pool(const HostTensor& x, const PoolCase& pc, bool is_max, bool count_include_pad) {
  const size_t nsp = x.shape.size() - 2;
  int64_t in[3] = {1, 1, 1}, k[3] = {1, 1, 1}, s[3] = {1, 1, 1}, d[3] = {1, 1, 1}, pb[3] = {0, 0, 0},
          pe[3] = {0, 0, 0}, out[3] = {1, 1, 1};
  Shape out_shape = {x.shape[0], x.shape[1]};
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
    out_shape.push_back(out[a]);
  }
  HostTensor y(DType::F32, out_shape);
  const float* px = x.f32();
  float* py = y.f32();
  const int64_t planes = x.shape[0] * x.shape[1];
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t o0 = 0; o0 < out[0]; ++o0)
      for (int64_t o1 = 0; o1 < out[1]; ++o1)
        for (int64_t o2 = 0; o2 < out[2]; ++o2) {
          double acc = is_max ? -INFINITY : 0.0;
          int64_t valid = 0, padded = 0;
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
                if (!inside) continue;
                ++valid;
                const double v = px[((p * in[0] + pos[0]) * in[1] + pos[1]) * in[2] + pos[2]];
                acc = is_max ? std::max(acc, v) : acc + v;
              }
          *py++ = static_cast<float>(is_max ? acc : acc / static_cast<double>(count_include_pad ? padded : valid));
        }
  return y;
}

json pool_attrs(const PoolCase& pc) {
  json a = {{"kernel_shape", pc.kernel}, {"ceil_mode", pc.ceil ? 1 : 0}};
  if (!pc.strides.empty()) a["strides"] = pc.strides;
  if (!pc.pads.empty()) a["pads"] = pc.pads;
  if (!pc.dilations.empty()) a["dilations"] = pc.dilations;
  return a;
}

// Max is exact (same values compared); a mean of <= 49 floats summed in float differs from the double
// reference by at most ~49 * 2^-24 relative to values in [-1, 1): 1e-5 covers it.
constexpr double kMeanTolerance = 1e-5;

void check_pool_case(const HostTensor& x, const PoolCase& pc) {
  for (int mode = 0; mode < 3; ++mode) {
    const bool is_max = mode == 0, cip = mode == 2;
    json attrs = pool_attrs(pc);
    if (!is_max) attrs["count_include_pad"] = cip ? 1 : 0;
    const HostTensor got = run_op(make_node(is_max ? "MaxPool" : "AveragePool", "/pool", attrs), {{x}});
    const HostTensor want = ref_pool(x, pc, is_max, cip);
    INFO("mode " << mode << " attrs " << attrs.dump());
    REQUIRE(got.shape == want.shape);
    for (int64_t i = 0; i < want.numel(); ++i) {
      if (is_max)
        REQUIRE(got.f32()[i] == want.f32()[i]);
      else
        REQUIRE(got.f32()[i] == doctest::Approx(want.f32()[i]).epsilon(kMeanTolerance));
    }
  }
}

}  // namespace

// ---------------- pooling ----------------

TEST_CASE("MaxPool / AveragePool 2-D match the naive reference (stride, asymmetric pads, dilation, ceil_mode)") {
  const HostTensor x = random_f32({2, 3, 11, 13}, 7);
  const std::vector<PoolCase> cases = {
      {{3, 3}, {2, 2}, {1, 1, 1, 1}, {}, false},
      {{3, 3}, {2, 2}, {1, 1, 1, 1}, {}, true},
      {{3, 3}, {2, 2}, {0, 1, 2, 0}, {}, true},       // asymmetric pads
      {{2, 3}, {1, 2}, {1, 0, 0, 2}, {2, 1}, true},   // H dilation: still the fast 2-D path
      {{3, 2}, {2, 3}, {2, 1, 1, 1}, {1, 2}, false},  // W dilation: generic path
      {{3, 3}, {3, 3}, {1, 1, 1, 1}, {2, 2}, true},
      {{2, 2}, {2, 2}, {}, {}, true},                 // ceil without pads: last window partly outside
      {{2, 2}, {2, 2}, {1, 1, 1, 1}, {}, true},       // ceil: the window starting in the end pad is dropped
      {{1, 1}, {2, 2}, {}, {}, false},
      {{7, 7}, {1, 1}, {3, 3, 3, 3}, {}, false},
      {{4, 5}, {3, 2}, {2, 0, 1, 2}, {}, true},
  };
  for (const PoolCase& pc : cases) check_pool_case(x, pc);
}

TEST_CASE("pooling a ResNet-sized input uses both threads and matches the reference") {
  // 64 planes of 56x56, 3x3/2 pad 1: enough taps per chunk for parallel_for to split the planes.
  const HostTensor x = random_f32({4, 16, 56, 56}, 11);
  check_pool_case(x, {{3, 3}, {2, 2}, {1, 1, 1, 1}, {}, false});
}

TEST_CASE("AveragePool / MaxPool with ceil_mode match PyTorch") {
  // Input: x[i] = ((i * 7) % 23 - 11) * 0.25, i = 0..29, shape (1, 1, 5, 6). Produced by (torch 1.13):
  //   F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=True / False)
  //   F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
  // The last W window (start 5) covers input 5, pad 6 and position 7 past the pads: count_include_pad
  // divides by 2 per row there, not 3.
  HostTensor x(DType::F32, {1, 1, 5, 6});
  for (int i = 0; i < 30; ++i) x.f32()[i] = static_cast<float>((i * 7) % 23 - 11) * 0.25f;
  const json attrs = {{"kernel_shape", {3, 3}}, {"strides", {2, 2}}, {"pads", {1, 1, 1, 1}}, {"ceil_mode", 1}};
  const std::vector<float> torch_avg_cip = {-0.4166666567325592, 0.1666666716337204,  -0.0555555559694767,
                                            -0.0833333358168602, 0.6111111044883728,  0.02777777798473835,
                                            -0.3055555522441864, -0.875,              0.1666666716337204,
                                            0.0833333358168602,  -0.1388888955116272, -0.125};
  const std::vector<float> torch_avg = {-0.9375, 0.25,  -0.0833333358168602, -0.25,
                                        0.9166666865348816, 0.02777777798473835, -0.3055555522441864, -1.75,
                                        0.375,  0.125, -0.2083333283662796, -0.375};
  const std::vector<float> torch_max = {2.0, 2.5, 2.5, 0.25, 2.75, 2.75, 2.25, -0.75, 1.75, 2.5, 2.0, 2.0};
  for (int cip = 0; cip < 2; ++cip) {
    json a = attrs;
    a["count_include_pad"] = cip;
    const HostTensor y = run_op(make_node("AveragePool", "/avg", a), {{x}});
    REQUIRE(y.shape == Shape{1, 1, 3, 4});
    const auto& want = cip ? torch_avg_cip : torch_avg;
    // torch and camrt both sum <= 9 floats: 1e-6 relative is a few ulps.
    for (size_t i = 0; i < want.size(); ++i) CHECK(y.f32()[i] == doctest::Approx(want[i]).epsilon(1e-6));
  }
  const HostTensor ym = run_op(make_node("MaxPool", "/max", attrs), {{x}});
  CHECK(values(ym) == torch_max);

  // The ceil rule that drops a window starting in the end padding: 5 + pads 1+1, kernel 2, stride 2 gives
  // ceil(5/2) + 1 = 4 windows, but the 4th would start at padded index 6 >= 5 + 1, so PyTorch keeps 3.
  // x5[i] = ((i * 5) % 17 - 8) * 0.5, shape (1, 1, 5, 5). Produced by (torch 1.13):
  //   F.avg_pool2d(x5, kernel_size=2, stride=2, padding=1, ceil_mode=True, count_include_pad=True / False)
  //   F.max_pool2d(x5, kernel_size=2, stride=2, padding=1, ceil_mode=True)
  HostTensor x5(DType::F32, {1, 1, 5, 5});
  for (int i = 0; i < 25; ++i) x5.f32()[i] = static_cast<float>((i * 5) % 17 - 8) * 0.5f;
  const json a5 = {{"kernel_shape", {2, 2}}, {"strides", {2, 2}}, {"pads", {1, 1, 1, 1}}, {"ceil_mode", 1}};
  const std::vector<float> torch5_avg_cip = {-1.0, -0.125, 0.25, 1.0, -0.625, 0.125, 0.75, -1.125, -0.375};
  const std::vector<float> torch5_avg = {-4.0, -0.25, 0.5, 2.0, -0.625, 0.125, 1.5, -1.125, -0.375};
  const std::vector<float> torch5_max = {-4.0, 1.0, 3.5, 4.0, 2.5, 3.0, 3.5, 2.0, 2.5};
  for (int cip = 0; cip < 2; ++cip) {
    json a = a5;
    a["count_include_pad"] = cip;
    const HostTensor y = run_op(make_node("AveragePool", "/avg", a), {{x5}});
    REQUIRE(y.shape == Shape{1, 1, 3, 3});
    const auto& want = cip ? torch5_avg_cip : torch5_avg;
    for (size_t i = 0; i < want.size(); ++i) CHECK(y.f32()[i] == doctest::Approx(want[i]).epsilon(1e-6));
  }
  CHECK(values(run_op(make_node("MaxPool", "/max", a5), {{x5}})) == torch5_max);
}

TEST_CASE("ONNX conformance expectations for ceil_mode and precomputed pads") {
  // test_averagepool_2d_ceil / test_maxpool_2d_ceil: x = 1..16 (1, 1, 4, 4), kernel 3, stride 2, ceil_mode.
  const HostTensor x = iota_f32({1, 1, 4, 4}, 1.f);
  const json ceil = {{"kernel_shape", {3, 3}}, {"strides", {2, 2}}, {"ceil_mode", 1}};
  CHECK(values(run_op(make_node("AveragePool", "/a", ceil), {{x}})) == std::vector<float>{6, 7.5, 12, 13.5});
  CHECK(values(run_op(make_node("MaxPool", "/m", ceil), {{x}})) == std::vector<float>{11, 12, 15, 16});
  // test_maxpool_2d_dilations: kernel 2, dilation 2 on the same input.
  const json dil = {{"kernel_shape", {2, 2}}, {"strides", {1, 1}}, {"dilations", {2, 2}}};
  CHECK(values(run_op(make_node("MaxPool", "/m", dil), {{x}})) == std::vector<float>{11, 12, 15, 16});
  // test_averagepool_2d_precomputed_same_upper: x = 1..25 (1, 1, 5, 5), kernel 3, stride 2, SAME_UPPER.
  const HostTensor x25 = iota_f32({1, 1, 5, 5}, 1.f);
  const json same = {{"kernel_shape", {3, 3}}, {"strides", {2, 2}}, {"auto_pad", "SAME_UPPER"}};
  CHECK(values(run_op(make_node("AveragePool", "/a", same), {{x25}})) ==
        std::vector<float>{4, 5.5, 7, 11.5, 13, 14.5, 19, 20.5, 22});
  CHECK(values(run_op(make_node("MaxPool", "/m", same), {{x25}})) == std::vector<float>{7, 9, 10, 17, 19, 20, 22, 24, 25});
  // test_averagepool_2d_precomputed_pads_count_include_pad: kernel 5, pads 2; the corner sees 9 of 25 taps.
  const json pads = {{"kernel_shape", {5, 5}}, {"pads", {2, 2, 2, 2}}, {"count_include_pad", 1}};
  const HostTensor y = run_op(make_node("AveragePool", "/a", pads), {{x25}});
  CHECK(y.f32()[0] == doctest::Approx((1 + 2 + 3 + 6 + 7 + 8 + 11 + 12 + 13) / 25.0));
}

TEST_CASE("1-D and 3-D pooling match the naive reference") {
  const HostTensor x1 = random_f32({2, 3, 17}, 3);
  check_pool_case(x1, {{3}, {2}, {1, 2}, {}, true});
  check_pool_case(x1, {{2}, {1}, {}, {3}, false});
  check_pool_case(x1, {{4}, {3}, {0, 3}, {}, true});
  const HostTensor x3 = random_f32({1, 2, 6, 7, 8}, 5);
  check_pool_case(x3, {{2, 2, 2}, {}, {}, {}, false});
  check_pool_case(x3, {{3, 2, 3}, {2, 1, 2}, {1, 0, 1, 0, 1, 1}, {}, true});
  check_pool_case(x3, {{2, 3, 2}, {1, 2, 2}, {0, 1, 0, 1, 0, 1}, {2, 1, 2}, false});
}

TEST_CASE("auto_pad: output shapes and values equal the explicit pads they imply") {
  const HostTensor x = random_f32({1, 2, 7, 8}, 9);
  struct AutoCase {
    std::string auto_pad;
    std::vector<int64_t> kernel, strides;
    Shape want_shape;
    std::vector<int64_t> implied_pads;
  };
  const std::vector<AutoCase> cases = {
      // SAME: out = ceil(in / s); total pad = (out - 1) * s + k - in, the odd one at the end (UPPER) or start.
      {"SAME_UPPER", {3, 3}, {2, 2}, {1, 2, 4, 4}, {1, 0, 1, 1}},   // H: total 2; W: total 1 -> end
      {"SAME_LOWER", {3, 3}, {2, 2}, {1, 2, 4, 4}, {1, 1, 1, 0}},   // W: total 1 -> begin
      {"SAME_UPPER", {2, 2}, {1, 1}, {1, 2, 7, 8}, {0, 0, 1, 1}},
      {"SAME_LOWER", {2, 2}, {1, 1}, {1, 2, 7, 8}, {1, 1, 0, 0}},
      {"VALID", {3, 2}, {2, 3}, {1, 2, 3, 3}, {0, 0, 0, 0}},
  };
  for (const AutoCase& c : cases) {
    INFO(c.auto_pad << " kernel " << c.kernel[0] << "x" << c.kernel[1]);
    for (int is_max = 0; is_max < 2; ++is_max) {
      json attrs = {{"kernel_shape", c.kernel}, {"strides", c.strides}, {"auto_pad", c.auto_pad}};
      const HostTensor y = run_op(make_node(is_max ? "MaxPool" : "AveragePool", "/p", attrs), {{x}});
      REQUIRE(y.shape == c.want_shape);
      const HostTensor want = ref_pool(x, {c.kernel, c.strides, c.implied_pads, {}, false}, is_max, false);
      REQUIRE(want.shape == c.want_shape);
      for (int64_t i = 0; i < want.numel(); ++i) CHECK(y.f32()[i] == doctest::Approx(want.f32()[i]).epsilon(kMeanTolerance));
    }
  }
  // ONNX test shapes: 32x32, kernel 5 stride 3 -> 10; SAME kernel 2 -> 32.
  auto shape_of = [&](const json& attrs, const Shape& in) {
    return build(make_node("MaxPool", "/p", attrs))->infer({TensorDesc{DType::F32, in}})[0].shape;
  };
  CHECK(shape_of({{"kernel_shape", {5, 5}}, {"strides", {3, 3}}}, {1, 3, 32, 32}) == Shape{1, 3, 10, 10});
  CHECK(shape_of({{"kernel_shape", {2, 2}}, {"auto_pad", "SAME_LOWER"}}, {1, 3, 32, 32}) == Shape{1, 3, 32, 32});
  CHECK(shape_of({{"kernel_shape", {3, 3}}, {"pads", {2, 2, 2, 2}}}, {1, 3, 28, 28}) == Shape{1, 3, 30, 30});
  CHECK(shape_of({{"kernel_shape", {2, 2, 2}}}, {1, 3, 32, 32, 32}) == Shape{1, 3, 31, 31, 31});
}

TEST_CASE("MaxPool propagates NaN like PyTorch") {
  HostTensor x = iota_f32({1, 1, 4, 4});
  x.f32()[5] = std::numeric_limits<float>::quiet_NaN();  // row 1, col 1
  const HostTensor y = run_op(make_node("MaxPool", "/m", {{"kernel_shape", {2, 2}}, {"strides", {2, 2}}}), {{x}});
  CHECK(std::isnan(y.f32()[0]));
  CHECK(y.f32()[1] == 7.f);
  CHECK(y.f32()[3] == 15.f);
}

TEST_CASE("pooling errors name the node and the problem") {
  const std::vector<TensorDesc> in = {TensorDesc{DType::F32, {1, 3, 4, 4}}};
  Node indices = make_node("MaxPool", "/pool1", {{"kernel_shape", {2, 2}}});
  indices.outputs = {"y", "idx"};
  CHECK(error_of([&] { build(indices); }) == "node '/pool1' (MaxPool): the Indices output ('idx') is not supported");
  CHECK(error_of([&] { build(make_node("MaxPool", "/p", {{"kernel_shape", {2, 2}}, {"storage_order", 1}})); })
            .find("storage_order") != std::string::npos);
  CHECK(error_of([&] { build(make_node("MaxPool", "/p", {{"kernel_shape", {3, 3}}}))->infer({TensorDesc{DType::F32, {1, 3, 4}}}); }) ==
        "node '/p' (MaxPool): input (1, 3, 4) must have rank 4 (N, C and the 2 spatial dims of kernel_shape)");
  CHECK(error_of([&] { build(make_node("AveragePool", "/p", {{"kernel_shape", {5, 5}}}))->infer(in); })
            .find("node '/p' (AveragePool): input (1, 3, 4, 4) is too small") == 0);
  CHECK(error_of([&] { build(make_node("AveragePool", "/p", {{"kernel_shape", {2, 2}}, {"pads", {1, 1}}})); })
            .find("'pads' must have 4 values") != std::string::npos);
  CHECK(error_of([&] { build(make_node("AveragePool", "/p", {{"kernel_shape", {2, 2}}, {"auto_pad", "SAME"}})); })
            .find("unknown auto_pad 'SAME'") != std::string::npos);
  CHECK(error_of([&] { build(make_node("MaxPool", "/p", json::object())); }).find("kernel_shape") != std::string::npos);
}

TEST_CASE("GlobalAveragePool averages every plane for ranks 3 to 5") {
  for (const Shape& shape : {Shape{2, 3, 10}, Shape{2, 5, 7, 7}, Shape{1, 2, 3, 4, 5}, Shape{3, 70, 16, 16}}) {
    const HostTensor x = random_f32(shape, 13);
    const HostTensor y = run_op(make_node("GlobalAveragePool", "/gap", json::object()), {{x}});
    Shape want_shape(shape.size(), 1);
    want_shape[0] = shape[0];
    want_shape[1] = shape[1];
    REQUIRE(y.shape == want_shape);
    const int64_t planes = shape[0] * shape[1], spatial = x.numel() / planes;
    for (int64_t p = 0; p < planes; ++p) {
      double sum = 0;
      for (int64_t i = 0; i < spatial; ++i) sum += x.f32()[p * spatial + i];
      // Both accumulate in double; the only difference is the final rounding to float.
      CHECK(y.f32()[p] == doctest::Approx(sum / static_cast<double>(spatial)).epsilon(1e-6));
    }
  }
}

// ---------------- ReduceMean ----------------

namespace {

// Mean over `axes` (normalized) by visiting every input element once, sums in double.
HostTensor ref_reduce_mean(const HostTensor& x, const std::vector<int64_t>& axes, bool keepdims) {
  const size_t rank = x.shape.size();
  std::vector<bool> reduced(rank, false);
  for (int64_t a : axes) reduced[static_cast<size_t>(a)] = true;
  Shape out_shape, kept_dims;
  for (size_t d = 0; d < rank; ++d) {
    if (!reduced[d]) kept_dims.push_back(x.shape[d]);
    if (!reduced[d] || keepdims) out_shape.push_back(reduced[d] ? 1 : x.shape[d]);
  }
  const int64_t out_numel = checked_numel(kept_dims);
  std::vector<double> sum(static_cast<size_t>(out_numel), 0.0);
  std::vector<int64_t> count(static_cast<size_t>(out_numel), 0);
  std::vector<int64_t> idx(rank, 0);
  for (int64_t i = 0; i < x.numel(); ++i) {
    int64_t rem = i, o = 0, mul = 1;
    for (size_t d = rank; d-- > 0;) {
      idx[d] = rem % x.shape[d];
      rem /= x.shape[d];
    }
    for (size_t d = rank; d-- > 0;)
      if (!reduced[d]) {
        o += idx[d] * mul;
        mul *= x.shape[d];
      }
    sum[o] += x.f32()[i];
    ++count[o];
  }
  HostTensor y(DType::F32, out_shape);
  for (int64_t o = 0; o < out_numel; ++o) y.f32()[o] = static_cast<float>(sum[o] / static_cast<double>(count[o]));
  return y;
}

void check_close(const HostTensor& got, const HostTensor& want, double eps) {
  REQUIRE(got.shape == want.shape);
  for (int64_t i = 0; i < want.numel(); ++i) REQUIRE(got.f32()[i] == doctest::Approx(want.f32()[i]).epsilon(eps));
}

}  // namespace

TEST_CASE("ReduceMean over every subset of axes of a rank-4 tensor, keepdims on and off") {
  const HostTensor x = random_f32({3, 4, 5, 6}, 17);
  for (int mask = 1; mask < 16; ++mask) {
    std::vector<int64_t> axes;
    for (int64_t a = 0; a < 4; ++a)
      if (mask & (1 << a)) axes.push_back(a);
    for (int keepdims = 0; keepdims < 2; ++keepdims) {
      INFO("mask " << mask << " keepdims " << keepdims);
      const HostTensor y = run_op(make_node("ReduceMean", "/rm", {{"axes", axes}, {"keepdims", keepdims}}), {{x}});
      // The kernel and the reference both sum in double: only the final float rounding differs.
      check_close(y, ref_reduce_mean(x, axes, keepdims), 1e-6);
    }
  }
}

TEST_CASE("ReduceMean: negative axes, default axes, large threaded inputs, higher ranks") {
  const HostTensor x = random_f32({3, 2, 2}, 19);
  // test_reduce_mean_negative_axes_keepdims: axes [-2] -> (3, 1, 2).
  check_close(run_op(make_node("ReduceMean", "/rm", {{"axes", {-2}}}), {{x}}), ref_reduce_mean(x, {1}, true), 1e-6);
  // No axes: everything, keepdims default 1 -> (1, 1, 1).
  const HostTensor all = run_op(make_node("ReduceMean", "/rm", json::object()), {{x}});
  check_close(all, ref_reduce_mean(x, {0, 1, 2}, true), 1e-6);
  // NCHW over H, W (the fast path) and over N (innermost kept) on inputs big enough to be threaded.
  const HostTensor big = random_f32({4, 64, 32, 32}, 23);
  check_close(run_op(make_node("ReduceMean", "/rm", {{"axes", {2, 3}}, {"keepdims", 1}}), {{big}}),
              ref_reduce_mean(big, {2, 3}, true), 1e-6);
  check_close(run_op(make_node("ReduceMean", "/rm", {{"axes", {0}}, {"keepdims", 0}}), {{big}}),
              ref_reduce_mean(big, {0}, false), 1e-6);
  // Rank 6 with interleaved axes and size-1 dims.
  const HostTensor r6 = random_f32({2, 1, 3, 4, 1, 5}, 29);
  check_close(run_op(make_node("ReduceMean", "/rm", {{"axes", {1, 3, 5}}, {"keepdims", 0}}), {{r6}}),
              ref_reduce_mean(r6, {1, 3, 5}, false), 1e-6);
  check_close(run_op(make_node("ReduceMean", "/rm", {{"axes", {0, 2, 4}}, {"keepdims", 1}}), {{r6}}),
              ref_reduce_mean(r6, {0, 2, 4}, true), 1e-6);
}

TEST_CASE("ReduceMean opset 18: axes as a constant input, a runtime input, and noop_with_empty_axes") {
  const HostTensor x = random_f32({2, 3, 4, 5}, 31);
  const HostTensor axes = make_i64({2}, {-1, 1});
  const Node node = make_node("ReduceMean", "/rm18", {{"onnx_opset", 18}, {"keepdims", 0}}, 2);
  const HostTensor y = run_op(node, {{x}, {axes, true}});
  check_close(y, ref_reduce_mean(x, {1, 3}, false), 1e-6);

  // Runtime axes: shape inference cannot know the result...
  auto op = build(node);
  CHECK(error_of([&] { op->infer(descs_of({{x}, {axes, false}})); }) ==
        "node '/rm18' (ReduceMean): axes input 'in1' must be a constant to infer the output shape");
  // ...but forward reads the values it is given (here shaped by a plan made with the same axes).
  ThreadPool pool(2);
  Context ctx{Device::CPU, &pool};
  HostTensor out(DType::F32, {2, 4});
  Tensor xv = x.view(), av = axes.view(), ov = out.view();
  op->forward(ctx, {&xv, &av}, {&ov});
  CHECK(values(out) == values(y));

  // Empty axes: all axes, or nothing with noop_with_empty_axes.
  const HostTensor empty(DType::I64, {0});  // not make_i64: memcpy from an empty vector passes null
  const HostTensor all = run_op(make_node("ReduceMean", "/rm", {{"onnx_opset", 18}}, 2), {{x}, {empty, true}});
  CHECK(all.shape == Shape{1, 1, 1, 1});
  const HostTensor same = run_op(make_node("ReduceMean", "/rm", {{"onnx_opset", 18}, {"noop_with_empty_axes", 1}}, 2),
                                 {{x}, {empty, true}});
  CHECK(same.shape == x.shape);
  CHECK(values(same) == values(x));
  // Omitted optional axes input ("").
  Node omitted = make_node("ReduceMean", "/rm", {{"onnx_opset", 18}, {"keepdims", 0}}, 2);
  omitted.inputs[1] = "";
  auto op2 = build(omitted);
  TensorDesc absent;
  absent.present = false;
  CHECK(op2->infer({TensorDesc{DType::F32, x.shape}, absent})[0].shape == Shape{});
}

TEST_CASE("ReduceMean errors: axes input before opset 18, bad axes") {
  CHECK(error_of([&] { build(make_node("ReduceMean", "/rm", {{"onnx_opset", 13}}, 2)); }) ==
        "node '/rm' (ReduceMean): axes as an input needs opset >= 18, the model has opset 13");
  const std::vector<TensorDesc> in = {TensorDesc{DType::F32, {2, 3}}};
  CHECK(error_of([&] { build(make_node("ReduceMean", "/rm", {{"axes", {2}}}))->infer(in); }) ==
        "node '/rm' (ReduceMean): axis 2 out of range for rank 2");
  CHECK(error_of([&] { build(make_node("ReduceMean", "/rm", {{"axes", {1, -1}}}))->infer(in); }) ==
        "node '/rm' (ReduceMean): repeated axis in axes");
}

// ---------------- shape ops ----------------

TEST_CASE("Reshape: 0 copies a dim, -1 is inferred, allowzero keeps 0, attribute form, I64 data") {
  const HostTensor x = iota_f32({2, 3, 4});
  auto reshape = [&](const std::vector<int64_t>& target, json attrs = json::object()) {
    return run_op(make_node("Reshape", "/Reshape", attrs, 2), {{x}, {make_i64({int64_t(target.size())}, target), true}});
  };
  for (const auto& [target, want] : std::vector<std::pair<std::vector<int64_t>, Shape>>{
           {{2, 0, 1, -1}, {2, 3, 1, 4}},  // test_reshape_zero_and_negative_dim
           {{2, 0, 4, 1}, {2, 3, 4, 1}},   // test_reshape_zero_dim
           {{-1, 2, 3, 4}, {1, 2, 3, 4}},
           {{2, -1, 2}, {2, 6, 2}},
           {{24}, {24}},
           {{4, 2, 3}, {4, 2, 3}}}) {
    const HostTensor y = reshape(target);
    CHECK(y.shape == want);
    CHECK(values(y) == values(x));
  }
  // allowzero=1: a 0 is a real zero-size dim (test_reshape_allowzero_reordered).
  const HostTensor empty(DType::F32, {0, 3, 4});
  const HostTensor z = run_op(make_node("Reshape", "/Reshape", {{"allowzero", 1}}, 2), {{empty}, {make_i64({3}, {3, 4, 0}), true}});
  CHECK(z.shape == Shape{3, 4, 0});
  // Shape from the attribute the importer may set.
  CHECK(run_op(make_node("Reshape", "/Reshape", {{"shape", {6, -1}}}), {{x}}).shape == Shape{6, 4});
  // I64 data moves unchanged.
  const HostTensor ints = make_i64({2, 3}, {1, -2, 3, -4, 5, int64_t(1) << 40});
  const HostTensor yi = run_op(make_node("Reshape", "/Reshape", {{"shape", {3, 2}}}), {{ints}});
  CHECK(yi.dtype == DType::I64);
  CHECK(yi.to_int64() == ints.to_int64());
}

TEST_CASE("Reshape errors name the node and both shapes") {
  const HostTensor x = iota_f32({2, 3});
  auto err = [&](const std::vector<int64_t>& target, json attrs = json::object()) {
    return error_of([&] { run_op(make_node("Reshape", "/Reshape", attrs, 2), {{x}, {make_i64({int64_t(target.size())}, target), true}}); });
  };
  CHECK(err({4, -1}) == "node '/Reshape' (Reshape): cannot reshape (2, 3) to (4, -1)");
  CHECK(err({5}) == "node '/Reshape' (Reshape): cannot reshape (2, 3) to (5,)");
  CHECK(err({-1, -1}) == "node '/Reshape' (Reshape): target shape (-1, -1) has more than one -1");
  CHECK(err({2, 3, 0}) ==
        "node '/Reshape' (Reshape): cannot reshape (2, 3) to (2, 3, 0): 0 at index 2 copies a dim the input does not have");
  CHECK(err({-2, -3}).find("invalid dim -2") != std::string::npos);
  // A shape only known at run time cannot be planned.
  CHECK(error_of([&] {
          build(make_node("Reshape", "/Reshape", json::object(), 2))->infer(descs_of({{x}, {make_i64({1}, {6}), false}}));
        }) == "node '/Reshape' (Reshape): shape input 'in1' must be a constant");
  CHECK(error_of([&] { build(make_node("Reshape", "/Reshape", json::object(), 1)); }).find("needs a target shape") !=
        std::string::npos);
}

TEST_CASE("view ops run in place (out aliases in) and by copy") {
  ThreadPool pool(2);
  Context ctx{Device::CPU, &pool};
  // Big enough (1 MiB) that the copy is split into threaded pieces.
  const HostTensor x = random_f32({4, 256, 256}, 37);
  for (const char* op_type : {"Flatten", "Reshape", "Squeeze", "Unsqueeze"}) {
    INFO(op_type);
    json attrs = json::object();
    if (std::string(op_type) == "Reshape") attrs["shape"] = {-1};
    if (std::string(op_type) == "Unsqueeze") attrs["axes"] = {0};
    auto op = build(make_node(op_type, "/v", attrs));
    CHECK(op->can_run_in_place());
    const Shape out_shape = op->infer({TensorDesc{DType::F32, x.shape}})[0].shape;
    // Copy into a separate buffer.
    HostTensor out(DType::F32, out_shape);
    Tensor xv = x.view(), ov = out.view();
    op->forward(ctx, {&xv}, {&ov});
    CHECK(values(out) == values(x));
    // In place: the output view shares the input's bytes; nothing may change.
    HostTensor buf = x;
    Tensor in_view = buf.view(), out_view = buf.view();
    out_view.shape = out_shape;
    op->forward(ctx, {&in_view}, {&out_view});
    CHECK(values(buf) == values(x));
  }
}

TEST_CASE("Flatten: default axis, axis 0, negative axes, axis == rank") {
  const HostTensor x = iota_f32({2, 3, 4, 5});
  auto flat = [&](json attrs) { return run_op(make_node("Flatten", "/Flatten", attrs), {{x}}); };
  CHECK(flat(json::object()).shape == Shape{2, 60});
  CHECK(flat({{"axis", 0}}).shape == Shape{1, 120});
  CHECK(flat({{"axis", -1}}).shape == Shape{24, 5});
  CHECK(flat({{"axis", -3}}).shape == Shape{2, 60});
  CHECK(flat({{"axis", -4}}).shape == Shape{1, 120});
  CHECK(flat({{"axis", 4}}).shape == Shape{120, 1});
  CHECK(values(flat({{"axis", 2}})) == values(x));
  CHECK(error_of([&] { flat({{"axis", 5}}); }) == "node '/Flatten' (Flatten): axis 5 out of range for input (2, 3, 4, 5)");
}

TEST_CASE("Squeeze / Unsqueeze: attribute and constant-input forms") {
  const HostTensor x = iota_f32({1, 3, 1, 5});
  auto with_input = [&](const std::string& op, const std::vector<int64_t>& axes, const HostTensor& data) {
    return run_op(make_node(op, "/" + op, {{"onnx_opset", 13}}, 2), {{data}, {make_i64({int64_t(axes.size())}, axes), true}});
  };
  CHECK(with_input("Squeeze", {0}, x).shape == Shape{3, 1, 5});
  CHECK(with_input("Squeeze", {-2}, x).shape == Shape{1, 3, 5});
  CHECK(run_op(make_node("Squeeze", "/s", json::object()), {{x}}).shape == Shape{3, 5});  // no axes: all 1s
  CHECK(run_op(make_node("Squeeze", "/s", {{"axes", {0, 2}}, {"onnx_opset", 11}}), {{x}}).shape == Shape{3, 5});
  CHECK(values(with_input("Squeeze", {2}, x)) == values(x));

  const HostTensor y = iota_f32({3, 4, 5});
  CHECK(with_input("Unsqueeze", {0}, y).shape == Shape{1, 3, 4, 5});
  CHECK(with_input("Unsqueeze", {2, 4, 5}, y).shape == Shape{3, 4, 1, 5, 1, 1});
  CHECK(with_input("Unsqueeze", {5, 4, 2}, y).shape == Shape{3, 4, 1, 5, 1, 1});  // unsorted
  CHECK(with_input("Unsqueeze", {-2}, x).shape == Shape{1, 3, 1, 1, 5});
  CHECK(run_op(make_node("Unsqueeze", "/u", {{"axes", {3}}}), {{y}}).shape == Shape{3, 4, 5, 1});
  const HostTensor yi = with_input("Unsqueeze", {1}, make_i64({2}, {7, -7}));
  CHECK(yi.shape == Shape{2, 1});
  CHECK(yi.to_int64() == std::vector<int64_t>{7, -7});

  CHECK(error_of([&] { with_input("Squeeze", {1}, x); }) ==
        "node '/Squeeze' (Squeeze): cannot squeeze axis 1 of (1, 3, 1, 5): its size is 3");
  CHECK(error_of([&] { with_input("Squeeze", {4}, x); }) == "node '/Squeeze' (Squeeze): axis 4 out of range for rank 4");
  CHECK(error_of([&] { with_input("Unsqueeze", {1, 1}, y); }).find("repeated axis") != std::string::npos);
  CHECK(error_of([&] { run_op(make_node("Unsqueeze", "/u", json::object()), {{y}}); }).find("needs axes") !=
        std::string::npos);
  CHECK(error_of([&] { build(make_node("Squeeze", "/s", {{"onnx_opset", 11}}, 2)); })
            .find("axes as an input needs opset >= 13") != std::string::npos);
}

TEST_CASE("Concat on every axis of rank-3 inputs matches a naive gather") {
  const std::vector<Shape> base = {{2, 3, 4}, {2, 3, 4}, {2, 3, 4}};
  for (int64_t axis = -3; axis < 3; ++axis) {
    const int64_t a = axis < 0 ? axis + 3 : axis;
    std::vector<In> ins;
    Shape want = base[0];
    want[a] = 0;
    for (size_t i = 0; i < base.size(); ++i) {
      Shape s = base[i];
      s[a] = static_cast<int64_t>(i) + 1;  // sizes 1, 2, 3 along the axis
      want[a] += s[a];
      ins.push_back({iota_f32(s, 1000.f * static_cast<float>(i))});
    }
    const HostTensor y = run_op(make_node("Concat", "/Concat", {{"axis", axis}}, ins.size()), ins);
    INFO("axis " << axis);
    REQUIRE(y.shape == want);
    // Output element (i0, i1, i2) comes from the input whose range along `a` holds it.
    for (int64_t i0 = 0; i0 < want[0]; ++i0)
      for (int64_t i1 = 0; i1 < want[1]; ++i1)
        for (int64_t i2 = 0; i2 < want[2]; ++i2) {
          int64_t idx[3] = {i0, i1, i2};
          size_t src = 0;
          while (idx[a] >= ins[src].t.shape[a]) idx[a] -= ins[src++].t.shape[a];
          const Shape& s = ins[src].t.shape;
          const float expect = ins[src].t.f32()[(idx[0] * s[1] + idx[1]) * s[2] + idx[2]];
          REQUIRE(y.f32()[(i0 * want[1] + i1) * want[2] + i2] == expect);
        }
  }
}

TEST_CASE("Concat: I64, 1-D, large threaded blocks, empty inputs, errors") {
  const HostTensor a = make_i64({2}, {1, 2}), b = make_i64({3}, {3, 4, 5});
  const HostTensor ab = run_op(make_node("Concat", "/c", {{"axis", 0}}, 2), {{a}, {b}});
  CHECK(ab.to_int64() == std::vector<int64_t>{1, 2, 3, 4, 5});
  // Two 1.5 MiB inputs along axis 0: each block is split into 256 KiB pieces across the workers.
  const HostTensor x = random_f32({384, 1024}, 41), y = random_f32({384, 1024}, 43);
  const HostTensor xy = run_op(make_node("Concat", "/c", {{"axis", 0}}, 2), {{x}, {y}});
  REQUIRE(xy.shape == Shape{768, 1024});
  CHECK(std::equal(x.f32(), x.f32() + x.numel(), xy.f32()));
  CHECK(std::equal(y.f32(), y.f32() + y.numel(), xy.f32() + x.numel()));
  // Along the last axis: many small rows.
  const HostTensor xy1 = run_op(make_node("Concat", "/c", {{"axis", 1}}, 2), {{x}, {y}});
  for (int64_t r = 0; r < 384; r += 97) {
    CHECK(xy1.f32()[r * 2048 + 5] == x.f32()[r * 1024 + 5]);
    CHECK(xy1.f32()[r * 2048 + 1024 + 7] == y.f32()[r * 1024 + 7]);
  }
  // A zero-size input contributes nothing.
  const HostTensor e(DType::F32, {2, 0}), f = iota_f32({2, 2});
  CHECK(values(run_op(make_node("Concat", "/c", {{"axis", 1}}, 2), {{e}, {f}})) == values(f));

  const std::vector<TensorDesc> bad = {TensorDesc{DType::F32, {2, 3}}, TensorDesc{DType::F32, {3, 3}}};
  CHECK(error_of([&] { build(make_node("Concat", "/Concat", {{"axis", 1}}, 2))->infer(bad); }) ==
        "node '/Concat' (Concat): cannot concatenate (3, 3) (input 1) with (2, 3) along axis 1");
  CHECK(error_of([&] { build(make_node("Concat", "/Concat", {{"axis", 2}}, 2))->infer(bad); }) ==
        "node '/Concat' (Concat): axis 2 out of range for rank 2");
  CHECK(error_of([&] { build(make_node("Concat", "/Concat", json::object(), 2)); }) ==
        "node '/Concat' (Concat): attribute 'axis' is required");
  const std::vector<TensorDesc> mixed = {TensorDesc{DType::F32, {2}}, TensorDesc{DType::I64, {2}}};
  CHECK(error_of([&] { build(make_node("Concat", "/Concat", {{"axis", 0}}, 2))->infer(mixed); }) ==
        "node '/Concat' (Concat): input 1 is I64 but input 0 is F32");
}
