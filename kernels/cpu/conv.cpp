// Convolution forward on the CPU. Dense and grouped convs are one GEMM per group, out_g (Mg, B*OH*OW) =
// W_g (Mg, Cg*KH*KW) x im2col(in_g), with the batch folded into the GEMM's columns (one C segment per image)
// so small late-layer feature maps still give the GEMM wide tiles. The im2col matrix is never materialised:
// Im2colPacker writes it block by block into the GEMM's packed B panels, from a zero-padded copy of the input
// when the conv has pads (so every tap is in bounds). Depthwise convs (one input channel per group) use a
// direct kernel threaded over (batch, output channel).
#include "kernels/cpu/conv.h"

#include <algorithm>
#include <cstring>
#include <sstream>

#include "engine/error.h"

// Packing loops copy or zero a few floats at a time; GCC would turn them into memcpy/memset calls whose
// call overhead exceeds the work, so packing functions opt out of that transformation.
#if defined(__GNUC__) && !defined(__clang__)
#define CAMRT_INLINE_LOOPS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define CAMRT_INLINE_LOOPS
#endif

namespace camrt {

namespace {

constexpr size_t kAlignBytes = 64;

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

bool has_pads(const Conv2dShape& s) { return s.pad_top || s.pad_left || s.pad_bottom || s.pad_right; }

// The input as the packer reads it: either the caller's tensor (no pads) or a zero-padded copy in the
// workspace. Either way every tap of every output position is inside it.
struct Source {
  const float* data;  // channel 0 of image 0
  int64_t h, w;       // plane size (padded)
  int64_t channels;   // channels per image (all groups)
  int64_t readable;   // floats readable from data (reads past the last tap stay below this)
};

// Floats of zero slack after the padded copy, so the packer's fixed-width row copies may run past the last
// tap: the widest panel (64 columns) at the largest stride with a fixed-width copy (2).
constexpr int64_t kMaxPanel = 64;
constexpr int64_t kPadSlack = kMaxPanel * 2;

int64_t padded_floats(const Conv2dShape& s) {
  return s.batch * s.in_channels * (s.in_h + s.pad_top + s.pad_bottom) * (s.in_w + s.pad_left + s.pad_right) +
         kPadSlack;
}

CAMRT_INLINE_LOOPS void pad_input(float* dst, const float* in, const Conv2dShape& s, ThreadPool& pool) {
  const int64_t hp = s.in_h + s.pad_top + s.pad_bottom, wp = s.in_w + s.pad_left + s.pad_right;
  const int64_t planes = s.batch * s.in_channels;
  pool.parallel_for(planes, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      float* d = dst + plane * hp * wp;
      const float* x = in + plane * s.in_h * s.in_w;
      std::memset(d, 0, size_t(s.pad_top * wp) * sizeof(float));
      for (int64_t ih = 0; ih < s.in_h; ++ih) {
        float* row = d + (ih + s.pad_top) * wp;
        for (int64_t t = 0; t < s.pad_left; ++t) row[t] = 0.f;
        std::memcpy(row + s.pad_left, x + ih * s.in_w, size_t(s.in_w) * sizeof(float));
        for (int64_t t = s.pad_left + s.in_w; t < wp; ++t) row[t] = 0.f;
      }
      std::memset(d + (s.pad_top + s.in_h) * wp, 0, size_t(s.pad_bottom * wp) * sizeof(float));
    }
  }, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, hp * wp)));
  std::memset(dst + planes * hp * wp, 0, size_t(kPadSlack) * sizeof(float));
}

// B = im2col(in_g) for one group, batch folded into columns: row k = (c, kh, kw), column j = (n, oh, ow),
// B[k, j] = src[n, c, oh*sh + kh*dh, ow*sw + kw*dw] (src already padded, so no bounds checks).
class Im2colPacker : public GemmBPacker {
 public:
  Im2colPacker(const Source& src, int64_t channel0, const Conv2dShape& s)
      : src_(src), channel0_(channel0), s_(s), out_h_(s.out_h()), out_w_(s.out_w()) {}

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
  // NR > 0: panels of NR columns, copied NR floats at a time. The columns of a panel form segments along output
  // rows; each segment is copied as a full NR-wide row starting at its column, and the segments are written left
  // to right, so the next segment overwrites what a copy wrote past its own end. A copy can also spill up to NR
  // floats into the next panel row (written later, in order) or past the block (the GemmBPacker slack).
  template <int NR>
  CAMRT_INLINE_LOOPS void pack_panels(float* dst, int64_t k0, int64_t kc, int64_t j0, int64_t nc,
                                      int64_t runtime_nr = NR) const {
    const int64_t nr = NR > 0 ? NR : runtime_nr;
    const int64_t plane = src_.h * src_.w, out_plane = out_h_ * out_w_, taps = s_.kernel_h * s_.kernel_w;
    const int64_t sw = s_.stride_w;
    const bool fast = NR > 0 && sw <= 2;  // the strides the fixed-width copies handle
    struct Segment {
      int64_t col, offset, len;  // first panel column, source offset of its first tap (k excluded), length
    };
    for (int64_t jp = 0; jp < nc; jp += nr) {
      float* d = dst + jp * kc;
      const int64_t w = std::min(nr, nc - jp);
      Segment segs[kMaxPanel];
      int num_segs = 0;
      for (int64_t q = 0; q < w;) {
        const int64_t j = j0 + jp + q;
        const int64_t image = j / out_plane, r = j % out_plane, oh = r / out_w_, ow = r % out_w_;
        const int64_t len = std::min(w - q, out_w_ - ow);
        const int64_t offset = (image * src_.channels + channel0_) * plane + oh * s_.stride_h * src_.w + ow * sw;
        segs[num_segs++] = Segment{q, offset, len};
        q += len;
      }
      int64_t c = k0 / taps, kh = (k0 % taps) / s_.kernel_w, kw = k0 % s_.kernel_w;
      int64_t koff = c * plane + kh * s_.dilation_h * src_.w + kw * s_.dilation_w;
      for (int64_t p = 0; p < kc; ++p) {
        float* __restrict dp = d + p * nr;
        for (int g = 0; g < num_segs; ++g) {
          const Segment& seg = segs[g];
          const int64_t at = seg.offset + koff;
          const float* __restrict from = src_.data + at;
          float* __restrict to = dp + seg.col;
          if (fast && at + NR * sw <= src_.readable) {
            if (sw == 1) {
              std::memcpy(to, from, sizeof(float) * size_t(NR > 0 ? NR : 1));
            } else {
              // Stride 2: read 2*NR contiguous floats and keep the even ones (vector permutes, no gathers).
              float pair[2 * (NR > 0 ? NR : 1)];
              std::memcpy(pair, from, sizeof pair);
              for (int t = 0; t < NR; ++t) to[t] = pair[2 * t];
            }
          } else {
            for (int64_t t = 0; t < seg.len; ++t) to[t] = from[t * sw];
          }
        }
        for (int64_t q = w; q < nr; ++q) dp[q] = 0.f;  // columns past N of a ragged last panel
        if (++kw == s_.kernel_w) {
          kw = 0;
          if (++kh == s_.kernel_h) {
            kh = 0;
            ++c;
          }
        }
        koff = c * plane + kh * s_.dilation_h * src_.w + kw * s_.dilation_w;
      }
    }
  }

  Source src_;
  int64_t channel0_;
  Conv2dShape s_;
  int64_t out_h_, out_w_;
};

bool is_depthwise(const Conv2dShape& s) { return s.in_channels / s.groups == 1; }

bool is_pointwise(const Conv2dShape& s) {
  return s.kernel_h == 1 && s.kernel_w == 1 && s.stride_h == 1 && s.stride_w == 1 && !has_pads(s);
}

// One input channel per group (depthwise, possibly with a channel multiplier): each output plane is a
// weighted sum of KH*KW shifted copies of one input plane, accumulated row by row in the output.
CAMRT_INLINE_LOOPS void depthwise_forward(float* out, const float* in, const float* weight, const float* bias,
                                          const Conv2dShape& s, const FusedActivation& act, ThreadPool& pool) {
  const int64_t oh_n = s.out_h(), ow_n = s.out_w(), multiplier = s.out_channels / s.groups;
  const int64_t plane = s.in_h * s.in_w, out_plane = oh_n * ow_n, taps = s.kernel_h * s.kernel_w;
  pool.parallel_for(s.batch * s.out_channels, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t n = idx / s.out_channels, oc = idx % s.out_channels, ic = oc / multiplier;
      const float* x = in + (n * s.in_channels + ic) * plane;
      const float* w = weight + oc * taps;
      float* y = out + idx * out_plane;
      const float b = bias ? bias[oc] : 0.f;
      for (int64_t oh = 0; oh < oh_n; ++oh) {
        float* __restrict yr = y + oh * ow_n;
        for (int64_t ow = 0; ow < ow_n; ++ow) yr[ow] = b;
        for (int64_t kh = 0; kh < s.kernel_h; ++kh) {
          const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dilation_h;
          if (ih < 0 || ih >= s.in_h) continue;
          for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
            const float wv = w[kh * s.kernel_w + kw];
            const int64_t off_w = kw * s.dilation_w - s.pad_left;
            int64_t lo, hi;
            valid_range(off_w, s.stride_w, s.in_w, ow_n, &lo, &hi);
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
          for (int64_t ow = 0; ow < ow_n; ++ow) yr[ow] = activate(yr[ow], act);
      }
    }
  }, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, out_plane * taps)));
}

size_t align_bytes(size_t n) { return (n + kAlignBytes - 1) / kAlignBytes * kAlignBytes; }

}  // namespace

std::string conv2d_shape_error(const Conv2dShape& s) {
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

size_t conv2d_workspace_bytes(const Conv2dShape& s, int num_threads) {
  if (is_depthwise(s) || s.batch == 0) return 0;
  const int64_t cols = s.batch * s.out_h() * s.out_w();
  const int64_t k = (s.in_channels / s.groups) * s.kernel_h * s.kernel_w;
  size_t bytes = gemm_workspace_bytes(s.out_channels / s.groups, cols, k, num_threads);
  if (has_pads(s)) bytes += align_bytes(size_t(padded_floats(s)) * sizeof(float)) + kAlignBytes;
  return bytes;
}

void conv2d_forward(float* out, const float* in, const float* weight, const float* bias, const Conv2dShape& s,
                    const FusedActivation& act, void* workspace, size_t workspace_bytes, ThreadPool& pool) {
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

  // Workspace: [padded input (if pads)] [GEMM scratch].
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  size_t ws_left = workspace_bytes;
  Source src{in, s.in_h, s.in_w, s.in_channels, s.batch * s.in_channels * plane};
  if (has_pads(s)) {
    const uintptr_t base = reinterpret_cast<uintptr_t>(ws);
    const size_t skip = (kAlignBytes - base % kAlignBytes) % kAlignBytes;
    float* padded = reinterpret_cast<float*>(ws + skip);
    const size_t used = skip + align_bytes(size_t(padded_floats(s)) * sizeof(float));
    ws += used;
    ws_left -= used;
    pad_input(padded, in, s, pool);
    src = Source{padded, s.in_h + s.pad_top + s.pad_bottom, s.in_w + s.pad_left + s.pad_right, s.in_channels,
                 padded_floats(s)};
  }
  for (int64_t g = 0; g < s.groups; ++g) {
    const GemmOutput c{out + g * mg * out_plane, out_plane, out_plane, s.out_channels * out_plane};
    GemmEpilogue epi;
    epi.bias_row = bias ? bias + g * mg : nullptr;
    epi.act = act;
    const float* a = weight + g * mg * k;
    if (is_pointwise(s)) {
      const GemmMatrixB b(in + g * cg * plane, plane, false, plane, s.in_channels * plane);
      gemm_packed(c, a, k, false, b, mg, cols, k, 1.f, 0.f, epi, ws, ws_left, pool);
    } else {
      const Im2colPacker b(src, g * cg, s);
      gemm_packed(c, a, k, false, b, mg, cols, k, 1.f, 0.f, epi, ws, ws_left, pool);
    }
  }
}

}  // namespace camrt
