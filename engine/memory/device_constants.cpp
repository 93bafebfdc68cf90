// One upload of all constants: offsets first, one allocation, then one staged copy (the runtime's stream
// orders it before any kernel that reads the weights). Channels-last copies are converted on the host by the CPU
// twin of the activation conversion (OIHW -> OHWI is NCHW -> NHWC with images = out channels).
#include "engine/memory/device_constants.h"

#include "kernels/cpu/layout.h"

namespace camrt {

namespace {
bool is_conv_weight(const HostTensor& t) { return t.dtype == DType::F32 && t.shape.size() == 4; }
}  // namespace

DeviceConstants::DeviceConstants(const Graph& graph, CudaRuntime& runtime, ChannelsLast channels_last)
    : channels_last_(channels_last) {
  CAMRT_CHECK(channels_last != ChannelsLast::kAuto, "DeviceConstants: resolve the channels-last form first");
  const bool nhwc = channels_last != ChannelsLast::kOff;
  const size_t nhwc_element = channels_last == ChannelsLast::kHalf ? sizeof(uint16_t) : sizeof(float);
  constexpr size_t kAlignment = 256;
  auto aligned = [&](size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; };
  const auto& values = graph.values();
  std::vector<size_t> offsets(values.size(), 0), nhwc_offsets(values.size(), 0);
  size_t total = 0;
  for (size_t id = 0; id < values.size(); ++id) {
    if (!values[id].constant) continue;
    offsets[id] = total;
    total += aligned(values[id].constant->bytes.size());
    if (nhwc && is_conv_weight(*values[id].constant)) {
      nhwc_offsets[id] = total;
      total += aligned(static_cast<size_t>(values[id].constant->numel()) * nhwc_element);
    }
  }
  block_ = DeviceBuffer(runtime, total, "weights");
  pointers_.assign(values.size(), nullptr);
  sources_.assign(values.size(), nullptr);
  for (size_t id = 0; id < values.size(); ++id) sources_[id] = values[id].constant;
  if (nhwc) nhwc_pointers_.assign(values.size(), nullptr);
  if (total == 0) return;
  // Staged through one host image of the block so the upload is a single transfer.
  std::vector<uint8_t> image(total, 0);
  ThreadPool pool(1);
  for (size_t id = 0; id < values.size(); ++id) {
    if (!values[id].constant) continue;
    const HostTensor& constant = *values[id].constant;
    if (!constant.bytes.empty()) std::memcpy(image.data() + offsets[id], constant.bytes.data(), constant.bytes.size());
    pointers_[id] = block_.data() + offsets[id];
    if (nhwc && is_conv_weight(constant)) {
      const Shape& w = constant.shape;
      uint8_t* copy = image.data() + nhwc_offsets[id];
      if (channels_last == ChannelsLast::kHalf)
        nchw_to_nhwc(reinterpret_cast<uint16_t*>(copy), constant.f32(), w[0], w[1], w[2] * w[3], pool);
      else
        nchw_to_nhwc(reinterpret_cast<float*>(copy), constant.f32(), w[0], w[1], w[2] * w[3], pool);
      nhwc_pointers_[id] = block_.data() + nhwc_offsets[id];
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
