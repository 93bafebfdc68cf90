// ONNX importer: the protobuf reader on hand-made bytes, node/attribute import and constant folding checked
// against ONNX's own backend test data (/usr/share/libonnx-testdata, reference outputs computed by ONNX),
// dynamic-batch shape chains, BN folding against torch.nn.utils.fusion, error reporting, and truncated or
// corrupted files (which must throw camrt::Error, never crash; run under -fsanitize=address,undefined).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "weights/onnx/onnx_import.h"
#include "weights/onnx/protobuf.h"

using namespace camrt;

namespace {

const std::string kFixtures = std::string(CAMRT_SOURCE_DIR) + "/tests/fixtures/onnx/";
// The ONNX backend test data (Debian package libonnx-testdata), present on CI.
const std::string kBackendTests = "/usr/share/libonnx-testdata/data/node/";

bool have_backend_tests() {
  if (std::filesystem::exists(kBackendTests + "test_conv_with_strides_padding/model.onnx")) return true;
  MESSAGE("skipped: " << kBackendTests << " not installed (package libonnx-testdata)");
  return false;
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

const Node& node_named(const Model& model, const std::string& name) {
  for (const Node& node : model.nodes)
    if (node.name == name) return node;
  FAIL("no node named '" << name << "'");
  throw 0;
}

std::vector<std::string> ops_of(const Model& model) {
  std::vector<std::string> ops;
  for (const Node& node : model.nodes) ops.push_back(node.op);
  return ops;
}

const HostTensor& weight(const Model& model, const std::string& name) {
  const auto it = model.weights.find(name);
  REQUIRE_MESSAGE(it != model.weights.end(), "no weight '" << name << "'");
  return it->second;
}

std::string import_error(const std::string& path, const OnnxImportOptions& options = {}) {
  try {
    import_onnx(path, options);
  } catch (const Error& e) {
    return e.what();
  }
  FAIL("importing " << path << " did not throw");
  return "";
}

// Each node's inputs are weights, graph inputs or outputs of earlier nodes.
void check_topological(const Model& model) {
  std::set<std::string> available;
  for (const ValueInfo& in : model.inputs) available.insert(in.name);
  for (const auto& [name, w] : model.weights) available.insert(name);
  for (const Node& node : model.nodes) {
    for (const std::string& in : node.inputs)
      CHECK_MESSAGE(available.count(in), node.name << " reads " << in << " too early");
    available.insert(node.outputs.begin(), node.outputs.end());
  }
}

// A tiny protobuf writer, to craft the malformed or unusual ONNX files no exporter produces.
struct Pb {
  std::string bytes;
  Pb& varint(uint64_t v) {
    while (v >= 0x80) {
      bytes.push_back(static_cast<char>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    bytes.push_back(static_cast<char>(v));
    return *this;
  }
  Pb& tag(uint32_t field, int wire) { return varint((uint64_t(field) << 3) | wire); }
  Pb& u(uint32_t field, uint64_t v) { return tag(field, 0).varint(v); }
  Pb& s(uint32_t field, const std::string& v) {
    tag(field, 2).varint(v.size());
    bytes += v;
    return *this;
  }
  Pb& m(uint32_t field, const Pb& msg) { return s(field, msg.bytes); }
  Pb& f32(uint32_t field, float v) {
    tag(field, 5);
    char b[4];
    std::memcpy(b, &v, 4);
    bytes.append(b, 4);
    return *this;
  }
};

// dims: -1 becomes dim_param "N".
Pb value_info(const std::string& name, const std::vector<int64_t>& dims) {
  Pb shape;
  for (int64_t d : dims) shape.m(1, d < 0 ? Pb().s(2, "N") : Pb().u(1, static_cast<uint64_t>(d)));
  return Pb().s(1, name).m(2, Pb().m(1, Pb().u(1, 1 /* FLOAT */).m(2, shape)));
}

Pb node(const std::string& op, const std::string& name, const std::vector<std::string>& inputs,
        const std::vector<std::string>& outputs) {
  Pb n;
  for (const auto& i : inputs) n.s(1, i);
  for (const auto& o : outputs) n.s(2, o);
  if (!name.empty()) n.s(3, name);
  return n.s(4, op);
}

// ModelProto with one graph: input x (x_dims), output y, opset 13.
std::vector<uint8_t> make_model(const std::vector<Pb>& nodes, const std::string& output = "y",
                                const std::vector<int64_t>& x_dims = {1, 3}) {
  Pb graph;
  for (const Pb& n : nodes) graph.m(1, n);
  graph.s(2, "crafted").m(11, value_info("x", x_dims)).m(12, value_info(output, {1, 3}));
  Pb model;
  model.u(1, 8).s(2, "test").m(7, graph).m(8, Pb().s(1, "").u(2, 13));
  return std::vector<uint8_t>(model.bytes.begin(), model.bytes.end());
}

Model import_crafted(const std::vector<uint8_t>& bytes) {
  return import_onnx_bytes(bytes.data(), bytes.size(), "crafted.onnx");
}

std::string crafted_error(const std::vector<uint8_t>& bytes) {
  try {
    import_crafted(bytes);
  } catch (const Error& e) {
    return e.what();
  }
  FAIL("the crafted model did not throw");
  return "";
}

// Imports a buffer that may be malformed: a camrt::Error is fine, anything else (or a crash) is not.
void import_must_not_crash(const std::vector<uint8_t>& bytes, const std::string& what) {
  try {
    import_onnx_bytes(bytes.data(), bytes.size(), "fuzzed.onnx");
  } catch (const Error&) {
  } catch (const std::exception& e) {
    FAIL(what << ": threw a non-camrt exception: " << e.what());
  }
}

}  // namespace

TEST_CASE("protobuf reader decodes scalars, strings, and packed and unpacked repeated fields") {
  Pb pb;
  pb.u(1, 150);                      // varint (the protobuf docs' example: 0x08 0x96 0x01)
  pb.u(2, ~uint64_t(0));             // -1 as int64/int32: ten bytes
  pb.f32(3, 1.5f);
  pb.tag(4, 1);                      // fixed64 double
  const double d = -2.25;
  char b[8];
  std::memcpy(b, &d, 8);
  pb.bytes.append(b, 8);
  pb.s(5, "hi");
  pb.s(6, Pb().varint(1).varint(300).varint(~uint64_t(0)).bytes);  // packed varints
  pb.u(6, 7);                                                       // the same field unpacked
  Pb floats;
  for (float f : {0.5f, -4.f}) {
    std::memcpy(b, &f, 4);
    floats.bytes.append(b, 4);
  }
  pb.s(7, floats.bytes);  // packed floats
  pb.f32(7, 8.f);         // unpacked float
  REQUIRE(pb.bytes.substr(0, 3) == std::string("\x08\x96\x01", 3));

  const std::string source = "test.pb";
  protobuf::Reader r(reinterpret_cast<const uint8_t*>(pb.bytes.data()), pb.bytes.size(), source, "Test");
  protobuf::Field f;
  std::vector<int64_t> ints;
  std::vector<float> fs;
  int fields = 0;
  while (r.next(&f)) {
    ++fields;
    switch (f.number) {
      case 1: CHECK(r.as_int64(f) == 150); break;
      case 2: CHECK(r.as_int64(f) == -1); CHECK(r.as_int32(f) == -1); break;
      case 3: CHECK(r.as_float(f) == 1.5f); break;
      case 4: CHECK(r.as_double(f) == -2.25); break;
      case 5: CHECK(r.as_string(f) == "hi"); CHECK_THROWS_AS(r.as_int64(f), Error); break;
      case 6: r.append_int64s(f, &ints); break;
      case 7: r.append_floats(f, &fs); break;
      default: FAIL("unexpected field " << f.number);
    }
  }
  CHECK(fields == 9);
  CHECK(ints == std::vector<int64_t>{1, 300, -1, 7});
  CHECK(fs == std::vector<float>{0.5f, -4.f, 8.f});
}

TEST_CASE("protobuf reader rejects malformed bytes with camrt::Error") {
  const std::string source = "bad.pb";
  auto fails = [&](const std::string& bytes) {
    protobuf::Reader r(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), source, "Test");
    protobuf::Field f;
    std::vector<float> floats;
    std::vector<int64_t> ints;
    try {
      while (r.next(&f)) {
        if (f.number == 9) r.append_floats(f, &floats);
        if (f.number == 10) r.append_int64s(f, &ints);
      }
    } catch (const Error& e) {
      CHECK(std::string(e.what()).find("bad.pb: malformed protobuf") == 0);
      return true;
    }
    return false;
  };
  CHECK(fails(std::string("\x08\x96", 2)));                          // varint cut short
  CHECK(fails(std::string("\x22\x05" "abc", 5)));                     // length past the end
  CHECK(fails(std::string("\x22\xff\xff\xff\xff\x0f", 6)));           // huge length
  CHECK(fails(std::string("\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 11)));  // > 64 bits
  CHECK(fails(std::string("\x0b", 1)));                               // wire type 3 (group)
  CHECK(fails(std::string("\x0e", 1)));                               // wire type 6
  CHECK(fails(std::string("\x00\x01", 2)));                           // field number 0
  CHECK(fails(std::string("\x0d\x01\x02", 3)));                       // fixed32 cut short
  CHECK(fails(std::string("\x09\x01\x02\x03", 4)));                   // fixed64 cut short
  CHECK(fails(std::string("\x4a\x05\x00\x00\x80\x3f\x00", 7)));       // packed floats, 5 bytes
  CHECK(fails(std::string("\x52\x02\x96\x96", 4)));                   // packed varint cut short
  CHECK_FALSE(fails(std::string("\x4a\x04\x00\x00\x80\x3f", 6)));     // a valid packed float
}

TEST_CASE("read_onnx_tensor_file reads the backend test data tensors") {
  if (!have_backend_tests()) return;
  // Expected values printed once with onnx.numpy_helper.to_array (onnx 1.12): x = arange(35) as
  // float32 (1, 1, 7, 5); W = ones (1, 1, 3, 3); y starts 12, 27, 24, 63; shape = int64 [2, -1, 2].
  const std::string conv_data = kBackendTests + "test_conv_with_strides_padding/test_data_set_0/";
  std::string name;
  const HostTensor x = read_onnx_tensor_file(conv_data + "input_0.pb", &name);
  CHECK(name == "x");
  CHECK(x.dtype == DType::F32);
  CHECK(x.shape == Shape{1, 1, 7, 5});
  for (int i = 0; i < 35; ++i) CHECK(x.f32()[i] == static_cast<float>(i));
  const HostTensor y = read_onnx_tensor_file(conv_data + "output_0.pb");
  CHECK(y.shape == Shape{1, 1, 4, 3});
  CHECK(std::vector<float>(y.f32(), y.f32() + 4) == std::vector<float>{12, 27, 24, 63});
  const HostTensor shape =
      read_onnx_tensor_file(kBackendTests + "test_reshape_negative_dim/test_data_set_0/input_1.pb", &name);
  CHECK(name == "shape");
  CHECK(shape.dtype == DType::I64);
  CHECK(shape.to_int64() == std::vector<int64_t>{2, -1, 2});
  CHECK_THROWS_AS(read_onnx_tensor_file(kBackendTests + "no_such_dir/input_0.pb"), Error);
}

TEST_CASE("Conv node, attributes, inputs, outputs and metadata come through unchanged") {
  if (!have_backend_tests()) return;
  const Model m = import_onnx(kBackendTests + "test_conv_with_strides_padding/model.onnx");
  REQUIRE(m.nodes.size() == 1);
  const Node& conv = m.nodes[0];
  CHECK(conv.op == "Conv");
  CHECK(conv.name == "Conv_0");  // unnamed in the file: "<op>_<index>"
  CHECK(conv.inputs == std::vector<std::string>{"x", "W"});
  CHECK(conv.outputs == std::vector<std::string>{"y"});
  CHECK(conv.attrs.at("kernel_shape") == std::vector<int64_t>{3, 3});
  CHECK(conv.attrs.at("pads") == std::vector<int64_t>{1, 1, 1, 1});
  CHECK(conv.attrs.at("strides") == std::vector<int64_t>{2, 2});
  CHECK(conv.attrs.at("onnx_opset") == 11);
  // W is a graph input here (not an initializer), so it stays an input.
  REQUIRE(m.inputs.size() == 2);
  CHECK(m.inputs[0].name == "x");
  CHECK(m.inputs[0].shape == Shape{1, 1, 7, 5});
  CHECK(m.inputs[1].name == "W");
  REQUIRE(m.outputs.size() == 1);
  CHECK(m.outputs[0].shape == Shape{1, 1, 4, 3});
  CHECK(m.weights.empty());
  CHECK(m.metadata.at("producer_name") == "backend-test");
  CHECK(m.metadata.at("ir_version") == 6);
  CHECK(m.metadata.at("opset") == 11);
  CHECK(m.metadata.at("source") == "model.onnx");
  CHECK(m.explain_layer.empty());
  CHECK(m.labels.empty());
}

TEST_CASE("bound Clip min/max become attributes, omitted optional inputs are dropped") {
  if (!have_backend_tests()) return;
  const std::string dir = kBackendTests + "test_clip/";
  OnnxImportOptions options;
  options.bind_inputs["min"] = read_onnx_tensor_file(dir + "test_data_set_0/input_1.pb");  // -1 (printed with onnx)
  options.bind_inputs["max"] = read_onnx_tensor_file(dir + "test_data_set_0/input_2.pb");  // +1
  const Model m = import_onnx(dir + "model.onnx", options);
  REQUIRE(m.nodes.size() == 1);
  CHECK(m.nodes[0].inputs == std::vector<std::string>{"x"});
  CHECK(m.nodes[0].attrs.at("min").get<float>() == -1.f);
  CHECK(m.nodes[0].attrs.at("max").get<float>() == 1.f);
  CHECK(m.inputs.size() == 1);
  CHECK(m.weights.empty());

  const Model d = import_onnx(kBackendTests + "test_clip_default_inbounds/model.onnx");  // Clip(x, "", "")
  REQUIRE(d.nodes.size() == 1);
  CHECK(d.nodes[0].inputs == std::vector<std::string>{"x"});
  CHECK_FALSE(d.nodes[0].attrs.contains("min"));
}

TEST_CASE("a bound Reshape shape stays an I64 weight input; bound axes become attributes") {
  if (!have_backend_tests()) return;
  const std::string dir = kBackendTests + "test_reshape_negative_dim/";
  OnnxImportOptions options;
  options.bind_inputs["shape"] = read_onnx_tensor_file(dir + "test_data_set_0/input_1.pb");
  const Model m = import_onnx(dir + "model.onnx", options);
  REQUIRE(m.nodes.size() == 1);
  CHECK(m.nodes[0].inputs == std::vector<std::string>{"data", "shape"});
  CHECK(weight(m, "shape").dtype == DType::I64);
  CHECK(weight(m, "shape").to_int64() == std::vector<int64_t>{2, -1, 2});

  const std::string udir = kBackendTests + "test_unsqueeze_two_axes/";
  OnnxImportOptions uoptions;
  uoptions.bind_inputs["axes"] = read_onnx_tensor_file(udir + "test_data_set_0/input_1.pb");
  const Model u = import_onnx(udir + "model.onnx", uoptions);
  REQUIRE(u.nodes.size() == 1);
  CHECK(u.nodes[0].inputs == std::vector<std::string>{"x"});
  CHECK(u.nodes[0].attrs.at("axes") == uoptions.bind_inputs["axes"].to_int64());

  OnnxImportOptions wrong;
  wrong.bind_inputs["not_an_input"] = make_i64({1}, {0});
  CHECK(import_error(dir + "model.onnx", wrong).find("'not_an_input'") != std::string::npos);
  OnnxImportOptions bad_shape;
  bad_shape.bind_inputs["shape"] = make_i64({4}, {1, 2, 3, 4});  // declared (3,)
  CHECK(import_error(dir + "model.onnx", bad_shape).find("bound tensor") != std::string::npos);
}

TEST_CASE("constant folding reproduces ONNX's reference outputs") {
  if (!have_backend_tests()) return;
  // With every graph input bound, each of these graphs folds into one constant; ONNX computed
  // output_0.pb with its reference implementation (numpy), independently of camrt.
  const char* const cases[] = {
      "test_add", "test_add_bcast", "test_add_uint8", "test_sub", "test_sub_bcast", "test_sub_example",
      "test_mul", "test_mul_bcast", "test_mul_example", "test_div", "test_div_bcast", "test_div_example",
      "test_div_uint8", "test_cast_DOUBLE_to_FLOAT", "test_cast_FLOAT16_to_DOUBLE", "test_cast_FLOAT16_to_FLOAT",
      "test_cast_FLOAT_to_DOUBLE", "test_concat_1d_axis_0", "test_concat_2d_axis_negative_2", "test_concat_3d_axis_1",
      "test_concat_3d_axis_negative_1", "test_constant", "test_constantofshape_float_ones",
      "test_constantofshape_int_shape_zero", "test_constantofshape_int_zeros", "test_flatten_axis0",
      "test_flatten_default_axis", "test_flatten_negative_axis3", "test_gather_0", "test_gather_1",
      "test_gather_2d_indices", "test_gather_negative_indices", "test_identity", "test_range_float_type_positive_delta",
      "test_range_int32_type_negative_delta", "test_reshape_allowzero_reordered", "test_reshape_extended_dims",
      "test_reshape_negative_extended_dims", "test_reshape_one_dim", "test_reshape_reduced_dims",
      "test_reshape_reordered_all_dims", "test_reshape_zero_and_negative_dim", "test_reshape_zero_dim", "test_shape",
      "test_shape_clip_end", "test_shape_clip_start", "test_shape_end_negative_1", "test_shape_start_1_end_2",
      "test_shape_start_negative_1", "test_size", "test_slice", "test_slice_default_axes", "test_slice_default_steps",
      "test_slice_end_out_of_bounds", "test_slice_neg", "test_slice_neg_steps", "test_slice_negative_axes",
      "test_slice_start_out_of_bounds", "test_squeeze", "test_squeeze_negative_axes", "test_unsqueeze_axis_0",
      "test_unsqueeze_negative_axes", "test_unsqueeze_three_axes", "test_unsqueeze_unsorted_axes"};
  for (const char* name : cases) {
    CAPTURE(name);
    const std::string dir = kBackendTests + name + "/";
    OnnxImportOptions options;
    for (int i = 0; std::filesystem::exists(dir + "test_data_set_0/input_" + std::to_string(i) + ".pb"); ++i) {
      std::string input;
      HostTensor t = read_onnx_tensor_file(dir + "test_data_set_0/input_" + std::to_string(i) + ".pb", &input);
      options.bind_inputs[input] = t;
    }
    const Model m = import_onnx(dir + "model.onnx", options);
    CHECK(m.inputs.empty());
    // A folded graph output is produced by one Identity reading the constant.
    REQUIRE(m.nodes.size() == 1);
    CHECK(m.nodes[0].op == "Identity");
    CHECK(m.nodes[0].outputs[0] == m.outputs[0].name);
    const HostTensor& got = weight(m, m.nodes[0].inputs[0]);
    const HostTensor expected = read_onnx_tensor_file(dir + "test_data_set_0/output_0.pb");
    CHECK(dtype_name(got.dtype) == std::string(dtype_name(expected.dtype)));
    REQUIRE(got.shape == expected.shape);
    const std::vector<float> g = got.to_float(), e = expected.to_float();
    for (size_t i = 0; i < g.size(); ++i) {
      // Integer and single-op float results are exact; Range computes start + i * delta in double while
      // numpy's arange may differ in the last bit, hence one float32 ulp (2^-23 relative).
      CHECK(std::fabs(g[i] - e[i]) <= 1.2e-7f * std::max(1.f, std::fabs(e[i])));
    }
  }
}

TEST_CASE("ops that cannot be folded or typed are reported, not crashed on") {
  if (!have_backend_tests()) return;
  OnnxImportOptions options;
  const std::string dir = kBackendTests + "test_cast_FLOAT_to_FLOAT16/";
  options.bind_inputs["input"] = read_onnx_tensor_file(dir + "test_data_set_0/input_0.pb");
  const std::string err = import_error(dir + "model.onnx", options);
  CHECK(err.find("'Cast_0' (Cast)") != std::string::npos);
  CHECK(err.find("F16") != std::string::npos);
  CHECK(import_error(kBackendTests + "test_cast_BFLOAT16_to_FLOAT/model.onnx").find("BFLOAT16") != std::string::npos);
  // An unbound Gather on a graph input is neither a runtime op nor foldable.
  CHECK(import_error(kBackendTests + "test_gather_0/model.onnx")
            .find("'Gather_0' (Gather): input 'data' is not a constant") != std::string::npos);
}

TEST_CASE("x.view(x.size(0), -1) with a dynamic batch folds into a Reshape that copies the batch dim") {
  const Model m = import_onnx(kFixtures + "view_input.onnx");
  CHECK(ops_of(m) == std::vector<std::string>{"Reshape", "Gemm", "Reshape"});
  REQUIRE(m.inputs.size() == 1);
  CHECK(m.inputs[0].shape == Shape{-1, 3, 4, 4});
  // view(x.size(0), -1): the batch element copies input dim 0 (0), the -1 stays.
  const Node& view = node_named(m, "/Reshape");
  CHECK(view.inputs[0] == "x");
  CHECK(weight(m, view.inputs[1]).dtype == DType::I64);
  CHECK(weight(m, view.inputs[1]).to_int64() == std::vector<int64_t>{0, -1});
  // reshape(x.size(0) * 3, 16): the batch-derived element is no input dim, so it becomes the -1.
  const Node& reshape = node_named(m, "/Reshape_1");
  CHECK(weight(m, reshape.inputs[1]).to_int64() == std::vector<int64_t>{-1, 16});
  CHECK(reshape.outputs[0] == "z");
  CHECK(node_named(m, "/fc/Gemm").inputs == std::vector<std::string>{"/Reshape_output_0", "fc.weight", "fc.bias"});
  CHECK(weight(m, "fc.weight").shape == Shape{5, 48});
  CHECK(m.weights.size() == 4);  // fc.weight, fc.bias and the two shapes: the folded chain left nothing else
  CHECK(m.outputs[0].shape == Shape{-1, 5});
  CHECK(m.metadata.at("producer_name") == "pytorch");
}

TEST_CASE("Conv + BN + ReLU + view(size(0), -1) + Linear: BN folded, Shape of an activation folded") {
  // Shape reads the ReLU's output shape, so this needs Conv/BatchNormalization/Relu shape inference.
  const Model m = import_onnx(kFixtures + "conv_view.onnx");
  CHECK(ops_of(m) == std::vector<std::string>{"Conv", "Relu", "Reshape", "Gemm"});
  const Node& conv = node_named(m, "/conv/Conv");
  CHECK(conv.outputs[0] == "/bn/BatchNormalization_output_0");  // took the BN's output name
  CHECK(conv.inputs[1] == "/bn/BatchNormalization.folded_weight");
  CHECK(weight(m, node_named(m, "/Reshape").inputs[1]).to_int64() == std::vector<int64_t>{0, -1});
  CHECK_FALSE(m.weights.count("conv.weight"));
  CHECK_FALSE(m.weights.count("bn.running_var"));
  CHECK(m.metadata.at("batchnorm_folded") == 1);
  check_topological(m);
}

TEST_CASE("BatchNormalization folding matches torch.nn.utils.fusion.fuse_conv_bn_weights") {
  const Model m = import_onnx(kFixtures + "conv_bn.onnx");
  CHECK(ops_of(m) == std::vector<std::string>{"Conv", "Conv", "Conv", "BatchNormalization", "Relu", "Add"});
  CHECK(m.metadata.at("batchnorm_folded") == 2);
  const Model unfolded = [] {
    OnnxImportOptions options;
    options.fold_batchnorm = false;
    return import_onnx(kFixtures + "conv_bn.onnx", options);
  }();
  CHECK(ops_of(unfolded) == std::vector<std::string>{"Conv", "BatchNormalization", "Conv", "BatchNormalization", "Conv",
                                                     "BatchNormalization", "Relu", "Add"});
  CHECK(unfolded.metadata.at("batchnorm_folded") == 0);

  for (const char* tag : {"a", "b"}) {
    CAPTURE(tag);
    const std::string bn = std::string("/bn_") + tag + "/BatchNormalization";
    const Node& conv = node_named(m, std::string("/conv_") + tag + "/Conv");
    CHECK(conv.outputs[0] == node_named(unfolded, bn).outputs[0]);  // the BN's output name ("y" for bn_b)
    REQUIRE(conv.inputs.size() == 3);
    const HostTensor& w = weight(m, conv.inputs[1]);
    const HostTensor& b = weight(m, conv.inputs[2]);
    CHECK(conv.inputs[1] == bn + ".folded_weight");
    CHECK(conv.inputs[2] == bn + ".folded_bias");
    CHECK_FALSE(m.weights.count(std::string("bn_") + tag + ".running_mean"));
    CHECK_FALSE(m.weights.count(std::string("conv_") + tag + ".weight"));

    // Reference 1: PyTorch's own fusion (float32 arithmetic): within a few float32 ulps of our double
    // computation, so 1e-6 relative plus 1e-7 absolute for values near zero.
    const std::string prefix = kFixtures + "conv_bn_expected_" + tag;
    const HostTensor tw = read_onnx_tensor_file(prefix + "_weight.pb");
    const HostTensor tb = read_onnx_tensor_file(prefix + "_bias.pb");
    REQUIRE(tw.shape == w.shape);
    REQUIRE(tb.shape == b.shape);
    for (int64_t i = 0; i < w.numel(); ++i)
      CHECK(std::fabs(w.f32()[i] - tw.f32()[i]) <= 1e-6f * std::fabs(tw.f32()[i]) + 1e-7f);
    for (int64_t i = 0; i < b.numel(); ++i)
      CHECK(std::fabs(b.f32()[i] - tb.f32()[i]) <= 1e-6f * std::fabs(tb.f32()[i]) + 1e-7f);

    // Reference 2: the formula in double from the unfolded import; ours rounds once, so within 1 ulp.
    const Node& raw_conv = node_named(unfolded, std::string("/conv_") + tag + "/Conv");
    const Node& raw_bn = node_named(unfolded, bn);
    const HostTensor& w0 = weight(unfolded, raw_conv.inputs[1]);
    const float eps = raw_bn.attrs.at("epsilon").get<float>();
    const int64_t channels = w0.shape[0], per = w0.numel() / channels;
    for (int64_t c = 0; c < channels; ++c) {
      const double gamma = weight(unfolded, raw_bn.inputs[1]).f32()[c];
      const double beta = weight(unfolded, raw_bn.inputs[2]).f32()[c];
      const double mean = weight(unfolded, raw_bn.inputs[3]).f32()[c];
      const double var = weight(unfolded, raw_bn.inputs[4]).f32()[c];
      const double bias = raw_conv.inputs.size() > 2 ? weight(unfolded, raw_conv.inputs[2]).f32()[c] : 0.0;
      const double scale = gamma / std::sqrt(var + static_cast<double>(eps));
      for (int64_t j = 0; j < per; ++j) {
        const double expect = w0.f32()[c * per + j] * scale;
        CHECK(std::fabs(w.f32()[c * per + j] - expect) <= 1.2e-7 * std::fabs(expect));
      }
      const double expect_b = (bias - mean) * scale + beta;
      CHECK(std::fabs(b.f32()[c] - expect_b) <= 1.2e-7 * std::fabs(expect_b) + 1e-12);
    }
  }
  // conv_c's output also feeds a ReLU, so its BN must stay.
  const Node& conv_c = node_named(m, "/conv_c/Conv");
  CHECK(conv_c.outputs[0] == "/conv_c/Conv_output_0");
  CHECK(conv_c.inputs[1] == "conv_c.weight");
  CHECK(node_named(m, "/bn_c/BatchNormalization").inputs[0] == "/conv_c/Conv_output_0");
}

TEST_CASE("Constant nodes, shape chains and shuffled node order normalize to one form") {
  const Model m = import_onnx(kFixtures + "constants.onnx");
  check_topological(m);
  std::vector<std::string> ops = ops_of(m);
  std::sort(ops.begin(), ops.end());
  CHECK(ops == std::vector<std::string>{"Add", "Add", "Clip", "Dropout", "Mul", "ReduceMean", "Reshape", "Squeeze",
                                        "Unsqueeze"});
  for (const Node& node : m.nodes) CHECK(node.attrs.at("onnx_opset") == 13);
  // The Clip has no name in the file: "Clip_<index in the file>".
  const auto clip = std::find_if(m.nodes.begin(), m.nodes.end(), [](const Node& n) { return n.op == "Clip"; });
  REQUIRE(clip != m.nodes.end());
  CHECK(clip->name.rfind("Clip_", 0) == 0);
  CHECK(clip->name.find_first_not_of("0123456789", 5) == std::string::npos);
  CHECK(clip->inputs == std::vector<std::string>{"x"});
  CHECK(clip->attrs.at("min").get<float>() == 0.f);
  CHECK(clip->attrs.at("max").get<float>() == 6.f);
  // Concat(Slice(Shape(x), 0, 2), [-1]) = [N, 3, -1]: N copies input dim 0.
  CHECK(weight(m, node_named(m, "reshape_r").inputs[1]).to_int64() == std::vector<int64_t>{0, 3, -1});
  for (const char* name : {"unsqueeze_r", "squeeze_r"}) {
    CHECK(node_named(m, name).inputs.size() == 1);
    CHECK(node_named(m, name).attrs.at("axes") == std::vector<int64_t>{1});
  }
  CHECK(node_named(m, "dropout_r").inputs == std::vector<std::string>{"r_s"});
  // k = float(x.shape[-3]), rng = float(range(0, 3)), half = ConstantOfShape([3], 0.5): weights now.
  CHECK(node_named(m, "mul_k").inputs == std::vector<std::string>{"y", "k"});
  CHECK(weight(m, "k").dtype == DType::F32);
  CHECK(weight(m, "k").shape == Shape{});
  CHECK(weight(m, "k").to_float() == std::vector<float>{3.f});
  CHECK(weight(m, "rng").to_float() == std::vector<float>{0.f, 1.f, 2.f});
  CHECK(weight(m, "half").to_float() == std::vector<float>{0.5f, 0.5f, 0.5f});
  CHECK(m.weights.size() == 4);
  for (const Node& node : m.nodes) CHECK(node.name != "dead_relu");
  REQUIRE(m.outputs.size() == 2);
  CHECK(m.outputs[1].shape == Shape{-1, 3});
}

TEST_CASE("initializers listed as graph inputs are weights; float_data and raw_data both decode") {
  const Model m = import_onnx(kFixtures + "old_style.onnx");
  REQUIRE(m.inputs.size() == 1);
  CHECK(m.inputs[0].name == "x");
  CHECK(m.metadata.at("ir_version") == 3);
  CHECK(m.metadata.at("opset") == 9);
  // Values printed once with onnx.numpy_helper.to_array: W (float_data) starts 0.55425423, -0.51740503;
  // B (raw_data) = -0.27171749, 1.71270096.
  const HostTensor& w = weight(m, "W");
  CHECK(w.shape == Shape{2, 3, 3, 3});
  CHECK(w.f32()[0] == doctest::Approx(0.5542542338).epsilon(1e-7));
  CHECK(w.f32()[1] == doctest::Approx(-0.5174050331).epsilon(1e-7));
  CHECK(weight(m, "B").to_float()[1] == doctest::Approx(1.7127009630).epsilon(1e-7));
}

TEST_CASE("external data, unsupported ops and batch-dependent constants give one clear error") {
  const std::string ext = import_error(kFixtures + "external_data.onnx");
  CHECK(ext.find("external_data.onnx: tensor 'W'") != std::string::npos);
  CHECK(ext.find("'weights.bin'") != std::string::npos);

  // Every unsupported node in one message, grouped by op; the dead Erf is not reported.
  const std::string uns = import_error(kFixtures + "unsupported.onnx");
  CHECK(uns.find("unsupported.onnx: cannot import") != std::string::npos);
  CHECK(uns.find("unsupported ops: 3 nodes") != std::string::npos);
  CHECK(uns.find("'/Erf' (Erf)") != std::string::npos);
  CHECK(uns.find("'/Einsum' (Einsum)") != std::string::npos);
  CHECK(uns.find("'custom_foo' (com.example:Foo)") != std::string::npos);
  CHECK(uns.find("dead_erf") == std::string::npos);
  CHECK(uns.find("supported: Add, ") != std::string::npos);

  const std::string batch = import_error(kFixtures + "batch_constant.onnx");
  CHECK(batch.find("dynamic batch") != std::string::npos);
  CHECK(batch.find("'add_ones' (Add)") != std::string::npos);
}

TEST_CASE("crafted graphs: cycles, missing inputs, duplicate outputs, names, UTF-8") {
  CHECK(crafted_error(make_model({node("Relu", "a", {"b"}, {"y"}), node("Relu", "b", {"y"}, {"b"})})).find("cycle") !=
        std::string::npos);
  CHECK(crafted_error(make_model({node("Relu", "r", {"nope"}, {"y"})})).find("'nope' is not produced") !=
        std::string::npos);
  CHECK(crafted_error(make_model({node("Relu", "r", {"x"}, {"y"}), node("Relu", "s", {"x"}, {"y"})})).find("'y'") !=
        std::string::npos);
  CHECK(crafted_error(make_model({node("Relu", std::string("bad\xff", 4), {"x"}, {"y"})})).find("UTF-8") !=
        std::string::npos);
  CHECK(crafted_error(make_model({node("Relu", "r", {"x"}, {"z"})})).find("graph output 'y'") != std::string::npos);
  {
    // Nodes listed consumer-first are sorted; an unnamed node's "<op>_<index>" avoids an existing name.
    const Model m = import_crafted(make_model({node("Relu", "Relu_1", {"t"}, {"y"}), node("Relu", "", {"x"}, {"t"})}));
    REQUIRE(m.nodes.size() == 2);
    CHECK(m.nodes[0].name == "Relu_1_1");
    CHECK(m.nodes[1].name == "Relu_1");
  }
  {
    // Attributes without AttributeProto.type (IR version 1) and ints in unpacked form.
    Pb relu = node("LeakyRelu", "lr", {"x"}, {"t"});
    relu.m(5, Pb().s(1, "alpha").f32(2, 0.25f));
    Pb reduce = node("ReduceMean", "m", {"t"}, {"y"});
    reduce.m(5, Pb().s(1, "axes").u(8, 1).u(8, 0).u(20, 7 /* INTS */));
    Pb dead = node("Relu", "dead", {"x"}, {"unused"});
    const Model m = import_crafted(make_model({relu, reduce, dead}));
    CHECK(node_named(m, "lr").attrs.at("alpha").get<float>() == 0.25f);
    CHECK(node_named(m, "m").attrs.at("axes") == std::vector<int64_t>{1, 0});
    CHECK(m.nodes.size() == 2);  // the dead Relu is dropped
  }
  {
    Pb relu = node("LeakyRelu", "lr", {"x"}, {"y"});
    relu.m(5, Pb().s(1, "alpha").f32(2, std::nanf("")).u(20, 1));
    CHECK(crafted_error(make_model({relu})).find("attribute 'alpha' is NaN") != std::string::npos);
  }
  {
    Pb model;
    model.u(1, 8).m(7, Pb().s(2, "g"));
    const std::vector<uint8_t> bytes(model.bytes.begin(), model.bytes.end());
    CHECK(crafted_error(bytes).find("no opset") != std::string::npos);
  }
  {
    // Shape of a dynamic-batch input as a graph output: the constant would freeze batch 1.
    const std::vector<uint8_t> bytes = make_model({node("Shape", "s", {"x"}, {"y"})}, "y", {-1, 3});
    CHECK(crafted_error(bytes).find("graph output 'y' is a constant computed from the dynamic batch size") !=
          std::string::npos);
    // With a static input the same graph folds to [1, 3].
    const Model m = import_crafted(make_model({node("Shape", "s", {"x"}, {"y"})}));
    REQUIRE(m.nodes.size() == 1);
    CHECK(weight(m, m.nodes[0].inputs[0]).to_int64() == std::vector<int64_t>{1, 3});
  }
  CHECK(crafted_error({}).find("not an ONNX model") != std::string::npos);
  CHECK_THROWS_AS(import_onnx(kFixtures + "does_not_exist.onnx"), Error);
}

TEST_CASE("truncated and corrupted files throw camrt::Error and never crash") {
  for (const char* name : {"constants.onnx", "conv_bn.onnx", "view_input.onnx"}) {
    CAPTURE(name);
    const std::vector<uint8_t> good = read_bytes(kFixtures + name);
    // Every proper prefix: a cut inside a field must be caught by the length checks.
    int failed = 0;
    for (size_t n = 0; n < good.size(); ++n) {
      std::vector<uint8_t> cut(good.begin(), good.begin() + n);
      try {
        import_onnx_bytes(cut.data(), cut.size(), "cut.onnx");
      } catch (const Error&) {
        ++failed;
      } catch (const std::exception& e) {
        FAIL("prefix of " << n << " bytes: non-camrt exception: " << e.what());
      }
    }
    // A prefix ending on a field boundary can be a valid smaller model; most are not.
    CHECK(failed > static_cast<int>(good.size()) * 9 / 10);
    // Every byte flipped to values that break varints, lengths and tags.
    for (size_t i = 0; i < good.size(); ++i)
      for (uint8_t v : {uint8_t(good[i] ^ 0xff), uint8_t(0x80), uint8_t(0x00), uint8_t(0x7f)}) {
        std::vector<uint8_t> bad = good;
        bad[i] = v;
        import_must_not_crash(bad, "byte " + std::to_string(i) + " set to " + std::to_string(v));
      }
  }
  std::mt19937 rng(7);  // fixed seed: random garbage, and random multi-byte damage to a real model
  for (int k = 0; k < 200; ++k) {
    std::vector<uint8_t> junk(rng() % 300);
    for (uint8_t& b : junk) b = static_cast<uint8_t>(rng());
    import_must_not_crash(junk, "random bytes");
  }
  const std::vector<uint8_t> good = read_bytes(kFixtures + "constants.onnx");
  for (int k = 0; k < 500; ++k) {
    std::vector<uint8_t> bad = good;
    for (int j = 0; j < 4; ++j) bad[rng() % bad.size()] = static_cast<uint8_t>(rng());
    import_must_not_crash(bad, "random damage");
  }
}
