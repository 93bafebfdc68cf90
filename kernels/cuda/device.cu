// Device discovery for the CUDA backend. cudaGetDeviceCount fails (rather than returning 0) when no driver
// is installed; both cases mean "no GPU here" and become a status string, never an error.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "kernels/cuda/device.h"

namespace camrt {

CudaDeviceInfo query_cuda_devices() {
  CudaDeviceInfo info;
  cudaRuntimeGetVersion(&info.runtime_version);
  info.cudnn_version = cudnnGetVersion();
  cublasGetProperty(MAJOR_VERSION, &info.cublas_version);
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    info.status = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return info;
  }
  info.device_count = count;
  if (count == 0) {
    info.status = "no CUDA device";
    return info;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
    info.name = prop.name;
    info.total_bytes = prop.totalGlobalMem;
    info.compute_major = prop.major;
    info.compute_minor = prop.minor;
  }
  return info;
}

}  // namespace camrt
