// Softmax kernels, forward and backward. Rows (inner == 1) are handled one per task; for inner > 1 each task
// takes a block of kBlock neighbouring columns so every pass over dim reads contiguous memory.
#include "kernels/cpu/softmax.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace camrt {

namespace {

// Below this many elements a launch runs on the calling thread: ~32K floats of exp-heavy work is about
// the cost of waking the workers.
constexpr int64_t kMinChunk = int64_t(1) << 15;
// Columns per task when inner > 1: 64 floats = 4 cache lines per row of the block, and the block's running
// max and sum (2 x 64 floats) stay in registers/L1.
constexpr int64_t kBlock = 64;

void softmax_row(float* y, const float* x, int64_t dim) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t d = 0; d < dim; ++d) m = std::max(m, x[d]);
  float sum = 0.f;
  for (int64_t d = 0; d < dim; ++d) {
    const float e = std::exp(x[d] - m);
    y[d] = e;
    sum += e;
  }
  const float inv = 1.f / sum;
  for (int64_t d = 0; d < dim; ++d) y[d] *= inv;
}

// Columns [c0, c0 + width) of one (dim, inner) slab.
void softmax_columns(float* y, const float* x, int64_t dim, int64_t inner, int64_t c0, int64_t width) {
  float m[kBlock], sum[kBlock];
  for (int64_t j = 0; j < width; ++j) {
    m[j] = -std::numeric_limits<float>::infinity();
    sum[j] = 0.f;
  }
  for (int64_t d = 0; d < dim; ++d) {
    const float* xr = x + d * inner + c0;
    for (int64_t j = 0; j < width; ++j) m[j] = std::max(m[j], xr[j]);
  }
  for (int64_t d = 0; d < dim; ++d) {
    const float* xr = x + d * inner + c0;
    float* yr = y + d * inner + c0;
    for (int64_t j = 0; j < width; ++j) {
      const float e = std::exp(xr[j] - m[j]);
      yr[j] = e;
      sum[j] += e;
    }
  }
  for (int64_t j = 0; j < width; ++j) sum[j] = 1.f / sum[j];
  for (int64_t d = 0; d < dim; ++d) {
    float* yr = y + d * inner + c0;
    for (int64_t j = 0; j < width; ++j) yr[j] *= sum[j];
  }
}

void softmax_backward_row(float* dx, const float* dy, const float* y, int64_t dim) {
  double dot = 0;
  for (int64_t d = 0; d < dim; ++d) dot += static_cast<double>(dy[d]) * y[d];
  const float s = static_cast<float>(dot);
  for (int64_t d = 0; d < dim; ++d) dx[d] += y[d] * (dy[d] - s);
}

// Columns [c0, c0 + width) of one (dim, inner) slab.
void softmax_backward_columns(float* dx, const float* dy, const float* y, int64_t dim, int64_t inner, int64_t c0,
                              int64_t width) {
  double dot[kBlock];
  float s[kBlock];
  for (int64_t j = 0; j < width; ++j) dot[j] = 0;
  for (int64_t d = 0; d < dim; ++d) {
    const float* g = dy + d * inner + c0;
    const float* v = y + d * inner + c0;
    for (int64_t j = 0; j < width; ++j) dot[j] += static_cast<double>(g[j]) * v[j];
  }
  for (int64_t j = 0; j < width; ++j) s[j] = static_cast<float>(dot[j]);
  for (int64_t d = 0; d < dim; ++d) {
    const float* g = dy + d * inner + c0;
    const float* v = y + d * inner + c0;
    float* o = dx + d * inner + c0;
    for (int64_t j = 0; j < width; ++j) o[j] += v[j] * (g[j] - s[j]);
  }
}

}  // namespace

void softmax_forward(float* y, const float* x, int64_t outer, int64_t dim, int64_t inner, ThreadPool& pool) {
  if (outer <= 0 || dim <= 0 || inner <= 0) return;
  if (inner == 1) {
    pool.parallel_for(
        outer,
        [=](int64_t begin, int64_t end) {
          for (int64_t o = begin; o < end; ++o) softmax_row(y + o * dim, x + o * dim, dim);
        },
        std::max<int64_t>(1, kMinChunk / dim));
    return;
  }
  const int64_t blocks = (inner + kBlock - 1) / kBlock;
  pool.parallel_for(
      outer * blocks,
      [=](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t o = task / blocks, c0 = (task % blocks) * kBlock;
          softmax_columns(y + o * dim * inner, x + o * dim * inner, dim, inner, c0, std::min(kBlock, inner - c0));
        }
      },
      std::max<int64_t>(1, kMinChunk / (dim * std::min(kBlock, inner))));
}

void softmax_backward(float* dx, const float* dy, const float* y, int64_t outer, int64_t dim, int64_t inner,
                      ThreadPool& pool) {
  if (outer <= 0 || dim <= 0 || inner <= 0) return;
  if (inner == 1) {
    pool.parallel_for(
        outer,
        [=](int64_t begin, int64_t end) {
          for (int64_t o = begin; o < end; ++o) softmax_backward_row(dx + o * dim, dy + o * dim, y + o * dim, dim);
        },
        std::max<int64_t>(1, kMinChunk / dim));
    return;
  }
  const int64_t blocks = (inner + kBlock - 1) / kBlock;
  pool.parallel_for(
      outer * blocks,
      [=](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t o = task / blocks, c0 = (task % blocks) * kBlock;
          const int64_t base = o * dim * inner;
          softmax_backward_columns(dx + base, dy + base, y + base, dim, inner, c0, std::min(kBlock, inner - c0));
        }
      },
      std::max<int64_t>(1, kMinChunk / (dim * std::min(kBlock, inner))));
}

}  // namespace camrt
