// Hostile data files and names: every crash the fuzzers found (tests/fixtures/hostile/<kind>/), crafted
// violations of each limit in engine/limits.h, seeded mutations of every .safetensors, .npy, .png, .jpg and
// .bmp file in the repository (each must decode or throw one camrt::Error line naming the file, quickly),
// and output names derived from input data, which must stay inside the output folder.
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "engine/atomic_file.h"
#include "engine/error.h"
#include "engine/image/image.h"
#include "engine/image/png.h"
#include "engine/limits.h"
#include "engine/npy.h"
#include "engine/paths.h"
#include "weights/safetensors.h"

using namespace camrt;
namespace fs = std::filesystem;

namespace {

using Bytes = std::vector<uint8_t>;

const fs::path kSource = CAMRT_SOURCE_DIR;

Bytes slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot read " << path.string());
  return Bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void spit(const fs::path& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

Bytes bytes_of(const std::string& s) { return Bytes(s.begin(), s.end()); }

struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() / ("camrt_test_hostile_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// Runs `parse`; returns "" if it succeeded, the camrt::Error message if it threw one, and a description
// starting with "!" for anything else (another exception type is a finding too).
std::string outcome(const std::function<void()>& parse) {
  try {
    parse();
    return "";
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("!non-camrt exception: ") + e.what();
  }
}

// The error contract: a camrt::Error whose message is one line and names the source.
#define CHECK_ONE_LINE_ERROR(expr, source, needle)                                              \
  do {                                                                                          \
    const std::string message_ = outcome([&] { (void)(expr); });                                \
    INFO("message: " << message_);                                                              \
    CHECK(!message_.empty());                                                                   \
    CHECK(message_[0] != '!');                                                                  \
    CHECK(message_.find('\n') == std::string::npos);                                            \
    CHECK(message_.find(source) != std::string::npos);                                          \
    CHECK(message_.find(needle) != std::string::npos);                                          \
  } while (0)

// --- builders for crafted files ---------------------------------------------------------------------------

Bytes safetensors_bytes(const std::string& header, const Bytes& data = {}) {
  Bytes out(8);
  for (int i = 0; i < 8; ++i) out[size_t(i)] = uint8_t(uint64_t(header.size()) >> (8 * i));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

Bytes npy_bytes(const std::string& dict, size_t data_bytes, int major = 1) {
  std::string header = "\x93NUMPY";
  header += char(major);
  header += '\0';
  const std::string body = dict + "\n";
  const size_t length_bytes = major == 1 ? 2 : 4;
  for (size_t i = 0; i < length_bytes; ++i) header += char((body.size() >> (8 * i)) & 0xff);
  Bytes out = bytes_of(header + body);
  out.resize(out.size() + data_bytes, 0);
  return out;
}

void put_be32(Bytes* out, uint32_t v) {
  for (int i = 3; i >= 0; --i) out->push_back(uint8_t(v >> (8 * i)));
}

void png_chunk(Bytes* out, const char* type, const Bytes& data) {
  put_be32(out, uint32_t(data.size()));
  Bytes typed(type, type + 4);
  typed.insert(typed.end(), data.begin(), data.end());
  out->insert(out->end(), typed.begin(), typed.end());
  put_be32(out, uint32_t(crc32(0, typed.data(), uInt(typed.size()))));
}

// An 8-bit grayscale PNG whose IDAT inflates to `raw` (zlib-compressed here); extra chunks go before it.
Bytes png_bytes(uint32_t width, uint32_t height, const Bytes& raw, const std::vector<std::pair<const char*, Bytes>>& before_idat = {}) {
  Bytes out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  Bytes ihdr;
  put_be32(&ihdr, width);
  put_be32(&ihdr, height);
  ihdr.insert(ihdr.end(), {8, 0, 0, 0, 0});
  png_chunk(&out, "IHDR", ihdr);
  for (const auto& [type, data] : before_idat) png_chunk(&out, type, data);
  uLongf compressed_size = compressBound(uLong(raw.size()));
  Bytes compressed(compressed_size);
  REQUIRE(compress2(compressed.data(), &compressed_size, raw.data(), uLong(raw.size()), 9) == Z_OK);
  compressed.resize(compressed_size);
  png_chunk(&out, "IDAT", compressed);
  png_chunk(&out, "IEND", {});
  return out;
}

// --- seeded mutations -------------------------------------------------------------------------------------

// One to three edits of `in`, mostly inside its first `header_bytes` (where the parsers' decisions are):
// bit flips, truncation, a run of 0xff, a field overwritten with a boundary value, a decimal number
// replaced by a huge one, bytes deleted or inserted.
Bytes mutate(const Bytes& in, std::mt19937_64& rng, size_t header_bytes) {
  Bytes out = in;
  auto pick = [&](size_t n) { return n == 0 ? size_t(0) : size_t(rng() % n); };
  const int edits = 1 + int(rng() % 3);
  for (int e = 0; e < edits && !out.empty(); ++e) {
    const size_t region = rng() % 4 ? std::min(out.size(), std::max<size_t>(header_bytes, 1)) : out.size();
    const size_t at = pick(region);
    switch (rng() % 7) {
      case 0:
        for (int k = 0, n = 1 + int(rng() % 8); k < n; ++k) out[pick(region)] ^= uint8_t(1u << (rng() % 8));
        break;
      case 1:
        out.resize(pick(out.size()));
        break;
      case 2:
        for (size_t k = at, end = std::min(out.size(), at + 1 + pick(64)); k < end; ++k) out[k] = 0xff;
        break;
      case 3: {
        static const uint32_t kValues[] = {0, 1, 0x7f, 0x80, 0xff, 0xffff, 0x10000, 0x7fffffff, 0x80000000u, 0xffffffffu};
        const uint32_t v = kValues[pick(sizeof kValues / sizeof kValues[0])];
        const bool big_endian = rng() % 2;
        for (size_t k = 0; k < 4 && at + k < out.size(); ++k) out[at + k] = uint8_t(v >> (8 * (big_endian ? 3 - k : k)));
        break;
      }
      case 4: {  // text headers (.npy dicts, safetensors JSON): numbers are where the sizes are
        size_t k = at;
        while (k < region && !(out[k] >= '0' && out[k] <= '9')) ++k;
        if (k >= region) break;
        size_t end = k;
        while (end < out.size() && out[end] >= '0' && out[end] <= '9') ++end;
        static const char* kNumbers[] = {"0", "1", "4294967296", "9223372036854775807", "18446744073709551615",
                                         "99999999999999999999999", "-1", "1e9"};
        const std::string number = kNumbers[pick(sizeof kNumbers / sizeof kNumbers[0])];
        out.erase(out.begin() + long(k), out.begin() + long(end));
        out.insert(out.begin() + long(k), number.begin(), number.end());
        break;
      }
      case 5:
        out.erase(out.begin() + long(at), out.begin() + long(std::min(out.size(), at + 1 + pick(16))));
        break;
      default: {
        Bytes junk(1 + pick(16));
        for (auto& b : junk) b = uint8_t(rng());
        out.insert(out.begin() + long(at), junk.begin(), junk.end());
        break;
      }
    }
  }
  return out;
}

// A hang detector, not a benchmark: a parse that takes this long is stuck in a loop or allocation storm.
// Sanitizers slow camrt down several-fold, so their builds get more room.
#if defined(__SANITIZE_ADDRESS__)
constexpr double kHangSeconds = 10.0;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr double kHangSeconds = 10.0;
#else
constexpr double kHangSeconds = 1.0;
#endif
#else
constexpr double kHangSeconds = 1.0;
#endif

enum class Kind { Safetensors, Npy, Image };

// Parses `bytes` as `kind`, checking what a successful parse promises; throws camrt::Error otherwise.
void parse_as(Kind kind, const Bytes& bytes, const std::string& name) {
  switch (kind) {
    case Kind::Safetensors: {
      for (const auto& [tensor, t] : parse_safetensors(bytes.data(), bytes.size(), name))
        if (t.bytes.size() != size_t(t.numel()) * dtype_size(t.dtype)) throw std::runtime_error("tensor " + tensor + " size mismatch");
      break;
    }
    case Kind::Npy: {
      const HostTensor t = parse_npy(bytes.data(), bytes.size(), name);
      if (t.bytes.size() != size_t(t.numel()) * dtype_size(t.dtype)) throw std::runtime_error("size mismatch");
      break;
    }
    case Kind::Image: {
      const Image image = decode_image(bytes.data(), bytes.size(), name);
      if (image.pixels.size() != size_t(image.width * image.height * 3)) throw std::runtime_error("pixel count mismatch");
      // What camrt explain does next; bounded so a large (legitimate) mutant does not dominate the run.
      if (image.width * image.height <= (int64_t(1) << 20)) (void)resize_and_crop(image, 32, 28);
      break;
    }
  }
}

struct MutationReport {
  int64_t inputs = 0, decoded = 0, refused = 0;
  std::vector<std::string> findings;
};

void run_mutations(Kind kind, const fs::path& file, const Bytes& original, int count, size_t header_bytes, MutationReport* report) {
  const std::string name = file.string();
  std::mt19937_64 rng(std::hash<std::string>{}(file.filename().string()));  // deterministic per file
  for (int i = 0; i < count; ++i) {
    const Bytes mutant = mutate(original, rng, header_bytes);
    const std::string source = name + "#" + std::to_string(i);
    const auto start = std::chrono::steady_clock::now();
    const std::string message = outcome([&] { parse_as(kind, mutant, source); });
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ++report->inputs;
    (message.empty() ? report->decoded : report->refused) += 1;
    std::string problem;
    if (!message.empty() && message[0] == '!') problem = message;
    else if (message.find('\n') != std::string::npos) problem = "multi-line error: " + message;
    else if (!message.empty() && message.find(source) == std::string::npos) problem = "error does not name the file: " + message;
    else if (seconds > kHangSeconds) problem = "took " + std::to_string(seconds) + " s";
    if (!problem.empty() && report->findings.size() < 20) report->findings.push_back(source + ": " + problem);
  }
}

std::vector<fs::path> repository_files(const std::vector<std::string>& extensions) {
  std::vector<fs::path> files;
  for (const char* root : {"tests/fixtures", "weights/models"}) {
    if (!fs::exists(kSource / root)) continue;
    for (const auto& entry : fs::recursive_directory_iterator(kSource / root))
      if (entry.is_regular_file() &&
          std::find(extensions.begin(), extensions.end(), entry.path().extension().string()) != extensions.end())
        files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Reproducers found by the fuzzers (tools/fuzz.sh): each is refused with one error line naming the file.

TEST_CASE("hostile fixtures: every fuzzer reproducer is refused with one camrt::Error") {
  const std::map<std::string, std::function<void(const std::string&)>> readers = {
      {"safetensors", [](const std::string& p) { (void)read_safetensors(p); }},
      {"npy", [](const std::string& p) { (void)read_npy(p); }},
      {"image", [](const std::string& p) { (void)read_image(p); }}};
  int files = 0;
  for (const auto& reader : readers) {
    const auto& read = reader.second;
    const fs::path dir = kSource / "tests/fixtures/hostile" / reader.first;
    if (!fs::exists(dir)) continue;
    for (const auto& entry : fs::directory_iterator(dir)) {
      const std::string path = entry.path().string();
      CAPTURE(path);
      CHECK_ONE_LINE_ERROR(read(path), path, "");
      ++files;
    }
  }
  CHECK(files >= 8);  // the image reproducers at least
}

TEST_CASE("hostile fixtures: what each image reproducer is refused for") {
  const auto dir = kSource / "tests/fixtures/hostile/image";
  auto check = [&](const char* file, const char* needle) {
    const std::string path = (dir / file).string();
    CHECK_ONE_LINE_ERROR(read_image(path), path, needle);
  };
  check("jpeg_dht_over_256_codes.jpg", "Huffman table");
  check("jpeg_dht_after_padding.jpg", "Huffman table");
  check("jpeg_dht_in_header_scan.jpg", "Huffman table");
  check("jpeg_dht_truncated_segment.jpg", "Huffman table");
  check("jpeg_dht_after_fill_before_soi.jpg", "Huffman table");
  check("jpeg_undefined_huffman_table.jpg", "no DHT segment defined");
  check("bmp_v5_unknown_compression_truncated.bmp", "truncated BMP");
  check("png_huge_header_tiny_file.png", "cannot be compressed into");
  // An empty first IDAT reached stb as a null pointer; now it is dropped and stb refuses the bad chunk
  // that follows, with its non-UTF-8 type bytes escaped.
  check("png_empty_first_idat.png", "PNG chunk not known");
}

// ---------------------------------------------------------------------------------------------------------
// safetensors limits

TEST_CASE("safetensors: sizes, offsets, ranks and names are checked before anything is allocated") {
  const std::string f = "crafted.safetensors";
  auto parse = [&](const Bytes& b) { return parse_safetensors(b.data(), b.size(), f); };
  const Bytes four(4, 0);
  // The 8-byte header size against the file and the cap.
  CHECK_ONE_LINE_ERROR(parse(Bytes(5, 0)), f, "too short");
  Bytes huge = safetensors_bytes("{}");
  huge[7] = 0x7f;
  CHECK_ONE_LINE_ERROR(parse(huge), f, "exceeds");
  Bytes past_end = safetensors_bytes("{}");
  past_end[0] = 100;
  CHECK_ONE_LINE_ERROR(parse(past_end), f, "truncated");
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes("")), f, "header size is 0");
  // JSON: syntax, duplicates, nesting, type.
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes("{\"a\": ")), f, "invalid JSON");
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes("[1, 2]")), f, "not a JSON object");
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                                               R"("a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", four)),
                       f, "appears twice");
  const std::string deep = "{\"__metadata__\": {\"k\": " + std::string(200, '[') + std::string(200, ']') + "}}";
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes(deep)), f, "nesting deeper than");
  const std::string very_deep = std::string(100000, '[') + std::string(100000, ']');
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes(very_deep)), f, "nesting deeper than");
  // Names.
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes(R"({"":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", four)), f, "empty name");
  const std::string long_name(size_t(limits::kMaxNameBytes) + 1, 'n');
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes("{\"" + long_name + R"(":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", four)),
                       f, "exceeds the 4096-byte limit");
  // A name with a newline and an escape sequence: the message stays one line.
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes(R"({"a\nb\u001b[31m":{"dtype":"Q8","shape":[4],"data_offsets":[0,4]}})", four)),
                       f, "a\\x0ab\\x1b[31m");
  // Shapes: rank, negative, overflow, element count vs byte span.
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes(R"({"t":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,4],"data_offsets":[0,4]}})", four)),
                       f, "9 dimensions");
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes(R"({"t":{"dtype":"U8","shape":[-4],"data_offsets":[0,4]}})", four)), f, "negative");
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes(R"({"t":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}})", four)),
                       f, "too many elements");
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes(R"({"t":{"dtype":"F64","shape":[1073741824,4],"data_offsets":[0,4]}})", four)),
                       f, "per-tensor limit");
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", four)),
                       f, "data_offsets span 4");
  // Offsets: order, bounds, overlap, gaps, trailing bytes.
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes(R"({"t":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", four)), f, "begin > end");
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes(R"({"t":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}})", four)), f, "exceed the 4-byte");
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes(R"({"t":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,4]}})", four)),
                       f, "too large");
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes(R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},)"
                                               R"("b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})", four)),
                       f, "overlap");
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})", four)), f, "gap");
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", four)), f, "belong to no tensor");
  CHECK_ONE_LINE_ERROR(parse(safetensors_bytes(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"__metadata__":{"k":1}})", four)),
                       f, "must be a string");
  // Out-of-order offsets that tile the buffer are valid: the reader sorts them.
  const auto ok = parse(safetensors_bytes(R"({"b":{"dtype":"U8","shape":[1],"data_offsets":[3,4]},)"
                                          R"("a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})", {1, 2, 3, 4}));
  REQUIRE(ok.size() == 2);
  CHECK(ok.at("b").bytes == Bytes{4});
}

TEST_CASE("safetensors and npy readers refuse what is not a regular file") {
  TempDir dir;
  const fs::path fifo = dir.path / "pipe.safetensors";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // Opening a FIFO for reading would block until a writer appears: the readers must not open it at all.
  CHECK_ONE_LINE_ERROR(read_safetensors(fifo.string()), fifo.string(), "not a regular file");
  CHECK_ONE_LINE_ERROR(read_npy(fifo.string()), fifo.string(), "not a regular file");
  CHECK_ONE_LINE_ERROR(read_image(fifo.string()), fifo.string(), "not a regular file");
  CHECK_ONE_LINE_ERROR(read_npy(dir.path.string()), dir.path.string(), "");
  CHECK_ONE_LINE_ERROR(read_safetensors((dir.path / "absent").string()), "absent", "");
}

// ---------------------------------------------------------------------------------------------------------
// .npy limits

TEST_CASE("npy: header length, dict syntax, shape parsing and data size are checked") {
  const std::string f = "crafted.npy";
  auto parse = [&](const Bytes& b) { return parse_npy(b.data(), b.size(), f); };
  const std::string good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  REQUIRE(parse(npy_bytes(good, 24)).shape == Shape{2, 3});
  CHECK_ONE_LINE_ERROR(parse(bytes_of("\x93NUMPX")), f, "magic");
  CHECK_ONE_LINE_ERROR(parse(npy_bytes(good, 24, 4)), f, "version 4.0");
  Bytes long_header = npy_bytes(good, 24, 2);
  long_header[10] = 0xff, long_header[11] = 0xff;
  CHECK_ONE_LINE_ERROR(parse(long_header), f, "header length");
  Bytes past_end = npy_bytes(good, 0);
  past_end[8] = 0xff;
  CHECK_ONE_LINE_ERROR(parse(past_end), f, "truncated .npy header");
  CHECK_ONE_LINE_ERROR(parse(npy_bytes("{'descr': '<f4', 'descr': '<f8', 'fortran_order': False, 'shape': (2,)}", 8)), f, "appears twice");
  CHECK_ONE_LINE_ERROR(parse(npy_bytes("{'descr': '<f4', 'fortran_order': False}", 0)), f, "lacks 'shape'");
  CHECK_ONE_LINE_ERROR(parse(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,3}", 0)), f, "expected ',' or ')'");
  CHECK_ONE_LINE_ERROR(parse(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", 24)), f, "unexpected key");
  CHECK_ONE_LINE_ERROR(parse(npy_bytes("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,)}", 8)), f, "True or False");
  CHECK_ONE_LINE_ERROR(parse(npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3)}", 24)), f, "Fortran-order");
  CHECK_ONE_LINE_ERROR(parse(npy_bytes("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3)}", 24)), f, "big-endian");
  CHECK_ONE_LINE_ERROR(parse(npy_bytes("{'descr': '<c8', 'fortran_order': False, 'shape': (2, 3)}", 48)), f, "not supported");
  CHECK_ONE_LINE_ERROR(parse(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}", 0)), f, "too large");
  CHECK_ONE_LINE_ERROR(parse(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4)}", 0)), f,
                       "too many elements");
  CHECK_ONE_LINE_ERROR(parse(npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (1073741824, 4)}", 0)), f,
                       "per-tensor limit");
  CHECK_ONE_LINE_ERROR(parse(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1)}", 4)), f,
                       "more than 8 dimensions");
  // A 100,000-dimension shape of zeros would be a 0-byte array: refused by rank before any vector grows.
  std::string zeros = "(";
  for (int i = 0; i < 100000; ++i) zeros += "0,";
  CHECK_ONE_LINE_ERROR(parse(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': " + zeros + ")}", 0, 2)), f, "dimensions");
  CHECK_ONE_LINE_ERROR(parse(npy_bytes(good, 20)), f, "truncated data");
  CHECK_ONE_LINE_ERROR(parse(npy_bytes(good, 28)), f, "unexpected bytes");
  // Control characters in the dict are escaped: the error stays one line.
  CHECK_ONE_LINE_ERROR(parse(npy_bytes("{'descr': '<f4',\x01 'fortran_order': False, 'shape': (2,)}", 8)), f, "\\x01");
  CHECK_ONE_LINE_ERROR(parse(npy_bytes("{'descr': '<\n\x1b[2J', 'fortran_order': False, 'shape': (2,)}", 8)), f, "\\x0a\\x1b[2J");
}

// ---------------------------------------------------------------------------------------------------------
// Images: checks before stb sees the data

TEST_CASE("images: a zlib bomb in a PNG is refused without inflating it") {
  // A 1x1 PNG whose IDAT inflates to 64 MiB (~64 KiB compressed): stb would grow its buffer to hold it all.
  const Bytes bomb = png_bytes(1, 1, Bytes(size_t(64) << 20, 0));
  CHECK(bomb.size() < 200000);
  CHECK_ONE_LINE_ERROR(decode_image(bomb.data(), bomb.size(), "bomb.png"), "bomb.png", "");
  // The same construction with the right amount of data decodes (the test builder is sound).
  const Bytes small = png_bytes(3, 2, Bytes{0, 10, 20, 30, 0, 40, 50, 60});
  const Image ok = decode_image(small.data(), small.size(), "ok.png");
  CHECK(ok.width == 3);
  CHECK(ok.pixels[3] == 20);
}

TEST_CASE("images: empty IDAT chunks before the data are legal and decode") {
  const Bytes png = png_bytes(2, 1, Bytes{0, 7, 9}, {{"IDAT", {}}, {"IDAT", {}}});
  const Image image = decode_image(png.data(), png.size(), "empty_idat.png");
  CHECK(image.width == 2);
  CHECK(image.pixels[0] == 7);
  CHECK(image.pixels[3] == 9);
}

TEST_CASE("images: headers claiming more pixels than the file can hold are refused before decoding") {
  // PNG: 16000 x 16000 gray in ~100 bytes.
  Bytes png = png_bytes(1, 1, Bytes{0, 0});
  png[16] = 0, png[17] = 0, png[18] = 0x3e, png[19] = 0x80;  // width 16000
  png[20] = 0, png[21] = 0, png[22] = 0x3e, png[23] = 0x80;  // height 16000 (the CRC is not checked first)
  CHECK_ONE_LINE_ERROR(decode_image(png.data(), png.size(), "big.png"), "big.png", "cannot be compressed into");
  // JPEG: the fixture's SOF edited to 16000 x 16000.
  Bytes jpeg = slurp(kSource / "tests/fixtures/image/rgb.jpg");
  bool edited = false;
  for (size_t i = 2; i + 8 < jpeg.size() && !edited; ++i) {
    if (jpeg[i] == 0xFF && (jpeg[i + 1] == 0xC0 || jpeg[i + 1] == 0xC2)) {
      jpeg[i + 5] = 0x3e, jpeg[i + 6] = 0x80, jpeg[i + 7] = 0x3e, jpeg[i + 8] = 0x80;
      edited = true;
    }
  }
  REQUIRE(edited);
  CHECK_ONE_LINE_ERROR(decode_image(jpeg.data(), jpeg.size(), "big.jpg"), "big.jpg", "need at least");
  // Over the side limit at all.
  png[18] = 0x7f;
  CHECK_ONE_LINE_ERROR(decode_image(png.data(), png.size(), "huge.png"), "huge.png", "");
}

TEST_CASE("images: BMP heights: top-down rows decode, INT_MIN does not reach stb's abs()") {
  // 2x2 24-bit top-down BMP (negative height), rows padded to 8 bytes.
  Bytes bmp = {'B', 'M', 70, 0, 0, 0, 0, 0, 0, 0, 54, 0, 0, 0, 40, 0, 0, 0, 2, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff,
               1, 0, 24, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0x13, 0x0b, 0, 0, 0x13, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  const Bytes pixels = {1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12, 0, 0};  // BGR
  bmp.insert(bmp.end(), pixels.begin(), pixels.end());
  const Image image = decode_image(bmp.data(), bmp.size(), "topdown.bmp");
  CHECK(image.height == 2);
  CHECK(image.pixels[0] == 3);  // first row stored first: R of pixel (0, 0)
  CHECK(image.pixels[6] == 9);
  bmp[22] = 0, bmp[23] = 0, bmp[24] = 0, bmp[25] = 0x80;  // height INT_MIN
  CHECK_ONE_LINE_ERROR(decode_image(bmp.data(), bmp.size(), "int_min.bmp"), "int_min.bmp", "");
}

// ---------------------------------------------------------------------------------------------------------
// Seeded mutations of every data file in the repository

TEST_CASE("mutated copies of every .safetensors, .npy, .png, .jpg and .bmp file decode or fail cleanly") {
  MutationReport report;
  TempDir dir;
  // Small safetensors files of every dtype, written by camrt itself, so the mutations reach every branch.
  std::map<std::string, HostTensor> tensors;
  for (DType d : {DType::F32, DType::F16, DType::F64, DType::I64, DType::I32, DType::I8, DType::U8, DType::Bool})
    tensors.emplace(std::string("t_") + dtype_name(d), HostTensor(d, {2, 3}));
  tensors.emplace("scalar", HostTensor(DType::F32, {}));
  tensors.emplace("empty", HostTensor(DType::I64, {0, 5}));
  write_safetensors((dir.path / "all_dtypes.safetensors").string(), tensors, {{"producer", "test"}});

  std::vector<fs::path> files = repository_files({".safetensors", ".npy", ".png", ".jpg", ".bmp"});
  files.push_back(dir.path / "all_dtypes.safetensors");
  int safetensors_files = 0, npy_files = 0, image_files = 0;
  for (const fs::path& file : files) {
    const std::string ext = file.extension().string();
    const Bytes original = slurp(file);
    // The work per file shrinks with its size (large golden .npy dumps differ only in their data, large
    // images cost the most to decode), which keeps the whole test within seconds.
    const size_t per_file_bytes = size_t(2) << 20;
    const int budget = int(std::clamp<size_t>(per_file_bytes / std::max<size_t>(original.size(), 1), 4, 150));
    if (ext == ".safetensors") {
      uint64_t header = 0;
      for (int i = 7; i >= 0 && original.size() >= 8; --i) header = header << 8 | original[size_t(i)];
      run_mutations(Kind::Safetensors, file, original, std::max(budget, 40), size_t(std::min<uint64_t>(header + 8, 1 << 16)), &report);
      ++safetensors_files;
    } else if (ext == ".npy") {
      run_mutations(Kind::Npy, file, original, budget, 128, &report);
      ++npy_files;
    } else {
      run_mutations(Kind::Image, file, original, budget, 1024, &report);
      ++image_files;
    }
  }
  INFO("inputs " << report.inputs << ", decoded " << report.decoded << ", refused " << report.refused);
  for (const auto& finding : report.findings) ADD_FAIL_CHECK_AT(__FILE__, __LINE__, finding);
  CHECK(report.findings.empty());
  CHECK(safetensors_files >= 2);
  CHECK(npy_files >= 100);
  CHECK(image_files >= 14);
  // The mutations must be neither all harmless nor all fatal, or they test nothing.
  CHECK(report.decoded > report.inputs / 50);
  CHECK(report.refused > report.inputs / 4);
}

TEST_CASE("mutated files read through read_* (the file path, not memory) fail cleanly too") {
  TempDir dir;
  std::mt19937_64 rng(7);
  const std::vector<std::pair<fs::path, Kind>> sources = {
      {kSource / "tests/fixtures/image/rgb.png", Kind::Image},
      {kSource / "tests/fixtures/image/rgb_progressive.jpg", Kind::Image},
      {kSource / "tests/fixtures/image/gray.bmp", Kind::Image},
      {kSource / "tests/fixtures/image/gradient.npy", Kind::Npy}};
  int refused = 0;
  for (const auto& entry : sources) {
    const fs::path& source = entry.first;
    const Kind kind = entry.second;
    const Bytes original = slurp(source);
    for (int i = 0; i < 30; ++i) {
      const fs::path path = dir.path / ("m" + std::to_string(i) + source.extension().string());
      spit(path, mutate(original, rng, 256));
      const std::string message = outcome([&] {
        if (kind == Kind::Image) (void)read_image(path.string());
        else (void)read_npy(path.string());
      });
      CAPTURE(message);
      CHECK((message.empty() || (message[0] != '!' && message.find(path.string()) != std::string::npos &&
                                 message.find('\n') == std::string::npos)));
      refused += !message.empty();
    }
  }
  CHECK(refused > 10);
}

// ---------------------------------------------------------------------------------------------------------
// Output names derived from input data

TEST_CASE("sanitize_file_name: no separators, no '..', no control characters, no leading '-' or '.'") {
  const std::vector<std::string> hostile = {"../../etc/x", "..", ".", "", "/", "\\..\\..\\win", "-rf", ".hidden",
                                            "a\nb\rc\td", std::string("nul\0byte", 8), "x/../../y", "...",
                                            "\xff\xfe\xc0\xaf", "\x1b[31mred", std::string(1000, 'a'),
                                            "T-shirt/top", "caf\xc3\xa9 \xe7\x8c\xab"};
  std::set<std::string> seen;
  for (const std::string& name : hostile) {
    const std::string s = sanitize_file_name(name);
    CAPTURE(name);
    CAPTURE(s);
    CHECK(!s.empty());
    CHECK(s.size() <= kMaxDerivedNameBytes);
    CHECK(s.find('/') == std::string::npos);
    CHECK(s.find('\\') == std::string::npos);
    CHECK(s.find("..") == std::string::npos);
    CHECK(s[0] != '-');
    CHECK(s[0] != '.');
    for (unsigned char c : s) CHECK((c >= 0x20 && c != 0x7f));
    CHECK(fs::path(s).filename().string() == s);
  }
  CHECK(sanitize_file_name("../../etc/x") == "_._.__etc_x");
  CHECK(sanitize_file_name("T-shirt/top") == "T-shirt_top");
  CHECK(sanitize_file_name("caf\xc3\xa9 \xe7\x8c\xab") == "caf\xc3\xa9 \xe7\x8c\xab");  // UTF-8 is kept
  CHECK(sanitize_file_name("dog.1.gradcam") == "dog.1.gradcam");                       // ordinary names unchanged
  // Cut at a character boundary: 159 ASCII bytes then a 3-byte character that would end at 162.
  const std::string cut = sanitize_file_name(std::string(159, 'a') + "\xe7\x8c\xab");
  CHECK(cut == std::string(159, 'a'));
}

TEST_CASE("safe_output_path: the result is always a direct child of the output folder") {
  const std::string dir = "/tmp/camrt-out";
  for (const std::string& name : {"../../etc/passwd", "..", "a/../../b", "/abs", "x.", "-"}) {
    const fs::path p = safe_output_path(dir, name, ".png");
    CAPTURE(p.string());
    CHECK(p.parent_path() == fs::path(dir));
    CHECK(p.filename().string().find("..") == std::string::npos);
    CHECK(p.extension() == ".png");
  }
  CHECK(safe_output_path(dir, "cat.gradcam", ".png") == "/tmp/camrt-out/cat.gradcam.png");
  // camrt's own suffix must be a plain ending.
  CHECK_THROWS_AS(safe_output_path(dir, "x", "/../y"), Error);
}

TEST_CASE("printable_name: one line, bounded, UTF-8 kept") {
  CHECK(printable_name("a\nb") == "a\\x0ab");
  CHECK(printable_name("\xff") == "\\xff");
  CHECK(printable_name("caf\xc3\xa9") == "caf\xc3\xa9");
  CHECK(printable_name(std::string(500, 'x'), 10) == std::string(10, 'x') + "...");
}

TEST_CASE("atomic writes never follow a symlink planted at the temporary name") {
  TempDir dir;
  const fs::path victim = dir.path / "victim.txt", target = dir.path / "out.txt";
  spit(victim, bytes_of("precious"));
  const fs::path temp = target.string() + ".tmp." + std::to_string(::getpid());
  fs::create_symlink(victim, temp);
  write_file_atomic(target.string(), "new", 3);
  CHECK(slurp(victim) == bytes_of("precious"));
  CHECK(slurp(target) == bytes_of("new"));
  CHECK(!fs::exists(fs::symlink_status(temp)));
}

namespace {

int run_cli(const std::string& arguments, const fs::path& log) {
  const std::string command = std::string(CAMRT_CLI_PATH) + " " + arguments + " >" + log.string() + " 2>&1";
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::set<std::string> tree(const fs::path& root) {
  std::set<std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(root)) files.insert(fs::relative(e.path(), root).string());
  return files;
}

}  // namespace

TEST_CASE("cli explain: hostile labels and image names write only sanitized files inside --out") {
  const fs::path model_dir = kSource / "weights/models/fashion-canvas";
  REQUIRE(fs::exists(model_dir / "model.json"));
  TempDir sandbox;
  // A copy of the shipped model whose labels try to escape and to inject terminal escapes.
  const fs::path model = sandbox.path / "model";
  fs::create_directories(model);
  fs::copy_file(model_dir / "model.safetensors", model / "model.safetensors");
  std::string json = read_text(model_dir / "model.json");
  const size_t labels_at = json.find("\"T-shirt/top\"");
  REQUIRE(labels_at != std::string::npos);
  json.replace(labels_at, std::string("\"T-shirt/top\"").size(), "\"../../../escaped\"");
  for (const char* label : {"\"Trouser\"", "\"Pullover\"", "\"Dress\""}) {
    const size_t at = json.find(label);
    REQUIRE(at != std::string::npos);
    const std::string hostile = std::string(label) == "\"Trouser\"" ? "\"/tmp/abs\"" : std::string(label) == "\"Pullover\"" ? "\"\\u001b[2J\"" : "\"..\"";
    json.replace(at, std::string(label).size(), hostile);
  }
  {
    std::ofstream out(model / "model.json");
    out << json;
  }
  // Inputs named to escape: "..png" (stem "."), "-x.png" (stem looks like an option), one with a newline.
  const fs::path inputs = sandbox.path / "in";
  fs::create_directories(inputs);
  for (const char* name : {"..png", "-x.png", "a\nb.png"}) fs::copy_file(kSource / "tests/fixtures/image/rgb.png", inputs / name);
  const fs::path out = sandbox.path / "deep" / "out";
  const std::set<std::string> before = tree(sandbox.path);

  const fs::path log = sandbox.path / "log.txt";
  const int code = run_cli("explain '" + (model / "model.json").string() + "' '" + inputs.string() + "' --method gradcam --topk 10 --out '" +
                               out.string() + "' --device cpu --threads 1",
                           log);
  const std::string text = read_text(log);
  INFO(text);
  REQUIRE(code == 0);
  // Nothing appeared outside --out, and nothing outside the sandbox was touched.
  std::set<std::string> after = tree(sandbox.path);
  after.erase("log.txt");
  std::set<std::string> created;
  std::set_difference(after.begin(), after.end(), before.begin(), before.end(), std::inserter(created, created.end()));
  for (const std::string& path : created) {
    CAPTURE(path);
    CHECK((path == "deep" || path.rfind("deep/out", 0) == 0));
  }
  CHECK(!fs::exists("/tmp/abs"));
  const std::set<std::string> outputs = tree(out);
  CHECK(outputs.count("results.json") == 1);
  CHECK(outputs.count("_.gradcam.png") == 1);   // from "..png"
  CHECK(outputs.count("_x.gradcam.png") == 1);  // from "-x.png"
  CHECK(outputs.count("a_b.gradcam.png") == 1); // from "a\nb.png"
  for (const std::string& name : outputs) {
    CHECK(name.find('/') == std::string::npos);
    CHECK(name.find("..") == std::string::npos);
  }
  // The printed labels are escaped: no raw escape character reaches the terminal.
  CHECK(text.find('\x1b') == std::string::npos);
}

TEST_CASE("cli explain: inputs whose output names would collide get distinct names, none overwritten") {
  const fs::path model = kSource / "weights/models/fashion-canvas/model.json";
  REQUIRE(fs::exists(model));
  TempDir sandbox;
  // "a\nb.png" and "a_b.png" sanitize to the same stem; in1/cat.png and in2/CAT.png differ only in folder and case.
  const fs::path in1 = sandbox.path / "in1", in2 = sandbox.path / "in2";
  fs::create_directories(in1);
  fs::create_directories(in2);
  for (const fs::path& p : {in1 / "a\nb.png", in1 / "a_b.png", in1 / "cat.png", in2 / "CAT.png"})
    fs::copy_file(kSource / "tests/fixtures/image/rgb.png", p);
  const fs::path out = sandbox.path / "out";
  const fs::path log = sandbox.path / "log.txt";
  const int code = run_cli("explain '" + model.string() + "' '" + in1.string() + "' '" + in2.string() +
                               "' --method gradcam --out '" + out.string() + "' --device cpu --threads 1",
                           log);
  INFO(read_text(log));
  REQUIRE(code == 0);
  const std::set<std::string> outputs = tree(out);
  for (const char* name : {"a_b.gradcam.png", "a_b-2.gradcam.png", "cat.gradcam.png", "CAT-2.gradcam.png"}) {
    CAPTURE(name);
    CHECK(outputs.count(name) == 1);
  }
  int64_t maps = 0;
  for (const std::string& name : outputs) maps += name.size() > 12 && name.substr(name.size() - 12) == ".gradcam.png";
  CHECK(maps == 4);  // one per input: nothing was written twice under one name
}
