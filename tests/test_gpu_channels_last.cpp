// Channels-last storage on the GPU (cuDNN NHWC convolutions in half and float32, the NHWC epilogue, max pooling
// and conversions) against the CPU reference twins: the conv launchers over a matrix of shapes, the half epilogue
// bit for bit, whole plans of the resnet18 fixture (the same nodes NHWC, logits near the CPU's), the Explainer at
// --precision fp16 (every method's maps near the float32 maps, two runs and the captured pass bit-identical), and a
// Session whose predictor shares the explainer's weights.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <random>

#include "engine/cam/explainer.h"
#include "engine/camrt.h"
#include "engine/executor.h"
#include "engine/npy.h"
#include "kernels/cpu/conv.h"
#include "kernels/cpu/half.h"
#include "tests/gpu_test_util.h"
#include "weights/onnx/onnx_import.h"
#if CAMRT_WITH_CUDA
#include "kernels/cuda/conv.h"
#include "kernels/cuda/device.h"
#endif

using namespace camrt;
namespace fs = std::filesystem;

namespace {

const fs::path kResnet18 = fs::path(CAMRT_SOURCE_DIR) / "tests/fixtures/models/resnet18";

std::vector<uint16_t> random_half(int64_t n, uint32_t seed, float scale = 1.f) {
  std::vector<uint16_t> v(static_cast<size_t>(n));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, scale);
  for (auto& h : v) h = float_to_half(normal(rng));
  return v;
}

std::vector<float> random_float(int64_t n, uint32_t seed) {
  std::vector<float> v(static_cast<size_t>(n));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (auto& x : v) x = normal(rng);
  return v;
}

double max_abs_diff(const float* a, const float* b, int64_t n) {
  double d = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double e = std::fabs(double(a[i]) - double(b[i]));
    d = std::isnan(e) ? INFINITY : std::max(d, e);  // a NaN on one side only fails every bound
    if (std::isinf(d)) break;
  }
  return d;
}

double max_abs(const float* a, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(double(a[i])));
  return m;
}

}  // namespace

#if CAMRT_WITH_CUDA
namespace {

template <typename T>
DeviceBuffer upload(CudaRuntime& rt, const std::vector<T>& host) {
  DeviceBuffer d(rt, std::max<size_t>(1, host.size() * sizeof(T)), "test data");
  if (!host.empty()) copy_to_device(rt, d.data(), host.data(), host.size() * sizeof(T));
  return d;
}

template <typename T>
std::vector<T> download(CudaRuntime& rt, const DeviceBuffer& d, size_t n) {
  std::vector<T> host(n);
  copy_to_host(rt, host.data(), d.data(), n * sizeof(T));  // synchronizes: kernel errors surface here
  return host;
}

std::vector<float> widen(const std::vector<uint16_t>& h) {
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); ++i) f[i] = half_to_float(h[i]);
  return f;
}

// One half conv on both devices. The convolutions accumulate in a different order (Winograd or FFT on the GPU,
// maybe), so the conv's rounded output may differ by an ulp, and the epilogue's rounding by one more (where cuDNN
// fuses bias + ReLU it rounds once, but with the bias in half: half an ulp of the bias): relative
// to the largest output, fp16's ulp is 2^-11 (2^-10 at the top of a binade); 8 of them leaves room for the sums.
void check_half_conv(CudaRuntime& rt, const Conv2dShape& s, const FusedActivation& act, bool with_bias,
                     bool with_residual) {
  ThreadPool pool(2);
  const int64_t in_n = s.batch * s.in_channels * s.in_h * s.in_w;
  const int64_t w_n = s.out_channels * (s.in_channels / s.groups) * s.kernel_h * s.kernel_w;
  const int64_t out_n = s.batch * s.out_channels * s.out_h() * s.out_w();
  const std::vector<uint16_t> x = random_half(in_n, 1), w = random_half(w_n, 2, 0.3f), z = random_half(out_n, 3);
  const std::vector<float> bias = random_float(s.out_channels, 4);
  std::vector<uint16_t> want(static_cast<size_t>(out_n));
  std::vector<uint8_t> ws(conv2d_forward_nhwc_workspace_bytes(s, pool.num_threads()));
  conv2d_forward_nhwc(want.data(), x.data(), w.data(), with_bias ? bias.data() : nullptr, s, act, ws.data(),
                           ws.size(), pool, with_residual ? z.data() : nullptr);

  size_t ws_bytes = 0;
  try {
    ws_bytes = cuda::conv2d_forward_nhwc_workspace_bytes(rt, s, true);
  } catch (const Error& e) {  // allowed: a plan then keeps this conv in float32 (engine/executor.cpp)
    std::cout << "gpu half conv: cuDNN has no fp16 NHWC algorithm for C=" << s.in_channels << " k=" << s.kernel_h
              << " groups=" << s.groups << " (" << e.what() << ")\n";
    return;
  }
  DeviceBuffer dws(rt, std::max<size_t>(1, ws_bytes), "conv workspace");
  DeviceBuffer dx = upload(rt, x), dw = upload(rt, w), dz = upload(rt, z), db = upload(rt, bias);
  DeviceBuffer dout = upload(rt, std::vector<uint16_t>(static_cast<size_t>(out_n), 0x7e00));  // NaN: all written
  cuda::conv2d_forward_nhwc(reinterpret_cast<uint16_t*>(dout.data()), reinterpret_cast<const uint16_t*>(dx.data()),
                                 reinterpret_cast<const uint16_t*>(dw.data()), with_bias ? reinterpret_cast<const float*>(db.data()) : nullptr,
                                 s, act, ws_bytes ? dws.data() : nullptr, ws_bytes, rt,
                                 with_residual ? reinterpret_cast<const uint16_t*>(dz.data()) : nullptr);
  if (with_bias && act.kind == FusedActivation::kRelu)  // the device check collects these lines
    std::cout << "gpu half conv C=" << s.in_channels << " k=" << s.kernel_h << (with_residual ? " +residual" : "")
              << ": bias + ReLU fused by cuDNN: "
              << (cuda::conv2d_bias_relu_unfused(rt, s, true, true, with_residual) ? "no" : "yes") << "\n";
  const std::vector<float> got = widen(download<uint16_t>(rt, dout, size_t(out_n))), ref = widen(want);
  const double scale = std::max(1.0, max_abs(ref.data(), out_n));
  const double err = max_abs_diff(got.data(), ref.data(), out_n);
  CHECK(err <= 8.0 * std::ldexp(scale, -11));
}

// The float32 channels-last conv on both devices at fp32 math (the test runtime's precision): the same sums in
// another order, so a few float32 ulps of the largest output.
void check_float_conv(CudaRuntime& rt, const Conv2dShape& s, const FusedActivation& act) {
  ThreadPool pool(2);
  const int64_t in_n = s.batch * s.in_channels * s.in_h * s.in_w;
  const int64_t w_n = s.out_channels * (s.in_channels / s.groups) * s.kernel_h * s.kernel_w;
  const int64_t out_n = s.batch * s.out_channels * s.out_h() * s.out_w();
  const std::vector<float> x = random_float(in_n, 1), w = random_float(w_n, 2), z = random_float(out_n, 3);
  const std::vector<float> bias = random_float(s.out_channels, 4);
  std::vector<float> want(static_cast<size_t>(out_n));
  std::vector<uint8_t> ws(conv2d_forward_nhwc_workspace_bytes(s, pool.num_threads()));
  conv2d_forward_nhwc(want.data(), x.data(), w.data(), bias.data(), s, act, ws.data(), ws.size(), pool, z.data());
  size_t ws_bytes = 0;
  try {
    ws_bytes = cuda::conv2d_forward_nhwc_workspace_bytes(rt, s, false);
  } catch (const Error& e) {  // allowed: a plan then keeps this conv NCHW
    std::cout << "gpu float nhwc conv: cuDNN has no algorithm for C=" << s.in_channels << " (" << e.what() << ")\n";
    return;
  }
  DeviceBuffer dws(rt, std::max<size_t>(1, ws_bytes), "conv workspace");
  DeviceBuffer dx = upload(rt, x), dw = upload(rt, w), dz = upload(rt, z), db = upload(rt, bias);
  DeviceBuffer dout = upload(rt, std::vector<float>(static_cast<size_t>(out_n), std::nanf("")));
  cuda::conv2d_forward_nhwc(reinterpret_cast<float*>(dout.data()), reinterpret_cast<const float*>(dx.data()),
                            reinterpret_cast<const float*>(dw.data()), reinterpret_cast<const float*>(db.data()), s, act,
                            ws_bytes ? dws.data() : nullptr, ws_bytes, rt, reinterpret_cast<const float*>(dz.data()));
  if (act.kind == FusedActivation::kRelu)  // the device check collects these lines
    std::cout << "gpu float nhwc conv C=" << s.in_channels << " k=" << s.kernel_h << ": bias + ReLU fused by cuDNN: "
              << (cuda::conv2d_bias_relu_unfused(rt, s, true, false, true) ? "no" : "yes") << "\n";
  const std::vector<float> got = download<float>(rt, dout, size_t(out_n));
  const double err = max_abs_diff(got.data(), want.data(), out_n) / std::max(1.0, max_abs(want.data(), out_n));
  CHECK(err < 1e-5);
}

}  // namespace
#endif

TEST_CASE("gpu channels-last: the float32 NHWC conv matches its CPU twin at fp32 (3x3 strided, 1x1, depthwise, residual)") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#if CAMRT_WITH_CUDA
  runtime->set_precision(Precision::FP32);
  FusedActivation relu;
  relu.kind = FusedActivation::kRelu;
  Conv2dShape a;
  a.batch = 2, a.in_channels = 32, a.in_h = a.in_w = 15, a.out_channels = 48, a.kernel_h = a.kernel_w = 3;
  a.stride_h = a.stride_w = 2, a.pad_top = a.pad_bottom = a.pad_left = a.pad_right = 1;
  Conv2dShape b = a;
  b.in_channels = b.out_channels = 24, b.groups = 24, b.stride_h = b.stride_w = 1;
  Conv2dShape c;
  c.batch = 3, c.in_channels = 64, c.in_h = c.in_w = 7, c.out_channels = 128;
  for (const Conv2dShape& s : {a, b, c}) {
    CAPTURE(s.groups);
    check_float_conv(*runtime, s, relu);
  }
#endif
}

TEST_CASE("gpu half: the fp16 NHWC conv matches its CPU twin (1x1, 3x3 strided, 7x7 on 3 channels, depthwise, residual)") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#if CAMRT_WITH_CUDA
  FusedActivation relu;
  relu.kind = FusedActivation::kRelu;
  FusedActivation clip;
  clip.kind = FusedActivation::kClip;
  clip.min = 0.f;
  clip.max = 6.f;
  struct Case {
    Conv2dShape s;
    FusedActivation act;
    bool bias, residual;
  };
  std::vector<Case> cases;
  auto shape = [](int64_t n, int64_t c, int64_t hw, int64_t k, int64_t kernel, int64_t stride, int64_t pad, int64_t groups) {
    Conv2dShape s;
    s.batch = n;
    s.in_channels = c;
    s.in_h = s.in_w = hw;
    s.out_channels = k;
    s.kernel_h = s.kernel_w = kernel;
    s.stride_h = s.stride_w = stride;
    s.pad_top = s.pad_bottom = s.pad_left = s.pad_right = pad;
    s.groups = groups;
    return s;
  };
  cases.push_back({shape(2, 64, 14, 128, 1, 1, 0, 1), FusedActivation{}, true, false});
  cases.push_back({shape(3, 32, 15, 48, 3, 2, 1, 1), relu, true, false});
  cases.push_back({shape(2, 3, 32, 16, 7, 2, 3, 1), relu, true, false});   // ResNet's stem on 3 channels
  cases.push_back({shape(2, 32, 16, 32, 3, 1, 1, 32), clip, true, false});  // MobileNet's depthwise + ReLU6
  cases.push_back({shape(2, 64, 8, 64, 3, 1, 1, 1), relu, true, true});     // bottleneck end: + residual, ReLU
  cases.push_back({shape(1, 24, 9, 24, 1, 1, 0, 1), FusedActivation{}, false, true});  // linear bottleneck + residual
  for (const Case& c : cases) {
    CAPTURE(c.s.in_channels);
    CAPTURE(c.s.kernel_h);
    CAPTURE(c.s.groups);
    check_half_conv(*runtime, c.s, c.act, c.bias, c.residual);
  }
#endif
}

TEST_CASE("gpu half: the NHWC half epilogue equals the CPU twin bit for bit") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#if CAMRT_WITH_CUDA
  ThreadPool pool(2);
  const int64_t positions = 1000, channels = 37;
  const std::vector<uint16_t> y = random_half(positions * channels, 5, 4.f), z = random_half(positions * channels, 6, 4.f);
  const std::vector<float> bias = random_float(channels, 7);
  FusedActivation clip;
  clip.kind = FusedActivation::kClip;
  clip.min = -1.f;
  clip.max = 2.f;
  FusedActivation relu;
  relu.kind = FusedActivation::kRelu;
  for (const FusedActivation& act : {FusedActivation{}, relu, clip}) {
    for (bool with_residual : {false, true}) {
      std::vector<uint16_t> want = y;
      conv2d_epilogue_nhwc(want.data(), bias.data(), with_residual ? z.data() : nullptr, positions, channels, act, pool);
      DeviceBuffer dy = upload(*runtime, y), dz = upload(*runtime, z), db = upload(*runtime, bias);
      cuda::conv2d_epilogue_nhwc(reinterpret_cast<uint16_t*>(dy.data()), reinterpret_cast<const float*>(db.data()),
                                      with_residual ? reinterpret_cast<const uint16_t*>(dz.data()) : nullptr, positions,
                                      channels, act, runtime->stream());
      CHECK(download<uint16_t>(*runtime, dy, want.size()) == want);
    }
  }
#endif
}

TEST_CASE("gpu half: resnet18 plans with half storage on the GPU run the CPU twin's nodes half and land near its logits") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
  runtime->set_precision(Precision::FP16);
  struct Restore {
    CudaRuntime* rt;
    ~Restore() { rt->set_precision(Precision::FP32); }
  } restore{runtime};
  const Graph plain(import_onnx((kResnet18 / "model.onnx").string()), "resnet18");
  const auto fused = plain.fused({});
  const HostTensor x = read_npy((kResnet18 / "input.npy").string());
  const std::string input = plain.values()[plain.input_ids()[0]].name;
  ThreadPool pool(2);
  PlanOptions cpu_half;
  cpu_half.channels_last = ChannelsLast::kHalf;
  Executor cpu(*fused, {{input, x.shape}}, pool, cpu_half);
  PlanOptions gpu_auto;  // fp16 runtime: half storage by default
  gpu_auto.cuda = runtime;
  Executor gpu(*fused, {{input, x.shape}}, pool, gpu_auto);
  // The same nodes run half unless cuDNN offers no fp16 NHWC algorithm for one (it then stays float32, with
  // conversions around it): printed, so a device run shows which.
  std::cout << "gpu half resnet18: " << gpu.stats().channels_last_nodes << " of " << cpu.stats().channels_last_nodes << " nodes half, "
            << gpu.stats().conversions << " conversions (CPU " << cpu.stats().conversions << ")\n";
  CHECK(gpu.stats().channels_last_nodes > cpu.stats().channels_last_nodes / 2);
  CHECK(gpu.stats().channels_last_nodes <= cpu.stats().channels_last_nodes);
  const int out = fused->output_ids()[0];
  cpu.set_input(input, x);
  cpu.forward();
  const HostTensor want = cpu.fetch(out);
  HostTensor runs[3];
  for (HostTensor& r : runs) {  // eager, captured, replayed
    gpu.set_input(input, x);
    gpu.forward();
    r = gpu.fetch(out);
  }
  const double scale = max_abs(want.f32(), want.numel());
  const double err = max_abs_diff(want.f32(), runs[0].f32(), want.numel()) / scale;
  std::cout << "gpu half resnet18 logits vs the CPU half twin: " << err << " of the largest logit\n";
  // Same roundings, different accumulation orders inside the convolutions: an ulp here and there, through ~20
  // layers; well under the 1e-2 that half storage itself keeps from float32 (test_channels_last.cpp).
  CHECK(err < 5e-3);
  CHECK(std::memcmp(runs[0].bytes.data(), runs[1].bytes.data(), runs[0].bytes.size()) == 0);
  CHECK(std::memcmp(runs[0].bytes.data(), runs[2].bytes.data(), runs[0].bytes.size()) == 0);
}

TEST_CASE("gpu channels-last: a float32 NHWC resnet18 plan at fp32 gives the CPU NCHW plan's logits") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
  runtime->set_precision(Precision::FP32);
  const Graph plain(import_onnx((kResnet18 / "model.onnx").string()), "resnet18");
  const auto fused = plain.fused({});
  const HostTensor x = read_npy((kResnet18 / "input.npy").string());
  const std::string input = plain.values()[plain.input_ids()[0]].name;
  ThreadPool pool(2);
  Executor cpu(*fused, {{input, x.shape}}, pool);
  PlanOptions nhwc;
  nhwc.cuda = runtime;
  nhwc.channels_last = ChannelsLast::kFloat;
  Executor gpu(*fused, {{input, x.shape}}, pool, nhwc);
  std::cout << "gpu channels-last float resnet18: " << gpu.stats().channels_last_nodes << " nodes NHWC, "
            << gpu.stats().conversions << " conversions\n";
  CHECK(gpu.stats().channels_last_nodes > 0);
  const int out = fused->output_ids()[0];
  cpu.set_input(input, x);
  cpu.forward();
  gpu.set_input(input, x);
  gpu.forward();
  const HostTensor want = cpu.fetch(out), got = gpu.fetch(out);
  const double err = max_abs_diff(want.f32(), got.f32(), want.numel()) / max_abs(want.f32(), want.numel());
  std::cout << "gpu channels-last float resnet18 logits vs CPU: " << err << " of the largest\n";
  CHECK(err < 1e-4);  // fp32 math in another summation order (test_gpu_models' fp32 bound)
}

TEST_CASE("gpu half: the Explainer at fp16 gives maps near the float32 CPU maps, bit-identical run to run") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
  runtime->set_precision(Precision::FP16);
  struct Restore {
    CudaRuntime* rt;
    ~Restore() { rt->set_precision(Precision::FP32); }
  } restore{runtime};
  const Graph graph(import_onnx((kResnet18 / "model.onnx").string()), "resnet18");
  const HostTensor x = read_npy((kResnet18 / "input.npy").string());
  ThreadPool pool(2);
  ExplainOptions options;
  options.methods = {"gradcam", "gradcampp", "layercam", "eigencam", "scorecam", "ablationcam", "guided-gradcam",
                     "smooth-gradcampp"};
  options.smooth_samples = 2;
  options.chunk = 16;
  Explainer cpu(graph, x.shape[0], options, pool);
  Explainer gpu(graph, x.shape[0], options, pool, runtime);
  CHECK(gpu.main_plan_stats().channels_last_nodes > 0);
  const Explanation want = cpu.run(x);
  Explanation runs[3];
  for (Explanation& r : runs) r = gpu.run(x);  // eager, captured, replayed
  CHECK(want.classes == runs[0].classes);
  REQUIRE(want.results.size() == runs[0].results.size());
  for (size_t i = 0; i < want.results.size(); ++i) {
    const std::string& method = want.results[i].method;
    CAPTURE(method);
    const HostTensor& a = want.results[i].maps;
    const HostTensor& b = runs[0].results[i].maps;
    REQUIRE(a.shape == b.shape);
    const double err = max_abs_diff(a.f32(), b.f32(), a.numel());
    std::cout << "gpu half explain " << method << ": max map difference vs float32 CPU " << err << "\n";
    CHECK(err < 5e-2);  // the bound of test_channels_last.cpp (half storage vs float32), same reasons
    for (int r = 1; r < 3; ++r)
      CHECK(std::memcmp(b.bytes.data(), runs[r].results[i].maps.bytes.data(), b.bytes.size()) == 0);
  }
}

TEST_CASE("gpu half: a Session's predictor shares the explainer's weights on the GPU, at fp32 and at fp16") {
  CAMRT_GPU_TEST_RUNTIME(runtime);  // (the sessions make their own runtimes; this only decides whether to skip)
  const std::string model = (fs::path(CAMRT_SOURCE_DIR) / "weights/models/fashion-canvas/model.json").string();
  ExplainOptions options;
  options.methods = {"gradcam"};
  Session cpu(model, 1, options, 2, Device::CPU);
  std::vector<float> x(static_cast<size_t>(checked_numel(cpu.input_shape())));
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  for (float& v : x) v = uniform(rng);
  const HostTensor want = cpu.predict_copy(x.data());
  const double scale = max_abs(want.f32(), want.numel());
  for (const Precision precision : {Precision::FP32, Precision::FP16}) {
    CAPTURE(precision_name(precision));
    Session gpu(model, 1, options, 2, Device::CUDA, precision);
    const HostTensor logits = gpu.predict_copy(x.data());
    const Explanation e = gpu.explain_copy(x.data());
    REQUIRE(logits.numel() == want.numel());
    const double err = max_abs_diff(logits.f32(), want.f32(), want.numel()) / scale;
    std::cout << "gpu session " << precision_name(precision) << ": logits vs CPU " << err << " of the largest\n";
    CHECK(err < (precision == Precision::FP32 ? 1e-4 : 1e-2));  // fp32: accumulation order; fp16: test_channels_last
    // The explainer's forward agrees with its own logits' argmax (at fp16 its plan keeps the layers after the
    // explained one float32 for their backward, so its logits may differ from the predictor's by fp16 rounding
    // and, on random noise, a close top-2 may swap: compare each with its own).
    int64_t best = 0;
    for (int64_t c = 1; c < e.logits.numel(); ++c) best = e.logits.f32()[c] > e.logits.f32()[best] ? c : best;
    CHECK(e.classes.at(0).at(0) == best);
    const double explain_err = max_abs_diff(e.logits.f32(), want.f32(), want.numel()) / scale;
    CHECK(explain_err < (precision == Precision::FP32 ? 1e-4 : 1e-2));
  }
}
