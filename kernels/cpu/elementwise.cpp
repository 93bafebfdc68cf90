// Binary arithmetic kernels. The op is a template parameter so every inner loop is a plain
// `out[i] = a[i] op b[i]` (or with one side a loop constant) that the compiler vectorises; the choice of
// loop is made once per launch from the BroadcastPlan.
#include "kernels/cpu/elementwise.h"

#include <algorithm>
#include <limits>
#include <type_traits>

#include "engine/error.h"

namespace camrt {

namespace {

// Below this many elements a launch runs on the calling thread: ~32K floats (128 KiB) of a memory-bound
// loop take about as long as waking the workers does.
constexpr int64_t kMinChunk = int64_t(1) << 15;

template <BinaryOp OP, typename T>
inline T apply(T a, T b) {
  if constexpr (OP == BinaryOp::Add) {
    return a + b;
  } else if constexpr (OP == BinaryOp::Sub) {
    return a - b;
  } else if constexpr (OP == BinaryOp::Mul) {
    return a * b;
  } else {
    if constexpr (std::is_integral_v<T>) {
      // Both cases are undefined behaviour in C++ (a SIGFPE on x86), so they become errors instead.
      CAMRT_CHECK(b != 0, "integer division by zero");
      CAMRT_CHECK(!(b == -1 && a == std::numeric_limits<T>::min()), "integer division overflows");
    }
    return a / b;  // integers: C++ truncates toward zero, as ONNX Runtime does
  }
}

bool is_contiguous(const std::vector<int64_t>& strides, const std::vector<int64_t>& dims) {
  int64_t expect = 1;
  for (size_t k = dims.size(); k-- > 0;) {
    if (strides[k] != expect) return false;
    expect *= dims[k];
  }
  return true;
}

// out, full: (rows, inner); vec: (count,) with row r using vec[r % count]. Covers per-channel
// (N, C, HW) op (C) with count = C and per-sample-channel (N*C, HW) op (N*C) with count = rows.
// A fused activation over a row just written (still in L1), so it costs no extra pass over memory. The same
// arithmetic as the Relu/Clip ops and the conv epilogue: relu x > 0 ? x : 0, clip min(max(x, lo), hi).
template <typename T>
inline void activate_row(T* o, int64_t n, const FusedActivation& act) {
  if constexpr (std::is_same_v<T, float>) {
    if (act.kind == FusedActivation::kRelu) {
      for (int64_t i = 0; i < n; ++i) o[i] = o[i] > 0.f ? o[i] : 0.f;
    } else if (act.kind == FusedActivation::kClip) {
      const float lo = act.min, hi = act.max;
      for (int64_t i = 0; i < n; ++i) o[i] = std::min(std::max(o[i], lo), hi);
    }
  } else {
    (void)o, (void)n, (void)act;
  }
}

template <BinaryOp OP, typename T>
void run_rows(T* out, const T* full, const T* vec, int64_t rows, int64_t inner, int64_t count, bool vec_first,
              const FusedActivation& act, ThreadPool& pool) {
  pool.parallel_for(
      rows,
      [=](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const T v = vec[r % count];
          const T* f = full + r * inner;
          T* o = out + r * inner;
          if (vec_first) {
            for (int64_t i = 0; i < inner; ++i) o[i] = apply<OP>(v, f[i]);
          } else {
            for (int64_t i = 0; i < inner; ++i) o[i] = apply<OP>(f[i], v);
          }
          activate_row(o, inner, act);
        }
      },
      std::max<int64_t>(1, kMinChunk / inner));
}

// The last dim of length n with operand strides sa, sb in {0, 1} (never both 0).
template <BinaryOp OP, typename T>
inline void inner_loop(T* o, const T* pa, const T* pb, int64_t n, int64_t sa, int64_t sb) {
  if (sa == 1 && sb == 1) {
    for (int64_t i = 0; i < n; ++i) o[i] = apply<OP>(pa[i], pb[i]);
  } else if (sb == 0) {
    const T vb = pb[0];
    for (int64_t i = 0; i < n; ++i) o[i] = apply<OP>(pa[i], vb);
  } else {
    const T va = pa[0];
    for (int64_t i = 0; i < n; ++i) o[i] = apply<OP>(va, pb[i]);
  }
}

// Any broadcast: the outer dims are walked with an odometer (offsets updated incrementally), the last
// dim is a tight inner loop.
template <BinaryOp OP, typename T>
void run_strided(T* out, const T* a, const T* b, const BroadcastPlan& plan, const FusedActivation& act,
                 ThreadPool& pool) {
  const std::vector<int64_t>& dims = plan.dims;
  const std::vector<int64_t>& sa = plan.a_strides;
  const std::vector<int64_t>& sb = plan.b_strides;
  const size_t outer_rank = dims.size() - 1;
  const int64_t inner = dims.back();
  const int64_t outer = plan.numel / inner;
  pool.parallel_for(
      outer,
      [&](int64_t begin, int64_t end) {
        std::vector<int64_t> index(outer_rank);
        int64_t a_off = 0, b_off = 0;
        for (size_t k = outer_rank, rest = static_cast<size_t>(begin); k-- > 0;) {
          index[k] = static_cast<int64_t>(rest % static_cast<size_t>(dims[k]));
          rest /= static_cast<size_t>(dims[k]);
          a_off += index[k] * sa[k];
          b_off += index[k] * sb[k];
        }
        for (int64_t row = begin; row < end; ++row) {
          inner_loop<OP>(out + row * inner, a + a_off, b + b_off, inner, sa.back(), sb.back());
          activate_row(out + row * inner, inner, act);
          for (size_t k = outer_rank; k-- > 0;) {
            a_off += sa[k];
            b_off += sb[k];
            if (++index[k] < dims[k]) break;
            a_off -= sa[k] * dims[k];
            b_off -= sb[k] * dims[k];
            index[k] = 0;
          }
        }
      },
      std::max<int64_t>(1, kMinChunk / inner));
}

// Elements per block of a one-dim launch: computed, then activated while in L1.
constexpr int64_t kActivateBlock = 4096;

template <BinaryOp OP, typename T>
void run(T* out, const T* a, const T* b, const BroadcastPlan& plan, const FusedActivation& act, ThreadPool& pool) {
  if (plan.numel == 0) return;
  const std::vector<int64_t>& d = plan.dims;
  const std::vector<int64_t>& sa = plan.a_strides;
  const std::vector<int64_t>& sb = plan.b_strides;
  if (d.size() == 1) {
    const int64_t n = d[0], sa0 = sa[0], sb0 = sb[0];
    pool.parallel_for(
        n,
        [=, &act](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; i += kActivateBlock) {
            const int64_t len = std::min(kActivateBlock, end - i);
            inner_loop<OP>(out + i, a + i * sa0, b + i * sb0, len, sa0, sb0);
            activate_row(out + i, len, act);
          }
        },
        kMinChunk);
    return;
  }
  // (rows, inner) op (rows, 1) and (lead, C, inner) op (1, C, 1), either operand being the broadcast one.
  const bool a_full = is_contiguous(sa, d), b_full = is_contiguous(sb, d);
  if (a_full != b_full) {
    const std::vector<int64_t>& sv = a_full ? sb : sa;
    const T* full = a_full ? a : b;
    const T* vec = a_full ? b : a;
    const bool vec_first = !a_full;
    if (d.size() == 2 && sv[0] == 1 && sv[1] == 0)
      return run_rows<OP>(out, full, vec, d[0], d[1], d[0], vec_first, act, pool);
    if (d.size() == 3 && sv[0] == 0 && sv[1] == 1 && sv[2] == 0)
      return run_rows<OP>(out, full, vec, d[0] * d[1], d[2], d[1], vec_first, act, pool);
  }
  run_strided<OP>(out, a, b, plan, act, pool);
}

template <typename T>
void dispatch(T* out, const T* a, const T* b, const BroadcastPlan& plan, BinaryOp op, const FusedActivation& act,
              ThreadPool& pool) {
  switch (op) {
    case BinaryOp::Add: return run<BinaryOp::Add>(out, a, b, plan, act, pool);
    case BinaryOp::Sub: return run<BinaryOp::Sub>(out, a, b, plan, act, pool);
    case BinaryOp::Mul: return run<BinaryOp::Mul>(out, a, b, plan, act, pool);
    case BinaryOp::Div: return run<BinaryOp::Div>(out, a, b, plan, act, pool);
  }
}

// ---- Backward: the gradient of one operand X (a or b), the other operand being O ----
// For each element j of X: dX[j] += scale(x[j]) * sum over output positions p reading j of dy[p] * v(p), where
// v(p) is one of the Term kinds below. Every op/operand pair is one (Term, Scale) choice:
//   Add: (One, Plus) for both.  Sub: a (One, Plus), b (One, Minus).  Mul: (Other, Plus) for both.
//   Div: a (InvOther, Plus); b (Out, NegInvX) from y, or (Other, NegInvX2) from a.
enum class Term : uint8_t { One, Other, InvOther, Out };
enum class Scale : uint8_t { Plus, Minus, NegInvX, NegInvX2 };

// Columns per task when X keeps the output's last dim: 64 doubles of accumulator stay in L1.
constexpr int64_t kGradBlock = 64;
// Most slices a full reduction to one value (a scalar operand) is split into; partial sums are added in a
// fixed order, so the result does not depend on the thread count.
constexpr int64_t kMaxSlices = 64;

struct GradJob {
  float* dx = nullptr;          // X's gradient, X's layout
  const float* x = nullptr;     // X's values (read only by the NegInvX scales)
  const float* o = nullptr;     // the other operand (read only by Other/InvOther)
  const float* y = nullptr;     // forward output (read only by Out)
  const float* dy = nullptr;    // (numel,)
  const std::vector<int64_t>* sx = nullptr;  // X's strides per plan dim
  const std::vector<int64_t>* so = nullptr;  // O's strides per plan dim
  Scale scale = Scale::Plus;
};

// dy[i] * v at output offset i (from the row's start); o varies along the row when kVaries, else is o[0].
template <Term T, bool kVaries>
inline float term_at(const float* dy, const float* o, const float* y, int64_t i) {
  if constexpr (T == Term::One) {
    return dy[i];
  } else if constexpr (T == Term::Out) {
    return dy[i] * y[i];
  } else {
    const float ov = kVaries ? o[i] : o[0];
    if constexpr (T == Term::Other) {
      return dy[i] * ov;
    } else {
      return dy[i] / ov;
    }
  }
}

// Sum of term_at over a contiguous row of n outputs, in eight double lanes (vectorisable, and no float
// accumulation error however long the row).
template <Term T, bool kVaries>
double row_sum(const float* dy, const float* o, const float* y, int64_t n) {
  constexpr int64_t kLanes = 8;
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) acc[k] += term_at<T, kVaries>(dy, o, y, i + k);
  double sum = 0;
  for (int64_t k = 0; k < kLanes; ++k) sum += acc[k];
  for (; i < n; ++i) sum += term_at<T, kVaries>(dy, o, y, i);
  return sum;
}

inline double scale_at(Scale scale, const float* x, int64_t j) {
  switch (scale) {
    case Scale::Plus: return 1.0;
    case Scale::Minus: return -1.0;
    case Scale::NegInvX: return -1.0 / x[j];
    case Scale::NegInvX2: return -1.0 / (static_cast<double>(x[j]) * x[j]);
  }
  return 0.0;
}

// Most plan dims the backward walks; a plan has at most one dim per output dim, and merging leaves a CNN
// broadcast with 1 to 4. Fixed arrays keep the launch free of heap allocation.
constexpr size_t kMaxPlanRank = 16;

// One group of the plan's outer dims (all but the last) for one operand, in row-major order, each with its size
// and its output, O and X strides: either the dims X keeps (X stride != 0) or the dims summed out (X stride 0).
struct OuterDims {
  int64_t size[kMaxPlanRank], out_stride[kMaxPlanRank], o_stride[kMaxPlanRank], x_stride[kMaxPlanRank];
  size_t rank = 0;
  int64_t count = 1;  // product of sizes
  // Prepends a dim (callers walk from the innermost dim outwards).
  void add_outer(int64_t n, int64_t out, int64_t o, int64_t x) {
    for (size_t k = rank; k-- > 0;) {
      size[k + 1] = size[k];
      out_stride[k + 1] = out_stride[k];
      o_stride[k + 1] = o_stride[k];
      x_stride[k + 1] = x_stride[k];
    }
    size[0] = n;
    out_stride[0] = out;
    o_stride[0] = o;
    x_stride[0] = x;
    ++rank;
    count *= n;
  }
  // Offsets of the multi-index number `index` (row-major over these dims).
  void offsets(int64_t index, int64_t* out, int64_t* o, int64_t* x) const {
    *out = *o = *x = 0;
    for (size_t k = rank; k-- > 0;) {
      const int64_t i = index % size[k];
      index /= size[k];
      *out += i * out_stride[k];
      *o += i * o_stride[k];
      *x += i * x_stride[k];
    }
  }
};

// Calls fn(out_offset, o_offset) for every combination of the reduced dims, advancing offsets incrementally.
template <typename Fn>
inline void for_each_reduced(const OuterDims& r, Fn&& fn) {
  const size_t rank = r.rank;
  int64_t index[kMaxPlanRank] = {};
  int64_t out = 0, o = 0;
  for (int64_t step = 0; step < r.count; ++step) {
    fn(out, o);
    for (size_t k = rank; k-- > 0;) {
      out += r.out_stride[k];
      o += r.o_stride[k];
      if (++index[k] < r.size[k]) break;
      out -= r.out_stride[k] * r.size[k];
      o -= r.o_stride[k] * r.size[k];
      index[k] = 0;
    }
  }
}

// X's last plan dim is reduced: each X element owns one task summing rows of the output. Covers
// (N*C, HW) op (N*C, 1), (N, C, HW) op (1, C, 1) and the scalar operand (split into slices).
template <Term T, bool kVaries>
void grad_reduce_last(const GradJob& job, const OuterDims& kept, const OuterDims& reduced, int64_t n, ThreadPool& pool) {
  const GradJob g = job;
  if (kept.count == 1 && reduced.count == 1) {  // one value from one long row: slices summed in a fixed order
    const int64_t slices = std::max<int64_t>(1, std::min(kMaxSlices, n / kMinChunk));
    const int64_t per = (n + slices - 1) / slices;
    double partial[kMaxSlices] = {};
    pool.parallel_for(slices, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        const int64_t lo = s * per, hi = std::min(n, lo + per);
        if (lo < hi)
          partial[s] = row_sum<T, kVaries>(g.dy + lo, kVaries ? g.o + lo : g.o, g.y == nullptr ? nullptr : g.y + lo,
                                           hi - lo);
      }
    });
    double sum = 0;
    for (int64_t s = 0; s < slices; ++s) sum += partial[s];
    g.dx[0] += static_cast<float>(scale_at(g.scale, g.x, 0) * sum);
    return;
  }
  pool.parallel_for(
      kept.count,
      [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) {
          int64_t out0, o0, x0;
          kept.offsets(j, &out0, &o0, &x0);
          double sum = 0;
          for_each_reduced(reduced, [&](int64_t out, int64_t o) {
            const int64_t p = out0 + out;
            sum += row_sum<T, kVaries>(g.dy + p, g.o == nullptr ? nullptr : g.o + o0 + o, g.y == nullptr ? nullptr : g.y + p, n);
          });
          g.dx[x0] += static_cast<float>(scale_at(g.scale, g.x, x0) * sum);
        }
      },
      std::max<int64_t>(1, kMinChunk / std::max<int64_t>(1, n * reduced.count)));
}

// X keeps the last plan dim (stride 1) and is summed over some outer dims: tasks are (X row, block of
// kGradBlock columns); each adds the reduced rows into a double accumulator. Covers (N, HW, C) op (C).
template <Term T, bool kVaries>
void grad_keep_last(const GradJob& job, const OuterDims& kept, const OuterDims& reduced, int64_t width, ThreadPool& pool) {
  const GradJob g = job;
  const int64_t blocks = (width + kGradBlock - 1) / kGradBlock;
  pool.parallel_for(
      kept.count * blocks,
      [&](int64_t begin, int64_t end) {
        double acc[kGradBlock];
        for (int64_t task = begin; task < end; ++task) {
          const int64_t c0 = (task % blocks) * kGradBlock, w = std::min(kGradBlock, width - c0);
          int64_t out0, o0, x0;
          kept.offsets(task / blocks, &out0, &o0, &x0);
          for (int64_t i = 0; i < w; ++i) acc[i] = 0;
          for_each_reduced(reduced, [&](int64_t out, int64_t o) {
            const int64_t p = out0 + out + c0;
            const float* dy = g.dy + p;
            const float* y = g.y == nullptr ? nullptr : g.y + p;
            const float* ov = g.o == nullptr ? nullptr : g.o + o0 + o + (kVaries ? c0 : 0);
            for (int64_t i = 0; i < w; ++i) acc[i] += term_at<T, kVaries>(dy, ov, y, i);
          });
          float* dx = g.dx + x0 + c0;
          const float* x = g.x == nullptr ? nullptr : g.x + x0 + c0;
          switch (g.scale) {
            case Scale::Plus:
              for (int64_t i = 0; i < w; ++i) dx[i] += static_cast<float>(acc[i]);
              break;
            case Scale::Minus:
              for (int64_t i = 0; i < w; ++i) dx[i] -= static_cast<float>(acc[i]);
              break;
            case Scale::NegInvX:
              for (int64_t i = 0; i < w; ++i) dx[i] += static_cast<float>(-acc[i] / x[i]);
              break;
            case Scale::NegInvX2:
              for (int64_t i = 0; i < w; ++i) dx[i] += static_cast<float>(-acc[i] / (static_cast<double>(x[i]) * x[i]));
              break;
          }
        }
      },
      std::max<int64_t>(1, kMinChunk / std::max<int64_t>(1, std::min(kGradBlock, width) * reduced.count)));
}

// X as large as the output (nothing to sum): dX[p] += scale * dy[p] * v(p) in float, in blocks of
// kElementBlock columns of the last dim (the plan merges a same-shape pair into one dim).
constexpr int64_t kElementBlock = 4096;

template <Term T, bool kVaries>
void grad_elementwise(const GradJob& job, const OuterDims& kept, int64_t width, ThreadPool& pool) {
  const GradJob g = job;
  const int64_t blocks = (width + kElementBlock - 1) / kElementBlock;
  pool.parallel_for(
      kept.count * blocks,
      [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t c0 = (task % blocks) * kElementBlock, w = std::min(kElementBlock, width - c0);
          int64_t out0, o0, x0;
          kept.offsets(task / blocks, &out0, &o0, &x0);
          const int64_t p = out0 + c0;
          const float* dy = g.dy + p;
          const float* y = g.y == nullptr ? nullptr : g.y + p;
          const float* ov = g.o == nullptr ? nullptr : g.o + o0 + (kVaries ? c0 : 0);
          float* dx = g.dx + x0 + c0;
          const float* x = g.x == nullptr ? nullptr : g.x + x0 + c0;
          switch (g.scale) {
            case Scale::Plus:
              for (int64_t i = 0; i < w; ++i) dx[i] += term_at<T, kVaries>(dy, ov, y, i);
              break;
            case Scale::Minus:
              for (int64_t i = 0; i < w; ++i) dx[i] -= term_at<T, kVaries>(dy, ov, y, i);
              break;
            case Scale::NegInvX:
              for (int64_t i = 0; i < w; ++i) dx[i] -= term_at<T, kVaries>(dy, ov, y, i) / x[i];
              break;
            case Scale::NegInvX2:
              for (int64_t i = 0; i < w; ++i) dx[i] -= term_at<T, kVaries>(dy, ov, y, i) / (x[i] * x[i]);
              break;
          }
        }
      },
      std::max<int64_t>(1, kMinChunk / std::min(kElementBlock, width)));
}

template <Term T>
void operand_grad(const GradJob& job, const BroadcastPlan& plan, ThreadPool& pool) {
  const std::vector<int64_t>& dims = plan.dims;
  const std::vector<int64_t>& sx = *job.sx;
  const std::vector<int64_t>& so = *job.so;
  const size_t last = dims.size() - 1;
  CAMRT_CHECK(dims.size() <= kMaxPlanRank, "binary backward: a broadcast over " << dims.size()
                                                                             << " non-mergeable dims is not supported");
  OuterDims kept, reduced;
  int64_t out_stride = dims[last];  // contiguous output strides, innermost first
  for (size_t k = last; k-- > 0;) {
    if (sx[k] == 0) {
      reduced.add_outer(dims[k], out_stride, so[k], 0);
    } else {
      kept.add_outer(dims[k], out_stride, so[k], sx[k]);
    }
    out_stride *= dims[k];
  }
  const bool varies = T == Term::Other || T == Term::InvOther ? so[last] != 0 : false;
  if (sx[last] == 0) {
    if (varies) return grad_reduce_last<T, true>(job, kept, reduced, dims[last], pool);
    return grad_reduce_last<T, false>(job, kept, reduced, dims[last], pool);
  }
  if (reduced.count == 1) {
    if (varies) return grad_elementwise<T, true>(job, kept, dims[last], pool);
    return grad_elementwise<T, false>(job, kept, dims[last], pool);
  }
  if (varies) return grad_keep_last<T, true>(job, kept, reduced, dims[last], pool);
  return grad_keep_last<T, false>(job, kept, reduced, dims[last], pool);
}

}  // namespace

const char* binary_op_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::Add: return "Add";
    case BinaryOp::Sub: return "Sub";
    case BinaryOp::Mul: return "Mul";
    case BinaryOp::Div: return "Div";
  }
  return "?";
}

bool broadcast_shapes(const std::vector<int64_t>& a_shape, const std::vector<int64_t>& b_shape,
                      std::vector<int64_t>* out_shape) {
  const size_t rank = std::max(a_shape.size(), b_shape.size());
  std::vector<int64_t> out(rank);
  for (size_t k = 0; k < rank; ++k) {
    // Align from the right; missing leading dims count as 1.
    const int64_t da = k < rank - a_shape.size() ? 1 : a_shape[k - (rank - a_shape.size())];
    const int64_t db = k < rank - b_shape.size() ? 1 : b_shape[k - (rank - b_shape.size())];
    if (da == db || db == 1) {
      out[k] = da;
    } else if (da == 1) {
      out[k] = db;
    } else {
      return false;
    }
  }
  *out_shape = std::move(out);
  return true;
}

BroadcastPlan make_broadcast_plan(const std::vector<int64_t>& a_shape, const std::vector<int64_t>& b_shape) {
  std::vector<int64_t> out;
  if (!broadcast_shapes(a_shape, b_shape, &out)) {
    std::vector<int64_t> shapes[2] = {a_shape, b_shape};
    std::string text[2];
    for (int s = 0; s < 2; ++s) {
      text[s] = "(";
      for (size_t k = 0; k < shapes[s].size(); ++k) text[s] += (k ? ", " : "") + std::to_string(shapes[s][k]);
      text[s] += shapes[s].size() == 1 ? ",)" : ")";
    }
    CAMRT_FAIL("shapes " << text[0] << " and " << text[1] << " do not broadcast");
  }
  const size_t rank = out.size();
  // Each operand's contiguous strides in its own shape, padded on the left to the output rank; 0 where the
  // operand has size 1 against a larger output dim.
  std::vector<int64_t> sa(rank), sb(rank);
  int64_t acc_a = 1, acc_b = 1;
  for (size_t k = rank; k-- > 0;) {
    const int64_t da = k < rank - a_shape.size() ? 1 : a_shape[k - (rank - a_shape.size())];
    const int64_t db = k < rank - b_shape.size() ? 1 : b_shape[k - (rank - b_shape.size())];
    sa[k] = da == 1 ? 0 : acc_a;
    sb[k] = db == 1 ? 0 : acc_b;
    acc_a *= da;
    acc_b *= db;
  }
  BroadcastPlan plan;
  plan.numel = 1;
  for (size_t k = 0; k < rank; ++k) {
    if (out[k] == 0) {  // nothing to compute; keep a valid one-dim plan
      plan.dims = {0};
      plan.a_strides = {1};
      plan.b_strides = {1};
      plan.numel = 0;
      return plan;
    }
    plan.numel *= out[k];
    if (out[k] == 1) continue;  // size-1 output dims index nothing
    // Merge into the previous kept dim when both operands step through the pair as through one dim.
    if (!plan.dims.empty() && plan.a_strides.back() == sa[k] * out[k] && plan.b_strides.back() == sb[k] * out[k]) {
      plan.dims.back() *= out[k];
      plan.a_strides.back() = sa[k];
      plan.b_strides.back() = sb[k];
    } else {
      plan.dims.push_back(out[k]);
      plan.a_strides.push_back(sa[k]);
      plan.b_strides.push_back(sb[k]);
    }
  }
  if (plan.dims.empty()) {  // every dim is 1: one element
    plan.dims = {1};
    plan.a_strides = {1};
    plan.b_strides = {1};
  }
  return plan;
}

void binary_forward(float* out, const float* a, const float* b, const BroadcastPlan& plan, BinaryOp op,
                    ThreadPool& pool, const FusedActivation& act) {
  dispatch(out, a, b, plan, op, act, pool);
}

void binary_forward(int64_t* out, const int64_t* a, const int64_t* b, const BroadcastPlan& plan, BinaryOp op,
                    ThreadPool& pool) {
  dispatch(out, a, b, plan, op, FusedActivation{}, pool);
}

void binary_backward(float* da, float* db, const float* dy, const float* a, const float* b, const float* y,
                     const BroadcastPlan& plan, BinaryOp op, ThreadPool& pool) {
  if (plan.numel == 0 || (da == nullptr && db == nullptr)) return;
  CAMRT_CHECK(dy != nullptr, binary_op_name(op) << " backward: dy is missing");
  if (da != nullptr) {
    GradJob job;
    job.dx = da;
    job.x = a;
    job.dy = dy;
    job.sx = &plan.a_strides;
    job.so = &plan.b_strides;
    switch (op) {
      case BinaryOp::Add:
      case BinaryOp::Sub:
        operand_grad<Term::One>(job, plan, pool);
        break;
      case BinaryOp::Mul:
      case BinaryOp::Div:
        CAMRT_CHECK(b != nullptr, binary_op_name(op) << " backward: the gradient of a needs b");
        job.o = b;
        if (op == BinaryOp::Mul) {
          operand_grad<Term::Other>(job, plan, pool);
        } else {
          operand_grad<Term::InvOther>(job, plan, pool);
        }
        break;
    }
  }
  if (db != nullptr) {
    GradJob job;
    job.dx = db;
    job.x = b;
    job.dy = dy;
    job.sx = &plan.b_strides;
    job.so = &plan.a_strides;
    switch (op) {
      case BinaryOp::Add:
        operand_grad<Term::One>(job, plan, pool);
        break;
      case BinaryOp::Sub:
        job.scale = Scale::Minus;
        operand_grad<Term::One>(job, plan, pool);
        break;
      case BinaryOp::Mul:
        CAMRT_CHECK(a != nullptr, "Mul backward: the gradient of b needs a");
        job.o = a;
        operand_grad<Term::Other>(job, plan, pool);
        break;
      case BinaryOp::Div:
        CAMRT_CHECK(b != nullptr && (y != nullptr || a != nullptr), "Div backward: the gradient of b needs b and y (or a)");
        if (y != nullptr) {
          job.y = y;
          job.scale = Scale::NegInvX;
          operand_grad<Term::Out>(job, plan, pool);
        } else {
          job.o = a;
          job.scale = Scale::NegInvX2;
          operand_grad<Term::Other>(job, plan, pool);
        }
        break;
    }
  }
}

}  // namespace camrt
