// DeviceConstants: a graph's weights and folded constants on the GPU, uploaded once into one block with every
// tensor 256-byte aligned (what cuDNN/cuBLAS and vector loads like). Every plan of the graph on that runtime
// (batch sizes, explain/score/tail plans) shares one DeviceConstants, so weights exist once per device.
#pragma once
#include <vector>

#include "engine/graph.h"
#include "kernels/cuda/runtime.h"

namespace camrt {

class DeviceConstants {
 public:
  DeviceConstants(const Graph& graph, CudaRuntime& runtime);
  // Device address of a constant value (nullptr for values that are not constants).
  void* data(int value_id) const { return pointers_[static_cast<size_t>(value_id)]; }
  size_t bytes() const { return block_.bytes(); }

 private:
  DeviceBuffer block_;
  std::vector<void*> pointers_;  // per value id
};

}  // namespace camrt
