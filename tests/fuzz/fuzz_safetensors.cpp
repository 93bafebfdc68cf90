// libFuzzer target: the safetensors reader (every model.safetensors camrt loads) and, through its header,
// parse_json_strict. Any input must either parse into tensors whose bytes match their shapes and tile the
// data section, or throw camrt::Error; a crash, leak, hang or any other exception is a finding.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "engine/error.h"
#include "engine/limits.h"
#include "weights/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    std::map<std::string, std::string> metadata;
    const auto tensors = camrt::parse_safetensors(data, size, "fuzz.safetensors", &metadata);
    uint64_t total_bytes = 0;
    for (const auto& [name, t] : tensors) {
      if (name.empty() || name == "__metadata__") __builtin_trap();
      if (static_cast<int64_t>(t.shape.size()) > camrt::limits::kMaxRank) __builtin_trap();
      if (t.bytes.size() != static_cast<size_t>(t.numel()) * camrt::dtype_size(t.dtype)) __builtin_trap();
      total_bytes += t.bytes.size();
    }
    // The tensors tile the data section, which lies inside the input.
    if (total_bytes > size) __builtin_trap();
  } catch (const camrt::Error&) {
  }
  return 0;
}
