// CPU mean reduction over any axes. Adjacent dims that are all reduced or all kept are merged first,
// so every case becomes one of two loops: the innermost merged group is reduced (sum contiguous runs,
// e.g. the H*W of NCHW: the fast path) or kept (accumulate contiguous rows into a small block).
// The backward merges the same way and walks dx row by row, each row owned by one worker.
#include "kernels/cpu/reduce.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "engine/error.h"

namespace camrt {

namespace {

// Below this many input elements per chunk, waking workers (about 10 us) costs more than the work.
constexpr int64_t kMinElementsPerChunk = int64_t(1) << 15;
// Width of the accumulator block when the innermost group is kept: 64 doubles fit in registers/L1.
constexpr int64_t kKeptBlock = 64;

struct Group {
  int64_t size;
  int64_t stride;  // in elements, in the input
};

// Visits the offsets of every multi-index over `groups` (row-major, last group fastest).
class OffsetWalker {
 public:
  explicit OffsetWalker(const std::vector<Group>& groups) : groups_(groups), idx_(groups.size(), 0) {}
  int64_t offset() const { return offset_; }
  void next() {
    for (size_t i = groups_.size(); i-- > 0;) {
      offset_ += groups_[i].stride;
      if (++idx_[i] < groups_[i].size) return;
      offset_ -= groups_[i].stride * groups_[i].size;
      idx_[i] = 0;
    }
  }

 private:
  const std::vector<Group>& groups_;
  std::vector<int64_t> idx_;
  int64_t offset_ = 0;
};

// Input offset of the index-th multi-index over `groups` (row-major).
int64_t offset_of(int64_t index, const std::vector<Group>& groups) {
  int64_t offset = 0;
  for (size_t i = groups.size(); i-- > 0;) {
    offset += (index % groups[i].size) * groups[i].stride;
    index /= groups[i].size;
  }
  return offset;
}

int64_t product(const std::vector<Group>& groups) {
  int64_t n = 1;
  for (const Group& g : groups) n *= g.size;
  return n;
}

}  // namespace

double sum_f32(const float* x, int64_t n) {
  // Four independent accumulators let the compiler vectorize without reassociating a single chain.
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += x[i];
    s1 += x[i + 1];
    s2 += x[i + 2];
    s3 += x[i + 3];
  }
  for (; i < n; ++i) s0 += x[i];
  return (s0 + s1) + (s2 + s3);
}

void reduce_mean_forward(float* out, const float* in, const std::vector<int64_t>& in_shape,
                         const std::vector<int64_t>& axes, ThreadPool& pool) {
  const int64_t rank = static_cast<int64_t>(in_shape.size());
  std::vector<bool> reduced(in_shape.size(), false);
  for (int64_t a : axes) {
    CAMRT_CHECK(a >= 0 && a < rank, "reduce_mean_forward: axis " << a << " out of range for rank " << rank);
    reduced[static_cast<size_t>(a)] = true;
  }
  int64_t out_numel = 1, count = 1;
  for (int64_t d = 0; d < rank; ++d) (reduced[d] ? count : out_numel) *= in_shape[d];
  if (out_numel == 0) return;
  if (count == 0) {
    std::fill(out, out + out_numel, std::numeric_limits<float>::quiet_NaN());
    return;
  }
  if (count == 1) {  // nothing to average: the data is already laid out as the output
    std::memcpy(out, in, static_cast<size_t>(out_numel) * sizeof(float));
    return;
  }

  // Merge runs of reduced / kept dims; size-1 dims do not affect the layout and are dropped.
  struct Run {
    int64_t size;
    bool reduced;
  };
  std::vector<Run> runs;
  for (int64_t d = 0; d < rank; ++d) {
    if (in_shape[d] == 1) continue;
    if (!runs.empty() && runs.back().reduced == reduced[d])
      runs.back().size *= in_shape[d];
    else
      runs.push_back({in_shape[d], reduced[d]});
  }
  std::vector<Group> kept, summed;  // strides filled from the innermost run outwards
  {
    int64_t stride = 1;
    std::vector<std::pair<Group, bool>> groups(runs.size());
    for (size_t i = runs.size(); i-- > 0;) {
      groups[i] = {{runs[i].size, stride}, runs[i].reduced};
      stride *= runs[i].size;
    }
    for (const auto& [g, is_reduced] : groups) (is_reduced ? summed : kept).push_back(g);
  }
  const double inv_count = 1.0 / static_cast<double>(count);

  if (runs.back().reduced) {
    // Innermost run reduced: each output sums contiguous runs of `inner` values (NCHW over H, W: one run).
    const int64_t inner = summed.back().size;
    summed.pop_back();
    const int64_t runs_per_output = product(summed);
    const int64_t min_chunk = std::max<int64_t>(1, kMinElementsPerChunk / count);
    pool.parallel_for(out_numel, [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o) {
        const float* base = in + offset_of(o, kept);
        OffsetWalker walk(summed);
        double sum = 0;
        for (int64_t r = 0; r < runs_per_output; ++r, walk.next()) sum += sum_f32(base + walk.offset(), inner);
        out[o] = static_cast<float>(sum * inv_count);
      }
    }, min_chunk);
    return;
  }

  // Innermost run kept: each output row of `inner` values accumulates whole input rows, a block at a time.
  const int64_t inner = kept.back().size;
  kept.pop_back();
  const int64_t outer = out_numel / inner;
  const int64_t blocks = (inner + kKeptBlock - 1) / kKeptBlock;
  const int64_t min_chunk = std::max<int64_t>(1, kMinElementsPerChunk / (count * std::min(inner, kKeptBlock)));
  pool.parallel_for(outer * blocks, [&](int64_t begin, int64_t end) {
    double acc[kKeptBlock];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item / blocks, j0 = (item % blocks) * kKeptBlock;
      const int64_t width = std::min(kKeptBlock, inner - j0);
      const float* base = in + offset_of(row, kept) + j0;
      std::fill(acc, acc + width, 0.0);
      OffsetWalker walk(summed);
      for (int64_t r = 0; r < count; ++r, walk.next()) {
        const float* p = base + walk.offset();
        for (int64_t j = 0; j < width; ++j) acc[j] += p[j];
      }
      float* dst = out + row * inner + j0;
      for (int64_t j = 0; j < width; ++j) dst[j] = static_cast<float>(acc[j] * inv_count);
    }
  }, min_chunk);
}

void reduce_mean_backward(float* dx, const float* dy, const std::vector<int64_t>& in_shape,
                          const std::vector<int64_t>& axes, ThreadPool& pool) {
  const int64_t rank = static_cast<int64_t>(in_shape.size());
  std::vector<bool> reduced(in_shape.size(), false);
  for (int64_t a : axes) {
    CAMRT_CHECK(a >= 0 && a < rank, "reduce_mean_backward: axis " << a << " out of range for rank " << rank);
    reduced[static_cast<size_t>(a)] = true;
  }
  int64_t numel = 1, count = 1;
  for (int64_t d = 0; d < rank; ++d) {
    numel *= in_shape[d];
    if (reduced[d]) count *= in_shape[d];
  }
  if (numel == 0) return;  // count > 0 from here on
  const float inv_count = static_cast<float>(1.0 / static_cast<double>(count));

  // Merged runs as in the forward; dy_stride is the run's stride in dy (0 for a reduced run: broadcast).
  struct Run {
    int64_t size;
    bool reduced;
    int64_t dy_stride;
  };
  std::vector<Run> runs;
  for (int64_t d = 0; d < rank; ++d) {
    if (in_shape[d] == 1) continue;
    if (!runs.empty() && runs.back().reduced == reduced[d])
      runs.back().size *= in_shape[d];
    else
      runs.push_back({in_shape[d], reduced[d], 0});
  }
  if (runs.empty()) runs.push_back({1, false, 0});  // a single element
  int64_t stride = 1;
  for (size_t i = runs.size(); i-- > 0;) {
    if (runs[i].reduced) continue;
    runs[i].dy_stride = stride;
    stride *= runs[i].size;
  }
  const Run inner = runs.back();
  runs.pop_back();
  const int64_t rows = numel / inner.size;
  pool.parallel_for(rows, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      int64_t rest = row, dy_offset = 0;
      for (size_t i = runs.size(); i-- > 0;) {
        dy_offset += (rest % runs[i].size) * runs[i].dy_stride;
        rest /= runs[i].size;
      }
      float* g_in = dx + row * inner.size;
      if (inner.reduced) {  // the whole row is one output's window
        const float share = dy[dy_offset] * inv_count;
        for (int64_t j = 0; j < inner.size; ++j) g_in[j] += share;
      } else {  // the row lines up with a row of dy
        const float* g_out = dy + dy_offset;
        for (int64_t j = 0; j < inner.size; ++j) g_in[j] += g_out[j] * inv_count;
      }
    }
  }, std::max<int64_t>(1, kMinElementsPerChunk / inner.size));
}

}  // namespace camrt
