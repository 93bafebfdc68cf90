// BatchNormalization kernels on the GPU: an O(C) fold kernel, then one grid-stride pass over N*C*inner elements
// (channel = (i / inner) % C), forward and backward alike. The fold uses IEEE double division and sqrt, and the
// pass __fmul_rn/__fadd_rn (never fused), so results equal an unfused CPU twin's bit for bit (a CPU build that
// fuses x * s + t, e.g. GCC with -march=native on FMA hardware, differs by one rounding).
#include "kernels/cuda/batchnorm.h"

#include <limits>

#include "kernels/cuda/check.h"

namespace camrt::cuda {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ double scale_of(float gamma, float var, float epsilon) {
  return __ddiv_rn(static_cast<double>(gamma),
                   __dsqrt_rn(__dadd_rn(static_cast<double>(var), static_cast<double>(epsilon))));
}

__global__ void batchnorm_fold_kernel(float* scale, float* shift, const float* gamma, const float* beta,
                                      const float* mean, const float* var, int64_t channels, float epsilon) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < channels; c += stride) {
    const double s = scale_of(gamma[c], var[c], epsilon);
    scale[c] = static_cast<float>(s);
    if (shift != nullptr)
      shift[c] = static_cast<float>(__dsub_rn(static_cast<double>(beta[c]), __dmul_rn(static_cast<double>(mean[c]), s)));
  }
}

// I: 32-bit index when the tensor has fewer than 2^31 elements (the two divisions per element are then several
// times cheaper), int64 otherwise. Each element is read and written by one thread, so y may equal x.
template <typename I>
__global__ void batchnorm_forward_kernel(float* y, const float* x, const float* scale, const float* shift, I n,
                                         I channels, I inner) {
  const I stride = static_cast<I>(blockDim.x) * gridDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const I c = (i / inner) % channels;
    y[i] = __fadd_rn(__fmul_rn(x[i], scale[c]), shift[c]);
  }
}

template <typename I>
__global__ void batchnorm_backward_kernel(float* dx, const float* dy, const float* scale, I n, I channels, I inner) {
  const I stride = static_cast<I>(blockDim.x) * gridDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const I c = (i / inner) % channels;
    dx[i] = __fadd_rn(dx[i], __fmul_rn(dy[i], scale[c]));
  }
}

// uint32 arithmetic cannot overflow below 2^31 elements: the grid stride is under 2^28 (grid_for's cap).
bool fits_32bit(int64_t n) { return n <= std::numeric_limits<int32_t>::max(); }

}  // namespace

void batchnorm_fold(float* scale, float* shift, const float* gamma, const float* beta, const float* mean,
                    const float* var, int64_t channels, float epsilon, cudaStream_t stream) {
  if (channels <= 0) return;
  batchnorm_fold_kernel<<<grid_for(channels, kThreads), kThreads, 0, stream>>>(scale, shift, gamma, beta, mean, var,
                                                                               channels, epsilon);
  CAMRT_CUDA_CHECK_LAUNCH("batchnorm_fold_kernel");
}

void batchnorm_fold_scale(float* scale, const float* gamma, const float* var, int64_t channels, float epsilon,
                          cudaStream_t stream) {
  if (channels <= 0) return;
  batchnorm_fold_kernel<<<grid_for(channels, kThreads), kThreads, 0, stream>>>(scale, nullptr, gamma, nullptr,
                                                                               nullptr, var, channels, epsilon);
  CAMRT_CUDA_CHECK_LAUNCH("batchnorm_fold_kernel");
}

void batchnorm_forward(float* y, const float* x, const float* scale, const float* shift, int64_t batch,
                       int64_t channels, int64_t inner, cudaStream_t stream) {
  if (inner <= 0 || channels <= 0 || batch <= 0) return;
  const int64_t n = batch * channels * inner;
  if (fits_32bit(n)) {
    batchnorm_forward_kernel<uint32_t><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
        y, x, scale, shift, static_cast<uint32_t>(n), static_cast<uint32_t>(channels), static_cast<uint32_t>(inner));
  } else {
    batchnorm_forward_kernel<int64_t><<<grid_for(n, kThreads), kThreads, 0, stream>>>(y, x, scale, shift, n,
                                                                                      channels, inner);
  }
  CAMRT_CUDA_CHECK_LAUNCH("batchnorm_forward_kernel");
}

void batchnorm_backward(float* dx, const float* dy, const float* scale, int64_t batch, int64_t channels,
                        int64_t inner, cudaStream_t stream) {
  if (inner <= 0 || channels <= 0 || batch <= 0) return;
  const int64_t n = batch * channels * inner;
  if (fits_32bit(n)) {
    batchnorm_backward_kernel<uint32_t><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
        dx, dy, scale, static_cast<uint32_t>(n), static_cast<uint32_t>(channels), static_cast<uint32_t>(inner));
  } else {
    batchnorm_backward_kernel<int64_t><<<grid_for(n, kThreads), kThreads, 0, stream>>>(dx, dy, scale, n, channels,
                                                                                       inner);
  }
  CAMRT_CUDA_CHECK_LAUNCH("batchnorm_backward_kernel");
}

}  // namespace camrt::cuda
