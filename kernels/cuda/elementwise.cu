// Binary arithmetic kernels on the GPU. Forward: one grid-stride kernel, a flat one for one-dim plans (same
// shape, or one side a scalar) and a strided one that decomposes each output index over the plan's dims.
// Backward: each operand's gradient element sums dy * term over the output positions that read it; depending on
// how many terms (R) and elements (K) there are, one thread, one block, or several blocks plus a fixed-order
// finishing pass own an element. No atomics: results are identical run to run. Float products/sums use the
// _rn intrinsics so nvcc never fuses them: the forward and the unreduced backward equal an unfused CPU twin's
// bit for bit (a CPU build that fuses dx + dy * o differs by one rounding).
#include "kernels/cuda/elementwise.h"

#include <algorithm>
#include <limits>
#include <type_traits>

#include "kernels/cuda/check.h"

namespace camrt::cuda {

namespace {

constexpr int kThreads = 256;
// Plan dims a kernel can walk. A plan has one dim per run of non-mergeable output dims; CNN broadcasts have 1 to
// 4. Fixed arrays keep the plan a by-value kernel parameter (no device allocation per launch).
constexpr int kMaxRank = 16;

struct DevicePlan {
  int rank = 0;
  int64_t dims[kMaxRank];
  int64_t a_strides[kMaxRank];
  int64_t b_strides[kMaxRank];
};

DevicePlan device_plan(const BroadcastPlan& plan) {
  CAMRT_CHECK(plan.dims.size() <= static_cast<size_t>(kMaxRank),
              "CUDA binary op: a broadcast over " << plan.dims.size() << " non-mergeable dims is not supported (max "
                                                  << kMaxRank << ")");
  DevicePlan d;
  d.rank = static_cast<int>(plan.dims.size());
  for (int k = 0; k < d.rank; ++k) {
    d.dims[k] = plan.dims[k];
    d.a_strides[k] = plan.a_strides[k];
    d.b_strides[k] = plan.b_strides[k];
  }
  return d;
}

template <BinaryOp OP>
__device__ __forceinline__ float apply(float a, float b) {
  if constexpr (OP == BinaryOp::Add) return __fadd_rn(a, b);
  else if constexpr (OP == BinaryOp::Sub) return __fsub_rn(a, b);
  else if constexpr (OP == BinaryOp::Mul) return __fmul_rn(a, b);
  else return __fdiv_rn(a, b);
}

// int64: wrapping arithmetic (signed overflow is undefined in C++); Div truncates toward zero like the CPU twin,
// with the two cases it throws on given fixed results instead (a kernel cannot throw).
template <BinaryOp OP>
__device__ __forceinline__ int64_t apply(int64_t a, int64_t b) {
  const uint64_t ua = static_cast<uint64_t>(a), ub = static_cast<uint64_t>(b);
  if constexpr (OP == BinaryOp::Add) return static_cast<int64_t>(ua + ub);
  else if constexpr (OP == BinaryOp::Sub) return static_cast<int64_t>(ua - ub);
  else if constexpr (OP == BinaryOp::Mul) return static_cast<int64_t>(ua * ub);
  else {
    if (b == 0) return 0;
    if (b == -1) return static_cast<int64_t>(uint64_t(0) - ua);  // -a, wrapping for INT64_MIN
    return a / b;
  }
}

// A fused activation (float only; int64 never has one): the CPU twin's comparisons, so NaN handling matches.
struct DeviceActivation {
  int kind = FusedActivation::kNone;
  float lo = 0.f, hi = 0.f;
};

__device__ __forceinline__ float activate(float v, const DeviceActivation& act) {
  if (act.kind == FusedActivation::kRelu) {
    v = v > 0.f ? v : 0.f;
  } else if (act.kind == FusedActivation::kClip) {
    v = v < act.lo ? act.lo : v;
    v = act.hi < v ? act.hi : v;
  }
  return v;
}
__device__ __forceinline__ int64_t activate(int64_t v, const DeviceActivation&) { return v; }

// One-dim plan: a and b advance by strides sa, sb in {0, 1}.
template <BinaryOp OP, typename T>
__global__ void binary_flat_kernel(T* out, const T* a, const T* b, int64_t n, int64_t sa, int64_t sb,
                                   DeviceActivation act) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = activate(apply<OP>(a[i * sa], b[i * sb]), act);
}

// Any plan: the output index is split over the plan dims (innermost first). I is the index type: 32-bit when
// the output has fewer than 2^31 elements (integer division is several times cheaper), else int64.
// In-place: an operand aliasing out is full-size, so it is read at offset i, by the thread that writes i.
template <BinaryOp OP, typename T, typename I>
__global__ void binary_strided_kernel(T* out, const T* a, const T* b, I n, DevicePlan plan, DeviceActivation act) {
  const I stride = static_cast<I>(blockDim.x) * gridDim.x;
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    I rest = i;
    int64_t a_off = 0, b_off = 0;
    for (int k = plan.rank - 1; k >= 0; --k) {
      const I size = static_cast<I>(plan.dims[k]);
      const I index = rest % size;
      rest /= size;
      a_off += static_cast<int64_t>(index) * plan.a_strides[k];
      b_off += static_cast<int64_t>(index) * plan.b_strides[k];
    }
    out[i] = activate(apply<OP>(a[a_off], b[b_off]), act);
  }
}

template <BinaryOp OP, typename T>
void launch_forward(T* out, const T* a, const T* b, const BroadcastPlan& plan, DeviceActivation act,
                    cudaStream_t stream) {
  const int64_t n = plan.numel;
  if (n <= 0) return;
  if (plan.dims.size() == 1) {
    binary_flat_kernel<OP, T><<<grid_for(n, kThreads), kThreads, 0, stream>>>(out, a, b, n, plan.a_strides[0],
                                                                             plan.b_strides[0], act);
    CAMRT_CUDA_CHECK_LAUNCH("binary_flat_kernel");
    return;
  }
  const DevicePlan dp = device_plan(plan);
  if (n <= std::numeric_limits<int32_t>::max()) {
    // uint32 arithmetic cannot overflow: i < 2^31 and the grid stride is below 2^28 (grid_for's cap).
    binary_strided_kernel<OP, T, uint32_t><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
        out, a, b, static_cast<uint32_t>(n), dp, act);
  } else {
    binary_strided_kernel<OP, T, int64_t><<<grid_for(n, kThreads), kThreads, 0, stream>>>(out, a, b, n, dp, act);
  }
  CAMRT_CUDA_CHECK_LAUNCH("binary_strided_kernel");
}

template <typename T>
void dispatch_forward(T* out, const T* a, const T* b, const BroadcastPlan& plan, BinaryOp op, DeviceActivation act,
                      cudaStream_t stream) {
  switch (op) {
    case BinaryOp::Add: return launch_forward<BinaryOp::Add>(out, a, b, plan, act, stream);
    case BinaryOp::Sub: return launch_forward<BinaryOp::Sub>(out, a, b, plan, act, stream);
    case BinaryOp::Mul: return launch_forward<BinaryOp::Mul>(out, a, b, plan, act, stream);
    case BinaryOp::Div: return launch_forward<BinaryOp::Div>(out, a, b, plan, act, stream);
  }
}

// ---- Backward: the gradient of one operand X (a or b), the other operand being O ----
// dX[j] += scale(x[j]) * sum over output positions p reading j of v(p), v one of the Terms (as the CPU twin):
//   Add: (One, Plus) both.  Sub: a (One, Plus), b (One, Minus).  Mul: (Other, Plus) both.
//   Div: a (InvOther, Plus); b (Out, NegInvX) from y, or (Other, NegInvX2) from a.
enum class Term : uint8_t { One, Other, InvOther, Out };
enum class Scale : uint8_t { Plus, Minus, NegInvX, NegInvX2 };

// One group of plan dims for one operand, row-major: the dims X keeps (X stride != 0) or the dims summed out.
struct DimGroup {
  int rank = 0;
  int64_t count = 1;  // product of sizes
  int64_t size[kMaxRank];
  int64_t out_stride[kMaxRank];  // contiguous output strides
  int64_t o_stride[kMaxRank];    // the other operand's strides
  int64_t x_stride[kMaxRank];    // X's strides (0 in the summed-out group)

  __device__ void offsets(int64_t index, int64_t* out, int64_t* o, int64_t* x) const {
    *out = *o = *x = 0;
    for (int k = rank - 1; k >= 0; --k) {
      const int64_t i = index % size[k];
      index /= size[k];
      *out += i * out_stride[k];
      *o += i * o_stride[k];
      *x += i * x_stride[k];
    }
  }
};

struct GradJob {
  float* dx = nullptr;        // X's gradient, X's layout
  const float* x = nullptr;   // X's values (read only by the NegInvX scales)
  const float* o = nullptr;   // the other operand (read only by Other/InvOther)
  const float* y = nullptr;   // forward output (read only by Out)
  const float* dy = nullptr;  // (numel,)
  Scale scale = Scale::Plus;
  DimGroup kept, reduced;
};

// dy * v at output position p, the other operand at offset q; float, as the CPU twin's term_at.
template <Term T>
__device__ __forceinline__ float term_at(const GradJob& g, int64_t p, int64_t q) {
  if constexpr (T == Term::One) return g.dy[p];
  else if constexpr (T == Term::Out) return __fmul_rn(g.dy[p], g.y[p]);
  else if constexpr (T == Term::Other) return __fmul_rn(g.dy[p], g.o[q]);
  else return __fdiv_rn(g.dy[p], g.o[q]);
}

// The factor a reduced sum is multiplied by, in double (the CPU twin's scale_at).
__device__ __forceinline__ double scale_at(const GradJob& g, int64_t x0) {
  switch (g.scale) {
    case Scale::Plus: return 1.0;
    case Scale::Minus: return -1.0;
    case Scale::NegInvX: return __ddiv_rn(-1.0, static_cast<double>(g.x[x0]));
    case Scale::NegInvX2: {
      const double v = g.x[x0];
      return __ddiv_rn(-1.0, __dmul_rn(v, v));
    }
  }
  return 0.0;
}

// Nothing summed (X as large as the output): dX[x0] op= term in float, exactly the CPU twin's grad_elementwise.
template <Term T>
__global__ void grad_elementwise_kernel(GradJob g) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < g.kept.count; j += stride) {
    int64_t p, q, x0;
    g.kept.offsets(j, &p, &q, &x0);
    const float t = term_at<T>(g, p, q);
    float d = g.dx[x0];
    switch (g.scale) {
      case Scale::Plus: d = __fadd_rn(d, t); break;
      case Scale::Minus: d = __fsub_rn(d, t); break;
      case Scale::NegInvX: d = __fsub_rn(d, __fdiv_rn(t, g.x[x0])); break;
      case Scale::NegInvX2: d = __fsub_rn(d, __fdiv_rn(t, __fmul_rn(g.x[x0], g.x[x0]))); break;
    }
    g.dx[x0] = d;
  }
}

// Few terms per element (or many elements): one thread per X element walks its terms in row-major order.
template <Term T>
__global__ void grad_thread_reduce_kernel(GradJob g) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const DimGroup& r = g.reduced;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < g.kept.count; j += stride) {
    int64_t p0, q0, x0;
    g.kept.offsets(j, &p0, &q0, &x0);
    int64_t index[kMaxRank];
    for (int k = 0; k < r.rank; ++k) index[k] = 0;
    int64_t p = 0, q = 0;
    double sum = 0;
    for (int64_t step = 0; step < r.count; ++step) {
      sum += term_at<T>(g, p0 + p, q0 + q);
      for (int k = r.rank - 1; k >= 0; --k) {  // odometer: offsets advance without divisions
        p += r.out_stride[k];
        q += r.o_stride[k];
        if (++index[k] < r.size[k]) break;
        p -= r.out_stride[k] * r.size[k];
        q -= r.o_stride[k] * r.size[k];
        index[k] = 0;
      }
    }
    g.dx[x0] = __fadd_rn(g.dx[x0], static_cast<float>(scale_at(g, x0) * sum));
  }
}

// Sum over the block in a fixed order (warp shuffles, then warp 0 over the warp sums); every thread gets the
// result. blockDim.x must be a multiple of 32. `shared` holds 32 doubles.
__device__ double block_sum(double v, double* shared) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int warps = static_cast<int>(blockDim.x >> 5);
    v = lane < warps ? shared[lane] : 0.0;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  v = shared[0];
  __syncthreads();  // all threads have read shared[0] before a next call overwrites it
  return v;
}

// Many terms per element: task (j, s) sums slice s of element j's R terms with the whole block. With one slice
// the block adds its sum into dX; otherwise it stores a partial for grad_finish_kernel.
template <Term T>
__global__ void grad_block_reduce_kernel(GradJob g, int64_t slices, double* partial) {
  __shared__ double shared[32];
  const DimGroup& r = g.reduced;
  const int64_t per = (r.count + slices - 1) / slices;
  const int64_t tasks = g.kept.count * slices;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {  // uniform per block: syncs are safe
    const int64_t j = task / slices, s = task - j * slices;
    int64_t p0, q0, x0;
    g.kept.offsets(j, &p0, &q0, &x0);
    const int64_t lo = s * per, hi = lo + per < r.count ? lo + per : r.count;
    double sum = 0;
    for (int64_t t = lo + threadIdx.x; t < hi; t += blockDim.x) {
      int64_t p, q, unused;
      r.offsets(t, &p, &q, &unused);
      sum += term_at<T>(g, p0 + p, q0 + q);
    }
    sum = block_sum(sum, shared);
    if (threadIdx.x == 0) {
      if (slices == 1) {
        g.dx[x0] = __fadd_rn(g.dx[x0], static_cast<float>(scale_at(g, x0) * sum));
      } else {
        partial[task] = sum;
      }
    }
  }
}

// Adds each element's slice partials in slice order.
__global__ void grad_finish_kernel(GradJob g, int64_t slices, const double* partial) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < g.kept.count; j += stride) {
    double sum = 0;
    for (int64_t s = 0; s < slices; ++s) sum += partial[j * slices + s];
    int64_t p0, q0, x0;
    g.kept.offsets(j, &p0, &q0, &x0);
    g.dx[x0] = __fadd_rn(g.dx[x0], static_cast<float>(scale_at(g, x0) * sum));
  }
}

// Strategy thresholds. At most this many terms per element go to one thread (a short serial loop beats a block
// reduction); from this many elements on, threads alone fill the GPU (~64K threads = every SM busy) whatever R is.
constexpr int64_t kThreadReduceMaxTerms = 32;
constexpr int64_t kThreadReduceMinElements = int64_t(1) << 16;
// Block reductions: a slice holds at least 4096 terms (16 per thread, enough to hide the reduction's cost), and
// slicing stops once K * slices reaches 1024 blocks (several per SM on current GPUs).
constexpr int64_t kMinSliceTerms = 4096;
constexpr int64_t kTargetBlocks = 1024;

// Splits the plan's dims into X's kept and summed-out groups. x_strides/o_strides: X's and O's plan strides.
void split_dims(const BroadcastPlan& plan, const std::vector<int64_t>& x_strides, const std::vector<int64_t>& o_strides,
                DimGroup* kept, DimGroup* reduced) {
  const int rank = static_cast<int>(plan.dims.size());
  CAMRT_CHECK(rank <= kMaxRank, "CUDA binary backward: a broadcast over " << rank
                                                                          << " non-mergeable dims is not supported");
  int64_t out_strides[kMaxRank];
  int64_t acc = 1;
  for (int k = rank - 1; k >= 0; --k) {
    out_strides[k] = acc;
    acc *= plan.dims[k];
  }
  *kept = DimGroup{};
  *reduced = DimGroup{};
  for (int k = 0; k < rank; ++k) {
    DimGroup* group = x_strides[k] == 0 ? reduced : kept;
    const int i = group->rank++;
    group->size[i] = plan.dims[k];
    group->out_stride[i] = out_strides[k];
    group->o_stride[i] = o_strides[k];
    group->x_stride[i] = x_strides[k];
    group->count *= plan.dims[k];
  }
}

// How many slices a block reduction over R terms for each of K elements uses (1: no partials, no workspace).
int64_t slices_for(int64_t kept, int64_t terms) {
  if (terms <= kThreadReduceMaxTerms || kept >= kThreadReduceMinElements || kept >= kTargetBlocks) return 1;
  const int64_t by_terms = std::max<int64_t>(1, terms / kMinSliceTerms);
  const int64_t by_blocks = std::max<int64_t>(1, kTargetBlocks / kept);
  return std::min(by_terms, by_blocks);
}

size_t operand_workspace_bytes(const BroadcastPlan& plan, const std::vector<int64_t>& x_strides,
                               const std::vector<int64_t>& o_strides) {
  DimGroup kept, reduced;
  split_dims(plan, x_strides, o_strides, &kept, &reduced);
  const int64_t slices = slices_for(kept.count, reduced.count);
  return slices > 1 ? static_cast<size_t>(kept.count * slices) * sizeof(double) : 0;
}

template <Term T>
void operand_grad(GradJob job, const BroadcastPlan& plan, const std::vector<int64_t>& x_strides,
                  const std::vector<int64_t>& o_strides, void* workspace, size_t workspace_bytes,
                  cudaStream_t stream) {
  split_dims(plan, x_strides, o_strides, &job.kept, &job.reduced);
  const int64_t K = job.kept.count, R = job.reduced.count;
  if (K == 0 || R == 0) return;
  if (R == 1) {
    grad_elementwise_kernel<T><<<grid_for(K, kThreads), kThreads, 0, stream>>>(job);
    CAMRT_CUDA_CHECK_LAUNCH("grad_elementwise_kernel");
    return;
  }
  if (R <= kThreadReduceMaxTerms || K >= kThreadReduceMinElements) {
    grad_thread_reduce_kernel<T><<<grid_for(K, kThreads), kThreads, 0, stream>>>(job);
    CAMRT_CUDA_CHECK_LAUNCH("grad_thread_reduce_kernel");
    return;
  }
  int64_t slices = slices_for(K, R);
  // Without room for the partials the reduction runs unsliced: a different (equally fixed) summation order.
  if (slices > 1 && (workspace == nullptr || workspace_bytes < static_cast<size_t>(K * slices) * sizeof(double)))
    slices = 1;
  double* partial = static_cast<double*>(workspace);
  const int64_t tasks = K * slices;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(tasks, 65535 * 8));
  grad_block_reduce_kernel<T><<<blocks, kThreads, 0, stream>>>(job, slices, partial);
  CAMRT_CUDA_CHECK_LAUNCH("grad_block_reduce_kernel");
  if (slices > 1) {
    grad_finish_kernel<<<grid_for(K, kThreads), kThreads, 0, stream>>>(job, slices, partial);
    CAMRT_CUDA_CHECK_LAUNCH("grad_finish_kernel");
  }
}

}  // namespace

void binary_forward(float* out, const float* a, const float* b, const BroadcastPlan& plan, BinaryOp op,
                    cudaStream_t stream, const FusedActivation& act) {
  dispatch_forward(out, a, b, plan, op, DeviceActivation{int(act.kind), act.min, act.max}, stream);
}

void binary_forward(int64_t* out, const int64_t* a, const int64_t* b, const BroadcastPlan& plan, BinaryOp op,
                    cudaStream_t stream) {
  dispatch_forward(out, a, b, plan, op, DeviceActivation{}, stream);
}

size_t binary_backward_workspace_bytes(const BroadcastPlan& plan) {
  if (plan.numel <= 0) return 0;
  // da and db run one after the other on the stream, so they share the scratch.
  return std::max(operand_workspace_bytes(plan, plan.a_strides, plan.b_strides),
                  operand_workspace_bytes(plan, plan.b_strides, plan.a_strides));
}

void binary_backward(float* da, float* db, const float* dy, const float* a, const float* b, const float* y,
                     const BroadcastPlan& plan, BinaryOp op, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream) {
  if (plan.numel == 0 || (da == nullptr && db == nullptr)) return;
  CAMRT_CHECK(dy != nullptr, binary_op_name(op) << " backward: dy is missing");
  if (da != nullptr) {
    GradJob job;
    job.dx = da;
    job.x = a;
    job.dy = dy;
    switch (op) {
      case BinaryOp::Add:
      case BinaryOp::Sub:
        operand_grad<Term::One>(job, plan, plan.a_strides, plan.b_strides, workspace, workspace_bytes, stream);
        break;
      case BinaryOp::Mul:
      case BinaryOp::Div:
        CAMRT_CHECK(b != nullptr, binary_op_name(op) << " backward: the gradient of a needs b");
        job.o = b;
        if (op == BinaryOp::Mul) {
          operand_grad<Term::Other>(job, plan, plan.a_strides, plan.b_strides, workspace, workspace_bytes, stream);
        } else {
          operand_grad<Term::InvOther>(job, plan, plan.a_strides, plan.b_strides, workspace, workspace_bytes, stream);
        }
        break;
    }
  }
  if (db != nullptr) {
    GradJob job;
    job.dx = db;
    job.x = b;
    job.dy = dy;
    switch (op) {
      case BinaryOp::Add:
        operand_grad<Term::One>(job, plan, plan.b_strides, plan.a_strides, workspace, workspace_bytes, stream);
        break;
      case BinaryOp::Sub:
        job.scale = Scale::Minus;
        operand_grad<Term::One>(job, plan, plan.b_strides, plan.a_strides, workspace, workspace_bytes, stream);
        break;
      case BinaryOp::Mul:
        CAMRT_CHECK(a != nullptr, "Mul backward: the gradient of b needs a");
        job.o = a;
        operand_grad<Term::Other>(job, plan, plan.b_strides, plan.a_strides, workspace, workspace_bytes, stream);
        break;
      case BinaryOp::Div:
        CAMRT_CHECK(b != nullptr && (y != nullptr || a != nullptr),
                    "Div backward: the gradient of b needs b and y (or a)");
        if (y != nullptr) {
          job.y = y;
          job.scale = Scale::NegInvX;
          operand_grad<Term::Out>(job, plan, plan.b_strides, plan.a_strides, workspace, workspace_bytes, stream);
        } else {
          job.o = a;
          job.scale = Scale::NegInvX2;
          operand_grad<Term::Other>(job, plan, plan.b_strides, plan.a_strides, workspace, workspace_bytes, stream);
        }
        break;
    }
  }
}

}  // namespace camrt::cuda
