// The CUDA twins of the pointwise op families (kernels/cuda/{activation,elementwise,batchnorm,softmax,pad}) against
// their CPU references in kernels/cpu, forward and backward, over odd sizes, broadcasting patterns, batch > 1 and
// in-place runs; then the ops' CUDA dispatch (Clip bounds and Pad constants in device memory, BatchNorm's and the
// broadcast backward's workspace) through the op registry, CPU context vs CUDA context.
// Tolerances: selects, copies and single IEEE operations match bit for bit. The kernels never fuse a * b + c, but
// the CPU twins may (GCC contracts in C++ under -march=native on FMA hardware), so a multiply-add may differ by one
// rounding of the product and one of the result (fused_tol); exp and reordered sums state their bounds where used.
#include <doctest/doctest.h>

#include "tests/gpu_test_util.h"

#ifdef CAMRT_WITH_CUDA
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/ops/op.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/batchnorm.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/pad.h"
#include "kernels/cpu/softmax.h"
#include "kernels/cuda/activation.h"
#include "kernels/cuda/copy.h"
#include "kernels/cuda/batchnorm.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/pad.h"
#include "kernels/cuda/softmax.h"

using namespace camrt;

namespace {

ThreadPool& cpu_pool() {
  static ThreadPool pool(2);
  return pool;
}

// A device copy of a host vector (at least one element's room, so empty tensors still get a valid pointer).
template <typename T>
class DeviceVector {
 public:
  DeviceVector(CudaRuntime& runtime, const std::vector<T>& host)
      : runtime_(&runtime),
        buffer_(runtime, std::max<size_t>(1, host.size()) * sizeof(T), "test_gpu_pointwise"),
        count_(host.size()) {
    copy_to_device(runtime, buffer_.data(), host.data(), host.size() * sizeof(T));
  }
  T* data() const { return reinterpret_cast<T*>(buffer_.data()); }
  void upload(const std::vector<T>& host) {
    REQUIRE(host.size() == count_);
    copy_to_device(*runtime_, buffer_.data(), host.data(), host.size() * sizeof(T));
  }
  std::vector<T> download() const {
    std::vector<T> out(count_);
    copy_to_host(*runtime_, out.data(), buffer_.data(), count_ * sizeof(T));  // synchronizes the stream
    return out;
  }

 private:
  CudaRuntime* runtime_;
  DeviceBuffer buffer_;
  size_t count_;
};

std::vector<float> random_values(int64_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// |v| in [0.5, 2] with random signs: safe divisors.
std::vector<float> nonzero_values(int64_t n, uint32_t seed) {
  std::vector<float> v = random_values(n, seed, 0.5f, 2.f);
  std::mt19937 rng(seed + 7);
  for (float& x : v)
    if (rng() & 1) x = -x;
  return v;
}

std::string fmt(double v) {
  std::ostringstream s;
  s.precision(9);
  s << v;
  return s.str();
}

// Every element within tol(i) (NaN matches NaN; equal values always pass). Reports the first failure and how
// many elements failed, so one CHECK covers a whole tensor.
void expect_close(const std::vector<float>& gpu, const std::vector<float>& cpu, const std::function<double(size_t)>& tol,
                  const std::string& what) {
  REQUIRE(gpu.size() == cpu.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < gpu.size(); ++i) {
    const bool ok = gpu[i] == cpu[i] || (std::isnan(gpu[i]) && std::isnan(cpu[i])) ||
                    std::abs(static_cast<double>(gpu[i]) - cpu[i]) <= tol(i);
    if (!ok && bad++ == 0) first = i;
  }
  INFO(what << ": " << bad << " of " << gpu.size() << " elements differ; first at " << first << ": gpu "
            << (bad ? fmt(gpu[first]) : "-") << ", cpu " << (bad ? fmt(cpu[first]) : "-"));
  CHECK(bad == 0);
}

void expect_equal(const std::vector<float>& gpu, const std::vector<float>& cpu, const std::string& what) {
  expect_close(gpu, cpu, [](size_t) { return 0.0; }, what);
}

void expect_equal(const std::vector<int64_t>& gpu, const std::vector<int64_t>& cpu, const std::string& what) {
  REQUIRE(gpu.size() == cpu.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < gpu.size(); ++i)
    if (gpu[i] != cpu[i] && bad++ == 0) first = i;
  INFO(what << ": " << bad << " of " << gpu.size() << " elements differ; first at " << first);
  CHECK(bad == 0);
}

// Bitwise identity (run-to-run reproducibility), NaN payloads included.
void expect_bitwise(const std::vector<float>& x, const std::vector<float>& y, const std::string& what) {
  REQUIRE(x.size() == y.size());
  INFO(what);
  CHECK(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0);
}

// Gradients the GPU sums in another order than the CPU (broadcast reductions): the double sums agree to far below
// a float ulp, so the float results differ by at most an ulp or two of the added value and of the result;
// 4 ulps (4 FLT_EPSILON relative) of |init| + |added| bounds that, and 1e-10 absorbs results cancelling to ~0.
std::function<double(size_t)> reduction_tolerance(const std::vector<float>& init, const std::vector<float>& cpu) {
  return [&init, &cpu](size_t i) {
    return 4.0 * FLT_EPSILON * (std::abs(init[i]) + std::abs(static_cast<double>(cpu[i]) - init[i])) + 1e-10;
  };
}

std::string shape_text(const Shape& s) { return shape_str(s); }

// r = a * b + c fused on one side and not on the other: they differ by at most one rounding of the product and
// one of the result (an ulp each is 2^-23 relative = FLT_EPSILON).
double fused_tol(double product, double result) { return FLT_EPSILON * (std::abs(product) + std::abs(result)); }

// dx += term, possibly fused on the CPU: |cpu - init| stands for |term| (they differ by one rounding).
std::function<double(size_t)> accumulate_tolerance(const std::vector<float>& init, const std::vector<float>& cpu) {
  return [&init, &cpu](size_t i) { return fused_tol(static_cast<double>(cpu[i]) - init[i], cpu[i]); };
}

}  // namespace
#endif  // CAMRT_WITH_CUDA

// ---- activations -------------------------------------------------------------------------------------------

TEST_CASE("gpu pointwise: activations forward and backward match the CPU twin") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  struct Case {
    Activation kind;
    ActivationParams params;
    const char* label;
  };
  auto with = [](float alpha, float beta, float lo, float hi) {
    ActivationParams p;
    p.alpha = alpha;
    p.beta = beta;
    p.min = lo;
    p.max = hi;
    return p;
  };
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<Case> cases = {
      {Activation::Relu, ActivationParams{}, "Relu"},
      {Activation::LeakyRelu, with(0.01f, 0, -inf, inf), "LeakyRelu(0.01)"},
      {Activation::LeakyRelu, with(-0.5f, 0, -inf, inf), "LeakyRelu(-0.5), backward from x"},
      {Activation::Clip, with(0, 0, -1.f, 2.f), "Clip(-1, 2)"},
      {Activation::Clip, with(0, 0, 0.f, 6.f), "Clip(0, 6) = ReLU6"},
      {Activation::Clip, with(0, 0, 1.f, -1.f), "Clip(min > max)"},
      {Activation::Sigmoid, ActivationParams{}, "Sigmoid"},
      {Activation::HardSigmoid, with(0.2f, 0.5f, -inf, inf), "HardSigmoid(0.2, 0.5)"},
      {Activation::HardSigmoid, with(1.f / 6.f, 0.5f, -inf, inf), "HardSigmoid(1/6, 0.5)"},
      {Activation::HardSwish, ActivationParams{}, "HardSwish"},
  };
  // Odd sizes: one partial block, several blocks, and more than one grid-stride pass is not needed for coverage
  // (grid_for caps far above these), so the largest is simply "many blocks, ragged end".
  const std::vector<int64_t> sizes = {1, 7, 257, 4099, (int64_t(1) << 17) + 3};
  // Values on every kink and breakpoint the kinds have, so the comparisons at == and < are exercised.
  const std::vector<float> specials = {0.f, -0.f, -3.f, 3.f, std::nextafter(3.f, 0.f), std::nextafter(-3.f, 0.f),
                                       -1.f, 1.f, 2.f, 6.f, 1e-30f, -1e-30f, -100.f, 100.f,
                                       std::numeric_limits<float>::quiet_NaN()};
  for (const Case& c : cases) {
    for (int64_t n : sizes) {
      const std::string label = c.label;  // (CAPTURE of a const char* would print the pointer)
      CAPTURE(label);
      CAPTURE(n);
      std::vector<float> x = random_values(n, 11 + static_cast<uint32_t>(n), -8.f, 8.f);
      for (size_t i = 0; i < specials.size() && i < x.size(); ++i) x[i] = specials[i];
      std::vector<float> y_cpu(x.size());
      activation_forward(y_cpu.data(), x.data(), n, c.kind, c.params, cpu_pool());

      // Sigmoid: CUDA's expf is within 2 ulp, glibc's within 1; the sum and the IEEE division add an ulp each, so
      // 1e-6 relative (~8 ulp) bounds it. HardSigmoid: alpha * x + beta may be fused on the CPU (the clamp to
      // [0, 1] only shrinks differences). Every other kind is selects and single IEEE operations: exact.
      const auto forward_tol = [&](size_t i) {
        if (c.kind == Activation::Sigmoid) return 1e-6 * std::abs(y_cpu[i]);
        if (c.kind == Activation::HardSigmoid) return fused_tol(static_cast<double>(c.params.alpha) * x[i], y_cpu[i]);
        return 0.0;
      };
      DeviceVector<float> d_x(*runtime, x), d_y(*runtime, std::vector<float>(x.size(), -7.f));
      cuda::activation_forward(d_y.data(), d_x.data(), n, c.kind, c.params, runtime->stream());
      expect_close(d_y.download(), y_cpu, forward_tol, "forward");
      expect_bitwise(d_x.download(), x, "forward leaves x alone");

      DeviceVector<float> inplace(*runtime, x);
      cuda::activation_forward(inplace.data(), inplace.data(), n, c.kind, c.params, runtime->stream());
      expect_close(inplace.download(), y_cpu, forward_tol, "forward in place");

      if (c.kind == Activation::Clip) {
        // Bounds from device memory override the (deliberately wrong) attribute values.
        ActivationParams wrong = c.params;
        wrong.min = -1000.f;
        wrong.max = 1000.f;
        DeviceVector<float> lo(*runtime, {c.params.min}), hi(*runtime, {c.params.max});
        DeviceVector<float> out(*runtime, std::vector<float>(x.size()));
        cuda::activation_forward(out.data(), d_x.data(), n, c.kind, wrong, lo.data(), hi.data(), runtime->stream());
        expect_equal(out.download(), y_cpu, "forward with device bounds");
      }

      const bool from_output = activation_backward_reads_output(c.kind, c.params);
      const std::vector<float>& saved = from_output ? y_cpu : x;
      std::vector<float> dy = random_values(n, 23 + static_cast<uint32_t>(n), -1.f, 1.f);
      for (size_t i = 0; i < dy.size(); i += 5) dy[i] = i % 10 == 0 ? 0.f : -std::abs(dy[i]);  // guided cases
      const std::vector<float> init = random_values(n, 31 + static_cast<uint32_t>(n), -1.f, 1.f);
      DeviceVector<float> d_saved(*runtime, saved), d_dy(*runtime, dy);
      for (bool guided : {false, true}) {
        CAPTURE(guided);
        std::vector<float> dx_cpu = init;
        activation_backward(dx_cpu.data(), dy.data(), saved.data(), n, c.kind, c.params, guided, cpu_pool());
        DeviceVector<float> dx(*runtime, init);
        cuda::activation_backward(dx.data(), d_dy.data(), d_saved.data(), n, c.kind, c.params, guided,
                                  runtime->stream());
        // No exp in any derivative (Sigmoid's reads y). Relu and Clip add dy or 0: exact; the others add a product,
        // which the CPU may fuse into the accumulation.
        const bool plain_add = c.kind == Activation::Relu || c.kind == Activation::Clip;
        const auto backward_tol = plain_add ? std::function<double(size_t)>([](size_t) { return 0.0; })
                                            : accumulate_tolerance(init, dx_cpu);
        expect_close(dx.download(), dx_cpu, backward_tol, "backward (accumulating into dx)");
        if (c.kind == Activation::Clip) {
          ActivationParams wrong = c.params;
          wrong.min = -1000.f;
          wrong.max = 1000.f;
          DeviceVector<float> lo(*runtime, {c.params.min}), hi(*runtime, {c.params.max});
          DeviceVector<float> dx2(*runtime, init);
          cuda::activation_backward(dx2.data(), d_dy.data(), d_saved.data(), n, c.kind, wrong, lo.data(), hi.data(),
                                    guided, runtime->stream());
          expect_close(dx2.download(), dx_cpu, backward_tol, "backward with device bounds");
        }
      }
    }
  }
#endif
}

TEST_CASE("gpu pointwise: accumulate and fill_bytes") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  for (int64_t n : {int64_t(1), int64_t(1000), int64_t(70001)}) {
    const std::vector<float> a = random_values(n, 3, -2.f, 2.f), b = random_values(n, 4, -2.f, 2.f);
    std::vector<float> want(a.size());
    for (size_t i = 0; i < a.size(); ++i) want[i] = a[i] + b[i];
    DeviceVector<float> da(*runtime, a), db(*runtime, b);
    cuda::accumulate(da.data(), db.data(), n, runtime->stream());
    expect_equal(da.download(), want, "accumulate n=" + std::to_string(n));
  }
  DeviceVector<uint8_t> mask(*runtime, std::vector<uint8_t>(13, 0));
  cuda::fill_bytes(mask.data(), 1, 13, runtime->stream());
  const std::vector<uint8_t> got = mask.download();
  CHECK(std::count(got.begin(), got.end(), uint8_t(1)) == 13);
#endif
}

// ---- elementwise (broadcasting) ----------------------------------------------------------------------------

TEST_CASE("gpu pointwise: binary ops forward and backward match the CPU twin over broadcasting patterns") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  struct Pair {
    Shape a, b;
  };
  const std::vector<Pair> pairs = {
      {{7}, {7}},                              // same shape, one dim
      {{2, 3, 5, 7}, {2, 3, 5, 7}},            // same shape, merged to one dim
      {{2, 3, 5, 7}, {1, 3, 1, 1}},            // per channel (bias), b reduced over N, H, W
      {{1, 3, 1, 1}, {2, 3, 5, 7}},            // the same with the broadcast operand first
      {{2, 3, 5, 7}, {}},                      // rank-0 scalar
      {{2, 3, 5, 7}, {1}},                     // one-element tensor
      {{2, 3, 5, 7}, {5, 7}},                  // trailing dims: b reduced over the leading ones (thread reduce)
      {{2, 1, 5, 1}, {1, 3, 1, 7}},            // both broadcast (outer-product-like)
      {{4, 1}, {1, 6}},                        // outer product
      {{3, 64, 33}, {3, 1, 33}},               // reduce a middle dim, keep the last
      {{2, 1, 3, 1, 5}, {1, 4, 1, 6, 1}},      // five alternating dims: nothing merges
      {{}, {}},                                // scalar op scalar
      {{2, 16, 64, 65}, {1, 16, 1, 1}},        // per channel, R = 8320: block reduction split into slices
      {{3, 100000}, {}},                       // scalar gradient over 300000 terms: many slices
      {{40, 2000}, {2000}},                    // K = 2000 >= 1024 blocks, R = 40: one block per element
      {{70000, 2}, {70000, 1}},                // K = 70000: thread per element
  };
  const BinaryOp ops[] = {BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div};
  uint32_t seed = 100;
  for (const Pair& pair : pairs) {
    const BroadcastPlan plan = make_broadcast_plan(pair.a, pair.b);
    const int64_t na = checked_numel(pair.a), nb = checked_numel(pair.b), n = plan.numel;
    const std::vector<float> a = nonzero_values(na, ++seed), b = nonzero_values(nb, ++seed);
    const std::vector<float> dy = random_values(n, ++seed, -1.f, 1.f);
    const std::vector<float> da_init = random_values(na, ++seed, -1.f, 1.f);
    const std::vector<float> db_init = random_values(nb, ++seed, -1.f, 1.f);
    DeviceVector<float> d_a(*runtime, a), d_b(*runtime, b), d_dy(*runtime, dy);
    const size_t workspace_bytes = cuda::binary_backward_workspace_bytes(plan);
    DeviceVector<uint8_t> workspace(*runtime, std::vector<uint8_t>(workspace_bytes, 0xff));
    if (pair.a == Shape{2, 16, 64, 65} || pair.a == Shape{3, 100000}) CHECK(workspace_bytes > 0);  // slices in use

    for (BinaryOp op : ops) {
      const std::string label = std::string(binary_op_name(op)) + " " + shape_text(pair.a) + " " + shape_text(pair.b);
      CAPTURE(label);
      // Forward: a single IEEE operation per element on both sides: exact.
      std::vector<float> y(static_cast<size_t>(n));
      binary_forward(y.data(), a.data(), b.data(), plan, op, cpu_pool());
      DeviceVector<float> d_y(*runtime, std::vector<float>(y.size(), 0.f));
      cuda::binary_forward(d_y.data(), d_a.data(), d_b.data(), plan, op, runtime->stream());
      expect_equal(d_y.download(), y, "forward");
      if (op == BinaryOp::Add) {  // a fused activation (relu; clip with both bounds inside the value range)
        FusedActivation relu, clip;
        relu.kind = FusedActivation::kRelu;
        clip.kind = FusedActivation::kClip;
        clip.min = -0.5f;
        clip.max = 0.75f;
        for (const FusedActivation& act : {relu, clip}) {
          std::vector<float> y_act(static_cast<size_t>(n));
          binary_forward(y_act.data(), a.data(), b.data(), plan, op, cpu_pool(), act);
          DeviceVector<float> d_y_act(*runtime, std::vector<float>(y_act.size(), 0.f));
          cuda::binary_forward(d_y_act.data(), d_a.data(), d_b.data(), plan, op, runtime->stream(), act);
          expect_equal(d_y_act.download(), y_act, act.kind == FusedActivation::kRelu ? "forward + relu" : "forward + clip");
        }
      }
      if (na == n) {  // out may alias a full-size a
        DeviceVector<float> inplace(*runtime, a);
        cuda::binary_forward(inplace.data(), inplace.data(), d_b.data(), plan, op, runtime->stream());
        expect_equal(inplace.download(), y, "forward in place (out = a)");
      }
      if (nb == n) {
        DeviceVector<float> inplace(*runtime, b);
        cuda::binary_forward(inplace.data(), d_a.data(), inplace.data(), plan, op, runtime->stream());
        expect_equal(inplace.download(), y, "forward in place (out = b)");
      }

      // Backward; Div's db both from y and from a.
      for (bool with_y : {true, false}) {
        if (!with_y && op != BinaryOp::Div) continue;
        CAPTURE(with_y);
        const float* y_cpu = with_y ? y.data() : nullptr;
        std::vector<float> da_cpu = da_init, db_cpu = db_init;
        binary_backward(da_cpu.data(), db_cpu.data(), dy.data(), a.data(), b.data(), y_cpu, plan, op, cpu_pool());
        // Full-size gradients are computed element by element as on the CPU (Mul's dx += dy * o may be fused there);
        // reduced ones are summed in another order.
        const auto tol_a = na == n ? accumulate_tolerance(da_init, da_cpu) : reduction_tolerance(da_init, da_cpu);
        const auto tol_b = nb == n ? accumulate_tolerance(db_init, db_cpu) : reduction_tolerance(db_init, db_cpu);
        DeviceVector<float> d_yv(*runtime, y);
        std::vector<float> first_da, first_db;
        for (int run = 0; run < 2; ++run) {
          DeviceVector<float> da(*runtime, da_init), db(*runtime, db_init);
          cuda::binary_backward(da.data(), db.data(), d_dy.data(), d_a.data(), d_b.data(), with_y ? d_yv.data() : nullptr,
                                plan, op, workspace.data(), workspace_bytes, runtime->stream());
          const std::vector<float> got_a = da.download(), got_b = db.download();
          if (run == 0) {
            expect_close(got_a, da_cpu, tol_a, "da");
            expect_close(got_b, db_cpu, tol_b, "db");
            first_da = got_a;
            first_db = got_b;
          } else {  // no atomics: a second run gives the same bits
            expect_bitwise(got_a, first_da, "da reproducible");
            expect_bitwise(got_b, first_db, "db reproducible");
          }
        }
        // Without a workspace the reductions run unsliced: same values within the tolerance.
        DeviceVector<float> da(*runtime, da_init), db(*runtime, db_init);
        cuda::binary_backward(da.data(), db.data(), d_dy.data(), d_a.data(), d_b.data(), with_y ? d_yv.data() : nullptr,
                              plan, op, nullptr, 0, runtime->stream());
        expect_close(da.download(), da_cpu, tol_a, "da without workspace");
        expect_close(db.download(), db_cpu, tol_b, "db without workspace");
        // One gradient alone (the other nullptr) leaves nothing else touched.
        DeviceVector<float> db_only(*runtime, db_init);
        cuda::binary_backward(nullptr, db_only.data(), d_dy.data(), d_a.data(), d_b.data(),
                              with_y ? d_yv.data() : nullptr, plan, op, workspace.data(), workspace_bytes,
                              runtime->stream());
        expect_close(db_only.download(), db_cpu, tol_b, "db alone");
      }

      // int64: exact, including negative operands (Div truncates toward zero).
      std::vector<int64_t> ia(static_cast<size_t>(na)), ib(static_cast<size_t>(nb));
      std::mt19937 rng(seed);
      for (int64_t& v : ia) v = static_cast<int64_t>(rng() % 201) - 100;
      for (int64_t& v : ib) v = (static_cast<int64_t>(rng() % 7) + 1) * (rng() & 1 ? 1 : -1);
      std::vector<int64_t> iy(static_cast<size_t>(n));
      binary_forward(iy.data(), ia.data(), ib.data(), plan, op, cpu_pool());
      DeviceVector<int64_t> d_ia(*runtime, ia), d_ib(*runtime, ib), d_iy(*runtime, std::vector<int64_t>(iy.size()));
      cuda::binary_forward(d_iy.data(), d_ia.data(), d_ib.data(), plan, op, runtime->stream());
      expect_equal(d_iy.download(), iy, "int64 forward");
    }
  }
#endif
}

// ---- batchnorm ---------------------------------------------------------------------------------------------

TEST_CASE("gpu pointwise: batchnorm fold, forward and backward match the CPU twin") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  struct Dims {
    int64_t batch, channels, inner;
  };
  const std::vector<Dims> dims = {{1, 1, 1}, {2, 3, 1}, {2, 5, 63}, {3, 17, 13}, {4, 64, 56 * 56}};
  uint32_t seed = 500;
  for (const Dims& d : dims) {
    for (float epsilon : {1e-5f, 1e-3f}) {
      CAPTURE(d.batch);
      CAPTURE(d.channels);
      CAPTURE(d.inner);
      CAPTURE(epsilon);
      const int64_t c = d.channels, n = d.batch * d.channels * d.inner;
      const std::vector<float> gamma = random_values(c, ++seed, 0.5f, 1.5f), beta = random_values(c, ++seed, -1.f, 1.f);
      const std::vector<float> mean = random_values(c, ++seed, -1.f, 1.f), var = random_values(c, ++seed, 0.01f, 2.f);
      std::vector<float> scale(c), shift(c), scale_only(c);
      batchnorm_fold(scale.data(), shift.data(), gamma.data(), beta.data(), mean.data(), var.data(), c, epsilon);
      batchnorm_fold_scale(scale_only.data(), gamma.data(), var.data(), c, epsilon);
      DeviceVector<float> d_gamma(*runtime, gamma), d_beta(*runtime, beta), d_mean(*runtime, mean), d_var(*runtime, var);
      // The forward below uses the CPU's shift, so it compares the pass alone.
      DeviceVector<float> d_scale(*runtime, std::vector<float>(c)), d_shift(*runtime, std::vector<float>(c));
      DeviceVector<float> d_shift_cpu(*runtime, shift);
      DeviceVector<float> d_scale_only(*runtime, std::vector<float>(c));
      cuda::batchnorm_fold(d_scale.data(), d_shift.data(), d_gamma.data(), d_beta.data(), d_mean.data(), d_var.data(), c,
                           epsilon, runtime->stream());
      cuda::batchnorm_fold_scale(d_scale_only.data(), d_gamma.data(), d_var.data(), c, epsilon, runtime->stream());
      // scale: IEEE double division and sqrt on both sides, nothing to fuse: exact. shift = beta - mean * scale in
      // double may be fused on the CPU: a double rounding apart, which moves the float result by at most one ulp.
      expect_equal(d_scale.download(), scale, "fold scale");
      expect_close(d_shift.download(), shift, [&](size_t i) { return FLT_EPSILON * std::abs(shift[i]) + 1e-30; },
                   "fold shift");
      expect_equal(d_scale_only.download(), scale_only, "fold_scale");

      const std::vector<float> x = random_values(n, ++seed, -4.f, 4.f);
      std::vector<float> y(x.size());
      batchnorm_forward(y.data(), x.data(), scale.data(), shift.data(), d.batch, c, d.inner, cpu_pool());
      DeviceVector<float> d_x(*runtime, x), d_y(*runtime, std::vector<float>(x.size()));
      cuda::batchnorm_forward(d_y.data(), d_x.data(), d_scale.data(), d_shift_cpu.data(), d.batch, c, d.inner,
                              runtime->stream());
      const auto forward_tol = [&](size_t i) {
        return fused_tol(static_cast<double>(x[i]) * scale[static_cast<size_t>((static_cast<int64_t>(i) / d.inner) % c)],
                         y[i]);
      };
      expect_close(d_y.download(), y, forward_tol, "forward");  // x * s + t, possibly fused on the CPU
      cuda::batchnorm_forward(d_x.data(), d_x.data(), d_scale.data(), d_shift_cpu.data(), d.batch, c, d.inner,
                              runtime->stream());
      expect_close(d_x.download(), y, forward_tol, "forward in place");

      const std::vector<float> dy = random_values(n, ++seed, -1.f, 1.f), init = random_values(n, ++seed, -1.f, 1.f);
      std::vector<float> dx = init;
      batchnorm_backward(dx.data(), dy.data(), scale_only.data(), d.batch, c, d.inner, cpu_pool());
      DeviceVector<float> d_dy(*runtime, dy), d_dx(*runtime, init);
      cuda::batchnorm_backward(d_dx.data(), d_dy.data(), d_scale_only.data(), d.batch, c, d.inner, runtime->stream());
      expect_close(d_dx.download(), dx, accumulate_tolerance(init, dx), "backward");  // dx += dy * s
    }
  }
#endif
}

// ---- softmax -----------------------------------------------------------------------------------------------

TEST_CASE("gpu pointwise: softmax forward and backward match the CPU twin") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  struct Dims {
    int64_t outer, dim, inner;
  };
  // inner == 1 takes the block-per-row kernels (32, 64, 128 and 256 threads by dim); inner > 1 the column ones.
  const std::vector<Dims> dims = {{1, 1, 1},  {3, 10, 1},  {5, 100, 1}, {2, 300, 1}, {7, 1000, 1},
                                  {2, 3001, 1}, {4, 7, 33}, {2, 513, 3}, {1, 1, 7},  {3, 5, 1000}};
  uint32_t seed = 900;
  for (const Dims& d : dims) {
    CAPTURE(d.outer);
    CAPTURE(d.dim);
    CAPTURE(d.inner);
    const int64_t n = d.outer * d.dim * d.inner;
    std::vector<float> x = random_values(n, ++seed, -10.f, 10.f);
    for (int64_t i = 0; i < std::min<int64_t>(n, 4); ++i) x[i] = i % 2 ? 85.f : -85.f;  // exp's extremes
    std::vector<float> y(x.size());
    softmax_forward(y.data(), x.data(), d.outer, d.dim, d.inner, cpu_pool());
    // expf (CUDA: <= 2 ulp, glibc: < 1 ulp) and, for rows, a tree-ordered instead of serial float sum: the serial
    // sum of dim positive terms errs by ~sqrt(dim) ulp typically (~55 ulp ~ 3.3e-6 at dim 3001), so 2e-5 relative
    // leaves a margin of 6. Errors are relative throughout, except among subnormals (exp(-95) ~ 5e-42 from the
    // +-85 entries), where one ulp is a large relative step: FLT_MIN absolute covers those.
    const auto forward_tol = [&](size_t i) { return 2e-5 * std::abs(y[i]) + FLT_MIN; };
    DeviceVector<float> d_x(*runtime, x), d_y(*runtime, std::vector<float>(x.size()));
    cuda::softmax_forward(d_y.data(), d_x.data(), d.outer, d.dim, d.inner, runtime->stream());
    const std::vector<float> y_gpu = d_y.download();
    expect_close(y_gpu, y, forward_tol, "forward");
    cuda::softmax_forward(d_x.data(), d_x.data(), d.outer, d.dim, d.inner, runtime->stream());
    expect_bitwise(d_x.download(), y_gpu, "forward in place equals out of place");

    const std::vector<float> dy = random_values(n, ++seed, -1.f, 1.f), init = random_values(n, ++seed, -1.f, 1.f);
    std::vector<float> dx = init;
    softmax_backward(dx.data(), dy.data(), y.data(), d.outer, d.dim, d.inner, cpu_pool());
    // Both accumulate the dot product in double (exact products; only the order differs), so s = float(dot) agrees
    // to an ulp; dx += y * (dy - s) then differs by a few ulps of |init| + |y| * (|dy| + |s|), |s| <= max|dy| = 1.
    const auto backward_tol = [&](size_t i) {
      return 4.0 * FLT_EPSILON * (std::abs(init[i]) + std::abs(y[i]) * (std::abs(dy[i]) + 1.0));
    };
    DeviceVector<float> d_dy(*runtime, dy), d_dx(*runtime, init), d_ycpu(*runtime, y);
    cuda::softmax_backward(d_dx.data(), d_dy.data(), d_ycpu.data(), d.outer, d.dim, d.inner, runtime->stream());
    const std::vector<float> dx_gpu = d_dx.download();
    expect_close(dx_gpu, dx, backward_tol, "backward");
    d_dx.upload(init);
    cuda::softmax_backward(d_dx.data(), d_dy.data(), d_ycpu.data(), d.outer, d.dim, d.inner, runtime->stream());
    expect_bitwise(d_dx.download(), dx_gpu, "backward reproducible");
  }
#endif
}

// ---- pad ---------------------------------------------------------------------------------------------------

TEST_CASE("gpu pointwise: pad forward and backward match the CPU twin") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  struct Case {
    Shape in;
    std::vector<int64_t> begin, end;
    PadMode mode;
    const char* label;
  };
  const std::vector<Case> cases = {
      {{2, 3, 5, 7}, {0, 0, 1, 2}, {0, 0, 2, 1}, PadMode::Constant, "constant"},
      {{2, 3, 5, 7}, {0, 0, 2, 3}, {0, 0, 3, 2}, PadMode::Reflect, "reflect"},
      {{2, 3, 5, 7}, {0, 1, 3, 3}, {1, 0, 2, 4}, PadMode::Edge, "edge, batch and channel dims too"},
      {{2, 3, 5, 7}, {0, 0, -1, 2}, {0, 0, 1, -2}, PadMode::Constant, "constant with crops"},
      {{2, 3, 5, 7}, {0, 0, -2, 3}, {0, 0, 1, -3}, PadMode::Reflect, "reflect with crops"},
      {{2, 3, 5, 7}, {0, 0, -1, -2}, {0, 0, 3, 1}, PadMode::Edge, "edge with crops"},
      {{9}, {4}, {4}, PadMode::Reflect, "1-D reflect, maximal pads"},
      {{4}, {9}, {7}, PadMode::Reflect, "reflect over several periods"},
      {{3, 1, 4}, {0, 2, 1}, {1, 3, 2}, PadMode::Edge, "edge of a size-1 dim"},
      {{3, 1, 4}, {0, 2, 1}, {1, 3, 2}, PadMode::Reflect, "reflect of a size-1 dim"},
      {{2, 2, 3, 2, 3}, {1, 0, 1, 1, 2}, {0, 1, 2, 1, 1}, PadMode::Reflect, "5-D reflect"},
      {{2, 2, 3, 2, 3}, {1, 0, 1, 1, 2}, {0, 1, 2, 1, 1}, PadMode::Constant, "5-D constant"},
      {{1, 16, 33, 31}, {0, 0, 3, 3}, {0, 0, 3, 3}, PadMode::Reflect, "larger reflect"},
      {{}, {}, {}, PadMode::Constant, "rank 0"},
  };
  uint32_t seed = 1300;
  for (const Case& c : cases) {
    const std::string label = c.label;  // (CAPTURE of a const char* would print the pointer)
    CAPTURE(label);
    const int64_t rank = static_cast<int64_t>(c.in.size());
    Shape out = c.in;
    for (int64_t k = 0; k < rank; ++k) out[k] += c.begin[k] + c.end[k];
    const int64_t n_in = checked_numel(c.in), n_out = checked_numel(out);
    const std::vector<float> x = random_values(n_in, ++seed, -2.f, 2.f);
    const float value = 0.75f;
    std::vector<float> y(static_cast<size_t>(n_out));
    pad_forward(y.data(), x.data(), c.in.data(), out.data(), c.begin.data(), rank, c.mode, value, cpu_pool());
    DeviceVector<float> d_x(*runtime, x), d_y(*runtime, std::vector<float>(y.size()));
    cuda::pad_forward(d_y.data(), d_x.data(), c.in.data(), out.data(), c.begin.data(), rank, c.mode, value,
                      runtime->stream());
    expect_equal(d_y.download(), y, "forward");  // copies and constants only: exact
    DeviceVector<float> d_value(*runtime, {value});
    DeviceVector<float> d_y2(*runtime, std::vector<float>(y.size()));
    cuda::pad_forward(d_y2.data(), d_x.data(), c.in.data(), out.data(), c.begin.data(), rank, c.mode, -123.f,
                      d_value.data(), runtime->stream());
    expect_equal(d_y2.download(), y, "forward with the value in device memory");

    const std::vector<float> dy = random_values(n_out, ++seed, -1.f, 1.f), init = random_values(n_in, ++seed, -1.f, 1.f);
    std::vector<float> dx = init;
    pad_backward(dx.data(), dy.data(), c.in.data(), out.data(), c.begin.data(), rank, c.mode, cpu_pool());
    DeviceVector<float> d_dy(*runtime, dy), d_dx(*runtime, init);
    cuda::pad_backward(d_dx.data(), d_dy.data(), c.in.data(), out.data(), c.begin.data(), rank, c.mode,
                       runtime->stream());
    // Each dx element adds the same dy values in the same (ascending output) order as the CPU twin: exact.
    expect_equal(d_dx.download(), dx, "backward");
  }
#endif
}

// ---- the ops' CUDA dispatch ---------------------------------------------------------------------------------

#ifdef CAMRT_WITH_CUDA
namespace {

struct OpResult {
  std::vector<std::vector<float>> outputs;   // float outputs (others empty)
  std::vector<std::vector<float>> dinputs;   // per input; empty where no gradient was asked for
};

Node make_node(const std::string& op, size_t num_inputs, nlohmann::json attrs = nlohmann::json::object()) {
  Node node;
  node.op = op;
  node.name = "gpu_" + op;
  for (size_t i = 0; i < num_inputs; ++i) node.inputs.push_back("in" + std::to_string(i));
  node.outputs = {"y"};
  node.attrs = std::move(attrs);
  return node;
}

// infer, forward and (with dy) backward of one op, on the CPU (runtime == nullptr) or the GPU. Inputs flagged
// `constant` are weights (their TensorDesc carries the host copy, as the executor's does); gradients are zero-filled
// before the backward, as the executor does, for every non-constant F32 input.
OpResult run_op(const Node& node, const std::vector<HostTensor>& inputs, const std::vector<bool>& constant,
                const std::vector<float>& dy, CudaRuntime* runtime) {
  std::unique_ptr<Op> op = find_op(node.op)(node);
  std::vector<TensorDesc> descs;
  for (size_t i = 0; i < inputs.size(); ++i)
    descs.push_back(TensorDesc{inputs[i].dtype, inputs[i].shape, constant[i] ? &inputs[i] : nullptr, true});
  const std::vector<TensorDesc> out_descs = op->infer(descs);
  Context ctx;
  ctx.device = runtime ? Device::CUDA : Device::CPU;
  ctx.pool = &cpu_pool();
  ctx.cuda = runtime;
  const Device device = ctx.device;

  // Storage: host vectors on the CPU, device buffers on the GPU; Tensor views over either.
  std::vector<std::vector<uint8_t>> host_store;
  std::vector<DeviceBuffer> device_store;
  auto storage = [&](const std::vector<uint8_t>& bytes) -> void* {
    if (!runtime) {
      host_store.push_back(bytes);
      return host_store.back().data();
    }
    device_store.emplace_back(*runtime, std::max<size_t>(bytes.size(), 1), "run_op");
    copy_to_device(*runtime, device_store.back().data(), bytes.data(), bytes.size());
    return device_store.back().data();
  };
  host_store.reserve(64);
  auto download = [&](const Tensor& t) {
    std::vector<float> v(static_cast<size_t>(t.numel()));
    if (runtime) copy_to_host(*runtime, v.data(), t.data, v.size() * sizeof(float));
    else std::memcpy(v.data(), t.data, v.size() * sizeof(float));
    return v;
  };

  std::vector<Tensor> in_views, out_views;
  for (const HostTensor& t : inputs) in_views.push_back(Tensor{storage(t.bytes), t.dtype, t.shape, device});
  for (const TensorDesc& d : out_descs)
    out_views.push_back(
        Tensor{storage(std::vector<uint8_t>(static_cast<size_t>(checked_numel(d.shape)) * dtype_size(d.dtype))),
               d.dtype, d.shape, device});
  std::vector<const Tensor*> in_ptrs;
  for (Tensor& t : in_views) in_ptrs.push_back(&t);
  std::vector<Tensor*> out_ptrs;
  for (Tensor& t : out_views) out_ptrs.push_back(&t);

  const size_t forward_bytes = op->workspace_bytes(descs, ctx);
  const size_t backward_bytes = dy.empty() ? 0 : op->backward_workspace_bytes(descs, ctx);
  void* workspace = storage(std::vector<uint8_t>(std::max(forward_bytes, backward_bytes), 0));
  ctx.workspace = workspace;
  ctx.workspace_bytes = forward_bytes;
  op->forward(ctx, in_ptrs, out_ptrs);

  OpResult result;
  for (const Tensor& t : out_views) result.outputs.push_back(t.dtype == DType::F32 ? download(t) : std::vector<float>{});
  result.dinputs.resize(inputs.size());
  if (dy.empty()) return result;
  ctx.workspace_bytes = backward_bytes;
  std::vector<uint8_t> dy_bytes(dy.size() * sizeof(float));
  std::memcpy(dy_bytes.data(), dy.data(), dy_bytes.size());
  Tensor dy_view{storage(dy_bytes), DType::F32, out_views[0].shape, device};
  std::vector<Tensor> dx_views(inputs.size());
  std::vector<Tensor*> dx_ptrs(inputs.size(), nullptr);
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (constant[i] || inputs[i].dtype != DType::F32) continue;
    dx_views[i] = Tensor{storage(std::vector<uint8_t>(inputs[i].bytes.size(), 0)), DType::F32, inputs[i].shape, device};
    dx_ptrs[i] = &dx_views[i];
  }
  std::vector<const Tensor*> outs_read;
  for (Tensor& t : out_views) outs_read.push_back(&t);
  op->backward(ctx, in_ptrs, outs_read, {&dy_view}, dx_ptrs);
  for (size_t i = 0; i < inputs.size(); ++i)
    if (dx_ptrs[i]) result.dinputs[i] = download(*dx_ptrs[i]);
  return result;
}

HostTensor random_tensor(const Shape& shape, uint32_t seed, float lo = -3.f, float hi = 3.f) {
  return make_f32(shape, random_values(checked_numel(shape), seed, lo, hi));
}

}  // namespace
#endif  // CAMRT_WITH_CUDA

TEST_CASE("gpu pointwise: ops dispatch to CUDA and agree with their CPU path") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  const auto exact = [](size_t) { return 0.0; };
  struct Case {
    Node node;
    std::vector<HostTensor> inputs;
    std::vector<bool> constant;
    std::function<double(size_t)> tol;  // for outputs and gradients
    const char* label;
  };
  const Shape x_shape{2, 3, 5, 7};
  std::vector<Case> cases;
  // Clip (opset 11 form): bounds as inputs, read on the device by the kernel.
  cases.push_back({make_node("Clip", 3), {random_tensor(x_shape, 1), make_f32({}, {-0.5f}), make_f32({}, {1.25f})},
                   {false, true, true}, exact, "Clip with bound inputs"});
  cases.push_back({make_node("Relu", 1), {random_tensor(x_shape, 2)}, {false}, exact, "Relu"});
  cases.push_back({make_node("HardSwish", 1), {random_tensor(x_shape, 3)}, {false}, exact, "HardSwish"});
  cases.push_back({make_node("Identity", 1), {random_tensor(x_shape, 4)}, {false}, exact, "Identity"});
  // BatchNormalization: statistics as device weights, folded in the plan's workspace. x * s + t may be fused on
  // the CPU: one rounding of |x * s| <= 3 * 1.5 / sqrt(0.1) ~ 14 is 1.7e-6, so 4e-6 (1 + |y|).
  cases.push_back({make_node("BatchNormalization", 5, {{"epsilon", 1e-3}}),
                   {random_tensor(x_shape, 5), random_tensor({3}, 6, 0.5f, 1.5f), random_tensor({3}, 7),
                    random_tensor({3}, 8), random_tensor({3}, 9, 0.1f, 2.f)},
                   {false, true, true, true, true}, [](size_t) { return 4e-6; }, "BatchNormalization"});
  // Pad (opset 11 form): pads and value as constant inputs; the pads reach the launch through infer's host copy.
  cases.push_back({make_node("Pad", 3, {{"mode", "reflect"}}),
                   {random_tensor(x_shape, 10), make_i64({8}, {0, 0, 1, 2, 0, 0, 2, 1}), make_f32({}, {0.f})},
                   {false, true, true}, exact, "Pad reflect"});
  cases.push_back({make_node("Pad", 3, {{"mode", "constant"}}),
                   {random_tensor(x_shape, 11), make_i64({8}, {0, 1, 1, 0, 1, 0, 0, 2}), make_f32({}, {2.5f})},
                   {false, true, true}, exact, "Pad constant with a value input"});
  // Softmax: expf and a reordered row sum; 2e-5 relative as in the kernel test (tolerances below scale with
  // 1 + |value|; outputs and gradients are both O(1) here: |dx| <= |y| * 2).
  cases.push_back({make_node("Softmax", 1, {{"axis", 1}}), {random_tensor(x_shape, 12)}, {false},
                   [](size_t) { return 2e-5; }, "Softmax axis 1"});
  // Broadcast backward through the op: the bias-like operand's gradient is a reduction (workspace-sized slices).
  for (const char* type : {"Add", "Sub", "Mul", "Div"}) {
    HostTensor b = make_f32({1, 16, 1, 1}, nonzero_values(16, 13));
    cases.push_back({make_node(type, 2), {random_tensor({2, 16, 64, 65}, 14), b}, {false, false},
                     [](size_t) { return 1e-5; }, type});
  }
  // Residual Add with a fused activation (engine/fusion.h): forward act(a + b), backward masked by the output.
  cases.push_back({make_node("Add", 2, {{"activation", "relu"}}), {random_tensor({2, 16, 9, 9}, 15), random_tensor({2, 16, 9, 9}, 16)},
                   {false, false}, exact, "Add + fused relu"});
  cases.push_back({make_node("Add", 2, {{"activation", "clip"}, {"activation_min", 0.0}, {"activation_max", 0.5}}),
                   {random_tensor({2, 16, 9, 9}, 17), make_f32({1, 16, 1, 1}, nonzero_values(16, 18))}, {false, false},
                   [](size_t) { return 1e-5; }, "Add + fused clip, broadcast"});
  uint32_t seed = 2000;
  for (const Case& c : cases) {
    const std::string label = c.label;  // (CAPTURE of a const char* would print the pointer)
    CAPTURE(label);
    const Shape out_shape = [&] {
      std::unique_ptr<Op> op = find_op(c.node.op)(c.node);
      std::vector<TensorDesc> descs;
      for (size_t i = 0; i < c.inputs.size(); ++i)
        descs.push_back(TensorDesc{c.inputs[i].dtype, c.inputs[i].shape, c.constant[i] ? &c.inputs[i] : nullptr, true});
      return op->infer(descs)[0].shape;
    }();
    const std::vector<float> dy = random_values(checked_numel(out_shape), ++seed, -1.f, 1.f);
    const OpResult cpu = run_op(c.node, c.inputs, c.constant, dy, nullptr);
    const OpResult gpu = run_op(c.node, c.inputs, c.constant, dy, runtime);
    // tol * (1 + |value|): for the broadcast gradients (sums of 8320 O(1) terms, |sum| ~ 100) 1e-5 is ~80 float
    // ulps of the result, far above the ulp or two a reordered double sum can change it by.
    for (size_t k = 0; k < cpu.outputs.size(); ++k) {
      const std::vector<float>& want = cpu.outputs[k];
      expect_close(gpu.outputs[k], want, [&](size_t i) { return c.tol(i) * (1.0 + std::abs(want[i])); }, "output");
    }
    for (size_t i = 0; i < cpu.dinputs.size(); ++i) {
      const std::vector<float>& want = cpu.dinputs[i];
      REQUIRE(gpu.dinputs[i].size() == want.size());
      expect_close(gpu.dinputs[i], want, [&](size_t j) { return c.tol(j) * (1.0 + std::abs(want[j])); },
                   "gradient of input " + std::to_string(i));
    }
  }
#endif
}
