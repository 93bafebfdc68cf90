// Hostile model files: hand-made ONNX and model.json inputs that break each limit of engine/limits.h, the
// reproducers the fuzzers (tests/fuzz/fuzz_onnx.cpp, fuzz_graph_json.cpp) found, and deterministic mutations of
// every fixture model. Each must load (then infer shapes) or throw one camrt::Error naming the file; never crash.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/graph.h"
#include "engine/limits.h"
#include "weights/model.h"
#include "weights/onnx/onnx_import.h"

namespace camrt {
namespace {

namespace fs = std::filesystem;

const std::string kSource = std::string(CAMRT_SOURCE_DIR);

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// ---- a minimal protobuf writer for hand-made ONNX files ----

struct Pb {
  std::string bytes;
  Pb& varint(uint64_t v) {
    while (v >= 0x80) {
      bytes += static_cast<char>((v & 0x7f) | 0x80);
      v >>= 7;
    }
    bytes += static_cast<char>(v);
    return *this;
  }
  Pb& u(uint32_t field, uint64_t v) { return varint(uint64_t(field) << 3).varint(v); }
  Pb& s(uint32_t field, const std::string& v) {
    varint((uint64_t(field) << 3) | 2).varint(v.size());
    bytes += v;
    return *this;
  }
  Pb& m(uint32_t field, const Pb& v) { return s(field, v.bytes); }
};

Pb int_attr(const std::string& name, int64_t v) { return Pb().s(1, name).u(20, 2).u(3, static_cast<uint64_t>(v)); }
Pb ints_attr(const std::string& name, const std::vector<int64_t>& v) {
  Pb a;
  a.s(1, name).u(20, 7);
  for (int64_t x : v) a.u(8, static_cast<uint64_t>(x));
  return a;
}
Pb node(const std::string& op, const std::vector<std::string>& inputs, const std::string& output,
        const std::vector<Pb>& attrs = {}) {
  Pb n;
  for (const std::string& i : inputs) n.s(1, i);
  n.s(2, output).s(3, op + "_node").s(4, op);
  for (const Pb& a : attrs) n.m(5, a);
  return n;
}
// ValueInfoProto of a float tensor.
Pb value_info(const std::string& name, const std::vector<int64_t>& dims) {
  Pb shape;
  for (int64_t d : dims) shape.m(1, Pb().u(1, static_cast<uint64_t>(d)));
  return Pb().s(1, name).m(2, Pb().m(1, Pb().u(1, 1).m(2, shape)));
}
// TensorProto of float32 with raw data.
Pb float_tensor(const std::string& name, const std::vector<int64_t>& dims, size_t raw_bytes) {
  Pb t;
  for (int64_t d : dims) t.u(1, static_cast<uint64_t>(d));
  return t.u(2, 1).s(8, name).s(9, std::string(raw_bytes, '\0'));
}
Pb int64_tensor(const std::string& name, const std::vector<int64_t>& values) {
  Pb t;
  t.u(1, values.size()).u(2, 7).s(8, name);
  for (int64_t v : values) t.u(7, static_cast<uint64_t>(v));
  return t;
}
std::string model_bytes(const Pb& graph) { return Pb().u(1, 8).m(8, Pb().s(1, "").u(2, 13)).m(7, graph).bytes; }

// Import, build the Graph, infer batch 1: the whole path camrt convert + predict takes before running.
void import_and_infer(const uint8_t* data, size_t size, const std::string& source) {
  Model model = import_onnx_bytes(data, size, source);
  const Graph graph(std::move(model), source);
  graph.infer(graph.input_shapes_for_batch(1));
}

// One camrt::Error whose message names the file (and, if given, contains `needle`).
void expect_onnx_error(const std::string& bytes, const std::string& needle = "") {
  const std::string source = "hostile.onnx";
  std::string message;
  try {
    import_and_infer(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), source);
  } catch (const Error& e) {
    message = e.what();
  }
  INFO("message: " << message);
  REQUIRE(!message.empty());
  CHECK(message.find(source) != std::string::npos);
  if (!needle.empty()) CHECK(message.find(needle) != std::string::npos);
}

// A graph x (1, 3, 8, 8) -> nodes -> y, plus initializers.
std::string onnx_graph(const std::vector<Pb>& nodes, const std::vector<Pb>& initializers = {},
                       const std::vector<int64_t>& input_dims = {1, 3, 8, 8}) {
  Pb g;
  for (const Pb& n : nodes) g.m(1, n);
  g.s(2, "g");
  for (const Pb& t : initializers) g.m(5, t);
  g.m(11, value_info("x", input_dims));
  g.m(12, Pb().s(1, "y"));
  return model_bytes(g);
}

TEST_CASE("hand-made ONNX: a well-formed graph imports (so the hostile variants below fail for their reason)") {
  const std::string ok = onnx_graph({node("Relu", {"x"}, "y")});
  CHECK_NOTHROW(import_and_infer(reinterpret_cast<const uint8_t*>(ok.data()), ok.size(), "ok.onnx"));
  const std::string conv = onnx_graph({node("Conv", {"x", "w"}, "y", {ints_attr("strides", {1, 1})})},
                                      {float_tensor("w", {4, 3, 3, 3}, 4 * 3 * 3 * 3 * 4)});
  CHECK_NOTHROW(import_and_infer(reinterpret_cast<const uint8_t*>(conv.data()), conv.size(), "ok.onnx"));
}

TEST_CASE("hostile ONNX: limits on tensors") {
  // Rank above kMaxRank.
  expect_onnx_error(onnx_graph({node("Add", {"x", "w"}, "y")}, {float_tensor("w", {1, 1, 1, 1, 1, 1, 1, 1, 1}, 4)}),
                    "rank");
  // 2^48 elements declared with 4 bytes of data: refused before any allocation.
  expect_onnx_error(onnx_graph({node("Add", {"x", "w"}, "y")}, {float_tensor("w", {65536, 65536, 65536}, 4)}), "'w'");
  // raw_data that does not hold numel * 4 bytes.
  expect_onnx_error(onnx_graph({node("Add", {"x", "w"}, "y")}, {float_tensor("w", {2, 2}, 12)}), "raw_data");
  // A graph input of rank 9.
  expect_onnx_error(onnx_graph({node("Relu", {"x"}, "y")}, {}, {1, 1, 1, 1, 1, 1, 1, 1, 1}), "rank");
  // A graph input of 2^64 elements (each dim fits, the product does not).
  expect_onnx_error(onnx_graph({node("Relu", {"x"}, "y")}, {}, {1 << 30, 1 << 30, 1 << 30, 1 << 30}));
}

TEST_CASE("hostile ONNX: limits on names, counts and lengths") {
  expect_onnx_error(onnx_graph({node("Relu", {std::string(size_t(limits::kMaxNameBytes) + 1, 'x')}, "y")}), "name");
  std::vector<std::string> many(size_t(limits::kMaxNodeInputs) + 1, "x");
  expect_onnx_error(onnx_graph({node("Concat", many, "y", {int_attr("axis", 1)})}), "inputs");
  // kMaxGraphNodes + 1 empty NodeProtos (2 bytes each).
  Pb g;
  for (int64_t i = 0; i <= limits::kMaxGraphNodes; ++i) g.m(1, Pb());
  expect_onnx_error(model_bytes(g), "nodes");
  // A length that runs past the end of the file.
  std::string truncated = onnx_graph({node("Relu", {"x"}, "y")});
  truncated.resize(truncated.size() - 3);
  expect_onnx_error(truncated, "malformed protobuf");
  // A varint of 11 bytes.
  expect_onnx_error(std::string("\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12), "varint");
}

// Not yet here: Conv with pads or dilations near INT64_MAX overflows in kernels/cpu/conv.cpp
// (conv2d_shape_error, span = dilation * (kernel - 1) + 1) before it can refuse them; add those cases once fixed.
TEST_CASE("hostile ONNX: attributes that break shape inference") {
  const Pb w = float_tensor("w", {4, 3, 3, 3}, 4 * 3 * 3 * 3 * 4);
  expect_onnx_error(onnx_graph({node("Conv", {"x", "w"}, "y", {ints_attr("strides", {0, 1})})}, {w}), "Conv_node");
  expect_onnx_error(onnx_graph({node("Conv", {"x", "w"}, "y", {ints_attr("strides", {-1, 1})})}, {w}), "Conv_node");
  expect_onnx_error(onnx_graph({node("Conv", {"x", "w"}, "y", {ints_attr("pads", {-5, -5, -5, -5})})}, {w}),
                    "Conv_node");
  expect_onnx_error(onnx_graph({node("MaxPool", {"x"}, "y", {ints_attr("kernel_shape", {9, 9})})}), "MaxPool_node");
  expect_onnx_error(onnx_graph({node("MaxPool", {"x"}, "y",
                                     {ints_attr("kernel_shape", {2, 2}), ints_attr("pads", {INT64_MAX, 0, 0, 0})})}),
                    "MaxPool_node");
  expect_onnx_error(onnx_graph({node("Reshape", {"x", "s"}, "y")}, {int64_tensor("s", {-1, -1})}), "Reshape");
  expect_onnx_error(onnx_graph({node("Reshape", {"x", "s"}, "y")}, {int64_tensor("s", {INT64_MAX, INT64_MAX, -1})}),
                    "Reshape");
  expect_onnx_error(onnx_graph({node("Concat", {"x", "w"}, "y", {int_attr("axis", 1)})}, {w}), "Concat");
  expect_onnx_error(onnx_graph({node("Concat", {"x", "x"}, "y", {int_attr("axis", 7)})}), "Concat");
  expect_onnx_error(onnx_graph({node("Softmax", {"x"}, "y", {int_attr("axis", -9)})}), "Softmax");
  expect_onnx_error(onnx_graph({node("Unsqueeze", {"x"}, "y", {ints_attr("axes", {0, 1, 2, 3, 4, 5})})}), "");
}

// ---- model.json ----

// A valid model.json with one node; `node_json` replaces it.
std::string model_json(const std::string& node_json, const std::string& input_shape = "[-1,3,8,8]") {
  return R"({"format_version":1,"weights":"model.safetensors","inputs":[{"name":"x","dtype":"F32","shape":)" +
         input_shape + R"(}],"outputs":[{"name":"y","dtype":"F32","shape":[-1]}],"nodes":[)" + node_json + "]}";
}

std::map<std::string, HostTensor> json_weights() {
  std::map<std::string, HostTensor> w;
  w["w"] = HostTensor(DType::F32, {4, 3, 3, 3});
  w["two_minus_one"] = make_i64({2}, {-1, -1});
  w["overflow"] = make_i64({3}, {INT64_MAX, INT64_MAX, -1});
  return w;
}

void json_and_infer(const std::string& text, const std::string& source) {
  Model model = parse_model_json(text.data(), text.size(), json_weights(), source);
  const Graph graph(std::move(model), source);
  graph.infer(graph.input_shapes_for_batch(1));
}

void expect_json_error(const std::string& text, const std::string& needle = "") {
  const std::string source = "hostile/model.json";
  std::string message;
  try {
    json_and_infer(text, source);
  } catch (const Error& e) {
    message = e.what();
  }
  INFO("message: " << message);
  REQUIRE(!message.empty());
  CHECK(message.find(source) != std::string::npos);
  if (!needle.empty()) CHECK(message.find(needle) != std::string::npos);
}

std::string conv_json(const std::string& attrs) {
  return R"({"op":"Conv","name":"c","inputs":["x","w"],"outputs":["y"],"attrs":)" + attrs + "}";
}

TEST_CASE("hostile model.json: a well-formed one loads") {
  CHECK_NOTHROW(json_and_infer(model_json(conv_json("{}")), "ok/model.json"));
}

TEST_CASE("hostile model.json: nesting, names, counts, ranks") {
  // Deep nesting is refused by a scan before the parser (whose DOM copies would recurse).
  expect_json_error(std::string(100000, '[') + std::string(100000, ']'), "nested");
  expect_json_error(model_json(conv_json(R"({"deep":)" + std::string(200, '[') + std::string(200, ']') + "}")),
                    "nested");
  expect_json_error(model_json(conv_json("{}"), "[1,1,1,1,1,1,1,1,1]"), "rank");
  expect_json_error(model_json(conv_json("{}"), "[1073741824,1073741824,1073741824,4]"), "elements");
  expect_json_error(model_json(R"({"op":"Relu","name":")" + std::string(size_t(limits::kMaxNameBytes) + 1, 'n') +
                               R"(","inputs":["x"],"outputs":["y"]})"),
                    "bytes");
  std::string inputs = "[";
  for (int64_t i = 0; i <= limits::kMaxNodeInputs; ++i) inputs += std::string(i ? "," : "") + "\"x\"";
  expect_json_error(model_json(R"({"op":"Concat","name":"c","inputs":)" + inputs + R"(],"outputs":["y"]})"), "names");
}

TEST_CASE("hostile model.json: attributes that break shape inference name the node") {
  expect_json_error(model_json(conv_json(R"({"strides":[0,1]})")), "'c'");
  expect_json_error(model_json(conv_json(R"({"strides":[-3,1]})")), "'c'");
  expect_json_error(model_json(conv_json(R"({"pads":[-4,-4,-4,-4]})")), "'c'");
  expect_json_error(model_json(conv_json(R"({"kernel_shape":[1,1]})")), "'c'");  // W is 3x3
  expect_json_error(model_json(conv_json(R"({"group":0})")), "'c'");
  expect_json_error(model_json(R"({"op":"Reshape","name":"r","inputs":["x","two_minus_one"],"outputs":["y"]})"), "'r'");
  expect_json_error(model_json(R"({"op":"Reshape","name":"r","inputs":["x","overflow"],"outputs":["y"]})"), "'r'");
  expect_json_error(model_json(R"({"op":"Concat","name":"k","inputs":["x","w"],"outputs":["y"],"attrs":{"axis":1}})"),
                    "'k'");
  expect_json_error(model_json(R"({"op":"Concat","name":"k","inputs":["x","x"],"outputs":["y"],"attrs":{"axis":-5}})"),
                    "'k'");
  expect_json_error(model_json(R"({"op":"Unsqueeze","name":"u","inputs":["x"],"outputs":["y"],"attrs":{"axes":[0,1,2,3,4]}})"),
                    "'u'");
  expect_json_error(model_json(R"({"op":"Flatten","name":"f","inputs":["x"],"outputs":["y"],"attrs":{"axis":9}})"), "'f'");
  expect_json_error(model_json(R"({"op":"MaxPool","name":"p","inputs":["x"],"outputs":["y"],"attrs":{"kernel_shape":[2,2],"strides":[0,0]}})"),
                    "'p'");
}

// ---- regression tests: minimized fuzzer reproducers (tests/fixtures/hostile/<target>/) ----

TEST_CASE("fuzzer reproducers are rejected with one camrt::Error") {
  for (const char* target : {"onnx", "graph_json"}) {
    const fs::path dir = fs::path(kSource) / "tests/fixtures/hostile" / target;
    if (!fs::exists(dir)) continue;
    for (const auto& entry : fs::directory_iterator(dir)) {
      const std::vector<uint8_t> bytes = read_bytes(entry.path().string());
      const std::string name = entry.path().filename().string();
      INFO(target << "/" << name);
      if (std::string(target) == "onnx") {
        CHECK_THROWS_AS(import_and_infer(bytes.data(), bytes.size(), name), Error);
      } else {
        const std::string text(bytes.begin(), bytes.end());
        CHECK_THROWS_AS(json_and_infer(text, name), Error);
      }
    }
  }
}

// ---- mutated fixtures ----

// Deterministic mutations: bit flips, truncations, 0xff runs and duplicated chunks at seeded offsets.
std::vector<std::vector<uint8_t>> mutations(const std::vector<uint8_t>& original, uint32_t seed, int count) {
  std::mt19937 rng(seed);
  std::vector<std::vector<uint8_t>> out;
  const size_t n = original.size();
  auto offset = [&]() { return n ? static_cast<size_t>(rng() % n) : 0; };
  for (int k = 0; k < count; ++k) {
    std::vector<uint8_t> m = original;
    switch (k % 4) {
      case 0:  // a few bit flips
        for (int i = 0; i < 1 + k % 3 && n; ++i) m[offset()] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 1:  // truncation
        m.resize(offset());
        break;
      case 2: {  // a run of 0xff
        const size_t at = offset(), len = std::min<size_t>(1 + rng() % 16, n - at);
        std::fill(m.begin() + static_cast<std::ptrdiff_t>(at), m.begin() + static_cast<std::ptrdiff_t>(at + len), 0xff);
        break;
      }
      default: {  // a chunk duplicated in place
        const size_t at = offset(), len = std::min<size_t>(1 + rng() % 64, n - at);
        m.insert(m.begin() + static_cast<std::ptrdiff_t>(at), original.begin() + static_cast<std::ptrdiff_t>(at),
                 original.begin() + static_cast<std::ptrdiff_t>(at + len));
        break;
      }
    }
    out.push_back(std::move(m));
  }
  return out;
}

// Runs fn on one input: it must finish (success or camrt::Error) within a generous hang-detector bound.
template <typename Fn>
void survive(const std::string& what, Fn fn) {
  const auto start = std::chrono::steady_clock::now();
  try {
    fn();
  } catch (const Error&) {
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO(what);
  CHECK(seconds < 1.0);  // a hang detector, not a benchmark: the real work is milliseconds
}

std::vector<std::string> fixture_onnx_files() {
  std::vector<std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(fs::path(kSource) / "tests/fixtures"))
    if (entry.path().extension() == ".onnx") files.push_back(entry.path().string());
  std::sort(files.begin(), files.end());
  return files;
}

constexpr int kMutationsPerFile = 12;

TEST_CASE("mutated fixture .onnx files import or throw camrt::Error") {
  const std::vector<std::string> files = fixture_onnx_files();
  REQUIRE(files.size() >= 8);
  uint32_t seed = 1;
  for (const std::string& path : files) {
    const std::vector<uint8_t> original = read_bytes(path);
    for (const std::vector<uint8_t>& m : mutations(original, seed++, kMutationsPerFile))
      survive(path + " (mutation " + std::to_string(seed) + ")",
              [&]() { import_and_infer(m.data(), m.size(), fs::path(path).filename().string()); });
  }
}

TEST_CASE("mutated model.json files load or throw camrt::Error") {
  // The model.json of fashion-canvas (with its real weights), and that of every fixture ONNX model that imports.
  std::vector<std::pair<std::string, std::shared_ptr<const Model>>> models;
  const std::string canvas = kSource + "/weights/models/fashion-canvas/model.json";
  if (fs::exists(canvas)) models.emplace_back(canvas, std::make_shared<const Model>(load_model(canvas)));
  for (const std::string& path : fixture_onnx_files()) {
    try {
      models.emplace_back(path, std::make_shared<const Model>(import_onnx(path)));
    } catch (const Error&) {
      // fixtures of unsupported models (tests/fixtures/onnx/unsupported.onnx, external_data.onnx)
    }
  }
  REQUIRE(models.size() >= 6);
  const fs::path dir = fs::temp_directory_path() / ("camrt_hostile_models_" + std::to_string(::getpid()));
  uint32_t seed = 1000;
  for (const auto& [path, model] : models) {
    save_model(*model, dir.string());
    const std::vector<uint8_t> text = read_bytes((dir / "model.json").string());
    for (const std::vector<uint8_t>& m : mutations(text, seed++, kMutationsPerFile)) {
      survive(path + " as model.json (mutation " + std::to_string(seed) + ")", [&]() {
        Model parsed = parse_model_json(reinterpret_cast<const char*>(m.data()), m.size(), model->weights, "model.json");
        const Graph graph(std::move(parsed), "model.json");
        graph.infer(graph.input_shapes_for_batch(1));
      });
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace camrt
