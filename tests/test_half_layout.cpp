// Channels-last storage on the CPU: the float <-> half conversions of kernels/cpu/half.h (exhaustively over the
// 65536 half patterns, against known values, the nearest-even rule and the binary16 formula), the NCHW float <->
// NHWC half and NHWC float transposes of kernels/cpu/layout.h, and max pooling over NHWC data against the NCHW
// float max pool (kernels/cpu/pool.h): float_to_half of it for half, the very bits for float.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/layout.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/pool.h"

using namespace camrt;

namespace {

bool half_is_nan(uint16_t h) { return (h & 0x7fffu) > 0x7c00u; }

uint32_t float_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}

float float_from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

// Random half patterns that are numbers (no NaN), +-0 and infinities included.
std::vector<uint16_t> random_halves(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint16_t> v(n);
  for (uint16_t& h : v) {
    do h = static_cast<uint16_t>(rng() & 0xffffu);
    while (half_is_nan(h));
  }
  return v;
}

// Random float bit patterns: every class (subnormals, infinities, +-0, and with nans, NaNs of any sign and payload,
// signalling ones too) turns up.
std::vector<float> random_float_bits(size_t n, uint32_t seed, bool nans) {
  std::mt19937 rng(seed);
  std::vector<float> v(n);
  for (float& f : v) {
    do f = float_from_bits(static_cast<uint32_t>(rng()));
    while (!nans && std::isnan(f));
  }
  return v;
}

std::vector<uint32_t> bits_of(const std::vector<float>& v) {
  std::vector<uint32_t> b(v.size());
  if (!v.empty()) std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
  return b;
}

// Values in [-levels, levels) / 4 on a coarse grid, as halves: many exact ties inside pooling windows; every
// 29th is -0 so +0 / -0 ties (equal values, different bits) occur too.
std::vector<uint16_t> tied_halves(size_t n, uint32_t seed, int levels = 8) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(-levels, levels - 1);
  std::vector<uint16_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = float_to_half(i % 29 == 3 ? -0.f : static_cast<float>(dist(rng)) / 4.f);
  return v;
}

}  // namespace

// ---------------- float <-> half ----------------

TEST_CASE("half: every half pattern round-trips half -> float -> half; NaNs stay NaN, quiet, sign and payload kept") {
  int64_t bad = 0, nans = 0;
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const uint16_t h = static_cast<uint16_t>(bits);
    const float f = half_to_float(h);
    const uint16_t back = float_to_half(f);
    if (half_is_nan(h)) {
      ++nans;
      bad += !(std::isnan(f) && back == (h | 0x0200u));
    } else {
      bad += back != h;
    }
  }
  CHECK(bad == 0);
  CHECK(nans == 2 * 1023);  // exponent 31 with a non-zero mantissa, both signs: the loop saw them all
}

TEST_CASE("half: half_to_float gives the IEEE binary16 value of all 65536 patterns, by the formula") {
  // sign * 2^(e - 15) * (1 + m / 1024) for normal exponents, sign * 2^-14 * m / 1024 for e = 0; computed in
  // double with ldexp (exact), independently of the bit manipulation under test. HostTensor's F16 decoding (the
  // .safetensors/.npy reader) goes through half_to_float too, so this covers it.
  int64_t bad = 0;
  for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const uint32_t e = (bits >> 10) & 0x1fu, m = bits & 0x3ffu;
    const double sign = (bits & 0x8000u) ? -1.0 : 1.0;
    const float got = half_to_float(static_cast<uint16_t>(bits));
    if (e == 31) {
      bad += m == 0 ? !(std::isinf(got) && std::signbit(got) == (sign < 0)) : !std::isnan(got);
      continue;
    }
    const double want = e == 0 ? sign * std::ldexp(double(m), -24) : sign * std::ldexp(1024.0 + m, int(e) - 25);
    bad += float_bits(got) != float_bits(static_cast<float>(want));
  }
  CHECK(bad == 0);
  HostTensor t(DType::F16, {2});
  const uint16_t pair[2] = {0x3C00, 0x8001};
  std::memcpy(t.bytes.data(), pair, sizeof(pair));
  CHECK(t.to_float() == std::vector<float>{1.f, -std::ldexp(1.f, -24)});
}

TEST_CASE("half: known conversions, overflow, subnormals and ties to even") {
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(float_to_half(1.0f) == 0x3C00);
  CHECK(float_to_half(-2.0f) == 0xC000);
  CHECK(float_to_half(0.0f) == 0x0000);
  CHECK(float_to_half(-0.0f) == 0x8000);
  CHECK(float_to_half(65504.f) == 0x7BFF);     // largest finite half
  CHECK(float_to_half(65519.99f) == 0x7BFF);   // below the midpoint 65520 of 65504 and 65536
  CHECK(float_to_half(65520.f) == 0x7C00);     // the midpoint ties to the even side: infinity
  CHECK(float_to_half(-65520.f) == 0xFC00);
  CHECK(float_to_half(1e10f) == 0x7C00);
  CHECK(float_to_half(inf) == 0x7C00);
  CHECK(float_to_half(-inf) == 0xFC00);
  CHECK(half_is_nan(float_to_half(std::numeric_limits<float>::quiet_NaN())));
  CHECK(half_is_nan(float_to_half(-std::numeric_limits<float>::quiet_NaN())));
  CHECK((float_to_half(-std::numeric_limits<float>::quiet_NaN()) & 0x8000) != 0);  // sign kept
  // Subnormals: 2^-24 is the smallest; 2^-25 is the midpoint of 0 and 2^-24 and ties to the even 0.
  CHECK(float_to_half(std::ldexp(1.f, -24)) == 0x0001);
  CHECK(float_to_half(std::ldexp(1.f, -25)) == 0x0000);
  CHECK(float_to_half(-std::ldexp(1.f, -25)) == 0x8000);
  CHECK(float_to_half(std::nextafter(std::ldexp(1.f, -25), 1.f)) == 0x0001);  // just above the midpoint
  CHECK(float_to_half(std::ldexp(1.5f, -25)) == 0x0001);
  CHECK(float_to_half(std::ldexp(3.f, -25)) == 0x0002);   // 1.5 * 2^-24: tie between 1 and 2, to even 2
  CHECK(float_to_half(std::ldexp(5.f, -25)) == 0x0002);   // 2.5 * 2^-24: tie between 2 and 3, to even 2
  CHECK(float_to_half(std::ldexp(1.f, -14)) == 0x0400);   // smallest normal
  CHECK(float_to_half(std::nextafter(std::ldexp(1.f, -14), 0.f)) == 0x0400);  // rounds up across the boundary
  CHECK(float_to_half(std::ldexp(1023.5f, -24)) == 0x0400);  // tie between 0x3FF (odd) and 0x400: to 0x400
  CHECK(float_to_half(std::ldexp(1022.5f, -24)) == 0x03FE);  // tie between 0x3FE (even) and 0x3FF
  CHECK(float_to_half(std::ldexp(1023.f, -24)) == 0x03FF);   // largest subnormal, exact
  // Normals: the spacing above 1 is 2^-10; midpoints go to the even mantissa.
  CHECK(float_to_half(1.f + std::ldexp(1.f, -11)) == 0x3C00);
  CHECK(float_to_half(1.f + std::ldexp(3.f, -11)) == 0x3C02);
  CHECK(float_to_half(1.f + std::ldexp(1.f, -10)) == 0x3C01);
  CHECK(float_to_half(std::nextafter(1.f + std::ldexp(1.f, -11), 2.f)) == 0x3C01);  // above the midpoint
  CHECK(float_to_half(2047.5f) == 0x6800);  // 2047.5: tie between 2047 (odd) and 2048: 2048 = 0x6800
  CHECK(float_to_half(0.1f) == 0x2E66);     // 0.0999755859375, the nearest half
  // The other way, exact.
  CHECK(half_to_float(0x3C00) == 1.f);
  CHECK(half_to_float(0xC000) == -2.f);
  CHECK(half_to_float(0x7BFF) == 65504.f);
  CHECK(half_to_float(0x0001) == std::ldexp(1.f, -24));
  CHECK(half_to_float(0x03FF) == std::ldexp(1023.f, -24));
  CHECK(half_to_float(0x7C00) == inf);
  CHECK(half_to_float(0xFC00) == -inf);
  CHECK(float_bits(half_to_float(0x8000)) == 0x80000000u);
}

TEST_CASE("half: float_to_half picks the nearest half (ties to even) for random floats in range") {
  std::mt19937 rng(1234);
  // Log-uniform magnitudes from 2^-26 (under the smallest subnormal) to just below 65520 (the overflow
  // threshold), both signs, random low mantissa bits; every 16th value is an exact midpoint between halves.
  std::uniform_int_distribution<int> exponent(-26, 15);
  std::uniform_real_distribution<float> mantissa(1.f, 2.f);
  int64_t bad = 0, ties = 0;
  for (int n = 0; n < 200000; ++n) {
    float x = std::ldexp(mantissa(rng), exponent(rng));
    if (std::fabs(x) >= 65520.f) x = 65519.f;
    if (n % 16 == 0) {  // a midpoint: a half plus half its spacing above
      const uint16_t h = float_to_half(x) & 0x7fffu;
      if (h < 0x7BFF) x = static_cast<float>((double(half_to_float(h)) + double(half_to_float(h + 1))) / 2);
    }
    if (rng() & 1u) x = -x;
    const uint16_t h = float_to_half(x);
    const double r = half_to_float(h), xd = x;
    const uint16_t magnitude = h & 0x7fffu;
    REQUIRE(magnitude < 0x7C00);  // in range: never infinity
    if (magnitude == 0) {  // +-0: x must lie at or below the midpoint 2^-25 of 0 and the smallest subnormal
      bad += !(std::fabs(xd) <= std::ldexp(1.0, -25));
      continue;
    }
    // The neighbouring halves on either side (same sign); the result must be at least as close as both.
    const double below = half_to_float(static_cast<uint16_t>(h - 1));
    const double above = half_to_float(static_cast<uint16_t>(h + 1));  // 0x7BFF + 1 is infinity: farther anyway
    const double err = std::fabs(r - xd);
    bad += !(err <= std::fabs(below - xd) && err <= std::fabs(above - xd));
    // Half an ulp: the spacing to the nearer neighbour in x's direction bounds twice the error.
    const double spacing = (std::fabs(xd) >= std::fabs(r)) ? std::fabs(above - r) : std::fabs(r - below);
    bad += !(2 * err <= spacing);
    if (err == std::fabs(below - xd) || err == std::fabs(above - xd)) {  // an exact tie: the even mantissa won
      ++ties;
      bad += (h & 1u) != 0;
    }
  }
  CHECK(bad == 0);
  CHECK(ties > 10000);  // the midpoints were produced and checked
}

// ---------------- NCHW float <-> NHWC half ----------------

TEST_CASE("half layout: a hand-made 2 x 3 x 4 example lands every element at its NHWC position") {
  const int64_t N = 2, C = 3, P = 4;
  std::vector<float> nchw(static_cast<size_t>(N * C * P));
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t p = 0; p < P; ++p) nchw[static_cast<size_t>((i * C + c) * P + p)] = float(100 * i + 10 * c + p);
  ThreadPool pool(1);
  std::vector<uint16_t> nhwc(nchw.size(), 0xffff);
  nchw_to_nhwc(nhwc.data(), nchw.data(), N, C, P, pool);
  // Position by position: image 0 position 0 holds channels 0, 10, 20; image 1 position 3 holds 103, 113, 123.
  const float expected[] = {0, 10, 20, 1, 11, 21, 2, 12, 22, 3, 13, 23,
                            100, 110, 120, 101, 111, 121, 102, 112, 122, 103, 113, 123};
  for (size_t k = 0; k < nhwc.size(); ++k) {
    INFO("element " << k);
    CHECK(half_to_float(nhwc[k]) == expected[k]);
  }
  CHECK(nhwc[1] == 0x4900);  // 10.0 in half bits
  std::vector<float> back(nchw.size(), -1.f);
  nhwc_to_nchw(back.data(), nhwc.data(), N, C, P, pool);
  CHECK(back == nchw);
}

TEST_CASE("half layout: odd sizes round-trip exactly, round once, and do not depend on the thread count") {
  ThreadPool one(1), three(3);
  struct Size {
    int64_t images, channels, positions;
  };
  // Odd channel and position counts around the 32-element tile; the last one is large enough that three
  // threads really split it (the chunk minimum is 2^15 elements).
  const Size sizes[] = {{1, 1, 1}, {2, 1, 49}, {3, 7, 1}, {2, 7, 49}, {1, 33, 49}, {3, 33, 1}, {2, 33, 7},
                        {4, 64, 3}, {2, 70, 1000}};
  for (const Size& s : sizes) {
    INFO("images " << s.images << ", channels " << s.channels << ", positions " << s.positions);
    const size_t n = static_cast<size_t>(s.images * s.channels * s.positions);
    // Exactly representable: floats of random (non-NaN) half patterns.
    const std::vector<uint16_t> halves = random_halves(n, 7 + static_cast<uint32_t>(n));
    std::vector<float> nchw(n);
    for (size_t k = 0; k < n; ++k) nchw[k] = half_to_float(halves[k]);
    std::vector<uint16_t> nhwc1(n), nhwc3(n);
    nchw_to_nhwc(nhwc1.data(), nchw.data(), s.images, s.channels, s.positions, one);
    nchw_to_nhwc(nhwc3.data(), nchw.data(), s.images, s.channels, s.positions, three);
    CHECK(nhwc1 == nhwc3);
    std::vector<float> back1(n), back3(n);
    nhwc_to_nchw(back1.data(), nhwc1.data(), s.images, s.channels, s.positions, one);
    nhwc_to_nchw(back3.data(), nhwc1.data(), s.images, s.channels, s.positions, three);
    int64_t bad = 0;
    for (size_t k = 0; k < n; ++k) bad += float_bits(back1[k]) != float_bits(nchw[k]) || float_bits(back3[k]) != float_bits(nchw[k]);
    CHECK(bad == 0);

    // Values that need rounding (and a NaN, infinities, overflow): each output is float_to_half of its input.
    std::mt19937 rng(99);
    std::uniform_real_distribution<float> dist(-70000.f, 70000.f);
    std::vector<float> rough(n);
    for (size_t k = 0; k < n; ++k) rough[k] = (k % 5 == 0) ? dist(rng) : dist(rng) * 1e-4f;
    rough[0] = std::numeric_limits<float>::quiet_NaN();
    if (n > 1) rough[n - 1] = -std::numeric_limits<float>::infinity();
    nchw_to_nhwc(nhwc3.data(), rough.data(), s.images, s.channels, s.positions, three);
    bad = 0;
    for (int64_t i = 0; i < s.images; ++i)
      for (int64_t c = 0; c < s.channels; ++c)
        for (int64_t p = 0; p < s.positions; ++p) {
          const uint16_t got = nhwc3[static_cast<size_t>((i * s.positions + p) * s.channels + c)];
          bad += got != float_to_half(rough[static_cast<size_t>((i * s.channels + c) * s.positions + p)]);
        }
    CHECK(bad == 0);
  }
}

TEST_CASE("half layout: empty sizes write nothing; negative sizes are refused") {
  ThreadPool pool(2);
  uint16_t h = 0x1234;
  float f = 5.f;
  nchw_to_nhwc(&h, &f, 0, 3, 4, pool);
  nchw_to_nhwc(&h, &f, 2, 0, 4, pool);
  nhwc_to_nchw(&f, &h, 2, 3, 0, pool);
  CHECK(h == 0x1234);
  CHECK(f == 5.f);
  CHECK_THROWS(nchw_to_nhwc(&h, &f, -1, 3, 4, pool));
  CHECK_THROWS(nhwc_to_nchw(&f, &h, 1, -3, 4, pool));
}

// ---------------- NCHW float <-> NHWC float ----------------

TEST_CASE("float layout: a hand-made 2 x 3 x 4 example lands every element at its NHWC position, and back") {
  const int64_t N = 2, C = 3, P = 4;
  std::vector<float> nchw(static_cast<size_t>(N * C * P));
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t p = 0; p < P; ++p)
        nchw[static_cast<size_t>((i * C + c) * P + p)] = float(100 * i + 10 * c + p) + 0.125f;
  ThreadPool pool(1);
  std::vector<float> nhwc(nchw.size(), -1.f);
  nchw_to_nhwc(nhwc.data(), nchw.data(), N, C, P, pool);
  // Position by position: image 0 position 0 holds channels 0, 10, 20; image 1 position 3 holds 103, 113, 123
  // (each + 0.125, which half could not keep at 123.125: the float path does not round).
  const std::vector<float> expected = {0, 10, 20, 1, 11, 21, 2, 12, 22, 3, 13, 23,
                                       100, 110, 120, 101, 111, 121, 102, 112, 122, 103, 113, 123};
  for (size_t k = 0; k < nhwc.size(); ++k) {
    INFO("element " << k);
    CHECK(nhwc[k] == expected[k] + 0.125f);
  }
  std::vector<float> back(nchw.size(), -1.f);
  nhwc_to_nchw(back.data(), nhwc.data(), N, C, P, pool);
  CHECK(back == nchw);
}

TEST_CASE("float layout: odd sizes land every bit pattern, NaN payloads too, and do not depend on the thread count") {
  ThreadPool one(1), three(3);
  struct Size {
    int64_t images, channels, positions;
  };
  // As for half: odd counts around the 32-element tile, and one size that three threads really split.
  const Size sizes[] = {{1, 1, 1}, {2, 1, 49}, {3, 7, 1}, {2, 7, 49}, {1, 33, 49}, {3, 33, 1}, {2, 33, 7},
                        {4, 64, 3}, {2, 70, 1000}};
  for (const Size& s : sizes) {
    INFO("images " << s.images << ", channels " << s.channels << ", positions " << s.positions);
    const size_t n = static_cast<size_t>(s.images * s.channels * s.positions);
    std::vector<float> nchw = random_float_bits(n, 11 + static_cast<uint32_t>(n), true);
    nchw[0] = float_from_bits(0x7f800001u);  // a signalling NaN: copied, not quieted
    const std::vector<uint32_t> nchw_bits = bits_of(nchw);
    std::vector<float> nhwc1(n), nhwc3(n);
    nchw_to_nhwc(nhwc1.data(), nchw.data(), s.images, s.channels, s.positions, one);
    nchw_to_nhwc(nhwc3.data(), nchw.data(), s.images, s.channels, s.positions, three);
    const std::vector<uint32_t> nhwc_bits = bits_of(nhwc1);
    CHECK(bits_of(nhwc3) == nhwc_bits);
    int64_t bad = 0;
    for (int64_t i = 0; i < s.images; ++i)
      for (int64_t c = 0; c < s.channels; ++c)
        for (int64_t p = 0; p < s.positions; ++p)
          bad += nhwc_bits[static_cast<size_t>((i * s.positions + p) * s.channels + c)] !=
                 nchw_bits[static_cast<size_t>((i * s.channels + c) * s.positions + p)];
    CHECK(bad == 0);
    std::vector<float> back1(n), back3(n);
    nhwc_to_nchw(back1.data(), nhwc1.data(), s.images, s.channels, s.positions, one);
    nhwc_to_nchw(back3.data(), nhwc1.data(), s.images, s.channels, s.positions, three);
    CHECK(bits_of(back1) == nchw_bits);
    CHECK(bits_of(back3) == nchw_bits);
  }
}

TEST_CASE("float layout: empty sizes write nothing; negative sizes are refused") {
  ThreadPool pool(2);
  float a = 3.f, b = 5.f;
  nchw_to_nhwc(&a, &b, 0, 3, 4, pool);
  nchw_to_nhwc(&a, &b, 2, 0, 4, pool);
  nhwc_to_nchw(&b, &a, 2, 3, 0, pool);
  CHECK(a == 3.f);
  CHECK(b == 5.f);
  CHECK_THROWS(nchw_to_nhwc(&a, &b, -1, 3, 4, pool));
  CHECK_THROWS(nhwc_to_nchw(&b, &a, 1, -3, 4, pool));
}

// ---------------- max pool over NHWC half ----------------

namespace {

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

const std::vector<PoolCase>& half_pool_cases() {
  static const std::vector<PoolCase> cases = {
      {"ResNet stem 3x3/2 pad 1", {1, 13, 15}, {1, 3, 3}, {1, 2, 2}, {1, 1, 1}, {0, 1, 1}, {0, 1, 1}, false},
      {"VGG 2x2/2", {1, 8, 8}, {1, 2, 2}, {1, 2, 2}, {1, 1, 1}, {0, 0, 0}, {0, 0, 0}, false},
      {"ceil mode, windows past the end", {1, 8, 9}, {1, 3, 3}, {1, 2, 2}, {1, 1, 1}, {0, 0, 0}, {0, 0, 0}, true},
      {"dilation 2, asymmetric pads", {1, 9, 11}, {1, 3, 3}, {1, 1, 2}, {1, 2, 2}, {0, 2, 1}, {0, 1, 2}, false},
      {"windows entirely in padding", {1, 4, 5}, {1, 2, 2}, {1, 1, 1}, {1, 1, 1}, {0, 2, 2}, {0, 2, 2}, false},
      {"kernel larger than the input", {1, 5, 6}, {1, 7, 7}, {1, 1, 1}, {1, 1, 1}, {0, 3, 3}, {0, 3, 3}, false},
      {"1-D", {1, 1, 17}, {1, 1, 4}, {1, 1, 3}, {1, 1, 1}, {0, 0, 2}, {0, 0, 1}, true},
      {"3-D", {5, 6, 7}, {2, 3, 2}, {2, 1, 2}, {1, 2, 1}, {1, 0, 1}, {0, 1, 1}, true},
  };
  return cases;
}

float to_float(uint16_t h) { return half_to_float(h); }
float to_float(float f) { return f; }
void from_float(float f, uint16_t* h) { *h = float_to_half(f); }
void from_float(float f, float* out) { *out = f; }

// The reference: NHWC -> NCHW float (exact), max_pool_forward, back into NHWC order (float_to_half for half).
template <typename T>
std::vector<T> reference_pool(const std::vector<T>& x, int64_t images, int64_t channels, const PoolGeometry& g,
                              ThreadPool& pool) {
  const int64_t in_plane = g.in_plane(), out_plane = g.out_plane();
  std::vector<float> nchw(x.size());
  for (int64_t i = 0; i < images; ++i)
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t p = 0; p < in_plane; ++p)
        nchw[static_cast<size_t>((i * channels + c) * in_plane + p)] =
            to_float(x[static_cast<size_t>((i * in_plane + p) * channels + c)]);
  std::vector<float> y(static_cast<size_t>(images * channels * out_plane));
  max_pool_forward(y.data(), nchw.data(), g, pool);
  std::vector<T> out(y.size());
  for (int64_t i = 0; i < images; ++i)
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t p = 0; p < out_plane; ++p)
        from_float(y[static_cast<size_t>((i * channels + c) * out_plane + p)],
                   &out[static_cast<size_t>((i * out_plane + p) * channels + c)]);
  return out;
}

}  // namespace

TEST_CASE("half max pool: NHWC half equals float_to_half of the NCHW float max pool, bit for bit") {
  ThreadPool one(1), three(3);
  for (const PoolCase& c : half_pool_cases()) {
    for (const int64_t images : {int64_t(1), int64_t(2)}) {
      for (const int64_t channels : {int64_t(1), int64_t(3), int64_t(33)}) {
        const PoolGeometry g = geometry_of(c, images * channels);
        const size_t n_in = static_cast<size_t>(images * channels * g.in_plane());
        const size_t n_out = static_cast<size_t>(images * channels * g.out_plane());
        for (int data = 0; data < 3; ++data) {
          INFO(c.name << ", images " << images << ", channels " << channels << ", data " << data);
          // 0: random halves (any magnitude, infinities too); 1: a coarse grid (ties, +0 / -0);
          // 2: the grid with NaNs of both signs and different payloads, one of them signalling.
          std::vector<uint16_t> x = data == 0 ? random_halves(n_in, 5) : tied_halves(n_in, 6);
          if (data == 2)
            for (size_t k = 4; k < n_in; k += 23) x[k] = (k % 3 == 0) ? 0x7E00 : (k % 3 == 1) ? 0xFE01 : 0x7C05;
          const std::vector<uint16_t> want = reference_pool(x, images, channels, g, one);
          std::vector<uint16_t> got1(n_out, 0x1234), got3(n_out, 0x1234);
          max_pool_forward_nhwc(got1.data(), x.data(), images, channels, g, one);
          max_pool_forward_nhwc(got3.data(), x.data(), images, channels, g, three);
          int64_t bad = 0, nans = 0;
          for (size_t k = 0; k < n_out; ++k) {
            bad += got1[k] != want[k];
            nans += half_is_nan(got1[k]);
          }
          CHECK(bad == 0);
          CHECK(got3 == got1);
          if (data == 2) CHECK(nans > 0);  // NaNs propagated, and were compared bit for bit above
        }
      }
    }
  }
}

TEST_CASE("half max pool: explicit windows: max, a window only in padding, NaN propagation, +0 / -0 order") {
  ThreadPool pool(1);
  // One image, 2 channels, a 2x2 input, 2x2 kernel, stride 1, pads 1 on every side: a 3x3 output whose centre
  // window covers the whole input. Channel 0 holds 1, 2, 3, 4 (row-major); channel 1 holds -1, NaN, -3, -4.
  PoolCase c{"2x2 with pads", {1, 2, 2}, {1, 2, 2}, {1, 1, 1}, {1, 1, 1}, {0, 1, 1}, {0, 1, 1}, false};
  PoolGeometry g = geometry_of(c, 2);
  REQUIRE(g.out[1] == 3);
  REQUIRE(g.out[2] == 3);
  const uint16_t nan = 0x7E00;
  const std::vector<uint16_t> x = {float_to_half(1.f), float_to_half(-1.f), float_to_half(2.f), nan,
                                   float_to_half(3.f), float_to_half(-3.f), float_to_half(4.f), float_to_half(-4.f)};
  std::vector<uint16_t> y(18);
  max_pool_forward_nhwc(y.data(), x.data(), 1, 2, g, pool);
  // Output position (oh, ow) channel ch at ((oh * 3) + ow) * 2 + ch.
  CHECK(half_to_float(y[(0 * 3 + 0) * 2 + 0]) == 1.f);  // top-left window sees only input (0, 0)
  CHECK(half_to_float(y[(1 * 3 + 1) * 2 + 0]) == 4.f);  // centre window sees all four
  CHECK(half_to_float(y[(0 * 3 + 0) * 2 + 1]) == -1.f);
  CHECK(half_is_nan(y[(1 * 3 + 1) * 2 + 1]));           // the NaN at input (0, 1) propagates
  CHECK(half_is_nan(y[(0 * 3 + 2) * 2 + 1]));           // top-right window sees only that NaN
  CHECK(half_to_float(y[(2 * 3 + 0) * 2 + 1]) == -3.f);  // bottom-left sees only -3: the NaN is not in it

  // Pads as wide as the kernel: corner windows see no input and yield -inf.
  PoolCase wide{"pads 2", {1, 2, 2}, {1, 2, 2}, {1, 1, 1}, {1, 1, 1}, {0, 2, 2}, {0, 2, 2}, false};
  g = geometry_of(wide, 2);
  std::vector<uint16_t> z(static_cast<size_t>(2 * g.out_plane()));
  max_pool_forward_nhwc(z.data(), x.data(), 1, 2, g, pool);
  CHECK(z[0] == 0xFC00);
  CHECK(z[1] == 0xFC00);
  CHECK(z[z.size() - 1] == 0xFC00);

  // +0 then -0 in one window: the first stays (as in the float kernel), -0 then +0 likewise.
  PoolCase row{"1x2", {1, 1, 2}, {1, 1, 2}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, {0, 0, 0}, false};
  g = geometry_of(row, 2);
  const std::vector<uint16_t> zeros = {0x0000, 0x8000, 0x8000, 0x0000};  // channel 0: +0, -0; channel 1: -0, +0
  std::vector<uint16_t> w(2);
  max_pool_forward_nhwc(w.data(), zeros.data(), 1, 2, g, pool);
  CHECK(w[0] == 0x0000);
  CHECK(w[1] == 0x8000);
}

// ---------------- max pool over NHWC float ----------------

TEST_CASE("float max pool: NHWC float equals the NCHW float max pool bit for bit, NaNs and empty windows too") {
  ThreadPool one(1), three(3);
  const float inf = std::numeric_limits<float>::infinity();
  for (const PoolCase& c : half_pool_cases()) {
    for (const int64_t images : {int64_t(1), int64_t(2)}) {
      for (const int64_t channels : {int64_t(1), int64_t(3), int64_t(33)}) {
        const PoolGeometry g = geometry_of(c, images * channels);
        const size_t n_in = static_cast<size_t>(images * channels * g.in_plane());
        const size_t n_out = static_cast<size_t>(images * channels * g.out_plane());
        for (int data = 0; data < 3; ++data) {
          INFO(c.name << ", images " << images << ", channels " << channels << ", data " << data);
          // 0: random float patterns that are numbers (subnormals, infinities, +-0); 1: a coarse grid (ties,
          // +0 / -0); 2: the grid with NaNs of both signs and different payloads, one of them signalling, and
          // several per window, so which NaN wins (the last) is compared too.
          std::vector<float> x(n_in);
          if (data == 0) {
            x = random_float_bits(n_in, 5, false);
          } else {
            const std::vector<uint16_t> grid = tied_halves(n_in, 6);
            for (size_t k = 0; k < n_in; ++k) x[k] = half_to_float(grid[k]);
          }
          if (data == 2)
            for (size_t k = 4; k < n_in; k += 7)
              x[k] = float_from_bits((k % 3 == 0) ? 0x7fc00000u : (k % 3 == 1) ? 0xffc01234u : 0x7f800005u);
          const std::vector<float> want = reference_pool(x, images, channels, g, one);
          std::vector<float> got1(n_out, 1234.f), got3(n_out, 1234.f);
          max_pool_forward_nhwc(got1.data(), x.data(), images, channels, g, one);
          max_pool_forward_nhwc(got3.data(), x.data(), images, channels, g, three);
          const std::vector<uint32_t> want_bits = bits_of(want), got_bits = bits_of(got1);
          int64_t bad = 0, nans = 0, empty = 0;
          for (size_t k = 0; k < n_out; ++k) {
            bad += got_bits[k] != want_bits[k];
            nans += std::isnan(got1[k]);
            empty += got1[k] == -inf;
          }
          CHECK(bad == 0);
          CHECK(bits_of(got3) == got_bits);
          if (data == 2) CHECK(nans > 0);  // NaNs propagated, and were compared bit for bit above
          if (std::string(c.name) == "windows entirely in padding") CHECK(empty > 0);
        }
      }
    }
  }
}

TEST_CASE("float max pool: explicit windows: max, a window only in padding, the last NaN wins, +0 / -0 order") {
  ThreadPool pool(1);
  const float nan_a = float_from_bits(0x7fc00123u), nan_b = float_from_bits(0xff800077u);  // b signalling
  // One image, 2 channels, a 2x2 input, 2x2 kernel, stride 1, pads 1: a 3x3 output whose centre window covers
  // the whole input. Channel 0 holds 1, 2, 3, 4 (row-major); channel 1 holds -1, NaN a, -3, NaN b.
  PoolCase c{"2x2 with pads", {1, 2, 2}, {1, 2, 2}, {1, 1, 1}, {1, 1, 1}, {0, 1, 1}, {0, 1, 1}, false};
  PoolGeometry g = geometry_of(c, 2);
  REQUIRE(g.out[1] == 3);
  REQUIRE(g.out[2] == 3);
  const std::vector<float> x = {1.f, -1.f, 2.f, nan_a, 3.f, -3.f, 4.f, nan_b};
  std::vector<float> y(18);
  max_pool_forward_nhwc(y.data(), x.data(), 1, 2, g, pool);
  auto at = [&](int64_t oh, int64_t ow, int64_t ch) { return y[static_cast<size_t>((oh * 3 + ow) * 2 + ch)]; };
  CHECK(at(0, 0, 0) == 1.f);  // top-left window sees only input (0, 0)
  CHECK(at(1, 1, 0) == 4.f);  // centre window sees all four
  CHECK(at(0, 0, 1) == -1.f);
  CHECK(float_bits(at(0, 2, 1)) == 0x7fc00123u);  // top-right sees only NaN a: its payload comes out
  CHECK(float_bits(at(1, 1, 1)) == 0xff800077u);  // centre sees both NaNs: the last one (b) wins, not quieted
  CHECK(at(2, 0, 1) == -3.f);                     // bottom-left sees only -3

  // Pads as wide as the kernel: corner windows see no input and yield -inf.
  PoolCase wide{"pads 2", {1, 2, 2}, {1, 2, 2}, {1, 1, 1}, {1, 1, 1}, {0, 2, 2}, {0, 2, 2}, false};
  g = geometry_of(wide, 2);
  std::vector<float> z(static_cast<size_t>(2 * g.out_plane()));
  max_pool_forward_nhwc(z.data(), x.data(), 1, 2, g, pool);
  CHECK(float_bits(z[0]) == 0xff800000u);
  CHECK(float_bits(z[1]) == 0xff800000u);
  CHECK(float_bits(z[z.size() - 1]) == 0xff800000u);

  // +0 then -0 in one window: the first stays (as in the NCHW kernel), -0 then +0 likewise.
  PoolCase row{"1x2", {1, 1, 2}, {1, 1, 2}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}, {0, 0, 0}, false};
  g = geometry_of(row, 2);
  const std::vector<float> zeros = {0.f, -0.f, -0.f, 0.f};  // channel 0: +0, -0; channel 1: -0, +0
  std::vector<float> w(2);
  max_pool_forward_nhwc(w.data(), zeros.data(), 1, 2, g, pool);
  CHECK(float_bits(w[0]) == 0x00000000u);
  CHECK(float_bits(w[1]) == 0x80000000u);

  CHECK_THROWS(max_pool_forward_nhwc(w.data(), zeros.data(), -1, 2, g, pool));
}
