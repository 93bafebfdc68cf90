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
template <BinaryOp OP, typename T>
void run_rows(T* out, const T* full, const T* vec, int64_t rows, int64_t inner, int64_t count, bool vec_first,
              ThreadPool& pool) {
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
void run_strided(T* out, const T* a, const T* b, const BroadcastPlan& plan, ThreadPool& pool) {
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

template <BinaryOp OP, typename T>
void run(T* out, const T* a, const T* b, const BroadcastPlan& plan, ThreadPool& pool) {
  if (plan.numel == 0) return;
  const std::vector<int64_t>& d = plan.dims;
  const std::vector<int64_t>& sa = plan.a_strides;
  const std::vector<int64_t>& sb = plan.b_strides;
  if (d.size() == 1) {
    const int64_t n = d[0];
    pool.parallel_for(
        n, [=](int64_t begin, int64_t end) { inner_loop<OP>(out + begin, a + begin * sa[0], b + begin * sb[0], end - begin, sa[0], sb[0]); },
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
      return run_rows<OP>(out, full, vec, d[0], d[1], d[0], vec_first, pool);
    if (d.size() == 3 && sv[0] == 0 && sv[1] == 1 && sv[2] == 0)
      return run_rows<OP>(out, full, vec, d[0] * d[1], d[2], d[1], vec_first, pool);
  }
  run_strided<OP>(out, a, b, plan, pool);
}

template <typename T>
void dispatch(T* out, const T* a, const T* b, const BroadcastPlan& plan, BinaryOp op, ThreadPool& pool) {
  switch (op) {
    case BinaryOp::Add: return run<BinaryOp::Add>(out, a, b, plan, pool);
    case BinaryOp::Sub: return run<BinaryOp::Sub>(out, a, b, plan, pool);
    case BinaryOp::Mul: return run<BinaryOp::Mul>(out, a, b, plan, pool);
    case BinaryOp::Div: return run<BinaryOp::Div>(out, a, b, plan, pool);
  }
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
                    ThreadPool& pool) {
  dispatch(out, a, b, plan, op, pool);
}

void binary_forward(int64_t* out, const int64_t* a, const int64_t* b, const BroadcastPlan& plan, BinaryOp op,
                    ThreadPool& pool) {
  dispatch(out, a, b, plan, op, pool);
}

}  // namespace camrt
