// Gemm and MatMul (ONNX): shape inference, CPU forward and backward on top of kernels/cpu/gemm. Gemm's optional C
// broadcasts to (M, N); a per-column or per-row C with beta = 1 (a Linear layer's bias) rides the GEMM
// epilogue instead of a separate pass. MatMul follows numpy: 1-D operands are promoted and batch dims broadcast.
// Backward: dA, dB (when not constants) and Gemm's dC, each as accumulating GEMMs or a reduction.
// On the GPU (kernels/cuda/gemm.cu, cuBLAS) C is broadcast into the output first and scaled by beta in the product;
// MatMul's batch dims become strided-batched products, needing no workspace.
#include <algorithm>
#include <array>
#include <cstring>

#include "engine/ops/factories.h"
#include "kernels/cpu/gemm.h"
#if CAMRT_WITH_CUDA
#include "kernels/cuda/gemm.h"
#endif

namespace camrt {

namespace {

std::string where_of(const Node& node) { return "node '" + node.name + "' (" + node.op + ")"; }

class GemmOp : public Op {
 public:
  explicit GemmOp(const Node& node) : Op(node) {
    alpha_ = attr_float("alpha", 1.f);
    beta_ = attr_float("beta", 1.f);
    trans_a_ = attr_int("transA", 0) != 0;
    trans_b_ = attr_int("transB", 0) != 0;
  }

  std::vector<TensorDesc> infer(const std::vector<TensorDesc>& inputs) const override {
    expect_inputs(inputs, 2, 3);
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (!inputs[i].present) {
        CAMRT_CHECK(i == 2, where_of(node_) << ": inputs A and B are required");
        continue;
      }
      CAMRT_CHECK(inputs[i].dtype == DType::F32,
                  where_of(node_) << ": only float32 is supported, input " << i << " is " << dtype_name(inputs[i].dtype));
    }
    const Sizes z = sizes(inputs[0].shape, inputs[1].shape);
    if (inputs.size() > 2 && inputs[2].present) {
      const Shape& c = inputs[2].shape;
      bool ok = c.size() <= 2;
      // Unidirectional broadcast: C's dims, aligned right, are 1 or equal to (M, N).
      for (size_t d = 0; ok && d < c.size(); ++d) {
        const int64_t target = (c.size() - d == 1) ? z.n : z.m;
        ok = c[d] == 1 || c[d] == target;
      }
      CAMRT_CHECK(ok, where_of(node_) << ": C " << shape_str(c) << " does not broadcast to (" << z.m << ", " << z.n
                                      << ")");
    }
    TensorDesc out;
    out.shape = {z.m, z.n};
    return {out};
  }

  size_t workspace_bytes(const std::vector<TensorDesc>& inputs, const Context& ctx) const override {
    const Sizes z = sizes(inputs.at(0).shape, inputs.at(1).shape);
    if (ctx.device == Device::CUDA) return 0;  // cuBLAS works in its handle's own workspace
    return gemm_workspace_bytes(z.m, z.n, z.k, ctx.pool ? ctx.pool->num_threads() : 1);
  }

  void forward(const Context& ctx, const std::vector<const Tensor*>& inputs,
               const std::vector<Tensor*>& outputs) const override {
    const Tensor& a = *inputs.at(0);
    const Tensor& b = *inputs.at(1);
    const Tensor* c = inputs.size() > 2 ? inputs[2] : nullptr;
    float* y = outputs.at(0)->f32();  // (M, N)
    const Sizes z = sizes(a.shape, b.shape);
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      CAMRT_CHECK(ctx.cuda, where_of(node_) << ": the GPU forward needs Context::cuda");
      float beta = 0.f;
      if (c && beta_ != 0.f) {  // y = broadcast C, then y = alpha op(A) op(B) + beta y
        const Shape& cs = c->shape;
        cuda::broadcast_matrix(y, c->f32(), z.m, z.n, cs.size() == 2 ? cs[0] : 1, cs.empty() ? 1 : cs.back(),
                               ctx.cuda->stream());
        beta = beta_;
      }
      cuda::gemm(y, z.n, a.f32(), a.shape[1], trans_a_, b.f32(), b.shape[1], trans_b_, z.m, z.n, z.k, alpha_, beta,
                 GemmEpilogue{}, *ctx.cuda);
      return;
    }
#endif
    CAMRT_CHECK(ctx.device == Device::CPU && ctx.pool, where_of(node_) << ": needs the CPU backend and a thread pool");
    GemmEpilogue epi;
    float beta = 0.f;
    if (c && beta_ != 0.f) {
      const Shape& cs = c->shape;
      const int64_t c_rows = cs.size() == 2 ? cs[0] : 1, c_cols = cs.empty() ? 1 : cs.back();
      if (beta_ == 1.f && c_rows == 1 && c_cols == z.n && z.n > 1) {
        epi.bias_col = c->f32();  // (N,): a Linear layer's bias
      } else if (beta_ == 1.f && c_cols == 1 && c_rows == z.m && z.m > 1) {
        epi.bias_row = c->f32();  // (M, 1)
      } else {
        // Materialise the broadcast C in the output and let the GEMM scale it by beta.
        const float* cd = c->f32();
        for (int64_t i = 0; i < z.m; ++i)
          for (int64_t j = 0; j < z.n; ++j)
            y[i * z.n + j] = cd[(c_rows == 1 ? 0 : i) * c_cols + (c_cols == 1 ? 0 : j)];
        beta = beta_;
      }
    }
    gemm(y, z.n, a.f32(), a.shape[1], trans_a_, b.f32(), b.shape[1], trans_b_, z.m, z.n, z.k, alpha_, beta, epi,
         ctx.workspace, ctx.workspace_bytes, *ctx.pool);
  }

  // dA reads B and dB reads A; dC reads nothing. A constant operand never gets a gradient, so the other one is
  // flagged only when that gradient can be asked for (B is usually a weight: A is then not kept).
  BackwardNeeds backward_needs(const std::vector<TensorDesc>& inputs, size_t num_outputs) const override {
    BackwardNeeds needs{std::vector<bool>(inputs.size(), false), std::vector<bool>(num_outputs, false)};
    if (inputs.size() >= 2) {
      needs.inputs[0] = inputs[1].constant == nullptr;
      needs.inputs[1] = inputs[0].constant == nullptr;
    }
    return needs;
  }

  // The larger of the dA and dB products' GEMM buffers, for the operands that are not constants.
  size_t backward_workspace_bytes(const std::vector<TensorDesc>& inputs, const Context& ctx) const override {
    const Sizes z = sizes(inputs.at(0).shape, inputs.at(1).shape);
    if (ctx.device == Device::CUDA) return 0;
    const int threads = ctx.pool ? ctx.pool->num_threads() : 1;
    size_t bytes = 0;
    if (!inputs[0].constant)
      bytes = std::max(bytes, trans_a_ ? gemm_workspace_bytes(z.k, z.m, z.n, threads) : gemm_workspace_bytes(z.m, z.k, z.n, threads));
    if (!inputs[1].constant)
      bytes = std::max(bytes, trans_b_ ? gemm_workspace_bytes(z.n, z.k, z.m, threads) : gemm_workspace_bytes(z.k, z.n, z.m, threads));
    return bytes;
  }

  // Y = alpha * op(A) op(B) + beta * C:  d op(A) = alpha * dY op(B)^T,  d op(B) = alpha * op(A)^T dY,
  // dC = beta * dY summed over the dims C broadcasts along. Every product accumulates (GEMM beta = 1).
  void backward(const Context& ctx, const std::vector<const Tensor*>& inputs, const std::vector<const Tensor*>& outputs,
                const std::vector<const Tensor*>& doutputs, const std::vector<Tensor*>& dinputs) const override {
    (void)outputs;
    if (doutputs.empty() || !doutputs[0]) return;
    Tensor* da = dinputs.size() > 0 ? dinputs[0] : nullptr;
    Tensor* db = dinputs.size() > 1 ? dinputs[1] : nullptr;
    Tensor* dc = dinputs.size() > 2 ? dinputs[2] : nullptr;
    if (!da && !db && !dc) return;
    const bool on_gpu = ctx.device == Device::CUDA;
#if !CAMRT_WITH_CUDA
    CAMRT_CHECK(!on_gpu, where_of(node_) << ": this build has no CUDA backend");
#endif
    CAMRT_CHECK(on_gpu ? ctx.cuda != nullptr : ctx.pool != nullptr,
                where_of(node_) << (on_gpu ? ": the GPU backward needs Context::cuda" : ": the CPU backward needs a thread pool"));
    const Tensor& a = *inputs.at(0);
    const Tensor& b = *inputs.at(1);
    const Sizes z = sizes(a.shape, b.shape);
    const Tensor& dyt = *doutputs[0];
    CAMRT_CHECK(dyt.dtype == DType::F32 && dyt.shape.size() == 2 && dyt.shape[0] == z.m && dyt.shape[1] == z.n,
                where_of(node_) << ": output gradient " << shape_str(dyt.shape) << ", expected (" << z.m << ", " << z.n << ")");
    const float* dy = dyt.f32();  // (M, N)
    const GemmEpilogue none;
    const auto check_grad = [&](const Tensor* d, const Tensor& value, const char* name) {
      CAMRT_CHECK(d->dtype == DType::F32 && d->shape == value.shape,
                  where_of(node_) << ": gradient of " << name << " " << shape_str(d->shape) << " does not match "
                                  << shape_str(value.shape));
    };
#if CAMRT_WITH_CUDA
    if (on_gpu) {  // the same products as below, on cuBLAS
      if (da) {
        check_grad(da, a, "A");
        if (!trans_a_)
          cuda::gemm(da->f32(), z.k, dy, z.n, false, b.f32(), b.shape[1], !trans_b_, z.m, z.k, z.n, alpha_, 1.f, none,
                     *ctx.cuda);
        else
          cuda::gemm(da->f32(), z.m, b.f32(), b.shape[1], trans_b_, dy, z.n, true, z.k, z.m, z.n, alpha_, 1.f, none,
                     *ctx.cuda);
      }
      if (db) {
        check_grad(db, b, "B");
        if (!trans_b_)
          cuda::gemm(db->f32(), z.n, a.f32(), a.shape[1], !trans_a_, dy, z.n, false, z.k, z.n, z.m, alpha_, 1.f, none,
                     *ctx.cuda);
        else
          cuda::gemm(db->f32(), z.k, dy, z.n, true, a.f32(), a.shape[1], trans_a_, z.n, z.k, z.m, alpha_, 1.f, none,
                     *ctx.cuda);
      }
      if (dc && beta_ != 0.f) {
        CAMRT_CHECK(inputs.size() > 2 && inputs[2], where_of(node_) << ": gradient requested for an omitted C");
        check_grad(dc, *inputs[2], "C");
        const Shape& cs = inputs[2]->shape;
        cuda::broadcast_matrix_backward(dc->f32(), dy, z.m, z.n, cs.size() == 2 ? cs[0] : 1, cs.empty() ? 1 : cs.back(),
                                        beta_, ctx.cuda->stream());
      }
      return;
    }
#endif
    if (da) {
      check_grad(da, a, "A");
      if (!trans_a_)  // dA (M, K) += alpha * dY (M, N) x op(B)^T (N, K)
        gemm(da->f32(), z.k, dy, z.n, false, b.f32(), b.shape[1], !trans_b_, z.m, z.k, z.n, alpha_, 1.f, none,
             ctx.workspace, ctx.workspace_bytes, *ctx.pool);
      else            // dA (K, M) += alpha * op(B) (K, N) x dY^T (N, M)
        gemm(da->f32(), z.m, b.f32(), b.shape[1], trans_b_, dy, z.n, true, z.k, z.m, z.n, alpha_, 1.f, none,
             ctx.workspace, ctx.workspace_bytes, *ctx.pool);
    }
    if (db) {
      check_grad(db, b, "B");
      if (!trans_b_)  // dB (K, N) += alpha * op(A)^T (K, M) x dY (M, N)
        gemm(db->f32(), z.n, a.f32(), a.shape[1], !trans_a_, dy, z.n, false, z.k, z.n, z.m, alpha_, 1.f, none,
             ctx.workspace, ctx.workspace_bytes, *ctx.pool);
      else            // dB (N, K) += alpha * dY^T (N, M) x op(A) (M, K)
        gemm(db->f32(), z.k, dy, z.n, true, a.f32(), a.shape[1], trans_a_, z.n, z.k, z.m, alpha_, 1.f, none,
             ctx.workspace, ctx.workspace_bytes, *ctx.pool);
    }
    if (dc && beta_ != 0.f) {  // beta = 0: forward ignores C, its gradient is 0
      CAMRT_CHECK(inputs.size() > 2 && inputs[2], where_of(node_) << ": gradient requested for an omitted C");
      check_grad(dc, *inputs[2], "C");
      // C as (c_rows, c_cols) broadcast to (M, N), as in forward: (N,) and (1, N) are one row, (M, 1) one column.
      const Shape& cs = inputs[2]->shape;
      const int64_t c_rows = cs.size() == 2 ? cs[0] : 1, c_cols = cs.empty() ? 1 : cs.back();
      float* g = dc->f32();
      const double beta = beta_;
      ctx.pool->parallel_for(c_rows * c_cols, [&](int64_t begin, int64_t end) {
        for (int64_t idx = begin; idx < end; ++idx) {
          const int64_t r = idx / c_cols, col = idx % c_cols;
          const int64_t i0 = c_rows == 1 ? 0 : r, i1 = c_rows == 1 ? z.m : r + 1;
          const int64_t j0 = c_cols == 1 ? 0 : col, j1 = c_cols == 1 ? z.n : col + 1;
          double sum = 0;  // double: a scalar C sums all M * N gradients
          for (int64_t i = i0; i < i1; ++i)
            for (int64_t j = j0; j < j1; ++j) sum += dy[i * z.n + j];
          g[idx] += static_cast<float>(beta * sum);
        }
      }, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, z.m * z.n / std::max<int64_t>(1, c_rows * c_cols))));
    }
  }

 private:
  struct Sizes {
    int64_t m, n, k;
  };

  Sizes sizes(const Shape& a, const Shape& b) const {
    CAMRT_CHECK(a.size() == 2 && b.size() == 2,
                where_of(node_) << ": A " << shape_str(a) << " and B " << shape_str(b) << " must be matrices");
    const int64_t m = trans_a_ ? a[1] : a[0], ka = trans_a_ ? a[0] : a[1];
    const int64_t kb = trans_b_ ? b[1] : b[0], n = trans_b_ ? b[0] : b[1];
    CAMRT_CHECK(ka == kb, where_of(node_) << ": inner dimensions differ: A " << shape_str(a) << (trans_a_ ? " (transposed)" : "")
                                          << " has K = " << ka << ", B " << shape_str(b)
                                          << (trans_b_ ? " (transposed)" : "") << " has K = " << kb);
    return Sizes{m, n, ka};
  }

  float alpha_ = 1.f, beta_ = 1.f;
  bool trans_a_ = false, trans_b_ = false;
};

// numpy matmul: A (..., M, K) x B (..., K, N) -> (..., M, N); a 1-D A is (1, K) and a 1-D B is (K, 1), with the
// promoted dim removed from the result. Batch dims broadcast (size-1 dims repeat).
class MatMulOp : public Op {
 public:
  explicit MatMulOp(const Node& node) : Op(node) {}

  std::vector<TensorDesc> infer(const std::vector<TensorDesc>& inputs) const override {
    expect_inputs(inputs, 2, 2);
    for (const TensorDesc& t : inputs) {
      CAMRT_CHECK(t.present, where_of(node_) << ": inputs A and B are required");
      CAMRT_CHECK(t.dtype == DType::F32, where_of(node_) << ": only float32 is supported, got " << dtype_name(t.dtype));
    }
    const Plan p = plan(inputs[0].shape, inputs[1].shape);
    TensorDesc out;
    out.shape.assign(p.batch.begin(), p.batch.begin() + p.batch_rank);
    if (inputs[0].shape.size() > 1) out.shape.push_back(p.m);
    if (inputs[1].shape.size() > 1) out.shape.push_back(p.n);
    return {out};
  }

  size_t workspace_bytes(const std::vector<TensorDesc>& inputs, const Context& ctx) const override {
    const Plan p = plan(inputs.at(0).shape, inputs.at(1).shape);
    if (ctx.device == Device::CUDA) return 0;  // cuBLAS works in its handle's own workspace
    return gemm_workspace_bytes(p.fold_a_batch ? p.m * p.batch_count : p.m, p.n, p.k,
                                ctx.pool ? ctx.pool->num_threads() : 1);
  }

  void forward(const Context& ctx, const std::vector<const Tensor*>& inputs,
               const std::vector<Tensor*>& outputs) const override {
    const Plan p = plan(inputs.at(0)->shape, inputs.at(1)->shape);
    const float* a = inputs[0]->f32();
    const float* b = inputs[1]->f32();
    float* y = outputs.at(0)->f32();
    const GemmEpilogue none;
#if CAMRT_WITH_CUDA
    if (ctx.device == Device::CUDA) {
      CAMRT_CHECK(ctx.cuda, where_of(node_) << ": the GPU forward needs Context::cuda");
      if (p.batch_count == 0) return;
      if (p.fold_a_batch) {
        cuda::gemm(y, p.n, a, p.k, false, b, p.n, false, p.m * p.batch_count, p.n, p.k, 1.f, 0.f, none, *ctx.cuda);
        return;
      }
      // Y_t (M, N) = A_t (M, K) x B_t (K, N), one strided-batched product per run of the inner batch dims.
      for_each_batch_run(p, [&](int64_t a_off, int64_t b_off, int64_t y_off, const BatchRun& run) {
        cuda::gemm_strided_batched(y + y_off, p.n, p.m * p.n, a + a_off, p.k, run.a_stride, false, b + b_off, p.n,
                                   run.b_stride, false, p.m, p.n, p.k, run.count, 1.f, 0.f, *ctx.cuda);
      });
      return;
    }
#endif
    CAMRT_CHECK(ctx.device == Device::CPU && ctx.pool, where_of(node_) << ": needs the CPU backend and a thread pool");
    if (p.fold_a_batch) {
      // B has no batch dims: A's batch rows stack into one (batch * M, K) matrix.
      gemm(y, p.n, a, p.k, false, b, p.n, false, p.m * p.batch_count, p.n, p.k, 1.f, 0.f, none, ctx.workspace,
           ctx.workspace_bytes, *ctx.pool);
      return;
    }
    std::array<int64_t, kMaxBatchRank> index{};
    for (int64_t t = 0; t < p.batch_count; ++t) {
      int64_t a_off = 0, b_off = 0;
      for (size_t d = 0; d < p.batch_rank; ++d) {
        a_off += index[d] * p.a_stride[d];
        b_off += index[d] * p.b_stride[d];
      }
      gemm(y + t * p.m * p.n, p.n, a + a_off, p.k, false, b + b_off, p.n, false, p.m, p.n, p.k, 1.f, 0.f, none,
           ctx.workspace, ctx.workspace_bytes, *ctx.pool);
      for (size_t d = p.batch_rank; d-- > 0;) {  // next batch index, last dim fastest
        if (++index[d] < p.batch[d]) break;
        index[d] = 0;
      }
    }
  }

  // dA reads B and dB reads A; a constant operand never gets a gradient, so the other is flagged only when
  // that gradient can be asked for.
  BackwardNeeds backward_needs(const std::vector<TensorDesc>& inputs, size_t num_outputs) const override {
    BackwardNeeds needs{std::vector<bool>(inputs.size(), false), std::vector<bool>(num_outputs, false)};
    if (inputs.size() >= 2) {
      needs.inputs[0] = inputs[1].constant == nullptr;
      needs.inputs[1] = inputs[0].constant == nullptr;
    }
    return needs;
  }

  size_t backward_workspace_bytes(const std::vector<TensorDesc>& inputs, const Context& ctx) const override {
    const Plan p = plan(inputs.at(0).shape, inputs.at(1).shape);
    if (ctx.device == Device::CUDA) return 0;
    const int threads = ctx.pool ? ctx.pool->num_threads() : 1;
    const int64_t rows = p.fold_a_batch ? p.m * p.batch_count : p.m;
    size_t bytes = 0;
    if (!inputs[0].constant) bytes = std::max(bytes, gemm_workspace_bytes(rows, p.k, p.n, threads));
    if (!inputs[1].constant) bytes = std::max(bytes, gemm_workspace_bytes(p.k, p.n, rows, threads));
    return bytes;
  }

  // Per batch index t: dA_t += dY_t B_t^T and dB_t += A_t^T dY_t (GEMM beta = 1). A broadcast operand's block
  // is shared by several t, so its gradient sums over them by accumulating in turn; 1-D operands are their
  // promoted (1, K) / (K, 1) matrices, which have the same layout.
  void backward(const Context& ctx, const std::vector<const Tensor*>& inputs, const std::vector<const Tensor*>& outputs,
                const std::vector<const Tensor*>& doutputs, const std::vector<Tensor*>& dinputs) const override {
    (void)outputs;
    if (doutputs.empty() || !doutputs[0]) return;
    Tensor* da = dinputs.size() > 0 ? dinputs[0] : nullptr;
    Tensor* db = dinputs.size() > 1 ? dinputs[1] : nullptr;
    if (!da && !db) return;
    const bool on_gpu = ctx.device == Device::CUDA;
#if !CAMRT_WITH_CUDA
    CAMRT_CHECK(!on_gpu, where_of(node_) << ": this build has no CUDA backend");
#endif
    CAMRT_CHECK(on_gpu ? ctx.cuda != nullptr : ctx.pool != nullptr,
                where_of(node_) << (on_gpu ? ": the GPU backward needs Context::cuda" : ": the CPU backward needs a thread pool"));
    const Tensor& at = *inputs.at(0);
    const Tensor& bt = *inputs.at(1);
    const Plan p = plan(at.shape, bt.shape);
    const Tensor& dyt = *doutputs[0];
    CAMRT_CHECK(dyt.dtype == DType::F32 && dyt.numel() == p.batch_count * p.m * p.n,
                where_of(node_) << ": output gradient " << shape_str(dyt.shape) << " does not match the product of A "
                                << shape_str(at.shape) << " and B " << shape_str(bt.shape));
    const auto check_grad = [&](const Tensor* d, const Tensor& value, const char* name) {
      CAMRT_CHECK(!d || (d->dtype == DType::F32 && d->shape == value.shape),
                  where_of(node_) << ": gradient of " << name << " " << shape_str(d->shape) << " does not match "
                                  << shape_str(value.shape));
    };
    check_grad(da, at, "A");
    check_grad(db, bt, "B");
    const float* a = at.f32();
    const float* b = bt.f32();
    const float* dy = dyt.f32();
    const GemmEpilogue none;
#if CAMRT_WITH_CUDA
    if (on_gpu) {
      if (p.batch_count == 0) return;
      if (p.fold_a_batch) {  // as below
        const int64_t rows = p.m * p.batch_count;
        if (da) cuda::gemm(da->f32(), p.k, dy, p.n, false, b, p.n, true, rows, p.k, p.n, 1.f, 1.f, none, *ctx.cuda);
        if (db) cuda::gemm(db->f32(), p.n, a, p.k, true, dy, p.n, false, p.k, p.n, rows, 1.f, 1.f, none, *ctx.cuda);
        return;
      }
      // dA_t += dY_t B_t^T and dB_t += A_t^T dY_t per run of the inner batch dims. A run is one batched product
      // only when the gradient's blocks differ along it (stride != 0); an operand broadcast along the run gets one
      // accumulating product per t instead, which the stream serialises, so no two write its block at once.
      for_each_batch_run(p, [&](int64_t a_off, int64_t b_off, int64_t y_off, const BatchRun& run) {
        const float* dy_run = dy + y_off;
        if (da) {
          if (run.a_stride != 0)
            cuda::gemm_strided_batched(da->f32() + a_off, p.k, run.a_stride, dy_run, p.n, p.m * p.n, false, b + b_off,
                                       p.n, run.b_stride, true, p.m, p.k, p.n, run.count, 1.f, 1.f, *ctx.cuda);
          else
            for (int64_t t = 0; t < run.count; ++t)
              cuda::gemm(da->f32() + a_off, p.k, dy_run + t * p.m * p.n, p.n, false, b + b_off + t * run.b_stride, p.n,
                         true, p.m, p.k, p.n, 1.f, 1.f, none, *ctx.cuda);
        }
        if (db) {
          if (run.b_stride != 0)
            cuda::gemm_strided_batched(db->f32() + b_off, p.n, run.b_stride, a + a_off, p.k, run.a_stride, true, dy_run,
                                       p.n, p.m * p.n, false, p.k, p.n, p.m, run.count, 1.f, 1.f, *ctx.cuda);
          else
            for (int64_t t = 0; t < run.count; ++t)
              cuda::gemm(db->f32() + b_off, p.n, a + a_off + t * run.a_stride, p.k, true, dy_run + t * p.m * p.n, p.n,
                         false, p.k, p.n, p.m, 1.f, 1.f, none, *ctx.cuda);
        }
      });
      return;
    }
#endif
    if (p.fold_a_batch) {
      const int64_t rows = p.m * p.batch_count;  // A's batch rows stacked: (rows, K), B (K, N) shared
      if (da)  // dA (rows, K) += dY (rows, N) x B^T
        gemm(da->f32(), p.k, dy, p.n, false, b, p.n, true, rows, p.k, p.n, 1.f, 1.f, none, ctx.workspace,
             ctx.workspace_bytes, *ctx.pool);
      if (db)  // dB (K, N) += A^T (K, rows) x dY (rows, N): the sum over the batch is the GEMM's inner loop
        gemm(db->f32(), p.n, a, p.k, true, dy, p.n, false, p.k, p.n, rows, 1.f, 1.f, none, ctx.workspace,
             ctx.workspace_bytes, *ctx.pool);
      return;
    }
    std::array<int64_t, kMaxBatchRank> index{};
    for (int64_t t = 0; t < p.batch_count; ++t) {
      int64_t a_off = 0, b_off = 0;
      for (size_t d = 0; d < p.batch_rank; ++d) {
        a_off += index[d] * p.a_stride[d];
        b_off += index[d] * p.b_stride[d];
      }
      const float* dy_t = dy + t * p.m * p.n;
      if (da)  // dA_t (M, K) += dY_t (M, N) x B_t^T
        gemm(da->f32() + a_off, p.k, dy_t, p.n, false, b + b_off, p.n, true, p.m, p.k, p.n, 1.f, 1.f, none,
             ctx.workspace, ctx.workspace_bytes, *ctx.pool);
      if (db)  // dB_t (K, N) += A_t^T (K, M) x dY_t (M, N)
        gemm(db->f32() + b_off, p.n, a + a_off, p.k, true, dy_t, p.n, false, p.k, p.n, p.m, 1.f, 1.f, none,
             ctx.workspace, ctx.workspace_bytes, *ctx.pool);
      for (size_t d = p.batch_rank; d-- > 0;) {
        if (++index[d] < p.batch[d]) break;
        index[d] = 0;
      }
    }
  }

 private:
  static constexpr size_t kMaxBatchRank = 8;

  // Everything forward needs, in fixed arrays so the per-call path allocates nothing.
  struct Plan {
    int64_t m = 1, n = 1, k = 1;
    size_t batch_rank = 0;
    std::array<int64_t, kMaxBatchRank> batch{};     // broadcast batch dims of the output
    std::array<int64_t, kMaxBatchRank> a_stride{};  // element strides of A / B per batch dim (0: broadcast)
    std::array<int64_t, kMaxBatchRank> b_stride{};
    int64_t batch_count = 1;
    bool fold_a_batch = false;
  };

  Plan plan(const Shape& a, const Shape& b) const {
    CAMRT_CHECK(!a.empty() && !b.empty(),
                where_of(node_) << ": MatMul operands must have rank >= 1, got A " << shape_str(a) << " and B " << shape_str(b));
    Plan p;
    const bool a_vec = a.size() == 1, b_vec = b.size() == 1;
    p.m = a_vec ? 1 : a[a.size() - 2];
    const int64_t ka = a.back();
    const int64_t kb = b_vec ? b[0] : b[b.size() - 2];
    p.n = b_vec ? 1 : b.back();
    CAMRT_CHECK(ka == kb, where_of(node_) << ": inner dimensions differ: A " << shape_str(a) << " has K = " << ka
                                          << ", B " << shape_str(b) << " has K = " << kb);
    p.k = ka;
    const size_t a_batch = a_vec ? 0 : a.size() - 2, b_batch = b_vec ? 0 : b.size() - 2;
    p.batch_rank = std::max(a_batch, b_batch);
    CAMRT_CHECK(p.batch_rank <= kMaxBatchRank,
                where_of(node_) << ": at most " << kMaxBatchRank << " batch dims are supported");
    // Right-aligned broadcast of the batch dims; strides in elements of each operand's contiguous layout.
    int64_t a_step = p.m * p.k, b_step = p.k * p.n;
    for (size_t d = p.batch_rank; d-- > 0;) {
      const size_t from_end = p.batch_rank - d;  // 1 = innermost batch dim
      const int64_t ad = from_end <= a_batch ? a[a_batch - from_end] : 1;
      const int64_t bd = from_end <= b_batch ? b[b_batch - from_end] : 1;
      CAMRT_CHECK(ad == bd || ad == 1 || bd == 1, where_of(node_) << ": batch dims of A " << shape_str(a) << " and B "
                                                                  << shape_str(b) << " do not broadcast");
      p.batch[d] = std::max(ad, bd);
      if (ad == 0 || bd == 0) p.batch[d] = 0;
      p.a_stride[d] = ad == 1 ? 0 : a_step;
      p.b_stride[d] = bd == 1 ? 0 : b_step;
      a_step *= ad;
      b_step *= bd;
      p.batch_count *= p.batch[d];
    }
    p.fold_a_batch = b_batch == 0;
    return p;
  }

  // Batch dims as runs for strided-batched products: the innermost dims (size-1 dims dropped) merge while each
  // operand's stride stays uniform across them (contiguous, or 0 for broadcast). fn(a_off, b_off, y_off, run) is
  // called once per index of the remaining outer dims, last dim fastest; y is contiguous, so a run's output
  // stride is M * N and y_off counts whole runs.
  struct BatchRun {
    int64_t count = 1;                   // batch items in the run
    int64_t a_stride = 0, b_stride = 0;  // element strides of A and B from one item to the next (0: shared)
  };
  template <typename Fn>
  static void for_each_batch_run(const Plan& p, const Fn& fn) {
    std::array<int64_t, kMaxBatchRank> size{}, sa{}, sb{};
    size_t rank = 0;
    for (size_t d = 0; d < p.batch_rank; ++d) {
      if (p.batch[d] == 1) continue;
      size[rank] = p.batch[d];
      sa[rank] = p.a_stride[d];
      sb[rank] = p.b_stride[d];
      ++rank;
    }
    BatchRun run;
    size_t outer = rank;  // dims [0, outer) are iterated, [outer, rank) form the run
    if (rank > 0) {
      outer = rank - 1;
      run.count = size[outer];
      run.a_stride = sa[outer];
      run.b_stride = sb[outer];
      while (outer > 0 && sa[outer - 1] == run.a_stride * run.count && sb[outer - 1] == run.b_stride * run.count) {
        --outer;
        run.count *= size[outer];
      }
    }
    int64_t outer_count = 1;
    for (size_t d = 0; d < outer; ++d) outer_count *= size[d];
    std::array<int64_t, kMaxBatchRank> index{};
    for (int64_t t = 0; t < outer_count; ++t) {
      int64_t a_off = 0, b_off = 0;
      for (size_t d = 0; d < outer; ++d) {
        a_off += index[d] * sa[d];
        b_off += index[d] * sb[d];
      }
      fn(a_off, b_off, t * run.count * p.m * p.n, run);
      for (size_t d = outer; d-- > 0;) {
        if (++index[d] < size[d]) break;
        index[d] = 0;
      }
    }
  }
};

}  // namespace

std::unique_ptr<Op> make_gemm(const Node& node) { return std::make_unique<GemmOp>(node); }
std::unique_ptr<Op> make_matmul(const Node& node) { return std::make_unique<MatMulOp>(node); }

}  // namespace camrt
