// Element-wise op families (activations, Identity/Dropout, Add/Sub/Mul/Div, BatchNormalization, Softmax)
// run through the op registry (infer + forward on the CPU) and compared with naive references written here:
// index-by-index broadcasting, formulas in double. Also in-place runs (output buffer == input buffer).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>

#include "engine/ops/op.h"
#include "kernels/cpu/elementwise.h"

using namespace camrt;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> random_values(int64_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

HostTensor random_f32(const Shape& shape, uint32_t seed, float lo = -3.f, float hi = 3.f) {
  return make_f32(shape, random_values(checked_numel(shape), seed, lo, hi));
}

// Values bounded away from zero (|v| in [0.5, 2]) so Div stays well conditioned.
HostTensor nonzero_f32(const Shape& shape, uint32_t seed) {
  std::vector<float> v = random_values(checked_numel(shape), seed, 0.5f, 2.f);
  std::mt19937 rng(seed + 1);
  for (float& x : v)
    if (rng() & 1) x = -x;
  return make_f32(shape, v);
}

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
  const bool registered = factory != nullptr;  // (doctest cannot print a function pointer)
  REQUIRE(registered);
  return factory(node);
}

std::vector<TensorDesc> descs_of(const std::vector<const HostTensor*>& inputs, bool constant) {
  std::vector<TensorDesc> descs;
  for (const HostTensor* t : inputs) {
    if (t == nullptr) {
      TensorDesc missing;
      missing.present = false;
      descs.push_back(missing);
    } else {
      descs.push_back(TensorDesc{t->dtype, t->shape, constant ? t : nullptr, true});
    }
  }
  return descs;
}

// infer, allocate the outputs, forward. inputs[i] == nullptr is an omitted optional input.
// If in_place, output 0 is written into input 0's buffer (which must be large enough) and returned as it.
std::vector<HostTensor> run(const Node& node, const std::vector<const HostTensor*>& inputs, ThreadPool& pool,
                            bool constant_inputs = false, bool in_place = false, void* workspace = nullptr,
                            size_t workspace_bytes = 0) {
  std::unique_ptr<Op> op = build(node);
  const std::vector<TensorDesc> out_descs = op->infer(descs_of(inputs, constant_inputs));
  std::vector<Tensor> in_views;
  for (const HostTensor* t : inputs) in_views.push_back(t ? t->view() : Tensor{});
  std::vector<const Tensor*> in_ptrs;
  for (size_t i = 0; i < inputs.size(); ++i) in_ptrs.push_back(inputs[i] ? &in_views[i] : nullptr);
  std::vector<HostTensor> outs;
  for (const TensorDesc& d : out_descs) outs.emplace_back(d.dtype, d.shape);
  std::vector<Tensor> out_views;
  for (HostTensor& o : outs) out_views.push_back(o.view());
  if (in_place) {
    REQUIRE(op->can_run_in_place());
    out_views[0].data = in_views[0].data;
  }
  std::vector<Tensor*> out_ptrs;
  for (Tensor& v : out_views) out_ptrs.push_back(&v);
  Context ctx;
  ctx.pool = &pool;
  ctx.workspace = workspace;
  ctx.workspace_bytes = workspace_bytes;
  op->forward(ctx, in_ptrs, out_ptrs);
  if (in_place) std::memcpy(outs[0].bytes.data(), inputs[0]->bytes.data(), outs[0].bytes.size());
  return outs;
}

std::vector<float> floats(const HostTensor& t) { return std::vector<float>(t.f32(), t.f32() + t.numel()); }

// Largest |got - want| / (1 + |want|) (relative for large values, absolute near zero); a NaN on one side
// only, or a size mismatch, counts as infinite.
double max_error(const std::vector<float>& got, const std::vector<double>& want) {
  if (got.size() != want.size()) return kInf;
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) || std::isnan(want[i])) {
      if (std::isnan(got[i]) != std::isnan(want[i])) return kInf;
      continue;
    }
    if (got[i] == want[i]) continue;  // also equal infinities
    worst = std::max(worst, std::abs(got[i] - want[i]) / (1.0 + std::abs(want[i])));
  }
  return worst;
}

// ---- broadcasting reference -------------------------------------------------------------------------

Shape ref_broadcast_shape(const Shape& a, const Shape& b) {
  const size_t rank = std::max(a.size(), b.size());
  Shape out(rank);
  for (size_t k = 0; k < rank; ++k) {
    const int64_t da = k + a.size() < rank ? 1 : a[k + a.size() - rank];
    const int64_t db = k + b.size() < rank ? 1 : b[k + b.size() - rank];
    REQUIRE((da == db || da == 1 || db == 1));
    out[k] = da == 1 ? db : da;
  }
  return out;
}

// Flat index into an operand of shape `s` for the output coordinates `coord` (numpy alignment from the right).
int64_t operand_index(const Shape& s, const Shape& coord) {
  int64_t index = 0;
  for (size_t k = 0; k < s.size(); ++k) {
    const int64_t c = coord[coord.size() - s.size() + k];
    index = index * s[k] + (s[k] == 1 ? 0 : c);
  }
  return index;
}

template <typename T, typename F>
std::vector<T> ref_binary(const Shape& as, const T* a, const Shape& bs, const T* b, F f) {
  const Shape out = ref_broadcast_shape(as, bs);
  const int64_t n = checked_numel(out);
  std::vector<T> result(static_cast<size_t>(n));
  Shape coord(out.size());
  for (int64_t i = 0; i < n; ++i) {
    int64_t rest = i;
    for (size_t k = out.size(); k-- > 0;) {
      coord[k] = rest % out[k];
      rest /= out[k];
    }
    result[i] = f(a[operand_index(as, coord)], b[operand_index(bs, coord)]);
  }
  return result;
}

template <typename T>
T ref_apply(const std::string& op, T x, T y) {
  if (op == "Add") return x + y;
  if (op == "Sub") return x - y;
  if (op == "Mul") return x * y;
  return x / y;
}

const char* const kBinaryOps[] = {"Add", "Sub", "Mul", "Div"};

}  // namespace

// ---- Add / Sub / Mul / Div -------------------------------------------------------------------------------

TEST_CASE("Add/Sub/Mul/Div float32 match naive broadcasting over many shape pairs") {
  ThreadPool pool(2);
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{2, 3, 4, 5}, {2, 3, 4, 5}},       // same shape
      {{2, 3, 4, 5}, {1, 3, 1, 1}},       // per-channel
      {{1, 3, 1, 1}, {2, 3, 4, 5}},       // per-channel, broadcast operand first (order matters for Sub/Div)
      {{2, 3, 4, 5}, {3, 1, 1}},          // rank mismatch
      {{2, 3, 4, 5}, {2, 3, 1, 1}},       // squeeze-excite scale
      {{2, 3, 1, 1}, {2, 3, 4, 5}},
      {{3, 1, 5}, {4, 1}},                // size-1 dims in both operands
      {{5, 1, 3, 1}, {1, 4, 1, 2}},
      {{4, 5}, {5}},                      // bias over the last dim
      {{4, 1}, {1, 5}},                   // outer product shape
      {{}, {2, 3}},                       // rank-0 scalar
      {{2, 3}, {}},
      {{2, 3}, {1}},
      {{1}, {1}},
      {{}, {}},
      {{2, 0, 3}, {1, 1, 3}},             // empty output
      {{2, 16, 33, 35}, {2, 16, 33, 35}}, // large enough to split across both threads
      {{2, 16, 33, 35}, {1, 16, 1, 1}},
      {{2, 16, 33, 35}, {2, 1, 33, 1}},   // general strided walk, second chunk starts mid-tensor
      {{1, 16, 1, 35}, {2, 16, 33, 35}},
  };
  uint32_t seed = 1;
  for (const auto& [as, bs] : cases) {
    for (const char* op : kBinaryOps) {
      CAPTURE(op);
      CAPTURE(shape_str(as));
      CAPTURE(shape_str(bs));
      const HostTensor a = random_f32(as, seed++);
      const HostTensor b = std::string(op) == "Div" ? nonzero_f32(bs, seed++) : random_f32(bs, seed++);
      const std::vector<HostTensor> out = run(make_node(op, {"a", "b"}), {&a, &b}, pool);
      REQUIRE(out.size() == 1);
      CHECK(out[0].shape == ref_broadcast_shape(as, bs));
      const std::vector<float> want =
          ref_binary<float>(as, a.f32(), bs, b.f32(), [&](float x, float y) { return ref_apply(op, x, y); });
      // One IEEE float operation per element on both sides: the results must be bit-identical.
      CHECK(floats(out[0]) == want);
    }
  }
}

TEST_CASE("broadcast plans collapse the common CNN cases to short loops") {
  // These shapes are what makes the fast paths reachable; a regression here silently slows CNNs.
  BroadcastPlan same = make_broadcast_plan({2, 3, 4, 5}, {2, 3, 4, 5});
  CHECK(same.dims == Shape{120});
  BroadcastPlan channel = make_broadcast_plan({2, 3, 4, 5}, {3, 1, 1});
  CHECK(channel.dims == Shape{2, 3, 20});
  CHECK(channel.b_strides == Shape{0, 1, 0});
  BroadcastPlan se = make_broadcast_plan({2, 3, 4, 5}, {2, 3, 1, 1});
  CHECK(se.dims == Shape{6, 20});
  CHECK(se.b_strides == Shape{1, 0});
  BroadcastPlan scalar = make_broadcast_plan({}, {});
  CHECK(scalar.numel == 1);
  CHECK_THROWS_AS(make_broadcast_plan({2, 3}, {4}), Error);
}

TEST_CASE("Add/Sub/Mul/Div int64 broadcast, and Div truncates toward zero") {
  ThreadPool pool(2);
  const HostTensor a = make_i64({2, 3}, {7, -7, 9, 100, -1, 0});
  const HostTensor b = make_i64({3}, {2, 2, -4});
  for (const char* op : kBinaryOps) {
    CAPTURE(op);
    const std::vector<HostTensor> out = run(make_node(op, {"a", "b"}), {&a, &b}, pool);
    REQUIRE(out[0].dtype == DType::I64);
    const std::vector<int64_t> want =
        ref_binary<int64_t>(a.shape, a.i64(), b.shape, b.i64(), [&](int64_t x, int64_t y) { return ref_apply(op, x, y); });
    CHECK(out[0].to_int64() == want);
  }
  const std::vector<HostTensor> q = run(make_node("Div", {"a", "b"}), {&a, &b}, pool);
  CHECK(q[0].to_int64() == std::vector<int64_t>{3, -3, -2, 50, 0, 0});  // -7/2 = -3, 9/-4 = -2: truncation
  const HostTensor scalar = make_i64({}, {5});
  const std::vector<HostTensor> s = run(make_node("Sub", {"s", "a"}), {&scalar, &a}, pool);
  CHECK(s[0].to_int64() == std::vector<int64_t>{-2, 12, -4, -95, 6, 5});
  const HostTensor zero = make_i64({1}, {0});
  CHECK_THROWS_WITH_AS(run(make_node("Div", {"a", "z"}), {&a, &zero}, pool),
                       doctest::Contains("node 'n_Div' (Div): integer division by zero"), Error);
}

TEST_CASE("Add/Sub/Mul/Div shape inference: errors name the node, dynamic dims broadcast") {
  Node node = make_node("Add", {"a", "b"});
  node.name = "x";
  std::unique_ptr<Op> op = build(node);
  CHECK_THROWS_WITH_AS(op->infer({TensorDesc{DType::F32, {2, 3}}, TensorDesc{DType::F32, {4}}}),
                       doctest::Contains("node 'x' (Add): shapes (2, 3) and (4,) do not broadcast"), Error);
  CHECK_THROWS_WITH_AS(op->infer({TensorDesc{DType::F32, {2}}, TensorDesc{DType::I64, {2}}}),
                       doctest::Contains("differ in dtype"), Error);
  CHECK_THROWS_WITH_AS(op->infer({TensorDesc{DType::F16, {2}}, TensorDesc{DType::F16, {2}}}),
                       doctest::Contains("only F32 and I64"), Error);
  CHECK_THROWS_AS(op->infer({TensorDesc{DType::F32, {2}}}), Error);
  const std::vector<TensorDesc> out = op->infer({TensorDesc{DType::F32, {-1, 3, 4, 4}}, TensorDesc{DType::F32, {1, 3, 1, 1}}});
  CHECK(out.at(0).shape == Shape{-1, 3, 4, 4});
  CHECK(op->infer({TensorDesc{DType::F32, {-1, 1}}, TensorDesc{DType::F32, {5}}}).at(0).shape == Shape{-1, 5});
}

TEST_CASE("Add/Mul run in place when the output has input 0's shape") {
  ThreadPool pool(2);
  for (const auto& [op, bs] : std::vector<std::pair<std::string, Shape>>{
           {"Add", {1, 3, 1, 1}}, {"Mul", {2, 3, 1, 1}}, {"Sub", {2, 3, 4, 5}}, {"Div", {5}}}) {
    CAPTURE(op);
    const HostTensor a = random_f32({2, 3, 4, 5}, 11);
    const HostTensor b = nonzero_f32(bs, 12);
    const std::vector<float> want =
        ref_binary<float>(a.shape, a.f32(), bs, b.f32(), [&](float x, float y) { return ref_apply(op, x, y); });
    HostTensor buffer = a;
    const std::vector<HostTensor> out = run(make_node(op, {"a", "b"}), {&buffer, &b}, pool, false, true);
    CHECK(floats(out[0]) == want);
  }
  // x + x with everything in one buffer.
  HostTensor x = random_f32({3, 7}, 13);
  std::vector<float> twice = floats(x);
  for (float& v : twice) v += v;
  Tensor view = x.view();
  std::unique_ptr<Op> add = build(make_node("Add", {"x", "x"}));
  ThreadPool one(1);
  Context ctx{Device::CPU, &one};
  add->forward(ctx, {&view, &view}, {&view});
  CHECK(floats(x) == twice);
}

TEST_CASE("Add refuses an output that aliases a smaller, broadcast input") {
  ThreadPool pool(2);
  HostTensor big = random_f32({2, 3, 4, 5}, 21);
  HostTensor storage(DType::F32, {2, 3, 4, 5});
  Tensor small{storage.bytes.data(), DType::F32, {1, 3, 1, 1}, Device::CPU};
  Tensor out{storage.bytes.data(), DType::F32, {2, 3, 4, 5}, Device::CPU};
  Tensor big_view = big.view();
  std::unique_ptr<Op> add = build(make_node("Add", {"s", "b"}));
  Context ctx{Device::CPU, &pool};
  CHECK_THROWS_WITH_AS(add->forward(ctx, {&small, &big_view}, {&out}), doctest::Contains("broadcast input"), Error);
}

// ---- activations -----------------------------------------------------------------------------------------

namespace {

// Edge points of every activation (0, the HardSwish/HardSigmoid knees at +-3 and +-2.5, large magnitudes)
// followed by random values.
HostTensor activation_input(const Shape& shape, uint32_t seed) {
  const std::vector<float> edges = {-100.f, -6.f, -3.5f, -3.f, -2.5f, -1.f, -0.5f, -0.f, 0.f,
                                    0.5f,   1.f,  2.5f,  2.9f, 3.f,   3.1f, 6.f,   100.f, -88.f};
  std::vector<float> v = random_values(checked_numel(shape), seed, -8.f, 8.f);
  for (size_t i = 0; i < v.size() && i < edges.size(); ++i) v[i] = edges[i];
  return make_f32(shape, v);
}

double clamp01(double v) { return std::min(1.0, std::max(0.0, v)); }

}  // namespace

TEST_CASE("activations match their formulas, out of place and in place") {
  ThreadPool pool(2);
  struct Case {
    std::string op;
    nlohmann::json attrs;
    std::function<double(float)> f;
    double tolerance;
  };
  // Relu, LeakyRelu and Clip are at most one float rounding (alpha * x), reproduced exactly in float here.
  // The others are compared with double formulas: a float expf is within 2 ulp, and each of the 2-3 further
  // float operations adds half an ulp, so 1e-6 relative (about 8 ulp) bounds them.
  const std::vector<Case> cases = {
      {"Relu", {}, [](float x) { return x < 0 ? 0.f : x; }, 0},
      {"LeakyRelu", {}, [](float x) { return x < 0 ? 0.01f * x : x; }, 0},
      {"LeakyRelu", {{"alpha", 0.1}}, [](float x) { return x < 0 ? 0.1f * x : x; }, 0},
      {"Clip", {{"min", 0.0}, {"max", 6.0}}, [](float x) { return std::min(6.f, std::max(0.f, x)); }, 0},
      {"Clip", {{"min", -1.5}}, [](float x) { return std::max(-1.5f, x); }, 0},  // only min: no upper bound
      {"Clip", {}, [](float x) { return x; }, 0},
      {"Sigmoid", {}, [](float x) { return 1.0 / (1.0 + std::exp(-double(x))); }, 1e-6},
      {"HardSigmoid", {}, [](float x) { return clamp01(0.2 * x + 0.5); }, 1e-6},
      {"HardSigmoid", {{"alpha", 0.3}, {"beta", 0.4}}, [](float x) { return clamp01(double(0.3f) * x + double(0.4f)); }, 1e-6},
      {"HardSwish", {}, [](float x) { return x * clamp01(x / 6.0 + 0.5); }, 1e-6},
  };
  uint32_t seed = 100;
  for (const Case& c : cases) {
    for (const Shape& shape : std::vector<Shape>{{}, {18}, {2, 3, 4, 5}, {2, 16, 33, 35}}) {
      CAPTURE(c.op);
      CAPTURE(c.attrs.dump());
      CAPTURE(shape_str(shape));
      const HostTensor x = activation_input(shape, seed++);
      std::vector<double> want;
      for (int64_t i = 0; i < x.numel(); ++i) want.push_back(c.f(x.f32()[i]));
      const Node node = make_node(c.op, {"x"}, {"y"}, c.attrs);
      const std::vector<HostTensor> out = run(node, {&x}, pool);
      CHECK(out[0].shape == shape);
      CHECK(max_error(floats(out[0]), want) <= c.tolerance);
      HostTensor buffer = x;
      const std::vector<HostTensor> in_place = run(node, {&buffer}, pool, false, true);
      CHECK(floats(in_place[0]) == floats(out[0]));
    }
  }
}

TEST_CASE("Sigmoid saturates without NaN and activations reject non-float input") {
  ThreadPool pool(2);
  const HostTensor x = make_f32({4}, {-1000.f, 1000.f, -kInf, kInf});
  const std::vector<HostTensor> out = run(make_node("Sigmoid", {"x"}), {&x}, pool);
  CHECK(floats(out[0]) == std::vector<float>{0.f, 1.f, 0.f, 1.f});
  const HostTensor i = make_i64({2}, {1, 2});
  CHECK_THROWS_WITH_AS(run(make_node("Relu", {"x"}), {&i}, pool), doctest::Contains("must be F32"), Error);
}

TEST_CASE("Clip reads min/max inputs (constant or runtime), either may be omitted") {
  ThreadPool pool(2);
  const HostTensor x = activation_input({2, 9}, 7);
  const HostTensor lo = make_f32({}, {-1.f});
  const HostTensor hi = make_f32({}, {2.f});
  auto want = [&](float a, float b) {
    std::vector<double> w;
    for (int64_t i = 0; i < x.numel(); ++i) w.push_back(std::min(b, std::max(a, x.f32()[i])));
    return w;
  };
  for (bool constant : {true, false}) {
    CAPTURE(constant);
    CHECK(max_error(floats(run(make_node("Clip", {"x", "lo", "hi"}), {&x, &lo, &hi}, pool, constant)[0]), want(-1, 2)) == 0);
    CHECK(max_error(floats(run(make_node("Clip", {"x", "lo"}), {&x, &lo}, pool, constant)[0]), want(-1, kInf)) == 0);
    CHECK(max_error(floats(run(make_node("Clip", {"x", "", "hi"}), {&x, nullptr, &hi}, pool, constant)[0]), want(-kInf, 2)) == 0);
  }
  // Inputs override attributes; min > max sets everything to max (ONNX spec).
  const Node both = make_node("Clip", {"x", "lo"}, {"y"}, {{"min", 5.0}, {"max", 6.0}});
  CHECK(max_error(floats(run(both, {&x, &lo}, pool)[0]), want(-1, 6)) == 0);
  const Node crossed = make_node("Clip", {"x"}, {"y"}, {{"min", 3.0}, {"max", 1.0}});
  for (float v : floats(run(crossed, {&x}, pool)[0])) CHECK(v == 1.f);
  const HostTensor two = make_f32({2}, {0.f, 1.f});
  CHECK_THROWS_WITH_AS(run(make_node("Clip", {"x", "two"}), {&x, &two}, pool), doctest::Contains("must be a scalar"), Error);
}

TEST_CASE("Identity and Dropout copy input 0; Dropout's mask is all true") {
  ThreadPool pool(2);
  const HostTensor x = random_f32({2, 3, 5}, 31);
  CHECK(floats(run(make_node("Identity", {"x"}), {&x}, pool)[0]) == floats(x));
  const HostTensor ints = make_i64({3}, {4, -5, 6});
  CHECK(run(make_node("Identity", {"x"}), {&ints}, pool)[0].to_int64() == ints.to_int64());
  HostTensor buffer = x;
  CHECK(floats(run(make_node("Identity", {"x"}), {&buffer}, pool, false, true)[0]) == floats(x));

  const HostTensor ratio = make_f32({}, {0.5f});
  HostTensor off(DType::Bool, {});
  const std::vector<HostTensor> out =
      run(make_node("Dropout", {"x", "ratio", "mode"}, {"y", "mask"}), {&x, &ratio, &off}, pool, true);
  REQUIRE(out.size() == 2);
  CHECK(floats(out[0]) == floats(x));
  CHECK(out[1].dtype == DType::Bool);
  CHECK(out[1].shape == x.shape);
  CHECK(out[1].to_int64() == std::vector<int64_t>(static_cast<size_t>(x.numel()), 1));

  HostTensor on(DType::Bool, {});
  on.bytes[0] = 1;
  const Node training = make_node("Dropout", {"x", "ratio", "mode"});
  CHECK_THROWS_WITH_AS(run(training, {&x, &ratio, &on}, pool, true), doctest::Contains("training_mode"), Error);
  CHECK_THROWS_WITH_AS(run(training, {&x, &ratio, &on}, pool, false), doctest::Contains("training_mode"), Error);
}

// ---- BatchNormalization -------------------------------------------------------------------------------------

TEST_CASE("BatchNormalization matches (x - mean) / sqrt(var + eps) * scale + B for ranks 2 to 5") {
  ThreadPool pool(2);
  uint32_t seed = 200;
  for (const Shape& shape : std::vector<Shape>{{4, 3}, {2, 3, 7}, {2, 3, 4, 5}, {1, 2, 2, 3, 4}, {2, 16, 33, 35}}) {
    for (double eps : {1e-5, 1e-3}) {
      CAPTURE(shape_str(shape));
      CAPTURE(eps);
      const int64_t c = shape[1];
      const HostTensor x = random_f32(shape, seed++);
      const HostTensor gamma = random_f32({c}, seed++, -2.f, 2.f);
      const HostTensor beta = random_f32({c}, seed++, -1.f, 1.f);
      const HostTensor mean = random_f32({c}, seed++, -1.f, 1.f);
      const HostTensor var = random_f32({c}, seed++, 0.1f, 2.f);
      nlohmann::json attrs = nlohmann::json::object();
      if (eps != 1e-5) attrs["epsilon"] = eps;  // else the default must be 1e-5
      const Node node = make_node("BatchNormalization", {"x", "g", "b", "m", "v"}, {"y"}, attrs);
      const std::vector<const HostTensor*> inputs = {&x, &gamma, &beta, &mean, &var};

      const int64_t inner = x.numel() / (shape[0] * c);
      std::vector<double> want(static_cast<size_t>(x.numel()));
      double worst_scale = 0;  // |x * s| + |shift|: the size of what the float multiply-add rounds
      for (int64_t i = 0; i < x.numel(); ++i) {
        const int64_t ch = (i / inner) % c;
        const double s = gamma.f32()[ch] / std::sqrt(double(var.f32()[ch]) + double(float(eps)));
        want[i] = (x.f32()[i] - double(mean.f32()[ch])) * s + beta.f32()[ch];
        worst_scale = std::max(worst_scale, std::abs(x.f32()[i] * s) + std::abs(beta.f32()[ch] - mean.f32()[ch] * s));
      }
      // Float scale and shift (one rounding each) and a float multiply-add (two): about 4 half-ulps of
      // worst_scale, so 4 * 2^-24 * worst_scale, doubled for margin.
      const double tolerance = 8 * std::ldexp(1.0, -24) * std::max(1.0, worst_scale);
      CHECK(max_error(floats(run(node, inputs, pool)[0]), want) <= tolerance);

      HostTensor buffer = x;
      const std::vector<const HostTensor*> in_place_inputs = {&buffer, &gamma, &beta, &mean, &var};
      CHECK(max_error(floats(run(node, in_place_inputs, pool, true, true)[0]), want) <= tolerance);

      // With the plan's workspace instead of the temporary buffer.
      std::unique_ptr<Op> op = build(node);
      const size_t bytes = op->workspace_bytes(descs_of(inputs, true), Context{Device::CPU, &pool});
      CHECK(bytes == 2 * size_t(c) * sizeof(float));
      std::vector<float> workspace(bytes / sizeof(float), std::nanf(""));
      CHECK(max_error(floats(run(node, inputs, pool, true, false, workspace.data(), bytes)[0]), want) <= tolerance);
    }
  }
}

TEST_CASE("BatchNormalization rejects training mode and mis-shaped parameters") {
  ThreadPool pool(2);
  const Node training = make_node("BatchNormalization", {"x", "g", "b", "m", "v"}, {"y"}, {{"training_mode", 1}});
  CHECK_THROWS_WITH_AS(build(training), doctest::Contains("training_mode"), Error);
  std::unique_ptr<Op> op = build(make_node("BatchNormalization", {"x", "g", "b", "m", "v"}));
  const TensorDesc c3{DType::F32, {3}};
  CHECK_THROWS_WITH_AS(op->infer({TensorDesc{DType::F32, {2, 4, 5}}, c3, c3, c3, c3}),
                       doctest::Contains("expected (4,)"), Error);
  CHECK_THROWS_WITH_AS(op->infer({TensorDesc{DType::F32, {3}}, c3, c3, c3, c3}), doctest::Contains("(N, C, ...)"), Error);
  CHECK_THROWS_AS(op->infer({TensorDesc{DType::F32, {2, 3}}, c3, c3, c3}), Error);
  std::unique_ptr<Op> stats =
      build(make_node("BatchNormalization", {"x", "g", "b", "m", "v"}, {"y", "running_mean", "running_var"}));
  CHECK_THROWS_WITH_AS(stats->infer({TensorDesc{DType::F32, {2, 3}}, c3, c3, c3, c3}), doctest::Contains("training"), Error);
}

// ---- Softmax ----------------------------------------------------------------------------------------------

namespace {

// Softmax in double over (outer, dim, inner) views of x.
std::vector<double> ref_softmax(const std::vector<float>& x, int64_t outer, int64_t dim, int64_t inner) {
  std::vector<double> y(x.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      double m = -kInf, sum = 0;
      for (int64_t d = 0; d < dim; ++d) m = std::max(m, double(x[(o * dim + d) * inner + i]));
      for (int64_t d = 0; d < dim; ++d) sum += std::exp(x[(o * dim + d) * inner + i] - m);
      for (int64_t d = 0; d < dim; ++d) y[(o * dim + d) * inner + i] = std::exp(x[(o * dim + d) * inner + i] - m) / sum;
    }
  return y;
}

}  // namespace

// Outputs are <= 1; float exp (2 ulp) and a float sum of dim terms (relative error about dim * 2^-24 on
// the normaliser, for dim <= 1000 below 6e-5, times an output that is then ~1/dim or smaller) stay below 1e-6.
constexpr double kSoftmaxTolerance = 1e-6;

TEST_CASE("Softmax axis: opset 13 normalises one axis, opset < 13 flattens from axis on") {
  ThreadPool pool(2);
  const HostTensor x = random_f32({2, 3, 4}, 300, -5.f, 5.f);
  const std::vector<float> xv = floats(x);
  auto softmax = [&](nlohmann::json attrs) { return floats(run(make_node("Softmax", {"x"}, {"y"}, attrs), {&x}, pool)[0]); };

  const std::vector<double> axis1_only = ref_softmax(xv, 2, 3, 4);
  const std::vector<double> flat_from1 = ref_softmax(xv, 2, 12, 1);
  const std::vector<double> last_axis = ref_softmax(xv, 6, 4, 1);
  const std::vector<double> everything = ref_softmax(xv, 1, 24, 1);
  CHECK(max_error(softmax({{"axis", 1}, {"onnx_opset", 13}}), axis1_only) <= kSoftmaxTolerance);
  CHECK(max_error(softmax({{"axis", -2}, {"onnx_opset", 21}}), axis1_only) <= kSoftmaxTolerance);
  CHECK(max_error(softmax({{"axis", 1}, {"onnx_opset", 11}}), flat_from1) <= kSoftmaxTolerance);
  CHECK(max_error(softmax({{"axis", 1}, {"onnx_opset", 12}}), flat_from1) <= kSoftmaxTolerance);  // last flattening opset
  CHECK(max_error(softmax({{"axis", 0}, {"onnx_opset", 11}}), everything) <= kSoftmaxTolerance);
  CHECK(max_error(softmax({{"axis", 2}, {"onnx_opset", 11}}), last_axis) <= kSoftmaxTolerance);
  // Defaults: axis -1 at opset 13 (also when the opset is unknown), axis 1 flattened before.
  CHECK(max_error(softmax({{"onnx_opset", 13}}), last_axis) <= kSoftmaxTolerance);
  CHECK(max_error(softmax(nlohmann::json::object()), last_axis) <= kSoftmaxTolerance);
  CHECK(max_error(softmax({{"onnx_opset", 11}}), flat_from1) <= kSoftmaxTolerance);
  // The two semantics really differ on this input (guards against a test that cannot tell them apart).
  CHECK(max_error(softmax({{"axis", 1}, {"onnx_opset", 11}}), axis1_only) > 1e-3);

  CHECK_THROWS_WITH_AS(build(make_node("Softmax", {"x"}, {"y"}, {{"axis", 3}}))->infer({TensorDesc{DType::F32, {2, 3, 4}}}),
                       doctest::Contains("axis 3 out of range"), Error);
}

TEST_CASE("Softmax is stable for large inputs, handles wide inner dims, threads and in place") {
  ThreadPool pool(2);
  for (const auto& [shape, axis] : std::vector<std::pair<Shape, int64_t>>{
           {{2, 5, 70}, 1},      // inner 70: a full 64-column block and a partial one
           {{4, 10, 1000}, 1},   // enough work for both threads
           {{3, 1000}, 1},       // classifier logits
           {{7}, 0}}) {
    CAPTURE(shape_str(shape));
    HostTensor x = random_f32(shape, 400, -10.f, 10.f);
    for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] += 1000.f;  // exp(1000) overflows without the max shift
    int64_t outer = 1, inner = 1;
    for (int64_t k = 0; k < axis; ++k) outer *= shape[k];
    for (size_t k = axis + 1; k < shape.size(); ++k) inner *= shape[k];
    const std::vector<double> want = ref_softmax(floats(x), outer, shape[axis], inner);
    const Node node = make_node("Softmax", {"x"}, {"y"}, {{"axis", axis}});
    const std::vector<float> got = floats(run(node, {&x}, pool)[0]);
    CHECK(max_error(got, want) <= kSoftmaxTolerance);
    // In place is not advertised (softmax is not element-wise), but the kernel supports y == x.
    Tensor view = x.view();
    Context ctx{Device::CPU, &pool};
    build(node)->forward(ctx, {&view}, {&view});
    CHECK(floats(x) == got);
  }
}
