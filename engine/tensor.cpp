// DType tables and the checked shape arithmetic everything else relies on.
#include "engine/tensor.h"

#include <cmath>
#include <limits>

#include "kernels/cpu/half.h"

namespace camrt {

namespace {
struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::F32, "F32", 4}, {DType::F16, "F16", 2}, {DType::F64, "F64", 8}, {DType::I64, "I64", 8},
    {DType::I32, "I32", 4}, {DType::I8, "I8", 1},   {DType::U8, "U8", 1},   {DType::Bool, "BOOL", 1},
};
}  // namespace

size_t dtype_size(DType dtype) {
  for (const auto& info : kDTypes)
    if (info.dtype == dtype) return info.size;
  CAMRT_FAIL("unknown dtype " << static_cast<int>(dtype));
}

const char* dtype_name(DType dtype) {
  for (const auto& info : kDTypes)
    if (info.dtype == dtype) return info.name;
  return "?";
}

bool dtype_from_name(const std::string& name, DType* dtype) {
  for (const auto& info : kDTypes)
    if (name == info.name) {
      *dtype = info.dtype;
      return true;
    }
  return false;
}

int64_t checked_numel(const Shape& shape) {
  // 2^62 elements is far beyond any real tensor and keeps numel * 8 bytes inside int64.
  constexpr int64_t kMaxElements = int64_t(1) << 62;
  int64_t n = 1;
  for (int64_t d : shape) {
    CAMRT_CHECK(d >= 0, "negative dimension in shape " << shape_str(shape));
    if (d == 0) return 0;
    CAMRT_CHECK(n <= kMaxElements / d, "shape " << shape_str(shape) << " has too many elements");
    n *= d;
  }
  return n;
}

std::string shape_str(const Shape& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

std::vector<int64_t> HostTensor::to_int64() const {
  const int64_t n = numel();
  std::vector<int64_t> out(static_cast<size_t>(n));
  const uint8_t* p = bytes.data();
  for (int64_t i = 0; i < n; ++i) {
    switch (dtype) {
      case DType::I64: { int64_t v; std::memcpy(&v, p + i * 8, 8); out[i] = v; break; }
      case DType::I32: { int32_t v; std::memcpy(&v, p + i * 4, 4); out[i] = v; break; }
      case DType::I8: out[i] = static_cast<int8_t>(p[i]); break;
      case DType::U8:
      case DType::Bool: out[i] = p[i]; break;
      default: CAMRT_FAIL("expected an integer tensor, got " << dtype_name(dtype));
    }
  }
  return out;
}

std::vector<float> HostTensor::to_float() const {
  if (dtype != DType::F32 && dtype != DType::F64 && dtype != DType::F16) {
    const std::vector<int64_t> ints = to_int64();
    return std::vector<float>(ints.begin(), ints.end());
  }
  const int64_t n = numel();
  std::vector<float> out(static_cast<size_t>(n));
  const uint8_t* p = bytes.data();
  for (int64_t i = 0; i < n; ++i) {
    switch (dtype) {
      case DType::F32: std::memcpy(&out[i], p + i * 4, 4); break;
      case DType::F64: { double v; std::memcpy(&v, p + i * 8, 8); out[i] = static_cast<float>(v); break; }
      case DType::F16: {
        uint16_t h;
        std::memcpy(&h, p + i * 2, 2);
        out[i] = half_to_float(h);
        break;
      }
      default: break;
    }
  }
  return out;
}

HostTensor make_f32(const Shape& shape, const std::vector<float>& values) {
  HostTensor t(DType::F32, shape);
  CAMRT_CHECK(static_cast<int64_t>(values.size()) == t.numel(), "make_f32: " << values.size() << " values for shape " << shape_str(shape));
  if (!t.bytes.empty()) std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

HostTensor make_i64(const Shape& shape, const std::vector<int64_t>& values) {
  HostTensor t(DType::I64, shape);
  CAMRT_CHECK(static_cast<int64_t>(values.size()) == t.numel(), "make_i64: " << values.size() << " values for shape " << shape_str(shape));
  if (!t.bytes.empty()) std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

}  // namespace camrt
