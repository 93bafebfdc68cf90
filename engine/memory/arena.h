// Arena: one owning, aligned block of memory on a device; the planner's offsets index into it.
// Allocated once per plan, so steady-state execution allocates nothing. Device arenas come from a CudaRuntime
// (which counts them); host arenas from aligned operator new.
#pragma once
#include <cstddef>

#include "engine/tensor.h"
#include "kernels/cuda/runtime.h"

namespace camrt {

class Arena {
 public:
  Arena() = default;
  // cuda: required for Device::CUDA, ignored for the CPU. what: names the memory in the out-of-memory Error.
  Arena(size_t bytes, Device device, CudaRuntime* cuda = nullptr, const char* what = "activation arena");
  ~Arena();
  Arena(Arena&& other) noexcept;
  Arena& operator=(Arena&& other) noexcept;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  uint8_t* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void release();
  uint8_t* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_ = Device::CPU;
  CudaRuntime* cuda_ = nullptr;
};

}  // namespace camrt
