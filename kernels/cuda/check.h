// Error checks for CUDA, cuBLAS and cuDNN calls: every failure becomes a camrt::Error naming the call and the
// library's own message. Include only from .cu files (it pulls in the CUDA headers).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "engine/error.h"

#define CAMRT_CUDA_CHECK(call)                                                                  \
  do {                                                                                          \
    const cudaError_t camrt_cuda_status = (call);                                               \
    CAMRT_CHECK(camrt_cuda_status == cudaSuccess,                                               \
                "CUDA: " #call " failed: " << cudaGetErrorString(camrt_cuda_status));           \
  } while (0)

#define CAMRT_CUDNN_CHECK(call)                                                                 \
  do {                                                                                          \
    const cudnnStatus_t camrt_cudnn_status = (call);                                            \
    CAMRT_CHECK(camrt_cudnn_status == CUDNN_STATUS_SUCCESS,                                     \
                "cuDNN: " #call " failed: " << cudnnGetErrorString(camrt_cudnn_status));        \
  } while (0)

#define CAMRT_CUBLAS_CHECK(call)                                                                \
  do {                                                                                          \
    const cublasStatus_t camrt_cublas_status = (call);                                          \
    CAMRT_CHECK(camrt_cublas_status == CUBLAS_STATUS_SUCCESS,                                   \
                "cuBLAS: " #call " failed: " << cublasGetStatusString(camrt_cublas_status));    \
  } while (0)

// After a kernel launch: configuration errors surface here, execution errors at the next synchronize.
#define CAMRT_CUDA_CHECK_LAUNCH(kernel_name) \
  CAMRT_CHECK(cudaPeekAtLastError() == cudaSuccess, "CUDA: launch of " kernel_name " failed: " << cudaGetErrorString(cudaGetLastError()))

namespace camrt::cuda {
// Blocks of 256 threads, grid capped so grid-stride loops cover any n.
inline unsigned grid_for(int64_t n, int threads = 256) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}
}  // namespace camrt::cuda
