// BatchNormalization kernels: an O(C) fold of the statistics, then one threaded pass over (N*C) rows, forward
// and backward alike.
#include "kernels/cpu/batchnorm.h"

#include <algorithm>
#include <cmath>

namespace camrt {

namespace {
// Below this many elements a launch runs on the calling thread: ~32K floats (128 KiB) of a memory-bound
// loop take about as long as waking the workers does.
constexpr int64_t kMinChunk = int64_t(1) << 15;

// Double keeps the fold's rounding below the one float rounding of the final multiply-add.
inline double scale_of(float gamma, float var, float epsilon) {
  return static_cast<double>(gamma) / std::sqrt(static_cast<double>(var) + epsilon);
}

}  // namespace

void batchnorm_fold(float* scale, float* shift, const float* gamma, const float* beta, const float* mean,
                    const float* var, int64_t channels, float epsilon) {
  for (int64_t c = 0; c < channels; ++c) {
    const double s = scale_of(gamma[c], var[c], epsilon);
    scale[c] = static_cast<float>(s);
    shift[c] = static_cast<float>(static_cast<double>(beta[c]) - static_cast<double>(mean[c]) * s);
  }
}

void batchnorm_forward(float* y, const float* x, const float* scale, const float* shift, int64_t batch,
                       int64_t channels, int64_t inner, ThreadPool& pool) {
  if (inner <= 0 || channels <= 0) return;
  pool.parallel_for(
      batch * channels,
      [=](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t c = row % channels;
          const float s = scale[c], t = shift[c];
          const float* xr = x + row * inner;
          float* yr = y + row * inner;
          for (int64_t i = 0; i < inner; ++i) yr[i] = xr[i] * s + t;
        }
      },
      std::max<int64_t>(1, kMinChunk / inner));
}

void batchnorm_fold_scale(float* scale, const float* gamma, const float* var, int64_t channels, float epsilon) {
  for (int64_t c = 0; c < channels; ++c) scale[c] = static_cast<float>(scale_of(gamma[c], var[c], epsilon));
}

void batchnorm_backward(float* dx, const float* dy, const float* scale, int64_t batch, int64_t channels, int64_t inner,
                        ThreadPool& pool) {
  if (inner <= 0 || channels <= 0) return;
  pool.parallel_for(
      batch * channels,
      [=](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const float s = scale[row % channels];
          const float* g = dy + row * inner;
          float* d = dx + row * inner;
          for (int64_t i = 0; i < inner; ++i) d[i] += g[i] * s;
        }
      },
      std::max<int64_t>(1, kMinChunk / inner));
}

}  // namespace camrt
