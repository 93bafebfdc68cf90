// CUDA CAM kernels (see cam.h), the GPU twins of kernels/cpu/cam.cpp. Determinism: every reduction is a fixed
// tree over a fixed block shape (warp shuffles, then one warp over the warp partials), never atomics, so the
// same inputs give the same bits on every run. Channel sums split K into kSumGroups fixed chunks summed in
// order. The resize and normalize arithmetic uses _rn intrinsics where the CPU twin's fp32 expression must not
// be contracted into an FMA.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/cam.h"
#include "kernels/cuda/check.h"

namespace camrt::cuda {

namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kThreads = 256;         // element-wise kernels and warp-per-plane kernels
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int kMapThreads = 512;      // one block per map (normalize, masks, aggregation)
constexpr int64_t kMaxGrid = 65535 * 8;  // grid-stride loops cover the rest
constexpr size_t kAlign = 256;

__device__ __forceinline__ float nan_f() { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ float relu_f(float x) { return x > 0.f ? x : 0.f; }  // also maps -0 to +0, as the CPU

__device__ __forceinline__ int64_t global_index() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t global_stride() { return int64_t(gridDim.x) * blockDim.x; }

struct SumOp {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct MinOp {
  __device__ float operator()(float a, float b) const { return fminf(a, b); }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Lane 0 holds the result; the tree (offsets 16, 8, 4, 2, 1) is fixed.
template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_down_sync(kFullMask, v, offset));
  return v;
}

__device__ __forceinline__ double warp_sum_all(double v) {  // every lane gets lane 0's sum
  return __shfl_sync(kFullMask, warp_reduce(v, SumOp{}), 0);
}

// Whole-block reduction, result in every thread. Every thread of the block must call it (it synchronizes);
// blockDim.x a multiple of 32, 1D blocks.
template <typename T, typename Op>
__device__ T block_reduce(T v, T identity, Op op) {
  __shared__ T partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_reduce(v, op);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T t = lane < warps ? partial[lane] : identity;
    t = warp_reduce(t, op);
    if (lane == 0) partial[0] = t;
  }
  __syncthreads();
  const T result = partial[0];
  __syncthreads();  // partial may be reused by the next call
  return result;
}

__device__ double block_sum(double v) { return block_reduce(v, 0.0, SumOp{}); }
__device__ float block_min(float v) { return block_reduce(v, INFINITY, MinOp{}); }
__device__ float block_max(float v) { return block_reduce(v, -INFINITY, MaxOp{}); }

unsigned grid_size(int64_t blocks) {
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > kMaxGrid ? kMaxGrid : blocks));
}

void check_sizes(const char* what, int64_t B, int64_t K, int64_t h, int64_t w) {
  CAMRT_CHECK(B >= 0 && K >= 0 && h >= 0 && w >= 0,
              what << ": negative size (B=" << B << ", K=" << K << ", h=" << h << ", w=" << w << ")");
}

size_t align_up(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// The first kAlign-aligned address of the caller's scratch, checked to leave need_bytes.
template <typename T>
T* aligned_scratch(void* scratch, size_t scratch_bytes, size_t need_bytes, const char* what) {
  if (need_bytes == 0) return nullptr;
  const uintptr_t p = reinterpret_cast<uintptr_t>(scratch);
  const uintptr_t a = (p + kAlign - 1) / kAlign * kAlign;
  CAMRT_CHECK(scratch != nullptr && a - p + need_bytes <= scratch_bytes,
              what << ": scratch of " << scratch_bytes << " bytes at " << scratch << " is too small (needs "
                   << need_bytes + kAlign << "; size it with the matching *_scratch_bytes function)");
  return reinterpret_cast<T*>(a);
}

// ---- gradient-weighted methods ------------------------------------------------------------------------

// Grad-CAM++ term, as the CPU twin's plus_plus_term: alpha * ReLU(d1), alpha = 0 where d2 == 0.
__device__ __forceinline__ double plus_plus_term(double S, double d1, double d2, double d3) {
  const double term = d2 / (2.0 * d2 + S * d3 + 1e-6) * fmax(d1, 0.0);
  return d2 != 0.0 ? term : 0.0;
}

// One warp per (b, k) plane: lanes take strided positions, then a warp tree.
__global__ void __launch_bounds__(kThreads)
    grad_cam_weights_kernel(float* weights, const float* A, const float* G, int64_t planes, int64_t Z,
                            GradCamVariant variant) {
  const int lane = threadIdx.x & 31;
  const int64_t stride = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t p = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5); p < planes; p += stride) {
    const float* a = A + p * Z;
    const float* g = G + p * Z;
    double wk;
    if (variant == GradCamVariant::GradCam || variant == GradCamVariant::GradCamNeg) {
      double s = 0.0;
      for (int64_t i = lane; i < Z; i += 32) s += g[i];
      s = warp_sum_all(s);
      wk = variant == GradCamVariant::GradCamNeg ? -s / static_cast<double>(Z) : s / static_cast<double>(Z);
    } else if (variant == GradCamVariant::GradCamPlusPlus) {
      double S = 0.0;
      for (int64_t i = lane; i < Z; i += 32) S += a[i];
      S = warp_sum_all(S);
      double t = 0.0;
      for (int64_t i = lane; i < Z; i += 32) {
        const double gi = g[i], g2 = gi * gi;
        t += plus_plus_term(S, gi, g2, g2 * gi);
      }
      wk = warp_sum_all(t);
    } else {  // XGradCam (the launcher admits only channel-weight variants)
      double ga = 0.0, s = 0.0;
      for (int64_t i = lane; i < Z; i += 32) {
        ga += static_cast<double>(g[i]) * a[i];
        s += a[i];
      }
      ga = warp_sum_all(ga);
      s = warp_sum_all(s);
      wk = ga / (s + 1e-7);
    }
    if (lane == 0) weights[p] = static_cast<float>(wk);
  }
}

// Smooth Grad-CAM++ weights from the sample means, one warp per plane.
__global__ void __launch_bounds__(kThreads)
    smooth_weights_kernel(float* weights, const float* A, const float* D1, const float* D2, const float* D3,
                          int64_t planes, int64_t Z) {
  const int lane = threadIdx.x & 31;
  const int64_t stride = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t p = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5); p < planes; p += stride) {
    const int64_t base = p * Z;
    double S = 0.0;
    for (int64_t i = lane; i < Z; i += 32) S += A[base + i];
    S = warp_sum_all(S);
    double t = 0.0;
    for (int64_t i = lane; i < Z; i += 32) t += plus_plus_term(S, D1[base + i], D2[base + i], D3[base + i]);
    t = warp_sum_all(t);
    if (lane == 0) weights[p] = static_cast<float>(t);
  }
}

// cam[b, z] = sum_k term(b, k, z). Block (32 positions) x (kSumGroups channel chunks): chunk g sums channels
// [g*chunk, (g+1)*chunk) in order in double, then the chunks are added in order: a fixed association.
constexpr int kSumTile = 32, kSumGroups = 8;
enum class SumMode { Weighted, Fc, HiRes, Elementwise, Layer };

template <SumMode mode>
__global__ void __launch_bounds__(kSumTile* kSumGroups)
    channel_sum_kernel(float* cam, const float* A, const float* G, const float* weights, const int64_t* classes,
                       int64_t num_classes, int64_t B, int64_t K, int64_t Z) {
  __shared__ double partial[kSumGroups][kSumTile];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t tiles = (Z + kSumTile - 1) / kSumTile;
  const int64_t chunk = (K + kSumGroups - 1) / kSumGroups;
  const int64_t k0 = min(K, ty * chunk), k1 = min(K, k0 + chunk);
  for (int64_t t = blockIdx.x; t < B * tiles; t += gridDim.x) {  // uniform over the block
    const int64_t b = t / tiles, z = (t % tiles) * kSumTile + tx;
    const float* wrow = nullptr;
    bool valid = true;
    if constexpr (mode == SumMode::Weighted) wrow = weights + b * K;
    if constexpr (mode == SumMode::Fc) {
      const int64_t c = classes[b];
      valid = c >= 0 && c < num_classes;
      wrow = weights + (valid ? c : 0) * K;
    }
    double acc = 0.0;
    if (z < Z && valid) {
      const float* a = A + b * K * Z + z;
      for (int64_t k = k0; k < k1; ++k) {
        const float ak = a[k * Z];
        if constexpr (mode == SumMode::Weighted || mode == SumMode::Fc) {
          acc += static_cast<double>(wrow[k]) * ak;
        } else {
          const double gk = G[b * K * Z + k * Z + z];
          if constexpr (mode == SumMode::HiRes) acc += gk * ak;
          if constexpr (mode == SumMode::Elementwise) acc += fmax(gk * ak, 0.0);
          if constexpr (mode == SumMode::Layer) acc += fmax(gk, 0.0) * ak;
        }
      }
    }
    partial[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && z < Z) {
      double s = partial[0][tx];
      for (int g = 1; g < kSumGroups; ++g) s += partial[g][tx];
      cam[b * Z + z] = valid ? static_cast<float>(s) : nan_f();
    }
    __syncthreads();
  }
}

__global__ void __launch_bounds__(kSumTile* kSumGroups)
    normgrad_kernel(float* cam, const float* A, const float* G, int64_t B, int64_t K, int64_t Z) {
  __shared__ double partial_g[kSumGroups][kSumTile];
  __shared__ double partial_a[kSumGroups][kSumTile];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t tiles = (Z + kSumTile - 1) / kSumTile;
  const int64_t chunk = (K + kSumGroups - 1) / kSumGroups;
  const int64_t k0 = min(K, ty * chunk), k1 = min(K, k0 + chunk);
  for (int64_t t = blockIdx.x; t < B * tiles; t += gridDim.x) {
    const int64_t b = t / tiles, z = (t % tiles) * kSumTile + tx;
    double gg = 0.0, aa = 0.0;
    if (z < Z) {
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t i = b * K * Z + k * Z + z;
        const double g = G[i], a = A[i];
        gg += g * g;
        aa += a * a;
      }
    }
    partial_g[ty][tx] = gg;
    partial_a[ty][tx] = aa;
    __syncthreads();
    if (ty == 0 && z < Z) {
      double sg = partial_g[0][tx], sa = partial_a[0][tx];
      for (int g = 1; g < kSumGroups; ++g) {
        sg += partial_g[g][tx];
        sa += partial_a[g][tx];
      }
      cam[b * Z + z] = static_cast<float>(sqrt(sg) * sqrt(sa));
    }
    __syncthreads();
  }
}

template <SumMode mode>
void launch_channel_sum(float* cam, const float* A, const float* G, const float* weights, const int64_t* classes,
                        int64_t num_classes, int64_t B, int64_t K, int64_t Z, cudaStream_t stream) {
  const int64_t tiles = (Z + kSumTile - 1) / kSumTile;
  channel_sum_kernel<mode><<<grid_size(B * tiles), dim3(kSumTile, kSumGroups), 0, stream>>>(cam, A, G, weights, classes,
                                                                                             num_classes, B, K, Z);
  CAMRT_CUDA_CHECK_LAUNCH("channel_sum_kernel");
}

__global__ void scale_channels_kernel(float* out, const float* A, const float* weights, int64_t n, int64_t Z) {
  for (int64_t i = global_index(); i < n; i += global_stride()) out[i] = weights[i / Z] * A[i];
}

__global__ void spatial_terms_kernel(float* out, const float* A, const float* G, int64_t n, GradCamVariant variant) {
  for (int64_t i = global_index(); i < n; i += global_stride()) {
    const float a = A[i], g = G[i];
    float o;
    if (variant == GradCamVariant::HiResCam)
      o = __fmul_rn(g, a);
    else if (variant == GradCamVariant::GradCamElementwise)
      o = fmaxf(__fmul_rn(g, a), 0.f);
    else  // LayerCam
      o = __fmul_rn(fmaxf(g, 0.f), a);
    out[i] = o;
  }
}

__global__ void product_kernel(float* out, const float* a, const float* b, int64_t n) {
  for (int64_t i = global_index(); i < n; i += global_stride()) out[i] = a[i] * b[i];
}

__global__ void smooth_accumulate_kernel(float* D1, float* D2, float* D3, const float* G, int64_t n) {
  for (int64_t i = global_index(); i < n; i += global_stride()) {
    const double g = G[i], g2 = __dmul_rn(g, g);
    D1[i] = static_cast<float>(__dadd_rn(D1[i], g));
    D2[i] = static_cast<float>(__dadd_rn(D2[i], g2));
    D3[i] = static_cast<float>(__dadd_rn(D3[i], __dmul_rn(g2, g)));
  }
}

void launch_grad_cam_weights(float* weights, const float* A, const float* G, int64_t planes, int64_t Z,
                             GradCamVariant variant, cudaStream_t stream) {
  if (planes == 0) return;
  grad_cam_weights_kernel<<<grid_size((planes + kWarpsPerBlock - 1) / kWarpsPerBlock), kThreads, 0, stream>>>(
      weights, A, G, planes, Z, variant);
  CAMRT_CUDA_CHECK_LAUNCH("grad_cam_weights_kernel");
}

// ---- bilinear resize: the CPU twin's (ATen's) fp32 index and lambda arithmetic ------------------------

struct LinearTap {
  int64_t i0, i1;
  float l0, l1;
};

__device__ __forceinline__ float linear_scale(int64_t in_size, int64_t out_size, bool align_corners) {
  if (align_corners)
    return out_size > 1 ? __fdiv_rn(static_cast<float>(in_size - 1), static_cast<float>(out_size - 1)) : 0.f;
  return __fdiv_rn(static_cast<float>(in_size), static_cast<float>(out_size));
}

__device__ __forceinline__ LinearTap linear_tap(int64_t dst, int64_t in_size, int64_t out_size, float scale,
                                                bool align_corners) {
  if (in_size == out_size) return {dst, dst, 1.f, 0.f};
  float real;
  if (align_corners) {
    real = __fmul_rn(scale, static_cast<float>(dst));
  } else {
    const double src = __dadd_rn(__dmul_rn(static_cast<double>(scale), static_cast<double>(dst) + 0.5), -0.5);
    real = src < 0.0 ? 0.f : static_cast<float>(src);
  }
  LinearTap tap;
  tap.i0 = static_cast<int64_t>(real);
  tap.i1 = tap.i0 + (tap.i0 < in_size - 1 ? 1 : 0);
  tap.l1 = fminf(fmaxf(__fsub_rn(real, static_cast<float>(tap.i0)), 0.f), 1.f);
  tap.l0 = __fsub_rn(1.f, tap.l1);
  return tap;
}

__device__ __forceinline__ float lerp(float v0, float v1, const LinearTap& t) {
  return __fadd_rn(__fmul_rn(v0, t.l0), __fmul_rn(v1, t.l1));
}

// Bilinear value at output (r, c) of a plane, each source value passed through f (identity, or the
// postprocess normalization). Rows interpolated along w first, then along h, as the CPU twin.
template <typename F>
__device__ __forceinline__ float bilinear_at(const float* plane, int64_t in_h, int64_t in_w, int64_t out_h,
                                             int64_t out_w, int64_t r, int64_t c, float sh, float sw,
                                             bool align_corners, F f) {
  const LinearTap th = linear_tap(r, in_h, out_h, sh, align_corners);
  const LinearTap tw = linear_tap(c, in_w, out_w, sw, align_corners);
  const float* row0 = plane + th.i0 * in_w;
  const float* row1 = plane + th.i1 * in_w;
  const float t0 = lerp(f(row0[tw.i0]), f(row0[tw.i1]), tw);
  const float t1 = lerp(f(row1[tw.i0]), f(row1[tw.i1]), tw);
  return lerp(t0, t1, th);
}

struct Identity {
  __device__ float operator()(float v) const { return v; }
};

// The CPU twin's postprocess arithmetic on one low-resolution value: ReLU, - min, / denom.
struct Normalize {
  bool relu;
  float mn, denom;
  __device__ float operator()(float v) const { return __fdiv_rn(__fsub_rn(relu ? relu_f(v) : v, mn), denom); }
};

// numpy's float32 / (1e-7 + float32 max): the divisor formed in double, rounded to fp32 (CPU twin).
__device__ __forceinline__ float minmax_denominator(float mx) {
  return static_cast<float>(__dadd_rn(1e-7, static_cast<double>(mx)));
}

__global__ void bilinear_resize_kernel(float* out, const float* in, int64_t planes, int64_t in_h, int64_t in_w,
                                       int64_t out_h, int64_t out_w, bool align_corners) {
  const float sh = linear_scale(in_h, out_h, align_corners), sw = linear_scale(in_w, out_w, align_corners);
  const int64_t n = planes * out_h * out_w;
  for (int64_t i = global_index(); i < n; i += global_stride()) {
    const int64_t c = i % out_w, r = (i / out_w) % out_h, p = i / (out_w * out_h);
    out[i] = bilinear_at(in + p * in_h * in_w, in_h, in_w, out_h, out_w, r, c, sh, sw, align_corners, Identity{});
  }
}

// Steps 1-3 of post-processing. Grid (tiles of kPostTile outputs, maps); each block reduces its map's min and
// max (of the ReLU'd values), then writes its tile of the resized, normalized map.
constexpr int kPostThreads = 256, kPostPerThread = 4, kPostTile = kPostThreads * kPostPerThread;

__global__ void __launch_bounds__(kPostThreads)
    postprocess_kernel(float* out, const float* cam, int64_t B, int64_t h, int64_t w, int64_t H, int64_t W,
                       bool apply_relu) {
  const int64_t hw = h * w, HW = H * W, tiles = (HW + kPostTile - 1) / kPostTile;
  const float sh = linear_scale(h, H, false), sw = linear_scale(w, W, false);
  for (int64_t m = blockIdx.y; m < B; m += gridDim.y) {
    const float* x = cam + m * hw;
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t i = threadIdx.x; i < hw; i += blockDim.x) {
      const float v = apply_relu ? relu_f(x[i]) : x[i];
      lo = fminf(lo, v);
      hi = fmaxf(hi, v);
    }
    lo = block_min(lo);
    hi = block_max(hi);
    // max(x - mn) == max(x) - mn: fp32 subtraction of a constant is monotonic. The CPU starts its max at 0.
    const Normalize norm{apply_relu, lo, minmax_denominator(fmaxf(0.f, __fsub_rn(hi, lo)))};
    for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x)
      for (int q = 0; q < kPostPerThread; ++q) {
        const int64_t o = t * kPostTile + q * kPostThreads + threadIdx.x;
        if (o >= HW) break;
        out[m * HW + o] = bilinear_at(x, h, w, H, W, o / W, o % W, sh, sw, false, norm);
      }
  }
}

__global__ void __launch_bounds__(kMapThreads) minmax_normalize_kernel(float* maps, int64_t count, int64_t hw) {
  for (int64_t m = blockIdx.x; m < count; m += gridDim.x) {
    float* x = maps + m * hw;
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t i = threadIdx.x; i < hw; i += blockDim.x) {
      lo = fminf(lo, x[i]);
      hi = fmaxf(hi, x[i]);
    }
    lo = block_min(lo);
    hi = block_max(hi);
    const Normalize norm{false, lo, minmax_denominator(fmaxf(0.f, __fsub_rn(hi, lo)))};
    for (int64_t i = threadIdx.x; i < hw; i += blockDim.x) x[i] = norm(x[i]);
  }
}

// Step 4: mean over layers of ReLU (double, in layer order), then min-max normalize, one block per map. Each
// thread rewrites only the positions it wrote, so the block needs no barrier beyond the reductions.
__global__ void __launch_bounds__(kMapThreads)
    aggregate_kernel(float* out, const float* per_layer, int64_t L, int64_t B, int64_t HW) {
  const int64_t n = B * HW;
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    float* o = out + b * HW;
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
      double s = 0.0;
      for (int64_t l = 0; l < L; ++l) {
        const float v = per_layer[l * n + b * HW + i];
        s += v < 0.f ? 0.f : v;  // std::max(v, 0.f)
      }
      const float mean = static_cast<float>(s / static_cast<double>(L));
      o[i] = mean;
      lo = fminf(lo, mean);
      hi = fmaxf(hi, mean);
    }
    lo = block_min(lo);
    hi = block_max(hi);
    const Normalize norm{false, lo, minmax_denominator(fmaxf(0.f, __fsub_rn(hi, lo)))};
    for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) o[i] = norm(o[i]);
  }
}

__global__ void __launch_bounds__(kMapThreads) tanh_scale_kernel(float* maps, int64_t count, int64_t hw) {
  for (int64_t m = blockIdx.x; m < count; m += gridDim.x) {
    float* x = maps + m * hw;
    float hi = -INFINITY;
    for (int64_t i = threadIdx.x; i < hw; i += blockDim.x) hi = fmaxf(hi, x[i]);
    hi = block_max(hi);
    if (!(hi > 0.f)) continue;  // uniform over the block
    const double scale = 2.0 / hi;  // gamma = 2 (LayerCAM paper, Eq. 9)
    for (int64_t i = threadIdx.x; i < hw; i += blockDim.x) x[i] = static_cast<float>(tanh(scale * x[i]));
  }
}

__global__ void relu_kernel(float* x, int64_t n) {
  for (int64_t i = global_index(); i < n; i += global_stride()) x[i] = relu_f(x[i]);
}

__global__ void guided_gradcam_kernel(float* out, const float* guided, const float* cam, int64_t n, int64_t CHW,
                                      int64_t HW) {
  for (int64_t i = global_index(); i < n; i += global_stride()) out[i] = guided[i] * cam[(i / CHW) * HW + i % HW];
}

// One block per image: min and max (exact in any order), then 0.2 * (max - min) in fp32 as the CPU twin. fminf
// and fmaxf skip NaN, so a NaN pixel is counted apart and makes sigma NaN, as on the CPU (and as torch.max does).
__global__ void __launch_bounds__(kMapThreads) smooth_sigma_kernel(float* sigma, const float* x, int64_t B, int64_t plane) {
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    float lo = INFINITY, hi = -INFINITY, any_nan = 0.f;
    for (int64_t i = threadIdx.x; i < plane; i += blockDim.x) {
      const float v = x[b * plane + i];
      lo = fminf(lo, v);
      hi = fmaxf(hi, v);
      if (isnan(v)) any_nan = 1.f;
    }
    lo = block_min(lo);
    hi = block_max(hi);
    any_nan = block_max(any_nan);
    if (threadIdx.x == 0) sigma[b] = any_nan > 0.f ? NAN : __fmul_rn(0.2f, __fsub_rn(hi, lo));
  }
}

// x + (z * sigma + 0), each operation rounded on its own as std::normal_distribution and the CPU twin round it.
__global__ void smooth_copies_kernel(float* out, const float* x, const float* z, const float* sigma, int64_t first,
                                     int64_t count, int64_t total, int64_t B, int64_t N, int64_t plane, bool scaled) {
  for (int64_t i = global_index(); i < total; i += global_stride()) {
    const int64_t r = i / plane, p = i % plane, s = r / B, b = r % B;
    if (s >= count) {
      out[i] = 0.f;
      continue;
    }
    const float zv = z[((first + s) * N + b % N) * plane + p];
    const float noise = scaled ? __fadd_rn(__fmul_rn(zv, sigma[b]), 0.f) : zv;
    out[i] = __fadd_rn(x[b * plane + p], noise);
  }
}

// One block per row: the logit, or the softmax probability in double as the CPU twin.
__global__ void target_scores_kernel(float* scores, const float* logits, const int64_t* classes, int64_t class_stride,
                                     int64_t rows, int64_t C, bool softmax) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* z = logits + r * C;
    const int64_t c = classes[r * class_stride];
    if (c < 0 || c >= C) {
      if (threadIdx.x == 0) scores[r] = nan_f();
      continue;
    }
    if (!softmax) {
      if (threadIdx.x == 0) scores[r] = z[c];
      continue;
    }
    float max_z = -INFINITY;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) max_z = fmaxf(max_z, z[j]);
    max_z = block_max(max_z);
    double sum = 0;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) sum += exp(double(z[j]) - max_z);
    sum = block_sum(sum);
    if (threadIdx.x == 0) scores[r] = float(exp(double(z[c]) - max_z) / sum);
  }
}

// ---- Score-CAM ----------------------------------------------------------------------------------------

// One block per (b, k) plane: upsample (align_corners=true) into the mask, min/max, normalize in place. Each
// thread normalizes only the positions it wrote.
__global__ void __launch_bounds__(kMapThreads)
    scorecam_masks_kernel(float* masks, const float* A, int64_t planes, int64_t h, int64_t w, int64_t H, int64_t W) {
  const float sh = linear_scale(h, H, true), sw = linear_scale(w, W, true);
  const int64_t HW = H * W;
  for (int64_t p = blockIdx.x; p < planes; p += gridDim.x) {
    const float* in = A + p * h * w;
    float* m = masks + p * HW;
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
      const float v = bilinear_at(in, h, w, H, W, i / W, i % W, sh, sw, true, Identity{});
      m[i] = v;
      lo = fminf(lo, v);
      hi = fmaxf(hi, v);
    }
    lo = block_min(lo);
    hi = block_max(hi);
    const float denom = __fadd_rn(__fsub_rn(hi, lo), 1e-8f);  // (maxs - mins + 1e-8) in fp32, as torch
    for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) m[i] = __fdiv_rn(__fsub_rn(m[i], lo), denom);
  }
}

__global__ void apply_mask_kernel(float* out, const float* x, const float* masks, int64_t total, int64_t C,
                                  int64_t HW) {
  for (int64_t i = global_index(); i < total; i += global_stride()) {
    const int64_t z = i % HW, c = (i / HW) % C, m = i / (C * HW);
    out[i] = x[c * HW + z] * masks[m * HW + z];
  }
}

__global__ void __launch_bounds__(kThreads) softmax_kernel(float* w, const float* scores, int64_t B, int64_t K) {
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const float* s = scores + b * K;
    float hi = -INFINITY;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) hi = fmaxf(hi, s[k]);
    const double mx = block_max(hi);
    double part = 0.0;
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) part += exp(s[k] - mx);
    const double sum = block_sum(part);
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) w[b * K + k] = static_cast<float>(exp(s[k] - mx) / sum);
  }
}

__global__ void __launch_bounds__(kThreads)
    constant_channels_kernel(uint8_t* is_constant, const float* A, int64_t planes, int64_t Z) {
  const int lane = threadIdx.x & 31;
  const int64_t stride = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t p = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5); p < planes; p += stride) {
    const float* a = A + p * Z;
    const float a0 = Z > 0 ? a[0] : 0.f;
    bool equal = true;
    // From i = 1, as the CPU twin (a[0] == a[0] is false for NaN).
    for (int64_t i = lane == 0 ? 32 : lane; i < Z; i += 32) equal = equal && a[i] == a0;
    const bool all = __all_sync(kFullMask, equal);
    if (lane == 0) is_constant[p] = all ? 1 : 0;
  }
}

__global__ void paper_weights_kernel(float* w, const float* probs, const uint8_t* is_constant, int64_t n) {
  for (int64_t i = global_index(); i < n; i += global_stride()) w[i] = is_constant[i] ? 0.f : probs[i];
}

// ---- Ablation-CAM -------------------------------------------------------------------------------------

__global__ void __launch_bounds__(kMapThreads) ablation_values_kernel(float* values, const float* A, int64_t B, int64_t n) {
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const float* a = A + b * n;
    float lo = INFINITY;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) lo = fminf(lo, a[i]);
    lo = block_min(lo);
    // 1e7: pytorch-grad-cam's ABLATION_VALUE; fp32 subtraction as the CPU twin.
    if (threadIdx.x == 0) values[b] = lo == 0.f ? 0.f : __fsub_rn(lo, 1e7f);
  }
}

__global__ void ablation_batch_kernel(float* out, const float* A_image, const float* value, int64_t k_begin,
                                      int64_t total, int64_t K, int64_t Z) {
  for (int64_t i = global_index(); i < total; i += global_stride()) {
    const int64_t copy = i / (K * Z), k = (i / Z) % K, z = i % Z;
    out[i] = k == k_begin + copy ? *value : A_image[k * Z + z];
  }
}

__global__ void ablation_weights_kernel(float* w, const float* y, const float* y_ablated, int64_t n, int64_t K) {
  for (int64_t i = global_index(); i < n; i += global_stride()) {
    const double yb = y[i / K];
    w[i] = yb == 0.0 ? nan_f() : static_cast<float>((yb - y_ablated[i]) / yb);
  }
}

// ---- Eigen-CAM ----------------------------------------------------------------------------------------
//
// Per image b: R = A centred per channel (K, Z) in double; X = R (K <= Z: rows are channels, C = R R^T is
// K x K) or X = R^T (rows are positions, C = M M^T is Z x Z); C = X X^T by a 64x64-tiled kernel.
// Top eigenvector: power iteration on repeated squares. P_0 = C, P_{s+1} = P_s^2 / ||P_s||_F^2 (trace 1), so
// P_s has the eigenvectors of C and eigenvalues lambda_i^(2^s) / sum_j lambda_j^(2^s): each square doubles the
// exponent of the ratio lambda_2/lambda_1 that plain power iteration reduces by one per step, so a gap of 1e-3
// needs ~15 squares instead of ~2e4 iterations. For a trace-1 PSD P, ||P||_F^2 = sum mu_i^2 = 1 exactly when P
// is rank one, so "converged" is ||P||_F^2 >= (1 - kEigenTol) tr(P)^2 (scale-free, also right for P_0 = C);
// then 1 - mu_1 <= kEigenTol / 2. Each square kernel decides convergence from per-tile partial sums that the
// previous kernel left (the same fixed-order sum in every block), and a converged image's blocks return at once.
// Extraction: the row of P with the largest diagonal (its v_1 component is >= 1/sqrt(n)) has relative
// contamination <= (kEigenTol/2) sqrt(n); kEigenPolish products with P multiply it by mu_2/mu_1 <= kEigenTol/2
// each, leaving ~1e-18 for n = 512. Near-degenerate top pairs (gap below ~1e-8 after kEigenSquares) return a
// vector of the top eigenspace, as the CPU solver does (the singular vector is ill-determined there).
// Then cam = M v (K <= Z) or sqrt(lambda) u with lambda = ||M^T u||^2 (Z < K), and the CPU twin's sign rule.
constexpr int kGramTile = 64, kGramStep = 16, kGramThreads = 256;
constexpr int kEigenSquares = 30;
constexpr double kEigenTol = 1e-6;
constexpr int kEigenPolish = 2;
constexpr int kEigenThreads = 256;
constexpr int64_t kMaxGridZ = 65535;
enum EigenStatus : int { kEigenRunning = 0, kEigenConverged = 1, kEigenZero = 2 };

struct EigenLayout {
  bool channels_small = true;
  int64_t n = 0, len = 0, tiles = 0;
  size_t R = 0, P0 = 0, P1 = 0, v = 0, y = 0, camd = 0, pf = 0, ptr = 0, status = 0, parity = 0, bytes = 0;
};

EigenLayout eigen_layout(int64_t B, int64_t K, int64_t Z) {
  EigenLayout L;
  L.channels_small = K <= Z;
  L.n = std::min(K, Z);
  L.len = std::max(K, Z);
  L.tiles = (L.n + kGramTile - 1) / kGramTile;
  const size_t b = static_cast<size_t>(B), d = sizeof(double), n = static_cast<size_t>(L.n);
  const size_t tt = static_cast<size_t>(L.tiles * L.tiles);
  size_t off = 0;
  auto take = [&off](size_t bytes) {
    const size_t at = off;
    off = align_up(off + bytes);
    return at;
  };
  L.R = take(b * static_cast<size_t>(K * Z) * d);
  L.P0 = take(b * n * n * d);
  L.P1 = take(b * n * n * d);
  L.v = take(b * n * d);
  L.y = take(b * n * d);
  L.camd = take(b * static_cast<size_t>(Z) * d);
  L.pf = take(2 * b * tt * d);   // sum of squares per upper tile, two generations
  L.ptr = take(2 * b * tt * d);  // diagonal sum per diagonal tile, two generations
  L.status = take(b * sizeof(int));
  L.parity = take(b * sizeof(int));
  L.bytes = off;
  return L;
}

// R[p, z] = A[p, z] - mean_z A[p, z], one warp per (b, k) plane.
__global__ void __launch_bounds__(kThreads) eigen_centre_kernel(double* R, const float* A, int64_t planes, int64_t Z) {
  const int lane = threadIdx.x & 31;
  const int64_t stride = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t p = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5); p < planes; p += stride) {
    const float* a = A + p * Z;
    double s = 0.0;
    for (int64_t i = lane; i < Z; i += 32) s += a[i];
    const double mean = warp_sum_all(s) / static_cast<double>(Z);
    for (int64_t i = lane; i < Z; i += 32) R[p * Z + i] = static_cast<double>(a[i]) - mean;
  }
}

// out_b = scale_b X_b X_b^T, X_b (n x len) with element (i, t) at X + b*x_batch + i*rs + t*cs. Grid (tiles,
// tiles, images); blocks below the diagonal return, the others write their tile and its mirror, so out is
// exactly symmetric (diagonal tiles too: fma(a, b, c) == fma(b, a, c) and every entry sums t in order).
// Each block also leaves its tile's sum of squares and diagonal sum in pf_out / ptr_out (B, tiles, tiles).
// Gram mode (pf_in == nullptr): scale 1; block (0, 0) marks the image running. Square mode: X = P_step and
// every block first reduces pf_in / ptr_in (the same fixed order everywhere) to ||P||_F^2 and tr P, decides
// convergence (block (0, 0) records it), and if still running writes P^2 / ||P||_F^2.
__global__ void __launch_bounds__(kGramThreads)
    eigen_syrk_kernel(double* out, const double* X, int64_t n, int64_t len, int64_t rs, int64_t cs, int64_t x_batch,
                      int64_t tiles, double* pf_out, double* ptr_out, const double* pf_in, const double* ptr_in,
                      int* status, int* parity, int step, int64_t b0) {
  const int64_t b = b0 + blockIdx.z;
  const int64_t ti = blockIdx.y, tj = blockIdx.x;
  if (ti > tj) return;
  __shared__ double decision[2];
  double scale = 1.0;
  if (pf_in != nullptr) {
    // Thread 0 alone reads status and decides, the block follows its shared decision: block (0, 0) writes
    // status below, and a thread of that block reading it afterwards would leave the others at the barrier.
    // Another block may read status while block (0, 0) writes it, but only ever sees "running" or the value it
    // derives itself from the same partial sums, so either read leads to the same decision.
    if (threadIdx.x == 0) {
      int st = status[b] == kEigenRunning ? kEigenRunning : -1;  // -1: decided at an earlier step
      double inverse = 0.0;
      if (st == kEigenRunning) {
        double f = 0.0, tr = 0.0;
        for (int64_t a = 0; a < tiles; ++a)
          for (int64_t c = a; c < tiles; ++c) {
            const int64_t idx = (b * tiles + a) * tiles + c;
            f += (a == c ? 1.0 : 2.0) * pf_in[idx];
            if (a == c) tr += ptr_in[idx];
          }
        if (tr == 0.0)
          st = kEigenZero;  // C == 0 (every channel constant): the CPU twin takes e_0; cam is 0 either way
        else if (f >= (1.0 - kEigenTol) * tr * tr)
          st = kEigenConverged;
        inverse = 1.0 / f;
        if (st != kEigenRunning && ti == 0 && tj == 0) {
          status[b] = st;
          parity[b] = step & 1;
        }
      }
      decision[0] = st;
      decision[1] = inverse;
    }
    __syncthreads();
    if (decision[0] != kEigenRunning) return;  // uniform over the block
    scale = decision[1];
  } else if (ti == 0 && tj == 0 && threadIdx.x == 0) {
    status[b] = kEigenRunning;
    parity[b] = 0;
  }

  __shared__ double xi[kGramStep][kGramTile + 1];
  __shared__ double xj[kGramStep][kGramTile + 1];
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int64_t i0 = ti * kGramTile, j0 = tj * kGramTile;
  const double* Xb = X + b * x_batch;
  double acc[4][4];
#pragma unroll
  for (int q = 0; q < 4; ++q)
#pragma unroll
    for (int u = 0; u < 4; ++u) acc[q][u] = 0.0;
  for (int64_t t0 = 0; t0 < len; t0 += kGramStep) {
    // 64 x 16 values per operand, 4 per thread; consecutive threads walk the unit-stride dimension.
#pragma unroll
    for (int q = 0; q < (kGramTile * kGramStep) / kGramThreads; ++q) {
      const int e = threadIdx.x + q * kGramThreads;
      int r, t;
      if (cs == 1) {
        t = e % kGramStep;
        r = e / kGramStep;
      } else {
        r = e % kGramTile;
        t = e / kGramTile;
      }
      const int64_t tt = t0 + t;
      const bool t_in = tt < len;
      xi[t][r] = t_in && i0 + r < n ? Xb[(i0 + r) * rs + tt * cs] : 0.0;
      xj[t][r] = t_in && j0 + r < n ? Xb[(j0 + r) * rs + tt * cs] : 0.0;
    }
    __syncthreads();
#pragma unroll
    for (int t = 0; t < kGramStep; ++t) {
      double a[4], c[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        a[q] = xi[t][ty + 16 * q];
        c[q] = xj[t][tx + 16 * q];
      }
#pragma unroll
      for (int q = 0; q < 4; ++q)
#pragma unroll
        for (int u = 0; u < 4; ++u) acc[q][u] = fma(a[q], c[u], acc[q][u]);
    }
    __syncthreads();
  }
  double* ob = out + b * n * n;
  double squares = 0.0, diagonal = 0.0;
#pragma unroll
  for (int q = 0; q < 4; ++q)
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int64_t i = i0 + ty + 16 * q, j = j0 + tx + 16 * u;
      if (i < n && j < n) {
        const double v = acc[q][u] * scale;
        ob[i * n + j] = v;
        if (ti != tj) ob[j * n + i] = v;
        squares += v * v;
        if (i == j) diagonal += v;
      }
    }
  squares = block_sum(squares);
  diagonal = block_sum(diagonal);
  if (threadIdx.x == 0) {
    pf_out[(b * tiles + ti) * tiles + tj] = squares;
    ptr_out[(b * tiles + ti) * tiles + tj] = diagonal;
  }
}

// (value, index) pair reduction: larger value wins, the smaller index on ties (first maximum).
__device__ __forceinline__ void better_of(double& v, int64_t& i, double ov, int64_t oi) {
  if (ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

__device__ int64_t block_argmax(double v, int64_t i) {
  __shared__ double sv[32];
  __shared__ int64_t si[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int offset = 16; offset > 0; offset >>= 1)
    better_of(v, i, __shfl_down_sync(kFullMask, v, offset), __shfl_down_sync(kFullMask, i, offset));
  if (lane == 0) {
    sv[warp] = v;
    si[warp] = i;
  }
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? sv[lane] : -INFINITY;
    i = lane < warps ? si[lane] : INT64_MAX;
    for (int offset = 16; offset > 0; offset >>= 1)
      better_of(v, i, __shfl_down_sync(kFullMask, v, offset), __shfl_down_sync(kFullMask, i, offset));
    if (lane == 0) si[0] = i;
  }
  __syncthreads();
  const int64_t result = si[0];
  __syncthreads();
  return result;
}

// ---- targets and seeds --------------------------------------------------------------------------------

// As the CPU twin's rank_key: the number, -inf below every number, NaN below -inf.
__device__ __forceinline__ double rank_key(float z) {
  if (isnan(z)) return -DBL_MAX;
  if (isinf(z) && z < 0.f) return -1e300;
  return double(z);
}

// One block per image: target t is the block's first maximum among the logits after target t - 1 in (key
// descending, index ascending) order.
__global__ void rank_targets_kernel(int64_t* classes, const float* logits, int64_t B, int64_t C, int64_t T) {
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const float* z = logits + b * C;
    double previous_key = INFINITY;
    int64_t previous = -1;
    for (int64_t t = 0; t < T; ++t) {
      double best_key = -INFINITY;
      int64_t best = INT64_MAX;
      for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
        const double key = rank_key(z[j]);
        const bool after_previous = key < previous_key || (key == previous_key && j > previous);
        if (after_previous) better_of(best_key, best, key, j);
      }
      best = block_argmax(best_key, best);
      if (threadIdx.x == 0) classes[t * B + b] = best;
      previous_key = rank_key(z[best]);
      previous = best;
    }
  }
}

__global__ void fixed_targets_kernel(int64_t* classes, int64_t n, int64_t fixed_class) {
  for (int64_t i = global_index(); i < n; i += global_stride()) classes[i] = fixed_class;
}

// One block per seed row (slot s, image b).
__global__ void target_seeds_kernel(float* seeds, const int64_t* classes, const float* logits, int64_t B, int64_t C,
                                    int64_t first, int64_t count, int64_t S, bool softmax) {
  for (int64_t row = blockIdx.x; row < S * B; row += gridDim.x) {
    const int64_t s = row / B, b = row % B;
    float* seed = seeds + row * C;
    if (s >= count) {
      for (int64_t j = threadIdx.x; j < C; j += blockDim.x) seed[j] = 0.f;
      continue;
    }
    const int64_t c = classes[(first + s) * B + b];
    if (c < 0 || c >= C) {
      for (int64_t j = threadIdx.x; j < C; j += blockDim.x) seed[j] = nan_f();
      continue;
    }
    if (!softmax) {
      for (int64_t j = threadIdx.x; j < C; j += blockDim.x) seed[j] = j == c ? 1.f : 0.f;
      continue;
    }
    const float* z = logits + b * C;
    float max_z = -INFINITY;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) max_z = fmaxf(max_z, z[j]);
    max_z = block_max(max_z);
    double sum = 0;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) sum += exp(double(z[j]) - max_z);
    sum = block_sum(sum);
    const double p_c = exp(double(z[c]) - max_z) / sum;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x)
      seed[j] = float(p_c * ((j == c ? 1.0 : 0.0) - exp(double(z[j]) - max_z) / sum));
  }
}

// Top eigenvector of the final P of each image (one block per image): the row with the largest diagonal,
// normalized, then kEigenPolish normalized products with P. Result in v (B, n).
__global__ void __launch_bounds__(kEigenThreads)
    eigen_extract_kernel(double* v, double* y, const double* P0, const double* P1, const int* status,
                         const int* parity, int64_t B, int64_t n, int steps) {
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    double* vb = v + b * n;
    double* yb = y + b * n;
    const int st = status[b];
    if (st == kEigenZero) {  // uniform over the block
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) vb[i] = i == 0 ? 1.0 : 0.0;
      continue;
    }
    const int which = st == kEigenRunning ? (steps & 1) : parity[b];
    const double* P = (which ? P1 : P0) + b * n * n;
    double best = -INFINITY;
    int64_t arg = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) better_of(best, arg, P[i * n + i], i);
    arg = block_argmax(best, arg);
    const double* row = P + arg * n;  // = column arg (P is exactly symmetric)
    double part = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) part += row[i] * row[i];
    double inv = 1.0 / sqrt(block_sum(part));
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) vb[i] = row[i] * inv;
    __syncthreads();  // vb complete before the products read all of it
    for (int it = 0; it < kEigenPolish; ++it) {
      part = 0.0;
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const double* Pi = P + i * n;
        double s = 0.0;
        for (int64_t t = 0; t < n; ++t) s += Pi[t] * vb[t];
        yb[i] = s;
        part += s * s;
      }
      inv = 1.0 / sqrt(block_sum(part));  // its barriers also end every read of vb
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) vb[i] = yb[i] * inv;
      __syncthreads();
    }
  }
}

// cam = M v (channels_small) or sqrt(lambda) u, then the sign rule; one block per image.
__global__ void __launch_bounds__(kEigenThreads)
    eigen_project_kernel(float* cam, double* camd, const float* A, const double* R, const double* v, int64_t B,
                         int64_t K, int64_t Z, int64_t n, bool channels_small) {
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    const double* Rb = R + b * K * Z;
    const float* Ab = A + b * K * Z;
    const double* vb = v + b * n;
    double* cb = camd + b * Z;
    double sigma = 0.0;
    if (!channels_small) {
      // lambda = u^T M M^T u = ||M^T u||^2, the Rayleigh quotient of the (accurate) eigenvector.
      double part = 0.0;
      for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
        double d = 0.0;
        for (int64_t z = 0; z < Z; ++z) d += Rb[k * Z + z] * vb[z];
        part += d * d;
      }
      sigma = sqrt(fmax(block_sum(part), 0.0));
    }
    double part = 0.0;
    for (int64_t z = threadIdx.x; z < Z; z += blockDim.x) {
      double c = 0.0;
      if (channels_small) {
        for (int64_t k = 0; k < K; ++k) c += Rb[k * Z + z] * vb[k];
      } else {
        c = sigma * vb[z];
      }
      double chsum = 0.0;
      for (int64_t k = 0; k < K; ++k) chsum += Ab[k * Z + z];
      cb[z] = c;
      part += c * chsum;
    }
    // Sign rule of the CPU twin: flip if sum_z cam_z * sum_k A_kz < 0 (uncentred A).
    const double sign = block_sum(part) < 0.0 ? -1.0 : 1.0;
    for (int64_t z = threadIdx.x; z < Z; z += blockDim.x) cam[b * Z + z] = static_cast<float>(sign * cb[z]);
  }
}

}  // namespace

// ---- gradient-weighted methods ------------------------------------------------------------------------

size_t grad_cam_scratch_bytes(int64_t B, int64_t K, GradCamVariant variant) {
  if (!grad_cam_has_channel_weights(variant)) return 0;
  return static_cast<size_t>(std::max<int64_t>(B * K, 0)) * sizeof(float) + kAlign;
}

void grad_cam_channel_weights(float* weights, const float* A, const float* G, int64_t B, int64_t K, int64_t h,
                              int64_t w, GradCamVariant variant, cudaStream_t stream) {
  check_sizes("cuda::grad_cam_channel_weights", B, K, h, w);
  CAMRT_CHECK(grad_cam_has_channel_weights(variant),
              "cuda::grad_cam_channel_weights: variant " << static_cast<int>(variant) << " has no channel weights");
  launch_grad_cam_weights(weights, A, G, B * K, h * w, variant, stream);
}

void grad_cam_forward(float* cam, const float* A, const float* G, int64_t B, int64_t K, int64_t h, int64_t w,
                      GradCamVariant variant, void* scratch, size_t scratch_bytes, cudaStream_t stream) {
  check_sizes("cuda::grad_cam_forward", B, K, h, w);
  const int64_t Z = h * w;
  if (B == 0 || Z == 0) return;
  switch (variant) {
    case GradCamVariant::GradCam:
    case GradCamVariant::GradCamNeg:
    case GradCamVariant::GradCamPlusPlus:
    case GradCamVariant::XGradCam: {
      float* weights = aligned_scratch<float>(scratch, scratch_bytes, static_cast<size_t>(B * K) * sizeof(float),
                                              "cuda::grad_cam_forward");
      launch_grad_cam_weights(weights, A, G, B * K, Z, variant, stream);
      launch_channel_sum<SumMode::Weighted>(cam, A, nullptr, weights, nullptr, 0, B, K, Z, stream);
      return;
    }
    case GradCamVariant::HiResCam:
      launch_channel_sum<SumMode::HiRes>(cam, A, G, nullptr, nullptr, 0, B, K, Z, stream);
      return;
    case GradCamVariant::GradCamElementwise:
      launch_channel_sum<SumMode::Elementwise>(cam, A, G, nullptr, nullptr, 0, B, K, Z, stream);
      return;
    case GradCamVariant::LayerCam:
      launch_channel_sum<SumMode::Layer>(cam, A, G, nullptr, nullptr, 0, B, K, Z, stream);
      return;
  }
  CAMRT_FAIL("cuda::grad_cam_forward: unknown variant " << static_cast<int>(variant));
}

void grad_cam_weighted_activations(float* out, const float* A, const float* G, int64_t B, int64_t K, int64_t h,
                                   int64_t w, GradCamVariant variant, void* scratch, size_t scratch_bytes,
                                   cudaStream_t stream) {
  check_sizes("cuda::grad_cam_weighted_activations", B, K, h, w);
  const int64_t Z = h * w, n = B * K * Z;
  if (n == 0) return;
  if (grad_cam_has_channel_weights(variant)) {
    // The weight rounded to fp32 first, as the CPU twin. The weights kernel reads all of A before the scale
    // kernel writes, so out may equal A.
    float* weights = aligned_scratch<float>(scratch, scratch_bytes, static_cast<size_t>(B * K) * sizeof(float),
                                            "cuda::grad_cam_weighted_activations");
    launch_grad_cam_weights(weights, A, G, B * K, Z, variant, stream);
    scale_channels_kernel<<<grid_for(n), kThreads, 0, stream>>>(out, A, weights, n, Z);
    CAMRT_CUDA_CHECK_LAUNCH("scale_channels_kernel");
    return;
  }
  CAMRT_CHECK(variant == GradCamVariant::HiResCam || variant == GradCamVariant::GradCamElementwise ||
                  variant == GradCamVariant::LayerCam,
              "cuda::grad_cam_weighted_activations: unknown variant " << static_cast<int>(variant));
  spatial_terms_kernel<<<grid_for(n), kThreads, 0, stream>>>(out, A, G, n, variant);
  CAMRT_CUDA_CHECK_LAUNCH("spatial_terms_kernel");
}

void weighted_channel_sum(float* cam, const float* weights, const float* A, int64_t B, int64_t K, int64_t h,
                          int64_t w, cudaStream_t stream) {
  check_sizes("cuda::weighted_channel_sum", B, K, h, w);
  if (B == 0 || h * w == 0) return;
  launch_channel_sum<SumMode::Weighted>(cam, A, nullptr, weights, nullptr, 0, B, K, h * w, stream);
}

void scale_channels(float* out, const float* A, const float* weights, int64_t B, int64_t K, int64_t h, int64_t w,
                    cudaStream_t stream) {
  check_sizes("cuda::scale_channels", B, K, h, w);
  const int64_t n = B * K * h * w;
  if (n == 0) return;
  scale_channels_kernel<<<grid_for(n), kThreads, 0, stream>>>(out, A, weights, n, h * w);
  CAMRT_CUDA_CHECK_LAUNCH("scale_channels_kernel");
}

void elementwise_product(float* out, const float* a, const float* b, int64_t n, cudaStream_t stream) {
  CAMRT_CHECK(n >= 0, "cuda::elementwise_product: negative size " << n);
  if (n == 0) return;
  product_kernel<<<grid_for(n), kThreads, 0, stream>>>(out, a, b, n);
  CAMRT_CUDA_CHECK_LAUNCH("product_kernel");
}

void smooth_gradcampp_accumulate(float* D1, float* D2, float* D3, const float* G, int64_t n, cudaStream_t stream) {
  CAMRT_CHECK(n >= 0, "cuda::smooth_gradcampp_accumulate: negative size " << n);
  if (n == 0) return;
  smooth_accumulate_kernel<<<grid_for(n), kThreads, 0, stream>>>(D1, D2, D3, G, n);
  CAMRT_CUDA_CHECK_LAUNCH("smooth_accumulate_kernel");
}

void smooth_gradcampp_channel_weights(float* weights, const float* A, const float* D1, const float* D2,
                                      const float* D3, int64_t B, int64_t K, int64_t h, int64_t w,
                                      cudaStream_t stream) {
  check_sizes("cuda::smooth_gradcampp_channel_weights", B, K, h, w);
  const int64_t planes = B * K;
  if (planes == 0) return;
  smooth_weights_kernel<<<grid_size((planes + kWarpsPerBlock - 1) / kWarpsPerBlock), kThreads, 0, stream>>>(
      weights, A, D1, D2, D3, planes, h * w);
  CAMRT_CUDA_CHECK_LAUNCH("smooth_weights_kernel");
}

size_t smooth_gradcampp_scratch_bytes(int64_t B, int64_t K) {
  return static_cast<size_t>(std::max<int64_t>(B * K, 0)) * sizeof(float) + kAlign;
}

void smooth_gradcampp_forward(float* cam, const float* A, const float* D1, const float* D2, const float* D3,
                              int64_t B, int64_t K, int64_t h, int64_t w, void* scratch, size_t scratch_bytes,
                              cudaStream_t stream) {
  check_sizes("cuda::smooth_gradcampp_forward", B, K, h, w);
  if (B == 0 || h * w == 0) return;
  float* weights = aligned_scratch<float>(scratch, scratch_bytes, static_cast<size_t>(B * K) * sizeof(float),
                                          "cuda::smooth_gradcampp_forward");
  smooth_gradcampp_channel_weights(weights, A, D1, D2, D3, B, K, h, w, stream);
  launch_channel_sum<SumMode::Weighted>(cam, A, nullptr, weights, nullptr, 0, B, K, h * w, stream);
}

void normgrad_forward(float* cam, const float* A, const float* G, int64_t B, int64_t K, int64_t h, int64_t w,
                      cudaStream_t stream) {
  check_sizes("cuda::normgrad_forward", B, K, h, w);
  const int64_t Z = h * w;
  if (B == 0 || Z == 0) return;
  const int64_t tiles = (Z + kSumTile - 1) / kSumTile;
  normgrad_kernel<<<grid_size(B * tiles), dim3(kSumTile, kSumGroups), 0, stream>>>(cam, A, G, B, K, Z);
  CAMRT_CUDA_CHECK_LAUNCH("normgrad_kernel");
}

// ---- Eigen-CAM ----------------------------------------------------------------------------------------

size_t eigen_cam_scratch_bytes(int64_t B, int64_t K, int64_t h, int64_t w) {
  check_sizes("cuda::eigen_cam_scratch_bytes", B, K, h, w);
  return eigen_layout(B, K, h * w).bytes + kAlign;
}

void eigen_cam_forward(float* cam, const float* A, int64_t B, int64_t K, int64_t h, int64_t w, void* scratch,
                       size_t scratch_bytes, cudaStream_t stream) {
  check_sizes("cuda::eigen_cam_forward", B, K, h, w);
  const int64_t Z = h * w;
  if (B == 0 || Z == 0) return;
  CAMRT_CHECK(K >= 1, "cuda::eigen_cam_forward: no channels");
  const EigenLayout L = eigen_layout(B, K, Z);
  uint8_t* base = aligned_scratch<uint8_t>(scratch, scratch_bytes, L.bytes, "cuda::eigen_cam_forward");
  double* R = reinterpret_cast<double*>(base + L.R);
  double* P[2] = {reinterpret_cast<double*>(base + L.P0), reinterpret_cast<double*>(base + L.P1)};
  double* v = reinterpret_cast<double*>(base + L.v);
  double* y = reinterpret_cast<double*>(base + L.y);
  double* camd = reinterpret_cast<double*>(base + L.camd);
  const size_t generation = static_cast<size_t>(B * L.tiles * L.tiles);
  double* pf[2] = {reinterpret_cast<double*>(base + L.pf), reinterpret_cast<double*>(base + L.pf) + generation};
  double* ptr[2] = {reinterpret_cast<double*>(base + L.ptr), reinterpret_cast<double*>(base + L.ptr) + generation};
  int* status = reinterpret_cast<int*>(base + L.status);
  int* parity = reinterpret_cast<int*>(base + L.parity);
  const int64_t n = L.n;

  const int64_t planes = B * K;
  eigen_centre_kernel<<<grid_size((planes + kWarpsPerBlock - 1) / kWarpsPerBlock), kThreads, 0, stream>>>(R, A, planes,
                                                                                                        Z);
  CAMRT_CUDA_CHECK_LAUNCH("eigen_centre_kernel");

  // Rows of X: channels (R itself) when K <= Z, else positions (R transposed, read with strides).
  const int64_t rs = L.channels_small ? Z : 1, cs = L.channels_small ? 1 : Z;
  const unsigned tiles = static_cast<unsigned>(L.tiles);
  for (int64_t b0 = 0; b0 < B; b0 += kMaxGridZ) {
    const dim3 grid(tiles, tiles, static_cast<unsigned>(std::min(kMaxGridZ, B - b0)));
    eigen_syrk_kernel<<<grid, kGramThreads, 0, stream>>>(P[0], R, n, L.len, rs, cs, K * Z, L.tiles, pf[0], ptr[0],
                                                         nullptr, nullptr, status, parity, -1, b0);
    CAMRT_CUDA_CHECK_LAUNCH("eigen_syrk_kernel (Gram)");
  }
  for (int s = 0; s < kEigenSquares; ++s) {
    const int in = s & 1, out = in ^ 1;
    for (int64_t b0 = 0; b0 < B; b0 += kMaxGridZ) {
      const dim3 grid(tiles, tiles, static_cast<unsigned>(std::min(kMaxGridZ, B - b0)));
      eigen_syrk_kernel<<<grid, kGramThreads, 0, stream>>>(P[out], P[in], n, n, n, 1, n * n, L.tiles, pf[out],
                                                           ptr[out], pf[in], ptr[in], status, parity, s, b0);
      CAMRT_CUDA_CHECK_LAUNCH("eigen_syrk_kernel (square)");
    }
  }
  eigen_extract_kernel<<<grid_size(B), kEigenThreads, 0, stream>>>(v, y, P[0], P[1], status, parity, B, n,
                                                                   kEigenSquares);
  CAMRT_CUDA_CHECK_LAUNCH("eigen_extract_kernel");
  eigen_project_kernel<<<grid_size(B), kEigenThreads, 0, stream>>>(cam, camd, A, R, v, B, K, Z, n, L.channels_small);
  CAMRT_CUDA_CHECK_LAUNCH("eigen_project_kernel");
}

// ---- Score-CAM ----------------------------------------------------------------------------------------

void bilinear_resize(float* out, const float* in, int64_t planes, int64_t in_h, int64_t in_w, int64_t out_h,
                     int64_t out_w, bool align_corners, cudaStream_t stream) {
  CAMRT_CHECK(planes >= 0 && out_h >= 0 && out_w >= 0, "cuda::bilinear_resize: negative size");
  const int64_t n = planes * out_h * out_w;
  if (n == 0) return;
  CAMRT_CHECK(in_h > 0 && in_w > 0, "cuda::bilinear_resize: empty input plane (" << in_h << " x " << in_w
                                                                                 << ") resized to " << out_h << " x "
                                                                                 << out_w);
  bilinear_resize_kernel<<<grid_for(n), kThreads, 0, stream>>>(out, in, planes, in_h, in_w, out_h, out_w,
                                                               align_corners);
  CAMRT_CUDA_CHECK_LAUNCH("bilinear_resize_kernel");
}

void scorecam_masks(float* masks, const float* A, int64_t B, int64_t K, int64_t h, int64_t w, int64_t H, int64_t W,
                    cudaStream_t stream) {
  check_sizes("cuda::scorecam_masks", B, K, h, w);
  if (B * K == 0) return;
  CAMRT_CHECK(h > 0 && w > 0 && H > 0 && W > 0,
              "cuda::scorecam_masks: empty plane (" << h << " x " << w << " upsampled to " << H << " x " << W << ")");
  scorecam_masks_kernel<<<grid_size(B * K), kMapThreads, 0, stream>>>(masks, A, B * K, h, w, H, W);
  CAMRT_CUDA_CHECK_LAUNCH("scorecam_masks_kernel");
}

void apply_mask(float* out, const float* x, const float* masks, int64_t n, int64_t C, int64_t H, int64_t W,
                cudaStream_t stream) {
  CAMRT_CHECK(n >= 0 && C >= 0 && H >= 0 && W >= 0, "cuda::apply_mask: negative size");
  const int64_t total = n * C * H * W;
  if (total == 0) return;
  apply_mask_kernel<<<grid_for(total), kThreads, 0, stream>>>(out, x, masks, total, C, H * W);
  CAMRT_CUDA_CHECK_LAUNCH("apply_mask_kernel");
}

void softmax_weights(float* w, const float* scores, int64_t B, int64_t K, cudaStream_t stream) {
  CAMRT_CHECK(B >= 0 && K >= 0, "cuda::softmax_weights: negative size");
  if (B == 0 || K == 0) return;
  softmax_kernel<<<grid_size(B), kThreads, 0, stream>>>(w, scores, B, K);
  CAMRT_CUDA_CHECK_LAUNCH("softmax_kernel");
}

void scorecam_constant_channels(uint8_t* is_constant, const float* A, int64_t B, int64_t K, int64_t h, int64_t w,
                                cudaStream_t stream) {
  check_sizes("cuda::scorecam_constant_channels", B, K, h, w);
  const int64_t planes = B * K;
  if (planes == 0) return;
  constant_channels_kernel<<<grid_size((planes + kWarpsPerBlock - 1) / kWarpsPerBlock), kThreads, 0, stream>>>(
      is_constant, A, planes, h * w);
  CAMRT_CUDA_CHECK_LAUNCH("constant_channels_kernel");
}

void scorecam_paper_weights(float* w, const float* probs, const uint8_t* is_constant, int64_t B, int64_t K,
                            cudaStream_t stream) {
  CAMRT_CHECK(B >= 0 && K >= 0, "cuda::scorecam_paper_weights: negative size");
  const int64_t n = B * K;
  if (n == 0) return;
  paper_weights_kernel<<<grid_for(n), kThreads, 0, stream>>>(w, probs, is_constant, n);
  CAMRT_CUDA_CHECK_LAUNCH("paper_weights_kernel");
}

// ---- Ablation-CAM -------------------------------------------------------------------------------------

void ablation_values(float* values, const float* A, int64_t B, int64_t K, int64_t h, int64_t w, cudaStream_t stream) {
  check_sizes("cuda::ablation_values", B, K, h, w);
  if (B == 0) return;
  const int64_t n = K * h * w;
  CAMRT_CHECK(n > 0, "cuda::ablation_values: empty activation");
  ablation_values_kernel<<<grid_size(B), kMapThreads, 0, stream>>>(values, A, B, n);
  CAMRT_CUDA_CHECK_LAUNCH("ablation_values_kernel");
}

void ablation_batch(float* out, const float* A_image, const float* value, int64_t k_begin, int64_t n, int64_t K,
                    int64_t h, int64_t w, cudaStream_t stream) {
  check_sizes("cuda::ablation_batch", n, K, h, w);
  CAMRT_CHECK(k_begin >= 0 && k_begin + n <= K,
              "cuda::ablation_batch: channels [" << k_begin << ", " << k_begin + n << ") outside [0, " << K << ")");
  const int64_t total = n * K * h * w;
  if (total == 0) return;
  ablation_batch_kernel<<<grid_for(total), kThreads, 0, stream>>>(out, A_image, value, k_begin, total, K, h * w);
  CAMRT_CUDA_CHECK_LAUNCH("ablation_batch_kernel");
}

void ablation_weights(float* w, const float* y, const float* y_ablated, int64_t B, int64_t K, cudaStream_t stream) {
  CAMRT_CHECK(B >= 0 && K >= 0, "cuda::ablation_weights: negative size");
  const int64_t n = B * K;
  if (n == 0) return;
  ablation_weights_kernel<<<grid_for(n), kThreads, 0, stream>>>(w, y, y_ablated, n, K);
  CAMRT_CUDA_CHECK_LAUNCH("ablation_weights_kernel");
}

// ---- CAM ----------------------------------------------------------------------------------------------

void class_activation_map(float* cam, const float* fc_weight, const int64_t* classes, const float* A, int64_t B,
                          int64_t K, int64_t h, int64_t w, int64_t num_classes, cudaStream_t stream) {
  check_sizes("cuda::class_activation_map", B, K, h, w);
  if (B == 0 || h * w == 0) return;
  launch_channel_sum<SumMode::Fc>(cam, A, nullptr, fc_weight, classes, num_classes, B, K, h * w, stream);
}

// ---- post-processing ----------------------------------------------------------------------------------

void relu_inplace(float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  relu_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n);
  CAMRT_CUDA_CHECK_LAUNCH("relu_kernel");
}

void minmax_normalize(float* maps, int64_t count, int64_t hw, cudaStream_t stream) {
  if (hw <= 0 || count <= 0) return;
  minmax_normalize_kernel<<<grid_size(count), kMapThreads, 0, stream>>>(maps, count, hw);
  CAMRT_CUDA_CHECK_LAUNCH("minmax_normalize_kernel");
}

void postprocess_layer(float* out, const float* cam, int64_t B, int64_t h, int64_t w, int64_t H, int64_t W,
                       bool apply_relu, cudaStream_t stream) {
  CAMRT_CHECK(B >= 0 && h >= 0 && w >= 0 && H >= 0 && W >= 0, "cuda::postprocess_layer: negative size");
  if (B == 0 || H * W == 0) return;
  CAMRT_CHECK(h > 0 && w > 0, "cuda::postprocess_layer: empty map (" << h << " x " << w << ") resized to " << H
                                                                      << " x " << W);
  const int64_t tiles = (H * W + kPostTile - 1) / kPostTile;
  const dim3 grid(grid_size(tiles), static_cast<unsigned>(std::min<int64_t>(B, 65535)));
  postprocess_kernel<<<grid, kPostThreads, 0, stream>>>(out, cam, B, h, w, H, W, apply_relu);
  CAMRT_CUDA_CHECK_LAUNCH("postprocess_kernel");
}

void aggregate_layers(float* out, const float* per_layer, int64_t L, int64_t B, int64_t H, int64_t W,
                      cudaStream_t stream) {
  CAMRT_CHECK(L >= 1, "cuda::aggregate_layers: no layers");
  CAMRT_CHECK(B >= 0 && H >= 0 && W >= 0, "cuda::aggregate_layers: negative size");
  if (B == 0 || H * W == 0) return;
  aggregate_kernel<<<grid_size(B), kMapThreads, 0, stream>>>(out, per_layer, L, B, H * W);
  CAMRT_CUDA_CHECK_LAUNCH("aggregate_kernel");
}

void layercam_tanh_scale(float* maps, int64_t count, int64_t hw, cudaStream_t stream) {
  if (hw <= 0 || count <= 0) return;
  tanh_scale_kernel<<<grid_size(count), kMapThreads, 0, stream>>>(maps, count, hw);
  CAMRT_CUDA_CHECK_LAUNCH("tanh_scale_kernel");
}

void rank_targets(int64_t* classes, const float* logits, int64_t B, int64_t C, int64_t T, int64_t fixed_class,
                  cudaStream_t stream) {
  CAMRT_CHECK(B >= 0 && C > 0 && T >= 0 && T <= C, "cuda::rank_targets: bad sizes (B=" << B << ", C=" << C << ", T=" << T << ")");
  CAMRT_CHECK(fixed_class < C, "cuda::rank_targets: class " << fixed_class << " outside the " << C << " classes");
  if (B == 0 || T == 0) return;
  if (fixed_class >= 0) {
    fixed_targets_kernel<<<grid_for(T * B), kThreads, 0, stream>>>(classes, T * B, fixed_class);
    CAMRT_CUDA_CHECK_LAUNCH("fixed_targets_kernel");
    return;
  }
  rank_targets_kernel<<<grid_size(B), kThreads, 0, stream>>>(classes, logits, B, C, T);
  CAMRT_CUDA_CHECK_LAUNCH("rank_targets_kernel");
}

void target_seeds(float* seeds, const int64_t* classes, const float* logits, int64_t B, int64_t C, int64_t first,
                  int64_t count, int64_t S, bool softmax, cudaStream_t stream) {
  CAMRT_CHECK(B >= 0 && C > 0 && first >= 0 && count >= 0 && count <= S, "cuda::target_seeds: bad sizes");
  if (S * B == 0) return;
  target_seeds_kernel<<<grid_size(S * B), kThreads, 0, stream>>>(seeds, classes, logits, B, C, first, count, S, softmax);
  CAMRT_CUDA_CHECK_LAUNCH("target_seeds_kernel");
}

void smooth_noise_sigma(float* sigma, const float* x, int64_t B, int64_t plane, cudaStream_t stream) {
  CAMRT_CHECK(B >= 0 && plane > 0, "cuda::smooth_noise_sigma: bad sizes");
  if (B == 0) return;
  smooth_sigma_kernel<<<grid_size(B), kMapThreads, 0, stream>>>(sigma, x, B, plane);
  CAMRT_CUDA_CHECK_LAUNCH("smooth_sigma_kernel");
}

void smooth_noisy_copies(float* out, const float* x, const float* z, const float* sigma, int64_t first, int64_t count,
                         int64_t S, int64_t B, int64_t N, int64_t plane, bool scaled, cudaStream_t stream) {
  CAMRT_CHECK(count >= 0 && count <= S && N >= 1 && B % N == 0 && plane >= 0, "cuda::smooth_noisy_copies: bad sizes");
  const int64_t total = S * B * plane;
  if (total == 0) return;
  smooth_copies_kernel<<<grid_for(total), kThreads, 0, stream>>>(out, x, z, sigma, first, count, total, B, N, plane, scaled);
  CAMRT_CUDA_CHECK_LAUNCH("smooth_copies_kernel");
}

void target_scores(float* scores, const float* logits, const int64_t* classes, int64_t class_stride, int64_t rows,
                   int64_t C, bool softmax, cudaStream_t stream) {
  CAMRT_CHECK(rows >= 0 && C > 0 && class_stride >= 0, "cuda::target_scores: bad sizes");
  if (rows == 0) return;
  target_scores_kernel<<<grid_size(rows), kThreads, 0, stream>>>(scores, logits, classes, class_stride, rows, C, softmax);
  CAMRT_CUDA_CHECK_LAUNCH("target_scores_kernel");
}

void guided_gradcam(float* out, const float* guided, const float* cam, int64_t B, int64_t C, int64_t H, int64_t W,
                    cudaStream_t stream) {
  CAMRT_CHECK(B >= 0 && C >= 0 && H >= 0 && W >= 0, "cuda::guided_gradcam: negative size");
  const int64_t n = B * C * H * W;
  if (n == 0) return;
  guided_gradcam_kernel<<<grid_for(n), kThreads, 0, stream>>>(out, guided, cam, n, C * H * W, H * W);
  CAMRT_CUDA_CHECK_LAUNCH("guided_gradcam_kernel");
}

}  // namespace camrt::cuda
