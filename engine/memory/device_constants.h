// DeviceConstants: a graph's weights and folded constants on the GPU, uploaded once into one block with every
// tensor 256-byte aligned (what cuDNN/cuBLAS and vector loads like). Every plan of the graph on that runtime
// (batch sizes, explain/score/tail plans) shares one DeviceConstants, so weights exist once per device. A graph's
// constants are its Model's weights, numbered first and in the same order in every Graph of that Model, so one
// DeviceConstants also serves the other graphs of the model (fused or not: a Session's predictor and explainer);
// serves() says whether it does.
// With a channels-last form (kHalf or kFloat), every 4-d float32 constant (conv weights) also has an OHWI copy in
// that type in the block, for the convolutions of channels-last plans (PlanOptions::channels_last).
#pragma once
#include <vector>

#include "engine/graph.h"
#include "kernels/cuda/runtime.h"

namespace camrt {

class DeviceConstants {
 public:
  DeviceConstants(const Graph& graph, CudaRuntime& runtime,
                  ChannelsLast channels_last = ChannelsLast::kOff);
  // Device address of a constant value (nullptr for values that are not constants).
  void* data(int value_id) const { return pointers_[static_cast<size_t>(value_id)]; }
  // Its OHWI copy in the channels-last type (nullptr unless made with one and the constant is 4-d float32).
  void* channels_last_data(int value_id) const {
    return nhwc_pointers_.empty() ? nullptr : nhwc_pointers_[static_cast<size_t>(value_id)];
  }
  // kOff, kHalf or kFloat: which OHWI copies the block holds.
  ChannelsLast channels_last() const { return channels_last_; }
  // True if every constant of `graph` is uploaded here under its value id.
  bool serves(const Graph& graph) const;
  size_t bytes() const { return block_.bytes(); }

 private:
  DeviceBuffer block_;
  std::vector<void*> pointers_;       // per value id
  std::vector<void*> nhwc_pointers_;  // per value id, with a channels-last form
  ChannelsLast channels_last_ = ChannelsLast::kOff;
  std::vector<const HostTensor*> sources_;  // per value id: the host tensor uploaded there
};

}  // namespace camrt
