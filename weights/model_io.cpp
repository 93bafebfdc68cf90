// load_model / save_model: model.json (graph, I/O, preprocessing; schema in weights/FORMAT.md) plus the
// safetensors weights it names. Loading checks types field by field (errors carry the JSON path, e.g.
// "nodes[12].inputs") and then the graph's wiring; saving runs the same wiring checks first, so camrt
// never writes a model it would refuse to load.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "engine/atomic_file.h"
#include "engine/error.h"
#include "engine/image/image.h"
#include "engine/limits.h"
#include "weights/model.h"
#include "weights/safetensors.h"

#ifndef CAMRT_VERSION
#define CAMRT_VERSION "unknown"
#endif

namespace camrt {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kJsonName = "model.json";
constexpr const char* kWeightsName = "model.safetensors";
// A model.json holds the graph only (weights are in the safetensors file): kMaxGraphNodes nodes of about
// 1 KiB each stay well below this, and a larger text would mostly cost parsing memory (a DOM is ~10x the text).
constexpr uint64_t kMaxModelJsonBytes = uint64_t(1) << 28;

// ---- typed access to JSON fields; every error names the source file and the JSON path ----

class JsonFields {
 public:
  explicit JsonFields(const std::string& source) : src_(source) {}

  static std::string join(const std::string& path, const std::string& key) { return path.empty() ? key : path + "." + key; }
  static std::string index(const std::string& path, size_t i) { return path + "[" + std::to_string(i) + "]"; }

  void check_object(const json& v, const std::string& path) const {
    CAMRT_CHECK(v.is_object(), src_ << ": " << (path.empty() ? "the top level" : path) << " must be a JSON object, got " << v.type_name());
  }
  // Rejects misspelled keys ("lables") instead of silently ignoring them.
  void check_keys(const json& obj, const std::string& path, std::initializer_list<const char*> known) const {
    for (const auto& item : obj.items()) {
      bool ok = false;
      std::string list;
      for (const char* k : known) {
        ok = ok || item.key() == k;
        list += std::string(list.empty() ? "" : ", ") + k;
      }
      CAMRT_CHECK(ok, src_ << ": unknown field " << join(path, item.key()) << " (known fields: " << list << ")");
    }
  }
  const json* optional(const json& obj, const char* key) const {
    const auto it = obj.find(key);
    return it == obj.end() ? nullptr : &*it;
  }
  const json& required(const json& obj, const std::string& path, const char* key) const {
    const json* v = optional(obj, key);
    CAMRT_CHECK(v, src_ << ": required field " << join(path, key) << " is missing");
    return *v;
  }
  std::string string(const json& v, const std::string& path) const {
    CAMRT_CHECK(v.is_string(), src_ << ": " << path << " must be a string, got " << describe(v));
    const std::string& s = v.get_ref<const std::string&>();
    CAMRT_CHECK(static_cast<int64_t>(s.size()) <= limits::kMaxNameBytes,
                src_ << ": " << path << " is " << s.size() << " bytes long (at most " << limits::kMaxNameBytes << ")");
    return s;
  }
  int64_t integer(const json& v, const std::string& path) const {
    CAMRT_CHECK(v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)),
                src_ << ": " << path << " must be an integer, got " << describe(v));
    return v.get<int64_t>();
  }
  float number(const json& v, const std::string& path) const {
    CAMRT_CHECK(v.is_number(), src_ << ": " << path << " must be a number, got " << describe(v));
    const float f = v.get<float>();
    CAMRT_CHECK(std::isfinite(f), src_ << ": " << path << " must be a finite float, got " << v.dump());
    return f;
  }
  // max_count: a limit from engine/limits.h on the list's length.
  std::vector<std::string> string_list(const json& v, const std::string& path, int64_t max_count) const {
    bool ok = v.is_array();
    for (size_t i = 0; ok && i < v.size(); ++i) ok = v[i].is_string();
    CAMRT_CHECK(ok, src_ << ": " << path << " must be a list of strings, got " << describe(v));
    CAMRT_CHECK(static_cast<int64_t>(v.size()) <= max_count,
                src_ << ": " << path << " lists " << v.size() << " names (at most " << max_count << ")");
    std::vector<std::string> out;
    out.reserve(v.size());
    for (size_t i = 0; i < v.size(); ++i) out.push_back(string(v[i], index(path, i)));
    return out;
  }
  const std::string& source() const { return src_; }

 private:
  // The type, plus the value itself when it is short enough to help.
  static std::string describe(const json& v) {
    const std::string text = v.dump(-1, ' ', false, json::error_handler_t::replace);
    return std::string(v.type_name()) + (text.size() <= 40 ? " " + text : "");
  }
  const std::string& src_;
};

ValueInfo parse_value_info(const JsonFields& f, const json& v, const std::string& path) {
  f.check_object(v, path);
  f.check_keys(v, path, {"name", "dtype", "shape"});
  ValueInfo info;
  info.name = f.string(f.required(v, path, "name"), JsonFields::join(path, "name"));
  const std::string dtype = f.string(f.required(v, path, "dtype"), JsonFields::join(path, "dtype"));
  CAMRT_CHECK(dtype_from_name(dtype, &info.dtype), f.source() << ": " << JsonFields::join(path, "dtype") << " '" << dtype
                                                                << "' is not a camrt dtype (F32, F16, F64, I64, I32, I8, U8, BOOL)");
  const std::string shape_path = JsonFields::join(path, "shape");
  const json& shape = f.required(v, path, "shape");
  CAMRT_CHECK(shape.is_array(), f.source() << ": " << shape_path << " must be a list of integers, got " << shape.type_name());
  CAMRT_CHECK(static_cast<int64_t>(shape.size()) <= limits::kMaxRank,
              f.source() << ": " << shape_path << " of '" << info.name << "' has rank " << shape.size() << " (at most "
                         << limits::kMaxRank << ")");
  for (size_t i = 0; i < shape.size(); ++i) info.shape.push_back(f.integer(shape[i], JsonFields::index(shape_path, i)));
  return info;
}

std::vector<ValueInfo> parse_value_infos(const JsonFields& f, const json& v, const std::string& path) {
  CAMRT_CHECK(v.is_array(), f.source() << ": " << path << " must be a list of {name, dtype, shape} objects, got " << v.type_name());
  CAMRT_CHECK(static_cast<int64_t>(v.size()) <= limits::kMaxNodeInputs,
              f.source() << ": " << path << " lists " << v.size() << " tensors (at most " << limits::kMaxNodeInputs << ")");
  std::vector<ValueInfo> infos;
  for (size_t i = 0; i < v.size(); ++i) infos.push_back(parse_value_info(f, v[i], JsonFields::index(path, i)));
  return infos;
}

Node parse_node(const JsonFields& f, const json& v, const std::string& path) {
  f.check_object(v, path);
  f.check_keys(v, path, {"op", "name", "inputs", "outputs", "attrs"});
  Node node;
  node.op = f.string(f.required(v, path, "op"), JsonFields::join(path, "op"));
  node.name = f.string(f.required(v, path, "name"), JsonFields::join(path, "name"));
  node.inputs = f.string_list(f.required(v, path, "inputs"), JsonFields::join(path, "inputs"), limits::kMaxNodeInputs);
  node.outputs = f.string_list(f.required(v, path, "outputs"), JsonFields::join(path, "outputs"), limits::kMaxNodeInputs);
  if (const json* attrs = f.optional(v, "attrs")) {
    f.check_object(*attrs, JsonFields::join(path, "attrs"));
    node.attrs = *attrs;
  }
  return node;
}

Preprocess parse_preprocess(const JsonFields& f, const json& v) {
  const std::string path = "preprocess";
  f.check_object(v, path);
  f.check_keys(v, path, {"resize", "crop", "mean", "std"});
  Preprocess p;  // absent fields keep the ImageNet defaults of Preprocess
  if (const json* r = f.optional(v, "resize")) p.resize = f.integer(*r, "preprocess.resize");
  if (const json* c = f.optional(v, "crop")) p.crop = f.integer(*c, "preprocess.crop");
  for (const char* key : {"mean", "std"}) {
    const json* arr = f.optional(v, key);
    if (!arr) continue;
    const std::string field = JsonFields::join(path, key);
    CAMRT_CHECK(arr->is_array() && arr->size() == 3,
                f.source() << ": " << field << " must be a list of 3 numbers (R, G, B), got " << arr->dump());
    std::array<float, 3>& out = std::string(key) == "mean" ? p.mean : p.std;
    for (size_t i = 0; i < 3; ++i) out[i] = f.number((*arr)[i], JsonFields::index(field, i));
  }
  return p;
}

// The wiring checks shared by load and save. `src` prefixes every message.
void validate_model(const Model& m, const std::string& src) {
  // Where each tensor name comes from, for messages about names defined twice.
  std::map<std::string, std::string> origin;
  for (const auto& [name, t] : m.weights) origin[name] = "a weight";

  CAMRT_CHECK(!m.inputs.empty(), src << ": the model has no graph inputs");
  CAMRT_CHECK(!m.outputs.empty(), src << ": the model has no graph outputs");
  for (const char* kind : {"inputs", "outputs"}) {
    const auto& list = std::string(kind) == "inputs" ? m.inputs : m.outputs;
    std::set<std::string> seen;
    for (size_t i = 0; i < list.size(); ++i) {
      const ValueInfo& info = list[i];
      CAMRT_CHECK(!info.name.empty(), src << ": " << kind << "[" << i << "].name is empty");
      CAMRT_CHECK(seen.insert(info.name).second, src << ": graph " << kind << " list '" << info.name << "' twice");
      for (size_t d = 0; d < info.shape.size(); ++d)
        CAMRT_CHECK(info.shape[d] >= -1, src << ": " << kind << "[" << i << "] '" << info.name << "': shape[" << d << "] is "
                                             << info.shape[d] << " (dimensions are >= 0, or -1 for dynamic)");
    }
  }
  for (const ValueInfo& in : m.inputs) {
    CAMRT_CHECK(!origin.count(in.name), src << ": graph input '" << in.name << "' has the same name as a weight");
    origin[in.name] = "a graph input";
  }

  // First producer of each name over the whole list, to tell "undefined" from "out of order".
  std::map<std::string, const Node*> producer;
  for (const Node& node : m.nodes)
    for (const std::string& out : node.outputs)
      if (!out.empty()) producer.emplace(out, &node);

  std::set<std::string> node_names;
  for (size_t i = 0; i < m.nodes.size(); ++i) {
    const Node& node = m.nodes[i];
    CAMRT_CHECK(!node.name.empty(), src << ": nodes[" << i << "] (" << node.op << ") has an empty name");
    CAMRT_CHECK(!node.op.empty(), src << ": node '" << node.name << "' has an empty op");
    CAMRT_CHECK(node_names.insert(node.name).second, src << ": two nodes are named '" << node.name << "'");
    CAMRT_CHECK(node.attrs.is_object(), src << ": node '" << node.name << "' (" << node.op << "): attrs must be an object");
    const std::string who = "node '" + node.name + "' (" + node.op + ")";
    for (const std::string& in : node.inputs) {
      if (in.empty() || origin.count(in)) continue;  // "" marks an omitted optional input
      const auto later = producer.find(in);
      CAMRT_CHECK(later == producer.end(), src << ": " << who << ": input '" << in << "' is produced by the later node '"
                                               << later->second->name << "' (nodes must be in topological order)");
      CAMRT_FAIL(src << ": " << who << ": input '" << in
                     << "' is neither a graph input, a weight, nor an output of an earlier node");
    }
    bool any_output = false;
    for (const std::string& out : node.outputs) {
      if (out.empty()) continue;  // an omitted optional output
      any_output = true;
      const auto it = origin.find(out);
      CAMRT_CHECK(it == origin.end(), src << ": " << who << ": output '" << out << "' is already " << it->second);
      origin[out] = "produced by node '" + node.name + "'";
    }
    CAMRT_CHECK(any_output, src << ": " << who << " has no outputs");
  }
  for (const ValueInfo& out : m.outputs)
    CAMRT_CHECK(origin.count(out.name) && !m.weights.count(out.name),
                src << ": graph output '" << out.name << "' is not produced by any node");
  CAMRT_CHECK(m.explain_layer.empty() || node_names.count(m.explain_layer),
              src << ": explain_layer '" << m.explain_layer << "' is not the name of a node");

  const Preprocess& p = m.preprocess;
  CAMRT_CHECK(p.resize > 0 && p.crop > 0, src << ": preprocess.resize (" << p.resize << ") and preprocess.crop (" << p.crop
                                              << ") must be positive");
  CAMRT_CHECK(p.resize <= kMaxImageSide, src << ": preprocess.resize (" << p.resize << ") exceeds the largest image side camrt reads ("
                                            << kMaxImageSide << ")");
  CAMRT_CHECK(p.crop <= p.resize, src << ": preprocess.crop (" << p.crop << ") exceeds preprocess.resize (" << p.resize
                                      << "), the shorter side it is cut from");
  for (int c = 0; c < 3; ++c) {
    CAMRT_CHECK(std::isfinite(p.mean[c]), src << ": preprocess.mean[" << c << "] is not finite");
    CAMRT_CHECK(std::isfinite(p.std[c]) && p.std[c] != 0.f, src << ": preprocess.std[" << c << "] is " << p.std[c]
                                                                  << " (must be finite and nonzero: it divides)");
  }
}

Model parse_model_doc(const json& doc, const std::string& src, std::string* weights_file) {
  const JsonFields f(src);
  f.check_object(doc, "");
  // The version first: a future file may have a different schema, and that is the error to report.
  const json& version = f.required(doc, "", "format_version");
  const int64_t v = f.integer(version, "format_version");
  CAMRT_CHECK(v == kModelFormatVersion, src << ": unsupported format_version " << v << " (this camrt reads " << kModelFormatVersion << ")");
  f.check_keys(doc, "", {"format_version", "producer", "weights", "inputs", "outputs", "nodes", "preprocess", "labels",
                         "explain_layer", "metadata"});
  Model m;
  if (const json* producer = f.optional(doc, "producer")) f.string(*producer, "producer");
  *weights_file = f.string(f.required(doc, "", "weights"), "weights");
  CAMRT_CHECK(!weights_file->empty(), src << ": weights must name the safetensors file");
  m.inputs = parse_value_infos(f, f.required(doc, "", "inputs"), "inputs");
  m.outputs = parse_value_infos(f, f.required(doc, "", "outputs"), "outputs");
  const json& nodes = f.required(doc, "", "nodes");
  CAMRT_CHECK(nodes.is_array(), src << ": nodes must be a list of node objects, got " << nodes.type_name());
  CAMRT_CHECK(static_cast<int64_t>(nodes.size()) <= limits::kMaxGraphNodes,
              src << ": " << nodes.size() << " nodes (at most " << limits::kMaxGraphNodes << ")");
  m.nodes.reserve(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) m.nodes.push_back(parse_node(f, nodes[i], JsonFields::index("nodes", i)));
  if (const json* p = f.optional(doc, "preprocess")) m.preprocess = parse_preprocess(f, *p);
  if (const json* labels = f.optional(doc, "labels")) m.labels = f.string_list(*labels, "labels", limits::kMaxGraphValues);
  if (const json* layer = f.optional(doc, "explain_layer")) m.explain_layer = f.string(*layer, "explain_layer");
  if (const json* meta = f.optional(doc, "metadata")) {
    f.check_object(*meta, "metadata");
    m.metadata = *meta;
  }
  return m;
}

// The shortest decimal that reads back as the same float, as a double: 0.485f is written "0.485",
// not "0.48500001430511475", and reading it back (double, then float) gives exactly 0.485f again.
double short_double(float value) {
  char text[32];
  for (int digits = 6; digits <= 9; ++digits) {  // 9 significant digits always round-trip a float
    std::snprintf(text, sizeof text, "%.*g", digits, static_cast<double>(value));
    const double d = std::strtod(text, nullptr);
    if (static_cast<float>(d) == value) return d;
  }
  return static_cast<double>(value);
}

std::string dump_model_json(const Model& m) {
  auto floats = [](const std::array<float, 3>& a) {
    return json::array({short_double(a[0]), short_double(a[1]), short_double(a[2])}).dump();
  };
  auto value_info = [](const ValueInfo& v) {
    return "{\"name\":" + json(v.name).dump() + ",\"dtype\":" + json(dtype_name(v.dtype)).dump() +
           ",\"shape\":" + json(v.shape).dump() + "}";
  };
  // One element per line: diffs of two conversions show exactly which nodes changed.
  auto list = [](const auto& items, const auto& one) {
    std::string s = "[";
    for (size_t i = 0; i < items.size(); ++i) s += std::string(i ? "," : "") + "\n  " + one(items[i]);
    return s + (items.empty() ? "]" : "\n ]");
  };
  std::ostringstream os;
  os << "{\n";
  os << " \"format_version\": " << kModelFormatVersion << ",\n";
  os << " \"producer\": " << json(std::string("camrt ") + CAMRT_VERSION).dump() << ",\n";
  os << " \"weights\": " << json(kWeightsName).dump() << ",\n";
  os << " \"inputs\": " << list(m.inputs, value_info) << ",\n";
  os << " \"outputs\": " << list(m.outputs, value_info) << ",\n";
  const Preprocess& p = m.preprocess;
  os << " \"preprocess\": {\"resize\":" << p.resize << ",\"crop\":" << p.crop << ",\"mean\":" << floats(p.mean)
     << ",\"std\":" << floats(p.std) << "},\n";
  if (!m.explain_layer.empty()) os << " \"explain_layer\": " << json(m.explain_layer).dump() << ",\n";
  if (!m.labels.empty()) os << " \"labels\": " << list(m.labels, [](const std::string& s) { return json(s).dump(); }) << ",\n";
  if (!m.metadata.empty()) os << " \"metadata\": " << m.metadata.dump() << ",\n";
  os << " \"nodes\": " << list(m.nodes, [](const Node& n) {
    return "{\"op\":" + json(n.op).dump() + ",\"name\":" + json(n.name).dump() + ",\"inputs\":" + json(n.inputs).dump() +
           ",\"outputs\":" + json(n.outputs).dump() + ",\"attrs\":" + n.attrs.dump() + "}";
  }) << "\n";
  os << "}\n";
  return os.str();
}

// nlohmann's parser keeps its own stack, but copying, comparing and dumping a json value recurse once per
// level: a file nested a million levels deep would overflow the C++ stack there. One cheap pass over the text
// (brackets outside strings) refuses it before parsing.
void check_json_nesting(const char* text, size_t size, const std::string& src) {
  int64_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < size; ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;  // skip the escaped character (an escaped quote does not end the string)
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      CAMRT_CHECK(++depth <= limits::kMaxNesting, src << ": JSON nested deeper than " << limits::kMaxNesting
                                                      << " levels at byte " << i);
    } else if (c == ']' || c == '}') {
      --depth;  // unbalanced brackets are the parser's to report
    }
  }
}

// model.json text -> Model without weights; *weights_file receives the "weights" field.
Model parse_model_text(const char* text, size_t size, const std::string& src, std::string* weights_file) {
  try {
    CAMRT_CHECK(static_cast<uint64_t>(size) <= kMaxModelJsonBytes,
                src << ": " << size << " bytes is too large for a model.json (at most " << kMaxModelJsonBytes << ")");
    check_json_nesting(text, size, src);
    const json doc = parse_json_strict(text, size, src);
    return parse_model_doc(doc, src, weights_file);
  } catch (const json::exception& e) {
    // Every access is type-checked first; this is the safety net that keeps nlohmann's own exceptions
    // from reaching a user.
    CAMRT_FAIL(src << ": " << e.what());
  }
}

}  // namespace

Model parse_model_json(const char* text, size_t size, std::map<std::string, HostTensor> weights,
                       const std::string& source_name) {
  std::string weights_file;
  Model m = parse_model_text(text, size, source_name, &weights_file);
  m.weights = std::move(weights);
  try {
    validate_model(m, source_name);
  } catch (const json::exception& e) {
    CAMRT_FAIL(source_name << ": " << e.what());
  }
  return m;
}

Model load_model(const std::string& json_path) {
  std::error_code ec;
  std::string path = json_path;
  if (fs::is_directory(path, ec)) path = (fs::path(path) / kJsonName).string();
  try {
    std::ifstream in(path, std::ios::binary);
    CAMRT_CHECK(in, path << ": cannot open model file" << (fs::exists(path, ec) ? "" : " (no such file)"));
    const uintmax_t file_bytes = fs::file_size(path, ec);
    CAMRT_CHECK(ec || file_bytes <= kMaxModelJsonBytes,
                path << ": " << file_bytes << " bytes is too large for a model.json (at most " << kMaxModelJsonBytes << ")");
    // Read into a string sized up front: streams swallow a failed allocation (badbit) and would hand the
    // parser a truncated text, so out of memory must surface here as std::bad_alloc, not as "invalid JSON".
    CAMRT_CHECK(!ec, path << ": cannot read the file size: " << ec.message());
    std::string s(static_cast<size_t>(file_bytes), '\0');
    in.read(s.data(), static_cast<std::streamsize>(s.size()));
    CAMRT_CHECK(!in.bad() && in.gcount() == static_cast<std::streamsize>(s.size()), path << ": read error");
    std::string weights_file;
    Model m = parse_model_text(s.data(), s.size(), path, &weights_file);
    fs::path weights_path(weights_file);
    if (weights_path.is_relative()) weights_path = fs::path(path).parent_path() / weights_path;
    m.weights = read_safetensors(weights_path.string());
    validate_model(m, path);
    return m;
  } catch (const json::exception& e) {
    CAMRT_FAIL(path << ": " << e.what());
  } catch (const fs::filesystem_error& e) {
    CAMRT_FAIL(path << ": " << e.what());
  }
}

void save_model(const Model& model, const std::string& dir) {
  const std::string src = "save_model('" + dir + "')";
  validate_model(model, src);
  std::string text;
  try {
    text = dump_model_json(model);
  } catch (const json::exception& e) {
    // dump() throws only for strings that are not UTF-8 (node names, labels, attrs from a foreign file).
    CAMRT_FAIL(src << ": cannot encode model.json: " << e.what());
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  CAMRT_CHECK(!ec, src << ": cannot create directory '" << dir << "': " << ec.message());
  // Weights first: whoever sees the new model.json then also finds complete weights next to it.
  write_safetensors((fs::path(dir) / kWeightsName).string(), model.weights, {{"format", "camrt"}});
  write_file_atomic((fs::path(dir) / kJsonName).string(), text.data(), text.size());
}

}  // namespace camrt
