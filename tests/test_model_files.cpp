// camrt's file formats: safetensors (weights), model.json + weights (load_model/save_model), .npy, and the
// atomic writer under all of them. Round trips, byte-level checks of what the writers emit, hand-built files
// written from the specs, and one test per kind of malformed input checking the message names the problem.
#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <stdexcept>

#include "engine/atomic_file.h"
#include "engine/npy.h"
#include "weights/model.h"
#include "weights/safetensors.h"

using namespace camrt;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;  // test-local: distinct directories for the cases of one process
    path = fs::temp_directory_path() /
           ("camrt_test_model_files_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The message of the camrt::Error that f throws; any other outcome is returned as a description
// that will not contain the expected text, so the CHECK below fails and prints it.
template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("a non-camrt exception escaped: ") + e.what();
  }
  return "no exception was thrown";
}

// Checks that expr throws camrt::Error (and nothing else) and that the message contains `needle`.
#define CHECK_ERROR(expr, needle)                                                     \
  do {                                                                                \
    CHECK_THROWS_AS((void)(expr), camrt::Error);                                      \
    const std::string message_ = error_message([&] { (void)(expr); });                \
    CHECK_MESSAGE(message_.find(needle) != std::string::npos, "message: " << message_); \
  } while (0)

std::string u64_le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A safetensors file from its parts: the size prefix is always the header's true length.
std::string safetensors_bytes(const std::string& header, const std::string& buffer) {
  return u64_le(header.size()) + header + buffer;
}

std::map<std::string, HostTensor> parse_st(const std::string& bytes) {
  return parse_safetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "test.safetensors");
}

HostTensor filled(DType dtype, const Shape& shape, int seed) {
  HostTensor t(dtype, shape);
  for (size_t i = 0; i < t.bytes.size(); ++i) t.bytes[i] = static_cast<uint8_t>(seed * 31 + i * 7);
  if (dtype == DType::Bool)
    for (auto& b : t.bytes) b &= 1;
  return t;
}

void check_same(const HostTensor& a, const HostTensor& b) {
  CHECK(a.dtype == b.dtype);
  CHECK(a.shape == b.shape);
  CHECK(a.bytes == b.bytes);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// atomic files

TEST_CASE("write_file_atomic writes, replaces, and leaves no temporary behind") {
  TempDir dir;
  const std::string path = dir.file("out.bin");
  write_file_atomic(path, "first", 5);
  CHECK(read_bytes(path) == "first");
  write_file_atomic(path, [](AtomicFile& f) {
    f.write("sec", 3);
    f.write(std::string("ond"));
  });
  CHECK(read_bytes(path) == "second");
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
}

TEST_CASE("write_file_atomic keeps the old file when the producer fails, and names the path on errors") {
  TempDir dir;
  const std::string path = dir.file("out.bin");
  write_file_atomic(path, "old", 3);
  CHECK_THROWS_AS(write_file_atomic(path,
                                    [](AtomicFile& f) {
                                      f.write("partial", 7);
                                      throw std::runtime_error("producer failed");
                                    }),
                  std::runtime_error);
  CHECK(read_bytes(path) == "old");
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
  const std::string missing_dir_path = dir.file("no/such/dir/out.bin");
  CHECK_ERROR(write_file_atomic(missing_dir_path, "x", 1), missing_dir_path);
}

// ---------------------------------------------------------------------------------------------------------
// safetensors

TEST_CASE("safetensors round trip: every dtype, scalar and empty tensors, metadata") {
  TempDir dir;
  std::map<std::string, HostTensor> tensors;
  tensors["f32"] = filled(DType::F32, {2, 3}, 1);
  tensors["f16"] = filled(DType::F16, {5}, 2);
  tensors["f64"] = filled(DType::F64, {1, 1, 3}, 3);
  tensors["i64"] = filled(DType::I64, {3}, 4);
  tensors["i32"] = filled(DType::I32, {2, 2}, 5);
  tensors["i8"] = filled(DType::I8, {7}, 6);  // odd byte counts make the following tensors unaligned
  tensors["u8"] = filled(DType::U8, {3}, 7);
  tensors["bool"] = filled(DType::Bool, {4}, 8);
  tensors["scalar"] = filled(DType::F32, {}, 9);
  tensors["empty"] = HostTensor(DType::F32, {0, 3});
  tensors["layer1.0.conv1.weight"] = filled(DType::F32, {4, 2, 3, 3}, 10);
  const std::map<std::string, std::string> metadata = {{"format", "camrt"}, {"note", "héllo"}};
  const std::string path = dir.file("w.safetensors");
  write_safetensors(path, tensors, metadata);

  std::map<std::string, std::string> metadata_back;
  const auto back = read_safetensors(path, &metadata_back);
  CHECK(metadata_back == metadata);
  REQUIRE(back.size() == tensors.size());
  for (const auto& [name, t] : tensors) {
    CAPTURE(name);
    REQUIRE(back.count(name));
    check_same(back.at(name), t);
  }
  CHECK(back.at("scalar").numel() == 1);
  CHECK(back.at("empty").bytes.empty());

  // The in-memory parser agrees with the file reader.
  const auto from_memory = parse_st(read_bytes(path));
  REQUIRE(from_memory.size() == tensors.size());
  for (const auto& [name, t] : tensors) check_same(from_memory.at(name), t);
}

TEST_CASE("written safetensors: buffer 64-byte aligned, tensors back to back in name order") {
  TempDir dir;
  std::map<std::string, HostTensor> tensors;
  tensors["b"] = filled(DType::U8, {3}, 1);
  tensors["a"] = filled(DType::F32, {2}, 2);
  tensors["c"] = filled(DType::I64, {1}, 3);
  const std::string path = dir.file("w.safetensors");
  write_safetensors(path, tensors);
  const std::string bytes = read_bytes(path);
  REQUIRE(bytes.size() >= 8);
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | static_cast<uint8_t>(bytes[i]);
  CHECK((8 + header_size) % 64 == 0);
  // Exactly the data after the header: a (8 bytes), b (3), c (8), no padding between (the spec forbids gaps).
  REQUIRE(bytes.size() == 8 + header_size + 8 + 3 + 8);
  const std::string buffer = bytes.substr(8 + header_size);
  const auto as_string = [](const HostTensor& t) { return std::string(t.bytes.begin(), t.bytes.end()); };
  CHECK(buffer == as_string(tensors["a"]) + as_string(tensors["b"]) + as_string(tensors["c"]));
  // The header is JSON padded only with trailing spaces, and records those offsets.
  const json header = json::parse(bytes.substr(8, header_size));
  CHECK(header["a"]["data_offsets"] == json::array({0, 8}));
  CHECK(header["b"]["data_offsets"] == json::array({8, 11}));
  CHECK(header["c"]["data_offsets"] == json::array({11, 19}));
  CHECK(header["a"]["dtype"] == "F32");
  CHECK(header["b"]["shape"] == json::array({3}));
  CHECK_FALSE(header.contains("__metadata__"));  // omitted when empty
  const std::string header_text = bytes.substr(8, header_size);
  CHECK(header_text.find_last_not_of(' ') == header_text.rfind('}'));
}

TEST_CASE("safetensors reader accepts a hand-built spec file with an unaligned buffer") {
  // Built from the spec, byte by byte: the 107-byte header (0x6b) below, as the 8-byte little-endian
  // size, then the header itself (tensors in any order; here w is listed after b but stored first),
  // then the buffer: w = F32 [1.0, -2.0] (IEEE bits 0x3f800000, 0xc0000000, little-endian) at [0, 8),
  // b = U8 [1, 2, 255] at [8, 11). The buffer starts at byte 8 + 107 = 115, aligned to nothing.
  const std::string header =
      R"({"b":{"dtype":"U8","shape":[3],"data_offsets":[8,11]},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  REQUIRE(header.size() == 107);
  const std::string file = std::string("\x6b\0\0\0\0\0\0\0", 8) + header +
                           std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0\x01\x02\xff", 11);
  const auto tensors = parse_st(file);
  REQUIRE(tensors.size() == 2);
  CHECK(tensors.at("w").shape == Shape{2});
  CHECK(tensors.at("w").to_float() == std::vector<float>{1.0f, -2.0f});
  CHECK(tensors.at("b").dtype == DType::U8);
  CHECK(tensors.at("b").to_int64() == std::vector<int64_t>{1, 2, 255});

  // Same bytes from a file; plus a header padded with trailing spaces (allowed by the spec).
  TempDir dir;
  write_bytes(dir.file("hand.safetensors"), file);
  CHECK(read_safetensors(dir.file("hand.safetensors")).at("w").to_float() == std::vector<float>{1.0f, -2.0f});
  const auto padded = parse_st(safetensors_bytes(header + "     ", file.substr(8 + 107)));
  CHECK(padded.at("b").to_int64() == std::vector<int64_t>{1, 2, 255});
  // An empty file with no tensors and metadata only is valid too.
  std::map<std::string, std::string> meta;
  const std::string metadata_only = safetensors_bytes(R"({"__metadata__":{"k":"v"}})", "");
  CHECK(parse_safetensors(reinterpret_cast<const uint8_t*>(metadata_only.data()), metadata_only.size(), "m", &meta).empty());
  CHECK(meta == std::map<std::string, std::string>{{"k", "v"}});
}

TEST_CASE("safetensors reader rejects each kind of malformed file with a specific message") {
  const std::string ok_entry = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string eight(8, '\x01');
  REQUIRE_NOTHROW(parse_st(safetensors_bytes("{" + ok_entry + "}", eight)));

  // File too short for the size prefix.
  CHECK_ERROR(parse_st(std::string("\x10\0\0", 3)), "too short for the 8-byte header size");
  // Header size larger than the file.
  CHECK_ERROR(parse_st(u64_le(500) + "{}"), "header size 500 exceeds the 2 bytes after the size field");
  // Header size over the 100 MB cap (checked before the file size).
  CHECK_ERROR(parse_st(u64_le(200'000'000) + "{}"), "exceeds the 100000000-byte cap");
  // Not JSON / not an object.
  CHECK_ERROR(parse_st(safetensors_bytes("{\"t\": tru}", "")), "invalid JSON at byte");
  CHECK_ERROR(parse_st(safetensors_bytes("[1, 2]", "")), "header is not a JSON object");
  // Duplicate tensor names (nlohmann alone would keep the last silently).
  CHECK_ERROR(parse_st(safetensors_bytes("{" + ok_entry + "," + ok_entry + "}", eight)), "key 't' appears twice");
  // Unknown dtype.
  CHECK_ERROR(parse_st(safetensors_bytes(R"({"t":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]}})", eight)),
              "tensor 't': dtype 'BF16' is not supported");
  // Negative and non-integer dims.
  CHECK_ERROR(parse_st(safetensors_bytes(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight)),
              "tensor 't': shape[0] is -2, a negative dimension");
  CHECK_ERROR(parse_st(safetensors_bytes(R"({"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", eight)),
              "shape[0] must be an integer");
  // Byte count of shape x dtype differs from the offsets (the brief's example message, verbatim).
  const std::string conv = R"({"conv1.weight":{"dtype":"F32","shape":[64,3,7,7],"data_offsets":[0,100]}})";
  CHECK_ERROR(parse_st(safetensors_bytes(conv, std::string(100, '\0'))),
              "test.safetensors: tensor 'conv1.weight': shape (64, 3, 7, 7) x F32 = 37632 bytes but data_offsets span 100");
  // Overflowing shape products are caught, not wrapped around to a matching size.
  CHECK_ERROR(parse_st(safetensors_bytes(
                  R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})", "")),
              "too many elements");
  // Offsets beyond the buffer, begin > end, malformed offsets.
  CHECK_ERROR(parse_st(safetensors_bytes(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", eight)),
              "data_offsets [4, 12] exceed the 8-byte data buffer");
  CHECK_ERROR(parse_st(safetensors_bytes(R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", eight)),
              "data_offsets [8, 0] have begin > end");
  CHECK_ERROR(parse_st(safetensors_bytes(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}})", eight)),
              "data_offsets must be two non-negative integers");
  CHECK_ERROR(parse_st(safetensors_bytes(R"({"t":{"dtype":"F32","shape":[2]}})", eight)), "tensor 't': missing 'data_offsets'");
  // Two tensors sharing bytes.
  CHECK_ERROR(parse_st(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                         R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                         eight)),
              "tensors 'a' [0, 8] and 'b' [4, 8] overlap");
  // A gap between tensors, and unclaimed bytes at the end (the spec forbids both).
  CHECK_ERROR(parse_st(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                         R"("b":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}})",
                                         eight)),
              "gap in the data buffer: bytes [4, 6) before tensor 'b'");
  CHECK_ERROR(parse_st(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", eight)),
              "bytes [4, 8) at the end of the data buffer belong to no tensor");
  // Metadata values must be strings.
  CHECK_ERROR(parse_st(safetensors_bytes(R"({"__metadata__":{"epoch":3}})", "")), "__metadata__['epoch'] must be a string");
  // The file reader names the file and reports truncation the same way.
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  write_bytes(path, safetensors_bytes("{" + ok_entry + "}", eight).substr(0, 30));
  CHECK_ERROR(read_safetensors(path), path + ": header size");
  CHECK_ERROR(read_safetensors(dir.file("missing.safetensors")), "missing.safetensors: cannot read");
}

TEST_CASE("safetensors writer rejects what it cannot write faithfully") {
  TempDir dir;
  std::map<std::string, HostTensor> bad;
  bad["__metadata__"] = filled(DType::F32, {1}, 1);
  CHECK_ERROR(write_safetensors(dir.file("a.safetensors"), bad), "'__metadata__' (reserved");
  std::map<std::string, HostTensor> inconsistent;
  inconsistent["t"] = filled(DType::F32, {2}, 1);
  inconsistent["t"].bytes.resize(5);
  CHECK_ERROR(write_safetensors(dir.file("b.safetensors"), inconsistent), "tensor 't': shape (2,) x F32 needs 8 bytes but holds 5");
  std::map<std::string, HostTensor> not_utf8;
  not_utf8["bad\xff"] = filled(DType::U8, {1}, 1);
  CHECK_ERROR(write_safetensors(dir.file("c.safetensors"), not_utf8), "is not valid UTF-8");
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 0);  // nothing half-written
}

// ---------------------------------------------------------------------------------------------------------
// model.json + weights

namespace {

// A small but complete model: conv -> relu -> pool -> flatten -> gemm, with an omitted optional input.
Model tiny_model() {
  Model m;
  m.inputs = {{"input", DType::F32, {-1, 3, 8, 8}}};
  m.outputs = {{"logits", DType::F32, {-1, 5}}};
  m.weights["conv.weight"] = filled(DType::F32, {4, 3, 3, 3}, 1);
  m.weights["conv.bias"] = filled(DType::F32, {4}, 2);
  m.weights["fc.weight"] = filled(DType::F32, {5, 4}, 3);
  m.weights["fc.bias"] = filled(DType::F32, {5}, 4);
  m.weights["clip.max"] = filled(DType::F32, {}, 5);
  m.weights["shape"] = filled(DType::I64, {2}, 6);
  m.nodes = {
      {"Conv", "/conv/Conv", {"input", "conv.weight", "conv.bias"}, {"conv_out"},
       json{{"kernel_shape", {3, 3}}, {"pads", {1, 1, 1, 1}}, {"strides", {1, 1}}, {"group", 1}}},
      {"Relu", "/relu/Relu", {"conv_out"}, {"relu_out"}, json::object()},
      {"Clip", "/clip/Clip", {"relu_out", "", "clip.max"}, {"clip_out"}, json::object()},
      {"GlobalAveragePool", "/pool/GlobalAveragePool", {"clip_out"}, {"pool_out"}, json::object()},
      {"Flatten", "/Flatten", {"pool_out"}, {"flat"}, json{{"axis", 1}}},
      {"Gemm", "/fc/Gemm", {"flat", "fc.weight", "fc.bias"}, {"logits"},
       json{{"alpha", 1.0}, {"beta", 0.5}, {"transB", 1}, {"note", "ünïcode"}}},
  };
  m.preprocess.resize = 10;
  m.preprocess.crop = 8;
  m.preprocess.mean = {0.485f, 0.456f, 0.1f};
  m.preprocess.std = {0.229f, 0.224f, 1.0f / 3.0f};
  m.labels = {"cat", "dog", "tench", "goldfish, Carassius auratus", "\"quoted\""};
  m.explain_layer = "/relu/Relu";
  m.metadata = json{{"source", "tiny.onnx"}, {"opset", 13}, {"nested", {{"a", {1, 2}}}}};
  return m;
}

void check_same_model(const Model& a, const Model& b) {
  REQUIRE(a.inputs.size() == b.inputs.size());
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    CHECK(a.inputs[i].name == b.inputs[i].name);
    CHECK(a.inputs[i].dtype == b.inputs[i].dtype);
    CHECK(a.inputs[i].shape == b.inputs[i].shape);
  }
  REQUIRE(a.outputs.size() == b.outputs.size());
  for (size_t i = 0; i < a.outputs.size(); ++i) {
    CHECK(a.outputs[i].name == b.outputs[i].name);
    CHECK(a.outputs[i].shape == b.outputs[i].shape);
  }
  REQUIRE(a.nodes.size() == b.nodes.size());
  for (size_t i = 0; i < a.nodes.size(); ++i) {
    CAPTURE(i);
    CHECK(a.nodes[i].op == b.nodes[i].op);
    CHECK(a.nodes[i].name == b.nodes[i].name);
    CHECK(a.nodes[i].inputs == b.nodes[i].inputs);
    CHECK(a.nodes[i].outputs == b.nodes[i].outputs);
    CHECK(a.nodes[i].attrs == b.nodes[i].attrs);
  }
  REQUIRE(a.weights.size() == b.weights.size());
  for (const auto& [name, t] : a.weights) {
    CAPTURE(name);
    REQUIRE(b.weights.count(name));
    check_same(t, b.weights.at(name));
  }
  CHECK(a.preprocess.resize == b.preprocess.resize);
  CHECK(a.preprocess.crop == b.preprocess.crop);
  CHECK(a.preprocess.mean == b.preprocess.mean);  // exact: floats are written in round-trip form
  CHECK(a.preprocess.std == b.preprocess.std);
  CHECK(a.labels == b.labels);
  CHECK(a.explain_layer == b.explain_layer);
  CHECK(a.metadata == b.metadata);
}

// Writes a mutated copy of a saved model.json next to the saved weights and loads it.
struct ModelFixture {
  TempDir dir;
  json doc;
  ModelFixture() {
    save_model(tiny_model(), dir.path.string());
    doc = json::parse(read_bytes(dir.file("model.json")));
  }
  std::string write(const json& j) const { return write_text(j.dump()); }
  std::string write_text(const std::string& text) const {
    const std::string path = dir.file("variant.json");
    write_bytes(path, text);
    return path;
  }
};

}  // namespace

TEST_CASE("save_model / load_model round trip") {
  TempDir dir;
  const Model m = tiny_model();
  save_model(m, (dir.path / "nested" / "out").string());  // creates missing directories
  const std::string json_path = (dir.path / "nested" / "out" / "model.json").string();
  check_same_model(m, load_model(json_path));
  check_same_model(m, load_model((dir.path / "nested" / "out").string()));  // a directory means DIR/model.json

  // Saving again over an existing model replaces it; nothing but the two files is left behind.
  Model changed = m;
  changed.labels[0] = "lion";
  save_model(changed, (dir.path / "nested" / "out").string());
  CHECK(load_model(json_path).labels[0] == "lion");
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir.path / "nested" / "out")) names.insert(entry.path().filename().string());
  CHECK(names == std::set<std::string>{"model.json", "model.safetensors"});

  // The files themselves: weights tagged as camrt's, JSON readable, with one node per line, floats short.
  std::map<std::string, std::string> meta;
  read_safetensors((dir.path / "nested" / "out" / "model.safetensors").string(), &meta);
  CHECK(meta.at("format") == "camrt");
  const std::string text = read_bytes(json_path);
  const json doc = json::parse(text);
  CHECK(doc["format_version"] == 1);
  CHECK(doc["weights"] == "model.safetensors");
  CHECK(doc["producer"].get<std::string>().rfind("camrt ", 0) == 0);
  size_t node_lines = 0;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);)
    if (line.find("{\"op\":") != std::string::npos) ++node_lines;
  CHECK(node_lines == m.nodes.size());
  CHECK(text.find("0.485,") != std::string::npos);  // not 0.48500001430511475
}

TEST_CASE("load_model rejects malformed model.json with messages that name the file and the field") {
  ModelFixture fx;
  // Sanity: the unmodified document loads from another name in the same directory.
  CHECK_NOTHROW(load_model(fx.write(fx.doc)));

  CHECK_ERROR(load_model(fx.write_text("{\"format_version\": 1,,}")), "variant.json: invalid JSON at byte 22");
  CHECK_ERROR(load_model(fx.write_text("[1]")), "variant.json: the top level must be a JSON object, got array");
  CHECK_ERROR(load_model(fx.write_text("{\"format_version\": 1, \"format_version\": 1}")), "appears twice");
  CHECK_ERROR(load_model(fx.dir.file("absent.json")), "absent.json: cannot open model file");

  json j = fx.doc;
  j["format_version"] = 7;
  CHECK_ERROR(load_model(fx.write(j)), "unsupported format_version 7 (this camrt reads 1)");
  j = fx.doc;
  j["format_version"] = "1";
  CHECK_ERROR(load_model(fx.write(j)), "format_version must be an integer");
  j = fx.doc;
  j.erase("nodes");
  CHECK_ERROR(load_model(fx.write(j)), "variant.json: required field nodes is missing");
  j = fx.doc;
  j["nodes"][2].erase("op");
  CHECK_ERROR(load_model(fx.write(j)), "required field nodes[2].op is missing");
  j = fx.doc;
  j["nodes"][1]["inputs"] = "conv_out";
  CHECK_ERROR(load_model(fx.write(j)), "variant.json: nodes[1].inputs must be a list of strings");
  j = fx.doc;
  j["nodes"][1]["inputs"] = json::array({"conv_out", 3});
  CHECK_ERROR(load_model(fx.write(j)), "nodes[1].inputs must be a list of strings");
  j = fx.doc;
  j["nodes"][0]["attrs"] = json::array();
  CHECK_ERROR(load_model(fx.write(j)), "nodes[0].attrs must be a JSON object, got array");
  j = fx.doc;
  j["inputs"][0]["shape"][1] = "3";
  CHECK_ERROR(load_model(fx.write(j)), "inputs[0].shape[1] must be an integer");
  j = fx.doc;
  j["inputs"][0]["shape"][1] = -5;
  CHECK_ERROR(load_model(fx.write(j)), "inputs[0] 'input': shape[1] is -5");
  j = fx.doc;
  j["outputs"][0]["dtype"] = "F128";
  CHECK_ERROR(load_model(fx.write(j)), "outputs[0].dtype 'F128' is not a camrt dtype");
  j = fx.doc;
  j["lables"] = json::array();
  CHECK_ERROR(load_model(fx.write(j)), "unknown field lables");

  // Wiring: undefined inputs, topological order, tensors produced twice, unproduced outputs.
  j = fx.doc;
  j["nodes"][1]["inputs"][0] = "nope";
  CHECK_ERROR(load_model(fx.write(j)),
              "variant.json: node '/relu/Relu' (Relu): input 'nope' is neither a graph input, a weight, nor an output of an earlier node");
  j = fx.doc;
  std::swap(j["nodes"][0], j["nodes"][1]);
  CHECK_ERROR(load_model(fx.write(j)), "input 'conv_out' is produced by the later node '/conv/Conv'");
  j = fx.doc;
  j["nodes"][2]["outputs"][0] = "relu_out";
  CHECK_ERROR(load_model(fx.write(j)), "node '/clip/Clip' (Clip): output 'relu_out' is already produced by node '/relu/Relu'");
  j = fx.doc;
  j["nodes"][1]["outputs"][0] = "conv.bias";
  CHECK_ERROR(load_model(fx.write(j)), "output 'conv.bias' is already a weight");
  j = fx.doc;
  j["nodes"][2]["name"] = "/relu/Relu";
  CHECK_ERROR(load_model(fx.write(j)), "two nodes are named '/relu/Relu'");
  j = fx.doc;
  j["outputs"][0]["name"] = "zzz";
  CHECK_ERROR(load_model(fx.write(j)), "graph output 'zzz' is not produced by any node");
  j = fx.doc;
  j["explain_layer"] = "nope";
  CHECK_ERROR(load_model(fx.write(j)), "explain_layer 'nope' is not the name of a node");

  // Preprocessing.
  j = fx.doc;
  j["preprocess"]["mean"] = json::array({0.5, 0.5});
  CHECK_ERROR(load_model(fx.write(j)), "preprocess.mean must be a list of 3 numbers");
  j = fx.doc;
  j["preprocess"]["std"][1] = 0;
  CHECK_ERROR(load_model(fx.write(j)), "preprocess.std[1] is 0");
  j = fx.doc;
  j["preprocess"]["crop"] = 300;
  CHECK_ERROR(load_model(fx.write(j)), "preprocess.crop (300) exceeds preprocess.resize (10)");
  j = fx.doc;
  j["preprocess"] = json{{"resize", 232}};  // absent fields keep the defaults
  CHECK(load_model(fx.write(j)).preprocess.crop == 224);

  // The weights: missing file, a tensor the graph needs absent.
  j = fx.doc;
  j["weights"] = "other.safetensors";
  CHECK_ERROR(load_model(fx.write(j)), "other.safetensors: cannot read safetensors file");
  std::map<std::string, HostTensor> fewer = tiny_model().weights;
  fewer.erase("fc.bias");
  write_safetensors(fx.dir.file("fewer.safetensors"), fewer);
  j = fx.doc;
  j["weights"] = "fewer.safetensors";
  CHECK_ERROR(load_model(fx.write(j)), "node '/fc/Gemm' (Gemm): input 'fc.bias' is neither");
}

TEST_CASE("save_model refuses an ill-formed model and writes nothing") {
  TempDir dir;
  Model m = tiny_model();
  m.nodes[3].inputs[0] = "undefined";
  CHECK_ERROR(save_model(m, dir.path.string()), "input 'undefined' is neither");
  m = tiny_model();
  m.preprocess.std[2] = 0.f;
  CHECK_ERROR(save_model(m, dir.path.string()), "preprocess.std[2] is 0");
  m = tiny_model();
  m.inputs.push_back({"conv.weight", DType::F32, {4, 3, 3, 3}});
  CHECK_ERROR(save_model(m, dir.path.string()), "graph input 'conv.weight' has the same name as a weight");
  CHECK(fs::is_empty(dir.path));
}

// ---------------------------------------------------------------------------------------------------------
// .npy

namespace {

// A .npy file as NumPy writes it: magic, version, little-endian header length, dict padded with spaces
// and ending in '\n' so the data starts on a multiple of `align` bytes.
std::string npy_bytes(const std::string& dict, const std::string& data, int major = 1, size_t align = 64) {
  const size_t preamble = major == 1 ? 10 : 12;
  std::string header = dict;
  while ((preamble + header.size() + 1) % align) header += ' ';
  header += '\n';
  std::string out = std::string("\x93NUMPY", 6) + static_cast<char>(major) + '\0';
  for (size_t i = 0; i < preamble - 8; ++i) out += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return out + header + data;
}

HostTensor parse_npy_string(const std::string& bytes) {
  return parse_npy(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "test.npy");
}

}  // namespace

TEST_CASE("npy round trip for every dtype, scalar and empty arrays") {
  TempDir dir;
  const std::vector<HostTensor> cases = {
      filled(DType::F32, {2, 3}, 1), filled(DType::F64, {}, 2),  HostTensor(DType::I64, {0}),
      filled(DType::I32, {5}, 3),    filled(DType::U8, {2, 2, 2}, 4), filled(DType::Bool, {3}, 5),
      filled(DType::I8, {1, 4}, 6),  filled(DType::F16, {3, 1}, 7), HostTensor(DType::F32, {2, 0, 3}),
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    CAPTURE(i);
    const std::string path = dir.file("a" + std::to_string(i) + ".npy");
    write_npy(path, cases[i]);
    check_same(read_npy(path), cases[i]);
  }
}

TEST_CASE("written npy matches NumPy's layout") {
  TempDir dir;
  const std::string path = dir.file("x.npy");
  write_npy(path, filled(DType::F32, {2, 3}, 1));
  const std::string bytes = read_bytes(path);
  REQUIRE(bytes.size() > 10);
  CHECK(bytes.substr(0, 8) == std::string("\x93NUMPY\x01\x00", 8));
  const size_t header_len = static_cast<uint8_t>(bytes[8]) | (static_cast<uint8_t>(bytes[9]) << 8);
  CHECK((10 + header_len) % 64 == 0);
  CHECK(bytes.size() == 10 + header_len + 24);
  const std::string header = bytes.substr(10, header_len);
  CHECK(header.rfind("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 0) == 0);
  CHECK(header.back() == '\n');
  write_npy(path, filled(DType::Bool, {7}, 1));
  CHECK(read_bytes(path).find("{'descr': '|b1', 'fortran_order': False, 'shape': (7,), }") == 10);
  write_npy(path, filled(DType::I64, {}, 1));
  CHECK(read_bytes(path).find("'shape': ()") != std::string::npos);
}

TEST_CASE("npy reader accepts hand-built NumPy files: versions 1-3, old 16-byte alignment, 'L' dims") {
  // int64 [1, -2, 3] little-endian.
  const std::string data = std::string("\x01\0\0\0\0\0\0\0", 8) + std::string("\xfe\xff\xff\xff\xff\xff\xff\xff", 8) +
                           std::string("\x03\0\0\0\0\0\0\0", 8);
  const std::string dict = "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }";
  for (int major : {1, 2, 3}) {
    CAPTURE(major);
    const HostTensor t = parse_npy_string(npy_bytes(dict, data, major));
    CHECK(t.dtype == DType::I64);
    CHECK(t.to_int64() == std::vector<int64_t>{1, -2, 3});
  }
  CHECK(parse_npy_string(npy_bytes(dict, data, 1, 16)).shape == Shape{3});
  const HostTensor u = parse_npy_string(npy_bytes("{'descr': '|u1', 'fortran_order': False, 'shape': (2L, 1L), }", "\x07\x09"));
  CHECK(u.shape == Shape{2, 1});
  CHECK(u.to_int64() == std::vector<int64_t>{7, 9});
  // Key order and quoting are free; Fortran order is harmless for 1-d data.
  const HostTensor f = parse_npy_string(npy_bytes("{\"shape\": (2,), \"fortran_order\": True, \"descr\": \"<f4\"}",
                                                  std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8)));
  CHECK(f.to_float() == std::vector<float>{1.0f, -2.0f});
}

TEST_CASE("npy reader rejects malformed files with a specific message") {
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
  const std::string data(8, '\0');
  REQUIRE_NOTHROW(parse_npy_string(npy_bytes(dict, data)));
  CHECK_ERROR(parse_npy_string("PK\x03\x04 not numpy"), "test.npy: not a .npy file");
  CHECK_ERROR(parse_npy_string(std::string("\x93NUMPY\x04\x00", 8) + "xx"), "unsupported .npy format version 4.0");
  CHECK_ERROR(parse_npy_string(npy_bytes(dict, data).substr(0, 20)), "truncated .npy header");
  CHECK_ERROR(parse_npy_string(npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 1), }", data)),
              "Fortran-order arrays are not supported");
  CHECK_ERROR(parse_npy_string(npy_bytes("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", data)),
              "big-endian dtype '>f4' is not supported");
  CHECK_ERROR(parse_npy_string(npy_bytes("{'descr': '<u2', 'fortran_order': False, 'shape': (4,), }", data)),
              "dtype '<u2' is not supported");
  CHECK_ERROR(parse_npy_string(npy_bytes("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", data)),
              "structured dtypes are not supported");
  CHECK_ERROR(parse_npy_string(npy_bytes(dict, data.substr(0, 5))), "truncated data: shape (2,) x F32 needs 8 bytes but the file holds 5");
  CHECK_ERROR(parse_npy_string(npy_bytes(dict, data + "xy")), "2 unexpected bytes after the array data");
  CHECK_ERROR(parse_npy_string(npy_bytes("{'descr': '<f4', 'shape': (2,), }", data)), "header lacks 'fortran_order'");
  CHECK_ERROR(parse_npy_string(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", data)),
              "shape must be a tuple of non-negative integers");
  CHECK_ERROR(parse_npy_string(npy_bytes("{'descr': '<f4' 'fortran_order': False}", data)), "expected ',' or '}'");

  TempDir dir;
  const std::string path = dir.file("cam.npy");
  write_bytes(path, npy_bytes(dict, data.substr(0, 3)));
  CHECK_ERROR(read_npy(path), path + ": truncated data");
  CHECK_ERROR(read_npy(dir.file("missing.npy")), "missing.npy: cannot read .npy file");
}
