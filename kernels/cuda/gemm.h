// CUDA matrix products on cuBLAS for Gemm / MatMul and their backward: row-major C = act(alpha op(A) op(B) + beta C
// + bias) as the CPU gemm (kernels/cpu/gemm.h), a strided-batched form for MatMul's batch dims, and the broadcast of
// Gemm's C and its gradient. Precision follows runtime.precision(): fp32 (no TF32), tf32, or fp16 inputs to the
// tensor cores, always with fp32 storage and accumulation. cuBLAS's own workspace (owned by its handle) is used;
// callers provide none.
#pragma once
#include <cstdint>

#include "kernels/cpu/gemm.h"  // GemmEpilogue, FusedActivation (plain structs, shared with the CPU backend)
#include "kernels/cuda/runtime.h"

namespace camrt::cuda {

// C = act(alpha * op(A) * op(B) + beta * C + bias), row-major, as the CPU gemm. beta == 0 ignores C's old contents.
// c: (M, N) with row stride ldc. a: (M, K) with stride lda, or (K, M) if trans_a. b: (K, N) with stride ldb,
// or (N, K) if trans_b. epilogue.bias_row: (M,) or null, bias_col: (N,) or null (device pointers).
// Asynchronous on runtime.stream().
void gemm(float* c, int64_t ldc, const float* a, int64_t lda, bool trans_a, const float* b, int64_t ldb, bool trans_b,
          int64_t m, int64_t n, int64_t k, float alpha, float beta, const GemmEpilogue& epilogue, CudaRuntime& runtime);

// `batch` independent products C_t = alpha * op(A_t) * op(B_t) + beta * C_t (no epilogue), t < batch, with
// A_t = a + t * stride_a, B_t = b + t * stride_b, C_t = c + t * stride_c (element strides). stride_a or stride_b
// may be 0 (one operand shared by every t); stride_c must not be when batch > 1, since the products run concurrently.
// Matrix shapes and leading dims as in gemm.
void gemm_strided_batched(float* c, int64_t ldc, int64_t stride_c, const float* a, int64_t lda, int64_t stride_a,
                          bool trans_a, const float* b, int64_t ldb, int64_t stride_b, bool trans_b, int64_t m, int64_t n,
                          int64_t k, int64_t batch, float alpha, float beta, CudaRuntime& runtime);

// y (m, n) = c broadcast: c is (c_rows, c_cols), c_rows 1 or m, c_cols 1 or n. Asynchronous on stream.
void broadcast_matrix(float* y, const float* c, int64_t m, int64_t n, int64_t c_rows, int64_t c_cols,
                      cudaStream_t stream);

// dc (c_rows, c_cols) += scale * dy (m, n) summed over the dims c broadcasts along (Gemm's dC). Partial sums in
// double, as the CPU path. Asynchronous on stream.
void broadcast_matrix_backward(float* dc, const float* dy, int64_t m, int64_t n, int64_t c_rows, int64_t c_cols,
                               float scale, cudaStream_t stream);

}  // namespace camrt::cuda
