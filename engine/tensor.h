// Tensor: a typed, shaped, non-owning view of memory on one device (usually a slice of an arena).
// HostTensor: an owning CPU buffer, used for weights, constants and user-facing inputs/outputs.
// Shapes are int64 and every size computation goes through checked_numel, which rejects overflow.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "engine/error.h"

namespace camrt {

enum class DType : uint8_t { F32, F16, F64, I64, I32, I8, U8, Bool };
enum class Device : uint8_t { CPU, CUDA };
// Where the elements of a 4-d (N, C, H, W) tensor lie: NCHW, row-major over the shape as every tensor is unless
// said otherwise, or NHWC (channels last, element (n, c, h, w) at ((n * H + h) * W + w) * C + c), the form of
// channels-last storage (PlanOptions::channels_last). The shape is the logical (N, C, H, W) either way.
enum class Layout : uint8_t { NCHW, NHWC };

using Shape = std::vector<int64_t>;

size_t dtype_size(DType dtype);
// Names as in the safetensors spec ("F32", "I64", "BOOL", ...).
const char* dtype_name(DType dtype);
// Returns false if the name is not a dtype camrt knows.
bool dtype_from_name(const std::string& name, DType* dtype);

// Product of dims; throws on negative dims or if the result would exceed 2^62.
int64_t checked_numel(const Shape& shape);
std::string shape_str(const Shape& shape);  // "(1, 3, 224, 224)"

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::F32;
  Shape shape;
  Device device = Device::CPU;
  Layout layout = Layout::NCHW;

  int64_t numel() const { return checked_numel(shape); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  int64_t rank() const { return static_cast<int64_t>(shape.size()); }
  int64_t dim(int64_t i) const { return shape[static_cast<size_t>(i < 0 ? i + rank() : i)]; }
  float* f32() const { return static_cast<float*>(data); }
  int64_t* i64() const { return static_cast<int64_t*>(data); }
};

struct HostTensor {
  DType dtype = DType::F32;
  Shape shape;
  std::vector<uint8_t> bytes;  // numel * dtype_size bytes

  HostTensor() = default;
  HostTensor(DType dtype_, Shape shape_) : dtype(dtype_), shape(std::move(shape_)) {
    bytes.assign(static_cast<size_t>(checked_numel(shape)) * dtype_size(dtype), 0);
  }
  int64_t numel() const { return checked_numel(shape); }
  Tensor view() const {
    return Tensor{const_cast<uint8_t*>(bytes.data()), dtype, shape, Device::CPU};
  }
  float* f32() { return reinterpret_cast<float*>(bytes.data()); }
  const float* f32() const { return reinterpret_cast<const float*>(bytes.data()); }
  const int64_t* i64() const { return reinterpret_cast<const int64_t*>(bytes.data()); }
  // Values of an integer tensor (I64/I32/I8/U8/Bool) widened to int64; throws for float dtypes.
  std::vector<int64_t> to_int64() const;
  // Values of any numeric tensor converted to float.
  std::vector<float> to_float() const;
};

HostTensor make_f32(const Shape& shape, const std::vector<float>& values);
HostTensor make_i64(const Shape& shape, const std::vector<int64_t>& values);

}  // namespace camrt
