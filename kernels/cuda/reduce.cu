// CUDA mean reduction, the twin of kernels/cpu/reduce.cpp. Adjacent dims that are all reduced or all kept are
// merged first, as on the CPU, and the innermost merged run decides the kernel: reduced (e.g. H*W of NCHW) ->
// a warp or block per output sums its elements with lanes on consecutive addresses; kept -> one thread per
// output walks the reduced positions in the CPU's order, consecutive threads on consecutive addresses. The
// backward gives each dx element one thread: no atomics, bit-reproducible.
#include <cmath>

#include "kernels/cuda/check.h"
#include "kernels/cuda/reduce.h"

namespace camrt::cuda {

namespace {

constexpr int kThreads = 256;
// Outputs averaging at least this many elements are summed by a whole block instead of one warp.
constexpr int64_t kBlockPerOutputCount = 2048;

// Row-major index groups over the input: group i has `size` positions `stride` elements apart (for the
// backward, `stride` is the group's stride in dy, 0 for a reduced group).
struct Runs {
  int n = 0;
  int64_t size[kMaxReduceRuns];
  int64_t stride[kMaxReduceRuns];
};

__device__ __forceinline__ int64_t offset_of(int64_t index, const Runs& runs) {
  int64_t offset = 0;
  for (int i = runs.n - 1; i >= 0; --i) {
    offset += (index % runs.size[i]) * runs.stride[i];
    index /= runs.size[i];
  }
  return offset;
}

__device__ __forceinline__ int64_t grid_start() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_step() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

__device__ __forceinline__ double warp_sum(double s) {
  for (int offset = 16; offset > 0; offset /= 2) s += __shfl_down_sync(0xffffffffu, s, offset);
  return s;  // complete in lane 0
}

// Innermost run reduced: output o averages `count` elements, the r-th at kept(o) + outer(r / inner) + r % inner.
// kGroup threads (a warp or the block) per output; the loop over outputs is uniform across the block.
template <int kGroup>
__global__ void reduce_inner_kernel(float* __restrict__ out, const float* __restrict__ in, const Runs kept,
                                    const Runs summed_outer, int64_t inner, int64_t count, int64_t out_numel,
                                    double inv_count) {
  constexpr int kGroupsPerBlock = kThreads / kGroup;
  constexpr int kWarps = kThreads / 32;
  __shared__ double partial[kWarps];
  const int lane = static_cast<int>(threadIdx.x) % kGroup, group = static_cast<int>(threadIdx.x) / kGroup;
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * kGroupsPerBlock; first < out_numel;
       first += static_cast<int64_t>(gridDim.x) * kGroupsPerBlock) {
    const int64_t o = first + group;
    double s = 0;
    if (o < out_numel) {
      const float* base = in + offset_of(o, kept);
      for (int64_t r = lane; r < count; r += kGroup) s += base[offset_of(r / inner, summed_outer) + r % inner];
    }
    s = warp_sum(s);
    if (kGroup > 32) {
      if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = s;
      __syncthreads();
      if (threadIdx.x == 0) {
        s = 0;
        for (int w = 0; w < kWarps; ++w) s += partial[w];  // fixed order: deterministic
      }
      __syncthreads();  // partial is rewritten for the next output
    }
    if (lane == 0 && o < out_numel) out[o] = static_cast<float>(s * inv_count);
  }
}

// Innermost run kept (`inner` wide): one thread per output sums its `count` reduced positions in row-major
// order over `summed`, accumulating in double exactly as the CPU kernel does.
__global__ void reduce_outer_kernel(float* __restrict__ out, const float* __restrict__ in, const Runs kept_outer,
                                    const Runs summed, int64_t inner, int64_t count, int64_t out_numel, double inv_count) {
  for (int64_t o = grid_start(); o < out_numel; o += grid_step()) {
    const float* base = in + offset_of(o / inner, kept_outer) + o % inner;
    int64_t index[kMaxReduceRuns];
    for (int i = 0; i < summed.n; ++i) index[i] = 0;
    int64_t offset = 0;
    double s = 0;
    for (int64_t r = 0; r < count; ++r) {
      s += base[offset];
      for (int i = summed.n - 1; i >= 0; --i) {  // next row-major position
        offset += summed.stride[i];
        if (++index[i] < summed.size[i]) break;
        offset -= summed.stride[i] * summed.size[i];
        index[i] = 0;
      }
    }
    out[o] = static_cast<float>(s * inv_count);
  }
}

__global__ void fill_kernel(float* __restrict__ out, float value, int64_t n) {
  for (int64_t i = grid_start(); i < n; i += grid_step()) out[i] = value;
}

// dx[i] += dy[offset of i's kept position] * inv_count. Explicit roundings: no fused multiply-add, so the
// product is rounded as in the CPU expression.
__global__ void reduce_backward_kernel(float* __restrict__ dx, const float* __restrict__ dy, const Runs runs,
                                       float inv_count, int64_t numel) {
  for (int64_t i = grid_start(); i < numel; i += grid_step())
    dx[i] = __fadd_rn(dx[i], __fmul_rn(dy[offset_of(i, runs)], inv_count));
}

// Reduced flags per dim; throws naming the launcher on a bad axis.
std::vector<bool> reduced_dims(const char* who, const std::vector<int64_t>& in_shape, const std::vector<int64_t>& axes) {
  const int64_t rank = static_cast<int64_t>(in_shape.size());
  std::vector<bool> reduced(in_shape.size(), false);
  for (int64_t a : axes) {
    CAMRT_CHECK(a >= 0 && a < rank, who << ": axis " << a << " out of range for rank " << rank);
    reduced[static_cast<size_t>(a)] = true;
  }
  return reduced;
}

struct Run {
  int64_t size;
  bool reduced;
};

// Adjacent dims of one kind merged, size-1 dims dropped (they do not affect the layout).
std::vector<Run> merged_runs(const char* who, const std::vector<int64_t>& in_shape, const std::vector<bool>& reduced) {
  std::vector<Run> runs;
  for (size_t d = 0; d < in_shape.size(); ++d) {
    if (in_shape[d] == 1) continue;
    if (!runs.empty() && runs.back().reduced == reduced[d])
      runs.back().size *= in_shape[d];
    else
      runs.push_back({in_shape[d], reduced[d]});
  }
  CAMRT_CHECK(runs.size() <= static_cast<size_t>(kMaxReduceRuns),
              who << ": the reduced and kept axes split the shape into " << runs.size() << " runs, at most "
                  << kMaxReduceRuns << " are supported");
  return runs;
}

void push(Runs& runs, int64_t size, int64_t stride) {
  runs.size[runs.n] = size;
  runs.stride[runs.n] = stride;
  ++runs.n;
}

}  // namespace

void reduce_mean_forward(float* out, const float* in, const std::vector<int64_t>& in_shape,
                         const std::vector<int64_t>& axes, cudaStream_t stream) {
  const char* who = "cuda::reduce_mean_forward";
  const std::vector<bool> reduced = reduced_dims(who, in_shape, axes);
  int64_t out_numel = 1, count = 1;
  for (size_t d = 0; d < in_shape.size(); ++d) (reduced[d] ? count : out_numel) *= in_shape[d];
  if (out_numel == 0) return;
  if (count == 0) {
    fill_kernel<<<grid_for(out_numel), kThreads, 0, stream>>>(out, NAN, out_numel);
    CAMRT_CUDA_CHECK_LAUNCH("reduce_mean fill_kernel");
    return;
  }
  if (count == 1) {  // nothing to average: the data is already laid out as the output
    if (out != in)
      CAMRT_CUDA_CHECK(cudaMemcpyAsync(out, in, static_cast<size_t>(out_numel) * sizeof(float), cudaMemcpyDeviceToDevice,
                                       stream));
    return;
  }
  const std::vector<Run> runs = merged_runs(who, in_shape, reduced);
  // Input strides, filled from the innermost run outwards; kept and summed keep their outer-to-inner order.
  std::vector<int64_t> strides(runs.size());
  int64_t stride = 1;
  for (size_t i = runs.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= runs[i].size;
  }
  Runs kept, summed;
  for (size_t i = 0; i < runs.size(); ++i) push(runs[i].reduced ? summed : kept, runs[i].size, strides[i]);
  const double inv_count = 1.0 / static_cast<double>(count);

  if (runs.back().reduced) {
    const int64_t inner = summed.size[--summed.n];  // the contiguous innermost run; summed keeps the outer ones
    if (count >= kBlockPerOutputCount)
      reduce_inner_kernel<kThreads><<<grid_for(out_numel * kThreads), kThreads, 0, stream>>>(out, in, kept, summed, inner,
                                                                                             count, out_numel, inv_count);
    else
      reduce_inner_kernel<32><<<grid_for(out_numel * 32), kThreads, 0, stream>>>(out, in, kept, summed, inner, count,
                                                                                 out_numel, inv_count);
    CAMRT_CUDA_CHECK_LAUNCH("reduce_inner_kernel");
    return;
  }
  const int64_t inner = kept.size[--kept.n];
  reduce_outer_kernel<<<grid_for(out_numel), kThreads, 0, stream>>>(out, in, kept, summed, inner, count, out_numel,
                                                                    inv_count);
  CAMRT_CUDA_CHECK_LAUNCH("reduce_outer_kernel");
}

void reduce_mean_backward(float* dx, const float* dy, const std::vector<int64_t>& in_shape,
                          const std::vector<int64_t>& axes, cudaStream_t stream) {
  const char* who = "cuda::reduce_mean_backward";
  const std::vector<bool> reduced = reduced_dims(who, in_shape, axes);
  int64_t numel = 1, count = 1;
  for (size_t d = 0; d < in_shape.size(); ++d) {
    numel *= in_shape[d];
    if (reduced[d]) count *= in_shape[d];
  }
  if (numel == 0) return;  // count > 0 from here on
  const float inv_count = static_cast<float>(1.0 / static_cast<double>(count));
  const std::vector<Run> runs = merged_runs(who, in_shape, reduced);
  // Each run's stride in dy: kept runs are laid out in order, reduced runs broadcast (stride 0).
  std::vector<int64_t> dy_strides(runs.size(), 0);
  int64_t stride = 1;
  for (size_t i = runs.size(); i-- > 0;) {
    if (runs[i].reduced) continue;
    dy_strides[i] = stride;
    stride *= runs[i].size;
  }
  Runs map;
  for (size_t i = 0; i < runs.size(); ++i) push(map, runs[i].size, dy_strides[i]);
  reduce_backward_kernel<<<grid_for(numel), kThreads, 0, stream>>>(dx, dy, map, inv_count, numel);
  CAMRT_CUDA_CHECK_LAUNCH("reduce_backward_kernel");
}

}  // namespace camrt::cuda
