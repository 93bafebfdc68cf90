// DeviceConstants: a graph's weights and folded constants on the GPU, uploaded once into one block with every
// tensor 256-byte aligned (what cuDNN/cuBLAS and vector loads like). Every plan of the graph on that runtime
// (batch sizes, explain/score/tail plans) shares one DeviceConstants, so weights exist once per device. A graph's
// constants are its Model's weights, numbered first and in the same order in every Graph of that Model, so one
// DeviceConstants also serves the other graphs of the model (fused or not: a Session's predictor and explainer);
// serves() says whether it does.
// With half_nhwc, every 4-d float32 constant (conv weights) also has an OHWI half copy in the block, for the
// convolutions of half-storage plans (PlanOptions::half_storage).
#pragma once
#include <vector>

#include "engine/graph.h"
#include "kernels/cuda/runtime.h"

namespace camrt {

class DeviceConstants {
 public:
  DeviceConstants(const Graph& graph, CudaRuntime& runtime, bool half_nhwc = false);
  // Device address of a constant value (nullptr for values that are not constants).
  void* data(int value_id) const { return pointers_[static_cast<size_t>(value_id)]; }
  // Its OHWI half copy (nullptr unless made with half_nhwc and the constant is 4-d float32).
  void* half_nhwc_data(int value_id) const {
    return half_pointers_.empty() ? nullptr : half_pointers_[static_cast<size_t>(value_id)];
  }
  bool has_half_nhwc() const { return !half_pointers_.empty(); }
  // True if every constant of `graph` is uploaded here under its value id.
  bool serves(const Graph& graph) const;
  size_t bytes() const { return block_.bytes(); }

 private:
  DeviceBuffer block_;
  std::vector<void*> pointers_;       // per value id
  std::vector<void*> half_pointers_;  // per value id, with half_nhwc
  std::vector<const HostTensor*> sources_;  // per value id: the host tensor uploaded there
};

}  // namespace camrt
