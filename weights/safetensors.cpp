// safetensors reader/writer. The reader trusts nothing in the file: the header size, every dtype, shape
// and offset is checked (with overflow-safe arithmetic) before a byte of tensor data is copied, and the
// tensors must tile the buffer exactly, as the spec requires. Files are read tensor by tensor, never
// whole, so loading needs no second copy of the weights in memory.
#include "weights/safetensors.h"

#include <algorithm>
#include <fstream>
#include <filesystem>
#include <unordered_set>
#include <vector>

#include "engine/atomic_file.h"
#include "engine/error.h"
#include "engine/limits.h"
#include "engine/paths.h"

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian and is copied as-is into host tensors");
#endif

namespace camrt {

using json = nlohmann::json;

nlohmann::json parse_json_strict(const char* text, size_t size, const std::string& source_name) {
  // One set of seen keys per open object; nlohmann reports keys and object boundaries in document order.
  std::vector<std::unordered_set<std::string>> open_objects;
  std::string duplicate_key;
  bool too_deep = false;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) -> bool {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        // depth counts the containers around this one. Returning false drops the container from the
        // document, so a hostile "[[[[..." never becomes a deep tree (whose destruction would recurse).
        if (depth >= limits::kMaxNesting) {
          too_deep = true;
          return false;
        }
        if (event == json::parse_event_t::object_start) open_objects.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key: {
        // Keys of dropped (too deep) objects arrive with no open object recorded for them.
        if (too_deep || open_objects.empty()) break;
        const std::string& key = parsed.get_ref<const std::string&>();
        if (!open_objects.back().insert(key).second && duplicate_key.empty()) duplicate_key = key;
        break;
      }
      default: break;
    }
    return true;
  };
  json document;
  try {
    document = json::parse(text, text + size, callback);
  } catch (const json::parse_error& e) {
    // e.what() is "[json.exception.parse_error.101] parse error at line 1, column 10: <detail>".
    const std::string what = e.what();
    const std::string marker = "parse error at ";
    const size_t at = what.find(marker);
    std::string location, detail = what;
    if (at != std::string::npos) {
      const std::string rest = what.substr(at + marker.size());
      const size_t colon = rest.find(": ");
      if (colon != std::string::npos) {
        location = rest.substr(0, colon);
        detail = rest.substr(colon + 2);
      }
    }
    // The detail quotes the offending bytes, which may be anything: escape them.
    CAMRT_FAIL(source_name << ": invalid JSON at byte " << e.byte << (location.empty() ? "" : " (" + location + ")")
                           << ": " << printable_name(detail));
  } catch (const json::exception& e) {
    CAMRT_FAIL(source_name << ": invalid JSON: " << printable_name(e.what()));
  }
  CAMRT_CHECK(!too_deep, source_name << ": invalid JSON: nesting deeper than " << limits::kMaxNesting << " levels");
  CAMRT_CHECK(duplicate_key.empty(),
              source_name << ": invalid JSON: key '" << printable_name(duplicate_key) << "' appears twice in one object");
  return document;
}

namespace {

struct Entry {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte range in the data buffer
};

std::string supported_dtype_list() {
  std::string s;
  for (DType d : {DType::F32, DType::F16, DType::F64, DType::I64, DType::I32, DType::I8, DType::U8, DType::Bool}) {
    if (!s.empty()) s += ", ";
    s += dtype_name(d);
  }
  return s;
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Checks the 8-byte prefix against the file size and returns N, the header length.
uint64_t check_header_size(const uint8_t* prefix, uint64_t file_size, const std::string& source) {
  const uint64_t header_size = read_u64_le(prefix);
  CAMRT_CHECK(header_size <= kSafetensorsMaxHeaderBytes,
              source << ": header size " << header_size << " exceeds the " << kSafetensorsMaxHeaderBytes
                     << "-byte cap (corrupt file, or not a safetensors file)");
  CAMRT_CHECK(header_size <= file_size - 8, source << ": header size " << header_size << " exceeds the "
                                                   << file_size - 8 << " bytes after the size field (truncated file?)");
  CAMRT_CHECK(header_size > 0, source << ": header size is 0, but the header must be a JSON object");
  return header_size;
}

// Parses and validates the JSON header; returns the tensors sorted by their position in the buffer.
std::vector<Entry> parse_header(const char* text, size_t size, uint64_t buffer_size, const std::string& source,
                                std::map<std::string, std::string>* metadata) {
  const json header = parse_json_strict(text, size, source);
  CAMRT_CHECK(header.is_object(), source << ": header is not a JSON object (got " << header.type_name() << ")");
  if (metadata) metadata->clear();
  CAMRT_CHECK(header.size() <= size_t(limits::kMaxGraphValues),
              source << ": header lists " << header.size() << " tensors, more than the " << limits::kMaxGraphValues << " camrt accepts");
  // The data section bounds all weights together; checked here so a read never starts on a file camrt refuses.
  CAMRT_CHECK(buffer_size <= uint64_t(limits::kMaxModelBytes),
              source << ": data section of " << buffer_size << " bytes exceeds the " << limits::kMaxModelBytes << "-byte limit");
  std::vector<Entry> entries;
  entries.reserve(header.size());
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      CAMRT_CHECK(value.is_object(), source << ": __metadata__ must be an object of strings, got " << value.type_name());
      for (const auto& [key, item] : value.items()) {
        CAMRT_CHECK(item.is_string(), source << ": __metadata__['" << printable_name(key) << "'] must be a string, got " << item.type_name());
        if (metadata) (*metadata)[key] = item.get<std::string>();
      }
      continue;
    }
    const std::string where = source + ": tensor '" + printable_name(name) + "'";
    CAMRT_CHECK(!name.empty(), source << ": a tensor has an empty name");
    CAMRT_CHECK(name.size() <= size_t(limits::kMaxNameBytes),
                where << ": name of " << name.size() << " bytes exceeds the " << limits::kMaxNameBytes << "-byte limit");
    CAMRT_CHECK(value.is_object(), where << ": entry must be a JSON object, got " << value.type_name());
    Entry entry;
    entry.name = name;

    const auto dtype_it = value.find("dtype");
    CAMRT_CHECK(dtype_it != value.end(), where << ": missing 'dtype'");
    CAMRT_CHECK(dtype_it->is_string(), where << ": dtype must be a string, got " << dtype_it->type_name());
    const std::string dtype_str = dtype_it->get<std::string>();
    CAMRT_CHECK(dtype_from_name(dtype_str, &entry.dtype),
                where << ": dtype '" << printable_name(dtype_str, 40) << "' is not supported by camrt (supported: " << supported_dtype_list() << ")");

    const auto shape_it = value.find("shape");
    CAMRT_CHECK(shape_it != value.end(), where << ": missing 'shape'");
    CAMRT_CHECK(shape_it->is_array(), where << ": shape must be a list of non-negative integers, got " << shape_it->type_name());
    CAMRT_CHECK(shape_it->size() <= size_t(limits::kMaxRank),
                where << ": shape has " << shape_it->size() << " dimensions, more than the " << limits::kMaxRank << " camrt accepts");
    for (size_t i = 0; i < shape_it->size(); ++i) {
      const json& dim = (*shape_it)[i];
      CAMRT_CHECK(dim.is_number_integer(), where << ": shape[" << i << "] must be an integer, got " << printable_name(dim.dump(), 40));
      // nlohmann stores non-negative integers as unsigned, negative ones as signed.
      CAMRT_CHECK(dim.is_number_unsigned(), where << ": shape[" << i << "] is " << dim.dump() << ", a negative dimension");
      CAMRT_CHECK(dim.get<uint64_t>() <= uint64_t(INT64_MAX), where << ": shape[" << i << "] = " << dim.dump() << " is too large");
      entry.shape.push_back(dim.get<int64_t>());
    }

    const auto offsets_it = value.find("data_offsets");
    CAMRT_CHECK(offsets_it != value.end(), where << ": missing 'data_offsets'");
    const json& offsets = *offsets_it;
    const bool offsets_ok = offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned() &&
                            offsets[1].is_number_unsigned();
    CAMRT_CHECK(offsets_ok, where << ": data_offsets must be two non-negative integers [begin, end], got " << printable_name(offsets.dump(), 80));
    entry.begin = offsets[0].get<uint64_t>();
    entry.end = offsets[1].get<uint64_t>();
    CAMRT_CHECK(entry.begin <= entry.end, where << ": data_offsets [" << entry.begin << ", " << entry.end << "] have begin > end");
    CAMRT_CHECK(entry.end <= buffer_size, where << ": data_offsets [" << entry.begin << ", " << entry.end << "] exceed the "
                                                << buffer_size << "-byte data buffer");

    int64_t numel = 0;
    try {
      numel = checked_numel(entry.shape);
    } catch (const Error& e) {
      CAMRT_FAIL(where << ": " << e.what());
    }
    uint64_t nbytes = 0;
    CAMRT_CHECK(!__builtin_mul_overflow(static_cast<uint64_t>(numel), uint64_t(dtype_size(entry.dtype)), &nbytes),
                where << ": shape " << shape_str(entry.shape) << " x " << dtype_str << " overflows a 64-bit byte count");
    CAMRT_CHECK(numel <= limits::kMaxTensorElements && nbytes <= uint64_t(limits::kMaxTensorBytes),
                where << ": shape " << shape_str(entry.shape) << " x " << dtype_str << " exceeds camrt's per-tensor limit ("
                      << limits::kMaxTensorElements << " elements, " << limits::kMaxTensorBytes << " bytes)");
    CAMRT_CHECK(nbytes == entry.end - entry.begin, where << ": shape " << shape_str(entry.shape) << " x " << dtype_str << " = "
                                                         << nbytes << " bytes but data_offsets span " << entry.end - entry.begin);
    entries.push_back(std::move(entry));
  }

  // The spec requires the tensors to tile the buffer: no overlap (aliasing) and no gaps (hidden data).
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end != b.end ? a.end < b.end : a.name < b.name;
  });
  uint64_t covered = 0;
  const Entry* previous = nullptr;
  for (const Entry& e : entries) {
    CAMRT_CHECK(e.begin >= covered || !previous, source << ": tensors '" << printable_name(previous->name) << "' ["
                                                        << previous->begin << ", " << previous->end << "] and '"
                                                        << printable_name(e.name) << "' [" << e.begin << ", " << e.end << "] overlap");
    CAMRT_CHECK(e.begin == covered, source << ": gap in the data buffer: bytes [" << covered << ", " << e.begin
                                           << ") before tensor '" << printable_name(e.name) << "' belong to no tensor");
    covered = e.end;
    previous = &e;
  }
  CAMRT_CHECK(covered == buffer_size, source << ": bytes [" << covered << ", " << buffer_size
                                             << ") at the end of the data buffer belong to no tensor");
  return entries;
}

}  // namespace

std::map<std::string, HostTensor> parse_safetensors(const uint8_t* data, size_t size, const std::string& source_name,
                                                    std::map<std::string, std::string>* metadata) {
  CAMRT_CHECK(size >= 8, source_name << ": file is " << size << " bytes, too short for the 8-byte header size (truncated?)");
  const uint64_t header_size = check_header_size(data, size, source_name);
  const uint64_t buffer_size = size - 8 - header_size;
  const std::vector<Entry> entries =
      parse_header(reinterpret_cast<const char*>(data + 8), header_size, buffer_size, source_name, metadata);
  const uint8_t* buffer = data + 8 + header_size;
  std::map<std::string, HostTensor> tensors;
  for (const Entry& e : entries) {
    HostTensor t(e.dtype, e.shape);
    // memcpy, not a cast: offsets need not be aligned to the element size.
    if (!t.bytes.empty()) std::memcpy(t.bytes.data(), buffer + e.begin, t.bytes.size());
    tensors.emplace(e.name, std::move(t));
  }
  return tensors;
}

std::map<std::string, HostTensor> read_safetensors(const std::string& path, std::map<std::string, std::string>* metadata) {
  std::error_code ec;
  // A regular file only: a FIFO or device would block the open or report no size.
  CAMRT_CHECK(std::filesystem::is_regular_file(path, ec), path << ": cannot read safetensors file: "
                                                              << (ec ? ec.message() : "not a regular file"));
  const uint64_t file_size = std::filesystem::file_size(path, ec);
  CAMRT_CHECK(!ec, path << ": cannot read safetensors file: " << ec.message());
  CAMRT_CHECK(file_size <= uint64_t(limits::kMaxFileBytes),
              path << ": file of " << file_size << " bytes exceeds the " << limits::kMaxFileBytes << "-byte limit");
  std::ifstream in(path, std::ios::binary);
  CAMRT_CHECK(in, path << ": cannot open safetensors file");
  CAMRT_CHECK(file_size >= 8, path << ": file is " << file_size << " bytes, too short for the 8-byte header size (truncated?)");
  uint8_t prefix[8];
  CAMRT_CHECK(in.read(reinterpret_cast<char*>(prefix), 8), path << ": read error in the header size");
  const uint64_t header_size = check_header_size(prefix, file_size, path);
  std::string header(static_cast<size_t>(header_size), '\0');
  CAMRT_CHECK(in.read(header.data(), static_cast<std::streamsize>(header_size)), path << ": read error in the header");
  const uint64_t buffer_size = file_size - 8 - header_size;
  const std::vector<Entry> entries = parse_header(header.data(), header.size(), buffer_size, path, metadata);
  // parse_header proved the sorted entries tile the buffer, and the stream now stands at its start,
  // so reading them in order is one sequential pass with no seeks.
  std::map<std::string, HostTensor> tensors;
  for (const Entry& e : entries) {
    HostTensor t(e.dtype, e.shape);
    if (!t.bytes.empty()) {
      CAMRT_CHECK(in.read(reinterpret_cast<char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size())),
                  path << ": tensor '" << printable_name(e.name) << "': read error (file changed or truncated while reading?)");
    }
    tensors.emplace(e.name, std::move(t));
  }
  return tensors;
}

void write_safetensors(const std::string& path, const std::map<std::string, HostTensor>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    CAMRT_CHECK(name != "__metadata__", path << ": a tensor cannot be named '__metadata__' (reserved by the format)");
    int64_t numel = 0;
    try {
      numel = checked_numel(t.shape);
    } catch (const Error& e) {
      CAMRT_FAIL(path << ": tensor '" << name << "': " << e.what());
    }
    const uint64_t nbytes = static_cast<uint64_t>(numel) * dtype_size(t.dtype);
    CAMRT_CHECK(t.bytes.size() == nbytes, path << ": tensor '" << name << "': shape " << shape_str(t.shape) << " x "
                                               << dtype_name(t.dtype) << " needs " << nbytes << " bytes but holds " << t.bytes.size());
    header[name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;

  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception&) {
    // dump() fails only on strings that are not valid UTF-8 (the spec's JSON must be UTF-8): find which.
    for (const auto& [name, t] : tensors) {
      try {
        (void)json(name).dump();
      } catch (const json::exception&) {
        CAMRT_FAIL(path << ": tensor name '" << name << "' is not valid UTF-8");
      }
    }
    CAMRT_FAIL(path << ": __metadata__ holds a key or value that is not valid UTF-8");
  }
  // Trailing spaces are allowed by the spec; they make the buffer start on an aligned offset.
  const size_t unaligned = (8 + text.size()) % kSafetensorsAlignment;
  if (unaligned) text.append(kSafetensorsAlignment - unaligned, ' ');

  uint8_t prefix[8];
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  write_file_atomic(path, [&](AtomicFile& file) {
    file.write(prefix, 8);
    file.write(text);
    for (const auto& [name, t] : tensors) file.write(t.bytes.data(), t.bytes.size());
  });
}

}  // namespace camrt
