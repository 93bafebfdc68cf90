// Row-major products on column-major cuBLAS: a row-major (R, C) matrix with leading dim ld is the column-major
// (C, R) matrix with the same ld, so C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T, i.e. cuBLAS with the
// operands swapped and m, n exchanged. Plus the epilogue, C broadcast and dC reduction kernels.
// Invariant: launchers only enqueue work on runtime.stream(); nothing here synchronizes or allocates.
#include <climits>

#include "kernels/cuda/check.h"
#include "kernels/cuda/gemm.h"

namespace camrt::cuda {

namespace {

cublasComputeType_t compute_type(Precision precision) {
  switch (precision) {
    case Precision::FP32: return CUBLAS_COMPUTE_32F;  // the handle keeps CUBLAS_DEFAULT_MATH: no TF32
    case Precision::TF32: return CUBLAS_COMPUTE_32F_FAST_TF32;
    default: return CUBLAS_COMPUTE_32F_FAST_16F;
  }
}

int to_int(int64_t v, const char* what) {
  CAMRT_CHECK(v >= 0 && v <= INT_MAX, "CUDA gemm: " << what << " = " << v << " does not fit cuBLAS's int sizes");
  return static_cast<int>(v);
}

// Leading dims as cuBLAS demands (>= max(1, rows of the column-major view)), checked here so a caller's mistake
// names the operand instead of surfacing as CUBLAS_STATUS_INVALID_VALUE. With K == 0 cuBLAS is not called and A, B
// are never read.
void check_leading_dims(int64_t ldc, int64_t lda, bool trans_a, int64_t ldb, bool trans_b, int64_t m, int64_t n,
                        int64_t k) {
  const auto at_least = [](int64_t v) { return v > 1 ? v : 1; };
  CAMRT_CHECK(ldc >= at_least(n), "CUDA gemm: ldc " << ldc << " < N " << n);
  if (k == 0) return;
  CAMRT_CHECK(lda >= at_least(trans_a ? m : k), "CUDA gemm: lda " << lda << " < " << (trans_a ? "M " : "K ") << (trans_a ? m : k));
  CAMRT_CHECK(ldb >= at_least(trans_b ? k : n), "CUDA gemm: ldb " << ldb << " < " << (trans_b ? "K " : "N ") << (trans_b ? k : n));
}

// c (m, n; row stride ldc) = act(beta * c + bias_row[i] + bias_col[j]) when scale_by_beta (K == 0: the product is
// empty), else act(c + bias_row[i] + bias_col[j]). beta == 0 never reads c.
__global__ void epilogue_kernel(float* __restrict__ c, int64_t ldc, int64_t m, int64_t n, bool scale_by_beta,
                                float beta, const float* __restrict__ bias_row, const float* __restrict__ bias_col,
                                int kind, float lo, float hi) {
  const int64_t total = m * n;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx / n, j = idx % n;
    float* p = c + i * ldc + j;
    float v = scale_by_beta ? (beta == 0.f ? 0.f : beta * *p) : *p;
    if (bias_row) v += bias_row[i];
    if (bias_col) v += bias_col[j];
    if (kind == FusedActivation::kRelu) {
      v = v > 0.f ? v : 0.f;
    } else if (kind == FusedActivation::kClip) {  // std::min(std::max(v, lo), hi), comparison for comparison
      v = v < lo ? lo : v;
      v = hi < v ? hi : v;
    }
    *p = v;
  }
}

__global__ void broadcast_matrix_kernel(float* __restrict__ y, const float* __restrict__ c, int64_t m, int64_t n,
                                        int64_t c_rows, int64_t c_cols) {
  const int64_t total = m * n;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx / n, j = idx % n;
    y[idx] = c[(c_rows == 1 ? 0 : i) * c_cols + (c_cols == 1 ? 0 : j)];
  }
}

// C as large as dy: dc += scale * dy element by element.
__global__ void add_scaled_kernel(float* __restrict__ dc, const float* __restrict__ dy, int64_t total, float scale) {
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x)
    dc[idx] += static_cast<float>(double(scale) * double(dy[idx]));
}

constexpr int kReduceThreads = 256;

// One block per element of dc (c_rows, c_cols): its threads sum the dy region that element was broadcast to,
// then a shared-memory tree adds the partial sums.
__global__ void reduce_broadcast_kernel(float* __restrict__ dc, const float* __restrict__ dy, int64_t m, int64_t n,
                                        int64_t c_rows, int64_t c_cols, float scale) {
  __shared__ double partial[kReduceThreads];
  for (int64_t e = blockIdx.x; e < c_rows * c_cols; e += gridDim.x) {
    const int64_t r = e / c_cols, col = e % c_cols;
    const int64_t i0 = c_rows == 1 ? 0 : r, rows = c_rows == 1 ? m : 1;
    const int64_t j0 = c_cols == 1 ? 0 : col, cols = c_cols == 1 ? n : 1;
    double sum = 0;
    for (int64_t t = threadIdx.x; t < rows * cols; t += blockDim.x)
      sum += dy[(i0 + t / cols) * n + j0 + t % cols];
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
      if (int(threadIdx.x) < half) partial[threadIdx.x] += partial[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0) dc[e] += static_cast<float>(double(scale) * partial[0]);
    __syncthreads();  // partial[] is reused by the block's next element
  }
}

}  // namespace

void gemm(float* c, int64_t ldc, const float* a, int64_t lda, bool trans_a, const float* b, int64_t ldb, bool trans_b,
          int64_t m, int64_t n, int64_t k, float alpha, float beta, const GemmEpilogue& epilogue, CudaRuntime& runtime) {
  CAMRT_CHECK(m >= 0 && n >= 0 && k >= 0, "CUDA gemm: negative size (" << m << ", " << n << ", " << k << ")");
  if (m == 0 || n == 0) return;
  check_leading_dims(ldc, lda, trans_a, ldb, trans_b, m, n, k);
  cudaStream_t stream = runtime.stream();
  const bool has_epilogue = epilogue.bias_row || epilogue.bias_col || epilogue.act.kind != FusedActivation::kNone;
  if (k > 0) {
    // The handle is bound to runtime.stream() once, in the runtime's constructor: cublasSetStream here would also
    // reset cuBLAS to its own workspace pool (cuBLAS docs), which allocates inside CUDA graph captures.
    cublasHandle_t handle = runtime.cublas();
    CAMRT_CUBLAS_CHECK(cublasGemmEx(handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                                    to_int(n, "N"), to_int(m, "M"), to_int(k, "K"), &alpha, b, CUDA_R_32F,
                                    to_int(ldb, "ldb"), a, CUDA_R_32F, to_int(lda, "lda"), &beta, c, CUDA_R_32F,
                                    to_int(ldc, "ldc"), compute_type(runtime.precision()), CUBLAS_GEMM_DEFAULT));
    if (!has_epilogue) return;
  }
  // K == 0 (C = beta * C, what BLAS defines; cuBLAS's handling of k = 0 is not documented) or the epilogue.
  epilogue_kernel<<<grid_for(m * n), 256, 0, stream>>>(c, ldc, m, n, k == 0, beta, epilogue.bias_row,
                                                        epilogue.bias_col, int(epilogue.act.kind), epilogue.act.min,
                                                        epilogue.act.max);
  CAMRT_CUDA_CHECK_LAUNCH("epilogue_kernel");
}

void gemm_strided_batched(float* c, int64_t ldc, int64_t stride_c, const float* a, int64_t lda, int64_t stride_a,
                          bool trans_a, const float* b, int64_t ldb, int64_t stride_b, bool trans_b, int64_t m, int64_t n,
                          int64_t k, int64_t batch, float alpha, float beta, CudaRuntime& runtime) {
  CAMRT_CHECK(batch >= 0, "CUDA gemm: negative batch " << batch);
  if (batch == 0 || m == 0 || n == 0) return;
  if (batch == 1 || k == 0) {  // one product, or K == 0 (no product): per matrix through gemm's k = 0 handling
    for (int64_t t = 0; t < batch; ++t)
      gemm(c + t * stride_c, ldc, a + t * stride_a, lda, trans_a, b + t * stride_b, ldb, trans_b, m, n, k, alpha, beta,
           GemmEpilogue{}, runtime);
    return;
  }
  CAMRT_CHECK(stride_c != 0, "CUDA gemm: batched products into one shared C (stride_c = 0) would race");
  CAMRT_CHECK(stride_a >= 0 && stride_b >= 0 && stride_c > 0, "CUDA gemm: negative batch stride");
  check_leading_dims(ldc, lda, trans_a, ldb, trans_b, m, n, k);
  cublasHandle_t handle = runtime.cublas();  // bound to runtime.stream() once (see gemm)
  CAMRT_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, to_int(n, "N"), to_int(m, "M"),
      to_int(k, "K"), &alpha, b, CUDA_R_32F, to_int(ldb, "ldb"), static_cast<long long>(stride_b), a, CUDA_R_32F,
      to_int(lda, "lda"), static_cast<long long>(stride_a), &beta, c, CUDA_R_32F, to_int(ldc, "ldc"),
      static_cast<long long>(stride_c), to_int(batch, "batch"), compute_type(runtime.precision()),
      CUBLAS_GEMM_DEFAULT));
}

void broadcast_matrix(float* y, const float* c, int64_t m, int64_t n, int64_t c_rows, int64_t c_cols,
                      cudaStream_t stream) {
  CAMRT_CHECK((c_rows == 1 || c_rows == m) && (c_cols == 1 || c_cols == n),
              "CUDA gemm: C (" << c_rows << ", " << c_cols << ") does not broadcast to (" << m << ", " << n << ")");
  if (m * n == 0) return;
  broadcast_matrix_kernel<<<grid_for(m * n), 256, 0, stream>>>(y, c, m, n, c_rows, c_cols);
  CAMRT_CUDA_CHECK_LAUNCH("broadcast_matrix_kernel");
}

void broadcast_matrix_backward(float* dc, const float* dy, int64_t m, int64_t n, int64_t c_rows, int64_t c_cols,
                               float scale, cudaStream_t stream) {
  CAMRT_CHECK((c_rows == 1 || c_rows == m) && (c_cols == 1 || c_cols == n),
              "CUDA gemm: C (" << c_rows << ", " << c_cols << ") does not broadcast to (" << m << ", " << n << ")");
  const int64_t elements = c_rows * c_cols;
  if (elements == 0) return;
  if (elements == m * n) {  // no broadcast (includes m * n == 1)
    add_scaled_kernel<<<grid_for(elements), 256, 0, stream>>>(dc, dy, elements, scale);
    CAMRT_CUDA_CHECK_LAUNCH("add_scaled_kernel");
    return;
  }
  const int64_t blocks = elements < 65535 * 8 ? elements : 65535 * 8;
  reduce_broadcast_kernel<<<static_cast<unsigned>(blocks), kReduceThreads, 0, stream>>>(dc, dy, m, n, c_rows, c_cols,
                                                                                       scale);
  CAMRT_CUDA_CHECK_LAUNCH("reduce_broadcast_kernel");
}

}  // namespace camrt::cuda
