// GPU twins of channels-last storage against their CPU references: the NCHW float <-> NHWC half and NHWC float
// conversions (kernels/cuda/layout.cu vs kernels/cpu/layout.cpp) and max pooling over NHWC half and float data
// (kernels/cuda/pool.cu vs kernels/cpu/pool.cpp), bit for bit, over sizes that are not multiples of the 32-element
// tile, many images (more tiles than the grid has blocks) and the pooling geometries of real networks.
// Without a device, or in a CPU-only build, every case prints SKIPPED and passes.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "tests/gpu_test_util.h"

#ifdef CAMRT_WITH_CUDA
#include "kernels/cpu/half.h"
#include "kernels/cpu/layout.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/pool.h"
#include "kernels/cuda/layout.h"
#include "kernels/cuda/pool.h"

using namespace camrt;

namespace {

template <typename T>
DeviceBuffer upload(CudaRuntime& rt, const std::vector<T>& host) {
  DeviceBuffer d(rt, host.size() * sizeof(T), "test data");
  if (!host.empty()) copy_to_device(rt, d.data(), host.data(), host.size() * sizeof(T));
  return d;
}
template <typename T>
std::vector<T> download(CudaRuntime& rt, const DeviceBuffer& d, size_t n) {
  std::vector<T> host(n);
  if (n > 0) copy_to_host(rt, host.data(), d.data(), n * sizeof(T));  // synchronizes: kernel errors surface here
  return host;
}
template <typename T>
T* as(const DeviceBuffer& d) {
  return reinterpret_cast<T*>(d.data());
}

bool half_is_nan(uint16_t h) { return (h & 0x7fffu) > 0x7c00u; }

// Bit equality, except that any NaN matches any NaN: the CPU keeps a NaN's payload through a conversion, while
// the GPU's cvt instructions may return the canonical NaN. Max pooling converts nothing, so it is compared
// with plain ==.
int64_t count_not_identical(const std::vector<uint16_t>& got, const std::vector<uint16_t>& want) {
  REQUIRE(got.size() == want.size());
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i)
    bad += half_is_nan(want[i]) ? !half_is_nan(got[i]) : got[i] != want[i];
  return bad;
}
int64_t count_not_identical(const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i)
    bad += std::isnan(want[i]) ? !std::isnan(got[i]) : std::memcmp(&got[i], &want[i], sizeof(float)) != 0;
  return bad;
}

// Floats that exercise every branch of the rounding: magnitudes from 2^-27 (rounds to 0) through the subnormal
// halves to above 65520 (infinity), exact midpoints between neighbouring halves (ties to even), and specials.
std::vector<float> rounding_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> exponent(-27, 17);
  std::uniform_real_distribution<float> mantissa(1.f, 2.f);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    float x = std::ldexp(mantissa(rng), exponent(rng));
    if (i % 7 == 0) {  // a midpoint: half-way between a half below 65504 and the next one up
      const uint16_t h = float_to_half(x) & 0x7fffu;
      if (h < 0x7BFF) x = static_cast<float>((double(half_to_float(h)) + double(half_to_float(h + 1))) / 2);
    }
    if (i % 101 == 5) x = std::numeric_limits<float>::quiet_NaN();
    if (i % 101 == 9) x = std::numeric_limits<float>::infinity();
    if (i % 101 == 13) x = 0.f;
    v[i] = (rng() & 1u) ? -x : x;
  }
  return v;
}

// Every half pattern (NaNs and infinities included), in a scrambled order: 40503 is odd, so i * 40503 mod 2^16
// visits all 65536 patterns once every 65536 elements.
std::vector<uint16_t> all_halves(size_t n) {
  std::vector<uint16_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint16_t>((i * 40503u) & 0xffffu);
  return v;
}

// Random float bit patterns, every class included: NaNs of any sign and payload (signalling ones too),
// infinities, subnormals, +-0. The float32 paths only move and compare them, so they are compared bit for bit.
std::vector<float> random_float_bits(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<float> v(n);
  for (float& f : v) {
    const uint32_t b = static_cast<uint32_t>(rng());
    std::memcpy(&f, &b, sizeof(f));
  }
  return v;
}

std::vector<uint32_t> bits_of(const std::vector<float>& v) {
  std::vector<uint32_t> b(v.size());
  if (!v.empty()) std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
  return b;
}

struct PoolCase {
  const char* name;
  std::array<int64_t, 3> in, kernel, stride, dilation, pad_begin, pad_end;
  bool ceil_mode;
};

// Output sizes by the ONNX rule (as engine/ops/pool.cpp computes them for explicit pads).
PoolGeometry geometry_of(const PoolCase& c, int64_t planes) {
  PoolGeometry g;
  g.planes = planes;
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
    if (c.ceil_mode && (o - 1) * c.stride[a] >= c.in[a] + c.pad_begin[a]) --o;  // the last window starts inside
    g.out[a] = o;
  }
  return g;
}

const std::vector<PoolCase>& pool_cases() {
  static const std::vector<PoolCase> cases = {
      {"ResNet stem 3x3/2 pad 1", {1, 13, 15}, {1, 3, 3}, {1, 2, 2}, {1, 1, 1}, {0, 1, 1}, {0, 1, 1}, false},
      {"VGG 2x2/2", {1, 8, 8}, {1, 2, 2}, {1, 2, 2}, {1, 1, 1}, {0, 0, 0}, {0, 0, 0}, false},
      {"ceil mode, windows past the end", {1, 8, 9}, {1, 3, 3}, {1, 2, 2}, {1, 1, 1}, {0, 0, 0}, {0, 0, 0}, true},
      {"dilation 2, asymmetric pads", {1, 9, 11}, {1, 3, 3}, {1, 1, 2}, {1, 2, 2}, {0, 2, 1}, {0, 1, 2}, false},
      {"windows entirely in padding", {1, 4, 5}, {1, 2, 2}, {1, 1, 1}, {1, 1, 1}, {0, 2, 2}, {0, 2, 2}, false},
      {"1-D", {1, 1, 17}, {1, 1, 4}, {1, 1, 3}, {1, 1, 1}, {0, 0, 2}, {0, 0, 1}, true},
      {"3-D", {5, 6, 7}, {2, 3, 2}, {2, 1, 2}, {1, 2, 1}, {1, 0, 1}, {0, 1, 1}, true},
  };
  return cases;
}

struct Batch {
  int64_t images, channels;
};
// Channel counts below, at and above a warp, and a large image count.
constexpr Batch kPoolBatches[] = {{1, 1}, {2, 3}, {1, 33}, {2, 64}, {3000, 5}};

}  // namespace
#endif  // CAMRT_WITH_CUDA

TEST_CASE("gpu: NCHW float <-> NHWC half conversions equal the CPU twins bit for bit") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  ThreadPool pool(2);
  struct Size {
    int64_t images, channels, positions;
  };
  // Tile-aligned and ragged sizes, one channel or one position, a ResNet stem input and activation, conv
  // weights (OIHW -> OHWI: images = 64 output channels), 70000 images (tiles past 65535, which a y or z grid
  // dimension could not hold) and 600000 images (more tiles than the grid's block cap: blocks loop).
  const Size sizes[] = {{1, 1, 1},     {2, 3, 4},       {3, 33, 49},    {2, 32, 64},    {4, 100, 33},
                        {5, 7, 1},     {1, 1, 1000},    {1000, 1, 1},   {1, 3, 50176},  {2, 64, 3136},
                        {64, 3, 49},   {70000, 3, 5},   {600000, 2, 2}};
  for (const Size& s : sizes) {
    INFO("images " << s.images << ", channels " << s.channels << ", positions " << s.positions);
    const size_t n = static_cast<size_t>(s.images * s.channels * s.positions);

    const std::vector<float> x = rounding_floats(n, static_cast<uint32_t>(n));
    std::vector<uint16_t> want_half(n);
    nchw_to_nhwc(want_half.data(), x.data(), s.images, s.channels, s.positions, pool);
    const DeviceBuffer x_d = upload(rt, x);
    DeviceBuffer half_d(rt, n * sizeof(uint16_t), "nhwc half");
    cuda::nchw_to_nhwc(as<uint16_t>(half_d), as<float>(x_d), s.images, s.channels, s.positions, rt.stream());
    CHECK(count_not_identical(download<uint16_t>(rt, half_d, n), want_half) == 0);

    const std::vector<uint16_t> h = all_halves(n);
    std::vector<float> want_float(n);
    nhwc_to_nchw(want_float.data(), h.data(), s.images, s.channels, s.positions, pool);
    const DeviceBuffer h_d = upload(rt, h);
    DeviceBuffer float_d(rt, n * sizeof(float), "nchw float");
    cuda::nhwc_to_nchw(as<float>(float_d), as<uint16_t>(h_d), s.images, s.channels, s.positions, rt.stream());
    CHECK(count_not_identical(download<float>(rt, float_d, n), want_float) == 0);

    // And back on the device: half -> float -> half returns every non-NaN pattern unchanged.
    DeviceBuffer again_d(rt, n * sizeof(uint16_t), "nhwc half again");
    cuda::nchw_to_nhwc(as<uint16_t>(again_d), as<float>(float_d), s.images, s.channels, s.positions, rt.stream());
    CHECK(count_not_identical(download<uint16_t>(rt, again_d, n), h) == 0);
  }
  // Empty sizes launch nothing (and so do not fail on null pointers).
  cuda::nchw_to_nhwc(static_cast<uint16_t*>(nullptr), nullptr, 0, 3, 4, rt.stream());
  cuda::nhwc_to_nchw(nullptr, static_cast<const uint16_t*>(nullptr), 2, 0, 4, rt.stream());
  cuda::nhwc_to_nchw(nullptr, static_cast<const uint16_t*>(nullptr), 2, 3, 0, rt.stream());
  rt.synchronize();
#endif
}

TEST_CASE("gpu: NCHW float <-> NHWC float conversions equal the CPU twins bit for bit, NaN payloads included") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  ThreadPool pool(2);
  struct Size {
    int64_t images, channels, positions;
  };
  // The half test's sizes, less the largest ones (the tiling is the same code; float doubles the bytes).
  const Size sizes[] = {{1, 1, 1},    {2, 3, 4},    {3, 33, 49},    {2, 32, 64},  {4, 100, 33}, {5, 7, 1},
                        {1, 1, 1000}, {1000, 1, 1}, {1, 3, 50176},  {2, 64, 3136}, {64, 3, 49}, {70000, 3, 5},
                        {300000, 2, 2}};
  for (const Size& s : sizes) {
    INFO("images " << s.images << ", channels " << s.channels << ", positions " << s.positions);
    const size_t n = static_cast<size_t>(s.images * s.channels * s.positions);
    // Nothing is converted: loads and stores move the bits, so even a signalling NaN comes back unchanged.
    const std::vector<float> x = random_float_bits(n, static_cast<uint32_t>(n) + 3);
    std::vector<float> want_nhwc(n);
    nchw_to_nhwc(want_nhwc.data(), x.data(), s.images, s.channels, s.positions, pool);
    const DeviceBuffer x_d = upload(rt, x);
    DeviceBuffer nhwc_d(rt, n * sizeof(float), "nhwc float");
    cuda::nchw_to_nhwc(as<float>(nhwc_d), as<float>(x_d), s.images, s.channels, s.positions, rt.stream());
    CHECK(bits_of(download<float>(rt, nhwc_d, n)) == bits_of(want_nhwc));

    std::vector<float> want_nchw(n);
    nhwc_to_nchw(want_nchw.data(), x.data(), s.images, s.channels, s.positions, pool);
    DeviceBuffer nchw_d(rt, n * sizeof(float), "nchw float");
    cuda::nhwc_to_nchw(as<float>(nchw_d), as<float>(x_d), s.images, s.channels, s.positions, rt.stream());
    CHECK(bits_of(download<float>(rt, nchw_d, n)) == bits_of(want_nchw));

    // And back on the device: NCHW -> NHWC -> NCHW returns x.
    cuda::nhwc_to_nchw(as<float>(nchw_d), as<float>(nhwc_d), s.images, s.channels, s.positions, rt.stream());
    CHECK(bits_of(download<float>(rt, nchw_d, n)) == bits_of(x));
  }
  cuda::nchw_to_nhwc(static_cast<float*>(nullptr), nullptr, 0, 3, 4, rt.stream());  // no launch
  cuda::nhwc_to_nchw(nullptr, static_cast<const float*>(nullptr), 2, 0, 4, rt.stream());
  rt.synchronize();
#endif
}

TEST_CASE("gpu: max pool over NHWC half data equals the CPU twin bit for bit") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  ThreadPool pool(2);
  const std::vector<PoolCase>& cases = pool_cases();
  for (const PoolCase& c : cases) {
    for (const Batch& b : kPoolBatches) {
      const PoolGeometry g = geometry_of(c, b.images * b.channels);
      const size_t n_in = static_cast<size_t>(b.images * b.channels * g.in_plane());
      const size_t n_out = static_cast<size_t>(b.images * b.channels * g.out_plane());
      for (int data = 0; data < 2; ++data) {
        INFO(c.name << ", images " << b.images << ", channels " << b.channels << ", data " << data);
        // 0: every half pattern, NaNs (signalling ones too) and infinities included; 1: a coarse grid of values
        // with many ties, +0 / -0 among them.
        std::vector<uint16_t> x = all_halves(n_in);
        if (data == 1)
          for (size_t k = 0; k < n_in; ++k)
            x[k] = float_to_half(k % 29 == 3 ? -0.f : static_cast<float>(static_cast<int>((k * 7919u) % 16) - 8) / 4.f);
        std::vector<uint16_t> want(n_out);
        max_pool_forward_nhwc(want.data(), x.data(), b.images, b.channels, g, pool);
        const DeviceBuffer x_d = upload(rt, x);
        DeviceBuffer y_d(rt, n_out * sizeof(uint16_t), "pool output");
        cuda::max_pool_forward_nhwc(as<uint16_t>(y_d), as<uint16_t>(x_d), b.images, b.channels, g, rt.stream());
        const std::vector<uint16_t> got = download<uint16_t>(rt, y_d, n_out);
        int64_t bad = 0;
        for (size_t k = 0; k < n_out; ++k) bad += got[k] != want[k];  // NaNs too: nothing is converted
        CHECK(bad == 0);
      }
    }
  }
  cuda::max_pool_forward_nhwc(static_cast<uint16_t*>(nullptr), nullptr, 0, 3, geometry_of(cases[0], 0),
                              rt.stream());  // no launch
  rt.synchronize();
#endif
}

TEST_CASE("gpu: max pool over NHWC float data equals the CPU twin bit for bit") {
  CAMRT_GPU_TEST_RUNTIME(runtime);
#ifdef CAMRT_WITH_CUDA
  CudaRuntime& rt = *runtime;
  ThreadPool pool(2);
  // The CPU twin equals max_pool_forward on NCHW bit for bit (tests/test_half_layout.cpp); here the GPU must
  // equal the CPU twin, NaN payloads included: max only selects, nothing is converted.
  for (const PoolCase& c : pool_cases()) {
    for (const Batch& b : kPoolBatches) {
      const PoolGeometry g = geometry_of(c, b.images * b.channels);
      const size_t n_in = static_cast<size_t>(b.images * b.channels * g.in_plane());
      const size_t n_out = static_cast<size_t>(b.images * b.channels * g.out_plane());
      for (int data = 0; data < 2; ++data) {
        INFO(c.name << ", images " << b.images << ", channels " << b.channels << ", data " << data);
        // 0: random float patterns, NaNs (about 1 in 256, signalling ones too) and infinities included; 1: a
        // coarse grid of values with many ties, +0 / -0 among them.
        std::vector<float> x = random_float_bits(n_in, static_cast<uint32_t>(n_in));
        if (data == 1)
          for (size_t k = 0; k < n_in; ++k)
            x[k] = k % 29 == 3 ? -0.f : static_cast<float>(static_cast<int>((k * 7919u) % 16) - 8) / 4.f;
        std::vector<float> want(n_out);
        max_pool_forward_nhwc(want.data(), x.data(), b.images, b.channels, g, pool);
        const DeviceBuffer x_d = upload(rt, x);
        DeviceBuffer y_d(rt, n_out * sizeof(float), "pool output");
        cuda::max_pool_forward_nhwc(as<float>(y_d), as<float>(x_d), b.images, b.channels, g, rt.stream());
        CHECK(bits_of(download<float>(rt, y_d, n_out)) == bits_of(want));
      }
    }
  }
  cuda::max_pool_forward_nhwc(static_cast<float*>(nullptr), nullptr, 0, 3, geometry_of(pool_cases()[0], 0),
                              rt.stream());  // no launch
  rt.synchronize();
#endif
}
