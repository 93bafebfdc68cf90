// One upload of all constants: offsets first, one allocation, then one staged copy (the runtime's stream
// orders it before any kernel that reads the weights).
#include "engine/memory/device_constants.h"

namespace camrt {

DeviceConstants::DeviceConstants(const Graph& graph, CudaRuntime& runtime) {
  constexpr size_t kAlignment = 256;
  const auto& values = graph.values();
  std::vector<size_t> offsets(values.size(), 0);
  size_t total = 0;
  for (size_t id = 0; id < values.size(); ++id) {
    if (!values[id].constant) continue;
    offsets[id] = total;
    total += (values[id].constant->bytes.size() + kAlignment - 1) / kAlignment * kAlignment;
  }
  block_ = DeviceBuffer(runtime, total, "weights");
  pointers_.assign(values.size(), nullptr);
  if (total == 0) return;
  // Staged through one host image of the block so the upload is a single transfer.
  std::vector<uint8_t> image(total, 0);
  for (size_t id = 0; id < values.size(); ++id) {
    if (!values[id].constant) continue;
    const auto& bytes = values[id].constant->bytes;
    if (!bytes.empty()) std::memcpy(image.data() + offsets[id], bytes.data(), bytes.size());
    pointers_[id] = block_.data() + offsets[id];
  }
  copy_to_device(runtime, block_.data(), image.data(), total);
  runtime.synchronize();  // the host image dies here
}

}  // namespace camrt
