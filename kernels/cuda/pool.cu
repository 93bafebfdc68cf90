// CUDA pooling kernels, the twins of kernels/cpu/pool.cpp. Forward: one thread per output, window taps
// visited in the CPU kernel's order (d, h, w), so max and sum are bit-identical to it. Backward: one thread per
// dx element gathers every window covering it in ascending output order, exactly the order in which the CPU
// kernel scatters them, so results are bit-identical too, with no atomics. Global pools: a warp (or, for large
// planes, a block) per plane, accumulating in double like the CPU's sum_f32.
#include <cmath>

#include "kernels/cuda/check.h"
#include "kernels/cuda/pool.h"

namespace camrt::cuda {

namespace {

constexpr int kThreads = 256;
// Planes at least this large are summed by a whole block instead of one warp: a warp would loop 64+ times.
constexpr int64_t kBlockPerPlaneSpatial = 2048;

// Device twin of pool_taps (kernels/cpu/pool.h): the same integer arithmetic, kept in step with it.
struct Taps {
  int64_t start;         // input index of tap 0; negative inside the begin padding
  int64_t k_begin;       // taps [k_begin, k_end) land inside the input
  int64_t k_end;
  int64_t padded_count;  // taps inside begin pad + input + end pad
};

__device__ __forceinline__ int64_t first_tap_at(int64_t start, int64_t k, int64_t d, int64_t limit) {
  const int64_t gap = limit - start;
  if (gap <= 0) return 0;
  const int64_t taps = (gap + d - 1) / d;
  return taps < k ? taps : k;
}

__device__ __forceinline__ Taps taps_of(const PoolGeometry& g, int axis, int64_t o) {
  const int64_t k = g.kernel[axis], d = g.dilation[axis];
  Taps t;
  t.start = o * g.stride[axis] - g.pad_begin[axis];
  t.k_begin = first_tap_at(t.start, k, d, 0);
  const int64_t end = first_tap_at(t.start, k, d, g.in[axis]);
  t.k_end = end > t.k_begin ? end : t.k_begin;
  t.padded_count = first_tap_at(t.start, k, d, g.in[axis] + g.pad_end[axis]);
  return t;
}

__device__ __forceinline__ int64_t window_count(const Taps& td, const Taps& th, const Taps& tw, bool include_pad) {
  if (include_pad) return td.padded_count * th.padded_count * tw.padded_count;
  return (td.k_end - td.k_begin) * (th.k_end - th.k_begin) * (tw.k_end - tw.k_begin);
}

// One step of max pooling over floats: v wins if greater, or if NaN (NaN propagates, as in PyTorch and the CPU
// twin's accumulate<true>); ties keep the earlier tap.
__device__ __forceinline__ float max_step(float best, float v) { return (v > best || v != v) ? v : best; }

__device__ __forceinline__ int64_t grid_start() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_step() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

template <bool kMax>
__global__ void pool_forward_kernel(float* __restrict__ out, const float* __restrict__ in, const PoolGeometry g,
                                    bool include_pad, int64_t total) {
  const int64_t hw = g.in[1] * g.in[2], in_plane = g.in[0] * hw;
  for (int64_t i = grid_start(); i < total; i += grid_step()) {
    int64_t rest = i;
    const int64_t ow = rest % g.out[2];
    rest /= g.out[2];
    const int64_t oh = rest % g.out[1];
    rest /= g.out[1];
    const int64_t od = rest % g.out[0];
    const int64_t p = rest / g.out[0];
    const Taps td = taps_of(g, 0, od), th = taps_of(g, 1, oh), tw = taps_of(g, 2, ow);
    const float* plane = in + p * in_plane;
    float acc = kMax ? -INFINITY : 0.f;
    for (int64_t kd = td.k_begin; kd < td.k_end; ++kd) {
      const int64_t at_d = (td.start + kd * g.dilation[0]) * hw;
      for (int64_t kh = th.k_begin; kh < th.k_end; ++kh) {
        const int64_t at_h = at_d + (th.start + kh * g.dilation[1]) * g.in[2] + tw.start;
        for (int64_t kw = tw.k_begin; kw < tw.k_end; ++kw) {
          const float v = plane[at_h + kw * g.dilation[2]];
          if (kMax)
            acc = max_step(acc, v);
          else
            acc += v;
        }
      }
    }
    out[i] = kMax ? acc : acc / static_cast<float>(window_count(td, th, tw, include_pad));
  }
}

// Half-bit max, the CPU twin's (kernels/cpu/pool.cpp), kept in step with it: for non-NaN halves the
// sign-magnitude bits map to a signed integer in value order (-0 and +0 tie at 0); a NaN wins and stays.
__device__ __forceinline__ int32_t half_order(uint16_t h) {
  const int32_t magnitude = h & 0x7fff;
  return (h & 0x8000) ? -magnitude : magnitude;
}
__device__ __forceinline__ bool half_is_nan(uint16_t h) { return (h & 0x7fffu) > 0x7c00u; }
__device__ __forceinline__ uint16_t max_step(uint16_t best, uint16_t v) {
  return (half_is_nan(v) || (!half_is_nan(best) && half_order(v) > half_order(best))) ? v : best;
}

// The value of a window with no input tap (-inf), and the final touch of a window's max: a half NaN comes out
// quiet (bit 9 set), as the float reference's float_to_half leaves it; a float is left as it is.
__device__ __forceinline__ void max_empty(float& best) { best = -INFINITY; }
__device__ __forceinline__ void max_empty(uint16_t& best) { best = 0xfc00; }
__device__ __forceinline__ float max_finish(float best) { return best; }
__device__ __forceinline__ uint16_t max_finish(uint16_t best) {
  return half_is_nan(best) ? static_cast<uint16_t>(best | 0x0200) : best;
}

// One thread per output, channel fastest: a warp reads 32 consecutive channels of each tap (coalesced) and
// visits the taps in the CPU's order (d, h, w), so ties and NaNs resolve the same way. T: half bits or float.
template <typename T>
__global__ void max_pool_nhwc_kernel(T* __restrict__ out, const T* __restrict__ in, const PoolGeometry g,
                                     int64_t channels, int64_t total) {
  const int64_t in_image = g.in[0] * g.in[1] * g.in[2] * channels;
  for (int64_t i = grid_start(); i < total; i += grid_step()) {
    int64_t rest = i;
    const int64_t c = rest % channels;
    rest /= channels;
    const int64_t ow = rest % g.out[2];
    rest /= g.out[2];
    const int64_t oh = rest % g.out[1];
    rest /= g.out[1];
    const int64_t od = rest % g.out[0];
    const int64_t image = rest / g.out[0];
    const Taps td = taps_of(g, 0, od), th = taps_of(g, 1, oh), tw = taps_of(g, 2, ow);
    const T* x = in + image * in_image + c;
    T best;
    max_empty(best);
    for (int64_t kd = td.k_begin; kd < td.k_end; ++kd) {
      const int64_t d = td.start + kd * g.dilation[0];
      for (int64_t kh = th.k_begin; kh < th.k_end; ++kh) {
        const int64_t h = th.start + kh * g.dilation[1];
        for (int64_t kw = tw.k_begin; kw < tw.k_end; ++kw) {
          const int64_t w = tw.start + kw * g.dilation[2];
          best = max_step(best, x[((d * g.in[1] + h) * g.in[2] + w) * channels]);
        }
      }
    }
    out[i] = max_finish(best);
  }
}

template <typename T>
void launch_max_pool_nhwc(T* out, const T* in, int64_t images, int64_t channels, const PoolGeometry& g,
                          cudaStream_t stream) {
  CAMRT_CHECK(images >= 0 && channels >= 0,
              "max_pool_forward_nhwc: negative size (images " << images << ", channels " << channels << ")");
  const int64_t total = images * g.out_plane() * channels;
  if (total == 0) return;
  max_pool_nhwc_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(out, in, g, channels, total);
  CAMRT_CUDA_CHECK_LAUNCH("max_pool_nhwc_kernel");
}

// Plane offset of the tap that receives a max window's gradient, or -1: the CPU twin's max_tap.
__device__ int64_t max_tap(const float* plane, const PoolGeometry& g, const Taps& td, const Taps& th, const Taps& tw,
                           float y) {
  const int64_t hw = g.in[1] * g.in[2];
  const bool nan = y != y;
  int64_t last_nan = -1;
  for (int64_t kd = td.k_begin; kd < td.k_end; ++kd) {
    const int64_t at_d = (td.start + kd * g.dilation[0]) * hw;
    for (int64_t kh = th.k_begin; kh < th.k_end; ++kh) {
      const int64_t at_h = at_d + (th.start + kh * g.dilation[1]) * g.in[2] + tw.start;
      for (int64_t kw = tw.k_begin; kw < tw.k_end; ++kw) {
        const int64_t offset = at_h + kw * g.dilation[2];
        const float v = plane[offset];
        if (nan) {
          if (v != v) last_nan = offset;
        } else if (v == y) {
          return offset;
        }
      }
    }
  }
  return last_nan;
}

// The output index along one axis of the window whose tap k lands on input index x, or -1 if none does.
// Callers walk k downwards, so outputs come in ascending order.
__device__ __forceinline__ int64_t window_at(const PoolGeometry& g, int axis, int64_t x, int64_t k) {
  const int64_t n = x + g.pad_begin[axis] - k * g.dilation[axis];  // o * stride
  if (n < 0 || n % g.stride[axis] != 0) return -1;
  return n / g.stride[axis];
}

// One thread per dx element: visits every window covering it in ascending output order (kd, kh, kw walk
// downwards) and adds that window's contribution, as the CPU twin adds them one window after another.
template <bool kMax>
__global__ void pool_backward_kernel(float* __restrict__ dx, const float* __restrict__ dy, const float* __restrict__ in,
                                     const float* __restrict__ out, const PoolGeometry g, bool include_pad, int64_t total) {
  const int64_t hw = g.in[1] * g.in[2], in_plane = g.in[0] * hw;
  const int64_t out_plane = g.out[0] * g.out[1] * g.out[2];
  for (int64_t i = grid_start(); i < total; i += grid_step()) {
    int64_t rest = i;
    const int64_t xw = rest % g.in[2];
    rest /= g.in[2];
    const int64_t xh = rest % g.in[1];
    rest /= g.in[1];
    const int64_t xd = rest % g.in[0];
    const int64_t p = rest / g.in[0];
    const int64_t self = i - p * in_plane;  // offset in the plane
    const float v = kMax ? in[i] : 0.f;
    const float* x_plane = kMax ? in + p * in_plane : nullptr;
    const float* y_plane = kMax ? out + p * out_plane : nullptr;
    const float* dy_plane = dy + p * out_plane;
    float acc = dx[i];
    for (int64_t kd = g.kernel[0] - 1; kd >= 0; --kd) {
      const int64_t od = window_at(g, 0, xd, kd);
      if (od < 0) continue;
      if (od >= g.out[0]) break;  // smaller kd only gives later windows
      const Taps td = taps_of(g, 0, od);
      for (int64_t kh = g.kernel[1] - 1; kh >= 0; --kh) {
        const int64_t oh = window_at(g, 1, xh, kh);
        if (oh < 0) continue;
        if (oh >= g.out[1]) break;
        const Taps th = taps_of(g, 1, oh);
        for (int64_t kw = g.kernel[2] - 1; kw >= 0; --kw) {
          const int64_t ow = window_at(g, 2, xw, kw);
          if (ow < 0) continue;
          if (ow >= g.out[2]) break;
          const Taps tw = taps_of(g, 2, ow);
          const int64_t o = (od * g.out[1] + oh) * g.out[2] + ow;
          if (kMax) {
            const float y = y_plane[o];
            // Cheap test first: only an input equal to the output (or a NaN, for a NaN output) can be the argmax.
            if (y != y ? v == v : v != y) continue;
            if (max_tap(x_plane, g, td, th, tw, y) == self) acc += dy_plane[o];
          } else {
            const int64_t count = window_count(td, th, tw, include_pad);  // >= 1: this element is a tap
            acc += dy_plane[o] / static_cast<float>(count);
          }
        }
      }
    }
    dx[i] = acc;
  }
}

__device__ __forceinline__ double warp_sum(double s) {
  for (int offset = 16; offset > 0; offset /= 2) s += __shfl_down_sync(0xffffffffu, s, offset);
  return s;  // complete in lane 0
}

// Mean of each plane; kGroup threads (a warp, or the whole block) per plane. The loop over planes is uniform
// across the block, so the barriers inside are reached by every thread.
template <int kGroup>
__global__ void plane_mean_kernel(float* __restrict__ out, const float* __restrict__ in, int64_t planes, int64_t spatial) {
  constexpr int kGroupsPerBlock = kThreads / kGroup;
  constexpr int kWarps = kThreads / 32;
  __shared__ double partial[kWarps];
  const int lane = static_cast<int>(threadIdx.x) % kGroup, group = static_cast<int>(threadIdx.x) / kGroup;
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * kGroupsPerBlock; first < planes;
       first += static_cast<int64_t>(gridDim.x) * kGroupsPerBlock) {
    const int64_t p = first + group;
    double s = 0;
    if (p < planes)
      for (int64_t j = lane; j < spatial; j += kGroup) s += in[p * spatial + j];
    s = warp_sum(s);
    if (kGroup > 32) {
      if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = s;
      __syncthreads();
      if (threadIdx.x == 0) {
        s = 0;
        for (int w = 0; w < kWarps; ++w) s += partial[w];  // fixed order: deterministic
      }
      __syncthreads();  // partial is rewritten by the next plane
    }
    if (lane == 0 && p < planes) out[p] = static_cast<float>(s / static_cast<double>(spatial));  // 0 / 0: NaN
  }
}

__global__ void plane_broadcast_backward_kernel(float* __restrict__ dx, const float* __restrict__ dy, int64_t spatial,
                                                int64_t total) {
  const float count = static_cast<float>(spatial);
  for (int64_t i = grid_start(); i < total; i += grid_step()) dx[i] += dy[i / spatial] / count;
}

int64_t numel(const PoolGeometry& g, bool output) {
  return g.planes * (output ? g.out_plane() : g.in_plane());
}

}  // namespace

void max_pool_forward(float* out, const float* in, const PoolGeometry& g, cudaStream_t stream) {
  const int64_t total = numel(g, true);
  if (total == 0) return;
  pool_forward_kernel<true><<<grid_for(total), kThreads, 0, stream>>>(out, in, g, false, total);
  CAMRT_CUDA_CHECK_LAUNCH("max_pool_forward_kernel");
}

void max_pool_forward_nhwc(uint16_t* out, const uint16_t* in, int64_t images, int64_t channels,
                           const PoolGeometry& g, cudaStream_t stream) {
  launch_max_pool_nhwc(out, in, images, channels, g, stream);
}

void max_pool_forward_nhwc(float* out, const float* in, int64_t images, int64_t channels, const PoolGeometry& g,
                           cudaStream_t stream) {
  launch_max_pool_nhwc(out, in, images, channels, g, stream);
}

void average_pool_forward(float* out, const float* in, const PoolGeometry& g, bool count_include_pad, cudaStream_t stream) {
  const int64_t total = numel(g, true);
  if (total == 0) return;
  pool_forward_kernel<false><<<grid_for(total), kThreads, 0, stream>>>(out, in, g, count_include_pad, total);
  CAMRT_CUDA_CHECK_LAUNCH("average_pool_forward_kernel");
}

void global_average_pool_forward(float* out, const float* in, int64_t planes, int64_t spatial, cudaStream_t stream) {
  if (planes == 0) return;
  if (spatial >= kBlockPerPlaneSpatial) {
    plane_mean_kernel<kThreads><<<grid_for(planes * kThreads), kThreads, 0, stream>>>(out, in, planes, spatial);
  } else {
    plane_mean_kernel<32><<<grid_for(planes * 32), kThreads, 0, stream>>>(out, in, planes, spatial);
  }
  CAMRT_CUDA_CHECK_LAUNCH("global_average_pool_forward_kernel");
}

void max_pool_backward(float* dx, const float* dy, const float* in, const float* out, const PoolGeometry& g,
                       cudaStream_t stream) {
  const int64_t total = numel(g, false);
  if (total == 0 || g.out_plane() == 0) return;
  pool_backward_kernel<true><<<grid_for(total), kThreads, 0, stream>>>(dx, dy, in, out, g, false, total);
  CAMRT_CUDA_CHECK_LAUNCH("max_pool_backward_kernel");
}

void average_pool_backward(float* dx, const float* dy, const PoolGeometry& g, bool count_include_pad, cudaStream_t stream) {
  const int64_t total = numel(g, false);
  if (total == 0 || g.out_plane() == 0) return;
  pool_backward_kernel<false><<<grid_for(total), kThreads, 0, stream>>>(dx, dy, nullptr, nullptr, g, count_include_pad,
                                                                          total);
  CAMRT_CUDA_CHECK_LAUNCH("average_pool_backward_kernel");
}

void global_average_pool_backward(float* dx, const float* dy, int64_t planes, int64_t spatial, cudaStream_t stream) {
  const int64_t total = planes * spatial;
  if (total == 0) return;
  plane_broadcast_backward_kernel<<<grid_for(total), kThreads, 0, stream>>>(dx, dy, spatial, total);
  CAMRT_CUDA_CHECK_LAUNCH("global_average_pool_backward_kernel");
}

}  // namespace camrt::cuda
