// libFuzzer target: the .npy reader (camrt predict/explain --input, camrt eval data). Any input must either parse
// into a tensor whose bytes match its shape or throw camrt::Error; a crash, leak or hang is a finding.
#include <cstddef>
#include <cstdint>

#include "engine/error.h"
#include "engine/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const camrt::HostTensor t = camrt::parse_npy(data, size, "fuzz.npy");
    if (t.bytes.size() != static_cast<size_t>(t.numel()) * camrt::dtype_size(t.dtype)) __builtin_trap();
  } catch (const camrt::Error&) {
  }
  return 0;
}
