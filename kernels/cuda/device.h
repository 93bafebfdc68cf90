// CUDA device discovery: how many devices, which one, and the library versions camrt was linked against.
// Safe to call on machines without a GPU or driver: it reports zero devices instead of failing.
#pragma once
#include <cstddef>
#include <string>

namespace camrt {

struct CudaDeviceInfo {
  int device_count = 0;
  std::string name;         // device 0
  size_t total_bytes = 0;   // device 0 global memory
  int compute_major = 0, compute_minor = 0;
  int runtime_version = 0;  // cudart, e.g. 13000
  size_t cudnn_version = 0;
  int cublas_version = 0;
  std::string status;       // why device_count is 0, if it is
};

CudaDeviceInfo query_cuda_devices();

}  // namespace camrt
