// One upload of all constants: offsets first, one allocation, then one staged copy (the runtime's stream
// orders it before any kernel that reads the weights). Half copies are converted on the host by the CPU twin of
// the activation conversion (OIHW float32 -> OHWI half is NCHW -> NHWC with images = out channels).
#include "engine/memory/device_constants.h"

#include "kernels/cpu/layout.h"

namespace camrt {

namespace {
bool is_conv_weight(const HostTensor& t) { return t.dtype == DType::F32 && t.shape.size() == 4; }
}  // namespace

DeviceConstants::DeviceConstants(const Graph& graph, CudaRuntime& runtime, bool half_nhwc) {
  constexpr size_t kAlignment = 256;
  auto aligned = [&](size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; };
  const auto& values = graph.values();
  std::vector<size_t> offsets(values.size(), 0), half_offsets(values.size(), 0);
  size_t total = 0;
  for (size_t id = 0; id < values.size(); ++id) {
    if (!values[id].constant) continue;
    offsets[id] = total;
    total += aligned(values[id].constant->bytes.size());
    if (half_nhwc && is_conv_weight(*values[id].constant)) {
      half_offsets[id] = total;
      total += aligned(static_cast<size_t>(values[id].constant->numel()) * sizeof(uint16_t));
    }
  }
  block_ = DeviceBuffer(runtime, total, "weights");
  pointers_.assign(values.size(), nullptr);
  sources_.assign(values.size(), nullptr);
  for (size_t id = 0; id < values.size(); ++id) sources_[id] = values[id].constant;
  if (half_nhwc) half_pointers_.assign(values.size(), nullptr);
  if (total == 0) return;
  // Staged through one host image of the block so the upload is a single transfer.
  std::vector<uint8_t> image(total, 0);
  ThreadPool pool(1);
  for (size_t id = 0; id < values.size(); ++id) {
    if (!values[id].constant) continue;
    const HostTensor& constant = *values[id].constant;
    if (!constant.bytes.empty()) std::memcpy(image.data() + offsets[id], constant.bytes.data(), constant.bytes.size());
    pointers_[id] = block_.data() + offsets[id];
    if (half_nhwc && is_conv_weight(constant)) {
      const Shape& w = constant.shape;
      nchw_to_nhwc_half(reinterpret_cast<uint16_t*>(image.data() + half_offsets[id]), constant.f32(), w[0], w[1],
                        w[2] * w[3], pool);
      half_pointers_[id] = block_.data() + half_offsets[id];
    }
  }
  copy_to_device(runtime, block_.data(), image.data(), total);
  runtime.synchronize();  // the host image dies here
}

bool DeviceConstants::serves(const Graph& graph) const {
  const auto& values = graph.values();
  for (size_t id = 0; id < values.size(); ++id)
    if (values[id].constant && (id >= sources_.size() || sources_[id] != values[id].constant)) return false;
  return true;
}

}  // namespace camrt
