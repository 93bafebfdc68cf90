// ONNX -> camrt::Model in three stages:
//   decode: protobuf bytes -> plain structs (OnnxModel); every count and length is validated first.
//   walk:   nodes in topological order. Constants are folded and shape chains evaluated twice, once with
//           the dynamic input dims taken as 1 and once as 2 (the "shadow"): an element that differs between
//           the two was computed from the batch size, which is how x.view(x.size(0), -1) stays dynamic.
//           Runtime ops are normalized (constant inputs -> attributes) and their output shapes inferred.
//   finish: BatchNormalization folded into Conv, dead nodes and unused weights dropped, Model assembled.
#include "weights/onnx/onnx_import.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <locale>
#include <limits>
#include <memory>
#include <optional>
#include <queue>
#include <set>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "engine/error.h"
#include "engine/limits.h"
#include "engine/ops/op.h"
#include "weights/onnx/protobuf.h"

namespace camrt {
namespace {

using json = nlohmann::json;
using protobuf::Field;
using protobuf::Reader;
using protobuf::WireType;

// ---------------------------------------------------------------------------------------------
// ONNX enums (onnx.proto)

enum OnnxDataType : int32_t {
  kOnnxFloat = 1, kOnnxUint8 = 2, kOnnxInt8 = 3, kOnnxInt32 = 6, kOnnxInt64 = 7, kOnnxBool = 9,
  kOnnxFloat16 = 10, kOnnxDouble = 11,
};

const char* onnx_type_name(int32_t type) {
  static const char* const names[] = {"UNDEFINED", "FLOAT",  "UINT8",  "INT8",      "UINT16",     "INT16",
                                      "INT32",     "INT64",  "STRING", "BOOL",      "FLOAT16",    "DOUBLE",
                                      "UINT32",    "UINT64", "COMPLEX64", "COMPLEX128", "BFLOAT16"};
  return type >= 0 && type <= 16 ? names[type] : "unknown";
}

bool dtype_from_onnx(int32_t type, DType* dtype) {
  switch (type) {
    case kOnnxFloat: *dtype = DType::F32; return true;
    case kOnnxUint8: *dtype = DType::U8; return true;
    case kOnnxInt8: *dtype = DType::I8; return true;
    case kOnnxInt32: *dtype = DType::I32; return true;
    case kOnnxInt64: *dtype = DType::I64; return true;
    case kOnnxBool: *dtype = DType::Bool; return true;
    case kOnnxFloat16: *dtype = DType::F16; return true;
    case kOnnxDouble: *dtype = DType::F64; return true;
    default: return false;
  }
}

enum AttrType : int32_t {
  kAttrUndefined = 0, kAttrFloat = 1, kAttrInt = 2, kAttrString = 3, kAttrTensor = 4, kAttrGraph = 5,
  kAttrFloats = 6, kAttrInts = 7, kAttrStrings = 8, kAttrTensors = 9, kAttrGraphs = 10,
  kAttrSparseTensor = 11, kAttrSparseTensors = 12, kAttrTypeProto = 13, kAttrTypeProtos = 14,
};

const char* attr_type_name(int32_t type) {
  static const char* const names[] = {"UNDEFINED", "FLOAT", "INT", "STRING", "TENSOR", "GRAPH", "FLOATS", "INTS",
                                      "STRINGS", "TENSORS", "GRAPHS", "SPARSE_TENSOR", "SPARSE_TENSORS",
                                      "TYPE_PROTO", "TYPE_PROTOS"};
  return type >= 0 && type <= 14 ? names[type] : "unknown";
}

// ---------------------------------------------------------------------------------------------
// Small helpers

// Names end up in model.json; nlohmann::json refuses to serialize invalid UTF-8, so check on the way in.
bool valid_utf8(const std::string& s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else return false;
    if (n - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      const unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are invalid.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += len;
  }
  return true;
}

// Metadata strings are informational: replace bad bytes rather than refuse the model.
std::string sanitized(const std::string& s) {
  if (valid_utf8(s)) return s;
  std::string out = s;
  for (char& c : out)
    if (static_cast<unsigned char>(c) >= 0x80) c = '?';
  return out;
}

// Dims read from a file beyond this are refused before they reach any shape arithmetic (2^32 is far past
// any real tensor dimension and keeps products of a few dims inside int64).
constexpr int64_t kMaxFileDim = int64_t(1) << 32;

void check_file_dims(const Shape& shape, const std::string& what) {
  for (int64_t d : shape)
    CAMRT_CHECK(d <= kMaxFileDim, what << ": dimension " << d << " in shape " << shape_str(shape) << " is too large");
}

int64_t numel_of(const Shape& shape, const std::string& what) {
  for (int64_t d : shape) CAMRT_CHECK(d >= 0, what << ": negative dimension in shape " << shape_str(shape));
  int64_t n = 0;
  try {
    n = checked_numel(shape);
  } catch (const Error&) {
    CAMRT_FAIL(what << ": shape " << shape_str(shape) << " has too many elements");
  }
  return n;
}

// Narrowing that never hits the undefined behaviour of an out-of-range double -> float conversion.
float to_f32(double v) {
  if (std::isfinite(v) && std::fabs(v) > static_cast<double>(FLT_MAX))
    return v > 0 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
  return static_cast<float>(v);
}

// A float attribute as JSON: the shortest decimal that reads back as the same float, so model.json shows
// 1e-05 rather than 9.999999747378752e-06. Infinities become +-FLT_MAX because JSON has no infinity.
json float_json(float v, const std::string& what) {
  CAMRT_CHECK(!std::isnan(v), what << " is NaN");
  if (std::isinf(v)) v = v > 0 ? FLT_MAX : -FLT_MAX;
  // 9 significant digits always round-trip a float; streams with the classic locale, since std::to_chars
  // for floats is missing from the older compilers of edge toolchains.
  for (int precision = 6; precision <= 9; ++precision) {
    std::ostringstream os;
    os.imbue(std::locale::classic());
    os << std::setprecision(precision) << v;
    std::istringstream is(os.str());
    is.imbue(std::locale::classic());
    double d = 0;
    if ((is >> d) && to_f32(d) == v) return json(d);
  }
  return json(static_cast<double>(v));
}

int64_t json_int(const json& attrs, const char* key, int64_t fallback) {
  if (!attrs.contains(key)) return fallback;
  const json& v = attrs.at(key);
  CAMRT_CHECK(v.is_number_integer(), "attribute '" << key << "' must be an integer");
  return v.get<int64_t>();
}

float json_float(const json& attrs, const char* key, float fallback) {
  if (!attrs.contains(key)) return fallback;
  const json& v = attrs.at(key);
  CAMRT_CHECK(v.is_number(), "attribute '" << key << "' must be a number");
  return static_cast<float>(v.get<double>());
}

std::vector<int64_t> json_ints(const json& attrs, const char* key) {
  std::vector<int64_t> out;
  if (!attrs.contains(key)) return out;
  const json& v = attrs.at(key);
  CAMRT_CHECK(v.is_array(), "attribute '" << key << "' must be a list of integers");
  for (const json& e : v) {
    CAMRT_CHECK(e.is_number_integer(), "attribute '" << key << "' must be a list of integers");
    out.push_back(e.get<int64_t>());
  }
  return out;
}

std::string join(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

std::string basename_of(const std::string& path) {
  const size_t slash = path.find_last_of("/\\");
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// ---------------------------------------------------------------------------------------------
// Decoding: protobuf -> plain structs

struct OnnxAttribute {
  std::string name;
  int32_t type = kAttrUndefined;
  float f = 0.f;
  int64_t i = 0;
  std::string s;
  std::optional<Reader> t;  // TensorProto payload, decoded only when an op needs the value
  std::vector<float> floats;
  std::vector<int64_t> ints;
  std::vector<std::string> strings;
  bool has_f = false, has_i = false, has_s = false, has_other = false;
  int32_t other_type = kAttrUndefined;  // graph, sparse tensor, type proto, or lists of them
};

struct OnnxNode {
  std::vector<std::string> inputs, outputs;
  std::string name, op_type, domain;
  std::vector<OnnxAttribute> attributes;
};

struct OnnxValueInfo {
  std::string name;
  bool is_tensor = false;
  int32_t elem_type = 0;
  bool has_shape = false;
  Shape dims;  // -1 for dim_param or missing dims
};

struct OnnxGraph {
  std::string name;
  std::vector<OnnxNode> nodes;
  std::vector<std::pair<std::string, HostTensor>> initializers;
  std::vector<OnnxValueInfo> inputs, outputs, value_info;
  bool has_sparse_initializers = false;
};

struct OnnxModel {
  int64_t ir_version = 0;
  std::string producer_name, producer_version, domain;
  int64_t model_version = 0;
  std::vector<std::pair<std::string, int64_t>> opsets;
  bool has_graph = false;
  OnnxGraph graph;
};

// Reads a TensorProto. owner prefixes errors ("" for initializers and .pb files, else the attribute).
HostTensor decode_tensor(Reader r, std::string* name_out, const std::string& owner) {
  std::string name;
  std::vector<int64_t> dims;
  int32_t data_type = 0;
  std::vector<float> float_data;
  std::vector<int64_t> int32_data, int64_data;  // int32_data arrives as sign-extended varints
  std::vector<double> double_data;
  std::vector<uint64_t> uint64_data;
  const uint8_t* raw = nullptr;
  size_t raw_size = 0;
  bool has_raw = false, has_segment = false;
  size_t string_count = 0;
  int64_t data_location = 0;
  std::string external_location;
  Field f;
  while (r.next(&f)) {
    switch (f.number) {
      case 1:
        r.append_int64s(f, &dims);
        if (static_cast<int64_t>(dims.size()) > limits::kMaxRank)
          r.fail(f.offset, "tensor of rank " + std::to_string(dims.size()) + " (at most " +
                               std::to_string(limits::kMaxRank) + ")");
        break;
      case 2: data_type = r.as_int32(f); break;
      case 3: has_segment = true; break;
      case 4: r.append_floats(f, &float_data); break;
      case 5: r.append_int64s(f, &int32_data); break;
      case 6: ++string_count; break;
      case 7: r.append_int64s(f, &int64_data); break;
      case 8: name = r.as_name(f, "tensor name"); break;
      case 9:
        r.expect_wire(f, WireType::LengthDelimited, "bytes (raw_data)");
        raw = f.data;
        raw_size = f.size;
        has_raw = true;
        break;
      case 10: r.append_doubles(f, &double_data); break;
      case 11: r.append_uint64s(f, &uint64_data); break;
      case 13: {
        Reader entry = r.message(f, "StringStringEntryProto");
        std::string key, value;
        Field g;
        while (entry.next(&g)) {
          if (g.number == 1) key = entry.as_string(g);
          if (g.number == 2) value = entry.as_string(g);
        }
        if (key == "location") external_location = value;
        break;
      }
      case 14: data_location = r.as_int64(f); break;
      default: break;
    }
  }
  if (name_out) *name_out = name;
  const std::string what = r.source() + ": " + (owner.empty() ? "" : owner + ": ") + "tensor '" + name + "'";
  CAMRT_CHECK(data_location != 1,
              what << " keeps its data in an external file"
                   << (external_location.empty() ? "" : " ('" + sanitized(external_location) + "')")
                   << "; camrt reads self-contained .onnx files only: re-save it with "
                      "onnx.save_model(model, path, save_as_external_data=False)");
  CAMRT_CHECK(!has_segment, what << " is segmented (TensorProto.segment), which camrt does not support");
  DType dtype;
  CAMRT_CHECK(dtype_from_onnx(data_type, &dtype), what << " has data type " << onnx_type_name(data_type) << " ("
                                                        << data_type << "), which camrt does not support");
  const Shape shape(dims.begin(), dims.end());
  check_file_dims(shape, what);
  const int64_t numel = numel_of(shape, what);
  const size_t elem = dtype_size(dtype);
  CAMRT_CHECK(numel <= limits::kMaxTensorElements && numel <= limits::kMaxTensorBytes / static_cast<int64_t>(elem),
              what << ": shape " << shape_str(shape) << " exceeds camrt's limits (" << limits::kMaxTensorElements
                   << " elements, " << limits::kMaxTensorBytes << " bytes)");
  if (has_raw) {
    // Compare before allocating: the declared shape may be absurd, the raw bytes are bounded by the file.
    CAMRT_CHECK(raw_size % elem == 0 && static_cast<uint64_t>(numel) == raw_size / elem,
                what << " has shape " << shape_str(shape) << " (" << numel << " " << onnx_type_name(data_type)
                     << " elements) but raw_data holds " << raw_size << " bytes");
    HostTensor t(dtype, shape);
    if (raw_size) std::memcpy(t.bytes.data(), raw, raw_size);
    return t;
  }
  size_t count = 0;
  const char* field = "";
  switch (dtype) {
    case DType::F32: count = float_data.size(); field = "float_data"; break;
    case DType::F64: count = double_data.size(); field = "double_data"; break;
    case DType::I64: count = int64_data.size(); field = "int64_data"; break;
    default: count = int32_data.size(); field = "int32_data"; break;
  }
  CAMRT_CHECK(static_cast<uint64_t>(numel) == count,
              what << " has shape " << shape_str(shape) << " (" << numel << " elements) but " << field << " holds "
                   << count << " values"
                   << (string_count || uint64_data.size() ? " (the data is in another field)" : ""));
  HostTensor t(dtype, shape);
  uint8_t* p = t.bytes.data();
  for (size_t i = 0; i < count; ++i) {
    switch (dtype) {
      case DType::F32: std::memcpy(p + 4 * i, &float_data[i], 4); break;
      case DType::F64: std::memcpy(p + 8 * i, &double_data[i], 8); break;
      case DType::I64: std::memcpy(p + 8 * i, &int64_data[i], 8); break;
      case DType::I32: {
        const int32_t v = static_cast<int32_t>(static_cast<uint32_t>(int32_data[i]));
        std::memcpy(p + 4 * i, &v, 4);
        break;
      }
      case DType::F16: {  // int32_data holds the IEEE half bits
        const uint16_t v = static_cast<uint16_t>(int32_data[i]);
        std::memcpy(p + 2 * i, &v, 2);
        break;
      }
      case DType::Bool: p[i] = int32_data[i] != 0; break;
      default: p[i] = static_cast<uint8_t>(int32_data[i]); break;  // I8, U8: two's complement bits
    }
  }
  return t;
}

Shape decode_shape(Reader r) {
  Shape dims;
  Field f;
  while (r.next(&f)) {
    if (f.number != 1) continue;
    if (static_cast<int64_t>(dims.size()) >= limits::kMaxRank)
      r.fail(f.offset, "shape of rank above " + std::to_string(limits::kMaxRank));
    Reader dim = r.message(f, "TensorShapeProto.Dimension");
    int64_t value = -1;
    Field g;
    while (dim.next(&g)) {
      if (g.number == 1) {
        value = dim.as_int64(g);
        if (value < 0) value = -1;
      } else if (g.number == 2) {
        dim.expect_wire(g, WireType::LengthDelimited, "a string (dim_param)");
        value = -1;
      }
    }
    dims.push_back(value);
  }
  return dims;
}

OnnxValueInfo decode_value_info(Reader r) {
  OnnxValueInfo info;
  Field f;
  while (r.next(&f)) {
    if (f.number == 1) {
      info.name = r.as_name(f, "value name");
    } else if (f.number == 2) {
      Reader type = r.message(f, "TypeProto");
      Field g;
      while (type.next(&g)) {
        if (g.number != 1) continue;  // sequence, map, optional, sparse: not tensors
        info.is_tensor = true;
        Reader tensor = type.message(g, "TypeProto.Tensor");
        Field h;
        while (tensor.next(&h)) {
          if (h.number == 1) info.elem_type = tensor.as_int32(h);
          if (h.number == 2) {
            info.has_shape = true;
            info.dims = decode_shape(tensor.message(h, "TensorShapeProto"));
          }
        }
      }
    }
  }
  return info;
}

OnnxAttribute decode_attribute(Reader r) {
  OnnxAttribute a;
  Field f;
  while (r.next(&f)) {
    switch (f.number) {
      case 1: a.name = r.as_name(f, "attribute name"); break;
      case 2: a.f = r.as_float(f); a.has_f = true; break;
      case 3: a.i = r.as_int64(f); a.has_i = true; break;
      case 4: a.s = r.as_string(f); a.has_s = true; break;
      case 5: a.t = r.message(f, "TensorProto"); break;
      case 6: a.has_other = true; a.other_type = kAttrGraph; break;
      case 7: r.append_floats(f, &a.floats); break;
      case 8: r.append_int64s(f, &a.ints); break;
      case 9: a.strings.push_back(r.as_string(f)); break;
      case 10: a.has_other = true; a.other_type = kAttrTensors; break;
      case 11: a.has_other = true; a.other_type = kAttrGraphs; break;
      case 14: a.has_other = true; a.other_type = kAttrTypeProto; break;
      case 15: a.has_other = true; a.other_type = kAttrTypeProtos; break;
      case 20: a.type = r.as_int32(f); break;
      case 22: a.has_other = true; a.other_type = kAttrSparseTensor; break;
      case 23: a.has_other = true; a.other_type = kAttrSparseTensors; break;
      default: break;
    }
  }
  if (a.type == kAttrUndefined) {
    // IR version 1 files predate AttributeProto.type: infer it from the field that is set.
    if (a.has_f) a.type = kAttrFloat;
    else if (a.has_i) a.type = kAttrInt;
    else if (a.has_s) a.type = kAttrString;
    else if (a.t) a.type = kAttrTensor;
    else if (!a.floats.empty()) a.type = kAttrFloats;
    else if (!a.ints.empty()) a.type = kAttrInts;
    else if (!a.strings.empty()) a.type = kAttrStrings;
    else if (a.has_other) a.type = a.other_type;
  }
  return a;
}

OnnxNode decode_node(Reader r) {
  OnnxNode node;
  Field f;
  while (r.next(&f)) {
    switch (f.number) {
      case 1:
      case 2: {
        std::vector<std::string>& list = f.number == 1 ? node.inputs : node.outputs;
        if (static_cast<int64_t>(list.size()) >= limits::kMaxNodeInputs)
          r.fail(f.offset, "node '" + sanitized(node.name) + "' has more than " +
                               std::to_string(limits::kMaxNodeInputs) + (f.number == 1 ? " inputs" : " outputs"));
        list.push_back(r.as_name(f, "tensor name"));
        break;
      }
      case 3: node.name = r.as_name(f, "node name"); break;
      case 4: node.op_type = r.as_name(f, "op type"); break;
      case 5:
        // An op has a handful of attributes; the same cap as for inputs keeps a hostile node's memory bounded.
        if (static_cast<int64_t>(node.attributes.size()) >= limits::kMaxNodeInputs)
          r.fail(f.offset, "node '" + sanitized(node.name) + "' has more than " +
                               std::to_string(limits::kMaxNodeInputs) + " attributes");
        node.attributes.push_back(decode_attribute(r.message(f, "AttributeProto")));
        break;
      case 7: node.domain = r.as_name(f, "domain"); break;
      default: break;
    }
  }
  return node;
}

OnnxGraph decode_graph(Reader r) {
  OnnxGraph g;
  Field f;
  int64_t values = 0, weight_bytes = 0;
  auto count_value = [&]() {
    if (++values > limits::kMaxGraphValues)
      r.fail(f.offset, "more than " + std::to_string(limits::kMaxGraphValues) + " initializers and value infos");
  };
  while (r.next(&f)) {
    switch (f.number) {
      case 1:
        if (static_cast<int64_t>(g.nodes.size()) >= limits::kMaxGraphNodes)
          r.fail(f.offset, "more than " + std::to_string(limits::kMaxGraphNodes) + " nodes");
        g.nodes.push_back(decode_node(r.message(f, "NodeProto")));
        break;
      case 2: g.name = r.as_name(f, "graph name"); break;
      case 5: {
        count_value();
        std::string name;
        HostTensor t = decode_tensor(r.message(f, "TensorProto"), &name, "");
        weight_bytes += static_cast<int64_t>(t.bytes.size());
        if (weight_bytes > limits::kMaxModelBytes)
          r.fail(f.offset, "initializers exceed " + std::to_string(limits::kMaxModelBytes) + " bytes (at '" +
                               sanitized(name) + "')");
        g.initializers.emplace_back(std::move(name), std::move(t));
        break;
      }
      case 11: count_value(); g.inputs.push_back(decode_value_info(r.message(f, "ValueInfoProto"))); break;
      case 12: count_value(); g.outputs.push_back(decode_value_info(r.message(f, "ValueInfoProto"))); break;
      case 13: count_value(); g.value_info.push_back(decode_value_info(r.message(f, "ValueInfoProto"))); break;
      case 15: g.has_sparse_initializers = true; break;
      default: break;
    }
  }
  return g;
}

OnnxModel decode_model(const uint8_t* data, size_t size, const std::string& source) {
  OnnxModel m;
  Reader r(data, size, source, "ModelProto");
  Field f;
  while (r.next(&f)) {
    switch (f.number) {
      case 1: m.ir_version = r.as_int64(f); break;
      case 2: m.producer_name = r.as_string(f); break;
      case 3: m.producer_version = r.as_string(f); break;
      case 4: m.domain = r.as_string(f); break;
      case 5: m.model_version = r.as_int64(f); break;
      case 7:
        m.graph = decode_graph(r.message(f, "GraphProto"));
        m.has_graph = true;
        break;
      case 8: {
        if (static_cast<int64_t>(m.opsets.size()) >= limits::kMaxNodeInputs)
          r.fail(f.offset, "more than " + std::to_string(limits::kMaxNodeInputs) + " opset imports");
        Reader opset = r.message(f, "OperatorSetIdProto");
        std::string domain;
        int64_t version = 0;
        Field g;
        while (opset.next(&g)) {
          if (g.number == 1) domain = opset.as_name(g, "opset domain");
          if (g.number == 2) version = opset.as_int64(g);
        }
        m.opsets.emplace_back(domain, version);
        break;
      }
      default: break;
    }
  }
  CAMRT_CHECK(m.has_graph, source << ": not an ONNX model (no graph found; empty or truncated file?)");
  return m;
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::error_code ec;
  CAMRT_CHECK(std::filesystem::is_regular_file(path, ec), path << ": no such file");
  std::ifstream in(path, std::ios::binary);
  CAMRT_CHECK(in, path << ": cannot open file");
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CAMRT_CHECK(!in.bad(), path << ": read error");
  return bytes;
}

// ---------------------------------------------------------------------------------------------
// Constant evaluation: the importer-side implementations of the ops that shape computations use.
// Inputs are small (shape vectors, scalars) or weights; results are capped so that a malicious
// ConstantOfShape or Range cannot exhaust memory.

// Per result: a 2048 x 2048 weight still folds (e.g. a Cast of an initializer). A file smaller than that many
// bytes gets a proportionally smaller cap (at least kMinFoldCap): a result much larger than the file's own data
// can only come from an amplifying op (ConstantOfShape, Range, broadcasting), never from a real shape chain.
constexpr int64_t kMaxFoldElements = int64_t(1) << 22;
constexpr int64_t kMinFoldCap = int64_t(1) << 16;
// All folds of one import together, counting the elements each evaluation reads and writes: shape
// computations are tiny, and a chain of ops each just under the per-result cap would otherwise multiply the
// work (a 2 KB hostile file folding for seconds). Past the budget, runtime ops stay runtime ops on constant
// inputs; the others cannot be imported.
// The budget is this many elements plus two per byte of the file: the worst case of a small file stays well
// under a second even in a sanitizer + coverage build (~300 ns per element there, ~100x less in a release build).
constexpr int64_t kMinFoldWork = int64_t(1) << 18;

// cap: the import's per-result cap (Importer::fold_cap_), at most kMaxFoldElements.
void check_fold_size(const Shape& shape, int64_t cap) {
  CAMRT_CHECK(static_cast<int64_t>(shape.size()) <= limits::kMaxRank,
              "result of rank " << shape.size() << " (at most " << limits::kMaxRank << ")");
  const int64_t n = numel_of(shape, "folded constant");
  CAMRT_CHECK(n <= cap,
              "result of shape " << shape_str(shape) << " is too large to fold (" << n << " elements)");
}

bool is_float_dtype(DType d) { return d == DType::F32 || d == DType::F64 || d == DType::F16; }

std::vector<double> float_values(const HostTensor& t) {
  if (t.dtype == DType::F64) {
    std::vector<double> v(static_cast<size_t>(t.numel()));
    if (!v.empty()) std::memcpy(v.data(), t.bytes.data(), v.size() * 8);
    return v;
  }
  if (is_float_dtype(t.dtype)) {
    const std::vector<float> f = t.to_float();
    return std::vector<double>(f.begin(), f.end());
  }
  const std::vector<int64_t> i = t.to_int64();
  return std::vector<double>(i.begin(), i.end());
}

std::vector<int64_t> int_values(const HostTensor& t, const char* what) {
  CAMRT_CHECK(!is_float_dtype(t.dtype), what << " must be an integer tensor, got " << dtype_name(t.dtype));
  return t.to_int64();
}

HostTensor float_tensor(DType dtype, const Shape& shape, const std::vector<double>& values) {
  HostTensor t(dtype, shape);
  if (dtype == DType::F32) {
    for (size_t i = 0; i < values.size(); ++i) t.f32()[i] = to_f32(values[i]);
  } else if (dtype == DType::F64) {
    if (!values.empty()) std::memcpy(t.bytes.data(), values.data(), values.size() * 8);
  } else {
    CAMRT_FAIL("folding does not produce " << dtype_name(dtype) << " tensors");
  }
  return t;
}

HostTensor int_tensor(DType dtype, const Shape& shape, const std::vector<int64_t>& values) {
  HostTensor t(dtype, shape);
  uint8_t* p = t.bytes.data();
  for (size_t i = 0; i < values.size(); ++i) {
    switch (dtype) {
      case DType::I64: std::memcpy(p + 8 * i, &values[i], 8); break;
      case DType::I32: {
        const int32_t v = static_cast<int32_t>(static_cast<uint32_t>(values[i]));
        std::memcpy(p + 4 * i, &v, 4);
        break;
      }
      case DType::I8:
      case DType::U8: p[i] = static_cast<uint8_t>(values[i]); break;
      case DType::Bool: p[i] = values[i] != 0; break;
      default: CAMRT_FAIL("folding does not produce " << dtype_name(dtype) << " tensors");
    }
  }
  return t;
}

HostTensor with_shape(const HostTensor& t, const Shape& shape) {
  CAMRT_CHECK(numel_of(shape, "reshape") == t.numel(),
              "cannot reshape " << shape_str(t.shape) << " to " << shape_str(shape));
  HostTensor out;
  out.dtype = t.dtype;
  out.shape = shape;
  out.bytes = t.bytes;
  return out;
}

int64_t normalize_axis(int64_t axis, int64_t rank) {
  CAMRT_CHECK(axis >= -rank && axis < rank, "axis " << axis << " out of range for rank " << rank);
  return axis < 0 ? axis + rank : axis;
}

Shape broadcast_shape(const Shape& a, const Shape& b) {
  const size_t rank = std::max(a.size(), b.size());
  Shape out(rank);
  for (size_t k = 0; k < rank; ++k) {
    const int64_t da = k < a.size() ? a[a.size() - 1 - k] : 1;
    const int64_t db = k < b.size() ? b[b.size() - 1 - k] : 1;
    CAMRT_CHECK(da == db || da == 1 || db == 1,
                "shapes " << shape_str(a) << " and " << shape_str(b) << " do not broadcast");
    out[rank - 1 - k] = da == 1 ? db : da;
  }
  return out;
}

// Element strides of `in` seen through numpy broadcasting into a tensor of rank `rank` (0 where broadcast).
std::vector<int64_t> broadcast_strides(const Shape& in, size_t rank) {
  std::vector<int64_t> strides(rank, 0);
  int64_t stride = 1;
  for (size_t k = 0; k < in.size(); ++k) {
    const size_t i = in.size() - 1 - k;
    strides[rank - 1 - k] = in[i] == 1 ? 0 : stride;
    stride *= in[i];
  }
  return strides;
}

// Calls fn(out_index, a_index, b_index) for every element of `out`, walking an odometer.
template <typename Fn>
void for_each_broadcast(const Shape& out, const Shape& a, const Shape& b, Fn fn) {
  const size_t rank = out.size();
  const std::vector<int64_t> sa = broadcast_strides(a, rank), sb = broadcast_strides(b, rank);
  const int64_t n = checked_numel(out);
  std::vector<int64_t> idx(rank, 0);
  int64_t ia = 0, ib = 0;
  for (int64_t i = 0; i < n; ++i) {
    fn(i, ia, ib);
    for (size_t d = rank; d-- > 0;) {
      ++idx[d];
      ia += sa[d];
      ib += sb[d];
      if (idx[d] < out[d]) break;
      ia -= sa[d] * out[d];
      ib -= sb[d] * out[d];
      idx[d] = 0;
    }
  }
}

HostTensor binary(const std::string& op, const HostTensor& a, const HostTensor& b, int64_t cap) {
  CAMRT_CHECK(a.dtype == b.dtype, op << " of " << dtype_name(a.dtype) << " and " << dtype_name(b.dtype));
  const Shape out = broadcast_shape(a.shape, b.shape);
  check_fold_size(out, cap);
  const char code = op[0];  // Add, Sub, Mul, Div
  if (is_float_dtype(a.dtype)) {
    // Each op computed in double and rounded once equals the float32 result (53 >= 2 * 24 + 2 bits).
    const std::vector<double> va = float_values(a), vb = float_values(b);
    std::vector<double> r(static_cast<size_t>(checked_numel(out)));
    for_each_broadcast(out, a.shape, b.shape, [&](int64_t i, int64_t ia, int64_t ib) {
      const double x = va[ia], y = vb[ib];
      r[i] = code == 'A' ? x + y : code == 'S' ? x - y : code == 'M' ? x * y : x / y;
    });
    return float_tensor(a.dtype, out, r);
  }
  const std::vector<int64_t> va = a.to_int64(), vb = b.to_int64();
  std::vector<int64_t> r(static_cast<size_t>(checked_numel(out)));
  for_each_broadcast(out, a.shape, b.shape, [&](int64_t i, int64_t ia, int64_t ib) {
    const int64_t x = va[ia], y = vb[ib];
    int64_t z = 0;
    bool overflow = false;
    switch (code) {
      case 'A': overflow = __builtin_add_overflow(x, y, &z); break;
      case 'S': overflow = __builtin_sub_overflow(x, y, &z); break;
      case 'M': overflow = __builtin_mul_overflow(x, y, &z); break;
      default:
        CAMRT_CHECK(y != 0, "integer division by zero");
        overflow = x == std::numeric_limits<int64_t>::min() && y == -1;
        if (!overflow) z = x / y;  // truncation, as ONNX's reference Div does for integers
    }
    CAMRT_CHECK(!overflow, "integer overflow in " << op << "(" << x << ", " << y << ")");
    r[i] = z;
  });
  return int_tensor(a.dtype, out, r);
}

HostTensor gather(const HostTensor& data, const HostTensor& indices, int64_t axis, int64_t cap) {
  const int64_t rank = static_cast<int64_t>(data.shape.size());
  CAMRT_CHECK(rank >= 1, "Gather on a scalar");
  axis = normalize_axis(axis, rank);
  std::vector<int64_t> idx = int_values(indices, "Gather indices");
  const int64_t dim = data.shape[axis];
  for (int64_t& i : idx) {
    CAMRT_CHECK(i >= -dim && i < dim, "Gather index " << i << " out of range for axis of size " << dim);
    if (i < 0) i += dim;
  }
  Shape out(data.shape.begin(), data.shape.begin() + axis);
  out.insert(out.end(), indices.shape.begin(), indices.shape.end());
  out.insert(out.end(), data.shape.begin() + axis + 1, data.shape.end());
  check_fold_size(out, cap);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= data.shape[d];
  for (int64_t d = axis + 1; d < rank; ++d) inner *= data.shape[d];
  const size_t chunk = static_cast<size_t>(inner) * dtype_size(data.dtype);
  HostTensor result(data.dtype, out);
  uint8_t* dst = result.bytes.data();
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i : idx) {
      if (chunk) std::memcpy(dst, data.bytes.data() + (o * dim + i) * chunk, chunk);
      dst += chunk;
    }
  return result;
}

HostTensor concat(const std::vector<const HostTensor*>& inputs, int64_t axis, int64_t cap) {
  CAMRT_CHECK(!inputs.empty(), "Concat without inputs");
  const HostTensor& first = *inputs[0];
  const int64_t rank = static_cast<int64_t>(first.shape.size());
  CAMRT_CHECK(rank >= 1, "Concat of scalars");
  axis = normalize_axis(axis, rank);
  Shape out = first.shape;
  out[axis] = 0;
  for (const HostTensor* t : inputs) {
    CAMRT_CHECK(t->dtype == first.dtype, "Concat of " << dtype_name(first.dtype) << " and " << dtype_name(t->dtype));
    CAMRT_CHECK(static_cast<int64_t>(t->shape.size()) == rank,
                "Concat of shapes " << shape_str(first.shape) << " and " << shape_str(t->shape));
    for (int64_t d = 0; d < rank; ++d)
      CAMRT_CHECK(d == axis || t->shape[d] == first.shape[d],
                  "Concat of shapes " << shape_str(first.shape) << " and " << shape_str(t->shape));
    out[axis] += t->shape[axis];
  }
  check_fold_size(out, cap);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= out[d];
  for (int64_t d = axis + 1; d < rank; ++d) inner *= out[d];
  const size_t elem = dtype_size(first.dtype);
  HostTensor result(first.dtype, out);
  uint8_t* dst = result.bytes.data();
  for (int64_t o = 0; o < outer; ++o)
    for (const HostTensor* t : inputs) {
      const size_t chunk = static_cast<size_t>(t->shape[axis] * inner) * elem;
      if (chunk) std::memcpy(dst, t->bytes.data() + o * chunk, chunk);
      dst += chunk;
    }
  return result;
}

// ONNX Reshape target: 0 copies the input dim (unless allowzero), one -1 is inferred.
Shape reshape_target(const Shape& in, const std::vector<int64_t>& spec, bool allowzero) {
  Shape out(spec.size());
  int64_t infer_at = -1;
  for (size_t i = 0; i < spec.size(); ++i) {
    int64_t v = spec[i];
    if (v == 0 && !allowzero) {
      CAMRT_CHECK(i < in.size(), "Reshape: 0 at index " << i << " but the input has rank " << in.size());
      v = in[i];
    } else if (v == -1) {
      CAMRT_CHECK(infer_at < 0, "Reshape: more than one -1 in " << shape_str(spec));
      infer_at = static_cast<int64_t>(i);
      v = 1;
    }
    CAMRT_CHECK(v >= 0, "Reshape: invalid dimension " << spec[i]);
    out[i] = v;
  }
  const int64_t total = numel_of(in, "Reshape input");
  const int64_t known = numel_of(out, "Reshape target");
  if (infer_at >= 0) {
    CAMRT_CHECK(known > 0 && total % known == 0,
                "Reshape: cannot reshape " << shape_str(in) << " to " << shape_str(spec));
    out[infer_at] = total / known;
  }
  CAMRT_CHECK(numel_of(out, "Reshape target") == total,
              "Reshape: cannot reshape " << shape_str(in) << " to " << shape_str(spec));
  return out;
}

Shape unsqueeze_shape(const Shape& in, const std::vector<int64_t>& axes) {
  const int64_t rank = static_cast<int64_t>(in.size() + axes.size());
  CAMRT_CHECK(rank <= limits::kMaxRank, "Unsqueeze to rank " << rank << " (at most " << limits::kMaxRank << ")");
  std::vector<bool> inserted(static_cast<size_t>(rank), false);
  for (int64_t a : axes) {
    const int64_t axis = normalize_axis(a, rank);
    CAMRT_CHECK(!inserted[axis], "Unsqueeze: axis " << a << " repeated");
    inserted[axis] = true;
  }
  Shape out;
  size_t next = 0;
  for (int64_t d = 0; d < rank; ++d) out.push_back(inserted[d] ? 1 : in[next++]);
  return out;
}

Shape squeeze_shape(const Shape& in, const std::vector<int64_t>& axes) {
  const int64_t rank = static_cast<int64_t>(in.size());
  std::vector<bool> removed(in.size(), false);
  if (axes.empty()) {
    for (size_t d = 0; d < in.size(); ++d) removed[d] = in[d] == 1;
  }
  for (int64_t a : axes) {
    const int64_t axis = normalize_axis(a, rank);
    CAMRT_CHECK(in[axis] == 1, "Squeeze: dimension " << a << " of " << shape_str(in) << " is not 1");
    removed[axis] = true;
  }
  Shape out;
  for (size_t d = 0; d < in.size(); ++d)
    if (!removed[d]) out.push_back(in[d]);
  return out;
}

// Copies the strided sub-tensor start[d] + i * step[d], i < count[d].
HostTensor strided_copy(const HostTensor& t, const std::vector<int64_t>& start, const std::vector<int64_t>& step,
                        const Shape& count, int64_t cap) {
  check_fold_size(count, cap);
  HostTensor out(t.dtype, count);
  const size_t rank = count.size(), elem = dtype_size(t.dtype);
  std::vector<int64_t> suffix(rank + 1, 1);  // suffix[d]: elements in dims d.. ; dim d's stride is suffix[d + 1]
  for (size_t d = rank; d-- > 0;) suffix[d] = suffix[d + 1] * t.shape[d];
  const int64_t n = out.numel();
  std::vector<int64_t> idx(rank, 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t offset = 0;
    for (size_t d = 0; d < rank; ++d) offset += (start[d] + idx[d] * step[d]) * suffix[d + 1];
    std::memcpy(out.bytes.data() + i * elem, t.bytes.data() + offset * elem, elem);
    for (size_t d = rank; d-- > 0;) {
      if (++idx[d] < count[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

HostTensor slice(const HostTensor& data, const std::vector<int64_t>& starts, const std::vector<int64_t>& ends,
                 std::vector<int64_t> axes, std::vector<int64_t> steps, int64_t cap) {
  const int64_t rank = static_cast<int64_t>(data.shape.size());
  CAMRT_CHECK(starts.size() == ends.size(), "Slice: " << starts.size() << " starts but " << ends.size() << " ends");
  if (axes.empty())
    for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
  if (steps.empty()) steps.assign(starts.size(), 1);
  CAMRT_CHECK(axes.size() == starts.size() && steps.size() == starts.size(),
              "Slice: starts, ends, axes and steps differ in length");
  std::vector<int64_t> start(static_cast<size_t>(rank), 0), step(static_cast<size_t>(rank), 1);
  Shape count = data.shape;
  std::vector<bool> seen(static_cast<size_t>(rank), false);
  for (size_t k = 0; k < starts.size(); ++k) {
    const int64_t axis = normalize_axis(axes[k], rank);
    CAMRT_CHECK(!seen[axis], "Slice: axis " << axes[k] << " repeated");
    seen[axis] = true;
    const int64_t dim = data.shape[axis], p = steps[k];
    CAMRT_CHECK(p != 0 && p != std::numeric_limits<int64_t>::min(), "Slice: invalid step " << p);
    int64_t s = starts[k], e = ends[k];
    if (s < 0) s += dim;  // s < 0 and dim >= 0: cannot overflow
    if (e < 0) e += dim;
    int64_t n = 0;
    if (p > 0) {
      s = std::clamp<int64_t>(s, 0, dim);
      e = std::clamp<int64_t>(e, 0, dim);
      n = e > s ? (e - s - 1) / p + 1 : 0;
    } else if (dim > 0) {
      s = std::clamp<int64_t>(s, 0, dim - 1);
      e = std::clamp<int64_t>(e, -1, dim - 1);
      n = s > e ? (s - e - 1) / (-p) + 1 : 0;
    }
    start[axis] = s;
    step[axis] = p;
    count[axis] = n;
  }
  return strided_copy(data, start, step, count, cap);
}

HostTensor cast(const HostTensor& t, DType to) {
  if (t.dtype == to) return t;
  const Shape& shape = t.shape;
  if (is_float_dtype(to)) return float_tensor(to, shape, float_values(t));
  std::vector<int64_t> values;
  if (is_float_dtype(t.dtype)) {
    for (double v : float_values(t)) {
      if (to == DType::Bool) {
        values.push_back(v != 0.0);
        continue;
      }
      // Out-of-range float -> int is undefined in C++ and unspecified in ONNX: refuse it.
      CAMRT_CHECK(std::isfinite(v) && v >= -9223372036854775808.0 && v < 9223372036854775808.0,
                  "Cast of " << v << " to " << dtype_name(to));
      values.push_back(static_cast<int64_t>(v));
    }
  } else {
    values = t.to_int64();
  }
  return int_tensor(to, shape, values);
}

HostTensor range(const HostTensor& start, const HostTensor& limit, const HostTensor& delta, int64_t cap) {
  CAMRT_CHECK(start.numel() == 1 && limit.numel() == 1 && delta.numel() == 1, "Range inputs must be scalars");
  CAMRT_CHECK(start.dtype == limit.dtype && start.dtype == delta.dtype, "Range inputs differ in dtype");
  // Before computing anything: folding produces these dtypes only.
  CAMRT_CHECK(start.dtype == DType::F32 || start.dtype == DType::F64 || start.dtype == DType::I64 ||
                  start.dtype == DType::I32,
              "Range of " << dtype_name(start.dtype) << " is not supported");
  if (is_float_dtype(start.dtype)) {
    const double s = float_values(start)[0], l = float_values(limit)[0], d = float_values(delta)[0];
    CAMRT_CHECK(d != 0.0 && std::isfinite(s) && std::isfinite(l) && std::isfinite(d),
                "Range(" << s << ", " << l << ", " << d << ")");
    const double n = std::max(std::ceil((l - s) / d), 0.0);
    CAMRT_CHECK(n <= static_cast<double>(cap), "Range of " << n << " elements is too large to fold");
    std::vector<double> values(static_cast<size_t>(n));
    for (size_t i = 0; i < values.size(); ++i) values[i] = s + static_cast<double>(i) * d;
    return float_tensor(start.dtype, {static_cast<int64_t>(values.size())}, values);
  }
  const int64_t s = start.to_int64()[0], l = limit.to_int64()[0], d = delta.to_int64()[0];
  CAMRT_CHECK(d != 0, "Range with delta 0");
  // Count in double first: it cannot overflow, and anything near the cap is refused anyway.
  const double span = static_cast<double>(l) - static_cast<double>(s);
  const double n_estimate = std::max(std::ceil(span / static_cast<double>(d)), 0.0);
  CAMRT_CHECK(n_estimate <= static_cast<double>(cap),
              "Range of " << n_estimate << " elements is too large to fold");
  std::vector<int64_t> values;
  for (int64_t v = s; d > 0 ? v < l : v > l;) {
    values.push_back(v);
    if (__builtin_add_overflow(v, d, &v)) break;
  }
  return int_tensor(start.dtype, {static_cast<int64_t>(values.size())}, values);
}

bool same_tensor(const HostTensor& a, const HostTensor& b) {
  return a.dtype == b.dtype && a.shape == b.shape && a.bytes == b.bytes;
}

// ---------------------------------------------------------------------------------------------
// The importer proper

// What the walk knows about one tensor in one of the two evaluations.
struct WalkValue {
  bool known = false;  // dtype and shape known
  DType dtype = DType::F32;
  Shape shape;
  // Weights, bound inputs and folded results. One pointer per tensor name (the two evaluations may share
  // it), so assemble() can move the data into the Model instead of copying it.
  std::shared_ptr<HostTensor> constant;
  std::string reason;                          // why unknown
  bool after_unsupported = false;              // unknown because an unsupported node computes it
};

enum class State { Kept, Folded, Unsupported, NotFolded, Merged, Dead };

struct WorkNode {
  Node node;
  const OnnxNode* onnx = nullptr;
  size_t file_index = 0;
  State state = State::Kept;
  std::string reason;             // NotFolded: why
  bool after_unsupported = false;  // NotFolded only because an upstream node is unsupported
  std::vector<std::string> unconvertible_attrs;
};

// Ops the importer can evaluate on constants. Those not in the runtime registry must fold or the model
// cannot be imported; the others fold when all their inputs are constant.
const std::set<std::string>& foldable_ops() {
  static const std::set<std::string> ops = {"Add", "Cast", "Concat", "ConstantOfShape", "Div", "Dropout",
                                            "Flatten", "Gather", "Identity", "Mul", "Range", "Reshape",
                                            "Shape", "Size", "Slice", "Squeeze", "Sub", "Unsqueeze"};
  return ops;
}

// The two evaluations: dynamic input dims taken as 1 (the primary, per the spec of the walk) and as 2.
constexpr int64_t kDynamicDimValue[2] = {1, 2};

class Importer {
 public:
  // Takes the initializers out of onnx (moved, not copied: weights can be most of the memory).
  // file_bytes: the size of the .onnx file, which scales the folding limits (see kMaxFoldElements).
  Importer(OnnxModel& onnx, const std::string& source, const OnnxImportOptions& options, size_t file_bytes)
      : onnx_(onnx),
        source_(source),
        options_(options),
        fold_cap_(std::clamp<int64_t>(static_cast<int64_t>(std::min<size_t>(file_bytes, size_t(1) << 40)), kMinFoldCap,
                                      kMaxFoldElements)),
        fold_budget_(kMinFoldWork + 2 * static_cast<int64_t>(std::min<size_t>(file_bytes, size_t(1) << 40))) {}

  Model run() {
    find_opset();
    add_graph_values();
    sort_nodes();
    for (WorkNode& wn : nodes_) walk_node(wn);
    remove_dead_nodes();  // first, so that dead readers do not block a fold
    fold_batchnorms();
    report_problems();
    return assemble();
  }

 private:
  std::string label(const Node& node) const { return "node '" + node.name + "' (" + node.op + ")"; }
  std::string where(const Node& node) const { return source_ + ": " + label(node); }

  const WalkValue* lookup(int world, const std::string& name) const {
    // The shadow evaluation falls back to the primary where it has nothing (e.g. it failed there).
    if (world == 1) {
      const auto it = worlds_[1].find(name);
      if (it != worlds_[1].end() && it->second.known) return &it->second;
    }
    const auto it = worlds_[0].find(name);
    return it == worlds_[0].end() ? nullptr : &it->second;
  }
  const HostTensor* constant(const std::string& name) const {
    if (name.empty()) return nullptr;
    const WalkValue* v = lookup(0, name);
    return v && v->constant ? v->constant.get() : nullptr;
  }
  void set_constant(int world, const std::string& name, std::shared_ptr<HostTensor> t) {
    WalkValue v;
    v.known = true;
    v.dtype = t->dtype;
    v.shape = t->shape;
    v.constant = std::move(t);
    worlds_[world][name] = std::move(v);
  }
  void set_constant_both(const std::string& name, HostTensor t) {
    auto shared = std::make_shared<HostTensor>(std::move(t));
    set_constant(0, name, shared);
    set_constant(1, name, shared);
  }
  void mark_unknown(const WorkNode& wn, const std::string& reason, bool after_unsupported) {
    for (const std::string& out : wn.node.outputs) {
      if (out.empty()) continue;
      WalkValue v;
      v.reason = reason;
      v.after_unsupported = after_unsupported;
      worlds_[0][out] = v;
      worlds_[1].erase(out);
    }
  }
  std::string unique_tensor_name(const std::string& base) {
    std::string name = base;
    for (int k = 1; tensor_names_.count(name); ++k) name = base + "_" + std::to_string(k);
    tensor_names_.insert(name);
    return name;
  }
  void note(const std::string& text) {
    // A handful is enough to point at the cause; the rest would only repeat it.
    if (notes_.size() < 20) notes_.push_back(text);
  }

  void find_opset() {
    bool found = false;
    for (const auto& [domain, version] : onnx_.opsets)
      if (domain.empty() || domain == "ai.onnx") {
        opset_ = version;
        found = true;
      }
    CAMRT_CHECK(found, source_ << ": the model declares no opset for the default ONNX domain");
    CAMRT_CHECK(opset_ >= 1 && opset_ < 1000, source_ << ": invalid opset version " << opset_);
  }

  void add_graph_values() {
    OnnxGraph& g = onnx_.graph;
    CAMRT_CHECK(!g.has_sparse_initializers, source_ << ": sparse initializers are not supported");
    for (auto& [name, tensor] : g.initializers) {
      CAMRT_CHECK(valid_utf8(name), source_ << ": an initializer name is not valid UTF-8");
      CAMRT_CHECK(!name.empty(), source_ << ": an initializer has no name");
      CAMRT_CHECK(tensor_names_.insert(name).second, source_ << ": initializer '" << name << "' is defined twice");
      set_constant_both(name, std::move(tensor));
    }
    std::set<std::string> inputs;
    for (const OnnxValueInfo& vi : g.inputs) {
      CAMRT_CHECK(valid_utf8(vi.name), source_ << ": a graph input name is not valid UTF-8");
      CAMRT_CHECK(!vi.name.empty(), source_ << ": a graph input has no name");
      if (constant(vi.name)) continue;  // old exporters list initializers as inputs: they are weights
      CAMRT_CHECK(inputs.insert(vi.name).second, source_ << ": graph input '" << vi.name << "' is listed twice");
      tensor_names_.insert(vi.name);
      const std::string what = source_ + ": graph input '" + vi.name + "'";
      DType dtype = DType::F32;
      const bool dtype_ok = vi.is_tensor && dtype_from_onnx(vi.elem_type, &dtype);
      const auto bound = options_.bind_inputs.find(vi.name);
      if (bound != options_.bind_inputs.end()) {
        const HostTensor& t = bound->second;
        if (dtype_ok)
          CAMRT_CHECK(t.dtype == dtype, what << " is " << dtype_name(dtype) << " but the bound tensor is "
                                             << dtype_name(t.dtype));
        if (vi.has_shape) {
          bool match = vi.dims.size() == t.shape.size();
          for (size_t d = 0; match && d < vi.dims.size(); ++d) match = vi.dims[d] < 0 || vi.dims[d] == t.shape[d];
          CAMRT_CHECK(match, what << " has shape " << shape_str(vi.dims) << " but the bound tensor has "
                                  << shape_str(t.shape));
        }
        set_constant_both(vi.name, t);
        continue;
      }
      CAMRT_CHECK(vi.is_tensor, what << " is not a tensor");
      CAMRT_CHECK(dtype_ok, what << " has element type " << onnx_type_name(vi.elem_type)
                                 << ", which camrt does not support");
      CAMRT_CHECK(vi.has_shape, what << " has no shape; camrt needs at least its rank (export with a fixed input "
                                        "shape, dynamic_axes for the batch)");
      check_file_dims(vi.dims, what);
      model_inputs_.push_back(ValueInfo{vi.name, dtype, vi.dims});
      for (int w = 0; w < 2; ++w) {
        WalkValue v;
        v.known = true;
        v.dtype = dtype;
        v.shape = vi.dims;
        for (int64_t& d : v.shape)
          if (d < 0) d = kDynamicDimValue[w];
        worlds_[w][vi.name] = v;
      }
    }
    for (const auto& [name, tensor] : options_.bind_inputs) {
      (void)tensor;
      CAMRT_CHECK(inputs.count(name), source_ << ": bind_inputs names '" << name << "', which is not a graph input");
    }
    for (const OnnxValueInfo& vi : g.value_info) value_info_[vi.name] = &vi;
    for (const OnnxValueInfo& vi : g.outputs) {
      CAMRT_CHECK(valid_utf8(vi.name) && !vi.name.empty(), source_ << ": a graph output has no valid name");
      value_info_[vi.name] = &vi;
    }
  }

  json convert_attributes(const OnnxNode& onnx, const std::string& what, std::vector<std::string>* unconvertible) {
    json attrs = json::object();
    for (const OnnxAttribute& a : onnx.attributes) {
      const std::string attr_what = what + ": attribute '" + a.name + "'";
      CAMRT_CHECK(valid_utf8(a.name) && !a.name.empty(), what << ": an attribute has no valid name");
      switch (a.type) {
        case kAttrFloat: attrs[a.name] = float_json(a.f, attr_what); break;
        case kAttrInt: attrs[a.name] = a.i; break;
        case kAttrString:
          CAMRT_CHECK(valid_utf8(a.s), attr_what << " is not valid UTF-8");
          attrs[a.name] = a.s;
          break;
        case kAttrFloats: {
          json list = json::array();
          for (float v : a.floats) list.push_back(float_json(v, attr_what));
          attrs[a.name] = list;
          break;
        }
        case kAttrInts: attrs[a.name] = a.ints; break;
        case kAttrStrings:
          for (const std::string& s : a.strings) CAMRT_CHECK(valid_utf8(s), attr_what << " is not valid UTF-8");
          attrs[a.name] = a.strings;
          break;
        default:
          // TENSOR (Constant, ConstantOfShape read it from the OnnxNode), GRAPH and the like.
          unconvertible->push_back(a.name + " (" + attr_type_name(a.type) + ")");
      }
    }
    return attrs;
  }

  // Converts the nodes and orders them topologically (stable: file order where the file allows it).
  void sort_nodes() {
    const OnnxGraph& g = onnx_.graph;
    const size_t n = g.nodes.size();
    std::vector<WorkNode> work(n);
    std::set<std::string> node_names;
    for (size_t i = 0; i < n; ++i)
      if (!g.nodes[i].name.empty()) node_names.insert(g.nodes[i].name);
    std::set<std::string> used_names;
    std::unordered_map<std::string, size_t> producer;
    for (size_t i = 0; i < n; ++i) {
      const OnnxNode& o = g.nodes[i];
      WorkNode& wn = work[i];
      wn.onnx = &o;
      wn.file_index = i;
      const std::string index_what = source_ + ": node #" + std::to_string(i);
      CAMRT_CHECK(valid_utf8(o.name) && valid_utf8(o.op_type) && valid_utf8(o.domain),
                  index_what << ": name, op type or domain is not valid UTF-8");
      CAMRT_CHECK(!o.op_type.empty(), index_what << " ('" << o.name << "') has no op type");
      std::string name = o.name.empty() ? o.op_type + "_" + std::to_string(i) : o.name;
      if (used_names.count(name) || (o.name.empty() && node_names.count(name))) {
        const std::string base = name;
        for (int k = 1; used_names.count(name) || node_names.count(name); ++k) name = base + "_" + std::to_string(k);
        if (!o.name.empty()) note("node name '" + base + "' appears twice; the second is renamed '" + name + "'");
      }
      used_names.insert(name);
      wn.node.name = name;
      wn.node.op = o.domain.empty() || o.domain == "ai.onnx" ? o.op_type : o.domain + ":" + o.op_type;
      wn.node.inputs = o.inputs;
      wn.node.outputs = o.outputs;
      const std::string what = source_ + ": " + label(wn.node);
      for (const std::string& t : o.inputs) CAMRT_CHECK(valid_utf8(t), what << ": an input name is not valid UTF-8");
      for (const std::string& t : o.outputs) {
        CAMRT_CHECK(valid_utf8(t), what << ": an output name is not valid UTF-8");
        if (t.empty()) continue;
        CAMRT_CHECK(!tensor_names_.count(t),
                    what << ": output '" << t << "' is already a graph input, initializer or another node's output");
        tensor_names_.insert(t);
        producer[t] = i;
      }
      wn.node.attrs = convert_attributes(o, what, &wn.unconvertible_attrs);
      // Ops whose meaning changed between opsets (Softmax's axis, ...) read this.
      wn.node.attrs["onnx_opset"] = opset_;
    }
    node_names_ = used_names;
    for (size_t i = 0; i < n; ++i)
      for (const std::string& t : work[i].node.inputs) ++readers_[t];
    for (const OnnxValueInfo& vi : g.outputs) ++readers_[vi.name];

    // Kahn's algorithm, always taking the ready node that comes first in the file.
    std::vector<std::vector<size_t>> consumers(n);
    std::vector<size_t> pending(n, 0);
    for (size_t i = 0; i < n; ++i)
      for (const std::string& t : work[i].node.inputs) {
        if (t.empty()) continue;
        const auto p = producer.find(t);
        if (p != producer.end()) {
          consumers[p->second].push_back(i);
          ++pending[i];
        } else {
          CAMRT_CHECK(worlds_[0].count(t), where(work[i].node)
                                               << ": input '" << t
                                               << "' is not produced by any node, initializer or graph input");
        }
      }
    for (const OnnxValueInfo& vi : g.outputs)
      CAMRT_CHECK(producer.count(vi.name) || worlds_[0].count(vi.name),
                  source_ << ": graph output '" << vi.name << "' is not produced by any node");
    std::priority_queue<size_t, std::vector<size_t>, std::greater<size_t>> ready;
    for (size_t i = 0; i < n; ++i)
      if (!pending[i]) ready.push(i);
    std::vector<size_t> order;
    while (!ready.empty()) {
      const size_t i = ready.top();
      ready.pop();
      order.push_back(i);
      for (size_t c : consumers[i])
        if (--pending[c] == 0) ready.push(c);
    }
    if (order.size() != n) {
      for (size_t i = 0; i < n; ++i)
        if (pending[i]) CAMRT_FAIL(where(work[i].node) << ": the graph has a cycle through this node");
    }
    nodes_.reserve(n);
    for (size_t i : order) nodes_.push_back(std::move(work[i]));
  }

  HostTensor constant_node_value(const WorkNode& wn) const {
    const std::string what = where(wn.node);
    for (const OnnxAttribute& a : wn.onnx->attributes) {
      if (a.name == "value") {
        CAMRT_CHECK(a.t.has_value(), what << ": attribute 'value' is not a tensor");
        return decode_tensor(*a.t, nullptr, label(wn.node) + ", attribute 'value'");
      }
      if (a.name == "value_float") return make_f32({}, {a.f});
      if (a.name == "value_floats") return make_f32({static_cast<int64_t>(a.floats.size())}, a.floats);
      if (a.name == "value_int") return make_i64({}, {a.i});
      if (a.name == "value_ints") return make_i64({static_cast<int64_t>(a.ints.size())}, a.ints);
      if (a.name == "value_string" || a.name == "value_strings" || a.name == "sparse_value")
        CAMRT_FAIL(what << ": " << a.name << " constants are not supported");
    }
    CAMRT_FAIL(what << ": no value attribute");
  }

  void walk_node(WorkNode& wn) {
    Node& node = wn.node;
    if (node.op.find(':') != std::string::npos) {  // a custom domain
      wn.state = State::Unsupported;
      mark_unknown(wn, "computed by unsupported " + label(node), true);
      return;
    }
    while (!node.inputs.empty() && node.inputs.back().empty()) node.inputs.pop_back();
    if (node.op == "Constant") {
      CAMRT_CHECK(node.outputs.size() == 1 && !node.outputs[0].empty(), where(node) << ": expected one output");
      set_constant_both(node.outputs[0], constant_node_value(wn));
      wn.state = State::Folded;
      return;
    }
    const bool runtime = find_op(node.op) != nullptr;
    if (foldable_ops().count(node.op)) {
      std::string why_not;
      bool after_unsupported = false;
      if (fold_ready(wn, &why_not, &after_unsupported)) {
        try {
          fold(wn);
          wn.state = State::Folded;
          return;
        } catch (const Error& e) {
          why_not = e.what();
        }
      }
      if (!runtime) {
        wn.state = State::NotFolded;
        wn.reason = why_not;
        wn.after_unsupported = after_unsupported;
        mark_unknown(wn, "computed by " + label(node) + ", which could not be folded", true);
        return;
      }
    } else if (!runtime) {
      wn.state = State::Unsupported;
      mark_unknown(wn, "computed by unsupported " + label(node), true);
      return;
    }
    normalize(wn);
    infer(wn);
  }

  // True if every input fold needs is known: constants, or for Shape/Size only the input's shape.
  bool fold_ready(const WorkNode& wn, std::string* why_not, bool* after_unsupported) const {
    const Node& node = wn.node;
    const bool shape_only = node.op == "Shape" || node.op == "Size";
    for (size_t i = 0; i < node.inputs.size(); ++i) {
      const std::string& name = node.inputs[i];
      if (name.empty()) continue;
      const WalkValue* v = lookup(0, name);
      const bool ok = v && v->known && (shape_only || v->constant);
      if (!ok) {
        if (v && !v->known) {
          *why_not = "input '" + name + "' has an unknown shape (" + v->reason + ")";
          *after_unsupported = v->after_unsupported;
        } else {
          *why_not = "input '" + name + "' is not a constant";
        }
        return false;
      }
      if (shape_only) break;
    }
    if (shape_only && node.inputs.empty()) {
      *why_not = "no input";
      return false;
    }
    if (node.op == "Dropout")
      for (size_t k = 1; k < node.outputs.size(); ++k)
        if (!node.outputs[k].empty() && readers_.count(node.outputs[k]) && readers_.at(node.outputs[k])) {
          *why_not = "its mask output is used";
          return false;
        }
    return true;
  }

  // True if the shadow evaluation sees different inputs than the primary one (so may differ).
  bool shadow_differs(const Node& node) const {
    const bool shape_only = node.op == "Shape" || node.op == "Size";
    for (const std::string& name : node.inputs) {
      if (name.empty()) continue;
      const WalkValue* v0 = lookup(0, name);
      const WalkValue* v1 = lookup(1, name);
      if (shape_only) return v0->shape != v1->shape;
      if (v0->constant != v1->constant && !same_tensor(*v0->constant, *v1->constant)) return true;
    }
    return false;
  }

  // Runs evaluate() against the import's folding budget: the inputs it reads are charged before, what it
  // produced after, and a failed evaluation the per-result cap (what it may have computed first).
  std::vector<HostTensor> budgeted_evaluate(const WorkNode& wn, int world) {
    for (const std::string& name : wn.node.inputs) {
      const WalkValue* v = name.empty() ? nullptr : lookup(world, name);
      if (v && v->constant) fold_work_ += v->constant->numel();
    }
    CAMRT_CHECK(fold_work_ <= fold_budget_,
                "constant folding exceeds its budget of " << fold_budget_ << " elements for the whole model");
    std::vector<HostTensor> results;
    try {
      results = evaluate(wn, world);
    } catch (const Error&) {
      fold_work_ += fold_cap_;
      throw;
    }
    for (const HostTensor& t : results) fold_work_ += t.numel();
    CAMRT_CHECK(fold_work_ <= fold_budget_,
                "constant folding exceeds its budget of " << fold_budget_ << " elements for the whole model");
    return results;
  }

  void fold(const WorkNode& wn) {
    const Node& node = wn.node;
    std::vector<HostTensor> primary = budgeted_evaluate(wn, 0);
    CAMRT_CHECK(primary.size() <= node.outputs.size(), "expected " << primary.size() << " outputs");
    std::vector<HostTensor> shadow;
    const bool differs = shadow_differs(node);
    if (differs) {
      try {
        shadow = budgeted_evaluate(wn, 1);
      } catch (const Error& e) {
        note("dynamic batch: " + label(node) + " could not be evaluated with batch 2 (" + e.what() +
             "); values after it are treated as independent of the batch");
      }
    }
    for (size_t k = 0; k < primary.size(); ++k) {
      const std::string& name = node.outputs[k];
      if (name.empty()) continue;
      auto value = std::make_shared<HostTensor>(std::move(primary[k]));
      set_constant(0, name, value);
      if (!differs)
        set_constant(1, name, value);  // same inputs, same result: share it
      else if (k < shadow.size())
        set_constant(1, name, std::make_shared<HostTensor>(std::move(shadow[k])));
      else
        worlds_[1].erase(name);
    }
  }

  // Evaluates a foldable op in one world; throws Error (without the node's name) if it cannot.
  std::vector<HostTensor> evaluate(const WorkNode& wn, int world) const {
    const Node& node = wn.node;
    const std::string& op = node.op;
    const json& attrs = node.attrs;
    auto present = [&](size_t i) { return i < node.inputs.size() && !node.inputs[i].empty(); };
    auto value = [&](size_t i) -> const WalkValue& {
      CAMRT_CHECK(present(i), "input " << i << " is missing");
      const WalkValue* v = lookup(world, node.inputs[i]);
      CAMRT_CHECK(v && v->known, "input '" << node.inputs[i] << "' is unknown");
      return *v;
    };
    auto input = [&](size_t i) -> const HostTensor& {
      const WalkValue& v = value(i);
      CAMRT_CHECK(v.constant, "input '" << node.inputs[i] << "' is not a constant");
      return *v.constant;
    };
    if (op == "Shape") {
      const Shape& shape = value(0).shape;
      const int64_t rank = static_cast<int64_t>(shape.size());
      int64_t start = json_int(attrs, "start", 0), end = json_int(attrs, "end", rank);
      if (start < 0) start += rank;
      if (end < 0) end += rank;
      start = std::clamp<int64_t>(start, 0, rank);
      end = std::clamp<int64_t>(end, 0, rank);
      const std::vector<int64_t> dims(shape.begin() + start, shape.begin() + std::max(start, end));
      return {make_i64({static_cast<int64_t>(dims.size())}, dims)};
    }
    if (op == "Size") return {make_i64({}, {numel_of(value(0).shape, "Size")})};
    if (op == "Identity" || op == "Dropout") return {input(0)};
    if (op == "Cast") {
      DType to;
      const int64_t code = json_int(attrs, "to", 0);
      CAMRT_CHECK(code >= 0 && code < 100 && dtype_from_onnx(static_cast<int32_t>(code), &to),
                  "Cast to " << onnx_type_name(static_cast<int32_t>(code)) << " is not supported");
      return {cast(input(0), to)};
    }
    if (op == "Gather") return {gather(input(0), input(1), json_int(attrs, "axis", 0), fold_cap_)};
    if (op == "Concat") {
      CAMRT_CHECK(attrs.contains("axis"), "Concat without an axis");
      std::vector<const HostTensor*> inputs;
      for (size_t i = 0; i < node.inputs.size(); ++i)
        if (present(i)) inputs.push_back(&input(i));
      return {concat(inputs, json_int(attrs, "axis", 0), fold_cap_)};
    }
    if (op == "Unsqueeze" || op == "Squeeze") {
      const std::vector<int64_t> axes = present(1) ? int_values(input(1), "axes") : json_ints(attrs, "axes");
      const HostTensor& x = input(0);
      return {with_shape(x, op == "Unsqueeze" ? unsqueeze_shape(x.shape, axes) : squeeze_shape(x.shape, axes))};
    }
    if (op == "Reshape") {
      const HostTensor& x = input(0);
      const bool allowzero = json_int(attrs, "allowzero", 0) != 0;
      return {with_shape(x, reshape_target(x.shape, int_values(input(1), "Reshape shape"), allowzero))};
    }
    if (op == "Flatten") {
      const HostTensor& x = input(0);
      const int64_t rank = static_cast<int64_t>(x.shape.size());
      int64_t axis = json_int(attrs, "axis", 1);
      CAMRT_CHECK(axis >= -rank && axis <= rank, "Flatten axis " << axis << " out of range for rank " << rank);
      if (axis < 0) axis += rank;
      int64_t outer = 1, inner = 1;
      for (int64_t d = 0; d < rank; ++d) (d < axis ? outer : inner) *= x.shape[d];
      return {with_shape(x, {outer, inner})};
    }
    if (op == "Slice") {
      if (opset_ < 10)
        return {slice(input(0), json_ints(attrs, "starts"), json_ints(attrs, "ends"), json_ints(attrs, "axes"), {}, fold_cap_)};
      return {slice(input(0), int_values(input(1), "starts"), int_values(input(2), "ends"),
                    present(3) ? int_values(input(3), "axes") : std::vector<int64_t>{},
                    present(4) ? int_values(input(4), "steps") : std::vector<int64_t>{}, fold_cap_)};
    }
    if (op == "Add" || op == "Sub" || op == "Mul" || op == "Div") {
      // Opset < 7 had an explicit broadcast/axis form with other semantics; leave those to the runtime.
      CAMRT_CHECK(!attrs.contains("axis") && !attrs.contains("broadcast"), "legacy broadcast attributes");
      return {binary(op, input(0), input(1), fold_cap_)};
    }
    if (op == "ConstantOfShape") {
      const HostTensor& shape_tensor = input(0);
      const std::vector<int64_t> dims = int_values(shape_tensor, "ConstantOfShape shape");
      const Shape shape(dims.begin(), dims.end());
      check_fold_size(shape, fold_cap_);
      HostTensor fill = make_f32({1}, {0.f});
      for (const OnnxAttribute& a : wn.onnx->attributes)
        if (a.name == "value") {
          CAMRT_CHECK(a.t.has_value(), "attribute 'value' is not a tensor");
          fill = decode_tensor(*a.t, nullptr, label(node) + ", attribute 'value'");
        }
      CAMRT_CHECK(fill.numel() == 1, "ConstantOfShape value must have one element");
      HostTensor out(fill.dtype, shape);
      const size_t elem = dtype_size(fill.dtype);
      for (int64_t i = 0; i < out.numel(); ++i) std::memcpy(out.bytes.data() + i * elem, fill.bytes.data(), elem);
      return {out};
    }
    if (op == "Range") return {range(input(0), input(1), input(2), fold_cap_)};
    CAMRT_FAIL("no folding rule for " << op);
  }

  // Records a problem if a constant input differs between the two evaluations, i.e. was computed from
  // the batch size: as a weight it would freeze one batch size into the model.
  bool check_batch_independent(const Node& node, const std::string& name) {
    const WalkValue* v0 = lookup(0, name);
    const WalkValue* v1 = lookup(1, name);
    if (!v0 || !v0->constant || !v1 || !v1->constant || same_tensor(*v0->constant, *v1->constant)) return true;
    batch_problems_.push_back(label(node) + " reads '" + name +
                              "', a constant computed from the dynamic batch size");
    return false;
  }

  // Brings a runtime node into the one form camrt's ops expect.
  void normalize(WorkNode& wn) {
    Node& node = wn.node;
    const std::string& op = node.op;
    auto all_constant = [&](size_t from) {
      for (size_t i = from; i < node.inputs.size(); ++i)
        if (!node.inputs[i].empty() && !constant(node.inputs[i])) return false;
      return true;
    };
    if (op == "Clip" && opset_ >= 11 && node.inputs.size() > 1 && all_constant(1)) {
      // Opset 11 moved min/max from attributes to inputs; camrt's Clip reads the attributes.
      const char* keys[] = {"min", "max"};
      for (size_t i = 1; i < node.inputs.size() && i < 3; ++i) {
        if (node.inputs[i].empty()) continue;
        check_batch_independent(node, node.inputs[i]);
        const HostTensor& c = *constant(node.inputs[i]);
        CAMRT_CHECK(c.numel() == 1, where(node) << ": " << keys[i - 1] << " must be a scalar, got shape "
                                                << shape_str(c.shape));
        node.attrs[keys[i - 1]] = float_json(c.to_float()[0], where(node) + ": " + keys[i - 1]);
      }
      node.inputs.resize(1);
    }
    // Opset 13 (Squeeze, Unsqueeze) and 18 (ReduceMean) moved axes from an attribute to an input.
    const bool axes_input =
        ((op == "Squeeze" || op == "Unsqueeze") && opset_ >= 13) || (op == "ReduceMean" && opset_ >= 18);
    if (axes_input && node.inputs.size() == 2 && constant(node.inputs[1])) {
      check_batch_independent(node, node.inputs[1]);
      try {
        node.attrs["axes"] = int_values(*constant(node.inputs[1]), "axes");
      } catch (const Error& e) {
        CAMRT_FAIL(where(node) << ": " << e.what());
      }
      node.inputs.resize(1);
    }
    if (op == "Reshape" && node.inputs.size() == 2 && constant(node.inputs[1])) normalize_reshape_shape(node);
    if (op == "Dropout") {
      // Inference drops ratio; training_mode must be known to be false, since camrt never trains.
      if (node.inputs.size() > 2 && !node.inputs[2].empty()) {
        const HostTensor* training = constant(node.inputs[2]);
        CAMRT_CHECK(training, where(node) << ": training_mode must be a constant (camrt runs inference only)");
        const std::vector<int64_t> flag = training->to_int64();
        CAMRT_CHECK(flag.empty() || flag[0] == 0, where(node) << ": training_mode = true is not supported (camrt runs inference only)");
      }
      node.inputs.resize(std::min<size_t>(node.inputs.size(), 1));
      while (node.outputs.size() > 1 && (node.outputs.back().empty() || !readers_.count(node.outputs.back()) ||
                                         !readers_.at(node.outputs.back())))
        node.outputs.pop_back();
    }
    for (size_t i = 0; i < node.inputs.size(); ++i) {
      if (op == "Reshape" && i == 1) continue;  // handled (and reported) above
      if (constant(node.inputs[i])) check_batch_independent(node, node.inputs[i]);
    }
  }

  // A Reshape target computed from Shape(x): elements that were derived from the batch size become 0
  // (copy the input dim) where that is what they are, or -1 (infer) for the one left.
  void normalize_reshape_shape(Node& node) {
    const std::string shape_name = node.inputs[1];
    const HostTensor& s0 = *lookup(0, shape_name)->constant;
    const WalkValue* v1 = lookup(1, shape_name);
    const HostTensor& s1 = v1 && v1->constant ? *v1->constant : s0;
    std::vector<int64_t> a, b;
    try {
      a = int_values(s0, "the shape");
      b = int_values(s1, "the shape");
    } catch (const Error& e) {
      CAMRT_FAIL(where(node) << ": " << e.what());
    }
    CAMRT_CHECK(s0.shape.size() == 1, where(node) << ": the shape input must be 1-D, got " << shape_str(s0.shape));
    if (a.size() != b.size()) {
      batch_problems_.push_back(label(node) + ": the rank of the target shape depends on the batch size");
      return;
    }
    const bool allowzero = json_int(node.attrs, "allowzero", 0) != 0;
    const WalkValue* x0 = lookup(0, node.inputs[0]);
    const WalkValue* x1 = lookup(1, node.inputs[0]);
    std::vector<int64_t> out = a;
    std::vector<size_t> left;
    for (size_t i = 0; i < a.size(); ++i) {
      if (a[i] == b[i]) continue;
      const bool copies_input_dim = !allowzero && x0 && x0->known && x1 && x1->known && i < x0->shape.size() &&
                                    i < x1->shape.size() && a[i] == x0->shape[i] && b[i] == x1->shape[i];
      if (copies_input_dim)
        out[i] = 0;
      else
        left.push_back(i);
    }
    if (left.size() == 1 && std::count(out.begin(), out.end(), int64_t(-1)) == 0) {
      out[left[0]] = -1;
      left.clear();
    }
    if (!left.empty()) {
      batch_problems_.push_back(label(node) + ": target shape " + shape_str(a) + " has " + std::to_string(left.size()) +
                                " elements computed from the batch size that are neither a copied input dim nor "
                                "expressible as the one -1");
      return;
    }
    if (out == a && s0.dtype == DType::I64) return;
    const std::string name = unique_tensor_name(node.name + ".shape");
    set_constant_both(name, make_i64({static_cast<int64_t>(out.size())}, out));
    node.inputs[1] = name;
  }

  void infer(WorkNode& wn) {
    const Node& node = wn.node;
    const OpFactory factory = find_op(node.op);
    bool primary_ok = false;
    for (int world = 0; world < 2; ++world) {
      std::vector<TensorDesc> descs;
      std::string why;
      bool after_unsupported = false;
      for (const std::string& name : node.inputs) {
        TensorDesc desc;
        if (name.empty()) {
          desc.present = false;
        } else {
          const WalkValue* v = lookup(world, name);
          if (!v || !v->known) {
            why = "input '" + name + "' of " + label(node) + " is unknown" + (v ? " (" + v->reason + ")" : "");
            after_unsupported = v && v->after_unsupported;
            break;
          }
          desc.dtype = v->dtype;
          desc.shape = v->shape;
          desc.constant = v->constant.get();
        }
        descs.push_back(desc);
      }
      std::vector<TensorDesc> outs;
      if (why.empty()) {
        try {
          outs = factory(node)->infer(descs);
        } catch (const std::exception& e) {
          why = "shape inference of " + label(node) + " failed: " + e.what();
        }
      }
      if (world == 0) primary_ok = why.empty();
      if (world == 1 && primary_ok && !why.empty())
        note("dynamic batch: with batch 2, " + why + "; the model may only run with batch 1");
      for (size_t k = 0; k < node.outputs.size(); ++k) {
        const std::string& name = node.outputs[k];
        if (name.empty()) continue;
        WalkValue v;
        if (why.empty() && k < outs.size()) {
          v.known = true;
          v.dtype = outs[k].dtype;
          v.shape = outs[k].shape;
        } else if (!why.empty() && !after_unsupported && from_value_info(name, world, &v)) {
          // the file's own shape annotation stands in for the failed inference
        } else {
          v.reason = why.empty() ? "no output " + std::to_string(k) + " from shape inference" : why;
          v.after_unsupported = after_unsupported;
        }
        if (world == 1 && !v.known)
          worlds_[1].erase(name);
        else
          worlds_[world][name] = v;
      }
    }
  }

  bool from_value_info(const std::string& name, int world, WalkValue* v) const {
    const auto it = value_info_.find(name);
    if (it == value_info_.end()) return false;
    const OnnxValueInfo& vi = *it->second;
    DType dtype;
    if (!vi.is_tensor || !vi.has_shape || !dtype_from_onnx(vi.elem_type, &dtype)) return false;
    for (int64_t d : vi.dims)
      if (d > kMaxFileDim) return false;  // an annotation only: ignore an absurd one
    v->known = true;
    v->dtype = dtype;
    v->shape = vi.dims;
    for (int64_t& d : v->shape)
      if (d < 0) d = kDynamicDimValue[world];
    return true;
  }

  // Conv -> BatchNormalization, where the Conv's output feeds nothing else: scale the Conv's filters and
  // shift its bias so the pair computes the same function as one Conv (computed in double).
  void fold_batchnorms() {
    if (!options_.fold_batchnorm) return;
    std::unordered_map<std::string, size_t> producer;
    std::unordered_map<std::string, int64_t> reads;
    auto live = [](State s) { return s == State::Kept || s == State::Unsupported || s == State::NotFolded; };
    for (size_t i = 0; i < nodes_.size(); ++i) {
      if (!live(nodes_[i].state)) continue;
      for (const std::string& t : nodes_[i].node.outputs) producer[t] = i;
      for (const std::string& t : nodes_[i].node.inputs) ++reads[t];
    }
    for (const OnnxValueInfo& vi : onnx_.graph.outputs) ++reads[vi.name];
    for (WorkNode& bn_work : nodes_) {
      Node& bn = bn_work.node;
      if (bn_work.state != State::Kept || bn.op != "BatchNormalization" || bn.inputs.size() != 5) continue;
      try {
        if (json_int(bn.attrs, "training_mode", 0) != 0 || json_int(bn.attrs, "spatial", 1) != 1) continue;
      } catch (const Error&) {
        continue;  // malformed attributes: leave the node for the runtime op to report
      }
      bool extra_outputs_read = false;
      for (size_t k = 1; k < bn.outputs.size(); ++k)  // training-mode statistics outputs
        extra_outputs_read |= !bn.outputs[k].empty() && reads[bn.outputs[k]] > 0;
      const auto p = producer.find(bn.inputs[0]);
      if (extra_outputs_read || bn.outputs.empty() || p == producer.end() || reads[bn.inputs[0]] != 1) continue;
      const size_t conv_index = p->second;
      WorkNode& conv_work = nodes_[conv_index];
      Node& conv = conv_work.node;
      if (conv_work.state != State::Kept || conv.op != "Conv" || conv.outputs.size() != 1 || conv.inputs.size() < 2)
        continue;
      const HostTensor* w = constant(conv.inputs[1]);
      const bool has_bias = conv.inputs.size() > 2 && !conv.inputs[2].empty();
      const HostTensor* b = has_bias ? constant(conv.inputs[2]) : nullptr;
      if (!w || w->dtype != DType::F32 || w->shape.size() < 3 || (has_bias && !b)) continue;
      const int64_t channels = w->shape[0];
      if (b && (b->dtype != DType::F32 || b->numel() != channels)) continue;
      const HostTensor* params[4];  // scale, B, mean, var
      bool params_ok = true;
      for (int k = 0; k < 4; ++k) {
        params[k] = constant(bn.inputs[k + 1]);
        params_ok &= params[k] && is_float_dtype(params[k]->dtype) && params[k]->numel() == channels;
      }
      if (!params_ok) continue;
      // ONNX's epsilon is a float attribute; use exactly that float.
      const double eps = static_cast<double>(json_float(bn.attrs, "epsilon", 1e-5f));
      const std::vector<double> gamma = float_values(*params[0]), beta = float_values(*params[1]),
                                mean = float_values(*params[2]), var = float_values(*params[3]);
      std::vector<double> scale(static_cast<size_t>(channels));
      bool finite = true;
      for (int64_t c = 0; c < channels; ++c) {
        scale[c] = gamma[c] / std::sqrt(var[c] + eps);
        finite &= std::isfinite(scale[c]);
      }
      if (!finite) {
        note(label(bn) + " not folded: variance + epsilon is not positive");
        continue;
      }
      HostTensor folded_w(DType::F32, w->shape);
      const int64_t per_channel = channels ? w->numel() / channels : 0;
      for (int64_t c = 0; c < channels; ++c)
        for (int64_t j = 0; j < per_channel; ++j) {
          const int64_t i = c * per_channel + j;
          folded_w.f32()[i] = to_f32(static_cast<double>(w->f32()[i]) * scale[c]);
        }
      HostTensor folded_b(DType::F32, {channels});
      for (int64_t c = 0; c < channels; ++c) {
        const double bias = b ? static_cast<double>(b->f32()[c]) : 0.0;
        folded_b.f32()[c] = to_f32((bias - mean[c]) * scale[c] + beta[c]);
      }
      const std::string w_name = unique_tensor_name(bn.name + ".folded_weight");
      const std::string b_name = unique_tensor_name(bn.name + ".folded_bias");
      set_constant_both(w_name, std::move(folded_w));
      set_constant_both(b_name, std::move(folded_b));
      producer.erase(conv.outputs[0]);
      conv.inputs = {conv.inputs[0], w_name, b_name};
      conv.outputs[0] = bn.outputs[0];  // downstream names stay as they were
      producer[conv.outputs[0]] = conv_index;
      bn_work.state = State::Merged;
      ++bn_folded_;
    }
  }

  // Drops nodes nothing reads (exporters leave some behind); an unsupported node that feeds nothing
  // does not block the import.
  void remove_dead_nodes() {
    std::unordered_set<std::string> needed;
    for (const OnnxValueInfo& vi : onnx_.graph.outputs) needed.insert(vi.name);
    size_t dropped = 0;
    for (size_t i = nodes_.size(); i-- > 0;) {
      WorkNode& wn = nodes_[i];
      if (wn.state != State::Kept && wn.state != State::Unsupported && wn.state != State::NotFolded) continue;
      bool live = false;
      for (const std::string& t : wn.node.outputs) live |= !t.empty() && needed.count(t);
      if (!live) {
        wn.state = State::Dead;
        ++dropped;
        continue;
      }
      for (const std::string& t : wn.node.inputs) needed.insert(t);
    }
    if (dropped) note(std::to_string(dropped) + " node(s) whose outputs nothing reads were dropped");
  }

  void report_problems() const {
    std::map<std::string, std::vector<std::string>> unsupported;  // op -> node names
    size_t unsupported_count = 0;
    std::vector<std::string> not_folded, not_folded_after, bad_attrs;
    for (const WorkNode& wn : nodes_) {
      if (wn.state == State::Unsupported) {
        unsupported[wn.node.op].push_back(wn.node.name);
        ++unsupported_count;
      } else if (wn.state == State::NotFolded) {
        (wn.after_unsupported ? not_folded_after : not_folded).push_back("'" + wn.node.name + "' (" + wn.node.op +
                                                                          "): " + wn.reason);
      } else if (wn.state == State::Kept && !wn.unconvertible_attrs.empty()) {
        bad_attrs.push_back(label(wn.node) + ": attribute " + join(wn.unconvertible_attrs, ", "));
      }
    }
    std::vector<std::string> parts;
    if (unsupported_count) {
      // Grouped by op type; a long group is cut short, every op type is still named.
      constexpr size_t kNamesPerOp = 10;
      std::vector<std::string> entries;
      for (const auto& [op, names] : unsupported) {
        for (size_t i = 0; i < names.size() && i < kNamesPerOp; ++i)
          entries.push_back("'" + names[i] + "' (" + op + ")");
        if (names.size() > kNamesPerOp)
          entries.push_back("and " + std::to_string(names.size() - kNamesPerOp) + " more " + op + " nodes");
      }
      parts.push_back("unsupported ops: " + std::to_string(unsupported_count) + " node" +
                      (unsupported_count == 1 ? "" : "s") + ": " + join(entries, ", ") +
                      "; supported: " + join(supported_ops(), ", "));
    }
    constexpr size_t kShown = 10;
    std::vector<std::string> folds = not_folded;
    if (unsupported_count == 0 && not_folded.empty()) folds = not_folded_after;
    if (!folds.empty()) {
      std::vector<std::string> shown(folds.begin(), folds.begin() + std::min(folds.size(), kShown));
      if (folds.size() > kShown) shown.push_back("and " + std::to_string(folds.size() - kShown) + " more");
      parts.push_back("shape computations camrt must fold but could not: " + join(shown, "; "));
    }
    if (!not_folded_after.empty() && folds != not_folded_after)
      parts.push_back(std::to_string(not_folded_after.size()) +
                      " shape computation(s) could not be folded because they depend on the nodes above");
    if (!batch_problems_.empty())
      parts.push_back("dynamic batch: " + join(batch_problems_, "; ") +
                      " (export with a fixed batch size, or flatten with torch.flatten(x, 1))");
    if (!bad_attrs.empty()) parts.push_back("attributes of unsupported types: " + join(bad_attrs, "; "));
    if (!parts.empty()) CAMRT_FAIL(source_ << ": cannot import: " << join(parts, " | "));
  }

  Model assemble() {
    Model model;
    std::set<std::string> weight_names;
    for (WorkNode& wn : nodes_) {
      if (wn.state != State::Kept) continue;
      for (const std::string& t : wn.node.inputs)
        if (constant(t)) weight_names.insert(t);
      model.nodes.push_back(std::move(wn.node));
    }
    // A graph output that folded to a constant still needs a producer: an Identity reading a weight.
    std::set<std::string> produced;
    for (const Node& node : model.nodes) produced.insert(node.outputs.begin(), node.outputs.end());
    for (const OnnxValueInfo& vi : onnx_.graph.outputs) {
      if (produced.count(vi.name) || !constant(vi.name)) continue;
      const WalkValue* shadow = lookup(1, vi.name);
      CAMRT_CHECK(!shadow->constant || same_tensor(*shadow->constant, *constant(vi.name)),
                  source_ << ": graph output '" << vi.name << "' is a constant computed from the dynamic batch size");
      Node identity;
      identity.op = "Identity";
      std::string name = "Identity_" + vi.name;
      for (int k = 1; node_names_.count(name); ++k) name = "Identity_" + vi.name + "_" + std::to_string(k);
      node_names_.insert(name);
      identity.name = name;
      const std::string weight = unique_tensor_name(vi.name + ".constant");
      set_constant_both(weight, *constant(vi.name));
      identity.inputs = {weight};
      identity.outputs = {vi.name};
      identity.attrs["onnx_opset"] = opset_;
      model.nodes.push_back(identity);
      weight_names.insert(weight);
      produced.insert(vi.name);
    }
    // Each name owns its tensor (see WalkValue::constant), and the walk is over: move, do not copy.
    for (const std::string& name : weight_names) model.weights[name] = std::move(*lookup(0, name)->constant);
    model.inputs = model_inputs_;
    for (const OnnxValueInfo& vi : onnx_.graph.outputs) {
      ValueInfo out;
      out.name = vi.name;
      const WalkValue* v0 = lookup(0, vi.name);
      const WalkValue* v1 = lookup(1, vi.name);
      DType dtype;
      if (vi.is_tensor && dtype_from_onnx(vi.elem_type, &dtype))
        out.dtype = dtype;
      else if (v0 && v0->known)
        out.dtype = v0->dtype;
      if (vi.has_shape) {
        check_file_dims(vi.dims, source_ + ": graph output '" + vi.name + "'");
        out.shape = vi.dims;
      } else if (v0 && v0->known) {
        out.shape = v0->shape;  // dims that differ between the two evaluations follow the batch
        if (v1 && v1->known && v1->shape.size() == out.shape.size())
          for (size_t d = 0; d < out.shape.size(); ++d)
            if (v1->shape[d] != out.shape[d]) out.shape[d] = -1;
      } else {
        note("graph output '" + vi.name + "' has no shape information");
      }
      model.outputs.push_back(out);
    }
    json& meta = model.metadata;
    meta["source"] = sanitized(basename_of(source_));
    meta["producer_name"] = sanitized(onnx_.producer_name);
    meta["producer_version"] = sanitized(onnx_.producer_version);
    meta["opset"] = opset_;
    meta["ir_version"] = onnx_.ir_version;
    if (!onnx_.graph.name.empty()) meta["graph_name"] = sanitized(onnx_.graph.name);
    meta["batchnorm_folded"] = bn_folded_;
    if (!notes_.empty()) meta["import_notes"] = notes_;
    model.explain_layer = "";
    model.labels.clear();
    return model;
  }

  OnnxModel& onnx_;
  const std::string& source_;
  const OnnxImportOptions& options_;
  int64_t opset_ = 0;
  std::vector<WorkNode> nodes_;                 // topological order
  std::unordered_map<std::string, WalkValue> worlds_[2];  // [0]: dynamic dims = 1, [1]: = 2
  std::unordered_set<std::string> tensor_names_;     // every tensor name in use, for new unique names
  std::set<std::string> node_names_;
  std::unordered_map<std::string, int64_t> readers_;  // reads in the file, graph outputs included
  std::unordered_map<std::string, const OnnxValueInfo*> value_info_;
  std::vector<ValueInfo> model_inputs_;
  std::vector<std::string> batch_problems_;
  std::vector<std::string> notes_;
  int64_t bn_folded_ = 0;
  const int64_t fold_cap_;     // elements of one folded result
  const int64_t fold_budget_;  // elements all evaluations together may read and write
  int64_t fold_work_ = 0;      // elements folding has read and written so far
};

}  // namespace

Model import_onnx_bytes(const uint8_t* data, size_t size, const std::string& source_name,
                        const OnnxImportOptions& options) {
  const std::string source = source_name;  // decoded readers keep a pointer to it
  OnnxModel onnx = decode_model(data, size, source);
  return Importer(onnx, source, options, size).run();
}

Model import_onnx(const std::string& path, const OnnxImportOptions& options) {
  const std::vector<uint8_t> bytes = read_file(path);
  return import_onnx_bytes(bytes.data(), bytes.size(), path, options);
}

OnnxSummary summarize_onnx(const std::string& path) {
  const std::vector<uint8_t> bytes = read_file(path);
  const OnnxModel onnx = decode_model(bytes.data(), bytes.size(), path);
  OnnxSummary summary;
  for (const auto& [domain, version] : onnx.opsets)
    if (domain.empty() || domain == "ai.onnx") summary.opset = version;
  for (const OnnxNode& node : onnx.graph.nodes)
    summary.op_types.push_back(node.domain.empty() || node.domain == "ai.onnx" ? node.op_type : node.domain + "." + node.op_type);
  std::set<std::string> initializers;
  for (const auto& init : onnx.graph.initializers) initializers.insert(init.first);
  for (const OnnxValueInfo& input : onnx.graph.inputs)
    if (!initializers.count(input.name)) summary.input_names.push_back(input.name);
  return summary;
}

HostTensor read_onnx_tensor_file(const std::string& path, std::string* name) {
  const std::vector<uint8_t> bytes = read_file(path);
  Reader reader(bytes.data(), bytes.size(), path, "TensorProto");
  return decode_tensor(reader, name, "");
}

}  // namespace camrt
