// GPU smoke test: the CUDA backend links (cudart, cuBLAS, cuDNN) and reports its device. Without a GPU
// (or in a CPU-only build) it says so and skips at run time.
#include <doctest/doctest.h>

#include <iostream>

#ifdef CAMRT_WITH_CUDA
#include "kernels/cuda/device.h"
#endif

TEST_CASE("gpu: device query") {
#ifdef CAMRT_WITH_CUDA
  const camrt::CudaDeviceInfo info = camrt::query_cuda_devices();
  CHECK(info.runtime_version > 0);
  CHECK(info.cudnn_version >= 90000);  // cuDNN 9 is the oldest camrt supports
  if (info.device_count == 0) {
    std::cout << "SKIPPED gpu tests: " << info.status << "\n";
    return;
  }
  CHECK(info.total_bytes > 0);
  std::cout << "GPU: " << info.name << " sm_" << info.compute_major << info.compute_minor << "\n";
#else
  std::cout << "SKIPPED gpu tests: CPU-only build (CAMRT_WITH_CUDA=OFF)\n";
#endif
}
