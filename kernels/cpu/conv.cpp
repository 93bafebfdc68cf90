// Convolution forward on the CPU. Dense and grouped convs are one GEMM per group, out_g (Mg, B*OH*OW) =
// W_g (Mg, Cg*KH*KW) x im2col(in_g), with the batch folded into the GEMM's columns (one C segment per image)
// so small late-layer feature maps still give the GEMM wide tiles. The im2col matrix is never materialised:
// Im2colPacker writes it block by block into the GEMM's packed B panels, zeros for the padding included.
// Depthwise convs (one input channel per group) use a direct kernel threaded over (batch, output channel).
#include "kernels/cpu/conv.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <sstream>

#include "engine/error.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/layout.h"

// Packing loops copy or zero a few floats at a time; GCC would turn them into memcpy/memset calls whose
// call overhead exceeds the work, so packing functions opt out of that transformation.
#if defined(__GNUC__) && !defined(__clang__)
#define CAMRT_INLINE_LOOPS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define CAMRT_INLINE_LOOPS
#endif

namespace camrt {

namespace {

inline int64_t ceil_div_pos(int64_t a, int64_t b) { return a <= 0 ? -((-a) / b) : (a + b - 1) / b; }

// The valid output columns [lo, hi) for a tap at input offset iw = ow * stride + offset, i.e. 0 <= iw < width.
inline void valid_range(int64_t offset, int64_t stride, int64_t width, int64_t out_w, int64_t* lo, int64_t* hi) {
  if (stride == 1) {
    *lo = -offset;
    *hi = width - offset;
  } else {
    *lo = ceil_div_pos(-offset, stride);
    *hi = ceil_div_pos(width - offset, stride);
  }
  *lo = std::clamp<int64_t>(*lo, 0, out_w);
  *hi = std::clamp<int64_t>(*hi, *lo, out_w);
}

inline float activate(float x, const FusedActivation& act) {
  switch (act.kind) {
    case FusedActivation::kRelu: return x > 0.f ? x : 0.f;
    case FusedActivation::kClip: return std::min(std::max(x, act.min), act.max);
    default: return x;
  }
}

// Widest GEMM panel the packer supports (the micro-kernels use 8 to 32 columns).
constexpr int64_t kMaxPanel = 64;

// B = im2col(in_g) for one group, batch folded into columns: row k = (c, kh, kw), column j = (n, oh, ow),
// B[k, j] = in[n, c, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw], zero outside the image.
class Im2colPacker : public GemmBPacker {
 public:
  // in: the whole input (B, C, H, W); channel0: first input channel of this group.
  Im2colPacker(const float* in, int64_t channel0, const Conv2dShape& s)
      : in_(in), channel0_(channel0), s_(s), out_h_(s.out_h()), out_w_(s.out_w()),
        readable_(s.batch * s.in_channels * s.in_h * s.in_w) {}

  void pack(float* dst, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int64_t nr) const override {
    CAMRT_CHECK(nr <= kMaxPanel, "conv: GEMM panel width " << nr << " exceeds " << kMaxPanel);
    // The fixed-width copies below are what make packing cheap; instantiate them for the widths the GEMM uses.
    switch (nr) {
      case 8: pack_panels<8>(dst, k0, kc, j0, nc); break;
      case 12: pack_panels<12>(dst, k0, kc, j0, nc); break;
      case 16: pack_panels<16>(dst, k0, kc, j0, nc); break;
      case 32: pack_panels<32>(dst, k0, kc, j0, nc); break;
      case 48: pack_panels<48>(dst, k0, kc, j0, nc); break;
      default: pack_panels<0>(dst, k0, kc, j0, nc, nr); break;
    }
  }

 private:
  // The columns of a panel form segments along output rows (one input row per tap). The block is packed
  // k-row by k-row across a group of panels, so consecutive reads walk along input rows (what the hardware
  // prefetcher follows) rather than hopping between channel planes. NR > 0: each segment's in-bounds taps are
  // copied as one fixed-width row of NR floats (a few vector moves), then its out-of-bounds columns (padding) are
  // zeroed. Segments of a panel row are written left to right, so a copy's spill past its own end is
  // overwritten by the next segment or lands in the panel's next row (written later); the panels' last rows
  // copy exactly, since a spill from there would land in the next panel, already written.
  template <int NR>
  CAMRT_INLINE_LOOPS void pack_panels(float* dst, int64_t k0, int64_t kc, int64_t j0, int64_t nc,
                                      int64_t runtime_nr = NR) const {
    const int64_t nr = NR > 0 ? NR : runtime_nr;
    const int64_t plane = s_.in_h * s_.in_w, out_plane = out_h_ * out_w_, taps = s_.kernel_h * s_.kernel_w;
    const int64_t sw = s_.stride_w;
    const bool fast = NR > 0 && sw <= 2;  // the strides the fixed-width copies handle
    struct Segment {
      float* panel;      // the panel's row 0
      int64_t col, len;  // first panel column and length
      int64_t ow;        // output column of the first
      int64_t ih0;       // input row of tap kh = 0
      int64_t base;      // offset of (image, channel0, row 0, column ow * sw - pad_left)
    };
    constexpr int kMaxSegments = 256;
    Segment segs[kMaxSegments];
    for (int64_t group = 0; group < nc;) {
      // Gather whole panels while their segments fit (a panel has at most nr <= kMaxPanel segments).
      int num_segs = 0;
      int64_t jp = group;
      for (; jp < nc && num_segs + kMaxPanel <= kMaxSegments; jp += nr) {
        const int64_t w = std::min(nr, nc - jp);
        for (int64_t q = 0; q < w;) {
          const int64_t j = j0 + jp + q;
          const int64_t image = j / out_plane, r = j % out_plane, oh = r / out_w_, ow = r % out_w_;
          const int64_t len = std::min(w - q, out_w_ - ow);
          segs[num_segs++] = Segment{dst + jp * kc, q, len, ow, oh * s_.stride_h - s_.pad_top,
                                     (image * s_.in_channels + channel0_) * plane + ow * sw - s_.pad_left};
          q += len;
        }
      }
      const int64_t group_end = jp;
      int64_t c = k0 / taps, kh = (k0 % taps) / s_.kernel_w, kw = k0 % s_.kernel_w;
      for (int64_t p = 0; p < kc; ++p) {
        // Output columns [ow_lo, ow_hi) of any row have this tap inside the input row.
        int64_t ow_lo, ow_hi;
        valid_range(kw * s_.dilation_w - s_.pad_left, sw, s_.in_w, out_w_, &ow_lo, &ow_hi);
        const int64_t ih_off = kh * s_.dilation_h;
        const int64_t tap = c * plane + kw * s_.dilation_w;
        const bool last_row = p == kc - 1;  // exact copies only
        for (int g = 0; g < num_segs; ++g) {
          const Segment& seg = segs[g];
          float* __restrict to = seg.panel + p * nr + seg.col;
          const int64_t ih = seg.ih0 + ih_off;
          const int64_t lead = std::clamp(ow_lo - seg.ow, int64_t(0), seg.len);
          const int64_t end = std::clamp(ow_hi - seg.ow, lead, seg.len);
          if (ih < 0 || ih >= s_.in_h || lead == end) {  // the whole segment is padding
            if (NR > 0 && !last_row) {
              for (int t = 0; t < NR; ++t) to[t] = 0.f;
            } else {
              for (int64_t t = 0; t < seg.len; ++t) to[t] = 0.f;
            }
            continue;
          }
          const int64_t at = seg.base + tap + ih * s_.in_w + lead * sw;  // first in-bounds tap
          const float* __restrict from = in_ + at;
          if (fast && !last_row && at + NR * sw <= readable_) {
            if (sw == 1) {
              std::memcpy(to + lead, from, sizeof(float) * size_t(NR > 0 ? NR : 1));
            } else {
              // Stride 2: read 2*NR contiguous floats and keep the even ones (vector permutes, no gathers).
              float pair[2 * (NR > 0 ? NR : 1)];
              std::memcpy(pair, from, sizeof pair);
              for (int t = 0; t < NR; ++t) to[lead + t] = pair[2 * t];
            }
          } else {
            for (int64_t t = 0; t < end - lead; ++t) to[lead + t] = from[t * sw];
          }
          for (int64_t t = 0; t < lead; ++t) to[t] = 0.f;
          for (int64_t t = end; t < seg.len; ++t) to[t] = 0.f;
        }
        // Columns past N of a ragged last panel.
        if (group_end >= nc && nc % nr != 0) {
          float* tail = dst + (nc - nc % nr) * kc + p * nr;
          for (int64_t q = nc % nr; q < nr; ++q) tail[q] = 0.f;
        }
        if (++kw == s_.kernel_w) {
          kw = 0;
          if (++kh == s_.kernel_h) {
            kh = 0;
            ++c;
          }
        }
      }
      group = group_end;
    }
  }

  const float* in_;
  int64_t channel0_;
  Conv2dShape s_;
  int64_t out_h_, out_w_;
  int64_t readable_;  // floats readable from in_
};

bool is_depthwise(const Conv2dShape& s) { return s.in_channels / s.groups == 1; }

bool is_pointwise(const Conv2dShape& s) {
  return s.kernel_h == 1 && s.kernel_w == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_top == 0 &&
         s.pad_left == 0 && s.pad_bottom == 0 && s.pad_right == 0;
}

// Depthwise interior: output columns whose K x K taps (all rows valid) lie inside the input, K and the stride S
// known at compile time so the loop over columns vectorizes with every tap in registers. x: the input at
// (first tap row, first output column's first tap column); dh, dw: dilation in floats / columns.
template <int K, int S>
CAMRT_INLINE_LOOPS void depthwise_interior(float* __restrict y, const float* __restrict x, const float* w, float bias,
                                           int64_t row_stride, int64_t dh, int64_t dw, int64_t count,
                                           const FusedActivation& act) {
  float taps[K * K];
  for (int t = 0; t < K * K; ++t) taps[t] = w[t];
  for (int64_t t = 0; t < count; ++t) {
    float acc = bias;
#pragma GCC unroll 8
    for (int kh = 0; kh < K; ++kh) {
      const float* __restrict row = x + kh * dh * row_stride + t * S;
#pragma GCC unroll 8
      for (int kw = 0; kw < K; ++kw) acc += taps[kh * K + kw] * row[kw * dw];
    }
    y[t] = acc;
  }
  if (act.kind != FusedActivation::kNone)
    for (int64_t t = 0; t < count; ++t) y[t] = activate(y[t], act);
}

using InteriorFn = void (*)(float*, const float*, const float*, float, int64_t, int64_t, int64_t, int64_t,
                            const FusedActivation&);

InteriorFn pick_interior(const Conv2dShape& s) {
  if (s.kernel_h != s.kernel_w) return nullptr;
  const int64_t k = s.kernel_h, sw = s.stride_w;
  if (k == 3 && sw == 1) return depthwise_interior<3, 1>;
  if (k == 3 && sw == 2) return depthwise_interior<3, 2>;
  if (k == 5 && sw == 1) return depthwise_interior<5, 1>;
  if (k == 5 && sw == 2) return depthwise_interior<5, 2>;
  return nullptr;
}

// One input channel per group (depthwise, possibly with a channel multiplier), threaded over (batch, output
// channel). Rows whose taps all fall inside the input run the register-resident interior kernel for 3x3/5x5;
// other rows (and other kernel sizes) accumulate KH*KW shifted input rows into the output row.
CAMRT_INLINE_LOOPS void depthwise_forward(float* out, const float* in, const float* weight, const float* bias,
                                          const Conv2dShape& s, const FusedActivation& act, ThreadPool& pool) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w(), multiplier = s.out_channels / s.groups;
  const int64_t plane = s.in_h * s.in_w, out_plane = oh_n * ow_n, taps = s.kernel_h * s.kernel_w;
  const InteriorFn interior = pick_interior(s);
  // Output columns whose every kw tap is inside the input row: the intersection over kw of the valid ranges.
  int64_t col_lo = 0, col_hi = ow_n;
  for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
    int64_t lo, hi;
    valid_range(kw * s.dilation_w - s.pad_left, s.stride_w, s.in_w, ow_n, &lo, &hi);
    col_lo = std::max(col_lo, lo);
    col_hi = std::min(col_hi, hi);
  }
  pool.parallel_for(s.batch * s.out_channels, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / s.out_channels, oc = idx % s.out_channels, ic = oc / multiplier;
      const float* x = in + (n * s.in_channels + ic) * plane;
      const float* w = weight + oc * taps;
      float* y = out + idx * out_plane;
      const float b = bias ? bias[oc] : 0.f;
      for (int64_t oh = 0; oh < oh_n; ++oh) {
        float* __restrict yr = y + oh * ow_n;
        const int64_t ih0 = oh * s.stride_h - s.pad_top;
        // Output columns [from, to): bias, then each in-bounds tap's input row added in, then the activation.
        const auto accumulate = [&](int64_t from, int64_t to) {
          if (from >= to) return;
          for (int64_t ow = from; ow < to; ++ow) yr[ow] = b;
          for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
            const int64_t ih = ih0 + kh * s.dilation_h;
            if (ih < 0 || ih >= s.in_h) continue;
            for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
              const float wv = w[kh * s.kernel_w + kw];
              const int64_t off_w = kw * s.dilation_w - s.pad_left;
              int64_t lo, hi;
              valid_range(off_w, s.stride_w, s.in_w, ow_n, &lo, &hi);
              lo = std::max(lo, from);
              hi = std::min(hi, to);
              if (lo >= hi) continue;
              const float* __restrict xr = x + ih * s.in_w + lo * s.stride_w + off_w;  // input of output lo
              float* __restrict yo = yr + lo;
              if (s.stride_w == 1) {
                for (int64_t t = 0; t < hi - lo; ++t) yo[t] += wv * xr[t];
              } else {
                for (int64_t t = 0; t < hi - lo; ++t) yo[t] += wv * xr[t * s.stride_w];
              }
            }
          }
          if (act.kind != FusedActivation::kNone)
            for (int64_t ow = from; ow < to; ++ow) yr[ow] = activate(yr[ow], act);
        };
        const bool rows_inside = ih0 >= 0 && ih0 + (s.kernel_h - 1) * s.dilation_h < s.in_h;
        if (interior && rows_inside && col_lo < col_hi) {
          interior(yr + col_lo, x + ih0 * s.in_w + col_lo * s.stride_w - s.pad_left, w, b, s.in_w, s.dilation_h,
                   s.dilation_w, col_hi - col_lo, act);
          accumulate(0, col_lo);
          accumulate(col_hi, ow_n);
        } else {
          accumulate(0, ow_n);
        }
      }
    }
  }, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, out_plane * taps)));
}

}  // namespace

std::string conv2d_shape_error(const Conv2dShape& s) {
  // Attributes come from model files: bound them first so the span and padded-size arithmetic below cannot
  // overflow int64 (2^31 is far beyond any real kernel, stride, dilation, pad or input side).
  constexpr int64_t kMaxAttribute = int64_t(1) << 31;
  for (int64_t v : {s.kernel_h, s.kernel_w, s.stride_h, s.stride_w, s.dilation_h, s.dilation_w, s.pad_top, s.pad_left,
                    s.pad_bottom, s.pad_right, s.in_h, s.in_w})
    if (v > kMaxAttribute || v < -kMaxAttribute) return "conv sizes and attributes must be within +-2^31, got " + std::to_string(v);
  const int64_t span_h = s.dilation_h * (s.kernel_h - 1) + 1, span_w = s.dilation_w * (s.kernel_w - 1) + 1;
  std::ostringstream err;
  if (s.batch < 0 || s.in_channels <= 0 || s.in_h <= 0 || s.in_w <= 0 || s.out_channels <= 0)
    err << "conv sizes must be positive (batch " << s.batch << ", in_channels " << s.in_channels << ", input "
        << s.in_h << "x" << s.in_w << ", out_channels " << s.out_channels << ")";
  else if (s.kernel_h <= 0 || s.kernel_w <= 0)
    err << "kernel " << s.kernel_h << "x" << s.kernel_w << " must be positive";
  else if (s.stride_h <= 0 || s.stride_w <= 0)
    err << "strides must be positive, got " << s.stride_h << "," << s.stride_w;
  else if (s.dilation_h <= 0 || s.dilation_w <= 0)
    err << "dilations must be positive, got " << s.dilation_h << "," << s.dilation_w;
  else if (s.pad_top < 0 || s.pad_left < 0 || s.pad_bottom < 0 || s.pad_right < 0)
    err << "pads must be non-negative";
  else if (s.groups <= 0 || s.in_channels % s.groups != 0 || s.out_channels % s.groups != 0)
    err << "group " << s.groups << " must divide in_channels " << s.in_channels << " and out_channels "
        << s.out_channels;
  else if (s.in_h + s.pad_top + s.pad_bottom < span_h || s.in_w + s.pad_left + s.pad_right < span_w)
    err << "dilated kernel " << span_h << "x" << span_w << " is larger than the padded input "
        << s.in_h + s.pad_top + s.pad_bottom << "x" << s.in_w + s.pad_left + s.pad_right;
  else
    return std::string();
  return err.str();
}

namespace {

// Many small groups (ResNeXt, RegNet: 32+ groups of a few channels) give GEMMs too small to split across
// threads, so the groups themselves are spread over the pool, each GEMM single-threaded in its own
// workspace slot. Few large groups run one after another, each GEMM using the whole pool.
bool groups_in_parallel(const Conv2dShape& s, int num_threads) { return num_threads > 1 && s.groups >= 2 * num_threads; }

struct GroupSlots {
  int count;          // concurrent groups (= workspace slots)
  size_t slot_bytes;  // GEMM workspace per slot
};

GroupSlots group_slots(const Conv2dShape& s, int num_threads) {
  const int64_t cols = s.batch * s.out_h() * s.out_w();
  const int64_t k = (s.in_channels / s.groups) * s.kernel_h * s.kernel_w, mg = s.out_channels / s.groups;
  if (!groups_in_parallel(s, num_threads)) return GroupSlots{1, gemm_workspace_bytes(mg, cols, k, num_threads)};
  const size_t align = 64;
  return GroupSlots{num_threads, (gemm_workspace_bytes(mg, cols, k, 1) + align - 1) / align * align};
}

}  // namespace

size_t conv2d_workspace_bytes(const Conv2dShape& s, int num_threads) {
  if (is_depthwise(s) || s.batch == 0) return 0;
  const GroupSlots slots = group_slots(s, num_threads);
  return size_t(slots.count) * slots.slot_bytes;
}

void conv2d_forward(float* out, const float* in, const float* weight, const float* bias, const Conv2dShape& s,
                    const FusedActivation& act, void* workspace, size_t workspace_bytes, ThreadPool& pool,
                    const float* residual) {
  if (residual) {  // conv + bias first, then the residual and the activation in one pass
    CAMRT_CHECK(residual != out, "conv2d_forward: the residual must not alias the output");
    conv2d_forward(out, in, weight, bias, s, FusedActivation{}, workspace, workspace_bytes, pool);
    conv2d_residual_activation(out, residual, s.batch * s.out_channels * s.out_h() * s.out_w(), act, pool);
    return;
  }
  {
    const std::string error = conv2d_shape_error(s);
    CAMRT_CHECK(error.empty(), "conv2d_forward: " << error);
  }
  if (s.batch == 0) return;
  if (is_depthwise(s)) {
    depthwise_forward(out, in, weight, bias, s, act, pool);
    return;
  }
  const size_t need = conv2d_workspace_bytes(s, pool.num_threads());
  CAMRT_CHECK(workspace_bytes >= need && (workspace || need == 0),
              "conv2d_forward: workspace of " << workspace_bytes << " bytes, need " << need);
  const int64_t out_plane = s.out_h() * s.out_w(), plane = s.in_h * s.in_w;
  const int64_t cg = s.in_channels / s.groups, mg = s.out_channels / s.groups;
  const int64_t k = cg * s.kernel_h * s.kernel_w, cols = s.batch * out_plane;

  // out_g (mg, batch * out_plane) = W_g (mg, k) x im2col(in_g) (k, batch * out_plane), one C segment per image.
  const auto run_group = [&](int64_t g, void* ws, size_t ws_bytes, ThreadPool& gemm_pool) {
    const GemmOutput c{out + g * mg * out_plane, out_plane, out_plane, s.out_channels * out_plane};
    GemmEpilogue epi;
    epi.bias_row = bias ? bias + g * mg : nullptr;
    epi.act = act;
    const float* a = weight + g * mg * k;
    if (is_pointwise(s)) {
      const GemmMatrixB b(in + g * cg * plane, plane, false, plane, s.in_channels * plane);
      gemm_packed(c, a, k, false, b, mg, cols, k, 1.f, 0.f, epi, ws, ws_bytes, gemm_pool);
    } else {
      const Im2colPacker b(in, g * cg, s);
      gemm_packed(c, a, k, false, b, mg, cols, k, 1.f, 0.f, epi, ws, ws_bytes, gemm_pool);
    }
  };
  if (!groups_in_parallel(s, pool.num_threads())) {
    for (int64_t g = 0; g < s.groups; ++g) run_group(g, workspace, workspace_bytes, pool);
    return;
  }
  // A chunk of groups claims a free workspace slot; at most pool.num_threads() chunks run at once.
  const GroupSlots slots = group_slots(s, pool.num_threads());
  constexpr int kMaxSlots = 256;
  CAMRT_CHECK(slots.count <= kMaxSlots, "conv2d_forward: more than " << kMaxSlots << " threads");
  std::atomic<bool> busy[kMaxSlots];
  for (int i = 0; i < slots.count; ++i) busy[i].store(false, std::memory_order_relaxed);
  ThreadPool serial(1);  // runs each group's GEMM inline in the thread that took the group
  pool.parallel_for(s.groups, [&](int64_t begin, int64_t end) {
    int slot = 0;
    for (;; slot = (slot + 1) % slots.count) {
      bool expected = false;
      if (busy[slot].compare_exchange_strong(expected, true, std::memory_order_acquire)) break;
    }
    void* ws = static_cast<unsigned char*>(workspace) + size_t(slot) * slots.slot_bytes;
    for (int64_t g = begin; g < end; ++g) run_group(g, ws, slots.slot_bytes, serial);
    busy[slot].store(false, std::memory_order_release);
  });
}

// ---------------- Backward: input gradient ----------------
// dx = conv_transpose(dy, W). Dense and grouped convs: per group and chunk of images, col (Cg*KH*KW,
// images*OH*OW) = W_g^T x dy_g on the GEMM, then col2im adds every column back onto the input position it was
// read from. Small feature maps fold several images into one GEMM (as the forward folds the batch) so late
// 7x7 layers still give wide GEMMs; many small groups run concurrently, one single-threaded GEMM each, as in
// the forward. 1x1 stride-1 unpadded convs need no col2im: dx_g += W_g^T x dy_g straight into dx (beta = 1),
// the whole batch in the columns. Depthwise convs scatter directly. Every dx element is written by one thread
// only, in a fixed order, so results do not depend on scheduling.

namespace {

constexpr size_t kColAlign = 64;
// Columns worth of images one backward GEMM takes: enough width for the micro-kernel's tiles and the pool's
// threads (7x7 maps: 11 images), while large maps (>= 512 pixels) stay one image at a time to bound the buffer.
constexpr int64_t kFoldColumns = 512;

size_t round_up_align(size_t bytes) { return (bytes + kColAlign - 1) / kColAlign * kColAlign; }

struct BackwardPlan {
  int64_t images = 1;     // images per GEMM
  int slots = 1;          // groups running at once, each in its own workspace slot (1: one after another)
  size_t col_bytes = 0;   // column buffer per slot (64-byte multiple)
  size_t gemm_bytes = 0;  // GEMM workspace per slot (64-byte multiple)
};

BackwardPlan backward_plan(const Conv2dShape& s, int num_threads) {
  BackwardPlan p;
  const int64_t out_plane = s.out_h() * s.out_w();
  const int64_t k = (s.in_channels / s.groups) * s.kernel_h * s.kernel_w, mg = s.out_channels / s.groups;
  p.images = std::clamp<int64_t>((kFoldColumns + out_plane - 1) / out_plane, 1, std::max<int64_t>(1, s.batch));
  const bool parallel = groups_in_parallel(s, num_threads);
  p.slots = parallel ? num_threads : 1;
  const int gemm_threads = parallel ? 1 : num_threads;
  const int64_t rest = s.batch % p.images;  // the last, smaller chunk
  p.col_bytes = round_up_align(size_t(k * p.images * out_plane) * sizeof(float));
  p.gemm_bytes = round_up_align(std::max(gemm_workspace_bytes(k, p.images * out_plane, mg, gemm_threads),
                                         gemm_workspace_bytes(k, std::max<int64_t>(rest, 1) * out_plane, mg, gemm_threads)));
  return p;
}

// dx += col2im(col) for `images` images of one group: col row (c, kh, kw), column (i, oh, ow) adds onto
// dx[i, c, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw] when that lies inside the input (padding taps are dropped).
// dx: the group's first channel of the chunk's first image, images `in_channels` planes apart;
// col: (cg * kernel_h * kernel_w, images * out_h * out_w). Threaded over (image, channel) planes.
CAMRT_INLINE_LOOPS void col2im_add(float* dx, const float* col, int64_t images, int64_t cg, const Conv2dShape& s,
                                   ThreadPool& pool) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w(), plane = s.in_h * s.in_w, out_plane = oh_n * ow_n;
  const int64_t taps = s.kernel_h * s.kernel_w, sw = s.stride_w, cols = images * out_plane;
  pool.parallel_for(images * cg, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / cg, c = task % cg;
      float* x = dx + (i * s.in_channels + c) * plane;
      for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
        int64_t oh_lo, oh_hi;  // output rows whose tap kh lies inside the input
        valid_range(kh * s.dilation_h - s.pad_top, s.stride_h, s.in_h, oh_n, &oh_lo, &oh_hi);
        for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
          const int64_t off_w = kw * s.dilation_w - s.pad_left;
          int64_t lo, hi;
          valid_range(off_w, sw, s.in_w, ow_n, &lo, &hi);
          if (lo >= hi) continue;
          const float* row = col + ((c * s.kernel_h + kh) * s.kernel_w + kw) * cols + i * out_plane;
          for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
            const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dilation_h;
            float* __restrict xr = x + ih * s.in_w + lo * sw + off_w;
            const float* __restrict cr = row + oh * ow_n + lo;
            if (sw == 1) {
              for (int64_t t = 0; t < hi - lo; ++t) xr[t] += cr[t];
            } else {
              for (int64_t t = 0; t < hi - lo; ++t) xr[t * sw] += cr[t];
            }
          }
        }
      }
    }
  }, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, out_plane * taps)));
}

// Depthwise (one input channel per group, `multiplier` output channels each), threaded over (image, input
// channel): a task owns one dx plane and adds in every tap of the output channels that read it.
CAMRT_INLINE_LOOPS void depthwise_backward_data(float* dx, const float* dy, const float* weight, const Conv2dShape& s,
                                                ThreadPool& pool) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w(), multiplier = s.out_channels / s.groups;
  const int64_t plane = s.in_h * s.in_w, out_plane = oh_n * ow_n, taps = s.kernel_h * s.kernel_w, sw = s.stride_w;
  pool.parallel_for(s.batch * s.in_channels, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / s.in_channels, ic = idx % s.in_channels;
      float* x = dx + idx * plane;
      for (int64_t m = 0; m < multiplier; ++m) {
        const int64_t oc = ic * multiplier + m;
        const float* g = dy + (n * s.out_channels + oc) * out_plane;
        const float* w = weight + oc * taps;
        for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
          int64_t oh_lo, oh_hi;
          valid_range(kh * s.dilation_h - s.pad_top, s.stride_h, s.in_h, oh_n, &oh_lo, &oh_hi);
          for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
            const int64_t off_w = kw * s.dilation_w - s.pad_left;
            int64_t lo, hi;
            valid_range(off_w, sw, s.in_w, ow_n, &lo, &hi);
            if (lo >= hi) continue;
            const float wv = w[kh * s.kernel_w + kw];
            for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
              const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dilation_h;
              float* __restrict xr = x + ih * s.in_w + lo * sw + off_w;
              const float* __restrict gr = g + oh * ow_n + lo;
              if (sw == 1) {
                for (int64_t t = 0; t < hi - lo; ++t) xr[t] += wv * gr[t];
              } else {
                for (int64_t t = 0; t < hi - lo; ++t) xr[t * sw] += wv * gr[t];
              }
            }
          }
        }
      }
    }
  }, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, multiplier * out_plane * taps)));
}

}  // namespace

size_t conv2d_backward_data_workspace_bytes(const Conv2dShape& s, int num_threads) {
  if (is_depthwise(s) || s.batch == 0) return 0;
  const int64_t cg = s.in_channels / s.groups, mg = s.out_channels / s.groups;
  if (is_pointwise(s)) return gemm_workspace_bytes(cg, s.batch * s.in_h * s.in_w, mg, num_threads);
  const BackwardPlan p = backward_plan(s, num_threads);
  return kColAlign + size_t(p.slots) * (p.col_bytes + p.gemm_bytes);
}

void conv2d_backward_data(float* dx, const float* dy, const float* weight, const Conv2dShape& s, void* workspace,
                          size_t workspace_bytes, ThreadPool& pool) {
  {
    const std::string error = conv2d_shape_error(s);
    CAMRT_CHECK(error.empty(), "conv2d_backward_data: " << error);
  }
  if (s.batch == 0) return;
  if (is_depthwise(s)) {
    depthwise_backward_data(dx, dy, weight, s, pool);
    return;
  }
  const size_t need = conv2d_backward_data_workspace_bytes(s, pool.num_threads());
  CAMRT_CHECK(workspace_bytes >= need && (workspace || need == 0),
              "conv2d_backward_data: workspace of " << workspace_bytes << " bytes, need " << need);
  const int64_t out_plane = s.out_h() * s.out_w(), plane = s.in_h * s.in_w;
  const int64_t cg = s.in_channels / s.groups, mg = s.out_channels / s.groups;
  const int64_t k = cg * s.kernel_h * s.kernel_w;
  const GemmEpilogue none;
  if (is_pointwise(s)) {
    // dx_g (cg, batch * plane) += W_g^T (cg, mg) x dy_g (mg, batch * plane), one segment per image on both sides.
    for (int64_t g = 0; g < s.groups; ++g) {
      const GemmOutput c{dx + g * cg * plane, plane, plane, s.in_channels * plane};
      const GemmMatrixB b(dy + g * mg * plane, plane, false, plane, s.out_channels * plane);
      gemm_packed(c, weight + g * mg * cg, cg, true, b, cg, s.batch * plane, mg, 1.f, 1.f, none, workspace,
                  workspace_bytes, pool);
    }
    return;
  }
  const BackwardPlan plan = backward_plan(s, pool.num_threads());
  const uintptr_t base = reinterpret_cast<uintptr_t>(workspace);
  unsigned char* slots = reinterpret_cast<unsigned char*>((base + kColAlign - 1) / kColAlign * kColAlign);
  const auto run_group = [&](int64_t g, unsigned char* slot, ThreadPool& gemm_pool) {
    float* col = reinterpret_cast<float*>(slot);
    for (int64_t n0 = 0; n0 < s.batch; n0 += plan.images) {
      const int64_t images = std::min(plan.images, s.batch - n0);
      // col (k, images * out_plane) = W_g^T (k, mg) x dy_g (mg, images * out_plane); W_g is stored (mg, k),
      // hence trans_a; dy_g's columns are one segment per image.
      const GemmMatrixB b(dy + (n0 * s.out_channels + g * mg) * out_plane, out_plane, false, out_plane,
                          s.out_channels * out_plane);
      gemm_packed(GemmOutput{col, images * out_plane}, weight + g * mg * k, k, true, b, k, images * out_plane, mg,
                  1.f, 0.f, none, slot + plan.col_bytes, plan.gemm_bytes, gemm_pool);
      col2im_add(dx + (n0 * s.in_channels + g * cg) * plane, col, images, cg, s, gemm_pool);
    }
  };
  if (plan.slots == 1) {
    for (int64_t g = 0; g < s.groups; ++g) run_group(g, slots, pool);
    return;
  }
  // A chunk of groups claims a free slot; at most pool.num_threads() chunks run at once (as in the forward).
  constexpr int kMaxSlots = 256;
  CAMRT_CHECK(plan.slots <= kMaxSlots, "conv2d_backward_data: more than " << kMaxSlots << " threads");
  std::atomic<bool> busy[kMaxSlots];
  for (int i = 0; i < plan.slots; ++i) busy[i].store(false, std::memory_order_relaxed);
  ThreadPool serial(1);  // runs each group's GEMM and col2im inline in the thread that took the group
  pool.parallel_for(s.groups, [&](int64_t begin, int64_t end) {
    int slot = 0;
    for (;; slot = (slot + 1) % plan.slots) {
      bool expected = false;
      if (busy[slot].compare_exchange_strong(expected, true, std::memory_order_acquire)) break;
    }
    unsigned char* ws = slots + size_t(slot) * (plan.col_bytes + plan.gemm_bytes);
    for (int64_t g = begin; g < end; ++g) run_group(g, ws, serial);
    busy[slot].store(false, std::memory_order_release);
  });
}

bool conv2d_channels_last_supported(const Conv2dShape& s) {
  return conv2d_shape_error(s).empty() && s.pad_top == s.pad_bottom && s.pad_left == s.pad_right;
}

namespace {
// The float32 NCHW images of a channels-last conv's operands in its CPU workspace: input, weight, output, then
// the float conv's own scratch; each 64-byte aligned.
struct NhwcConvScratch {
  size_t in = 0, weight = 0, out = 0, conv = 0;
  static size_t aligned(size_t floats) { return (floats * sizeof(float) + 63) / 64 * 64; }
  NhwcConvScratch(const Conv2dShape& s, int num_threads)
      : in(aligned(size_t(s.batch * s.in_channels * s.in_h * s.in_w))),
        weight(aligned(size_t(s.out_channels * (s.in_channels / s.groups) * s.kernel_h * s.kernel_w))),
        out(aligned(size_t(s.batch * s.out_channels * s.out_h() * s.out_w()))),
        conv(conv2d_workspace_bytes(s, num_threads)) {}
  size_t total() const { return in + weight + out + conv; }
};

inline float widen(float v) { return v; }
inline float widen(uint16_t h) { return half_to_float(h); }
inline void store(float* p, float v) { *p = v; }
inline void store(uint16_t* p, float v) { *p = float_to_half(v); }

template <typename T>
void forward_nhwc(T* out, const T* in, const T* weight, const float* bias, const Conv2dShape& s,
                  const FusedActivation& act, void* workspace, size_t workspace_bytes, ThreadPool& pool,
                  const T* residual) {
  CAMRT_CHECK(conv2d_channels_last_supported(s), "conv2d_forward_nhwc: needs a valid conv with symmetric pads");
  CAMRT_CHECK(!residual || residual != out, "conv2d_forward_nhwc: the residual must not alias the output");
  const NhwcConvScratch scratch(s, pool.num_threads());
  CAMRT_CHECK(workspace && workspace_bytes >= scratch.total(),
              "conv2d_forward_nhwc: workspace of " << workspace_bytes << " bytes, need " << scratch.total());
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  float* in_f = reinterpret_cast<float*>(ws);
  float* weight_f = reinterpret_cast<float*>(ws + scratch.in);
  float* out_f = reinterpret_cast<float*>(ws + scratch.in + scratch.weight);
  void* conv_ws = scratch.conv ? ws + scratch.in + scratch.weight + scratch.out : nullptr;
  const int64_t out_plane = s.out_h() * s.out_w();
  nhwc_to_nchw(in_f, in, s.batch, s.in_channels, s.in_h * s.in_w, pool);
  nhwc_to_nchw(weight_f, weight, s.out_channels, s.in_channels / s.groups, s.kernel_h * s.kernel_w, pool);
  conv2d_forward(out_f, in_f, weight_f, nullptr, s, FusedActivation{}, conv_ws, scratch.conv, pool);
  nchw_to_nhwc(out, out_f, s.batch, s.out_channels, out_plane, pool);
  if (bias || residual || act.kind != FusedActivation::kNone)
    conv2d_epilogue_nhwc(out, bias, residual, s.batch * out_plane, s.out_channels, act, pool);
}

template <typename T>
void epilogue_nhwc(T* y, const float* bias, const T* residual, int64_t positions, int64_t channels,
                   const FusedActivation& act, ThreadPool& pool) {
  pool.parallel_for(positions, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      T* row = y + p * channels;
      const T* z = residual ? residual + p * channels : nullptr;
      for (int64_t c = 0; c < channels; ++c) {
        float v = widen(row[c]);
        if (bias) v += bias[c];
        if (z) v += widen(z[c]);
        store(row + c, activate(v, act));
      }
    }
  }, 64);
}
}  // namespace

size_t conv2d_forward_nhwc_workspace_bytes(const Conv2dShape& s, int num_threads) {
  return NhwcConvScratch(s, num_threads).total();
}

void conv2d_forward_nhwc(uint16_t* out, const uint16_t* in, const uint16_t* weight, const float* bias,
                         const Conv2dShape& s, const FusedActivation& act, void* workspace, size_t workspace_bytes,
                         ThreadPool& pool, const uint16_t* residual) {
  forward_nhwc(out, in, weight, bias, s, act, workspace, workspace_bytes, pool, residual);
}

void conv2d_forward_nhwc(float* out, const float* in, const float* weight, const float* bias, const Conv2dShape& s,
                         const FusedActivation& act, void* workspace, size_t workspace_bytes, ThreadPool& pool,
                         const float* residual) {
  forward_nhwc(out, in, weight, bias, s, act, workspace, workspace_bytes, pool, residual);
}

void conv2d_epilogue_nhwc(uint16_t* y, const float* bias, const uint16_t* residual, int64_t positions,
                          int64_t channels, const FusedActivation& act, ThreadPool& pool) {
  epilogue_nhwc(y, bias, residual, positions, channels, act, pool);
}

void conv2d_epilogue_nhwc(float* y, const float* bias, const float* residual, int64_t positions, int64_t channels,
                          const FusedActivation& act, ThreadPool& pool) {
  epilogue_nhwc(y, bias, residual, positions, channels, act, pool);
}

void conv2d_residual_activation(float* out, const float* residual, int64_t n, const FusedActivation& act,
                                ThreadPool& pool) {
  pool.parallel_for(n, [&](int64_t begin, int64_t end) {
    switch (act.kind) {
      case FusedActivation::kRelu:
        for (int64_t i = begin; i < end; ++i) {
          const float x = out[i] + residual[i];
          out[i] = x > 0.f ? x : 0.f;
        }
        break;
      case FusedActivation::kClip:
        for (int64_t i = begin; i < end; ++i) out[i] = std::min(std::max(out[i] + residual[i], act.min), act.max);
        break;
      default:
        for (int64_t i = begin; i < end; ++i) out[i] += residual[i];
        break;
    }
  }, 16384);
}

void conv2d_residual_backward(float* dz, const float* g, int64_t n, ThreadPool& pool) {
  pool.parallel_for(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) dz[i] += g[i];
  }, 16384);
}

void conv2d_activation_backward(float* masked, const float* dy, const float* y, int64_t n, const FusedActivation& act,
                                bool guided_relu, ThreadPool& pool) {
  pool.parallel_for(n, [&](int64_t begin, int64_t end) {
    switch (act.kind) {
      case FusedActivation::kRelu:
        if (guided_relu) {
          for (int64_t i = begin; i < end; ++i) masked[i] = y[i] > 0.f && dy[i] > 0.f ? dy[i] : 0.f;
        } else {
          for (int64_t i = begin; i < end; ++i) masked[i] = y[i] > 0.f ? dy[i] : 0.f;
        }
        break;
      case FusedActivation::kClip:
        for (int64_t i = begin; i < end; ++i) masked[i] = y[i] > act.min && y[i] < act.max ? dy[i] : 0.f;
        break;
      default:
        if (masked != dy)
          for (int64_t i = begin; i < end; ++i) masked[i] = dy[i];
        break;
    }
  }, 16384);
}

}  // namespace camrt
