// Single-precision GEMM for the CPU backend: C = act(alpha * op(A) * op(B) + beta * C + bias), row-major,
// cache-blocked GotoBLAS-style (packed A and B panels, a register-blocked micro-kernel) and threaded over
// tiles of C. All scratch memory comes from the caller's workspace (gemm_workspace_bytes): no allocation.
#pragma once
#include <cstddef>
#include <cstdint>
#include <limits>

#include "kernels/cpu/parallel.h"

namespace camrt {

// An activation applied to the final result, so Conv+ReLU (or Conv+Clip for ReLU6) costs no extra pass.
struct FusedActivation {
  enum Kind : uint8_t { kNone, kRelu, kClip };
  Kind kind = kNone;
  float min = -std::numeric_limits<float>::infinity();  // kClip lower bound
  float max = std::numeric_limits<float>::infinity();   // kClip upper bound
};

// Applied once per output element after the product and beta * C: bias_row[i] + bias_col[j], then act.
struct GemmEpilogue {
  const float* bias_row = nullptr;  // (M,) or null: one bias per row (conv: per output channel)
  const float* bias_col = nullptr;  // (N,) or null: one bias per column (Gemm with a (N,) C)
  FusedActivation act;
};

// Where C lives: element (i, j) is at c + i * ldc + (j / seg_cols) * seg_stride + (j % seg_cols).
// Plain matrices have one segment (seg_cols >= N); conv folds a batch into the columns, one segment per image.
struct GemmOutput {
  float* c = nullptr;
  int64_t ldc = 0;
  int64_t seg_cols = std::numeric_limits<int64_t>::max();
  int64_t seg_stride = 0;
};

// Supplies op(B) to the GEMM driver by packing a block of it: rows [k0, k0 + kc), columns [j0, j0 + nc)
// into consecutive panels of nr columns; panel p holds kc rows of nr floats (row k at dst + (p*kc + k)*nr),
// columns past nc zero-filled. dst has room for nr more floats past the last panel, which a packer may use
// as scratch (fixed-width copies). Conv implements this to do im2col straight into the packed panels.
class GemmBPacker {
 public:
  virtual ~GemmBPacker() = default;
  virtual void pack(float* dst, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int64_t nr) const = 0;
};

// B as a row-major matrix (K, N), or (N, K) if trans; optionally its columns split in segments like GemmOutput
// (column j at b + (j / seg_cols) * seg_stride + j % seg_cols): a batch of 1x1-conv inputs.
class GemmMatrixB : public GemmBPacker {
 public:
  GemmMatrixB(const float* b, int64_t ldb, bool trans, int64_t seg_cols = std::numeric_limits<int64_t>::max(),
              int64_t seg_stride = 0)
      : b_(b), ldb_(ldb), trans_(trans), seg_cols_(seg_cols), seg_stride_(seg_stride) {}
  void pack(float* dst, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int64_t nr) const override;

 private:
  const float* b_;
  int64_t ldb_;
  bool trans_;
  int64_t seg_cols_, seg_stride_;
};

// Scratch bytes gemm / gemm_packed need for these sizes with this many threads (the same value for both).
size_t gemm_workspace_bytes(int64_t m, int64_t n, int64_t k, int num_threads);

// C = act(alpha * op(A) * op(B) + beta * C + bias). beta == 0 ignores C's old contents (may be garbage).
// c: (M, N) with row stride ldc. a: (M, K) with stride lda, or (K, M) if trans_a. b: (K, N) with stride ldb,
// or (N, K) if trans_b. workspace may be null (then it is allocated here, for tools and tests); otherwise it
// must hold gemm_workspace_bytes(m, n, k, pool.num_threads()).
void gemm(float* c, int64_t ldc, const float* a, int64_t lda, bool trans_a, const float* b, int64_t ldb,
          bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, float beta, const GemmEpilogue& epilogue,
          void* workspace, size_t workspace_bytes, ThreadPool& pool);

// The driver under gemm with B given by a packer and C possibly segmented.
// a: (M, K) with stride lda, or (K, M) if trans_a.
void gemm_packed(const GemmOutput& c, const float* a, int64_t lda, bool trans_a, const GemmBPacker& b, int64_t m,
                 int64_t n, int64_t k, float alpha, float beta, const GemmEpilogue& epilogue, void* workspace,
                 size_t workspace_bytes, ThreadPool& pool);

// Name of the micro-kernel this build uses ("avx512 14x32", ...), for benchmarks and reports.
const char* gemm_kernel_name();

}  // namespace camrt
