// Shared by the gpu-labelled tests: whether a CUDA device is usable, and one runtime for the whole test binary.
// Without a device (or in a CPU-only build) each test prints "SKIPPED ..." and returns, so the suite passes and
// the log says what did not run.
#pragma once
#include <iostream>
#include <memory>

#ifdef CAMRT_WITH_CUDA
#include "kernels/cuda/device.h"
#include "kernels/cuda/runtime.h"

namespace camrt::testing {

// The test binary's runtime (created on first use), or nullptr after printing why GPU tests skip.
inline CudaRuntime* gpu_runtime(const char* test_name) {
  static const CudaDeviceInfo info = query_cuda_devices();
  if (info.device_count == 0) {
    std::cout << "SKIPPED " << test_name << ": no CUDA device (" << info.status << ")\n";
    return nullptr;
  }
  static std::unique_ptr<CudaRuntime> runtime = std::make_unique<CudaRuntime>(0, Precision::FP32);
  return runtime.get();
}

}  // namespace camrt::testing

// Usage, first line of a TEST_CASE: CAMRT_GPU_TEST_RUNTIME(runtime);  (declares CudaRuntime* runtime)
#define CAMRT_GPU_TEST_RUNTIME(var)                                       \
  camrt::CudaRuntime* var = camrt::testing::gpu_runtime(__FILE__);        \
  if (!var) return
#else
#include "kernels/cuda/runtime.h"
// CPU-only build: the variable exists (so the test body compiles) but the test returns before using it.
#define CAMRT_GPU_TEST_RUNTIME(var)                                                   \
  camrt::CudaRuntime* var = nullptr;                                                  \
  (void)var;                                                                          \
  std::cout << "SKIPPED " << __FILE__ << ": CPU-only build (CAMRT_WITH_CUDA=OFF)\n"; \
  return
#endif
