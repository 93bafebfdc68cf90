// GPU twins of the pooling, mean-reduction and shape-op copies (kernels/cuda/{pool,reduce,copy}.cu) against their
// CPU references (kernels/cpu/{pool,reduce}.cpp, the shape ops' CPU path), forward and backward, over a matrix of
// shapes; then the ops themselves dispatching to the GPU (Context::device == CUDA) against the same ops on the CPU.
// Without a device, or in a CPU-only build, every case prints SKIPPED and passes.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "tests/gpu_test_util.h"

#ifdef CAMRT_WITH_CUDA
#include "engine/ops/op.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/pool.h"
#include "kernels/cpu/reduce.h"
#include "kernels/cuda/copy.h"
#include "kernels/cuda/pool.h"
#include "kernels/cuda/reduce.h"

using namespace camrt;
using nlohmann::json;

namespace {

// Deterministic values in [-1, 1) from a 32-bit LCG (Numerical Recipes constants). levels > 0 snaps them to a
// grid of 2 * levels values, so pooling windows hold ties and the argmax tie rule is exercised.
std::vector<float> lcg_values(int64_t n, uint32_t seed, int levels = 0) {
  std::vector<float> v(static_cast<size_t>(n));
  uint32_t s = seed;
  for (float& x : v) {
    s = s * 1664525u + 1013904223u;
    x = static_cast<float>(s >> 8) / static_cast<float>(1 << 23) - 1.f;
    if (levels > 0) x = std::floor(x * static_cast<float>(levels)) / static_cast<float>(levels);
  }
  return v;
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

bool same_bits(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);  // NaN payloads may differ
  return std::memcmp(&a, &b, sizeof(float)) == 0;
}

int64_t count_not_identical(const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) bad += !same_bits(got[i], want[i]);
  return bad;
}

// Elements where |got - want| > tol(i); NaN matches NaN, infinities must be equal.
template <typename Tol>
int64_t count_outside(const std::vector<float>& got, const std::vector<float>& want, Tol tol) {
  REQUIRE(got.size() == want.size());
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const float g = got[i], w = want[i];
    if (std::isnan(w) || std::isnan(g) || std::isinf(w) || std::isinf(g)) {
      bad += !same_bits(g, w);
      continue;
    }
    bad += !(std::fabs(static_cast<double>(g) - w) <= tol(i));
  }
  return bad;
}

// One float rounding: both sides accumulate in double (error ~1e-16 relative to the sum of magnitudes), so the
// float results differ at most when the double sums straddle a rounding boundary: 1 ulp <= 2^-23 |value|, plus
// 1e-12 absolute for the double error of a sum that cancels to near zero.
constexpr double kFloatUlp = 1.0 / (1 << 23);
auto one_rounding(const std::vector<float>& want) {
  return [&want](size_t i) { return kFloatUlp * std::fabs(want[i]) + 1e-12; };
}

// Mean backward: dx + dy * (1/count) is rounded twice on the GPU (no FMA); the CPU compiler may fuse it into one
// FMA, which differs by at most half an ulp of the product plus half an ulp of the sum. |dy| < 1 (lcg_values) and
// 1/count <= 1, so 2^-23 (1 + |dx|) bounds that.
auto mean_backward_tolerance(const std::vector<float>& want) {
  return [&want](size_t i) { return kFloatUlp * (1.0 + std::fabs(want[i])); };
}

// ---------------- pooling geometry ----------------

struct PoolCase {
  int64_t planes;
  std::array<int64_t, 3> in, kernel, stride, dilation, pad_begin, pad_end;
  bool ceil_mode;
};

// The geometry engine/ops/pool.cpp builds for explicit pads (auto_pad NOTSET), output sizes by the ONNX rule.
PoolGeometry geometry_of(const PoolCase& c) {
  PoolGeometry g;
  g.planes = c.planes;
  for (int a = 0; a < 3; ++a) {
    g.in[a] = c.in[a];
    g.kernel[a] = c.kernel[a];
    g.stride[a] = c.stride[a];
    g.dilation[a] = c.dilation[a];
    g.pad_begin[a] = c.pad_begin[a];
    g.pad_end[a] = c.pad_end[a];
    const int64_t extent = (c.kernel[a] - 1) * c.dilation[a] + 1;
    const int64_t span = c.in[a] + c.pad_begin[a] + c.pad_end[a] - extent;
    REQUIRE(span >= 0);
    int64_t o = c.ceil_mode ? (span + c.stride[a] - 1) / c.stride[a] + 1 : span / c.stride[a] + 1;
    if (c.ceil_mode && (o - 1) * c.stride[a] >= c.in[a] + c.pad_begin[a]) --o;  // last window starts inside
    g.out[a] = o;
  }
  return g;
}

std::string describe(const PoolCase& c) {
  std::string s = "planes " + std::to_string(c.planes);
  auto add = [&s](const char* name, const std::array<int64_t, 3>& v) {
    s += std::string(" ") + name + " " + std::to_string(v[0]) + "x" + std::to_string(v[1]) + "x" + std::to_string(v[2]);
  };
  add("in", c.in);
  add("kernel", c.kernel);
  add("stride", c.stride);
  add("dilation", c.dilation);
  add("pad_begin", c.pad_begin);
  add("pad_end", c.pad_end);
  return s + (c.ceil_mode ? " ceil" : " floor");
}

// Odd sizes, strides below, equal to and above the kernel, asymmetric pads, dilation, ceil_mode, 1-D and 3-D,
// a kernel larger than the input, pads as wide as the kernel (windows with no input tap), many planes.
const std::vector<PoolCase>& pool_cases() {
  static const std::vector<PoolCase> cases = {
      {6, {1, 13, 15}, {1, 3, 3}, {1, 2, 2}, {1, 1, 1}, {0, 1, 1}, {0, 1, 1}, false},  // ResNet stem pool, odd map
      {6, {1, 13, 15}, {1, 3, 3}, {1, 2, 2}, {1, 1, 1}, {0, 0, 1}, {0, 1, 0}, true},   // asymmetric pads + ceil
      {4, {1, 9, 11}, {1, 2, 3}, {1, 1, 2}, {1, 2, 1}, {0, 1, 0}, {0, 0, 2}, true},    // dilation, overlap
      {3, {1, 5, 6}, {1, 7, 7}, {1, 1, 1}, {1, 1, 1}, {0, 3, 3}, {0, 3, 3}, false},    // kernel larger than input
      {2, {1, 8, 8}, {1, 2, 2}, {1, 2, 2}, {1, 1, 1}, {0, 0, 0}, {0, 0, 0}, false},    // 2x2/2, no overlap
      {5, {1, 4, 5}, {1, 2, 2}, {1, 1, 1}, {1, 1, 1}, {0, 2, 2}, {0, 2, 2}, false},    // windows with no input tap
      {3, {1, 7, 9}, {1, 3, 2}, {1, 3, 4}, {1, 1, 1}, {0, 0, 1}, {0, 2, 0}, true},     // stride > kernel: gaps
      {6, {1, 1, 17}, {1, 1, 4}, {1, 1, 3}, {1, 1, 1}, {0, 0, 2}, {0, 0, 1}, true},    // 1-D
      {4, {5, 6, 7}, {2, 3, 2}, {2, 1, 2}, {1, 2, 1}, {1, 0, 1}, {0, 1, 1}, true},     // 3-D
      {132, {1, 14, 14}, {1, 3, 3}, {1, 2, 2}, {1, 1, 1}, {0, 1, 1}, {0, 1, 1}, true}, // batch 4 x 33 channels
      {2, {1, 7, 7}, {1, 7, 7}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, {0, 0, 0}, false},    // one window per plane
  };
  return cases;
}

// ---------------- ops on both devices ----------------

struct In {
  HostTensor t;
  bool constant = false;
};

Node make_node(const std::string& op, json attrs, size_t num_inputs = 1) {
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

// Runs one op forward (and, with dy, backward into dx pre-filled with `prefill`) on the CPU and on the GPU. Every
// input is uploaded, constants included (as the executor uploads weights): a GPU path reading a constant's data
// on the host would read device memory and fail. wrt[i]: input i wants a gradient.
struct OpRun {
  HostTensor y;
  std::vector<HostTensor> dx;
};

struct BothDevices {
  OpRun cpu, gpu;
};

BothDevices run_both(CudaRuntime& rt, const Node& node, const std::vector<In>& ins, const HostTensor* dy = nullptr,
                     const std::vector<bool>& wrt = {}, uint32_t prefill_seed = 77) {
  auto op = build(node);
  std::vector<TensorDesc> descs;
  for (const In& in : ins) descs.push_back(TensorDesc{in.t.dtype, in.t.shape, in.constant ? &in.t : nullptr});
  const std::vector<TensorDesc> out_desc = op->infer(descs);
  REQUIRE(out_desc.size() >= 1);
  BothDevices result;

  // CPU.
  ThreadPool pool(2);
  Context cpu_ctx{Device::CPU, &pool};
  {
    std::vector<Tensor> views;
    for (const In& in : ins) views.push_back(in.t.view());
    std::vector<const Tensor*> ptrs;
    for (const Tensor& v : views) ptrs.push_back(&v);
    result.cpu.y = HostTensor(out_desc[0].dtype, out_desc[0].shape);
    Tensor y = result.cpu.y.view();
    op->forward(cpu_ctx, ptrs, {&y});
    if (dy) {
      std::vector<Tensor> dx_views(ins.size());
      std::vector<Tensor*> dx_ptrs(ins.size(), nullptr);
      for (size_t i = 0; i < ins.size(); ++i) {
        HostTensor d(DType::F32, wrt[i] ? ins[i].t.shape : Shape{0});
        if (wrt[i]) {
          const std::vector<float> pre = lcg_values(d.numel(), prefill_seed + static_cast<uint32_t>(i));
          std::copy(pre.begin(), pre.end(), d.f32());
        }
        result.cpu.dx.push_back(std::move(d));
      }
      for (size_t i = 0; i < ins.size(); ++i)
        if (wrt[i]) {
          dx_views[i] = result.cpu.dx[i].view();
          dx_ptrs[i] = &dx_views[i];
        }
      Tensor dy_view = dy->view();
      op->backward(cpu_ctx, ptrs, {&y}, {&dy_view}, dx_ptrs);
    }
  }

  // GPU: the same, every buffer in device memory.
  Context gpu_ctx{Device::CUDA, nullptr, &rt};
  {
    std::vector<DeviceBuffer> buffers;
    std::vector<Tensor> views;
    for (const In& in : ins) {
      buffers.push_back(upload(rt, in.t.bytes.data(), in.t.bytes.size()));
      views.push_back(Tensor{buffers.back().data(), in.t.dtype, in.t.shape, Device::CUDA});
    }
    std::vector<const Tensor*> ptrs;
    for (const Tensor& v : views) ptrs.push_back(&v);
    result.gpu.y = HostTensor(out_desc[0].dtype, out_desc[0].shape);
    DeviceBuffer y_buffer(rt, result.gpu.y.bytes.size(), "op output");
    Tensor y{y_buffer.data(), out_desc[0].dtype, out_desc[0].shape, Device::CUDA};
    op->forward(gpu_ctx, ptrs, {&y});
    copy_to_host(rt, result.gpu.y.bytes.data(), y_buffer.data(), result.gpu.y.bytes.size());
    if (dy) {
      DeviceBuffer dy_buffer = upload(rt, dy->bytes.data(), dy->bytes.size());
      Tensor dy_view{dy_buffer.data(), DType::F32, dy->shape, Device::CUDA};
      std::vector<DeviceBuffer> dx_buffers;
      std::vector<Tensor> dx_views(ins.size());
      std::vector<Tensor*> dx_ptrs(ins.size(), nullptr);
      for (size_t i = 0; i < ins.size(); ++i) {
        HostTensor d(DType::F32, wrt[i] ? ins[i].t.shape : Shape{0});
        if (wrt[i]) {
          const std::vector<float> pre = lcg_values(d.numel(), prefill_seed + static_cast<uint32_t>(i));
          std::copy(pre.begin(), pre.end(), d.f32());
        }
        dx_buffers.push_back(upload(rt, d.bytes.data(), d.bytes.size()));
        dx_views[i] = Tensor{dx_buffers.back().data(), DType::F32, d.shape, Device::CUDA};
        if (wrt[i]) dx_ptrs[i] = &dx_views[i];
        result.gpu.dx.push_back(std::move(d));
      }
      op->backward(gpu_ctx, ptrs, {&y}, {&dy_view}, dx_ptrs);
      for (size_t i = 0; i < ins.size(); ++i)
        copy_to_host(rt, result.gpu.dx[i].bytes.data(), dx_buffers[i].data(), result.gpu.dx[i].bytes.size());
    }
  }
  return result;
}

std::vector<float> floats(const HostTensor& t) { return std::vector<float>(t.f32(), t.f32() + t.numel()); }

HostTensor random_tensor(const Shape& shape, uint32_t seed, int levels = 0) {
  HostTensor t(DType::F32, shape);
  const std::vector<float> v = lcg_values(t.numel(), seed, levels);
  std::copy(v.begin(), v.end(), t.f32());
  return t;
}

}  // namespace
#endif  // CAMRT_WITH_CUDA

// ---------------- pooling launchers ----------------

TEST_CASE("gpu: max / average pool forward and backward equal the CPU kernels bit for bit") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  ThreadPool pool(2);
  // Bit equality, not a tolerance: each output visits the same taps in the same order with the same float
  // operations as the CPU kernel (max: comparisons only; mean: float sum then one division), and each dx element
  // adds the same window contributions in the same (ascending output) order.
  for (const PoolCase& c : pool_cases()) {
    const PoolGeometry g = geometry_of(c);
    const int64_t n_in = g.planes * g.in_plane(), n_out = g.planes * g.out_plane();
    for (int data = 0; data < 3; ++data) {
      // 0: continuous values; 1: a grid of 16 values (ties in most windows); 2: ties plus NaNs.
      std::vector<float> x = lcg_values(n_in, 11 + data, data == 0 ? 0 : 8);
      if (data == 2)
        for (int64_t i = 5; i < n_in; i += 37) x[static_cast<size_t>(i)] = std::numeric_limits<float>::quiet_NaN();
      const std::vector<float> dy = lcg_values(n_out, 23);
      const std::vector<float> dx0 = lcg_values(n_in, 29);  // backward accumulates into what is there
      INFO(describe(c) << ", data " << data);
      const DeviceBuffer x_d = upload(rt, x), dy_d = upload(rt, dy);

      for (int mode = 0; mode < 3; ++mode) {  // max, average, average with count_include_pad
        const bool is_max = mode == 0, cip = mode == 2;
        INFO("mode " << (is_max ? "max" : cip ? "average, count_include_pad" : "average"));
        std::vector<float> y_cpu(static_cast<size_t>(n_out)), dx_cpu = dx0;
        if (is_max) {
          max_pool_forward(y_cpu.data(), x.data(), g, pool);
          max_pool_backward(dx_cpu.data(), dy.data(), x.data(), y_cpu.data(), g, pool);
        } else {
          average_pool_forward(y_cpu.data(), x.data(), g, cip, pool);
          average_pool_backward(dx_cpu.data(), dy.data(), g, cip, pool);
        }
        DeviceBuffer y_d(rt, static_cast<size_t>(n_out) * sizeof(float), "pool output");
        const DeviceBuffer dx_d = upload(rt, dx0), dx2_d = upload(rt, dx0);
        if (is_max) {
          cuda::max_pool_forward(f32(y_d), f32(x_d), g, rt.stream());
          cuda::max_pool_backward(f32(dx_d), f32(dy_d), f32(x_d), f32(y_d), g, rt.stream());
          cuda::max_pool_backward(f32(dx2_d), f32(dy_d), f32(x_d), f32(y_d), g, rt.stream());
        } else {
          cuda::average_pool_forward(f32(y_d), f32(x_d), g, cip, rt.stream());
          cuda::average_pool_backward(f32(dx_d), f32(dy_d), g, cip, rt.stream());
          cuda::average_pool_backward(f32(dx2_d), f32(dy_d), g, cip, rt.stream());
        }
        const std::vector<float> y_gpu = download(rt, y_d, y_cpu.size());
        const std::vector<float> dx_gpu = download(rt, dx_d, dx_cpu.size());
        CHECK(count_not_identical(y_gpu, y_cpu) == 0);
        CHECK(count_not_identical(dx_gpu, dx_cpu) == 0);
        CHECK(count_not_identical(download(rt, dx2_d, dx_cpu.size()), dx_gpu) == 0);  // run to run
        // The comparison has teeth: the backward changed dx (every case has windows with input taps).
        CHECK(count_not_identical(dx_gpu, dx0) > 0);
      }
    }
  }
#endif
}

TEST_CASE("gpu: global average pool forward and backward match the CPU kernels") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  ThreadPool pool(2);
  // (planes, spatial): ResNet's 7x7, single-element planes, block-per-plane sizes (>= 2048), a ragged one,
  // empty planes (mean of nothing: NaN), many small planes.
  const std::vector<std::pair<int64_t, int64_t>> cases = {{6, 49}, {5, 1}, {3, 2500}, {2, 4103}, {4, 0}, {1000, 3}, {7, 2047}};
  for (const auto& [planes, spatial] : cases) {
    INFO("planes " << planes << ", spatial " << spatial);
    const std::vector<float> x = lcg_values(planes * spatial, 3), dy = lcg_values(planes, 5), dx0 = lcg_values(planes * spatial, 7);
    std::vector<float> y_cpu(static_cast<size_t>(planes)), dx_cpu = dx0;
    global_average_pool_forward(y_cpu.data(), x.data(), planes, spatial, pool);
    global_average_pool_backward(dx_cpu.data(), dy.data(), planes, spatial, pool);
    const DeviceBuffer x_d = upload(rt, x), dy_d = upload(rt, dy), dx_d = upload(rt, dx0);
    DeviceBuffer y_d(rt, static_cast<size_t>(planes) * sizeof(float), "gap output");
    cuda::global_average_pool_forward(f32(y_d), f32(x_d), planes, spatial, rt.stream());
    cuda::global_average_pool_backward(f32(dx_d), f32(dy_d), planes, spatial, rt.stream());
    const std::vector<float> y_gpu = download(rt, y_d, y_cpu.size());
    // Forward: both sum in double, in different orders (see one_rounding). Backward: the same float division
    // and addition per element: bit equal.
    CHECK(count_outside(y_gpu, y_cpu, one_rounding(y_cpu)) == 0);
    CHECK(count_not_identical(download(rt, dx_d, dx_cpu.size()), dx_cpu) == 0);
    if (spatial == 0) CHECK(std::isnan(y_gpu[0]));
  }
#endif
}

// ---------------- reduction launchers ----------------

TEST_CASE("gpu: reduce_mean forward and backward match the CPU kernels over many axis sets") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  ThreadPool pool(2);
  std::vector<std::pair<Shape, std::vector<int64_t>>> cases;
  for (int mask = 0; mask < 16; ++mask) {  // every subset of the axes of an odd-sized rank-4 tensor
    std::vector<int64_t> axes;
    for (int64_t a = 0; a < 4; ++a)
      if (mask & (1 << a)) axes.push_back(a);
    cases.push_back({{2, 3, 5, 7}, axes});
  }
  cases.push_back({{3, 4100}, {1}});            // innermost reduced, a block per output
  cases.push_back({{3, 4100}, {0}});            // innermost kept
  cases.push_back({{4, 3000, 5}, {1}});         // innermost kept, long reduction per thread
  cases.push_back({{2, 1, 3, 1, 4}, {1, 2}});   // size-1 dims dropped from the runs
  cases.push_back({{2, 1, 3, 1, 4}, {0, 3}});
  cases.push_back({{2, 1, 3, 1, 4}, {4}});
  cases.push_back({{2, 3, 2, 3, 2, 3}, {0, 2, 4}});  // alternating runs
  cases.push_back({{2, 3, 2, 3, 2, 3}, {1, 3, 5}});
  cases.push_back({{8, 64, 7, 7}, {2, 3}});     // a GAP-shaped mean
  cases.push_back({{2, 0, 3}, {1}});            // mean over nothing: NaN
  cases.push_back({{2, 0, 3}, {0, 2}});         // no outputs
  cases.push_back({{}, {}});                    // a scalar, no axes: a copy
  for (const auto& [shape, axes] : cases) {
    INFO("shape " << shape_str(shape) << ", axes " << shape_str(axes));
    int64_t numel = 1, out_numel = 1;
    for (size_t d = 0; d < shape.size(); ++d) {
      numel *= shape[d];
      if (std::find(axes.begin(), axes.end(), static_cast<int64_t>(d)) == axes.end()) out_numel *= shape[d];
    }
    const std::vector<float> x = lcg_values(numel, 41), dy = lcg_values(out_numel, 43), dx0 = lcg_values(numel, 47);
    std::vector<float> y_cpu(static_cast<size_t>(out_numel)), dx_cpu = dx0;
    reduce_mean_forward(y_cpu.data(), x.data(), shape, axes, pool);
    reduce_mean_backward(dx_cpu.data(), dy.data(), shape, axes, pool);
    const DeviceBuffer x_d = upload(rt, x), dy_d = upload(rt, dy), dx_d = upload(rt, dx0), dx2_d = upload(rt, dx0);
    DeviceBuffer y_d(rt, static_cast<size_t>(out_numel) * sizeof(float), "mean output");
    cuda::reduce_mean_forward(f32(y_d), f32(x_d), shape, axes, rt.stream());
    cuda::reduce_mean_backward(f32(dx_d), f32(dy_d), shape, axes, rt.stream());
    cuda::reduce_mean_backward(f32(dx2_d), f32(dy_d), shape, axes, rt.stream());
    const std::vector<float> y_gpu = download(rt, y_d, y_cpu.size()), dx_gpu = download(rt, dx_d, dx_cpu.size());
    CHECK(count_outside(y_gpu, y_cpu, one_rounding(y_cpu)) == 0);
    CHECK(count_outside(dx_gpu, dx_cpu, mean_backward_tolerance(dx_cpu)) == 0);
    CHECK(count_not_identical(download(rt, dx2_d, dx_cpu.size()), dx_gpu) == 0);  // run to run
  }
#endif
}

// ---------------- copy launchers ----------------

TEST_CASE("gpu: copy_rows, concat_forward, concat_backward and accumulate match host loops") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  // copy_rows at every access width: odd pitches/width (1 byte), 4-byte and 16-byte aligned ones. Bytes of dst
  // outside the rows must keep their fill.
  struct RowsCase {
    int64_t dst_pitch, src_pitch, width, rows, dst_offset;
  };
  for (const RowsCase& c : {RowsCase{37, 29, 23, 7, 0}, RowsCase{40, 28, 20, 5, 4}, RowsCase{64, 48, 32, 9, 16},
                            RowsCase{96, 96, 80, 1, 3}, RowsCase{10, 10, 0, 4, 0}, RowsCase{50, 20, 20, 0, 0}}) {
    INFO("dst pitch " << c.dst_pitch << ", src pitch " << c.src_pitch << ", width " << c.width << ", rows " << c.rows
                      << ", dst offset " << c.dst_offset);
    std::vector<uint8_t> src(static_cast<size_t>(c.src_pitch * std::max<int64_t>(c.rows, 1)));
    for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 7 + 3);
    std::vector<uint8_t> dst(static_cast<size_t>(c.dst_offset + c.dst_pitch * std::max<int64_t>(c.rows, 1)), 0xA5);
    std::vector<uint8_t> want = dst;
    for (int64_t r = 0; r < c.rows; ++r)
      std::memcpy(&want[static_cast<size_t>(c.dst_offset + r * c.dst_pitch)], &src[static_cast<size_t>(r * c.src_pitch)],
                  static_cast<size_t>(c.width));
    const DeviceBuffer src_d = upload(rt, src.data(), src.size()), dst_d = upload(rt, dst.data(), dst.size());
    cuda::copy_rows(dst_d.data() + c.dst_offset, c.dst_pitch, src_d.data(), c.src_pitch, c.width, c.rows, rt.stream());
    std::vector<uint8_t> got(dst.size());
    copy_to_host(rt, got.data(), dst_d.data(), got.size());
    CHECK(got == want);
  }

  // Concat of 40 sources (two launches of at most 32), block sizes from 0 to 53 bytes and 16-byte multiples.
  for (const int64_t unit : {int64_t(1), int64_t(4), int64_t(16)}) {
    const int64_t rows = 3;
    std::vector<int64_t> block_bytes;
    for (int i = 0; i < 40; ++i) block_bytes.push_back(unit == 1 ? (i * 13) % 54 : unit * (i % 5));
    int64_t row_bytes = 0;
    for (int64_t b : block_bytes) row_bytes += b;
    std::vector<std::vector<uint8_t>> srcs;
    std::vector<DeviceBuffer> src_d;
    std::vector<const void*> src_ptrs;
    for (size_t i = 0; i < block_bytes.size(); ++i) {
      std::vector<uint8_t> s(static_cast<size_t>(rows * block_bytes[i]));
      for (size_t j = 0; j < s.size(); ++j) s[j] = static_cast<uint8_t>(i * 31 + j);
      src_d.push_back(upload(rt, s.data(), s.size()));
      src_ptrs.push_back(src_d.back().data());
      srcs.push_back(std::move(s));
    }
    std::vector<uint8_t> want(static_cast<size_t>(rows * row_bytes));
    for (int64_t r = 0, at = 0; r < rows; ++r)
      for (size_t i = 0; i < srcs.size(); ++i)
        for (int64_t j = 0; j < block_bytes[i]; ++j) want[static_cast<size_t>(at++)] = srcs[i][static_cast<size_t>(r * block_bytes[i] + j)];
    DeviceBuffer dst_d(rt, want.size(), "concat output");
    cuda::concat_forward(dst_d.data(), src_ptrs, block_bytes, rows, rt.stream());
    std::vector<uint8_t> got(want.size());
    copy_to_host(rt, got.data(), dst_d.data(), got.size());
    INFO("unit " << unit);
    CHECK(got == want);
  }

  // Concat backward over 35 blocks, every third wanting no gradient; accumulate over an odd length.
  {
    const int64_t rows = 4;
    std::vector<int64_t> block_elems;
    for (int i = 0; i < 35; ++i) block_elems.push_back(i % 6);
    int64_t row_elems = 0;
    for (int64_t b : block_elems) row_elems += b;
    const std::vector<float> dy = lcg_values(rows * row_elems, 3);
    const DeviceBuffer dy_d = upload(rt, dy);
    std::vector<std::vector<float>> want;
    std::vector<DeviceBuffer> dx_d;
    std::vector<float*> dx_ptrs;
    for (size_t i = 0; i < block_elems.size(); ++i) {
      std::vector<float> dx = lcg_values(rows * block_elems[i], 100 + static_cast<uint32_t>(i));
      dx_d.push_back(upload(rt, dx));
      dx_ptrs.push_back(i % 3 == 2 ? nullptr : f32(dx_d.back()));
      want.push_back(dx);
    }
    for (int64_t r = 0, at = 0; r < rows; ++r)
      for (size_t i = 0; i < block_elems.size(); ++i)
        for (int64_t j = 0; j < block_elems[i]; ++j, ++at)
          if (i % 3 != 2) want[i][static_cast<size_t>(r * block_elems[i] + j)] += dy[static_cast<size_t>(at)];
    cuda::concat_backward(dx_ptrs, f32(dy_d), block_elems, rows, rt.stream());
    for (size_t i = 0; i < block_elems.size(); ++i) {
      INFO("block " << i);
      CHECK(count_not_identical(download(rt, dx_d[i], want[i].size()), want[i]) == 0);  // one float add each
    }

    const int64_t n = 1000003;
    const std::vector<float> a = lcg_values(n, 8), b = lcg_values(n, 9);
    std::vector<float> sum = a;
    for (int64_t i = 0; i < n; ++i) sum[static_cast<size_t>(i)] += b[static_cast<size_t>(i)];
    const DeviceBuffer a_d = upload(rt, a), b_d = upload(rt, b);
    cuda::accumulate(f32(a_d), f32(b_d), n, rt.stream());
    CHECK(count_not_identical(download(rt, a_d, sum.size()), sum) == 0);
  }
#endif
}

// ---------------- the ops on the GPU ----------------

TEST_CASE("gpu: MaxPool, AveragePool and GlobalAveragePool ops dispatch to the GPU and match the CPU ops") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  const HostTensor x = random_tensor({2, 3, 13, 15}, 5, 8);  // ties
  const HostTensor x3 = random_tensor({2, 2, 5, 6, 7}, 6);
  struct Case {
    std::string op;
    json attrs;
    const HostTensor* x;
  };
  const std::vector<Case> cases = {
      {"MaxPool", {{"kernel_shape", {3, 3}}, {"strides", {2, 2}}, {"pads", {1, 0, 0, 1}}, {"ceil_mode", 1}}, &x},
      {"MaxPool", {{"kernel_shape", {2, 3}}, {"dilations", {2, 1}}, {"auto_pad", "SAME_UPPER"}}, &x},
      {"AveragePool", {{"kernel_shape", {3, 3}}, {"strides", {2, 2}}, {"pads", {1, 1, 1, 1}}, {"count_include_pad", 1}, {"ceil_mode", 1}}, &x},
      {"AveragePool", {{"kernel_shape", {2, 3, 2}}, {"strides", {2, 1, 2}}, {"pads", {1, 0, 1, 0, 1, 1}}}, &x3},
      {"GlobalAveragePool", json::object(), &x},
      {"GlobalAveragePool", json::object(), &x3},
  };
  for (const Case& c : cases) {
    INFO(c.op << " " << c.attrs.dump() << " on " << shape_str(c.x->shape));
    const Node node = make_node(c.op, c.attrs);
    auto op = build(node);
    const Shape y_shape = op->infer({TensorDesc{DType::F32, c.x->shape}})[0].shape;
    const HostTensor dy = random_tensor(y_shape, 9);
    const BothDevices r = run_both(*runtime, node, {{*c.x}}, &dy, {true});
    const std::vector<float> y_gpu = floats(r.gpu.y), y_cpu = floats(r.cpu.y);
    CHECK(r.gpu.y.shape == r.cpu.y.shape);
    // Windowed pools are bit-equal (see the launcher test); GlobalAveragePool's double sums differ in order.
    if (c.op == "GlobalAveragePool")
      CHECK(count_outside(y_gpu, y_cpu, one_rounding(y_cpu)) == 0);
    else
      CHECK(count_not_identical(y_gpu, y_cpu) == 0);
    CHECK(count_not_identical(floats(r.gpu.dx[0]), floats(r.cpu.dx[0])) == 0);
  }
#endif
}

TEST_CASE("gpu: ReduceMean op with attribute axes and with a constant axes input held in device memory") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  // (3, 3, 4): reducing axis 0 or axis 1 with keepdims 0 gives the same output shape (3, 4) but different values,
  // so with the axes input in device memory the GPU path must use the constant infer saw, not guess from shapes.
  const HostTensor x = random_tensor({3, 3, 4}, 12);
  for (int keepdims = 0; keepdims < 2; ++keepdims) {
    for (int64_t axis : {0, 1, -1}) {
      INFO("keepdims " << keepdims << ", axis " << axis);
      Shape y_shape = x.shape;
      const size_t a = static_cast<size_t>(axis < 0 ? axis + 3 : axis);
      if (keepdims)
        y_shape[a] = 1;
      else
        y_shape.erase(y_shape.begin() + static_cast<std::ptrdiff_t>(a));
      const HostTensor dy = random_tensor(y_shape, 4);
      for (int form = 0; form < 2; ++form) {  // 0: opset < 18 attribute; 1: opset 18 constant input
        INFO((form == 0 ? "axes attribute" : "axes input"));
        const BothDevices r =
            form == 0 ? run_both(*runtime, make_node("ReduceMean", {{"axes", {axis}}, {"keepdims", keepdims}}), {{x}}, &dy, {true})
                      : run_both(*runtime, make_node("ReduceMean", {{"keepdims", keepdims}, {"onnx_opset", 18}}, 2),
                                 {{x}, {make_i64({1}, {axis}), true}}, &dy, {true, false});
        const std::vector<float> y_gpu = floats(r.gpu.y), y_cpu = floats(r.cpu.y);
        const std::vector<float> dx_gpu = floats(r.gpu.dx[0]), dx_cpu = floats(r.cpu.dx[0]);
        CHECK(r.gpu.y.shape == y_shape);
        CHECK(count_outside(y_gpu, y_cpu, one_rounding(y_cpu)) == 0);
        CHECK(count_outside(dx_gpu, dx_cpu, mean_backward_tolerance(dx_cpu)) == 0);
      }
    }
  }
#endif
}

TEST_CASE("gpu: Flatten / Reshape / Squeeze / Unsqueeze / Concat ops on the GPU match the CPU ops") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  const HostTensor x = random_tensor({2, 3, 1, 5}, 31);
  // Views: a D2D copy forward, dy added to dx backward (exact). Reshape's and Squeeze's shape / axes inputs sit in
  // device memory like every constant: the GPU path must take them from shapes and infer, never read them.
  struct ViewCase {
    Node node;
    std::vector<In> ins;
  };
  const std::vector<ViewCase> views = {
      {make_node("Flatten", {{"axis", 2}}), {{x}}},
      {make_node("Reshape", json::object(), 2), {{x}, {make_i64({3}, {0, -1, 3}), true}}},
      {make_node("Squeeze", json::object(), 2), {{x}, {make_i64({1}, {2}), true}}},
      {make_node("Unsqueeze", {{"axes", {0, 5}}}), {{x}}},
  };
  for (const ViewCase& v : views) {
    INFO(v.node.op);
    auto op = build(v.node);
    std::vector<TensorDesc> descs;
    for (const In& in : v.ins) descs.push_back(TensorDesc{in.t.dtype, in.t.shape, in.constant ? &in.t : nullptr});
    const HostTensor dy = random_tensor(op->infer(descs)[0].shape, 8);
    std::vector<bool> wrt(v.ins.size(), false);
    wrt[0] = true;
    const BothDevices r = run_both(*runtime, v.node, v.ins, &dy, wrt);
    CHECK(r.gpu.y.shape == r.cpu.y.shape);
    CHECK(r.gpu.y.bytes == r.cpu.y.bytes);
    CHECK(r.gpu.dx[0].bytes == r.cpu.dx[0].bytes);
  }

  // A view run in place: output and input share the buffer, nothing may change.
  {
    CudaRuntime& rt = *runtime;
    auto op = build(make_node("Flatten", json::object()));
    const DeviceBuffer buffer = upload(rt, x.bytes.data(), x.bytes.size());
    const Tensor in{buffer.data(), DType::F32, x.shape, Device::CUDA};
    Tensor out{buffer.data(), DType::F32, {2, 15}, Device::CUDA};
    op->forward(Context{Device::CUDA, nullptr, &rt}, {&in}, {&out});
    std::vector<uint8_t> got(x.bytes.size());
    copy_to_host(rt, got.data(), buffer.data(), got.size());
    CHECK(got == x.bytes);
  }

  // Concat along every axis of rank-4 F32 inputs (sizes differ along the axis), I64 along axis 0, backward with
  // one input wanting no gradient.
  for (int axis = -1; axis < 4; ++axis) {
    INFO("axis " << axis);
    std::vector<In> ins;
    for (int i = 0; i < 3; ++i) {
      Shape s = {2, 3, 4, 5};
      s[static_cast<size_t>(axis < 0 ? 3 : axis)] = 1 + 2 * i;
      ins.push_back({random_tensor(s, 50 + static_cast<uint32_t>(i))});
    }
    const Node node = make_node("Concat", {{"axis", axis}}, 3);
    Shape y_shape = {2, 3, 4, 5};
    y_shape[static_cast<size_t>(axis < 0 ? 3 : axis)] = 9;
    const HostTensor dy = random_tensor(y_shape, 60);
    const BothDevices r = run_both(*runtime, node, ins, &dy, {true, false, true});
    CHECK(r.gpu.y.bytes == r.cpu.y.bytes);
    CHECK(r.gpu.dx[0].bytes == r.cpu.dx[0].bytes);
    CHECK(r.gpu.dx[2].bytes == r.cpu.dx[2].bytes);
  }
  {
    const std::vector<In> ins = {{make_i64({2}, {1, 2})}, {make_i64({3}, {3, 4, 5})}, {make_i64({0}, {})}};
    const BothDevices r = run_both(*runtime, make_node("Concat", {{"axis", 0}}, 3), ins);
    CHECK(r.gpu.y.bytes == r.cpu.y.bytes);
    CHECK(r.gpu.y.numel() == 5);
  }
#endif
}
