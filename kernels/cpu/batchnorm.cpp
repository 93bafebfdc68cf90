// BatchNormalization kernels: an O(C) fold of the statistics, then one threaded pass over (N*C) rows.
#include "kernels/cpu/batchnorm.h"

#include <algorithm>
#include <cmath>

namespace camrt {

namespace {
// Below this many elements a launch runs on the calling thread: ~32K floats (128 KiB) of a memory-bound
// loop take about as long as waking the workers does.
constexpr int64_t kMinChunk = int64_t(1) << 15;
}  // namespace

void batchnorm_fold(float* scale, float* shift, const float* gamma, const float* beta, const float* mean,
                    const float* var, int64_t channels, float epsilon) {
  for (int64_t c = 0; c < channels; ++c) {
    // Double keeps the fold's rounding below the one float rounding of the final multiply-add.
    const double s = static_cast<double>(gamma[c]) / std::sqrt(static_cast<double>(var[c]) + epsilon);
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

}  // namespace camrt
