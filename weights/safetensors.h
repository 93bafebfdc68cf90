// safetensors reader and writer (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header size N, N bytes of JSON {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}},
// then the byte buffer. The reader validates every field and offset and accepts unaligned data;
// the writer sorts tensors by name and pads the header so the buffer starts 64-byte aligned.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/tensor.h"

namespace camrt {

// The safetensors reference implementation's limit; a larger header is a corrupt or hostile file.
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;
// The writer's alignment of the byte buffer (a cache line, and a multiple of every dtype size).
inline constexpr size_t kSafetensorsAlignment = 64;

// Reads every tensor of a file. Errors (camrt::Error) name the file, the tensor and the problem.
// If metadata is given it receives "__metadata__" (empty when the file has none).
std::map<std::string, HostTensor> read_safetensors(const std::string& path,
                                                   std::map<std::string, std::string>* metadata = nullptr);
// The same for a file already in memory; source_name is what error messages call it.
std::map<std::string, HostTensor> parse_safetensors(const uint8_t* data, size_t size, const std::string& source_name,
                                                    std::map<std::string, std::string>* metadata = nullptr);
// Writes atomically (temporary file, then rename). Tensor names must be valid UTF-8 and not "__metadata__".
void write_safetensors(const std::string& path, const std::map<std::string, HostTensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Strict JSON parsing shared by camrt's file readers: rejects duplicate object keys (which nlohmann
// would silently resolve to the last one) and reports syntax errors as
// "<source_name>: invalid JSON at byte N: ...". Never lets a nlohmann exception escape.
nlohmann::json parse_json_strict(const char* text, size_t size, const std::string& source_name);

}  // namespace camrt
