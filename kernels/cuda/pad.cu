// Pad kernels on the GPU. Forward: one thread per output element maps each coordinate back to the input (the CPU
// twin's source_index). Backward: one thread per input element enumerates, per dim, the output coordinates that
// read it (an interval for edge, a periodic pair for reflect, at most one for constant) and walks their
// combinations with an odometer, innermost dim fastest: ascending output offsets, the CPU twin's order.
#include "kernels/cuda/pad.h"

#include <cstdint>

#include "kernels/cuda/check.h"

namespace camrt::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxRank = 16;
constexpr int64_t kNone = INT64_MAX;  // "no (further) reader"

struct PadGeometry {
  int rank = 0;
  PadMode mode = PadMode::Constant;
  int64_t in_dims[kMaxRank];
  int64_t out_dims[kMaxRank];
  int64_t begin[kMaxRank];
  int64_t in_strides[kMaxRank];   // contiguous
  int64_t out_strides[kMaxRank];  // contiguous
};

PadGeometry make_geometry(const int64_t* in_dims, const int64_t* out_dims, const int64_t* pads_begin, int64_t rank,
                          PadMode mode, int64_t* in_numel, int64_t* out_numel) {
  CAMRT_CHECK(rank >= 0 && rank <= kMaxRank, "CUDA Pad: rank " << rank << " is not supported (max " << kMaxRank << ")");
  PadGeometry g;
  g.rank = static_cast<int>(rank);
  g.mode = mode;
  int64_t in_acc = 1, out_acc = 1;
  for (int d = g.rank - 1; d >= 0; --d) {
    g.in_dims[d] = in_dims[d];
    g.out_dims[d] = out_dims[d];
    g.begin[d] = pads_begin[d];
    g.in_strides[d] = in_acc;
    g.out_strides[d] = out_acc;
    in_acc *= in_dims[d];
    out_acc *= out_dims[d];
  }
  *in_numel = in_acc;
  *out_numel = out_acc;
  return g;
}

__device__ __forceinline__ int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

// The input coordinate output coordinate o reads along a dim, or -1 for "use the constant" (the CPU twin's
// source_index; reflect excludes the edge, numpy's "reflect").
__device__ int64_t source_index(int64_t o, int64_t begin, int64_t size, PadMode mode) {
  int64_t i = o - begin;
  if (i >= 0 && i < size) return i;
  switch (mode) {
    case PadMode::Constant: return -1;
    case PadMode::Edge: return i < 0 ? 0 : size - 1;
    case PadMode::Reflect: {
      if (size == 1) return 0;
      const int64_t period = 2 * (size - 1);
      i %= period;
      if (i < 0) i += period;
      return i < size ? i : period - i;
    }
  }
  return -1;
}

__global__ void pad_forward_kernel(float* out, const float* in, int64_t out_numel, PadGeometry g, float value,
                                   const float* value_device) {
  if (value_device != nullptr) value = *value_device;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < out_numel; e += stride) {
    int64_t rest = e, in_offset = 0;
    bool constant = false;
    for (int d = g.rank - 1; d >= 0; --d) {
      const int64_t o = rest % g.out_dims[d];
      rest /= g.out_dims[d];
      const int64_t i = g.in_dims[d] > 0 ? source_index(o, g.begin[d], g.in_dims[d], g.mode) : -1;
      if (i < 0) constant = true;
      else in_offset += i * g.in_strides[d];
    }
    out[e] = constant ? value : in[in_offset];
  }
}

// Readers of input coordinate i along one dim, in the shifted coordinate t = o - begin, restricted to the output
// range [lo, hi] = [-begin, out_dim - 1 - begin]. first() is the smallest reader, next(t) the one after t; both
// return kNone when there is none. size > 0.
struct Readers {
  int64_t i, size, lo, hi;
  PadMode mode;

  __device__ int64_t first() const {
    if (mode == PadMode::Constant) return i >= lo && i <= hi ? i : kNone;
    if (mode == PadMode::Edge || size == 1) {  // reflect of size 1 reads element 0 everywhere, like edge
      const int64_t a = i == 0 ? lo : (i > lo ? i : lo);
      const int64_t b = i == size - 1 ? hi : (i < hi ? i : hi);
      return a <= b ? a : kNone;
    }
    // Reflect: t reads i where t mod P is i or P - i (P = 2 (size - 1)); within one period i < P - i, and the
    // second residue exists only for 0 < i < size - 1 (otherwise it coincides with i).
    const int64_t period = 2 * (size - 1);
    const int64_t base = floor_div(lo, period) * period;
    int64_t t = base + i;
    if (t < lo) t = has_mirror() ? base + period - i : base + period + i;
    if (t < lo) t = base + period + i;
    return t <= hi ? t : kNone;
  }

  __device__ int64_t next(int64_t t) const {
    if (mode == PadMode::Constant) return kNone;
    if (mode == PadMode::Edge || size == 1) {
      const int64_t b = i == size - 1 ? hi : (i < hi ? i : hi);
      return t + 1 <= b ? t + 1 : kNone;
    }
    const int64_t period = 2 * (size - 1);
    const int64_t base = floor_div(t, period) * period;
    const int64_t n = (t - base == i && has_mirror()) ? base + period - i : base + period + i;
    return n <= hi ? n : kNone;
  }

  __device__ bool has_mirror() const { return i > 0 && i < size - 1; }
};

__global__ void pad_backward_kernel(float* dx, const float* dy, int64_t in_numel, PadGeometry g) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < in_numel; e += stride) {
    Readers readers[kMaxRank];
    int64_t t[kMaxRank];
    int64_t rest = e;
    bool read = true;
    for (int d = g.rank - 1; d >= 0; --d) {
      const int64_t i = rest % g.in_dims[d];
      rest /= g.in_dims[d];
      readers[d] = Readers{i, g.in_dims[d], -g.begin[d], g.out_dims[d] - 1 - g.begin[d], g.mode};
      t[d] = readers[d].first();
      read = read && t[d] != kNone;
    }
    if (!read) continue;  // cropped away (or, in constant mode, never read)
    float acc = dx[e];
    for (;;) {
      int64_t out_offset = 0;
      for (int d = 0; d < g.rank; ++d) out_offset += (t[d] + g.begin[d]) * g.out_strides[d];
      acc = __fadd_rn(acc, dy[out_offset]);
      int d = g.rank - 1;
      for (; d >= 0; --d) {
        const int64_t n = readers[d].next(t[d]);
        if (n != kNone) {
          t[d] = n;
          break;
        }
        t[d] = readers[d].first();
      }
      if (d < 0) break;
    }
    dx[e] = acc;
  }
}

}  // namespace

void pad_forward(float* out, const float* in, const int64_t* in_dims, const int64_t* out_dims,
                 const int64_t* pads_begin, int64_t rank, PadMode mode, float value, cudaStream_t stream) {
  pad_forward(out, in, in_dims, out_dims, pads_begin, rank, mode, value, nullptr, stream);
}

void pad_forward(float* out, const float* in, const int64_t* in_dims, const int64_t* out_dims,
                 const int64_t* pads_begin, int64_t rank, PadMode mode, float value, const float* value_device,
                 cudaStream_t stream) {
  int64_t in_numel = 0, out_numel = 0;
  const PadGeometry g = make_geometry(in_dims, out_dims, pads_begin, rank, mode, &in_numel, &out_numel);
  if (out_numel <= 0) return;
  pad_forward_kernel<<<grid_for(out_numel, kThreads), kThreads, 0, stream>>>(out, in, out_numel, g, value,
                                                                             value_device);
  CAMRT_CUDA_CHECK_LAUNCH("pad_forward_kernel");
}

void pad_backward(float* dx, const float* dy, const int64_t* in_dims, const int64_t* out_dims,
                  const int64_t* pads_begin, int64_t rank, PadMode mode, cudaStream_t stream) {
  int64_t in_numel = 0, out_numel = 0;
  const PadGeometry g = make_geometry(in_dims, out_dims, pads_begin, rank, mode, &in_numel, &out_numel);
  if (in_numel <= 0 || out_numel <= 0) return;
  pad_backward_kernel<<<grid_for(in_numel, kThreads), kThreads, 0, stream>>>(dx, dy, in_numel, g);
  CAMRT_CUDA_CHECK_LAUNCH("pad_backward_kernel");
}

}  // namespace camrt::cuda
