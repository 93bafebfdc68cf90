// CUDA mean reduction over any set of axes, forward and backward: the twins of kernels/cpu/reduce.h (same
// arguments and meaning), a stream instead of the ThreadPool. Shapes and axes are host vectors; only the data
// pointers are device memory. Sums accumulate in double as on the CPU; every output is written by one thread
// (or one fixed group of threads), so results are bit-reproducible from run to run.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/cuda/runtime.h"

namespace camrt::cuda {

// Most runs of alternately reduced / kept dims a shape may split into (adjacent dims of one kind merge and
// size-1 dims drop out, so this allows ranks far beyond any CNN's).
constexpr int kMaxReduceRuns = 16;

// Mean of `in` over `axes` (sorted, unique, each in [0, rank)); `out` holds the kept dims in order (keepdims
// only changes the shape). A mean over zero elements is NaN; empty `axes` copies the input.
void reduce_mean_forward(float* out,      // (kept dims of in_shape)
                         const float* in,  // in_shape
                         const std::vector<int64_t>& in_shape, const std::vector<int64_t>& axes, cudaStream_t stream);

// dx += dy broadcast back over `axes`, times 1 / (reduced count).
void reduce_mean_backward(float* dx,        // in_shape
                          const float* dy,  // (kept dims of in_shape)
                          const std::vector<int64_t>& in_shape, const std::vector<int64_t>& axes, cudaStream_t stream);

}  // namespace camrt::cuda
