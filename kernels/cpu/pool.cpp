// CPU pooling kernels, threaded over planes (N*C). Every window is clipped to the input through
// pool_taps, so no padded copy of the input is made. 2-D pools without W dilation take a fast path whose
// interior columns (window fully inside the row) skip all clipping. Backward kernels scatter each window's
// gradient into its plane of dx; one plane belongs to one worker, so overlapping windows never race.
// The channels-last max pool (half bits or float32) is threaded over output positions instead; on half it
// compares the bits directly: max only selects, so no conversion is needed.
#include "kernels/cpu/pool.h"

#include <limits>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/reduce.h"

namespace camrt {

namespace {

// Below this many window taps per chunk, waking workers (about 10 us) costs more than the work.
constexpr int64_t kMinTapsPerChunk = int64_t(1) << 15;

template <bool kMax>
inline void accumulate(float& acc, float v) {
  if (kMax)
    acc = (v > acc || v != v) ? v : acc;  // v != v: NaN wins, as in PyTorch
  else
    acc += v;
}

template <bool kMax>
inline float initial() {
  return kMax ? -std::numeric_limits<float>::infinity() : 0.f;
}

template <bool kMax>
inline float finish(float acc, int64_t count) {
  return kMax ? acc : acc / static_cast<float>(count);
}

inline int64_t window_count(const PoolTaps& td, const PoolTaps& th, const PoolTaps& tw, bool include_pad) {
  if (include_pad) return td.padded_count * th.padded_count * tw.padded_count;
  return (td.k_end - td.k_begin) * (th.k_end - th.k_begin) * (tw.k_end - tw.k_begin);
}

// One output value from its clipped window; plane is one (D, H, W) input plane.
template <bool kMax>
inline float pool_window(const float* plane, const PoolGeometry& g, const PoolTaps& td, const PoolTaps& th,
                         const PoolTaps& tw, bool include_pad) {
  const int64_t hw = g.in[1] * g.in[2];
  float acc = initial<kMax>();
  for (int64_t kd = td.k_begin; kd < td.k_end; ++kd) {
    const float* pd = plane + (td.start + kd * g.dilation[0]) * hw;
    for (int64_t kh = th.k_begin; kh < th.k_end; ++kh) {
      const float* ph = pd + (th.start + kh * g.dilation[1]) * g.in[2] + tw.start;
      for (int64_t kw = tw.k_begin; kw < tw.k_end; ++kw) accumulate<kMax>(acc, ph[kw * g.dilation[2]]);
    }
  }
  return finish<kMax>(acc, window_count(td, th, tw, include_pad));
}

// Any geometry: clip every window on every axis.
template <bool kMax>
void pool_plane_generic(float* out, const float* plane, const PoolGeometry& g, bool include_pad) {
  for (int64_t od = 0; od < g.out[0]; ++od) {
    const PoolTaps td = pool_taps(g, 0, od);
    for (int64_t oh = 0; oh < g.out[1]; ++oh) {
      const PoolTaps th = pool_taps(g, 1, oh);
      for (int64_t ow = 0; ow < g.out[2]; ++ow)
        *out++ = pool_window<kMax>(plane, g, td, th, pool_taps(g, 2, ow), include_pad);
    }
  }
}

// 2-D (and 1-D) pools with unit W dilation: columns whose window lies inside the row read a contiguous
// run of kernel[2] values with no clipping; only the border columns go through pool_taps.
template <bool kMax>
void pool_plane_2d(float* out, const float* plane, const PoolGeometry& g, bool include_pad) {
  const int64_t W = g.in[2], KW = g.kernel[2], SW = g.stride[2], PW = g.pad_begin[2], OW = g.out[2];
  // Interior columns: start = ow*SW - PW >= 0 and start + KW <= W.
  const int64_t ow_lo = std::min(OW, (PW + SW - 1) / SW);
  const int64_t ow_hi = W - KW + PW < 0 ? ow_lo : std::max(ow_lo, std::min(OW, (W - KW + PW) / SW + 1));
  const PoolTaps td = pool_taps(g, 0, 0);  // D is a size-1 dim here: one tap at index 0
  for (int64_t oh = 0; oh < g.out[1]; ++oh) {
    const PoolTaps th = pool_taps(g, 1, oh);
    float* out_row = out + oh * OW;
    for (int64_t ow = 0; ow < ow_lo; ++ow) out_row[ow] = pool_window<kMax>(plane, g, td, th, pool_taps(g, 2, ow), include_pad);
    const int64_t rows = include_pad ? th.padded_count : th.k_end - th.k_begin;
    const int64_t count = rows * KW;  // interior: every W tap is inside the input (and the pads)
    for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
      const float* col = plane + ow * SW - PW;
      float acc = initial<kMax>();
      for (int64_t kh = th.k_begin; kh < th.k_end; ++kh) {
        const float* p = col + (th.start + kh * g.dilation[1]) * W;
        for (int64_t kw = 0; kw < KW; ++kw) accumulate<kMax>(acc, p[kw]);
      }
      out_row[ow] = finish<kMax>(acc, count);
    }
    for (int64_t ow = ow_hi; ow < OW; ++ow) out_row[ow] = pool_window<kMax>(plane, g, td, th, pool_taps(g, 2, ow), include_pad);
  }
}

template <bool kMax>
void pool_forward(float* out, const float* in, const PoolGeometry& g, bool include_pad, ThreadPool& pool) {
  const int64_t in_plane = g.in_plane(), out_plane = g.out_plane();
  const int64_t taps_per_plane = std::max<int64_t>(1, out_plane * g.kernel[0] * g.kernel[1] * g.kernel[2]);
  const bool fast_2d = g.in[0] == 1 && g.out[0] == 1 && g.kernel[0] == 1 && g.pad_begin[0] == 0 && g.dilation[2] == 1;
  pool.parallel_for(g.planes, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      if (fast_2d)
        pool_plane_2d<kMax>(out + p * out_plane, in + p * in_plane, g, include_pad);
      else
        pool_plane_generic<kMax>(out + p * out_plane, in + p * in_plane, g, include_pad);
    }
  }, std::max<int64_t>(1, kMinTapsPerChunk / taps_per_plane));
}

}  // namespace

void max_pool_forward(float* out, const float* in, const PoolGeometry& g, ThreadPool& pool) {
  pool_forward<true>(out, in, g, false, pool);
}

namespace {

// Max over half bits without converting them: for non-NaN halves, sign-magnitude bits mapped to a signed integer
// order exactly as the values do (-0 and +0 both map to 0, so they tie as in float).
inline int32_t half_order(uint16_t h) {
  const int32_t magnitude = h & 0x7fff;
  return (h & 0x8000) ? -magnitude : magnitude;
}
inline bool half_is_nan(uint16_t h) { return (h & 0x7fffu) > 0x7c00u; }

// accumulate<true> on half bits: v wins if greater, or if NaN (so a later NaN replaces an earlier one and a NaN
// best is never replaced by a number, as `v > acc || v != v` behaves in float).
inline uint16_t half_max(uint16_t best, uint16_t v) {
  return (half_is_nan(v) || (!half_is_nan(best) && half_order(v) > half_order(best))) ? v : best;
}

constexpr uint16_t kHalfMinusInfinity = 0xfc00;
// float_to_half(half_to_float(h)) sets this bit of a NaN h (it comes back quiet); the float reference does that.
constexpr uint16_t kHalfQuietBit = 0x0200;

// The max of max_pool_forward on each channels-last element type: the value of a window with no tap, one step
// over a tap (in the float kernel's order and with its comparison) and the final touch.
template <typename T>
struct NhwcMax;

template <>
struct NhwcMax<float> {
  static float empty() { return initial<true>(); }
  static float step(float best, float v) {
    accumulate<true>(best, v);
    return best;
  }
  static float finish(float best) { return best; }
};

template <>
struct NhwcMax<uint16_t> {
  static uint16_t empty() { return kHalfMinusInfinity; }
  static uint16_t step(uint16_t best, uint16_t v) { return half_max(best, v); }
  static uint16_t finish(uint16_t best) {
    return half_is_nan(best) ? static_cast<uint16_t>(best | kHalfQuietBit) : best;
  }
};

template <typename T>
void max_pool_nhwc(T* out, const T* in, int64_t images, int64_t channels, const PoolGeometry& g, ThreadPool& pool) {
  CAMRT_CHECK(images >= 0 && channels >= 0,
              "max_pool_forward_nhwc: negative size (images " << images << ", channels " << channels << ")");
  const int64_t out_plane = g.out_plane(), in_image = g.in_plane() * channels;
  const int64_t taps_per_position = std::max<int64_t>(1, channels * g.kernel[0] * g.kernel[1] * g.kernel[2]);
  // One work item per output position: its `channels` outputs are contiguous, and so is each tap's run of
  // `channels` inputs, so the inner loop streams both rows whatever the window shape.
  pool.parallel_for(images * out_plane, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const int64_t image = o / out_plane;
      int64_t rest = o % out_plane;
      const int64_t ow = rest % g.out[2];
      rest /= g.out[2];
      const int64_t oh = rest % g.out[1], od = rest / g.out[1];
      const PoolTaps td = pool_taps(g, 0, od), th = pool_taps(g, 1, oh), tw = pool_taps(g, 2, ow);
      const T* x = in + image * in_image;
      T* y = out + o * channels;
      std::fill(y, y + channels, NhwcMax<T>::empty());
      // Taps in max_pool_forward's order (d, h, w): on ties (+0 / -0) the first one stays, and of several NaNs
      // the last one wins, as there.
      for (int64_t kd = td.k_begin; kd < td.k_end; ++kd) {
        const int64_t d = td.start + kd * g.dilation[0];
        for (int64_t kh = th.k_begin; kh < th.k_end; ++kh) {
          const int64_t h = th.start + kh * g.dilation[1];
          for (int64_t kw = tw.k_begin; kw < tw.k_end; ++kw) {
            const int64_t w = tw.start + kw * g.dilation[2];
            const T* tap = x + ((d * g.in[1] + h) * g.in[2] + w) * channels;
            for (int64_t c = 0; c < channels; ++c) y[c] = NhwcMax<T>::step(y[c], tap[c]);
          }
        }
      }
      for (int64_t c = 0; c < channels; ++c) y[c] = NhwcMax<T>::finish(y[c]);
    }
  }, std::max<int64_t>(1, kMinTapsPerChunk / taps_per_position));
}

}  // namespace

void max_pool_forward_nhwc(uint16_t* out, const uint16_t* in, int64_t images, int64_t channels,
                           const PoolGeometry& g, ThreadPool& pool) {
  max_pool_nhwc(out, in, images, channels, g, pool);
}

void max_pool_forward_nhwc(float* out, const float* in, int64_t images, int64_t channels, const PoolGeometry& g,
                           ThreadPool& pool) {
  max_pool_nhwc(out, in, images, channels, g, pool);
}

void average_pool_forward(float* out, const float* in, const PoolGeometry& g, bool count_include_pad, ThreadPool& pool) {
  pool_forward<false>(out, in, g, count_include_pad, pool);
}

void global_average_pool_forward(float* out, const float* in, int64_t planes, int64_t spatial, ThreadPool& pool) {
  // spatial == 0 gives 0 / 0 = NaN, the mean of nothing.
  pool.parallel_for(planes, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      out[p] = static_cast<float>(sum_f32(in + p * spatial, spatial) / static_cast<double>(spatial));
  }, std::max<int64_t>(1, kMinTapsPerChunk / std::max<int64_t>(1, spatial)));
}

namespace {

// The taps of every output position along each axis, computed once per call instead of once per window: in the
// caller's scratch (pool_backward_scratch_bytes), or without one in a vector of their own.
struct AxisTaps {
  struct Span {
    const PoolTaps* first;
    const PoolTaps* last;
    const PoolTaps* begin() const { return first; }
    const PoolTaps* end() const { return last; }
  };
  std::vector<PoolTaps> owned;
  Span d{}, h{}, w{};
  AxisTaps(const PoolGeometry& g, void* scratch, size_t scratch_bytes) {
    const size_t count = static_cast<size_t>(g.out[0] + g.out[1] + g.out[2]);
    PoolTaps* all = static_cast<PoolTaps*>(scratch);
    if (!scratch || scratch_bytes < count * sizeof(PoolTaps)) {
      owned.resize(count);
      all = owned.data();
    }
    PoolTaps* next = all;
    Span* spans[3] = {&d, &h, &w};
    for (int axis = 0; axis < 3; ++axis) {
      spans[axis]->first = next;
      for (int64_t o = 0; o < g.out[axis]; ++o) *next++ = pool_taps(g, axis, o);
      spans[axis]->last = next;
    }
  }
};

// Offset in the plane of the tap that receives a max window's gradient, or -1 if none does.
inline int64_t max_tap(const float* plane, const PoolGeometry& g, const PoolTaps& td, const PoolTaps& th,
                       const PoolTaps& tw, float y) {
  const int64_t hw = g.in[1] * g.in[2];
  const bool nan = y != y;
  int64_t last_nan = -1;
  for (int64_t kd = td.k_begin; kd < td.k_end; ++kd) {
    const int64_t od = (td.start + kd * g.dilation[0]) * hw;
    for (int64_t kh = th.k_begin; kh < th.k_end; ++kh) {
      const int64_t oh = od + (th.start + kh * g.dilation[1]) * g.in[2] + tw.start;
      for (int64_t kw = tw.k_begin; kw < tw.k_end; ++kw) {
        const int64_t offset = oh + kw * g.dilation[2];
        const float v = plane[offset];
        if (nan) {
          if (v != v) last_nan = offset;
        } else if (v == y) {
          return offset;  // the forward output is one of the inputs, bit for bit: the first equal tap is the argmax
        }
      }
    }
  }
  return last_nan;
}

}  // namespace

size_t pool_backward_scratch_bytes(const PoolGeometry& g) {
  return static_cast<size_t>(g.out[0] + g.out[1] + g.out[2]) * sizeof(PoolTaps);
}

void max_pool_backward(float* dx, const float* dy, const float* in, const float* out, const PoolGeometry& g,
                       ThreadPool& pool, void* scratch, size_t scratch_bytes) {
  const AxisTaps taps(g, scratch, scratch_bytes);
  const int64_t in_plane = g.in_plane(), out_plane = g.out_plane();
  const int64_t taps_per_plane = std::max<int64_t>(1, out_plane * g.kernel[0] * g.kernel[1] * g.kernel[2]);
  pool.parallel_for(g.planes, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float* x = in + p * in_plane;
      const float* y = out + p * out_plane;
      const float* g_out = dy + p * out_plane;
      float* g_in = dx + p * in_plane;
      int64_t o = 0;
      for (const PoolTaps& td : taps.d)
        for (const PoolTaps& th : taps.h)
          for (const PoolTaps& tw : taps.w) {
            const int64_t at = max_tap(x, g, td, th, tw, y[o]);
            if (at >= 0) g_in[at] += g_out[o];
            ++o;
          }
    }
  }, std::max<int64_t>(1, kMinTapsPerChunk / taps_per_plane));
}

void average_pool_backward(float* dx, const float* dy, const PoolGeometry& g, bool count_include_pad, ThreadPool& pool,
                           void* scratch, size_t scratch_bytes) {
  const AxisTaps taps(g, scratch, scratch_bytes);
  const int64_t in_plane = g.in_plane(), out_plane = g.out_plane(), hw = g.in[1] * g.in[2];
  const int64_t taps_per_plane = std::max<int64_t>(1, out_plane * g.kernel[0] * g.kernel[1] * g.kernel[2]);
  pool.parallel_for(g.planes, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float* g_out = dy + p * out_plane;
      float* g_in = dx + p * in_plane;
      int64_t o = 0;
      for (const PoolTaps& td : taps.d)
        for (const PoolTaps& th : taps.h)
          for (const PoolTaps& tw : taps.w) {
            const int64_t count = window_count(td, th, tw, count_include_pad);
            const float share = count > 0 ? g_out[o] / static_cast<float>(count) : 0.f;  // count 0: no taps either
            ++o;
            for (int64_t kd = td.k_begin; kd < td.k_end; ++kd) {
              float* pd = g_in + (td.start + kd * g.dilation[0]) * hw;
              for (int64_t kh = th.k_begin; kh < th.k_end; ++kh) {
                float* ph = pd + (th.start + kh * g.dilation[1]) * g.in[2] + tw.start;
                for (int64_t kw = tw.k_begin; kw < tw.k_end; ++kw) ph[kw * g.dilation[2]] += share;
              }
            }
          }
    }
  }, std::max<int64_t>(1, kMinTapsPerChunk / taps_per_plane));
}

void global_average_pool_backward(float* dx, const float* dy, int64_t planes, int64_t spatial, ThreadPool& pool) {
  if (spatial == 0) return;
  pool.parallel_for(planes, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const float share = dy[p] / static_cast<float>(spatial);
      float* g_in = dx + p * spatial;
      for (int64_t s = 0; s < spatial; ++s) g_in[s] += share;
    }
  }, std::max<int64_t>(1, kMinTapsPerChunk / spatial));
}

}  // namespace camrt
