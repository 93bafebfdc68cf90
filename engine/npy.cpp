// .npy reader and writer (https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html):
// magic "\x93NUMPY", version byte pair, a little-endian header length (2 bytes in 1.0, 4 in 2.0/3.0),
// then a Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } and the raw data.
// The dict is parsed by a small literal parser that accepts exactly what NumPy writes (and a little more).
#include "engine/npy.h"

#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "engine/atomic_file.h"
#include "engine/error.h"
#include "engine/limits.h"
#include "engine/paths.h"

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, ".npy data is read and written as little-endian");
#endif

namespace camrt {

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicBytes = 6;
// NumPy itself refuses headers over 10000 bytes by default; a real header is ~100 bytes, so 1 MiB only
// stops a corrupt length field from making us allocate gigabytes.
constexpr size_t kMaxHeaderBytes = 1 << 20;
// NumPy >= 1.14 aligns the data to 64 bytes (older writers used 16); readers must not assume either.
constexpr size_t kWriteAlignment = 64;

struct DescrInfo {
  const char* descr;  // as written, little-endian
  DType dtype;
};
constexpr DescrInfo kDescrs[] = {{"<f4", DType::F32}, {"<f8", DType::F64}, {"<f2", DType::F16}, {"<i8", DType::I64},
                                 {"<i4", DType::I32}, {"|i1", DType::I8},  {"|u1", DType::U8},  {"|b1", DType::Bool}};

std::string supported_descrs() {
  std::string s;
  for (const auto& d : kDescrs) s += std::string(s.empty() ? "" : ", ") + d.descr;
  return s;
}

DType dtype_from_descr(const std::string& descr, const std::string& src) {
  CAMRT_CHECK(descr.size() >= 3, src << ": dtype '" << printable_name(descr, 40) << "' is not supported (camrt reads " << supported_descrs() << ")");
  const char order = descr[0];
  const std::string kind_size = descr.substr(1);
  for (const auto& d : kDescrs) {
    if (kind_size != d.descr + 1) continue;
    const bool one_byte = kind_size.back() == '1';
    // '=' is native order (little-endian here); for one-byte types the order character is irrelevant.
    if (order == '<' || order == '=' || (one_byte && (order == '|' || order == '>'))) return d.dtype;
    CAMRT_CHECK(order != '>', src << ": big-endian dtype '" << printable_name(descr, 40) << "' is not supported; save it with arr.astype('<"
                                  << kind_size << "')");
  }
  CAMRT_FAIL(src << ": dtype '" << printable_name(descr, 40) << "' is not supported (camrt reads " << supported_descrs() << ")");
}

std::string descr_for(DType dtype) {
  for (const auto& d : kDescrs)
    if (d.dtype == dtype) return d.descr;
  CAMRT_FAIL("no .npy dtype for " << dtype_name(dtype));
}

struct NpyHeader {
  DType dtype = DType::F32;
  Shape shape;
  size_t data_offset = 0;  // bytes from the start of the file
};

// Parses the restricted Python literal syntax of the header dict.
class DictParser {
 public:
  DictParser(const char* text, size_t size, const std::string& src) : begin_(text), p_(text), end_(text + size), src_(src) {}

  NpyHeader parse() {
    NpyHeader h;
    bool have_descr = false, have_order = false, have_shape = false;
    std::string descr;
    bool fortran_order = false;
    skip_space();
    expect('{');
    for (;;) {
      skip_space();
      if (peek() == '}') break;
      const std::string key = parse_string();
      // Python's dict literal would keep the last value; a repeated key is a corrupt or crafted header.
      CAMRT_CHECK((key != "descr" || !have_descr) && (key != "fortran_order" || !have_order) && (key != "shape" || !have_shape),
                  src_ << ": malformed header: key '" << key << "' appears twice");
      skip_space();
      expect(':');
      skip_space();
      if (key == "descr") {
        CAMRT_CHECK(peek() != '[', src_ << ": structured dtypes are not supported (descr is a list)");
        descr = parse_string();
        have_descr = true;
      } else if (key == "fortran_order") {
        fortran_order = parse_bool();
        have_order = true;
      } else if (key == "shape") {
        h.shape = parse_shape();
        have_shape = true;
      } else {
        CAMRT_FAIL(src_ << ": unexpected key '" << printable_name(key, 40) << "' in the header (expected descr, fortran_order, shape)");
      }
      skip_space();
      if (peek() == ',') {
        ++p_;
        continue;
      }
      skip_space();
      CAMRT_CHECK(peek() == '}', src_ << ": malformed header: expected ',' or '}' " << where());
    }
    ++p_;
    skip_space();
    CAMRT_CHECK(p_ == end_, src_ << ": malformed header: unexpected text after the dict " << where());
    CAMRT_CHECK(have_descr && have_order && have_shape,
                src_ << ": header lacks '" << (!have_descr ? "descr" : !have_order ? "fortran_order" : "shape") << "'");
    h.dtype = dtype_from_descr(descr, src_);
    // Fortran and C order store 0-d and 1-d arrays identically; only higher ranks would need a transpose.
    CAMRT_CHECK(!fortran_order || h.shape.size() <= 1,
                src_ << ": Fortran-order arrays are not supported; save np.ascontiguousarray(arr) instead");
    return h;
  }

 private:
  char peek() const { return p_ < end_ ? *p_ : '\0'; }
  std::string where() const {
    return "at dict byte " + std::to_string(p_ - begin_) + (p_ < end_ ? " ('" + printable_name(std::string(1, *p_)) + "')" : " (end)");
  }
  void skip_space() {
    while (p_ < end_ && std::isspace(static_cast<unsigned char>(*p_))) ++p_;
  }
  void expect(char c) {
    CAMRT_CHECK(peek() == c, src_ << ": malformed header: expected '" << c << "' " << where());
    ++p_;
  }
  std::string parse_string() {
    const char quote = peek();
    CAMRT_CHECK(quote == '\'' || quote == '"', src_ << ": malformed header: expected a quoted string " << where());
    ++p_;
    std::string s;
    while (p_ < end_ && *p_ != quote) {
      CAMRT_CHECK(*p_ != '\\', src_ << ": malformed header: escapes in strings are not supported");
      s += *p_++;
    }
    CAMRT_CHECK(p_ < end_, src_ << ": malformed header: unterminated string");
    ++p_;
    return s;
  }
  bool parse_bool() {
    for (const auto& [word, value] : {std::pair<const char*, bool>{"True", true}, {"False", false}}) {
      const size_t n = std::strlen(word);
      if (static_cast<size_t>(end_ - p_) >= n && std::strncmp(p_, word, n) == 0) {
        p_ += n;
        return value;
      }
    }
    CAMRT_FAIL(src_ << ": malformed header: fortran_order must be True or False " << where());
  }
  Shape parse_shape() {
    expect('(');
    Shape shape;
    for (;;) {
      skip_space();
      if (peek() == ')') break;
      CAMRT_CHECK(std::isdigit(static_cast<unsigned char>(peek())),
                  src_ << ": malformed header: shape must be a tuple of non-negative integers " << where());
      int64_t v = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        const int digit = *p_++ - '0';
        CAMRT_CHECK(v <= (INT64_MAX - digit) / 10, src_ << ": shape dimension too large");
        v = v * 10 + digit;
      }
      if (peek() == 'L') ++p_;  // Python 2 long literal, written by old NumPy versions
      CAMRT_CHECK(int64_t(shape.size()) < limits::kMaxRank,
                  src_ << ": shape has more than " << limits::kMaxRank << " dimensions, the most camrt accepts");
      shape.push_back(v);
      skip_space();
      if (peek() == ',') {
        ++p_;
        continue;
      }
      skip_space();
      CAMRT_CHECK(peek() == ')', src_ << ": malformed header: expected ',' or ')' in shape " << where());
    }
    ++p_;
    return shape;
  }

  const char* const begin_;
  const char* p_;
  const char* const end_;
  const std::string& src_;
};

// Validates the preamble (magic, version, header length) in the first bytes of the file and returns
// the offset where the data starts. `available` is how many bytes of the file `p` holds.
size_t preamble_header_end(const uint8_t* p, size_t available, uint64_t file_size, const std::string& src, size_t* dict_begin) {
  CAMRT_CHECK(available >= kMagicBytes && std::memcmp(p, kMagic, kMagicBytes) == 0,
              src << ": not a .npy file (missing the \\x93NUMPY magic)");
  CAMRT_CHECK(available >= kMagicBytes + 2, src << ": truncated .npy header (no version)");
  const int major = p[6], minor = p[7];
  CAMRT_CHECK((major == 1 || major == 2 || major == 3) && minor == 0,
              src << ": unsupported .npy format version " << major << "." << minor << " (camrt reads 1.0, 2.0, 3.0)");
  const size_t length_bytes = major == 1 ? 2 : 4;
  *dict_begin = 8 + length_bytes;
  CAMRT_CHECK(available >= *dict_begin, src << ": truncated .npy header (no header length)");
  uint64_t header_len = 0;
  for (size_t i = 0; i < length_bytes; ++i) header_len |= uint64_t(p[8 + i]) << (8 * i);
  CAMRT_CHECK(header_len <= kMaxHeaderBytes, src << ": header length " << header_len << " exceeds " << kMaxHeaderBytes << " bytes (corrupt file?)");
  CAMRT_CHECK(*dict_begin + header_len <= file_size,
              src << ": truncated .npy header: header length " << header_len << " but the file has " << file_size << " bytes");
  return *dict_begin + static_cast<size_t>(header_len);
}

NpyHeader parse_header(const uint8_t* p, size_t dict_begin, size_t header_end, uint64_t file_size, const std::string& src) {
  NpyHeader h = DictParser(reinterpret_cast<const char*>(p + dict_begin), header_end - dict_begin, src).parse();
  h.data_offset = header_end;
  int64_t numel = 0;
  try {
    numel = checked_numel(h.shape);
  } catch (const Error& e) {
    CAMRT_FAIL(src << ": " << e.what());
  }
  uint64_t nbytes = 0;
  CAMRT_CHECK(!__builtin_mul_overflow(static_cast<uint64_t>(numel), uint64_t(dtype_size(h.dtype)), &nbytes) &&
                  numel <= limits::kMaxTensorElements && nbytes <= uint64_t(limits::kMaxTensorBytes),
              src << ": shape " << shape_str(h.shape) << " x " << dtype_name(h.dtype) << " exceeds camrt's per-tensor limit ("
                  << limits::kMaxTensorElements << " elements, " << limits::kMaxTensorBytes << " bytes)");
  const uint64_t data_bytes = file_size - header_end;
  CAMRT_CHECK(data_bytes >= nbytes, src << ": truncated data: shape " << shape_str(h.shape) << " x " << dtype_name(h.dtype)
                                        << " needs " << nbytes << " bytes but the file holds " << data_bytes);
  CAMRT_CHECK(data_bytes == nbytes, src << ": " << data_bytes - nbytes << " unexpected bytes after the array data (shape "
                                        << shape_str(h.shape) << " x " << dtype_name(h.dtype) << " = " << nbytes << " bytes)");
  return h;
}

}  // namespace

HostTensor parse_npy(const uint8_t* data, size_t size, const std::string& source_name) {
  size_t dict_begin = 0;
  const size_t header_end = preamble_header_end(data, size, size, source_name, &dict_begin);
  const NpyHeader h = parse_header(data, dict_begin, header_end, size, source_name);
  HostTensor t(h.dtype, h.shape);
  if (!t.bytes.empty()) std::memcpy(t.bytes.data(), data + h.data_offset, t.bytes.size());
  return t;
}

HostTensor read_npy(const std::string& path) {
  std::error_code ec;
  // A regular file only: a FIFO or device would block the open or report no size.
  CAMRT_CHECK(std::filesystem::is_regular_file(path, ec), path << ": cannot read .npy file: "
                                                              << (ec ? ec.message() : "not a regular file"));
  const uint64_t file_size = std::filesystem::file_size(path, ec);
  CAMRT_CHECK(!ec, path << ": cannot read .npy file: " << ec.message());
  CAMRT_CHECK(file_size <= uint64_t(limits::kMaxFileBytes),
              path << ": file of " << file_size << " bytes exceeds the " << limits::kMaxFileBytes << "-byte limit");
  std::ifstream in(path, std::ios::binary);
  CAMRT_CHECK(in, path << ": cannot open .npy file");
  // The longest preamble (versions 2.0/3.0) is 12 bytes.
  std::vector<uint8_t> head(static_cast<size_t>(std::min<uint64_t>(file_size, 12)));
  CAMRT_CHECK(in.read(reinterpret_cast<char*>(head.data()), static_cast<std::streamsize>(head.size())), path << ": read error");
  size_t dict_begin = 0;
  const size_t header_end = preamble_header_end(head.data(), head.size(), file_size, path, &dict_begin);
  head.resize(header_end);
  in.seekg(0);
  CAMRT_CHECK(in.read(reinterpret_cast<char*>(head.data()), static_cast<std::streamsize>(header_end)), path << ": read error in the header");
  const NpyHeader h = parse_header(head.data(), dict_begin, header_end, file_size, path);
  HostTensor t(h.dtype, h.shape);
  if (!t.bytes.empty())
    CAMRT_CHECK(in.read(reinterpret_cast<char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size())),
                path << ": read error in the data (file changed while reading?)");
  return t;
}

void write_npy(const std::string& path, const HostTensor& tensor) {
  int64_t numel = 0;
  try {
    numel = checked_numel(tensor.shape);
  } catch (const Error& e) {
    CAMRT_FAIL(path << ": " << e.what());
  }
  CAMRT_CHECK(tensor.bytes.size() == static_cast<uint64_t>(numel) * dtype_size(tensor.dtype),
              path << ": tensor of shape " << shape_str(tensor.shape) << " x " << dtype_name(tensor.dtype) << " holds "
                   << tensor.bytes.size() << " bytes");
  // shape_str already writes Python's tuple syntax: "()", "(5,)", "(2, 3)".
  std::string dict = "{'descr': '" + descr_for(tensor.dtype) + "', 'fortran_order': False, 'shape': " + shape_str(tensor.shape) + ", }";
  // Version 1.0 has a 2-byte length; fall back to 2.0 (4 bytes) only when needed, as NumPy does.
  int major = 1;
  size_t preamble = 10;
  auto padded_length = [&](size_t pre) {
    const size_t unpadded = pre + dict.size() + 1;  // +1: the terminating '\n'
    return dict.size() + 1 + (kWriteAlignment - unpadded % kWriteAlignment) % kWriteAlignment;
  };
  size_t header_len = padded_length(preamble);
  if (header_len > 0xffff) {
    major = 2;
    preamble = 12;
    header_len = padded_length(preamble);
  }
  std::string header(kMagic, kMagicBytes);
  header += static_cast<char>(major);
  header += '\0';
  for (size_t i = 0; i < preamble - 8; ++i) header += static_cast<char>((header_len >> (8 * i)) & 0xff);
  header += dict;
  header.append(header_len - dict.size() - 1, ' ');
  header += '\n';
  write_file_atomic(path, [&](AtomicFile& file) {
    file.write(header);
    file.write(tensor.bytes.data(), tensor.bytes.size());
  });
}

}  // namespace camrt
