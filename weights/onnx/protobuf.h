// A minimal protobuf wire-format reader, enough to decode ONNX files without libprotobuf.
// Every length, varint and packed payload is checked against the buffer: malformed bytes throw
// camrt::Error naming the source, the message type and the byte offset, never read out of bounds.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace camrt {
namespace protobuf {

enum class WireType : uint8_t { Varint = 0, Fixed64 = 1, LengthDelimited = 2, Fixed32 = 5 };

// One field as it appears on the wire. Which payload member is valid depends on wire_type.
struct Field {
  uint32_t number = 0;
  WireType wire_type = WireType::Varint;
  uint64_t value = 0;              // Varint, Fixed64 and Fixed32 (raw bits)
  const uint8_t* data = nullptr;   // LengthDelimited payload (points into the reader's buffer)
  size_t size = 0;                 // LengthDelimited payload size in bytes
  size_t offset = 0;               // offset of the field's tag from the start of the whole buffer
};

// Iterates over the fields of one message. The buffer must outlive the reader and its fields.
class Reader {
 public:
  // source names the file in errors; message names the message type ("ModelProto");
  // base_offset is where data starts inside the whole file (for error offsets); depth counts the messages
  // it is nested in, refused beyond limits::kMaxNesting.
  Reader(const uint8_t* data, size_t size, const std::string& source, const char* message, size_t base_offset = 0,
         int64_t depth = 0);

  // Reads the next field into *field; returns false at the end of the message.
  bool next(Field* field);

  // A reader over a LengthDelimited field's payload (a nested message), one level deeper.
  Reader message(const Field& field, const char* message_name) const;

  // Scalar accessors: each checks the wire type and throws naming the field otherwise.
  uint64_t as_uint64(const Field& field) const;  // varint
  int64_t as_int64(const Field& field) const;    // varint, two's complement (protobuf int64/int32/enum)
  int32_t as_int32(const Field& field) const;    // varint, truncated to 32 bits as protobuf does
  float as_float(const Field& field) const;      // fixed32
  double as_double(const Field& field) const;    // fixed64
  std::string as_string(const Field& field) const;  // LengthDelimited bytes
  // A name (node, tensor, attribute, op type): as_string, refused beyond limits::kMaxNameBytes; what says
  // which name it is for the message.
  std::string as_name(const Field& field, const char* what) const;

  // Repeated scalars: accept both the packed form (one LengthDelimited field) and the unpacked
  // form (one field per element), as protobuf parsers must; elements are appended.
  void append_int64s(const Field& field, std::vector<int64_t>* out) const;   // int64/int32/enum
  void append_uint64s(const Field& field, std::vector<uint64_t>* out) const;
  void append_floats(const Field& field, std::vector<float>* out) const;
  void append_doubles(const Field& field, std::vector<double>* out) const;

  // Throws unless the field has this wire type; expected describes it for the message.
  void expect_wire(const Field& field, WireType wire_type, const char* expected) const;
  [[noreturn]] void fail(size_t offset, const std::string& what) const;
  const std::string& source() const { return *source_; }
  const char* message_name() const { return message_; }

 private:
  // Decodes a varint at data[*pos], advancing *pos; base is data's offset in the file, for errors.
  // Throws on truncation and on varints longer than 64 bits.
  uint64_t read_varint(const uint8_t* data, size_t size, size_t* pos, size_t base) const;

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  const std::string* source_;
  const char* message_;
  size_t base_offset_;
  int64_t depth_;
};

}  // namespace protobuf
}  // namespace camrt
