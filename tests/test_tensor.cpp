// Tensor basics: dtype table, checked shape arithmetic.
#include <doctest/doctest.h>

#include "engine/tensor.h"

using namespace camrt;

TEST_CASE("checked_numel multiplies dims and rejects overflow and negatives") {
  CHECK(checked_numel({2, 3, 4}) == 24);
  CHECK(checked_numel({}) == 1);
  CHECK(checked_numel({5, 0, 7}) == 0);
  CHECK_THROWS_AS(checked_numel({-1, 3}), Error);
  CHECK_THROWS_AS(checked_numel({int64_t(1) << 40, int64_t(1) << 40}), Error);
}

TEST_CASE("dtype names round-trip") {
  for (DType d : {DType::F32, DType::F16, DType::I64, DType::U8, DType::Bool}) {
    DType back;
    REQUIRE(dtype_from_name(dtype_name(d), &back));
    CHECK(back == d);
  }
  DType unused;
  CHECK_FALSE(dtype_from_name("F128", &unused));
}

TEST_CASE("HostTensor converts integer and half data") {
  HostTensor t = make_i64({3}, {1, -2, 3});
  CHECK(t.to_int64() == std::vector<int64_t>{1, -2, 3});
  CHECK(t.to_float() == std::vector<float>{1.f, -2.f, 3.f});
  HostTensor h(DType::F16, {2});
  const uint16_t half_values[2] = {0x3c00 /* 1.0 */, 0xc000 /* -2.0 */};
  std::memcpy(h.bytes.data(), half_values, 4);
  CHECK(h.to_float() == std::vector<float>{1.f, -2.f});
}
