// Softmax kernels on the GPU. inner == 1 (rows, e.g. logits): one block per row, the max, the sum and the dot
// product reduced in a fixed order (warp shuffles, then warp 0). inner > 1: one thread per (outer, column) walks
// dim serially, in the CPU twin's order; neighbouring threads read neighbouring columns (coalesced).
// In-place forward is safe: a row's block finishes every read (two reductions end in __syncthreads) before it
// writes, and a column's thread reads each x before writing that y.
#include "kernels/cuda/softmax.h"

#include <algorithm>

#include "kernels/cuda/check.h"

namespace camrt::cuda {

namespace {

constexpr int kThreads = 256;
// Blocks a row launch uses at most; more rows are covered by the grid-stride loop.
constexpr int64_t kMaxBlocks = 65535 * 8;

// Fixed-order block reduction (blockDim.x a multiple of 32, `shared` 32 slots); every thread gets the result.
// Combine is max or sum; `identity` pads the warp-0 pass.
template <typename T, typename Combine>
__device__ T block_reduce(T v, T identity, T* shared, Combine combine) {
  for (int offset = 16; offset > 0; offset >>= 1) v = combine(v, __shfl_down_sync(0xffffffffu, v, offset));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int warps = static_cast<int>(blockDim.x >> 5);
    v = lane < warps ? shared[lane] : identity;
    for (int offset = 16; offset > 0; offset >>= 1) v = combine(v, __shfl_down_sync(0xffffffffu, v, offset));
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  v = shared[0];
  __syncthreads();  // all threads have read shared[0] before a next reduction overwrites it
  return v;
}

// std::max as the CPU twin calls it: max(m, v) = m < v ? v : m.
struct MaxOp {
  __device__ float operator()(float m, float v) const { return m < v ? v : m; }
};
struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};

__global__ void softmax_rows_kernel(float* y, const float* x, int64_t outer, int64_t dim) {
  __shared__ float shared[32];
  for (int64_t row = blockIdx.x; row < outer; row += gridDim.x) {  // uniform per block: syncs are safe
    const float* xr = x + row * dim;
    float* yr = y + row * dim;
    float m = -INFINITY;
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) m = MaxOp()(m, xr[d]);
    m = block_reduce(m, -INFINITY, shared, MaxOp());
    float sum = 0.f;
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) sum += expf(__fsub_rn(xr[d], m));
    sum = block_reduce(sum, 0.f, shared, SumOp());
    const float inv = 1.f / sum;
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) yr[d] = __fmul_rn(expf(__fsub_rn(xr[d], m)), inv);
  }
}

// Thread per (outer, column); the same three passes as the CPU twin's softmax_columns.
__global__ void softmax_columns_kernel(float* y, const float* x, int64_t outer, int64_t dim, int64_t inner) {
  const int64_t columns = outer * inner;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < columns; t += stride) {
    const int64_t o = t / inner, c = t - o * inner;
    const float* xc = x + o * dim * inner + c;
    float* yc = y + o * dim * inner + c;
    float m = -INFINITY;
    for (int64_t d = 0; d < dim; ++d) m = MaxOp()(m, xc[d * inner]);
    float sum = 0.f;
    for (int64_t d = 0; d < dim; ++d) sum = __fadd_rn(sum, expf(__fsub_rn(xc[d * inner], m)));
    const float inv = 1.f / sum;
    for (int64_t d = 0; d < dim; ++d) yc[d * inner] = __fmul_rn(expf(__fsub_rn(xc[d * inner], m)), inv);
  }
}

__global__ void softmax_backward_rows_kernel(float* dx, const float* dy, const float* y, int64_t outer, int64_t dim) {
  __shared__ double shared[32];
  for (int64_t row = blockIdx.x; row < outer; row += gridDim.x) {
    const int64_t base = row * dim;
    double dot = 0;
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x)
      dot += static_cast<double>(dy[base + d]) * static_cast<double>(y[base + d]);  // exact: 24x24 bits fit 53
    dot = block_reduce(dot, 0.0, shared, SumOp());
    const float s = static_cast<float>(dot);
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x)
      dx[base + d] = __fadd_rn(dx[base + d], __fmul_rn(y[base + d], __fsub_rn(dy[base + d], s)));
  }
}

__global__ void softmax_backward_columns_kernel(float* dx, const float* dy, const float* y, int64_t outer, int64_t dim,
                                                int64_t inner) {
  const int64_t columns = outer * inner;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < columns; t += stride) {
    const int64_t o = t / inner, c = t - o * inner;
    const int64_t base = o * dim * inner + c;
    double dot = 0;
    for (int64_t d = 0; d < dim; ++d)
      dot = __dadd_rn(dot, static_cast<double>(dy[base + d * inner]) * static_cast<double>(y[base + d * inner]));
    const float s = static_cast<float>(dot);
    for (int64_t d = 0; d < dim; ++d) {
      const int64_t i = base + d * inner;
      dx[i] = __fadd_rn(dx[i], __fmul_rn(y[i], __fsub_rn(dy[i], s)));
    }
  }
}

// Threads per row block: enough warps for the row's length, at most kThreads.
int row_threads(int64_t dim) {
  if (dim >= 1024) return kThreads;
  if (dim >= 256) return 128;
  if (dim >= 64) return 64;
  return 32;
}

}  // namespace

void softmax_forward(float* y, const float* x, int64_t outer, int64_t dim, int64_t inner, cudaStream_t stream) {
  if (outer <= 0 || dim <= 0 || inner <= 0) return;
  if (inner == 1) {
    const unsigned blocks = static_cast<unsigned>(std::min(outer, kMaxBlocks));
    softmax_rows_kernel<<<blocks, row_threads(dim), 0, stream>>>(y, x, outer, dim);
    CAMRT_CUDA_CHECK_LAUNCH("softmax_rows_kernel");
    return;
  }
  softmax_columns_kernel<<<grid_for(outer * inner, kThreads), kThreads, 0, stream>>>(y, x, outer, dim, inner);
  CAMRT_CUDA_CHECK_LAUNCH("softmax_columns_kernel");
}

void softmax_backward(float* dx, const float* dy, const float* y, int64_t outer, int64_t dim, int64_t inner,
                      cudaStream_t stream) {
  if (outer <= 0 || dim <= 0 || inner <= 0) return;
  if (inner == 1) {
    const unsigned blocks = static_cast<unsigned>(std::min(outer, kMaxBlocks));
    softmax_backward_rows_kernel<<<blocks, row_threads(dim), 0, stream>>>(dx, dy, y, outer, dim);
    CAMRT_CUDA_CHECK_LAUNCH("softmax_backward_rows_kernel");
    return;
  }
  softmax_backward_columns_kernel<<<grid_for(outer * inner, kThreads), kThreads, 0, stream>>>(dx, dy, y, outer, dim,
                                                                                             inner);
  CAMRT_CUDA_CHECK_LAUNCH("softmax_backward_columns_kernel");
}

}  // namespace camrt::cuda
