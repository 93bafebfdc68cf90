// Protobuf wire-format decoding (https://protobuf.dev/programming-guides/encoding/): tags, varints,
// fixed 32/64-bit values and length-delimited payloads, with every read bounds-checked.
#include "weights/onnx/protobuf.h"

#include <cstring>

#include "engine/error.h"
#include "engine/limits.h"

// Fixed-width payloads are copied as-is: protobuf stores them little-endian.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the ONNX reader assumes a little-endian host"
#endif

namespace camrt {
namespace protobuf {

namespace {
const char* wire_name(WireType wire_type) {
  switch (wire_type) {
    case WireType::Varint: return "varint";
    case WireType::Fixed64: return "fixed64";
    case WireType::LengthDelimited: return "length-delimited";
    case WireType::Fixed32: return "fixed32";
  }
  return "?";
}
}  // namespace

Reader::Reader(const uint8_t* data, size_t size, const std::string& source, const char* message, size_t base_offset,
               int64_t depth)
    : data_(data), size_(size), source_(&source), message_(message), base_offset_(base_offset), depth_(depth) {
  if (depth_ > limits::kMaxNesting)
    fail(base_offset_, "messages nested deeper than " + std::to_string(limits::kMaxNesting) + " levels");
}

void Reader::fail(size_t offset, const std::string& what) const {
  CAMRT_FAIL(*source_ << ": malformed protobuf in " << message_ << " at byte " << offset << ": " << what
                      << " (truncated or not an ONNX file?)");
}

uint64_t Reader::read_varint(const uint8_t* data, size_t size, size_t* pos, size_t base) const {
  const size_t start = *pos;
  uint64_t result = 0;
  // A 64-bit value needs at most 10 groups of 7 bits; the 10th may only carry the top bit.
  for (int i = 0; i < 10; ++i) {
    if (*pos >= size) fail(base + start, "varint runs past the end of the data");
    const uint8_t byte = data[(*pos)++];
    if (i == 9 && byte > 1) fail(base + start, "varint does not fit in 64 bits");
    result |= static_cast<uint64_t>(byte & 0x7f) << (7 * i);
    if (!(byte & 0x80)) return result;
  }
  fail(base + start, "varint longer than 10 bytes");
}

bool Reader::next(Field* field) {
  if (pos_ >= size_) return false;
  Field f;
  f.offset = base_offset_ + pos_;
  const uint64_t tag = read_varint(data_, size_, &pos_, base_offset_);
  const uint64_t number = tag >> 3;
  const unsigned wire = static_cast<unsigned>(tag & 7);
  // Field numbers are 1 .. 2^29 - 1 in the protobuf spec.
  if (number == 0 || number > (uint64_t(1) << 29) - 1) fail(f.offset, "invalid field number " + std::to_string(number));
  f.number = static_cast<uint32_t>(number);
  switch (wire) {
    case 0:
      f.wire_type = WireType::Varint;
      f.value = read_varint(data_, size_, &pos_, base_offset_);
      break;
    case 1:
      f.wire_type = WireType::Fixed64;
      if (size_ - pos_ < 8) fail(f.offset, "fixed64 field " + std::to_string(number) + " runs past the end");
      std::memcpy(&f.value, data_ + pos_, 8);  // protobuf is little-endian, as are camrt's targets
      pos_ += 8;
      break;
    case 2: {
      f.wire_type = WireType::LengthDelimited;
      const uint64_t length = read_varint(data_, size_, &pos_, base_offset_);
      if (length > size_ - pos_)
        fail(f.offset, "field " + std::to_string(number) + " declares " + std::to_string(length) + " bytes but only " +
                           std::to_string(size_ - pos_) + " remain");
      f.data = data_ + pos_;
      f.size = static_cast<size_t>(length);
      pos_ += f.size;
      break;
    }
    case 5: {
      f.wire_type = WireType::Fixed32;
      if (size_ - pos_ < 4) fail(f.offset, "fixed32 field " + std::to_string(number) + " runs past the end");
      uint32_t bits;
      std::memcpy(&bits, data_ + pos_, 4);
      f.value = bits;
      pos_ += 4;
      break;
    }
    default:
      // 3 and 4 are the deprecated groups, which no ONNX file uses; 6 and 7 do not exist.
      fail(f.offset, "unsupported wire type " + std::to_string(wire) + " for field " + std::to_string(number));
  }
  *field = f;
  return true;
}

void Reader::expect_wire(const Field& field, WireType wire_type, const char* expected) const {
  if (field.wire_type != wire_type)
    fail(field.offset, "field " + std::to_string(field.number) + " should be " + expected + ", found " +
                           wire_name(field.wire_type));
}

Reader Reader::message(const Field& field, const char* message_name) const {
  expect_wire(field, WireType::LengthDelimited, "a nested message");
  const size_t payload_offset = base_offset_ + static_cast<size_t>(field.data - data_);
  return Reader(field.data, field.size, *source_, message_name, payload_offset, depth_ + 1);
}

uint64_t Reader::as_uint64(const Field& field) const {
  expect_wire(field, WireType::Varint, "a varint");
  return field.value;
}

int64_t Reader::as_int64(const Field& field) const {
  // Two's complement reinterpretation, well-defined through memcpy.
  const uint64_t bits = as_uint64(field);
  int64_t value;
  std::memcpy(&value, &bits, 8);
  return value;
}

int32_t Reader::as_int32(const Field& field) const {
  const uint32_t low = static_cast<uint32_t>(as_uint64(field));
  int32_t value;
  std::memcpy(&value, &low, 4);
  return value;
}

float Reader::as_float(const Field& field) const {
  expect_wire(field, WireType::Fixed32, "fixed32 (float)");
  const uint32_t bits = static_cast<uint32_t>(field.value);
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}

double Reader::as_double(const Field& field) const {
  expect_wire(field, WireType::Fixed64, "fixed64 (double)");
  double value;
  std::memcpy(&value, &field.value, 8);
  return value;
}

std::string Reader::as_string(const Field& field) const {
  expect_wire(field, WireType::LengthDelimited, "a string");
  return std::string(reinterpret_cast<const char*>(field.data), field.size);
}

std::string Reader::as_name(const Field& field, const char* what) const {
  expect_wire(field, WireType::LengthDelimited, "a string");
  if (static_cast<int64_t>(field.size) > limits::kMaxNameBytes)
    fail(field.offset, std::string(what) + " of " + std::to_string(field.size) + " bytes (at most " +
                           std::to_string(limits::kMaxNameBytes) + ")");
  return std::string(reinterpret_cast<const char*>(field.data), field.size);
}

void Reader::append_uint64s(const Field& field, std::vector<uint64_t>* out) const {
  if (field.wire_type == WireType::Varint) {
    out->push_back(field.value);
    return;
  }
  expect_wire(field, WireType::LengthDelimited, "a varint or packed varints");
  const size_t base = base_offset_ + static_cast<size_t>(field.data - data_);
  size_t pos = 0;
  while (pos < field.size) out->push_back(read_varint(field.data, field.size, &pos, base));
}

void Reader::append_int64s(const Field& field, std::vector<int64_t>* out) const {
  std::vector<uint64_t> bits;
  append_uint64s(field, &bits);
  for (uint64_t b : bits) {
    int64_t value;
    std::memcpy(&value, &b, 8);
    out->push_back(value);
  }
}

void Reader::append_floats(const Field& field, std::vector<float>* out) const {
  if (field.wire_type == WireType::Fixed32) {
    out->push_back(as_float(field));
    return;
  }
  expect_wire(field, WireType::LengthDelimited, "fixed32 or packed fixed32");
  if (field.size % 4 != 0) fail(field.offset, "packed float field of " + std::to_string(field.size) + " bytes");
  const size_t start = out->size();
  out->resize(start + field.size / 4);
  if (field.size) std::memcpy(out->data() + start, field.data, field.size);
}

void Reader::append_doubles(const Field& field, std::vector<double>* out) const {
  if (field.wire_type == WireType::Fixed64) {
    out->push_back(as_double(field));
    return;
  }
  expect_wire(field, WireType::LengthDelimited, "fixed64 or packed fixed64");
  if (field.size % 8 != 0) fail(field.offset, "packed double field of " + std::to_string(field.size) + " bytes");
  const size_t start = out->size();
  out->resize(start + field.size / 8);
  if (field.size) std::memcpy(out->data() + start, field.data, field.size);
}

}  // namespace protobuf
}  // namespace camrt
