// Convolutions on cuDNN (legacy convolution API, cuDNN 9): algorithm choice by heuristics once per key, forward
// (+ bias + fused activation), backward-data accumulating into dx, and the small kernels around them (zero-padding
// copy for asymmetric pads, crop-and-add back, bias/activation epilogue, activation-gradient mask).
// Invariant: every launcher only enqueues work on runtime.stream(); nothing here synchronizes or allocates device memory.
#include <algorithm>
#include <climits>
#include <cstdio>
#include <string>
#include <vector>

#include <cuda_fp16.h>

#include "kernels/cuda/check.h"
#include "kernels/cuda/conv.h"

namespace camrt::cuda {

namespace {

constexpr size_t kAlign = 256;  // cudaMalloc's alignment: keeps cuDNN's workspace as aligned as a fresh allocation
size_t align_up(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

int to_int(int64_t v, const char* what) {
  CAMRT_CHECK(v >= 0 && v <= INT_MAX, "CUDA conv: " << what << " = " << v << " does not fit cuDNN's int sizes");
  return static_cast<int>(v);
}

// The convolution as cuDNN sees it. cuDNN takes one pad per axis applied to both sides; ONNX pads may differ
// between begin and end (SAME_UPPER with an odd total, TF exports). Then the input is copied into the workspace
// with the asymmetric excess as explicit zeros and cuDNN applies the common (smaller) pad: the output is the same
// and no output rows or columns need cropping, whatever the stride.
struct Geometry {
  int n = 0, c = 0, h = 0, w = 0;  // cuDNN's input: (n, c, h, w), h/w include the explicit excess pad
  int k = 0, kh = 0, kw = 0;       // weight (k, c / groups, kh, kw)
  int oh = 0, ow = 0;
  int pad_h = 0, pad_w = 0, stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1, groups = 1;
  int64_t in_h = 0, in_w = 0;           // the caller's input plane
  int64_t excess_top = 0, excess_left = 0;  // where the caller's plane starts inside the padded one
  bool prepad = false;
  // Workspace bytes of the padded input (forward) / padded input gradient (backward): 0 without excess pads.
  size_t padded_bytes() const { return prepad ? align_up(size_t(n) * size_t(c) * size_t(h) * size_t(w) * sizeof(float)) : 0; }
};

Geometry geometry_of(const Conv2dShape& s) {
  const std::string error = conv2d_shape_error(s);
  CAMRT_CHECK(error.empty(), "CUDA conv: " << error);
  Geometry g;
  const int64_t common_h = std::min(s.pad_top, s.pad_bottom), common_w = std::min(s.pad_left, s.pad_right);
  const int64_t h = s.in_h + s.pad_top + s.pad_bottom - 2 * common_h;
  const int64_t w = s.in_w + s.pad_left + s.pad_right - 2 * common_w;
  g.n = to_int(s.batch, "batch");
  g.c = to_int(s.in_channels, "in_channels");
  g.h = to_int(h, "padded in_h");
  g.w = to_int(w, "padded in_w");
  g.k = to_int(s.out_channels, "out_channels");
  g.kh = to_int(s.kernel_h, "kernel_h");
  g.kw = to_int(s.kernel_w, "kernel_w");
  g.oh = to_int(s.out_h(), "out_h");
  g.ow = to_int(s.out_w(), "out_w");
  g.pad_h = to_int(common_h, "pad_h");
  g.pad_w = to_int(common_w, "pad_w");
  g.stride_h = to_int(s.stride_h, "stride_h");
  g.stride_w = to_int(s.stride_w, "stride_w");
  g.dil_h = to_int(s.dilation_h, "dilation_h");
  g.dil_w = to_int(s.dilation_w, "dilation_w");
  g.groups = to_int(s.groups, "groups");
  g.in_h = s.in_h;
  g.in_w = s.in_w;
  g.excess_top = s.pad_top - common_h;
  g.excess_left = s.pad_left - common_w;
  g.prepad = h != s.in_h || w != s.in_w;
  // cuDNN's 4-d descriptors compute int strides: every tensor must stay below 2^31 elements.
  to_int(int64_t(g.n) * g.c * g.h * g.w, "input elements");
  to_int(int64_t(g.n) * g.k * g.oh * g.ow, "output elements");
  return g;
}

// The math type asked of cuDNN's heuristics: FP32 must not use TF32 tensor cores (FMA only), TF32 may, FP16 may
// also convert the fp32 data to fp16 internally.
cudnnMathType_t requested_math(Precision precision) {
  switch (precision) {
    case Precision::FP32: return CUDNN_FMA_MATH;
    case Precision::TF32: return CUDNN_TENSOR_OP_MATH;
    default: return CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
  }
}

// The cached choice: ConvAlgo::algo packs the algorithm enum (low 8 bits) and the math type to run it with
// (the next bits), so runtime.h stays free of cuDNN types.
struct Choice {
  int algo = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
  size_t workspace_bytes = 0;
};
ConvAlgo pack(const Choice& c) { return ConvAlgo{c.algo | (int(c.math) << 8), c.workspace_bytes}; }
Choice unpack(const ConvAlgo& a) { return Choice{a.algo & 0xff, static_cast<cudnnMathType_t>(a.algo >> 8), a.workspace_bytes}; }

// How the operands are stored: float32 NCHW (OIHW weights), or channels-last NHWC (OHWI weights) in half or
// float32 for channels-last plans.
enum class Storage : uint8_t { kFloatNchw, kHalfNhwc, kFloatNhwc };

// Descriptors for one call, created and destroyed around it: host-only calls (a small malloc each, about a
// microsecond in all), cheaper than a kernel launch, and they keep launchers free of shared mutable state.
struct Descriptors {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnActivationDescriptor_t act = nullptr;

  Descriptors(const Geometry& g, cudnnMathType_t math, Storage storage = Storage::kFloatNchw) {
    const cudnnTensorFormat_t format = storage == Storage::kFloatNchw ? CUDNN_TENSOR_NCHW : CUDNN_TENSOR_NHWC;
    const cudnnDataType_t type = storage == Storage::kHalfNhwc ? CUDNN_DATA_HALF : CUDNN_DATA_FLOAT;
    try {
      CAMRT_CUDNN_CHECK(cudnnCreateTensorDescriptor(&x));
      CAMRT_CUDNN_CHECK(cudnnCreateTensorDescriptor(&y));
      CAMRT_CUDNN_CHECK(cudnnCreateFilterDescriptor(&w));
      CAMRT_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv));
      CAMRT_CUDNN_CHECK(cudnnSetTensor4dDescriptor(x, format, type, g.n, g.c, g.h, g.w));
      CAMRT_CUDNN_CHECK(cudnnSetTensor4dDescriptor(y, format, type, g.n, g.k, g.oh, g.ow));
      CAMRT_CUDNN_CHECK(cudnnSetFilter4dDescriptor(w, type, format, g.k, g.c / g.groups, g.kh, g.kw));
      // Cross-correlation (what ONNX and PyTorch call convolution), fp32 accumulation (half data included:
      // cuDNN's "pseudo half" configuration).
      CAMRT_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv, g.pad_h, g.pad_w, g.stride_h, g.stride_w, g.dil_h,
                                                        g.dil_w, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
      CAMRT_CUDNN_CHECK(cudnnSetConvolutionGroupCount(conv, g.groups));
      CAMRT_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, math));
      // cuDNN's output size must be ours (it is, by construction of the padded input; checked so a mistake in
      // Geometry shows up as an error, not as a silent out-of-bounds write).
      int on = 0, oc = 0, oh = 0, ow = 0;
      CAMRT_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(conv, x, w, &on, &oc, &oh, &ow));
      CAMRT_CHECK(on == g.n && oc == g.k && oh == g.oh && ow == g.ow,
                  "CUDA conv: cuDNN output (" << on << ", " << oc << ", " << oh << ", " << ow << ") differs from ("
                                             << g.n << ", " << g.k << ", " << g.oh << ", " << g.ow << ")");
    } catch (...) {
      destroy();
      throw;
    }
  }
  ~Descriptors() { destroy(); }
  Descriptors(const Descriptors&) = delete;
  Descriptors& operator=(const Descriptors&) = delete;

  // The bias (1, k, 1, 1) and relu descriptors of cudnnConvolutionBiasActivationForward.
  void add_bias_relu(const Geometry& g, cudnnDataType_t bias_type) {
    CAMRT_CUDNN_CHECK(cudnnCreateTensorDescriptor(&bias));
    CAMRT_CUDNN_CHECK(cudnnSetTensor4dDescriptor(bias, CUDNN_TENSOR_NCHW, bias_type, 1, g.k, 1, 1));
    CAMRT_CUDNN_CHECK(cudnnCreateActivationDescriptor(&act));
    CAMRT_CUDNN_CHECK(cudnnSetActivationDescriptor(act, CUDNN_ACTIVATION_RELU, CUDNN_NOT_PROPAGATE_NAN, 0.0));
  }

 private:
  void destroy() {
    if (act) cudnnDestroyActivationDescriptor(act);
    if (conv) cudnnDestroyConvolutionDescriptor(conv);
    if (w) cudnnDestroyFilterDescriptor(w);
    if (bias) cudnnDestroyTensorDescriptor(bias);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (x) cudnnDestroyTensorDescriptor(x);
    act = nullptr;
    conv = nullptr;
    w = nullptr;
    bias = x = y = nullptr;
  }
};

// The cache key of one convolution: its shape and attributes, direction, the runtime's precision and algorithm
// slack (a choice made under other settings is another entry), and the storage (the half and float NHWC forms
// are timed and sized apart, whatever the precision).
std::string algo_key(const Geometry& g, ConvDirection direction, const CudaRuntime& runtime,
                     Storage storage = Storage::kFloatNchw) {
  static const char* const kStorageNames[] = {"", " nhwc-f16", " nhwc-f32"};
  char key[288];
  std::snprintf(key, sizeof(key),
                "conv2d %s %s%s slack%g x(%d,%d,%d,%d) w(%d,%d,%d,%d) pad(%d,%d) stride(%d,%d) dil(%d,%d) g%d",
                direction == ConvDirection::kForward ? "fwd" : "bwd_data", precision_name(runtime.precision()),
                kStorageNames[static_cast<int>(storage)], double(runtime.algo_slack()), g.n, g.c, g.h, g.w, g.k,
                g.c / g.groups, g.kh, g.kw, g.pad_h, g.pad_w, g.stride_h, g.stride_w, g.dil_h, g.dil_w, g.groups);
  return key;
}

size_t workspace_cap(const Geometry& g) {
  const size_t in = size_t(g.n) * size_t(g.c) * size_t(g.h) * size_t(g.w);
  const size_t out = size_t(g.n) * size_t(g.k) * size_t(g.oh) * size_t(g.ow);
  return std::max(kConvWorkspaceMinCapBytes, 4 * (in + out) * sizeof(float));
}

// Takes, from cuDNN's ranking (timed by Find, else heuristic), a deterministic supported algorithm whose workspace
// (asked again for the exact math type it will run with) fits the cap: with timings, the one with the smallest
// workspace among those within `slack` (CudaRuntime::algo_slack, 10% by default) of the fastest (a few percent of
// speed is not worth many megabytes of planned memory); without, the first. FP32 always runs with FMA math, whatever math type a ranking entry reports, so no
// TF32 tensor-core kernel can be picked.
template <typename Perf, typename WorkspaceQuery>
bool pick(const std::vector<Perf>& perfs, int returned, Precision precision, cudnnConvolutionDescriptor_t conv,
          size_t cap, float slack, const WorkspaceQuery& workspace_of, Choice* choice) {
  struct Candidate {
    Choice choice;
    float ms;
  };
  std::vector<Candidate> candidates;
  for (int i = 0; i < returned; ++i) {
    const Perf& p = perfs[size_t(i)];
    if (p.status != CUDNN_STATUS_SUCCESS) continue;
    // Explanations must be reproducible (two runs bit-identical): skip algorithms that accumulate with atomics.
    if (p.determinism != CUDNN_DETERMINISTIC) continue;
    const cudnnMathType_t math = precision == Precision::FP32 ? CUDNN_FMA_MATH : p.mathType;
    if (cudnnSetConvolutionMathType(conv, math) != CUDNN_STATUS_SUCCESS) continue;
    size_t bytes = 0;
    if (workspace_of(p.algo, &bytes) != CUDNN_STATUS_SUCCESS || bytes > cap) continue;
    candidates.push_back({Choice{int(p.algo), math, bytes}, p.time});
  }
  if (candidates.empty()) return false;
  float fastest = candidates[0].ms;
  for (const Candidate& c : candidates) fastest = std::min(fastest, c.ms);
  *choice = candidates[0].choice;
  if (!(fastest > 0)) return true;  // heuristic ranking: no timings, keep its order
  float chosen_ms = candidates[0].ms;
  for (const Candidate& c : candidates) {
    if (c.ms < 0 || c.ms > (1.f + slack) * fastest) continue;
    const bool smaller = c.choice.workspace_bytes < choice->workspace_bytes;
    const bool same_but_faster = c.choice.workspace_bytes == choice->workspace_bytes && c.ms < chosen_ms;
    if (chosen_ms > (1.f + slack) * fastest || smaller || same_but_faster) {
      *choice = c.choice;
      chosen_ms = c.ms;
    }
  }
  return true;
}

// The algorithm for (geometry, direction, precision): from the runtime's cache, else chosen now and stored. The
// choice is timed (cuDNN's Find runs every algorithm once on scratch memory it allocates and frees itself), as
// PyTorch's cudnn.benchmark does: the heuristic ranking alone picked kernels up to several times slower on
// Hopper. This happens at plan time, once per shape, never in the steady state. If Find fails (no memory for its
// scratch), the heuristic ranking (_v7: no kernels, no allocations) decides.
Choice choose(CudaRuntime& runtime, const Geometry& g, ConvDirection direction, const std::string& key,
              Storage storage = Storage::kFloatNchw) {
  ConvAlgo cached;
  if (runtime.find_conv_algo(key, &cached)) return unpack(cached);
  // Half storage computes on fp16 tensor cores whatever the runtime's precision (that is its point).
  const Precision precision = storage == Storage::kHalfNhwc ? Precision::FP16 : runtime.precision();
  Descriptors d(g, requested_math(precision), storage);
  cudnnHandle_t handle = runtime.cudnn();
  Choice choice;
  bool found = false;
  if (direction == ConvDirection::kForward) {
    int max_count = 0, returned = 0;
    CAMRT_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(handle, &max_count));
    std::vector<cudnnConvolutionFwdAlgoPerf_t> perfs(size_t(std::max(max_count, 1)));
    if (cudnnFindConvolutionForwardAlgorithm(handle, d.x, d.w, d.conv, d.y, int(perfs.size()), &returned,
                                             perfs.data()) != CUDNN_STATUS_SUCCESS)
      CAMRT_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(handle, d.x, d.w, d.conv, d.y, int(perfs.size()),
                                                               &returned, perfs.data()));
    found = pick(perfs, returned, precision, d.conv, workspace_cap(g), runtime.algo_slack(), [&](cudnnConvolutionFwdAlgo_t algo, size_t* bytes) {
      return cudnnGetConvolutionForwardWorkspaceSize(handle, d.x, d.w, d.conv, d.y, algo, bytes);
    }, &choice);
  } else {
    int max_count = 0, returned = 0;
    CAMRT_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(handle, &max_count));
    std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perfs(size_t(std::max(max_count, 1)));
    if (cudnnFindConvolutionBackwardDataAlgorithm(handle, d.w, d.y, d.conv, d.x, int(perfs.size()), &returned,
                                                  perfs.data()) != CUDNN_STATUS_SUCCESS)
      CAMRT_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(handle, d.w, d.y, d.conv, d.x,
                                                                    int(perfs.size()), &returned, perfs.data()));
    found = pick(perfs, returned, precision, d.conv, workspace_cap(g), runtime.algo_slack(), [&](cudnnConvolutionBwdDataAlgo_t algo, size_t* bytes) {
      return cudnnGetConvolutionBackwardDataWorkspaceSize(handle, d.w, d.y, d.conv, d.x, algo, bytes);
    }, &choice);
  }
  CAMRT_CHECK(found, "CUDA conv: cuDNN offers no algorithm for " << key << " within a "
                                                                  << (workspace_cap(g) >> 20) << " MiB workspace");
  runtime.store_conv_algo(key, pack(choice));
  return choice;
}

void check_workspace(const std::string& key, const Geometry& g, const Choice& c, const void* workspace,
                     size_t workspace_bytes) {
  const size_t need = g.padded_bytes() + c.workspace_bytes;
  CAMRT_CHECK(workspace_bytes >= need && (need == 0 || workspace),
              "CUDA conv: " << key << " needs " << need << " workspace bytes, got " << workspace_bytes
                            << " (size it with conv2d_workspace_bytes at the same precision)");
}

// ---- kernels: grid-stride loops over int64 indices ----

// xp (planes, hp, wp) = x (planes, h, w) placed at (top, left), zeros around it.
__global__ void pad_planes_kernel(float* __restrict__ xp, const float* __restrict__ x, int64_t planes, int64_t h,
                                  int64_t w, int64_t hp, int64_t wp, int64_t top, int64_t left) {
  const int64_t total = planes * hp * wp;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = i % wp - left;
    const int64_t row = (i / wp) % hp - top;
    const int64_t plane = i / (wp * hp);
    xp[i] = row >= 0 && row < h && col >= 0 && col < w ? x[(plane * h + row) * w + col] : 0.f;
  }
}

// dx (planes, h, w) += the (h, w) window of dxp (planes, hp, wp) at (top, left).
__global__ void crop_add_planes_kernel(float* __restrict__ dx, const float* __restrict__ dxp, int64_t planes,
                                       int64_t h, int64_t w, int64_t hp, int64_t wp, int64_t top, int64_t left) {
  const int64_t total = planes * h * w;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = i % w;
    const int64_t row = (i / w) % h;
    const int64_t plane = i / (w * h);
    dx[i] += dxp[(plane * hp + row + top) * wp + col + left];
  }
}

// y (n / (channels * spatial), channels, spatial) = act((y + bias[channel]) + residual); the same float
// operations as the CPU epilogue and residual pass (std::max / std::min comparisons, so NaN handling matches too).
__global__ void bias_activation_kernel(float* __restrict__ y, const float* __restrict__ bias,
                                       const float* __restrict__ residual, int64_t n, int64_t spatial,
                                       int64_t channels, int kind, float lo, float hi) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float v = y[i];
    if (bias) v += bias[(i / spatial) % channels];
    if (residual) v += residual[i];
    if (kind == FusedActivation::kRelu) {
      v = v > 0.f ? v : 0.f;
    } else if (kind == FusedActivation::kClip) {
      v = v < lo ? lo : v;
      v = hi < v ? hi : v;
    }
    y[i] = v;
  }
}

// y (positions, channels) NHWC = act((y + bias[c]) + residual): the CPU twin's float operations and comparisons
// (conv2d_epilogue_nhwc in kernels/cpu/conv.cpp), half elements widened and the result rounded once to nearest even.
__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(uint16_t* p, float v) { *p = __half_as_ushort(__float2half_rn(v)); }

template <typename T>
__global__ void epilogue_nhwc_kernel(T* __restrict__ y, const float* __restrict__ bias, const T* __restrict__ residual,
                                     int64_t n, int64_t channels, int kind, float lo, float hi) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float v = widen(y[i]);
    if (bias) v = __fadd_rn(v, bias[i % channels]);
    if (residual) v = __fadd_rn(v, widen(residual[i]));
    if (kind == FusedActivation::kRelu) {
      v = v > 0.f ? v : 0.f;
    } else if (kind == FusedActivation::kClip) {
      v = v < lo ? lo : v;
      v = hi < v ? hi : v;
    }
    store(y + i, v);
  }
}

__global__ void accumulate_kernel(float* __restrict__ dz, const float* __restrict__ g, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dz[i] += g[i];
}

__global__ void activation_mask_kernel(float* masked, const float* dy, const float* __restrict__ y, int64_t n,
                                       int kind, float lo, float hi, bool guided) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = dy[i], v = y[i];
    bool pass = true;
    if (kind == FusedActivation::kRelu) pass = v > 0.f && (!guided || g > 0.f);
    else if (kind == FusedActivation::kClip) pass = v > lo && v < hi;
    masked[i] = pass ? g : 0.f;
  }
}

}  // namespace

size_t conv2d_workspace_bytes(CudaRuntime& runtime, const Conv2dShape& s, ConvDirection direction) {
  const Geometry g = geometry_of(s);
  const Choice c = choose(runtime, g, direction, algo_key(g, direction, runtime));
  return g.padded_bytes() + c.workspace_bytes;
}

namespace {
// Half data: cuDNN's workspace, then the bias in half for its fused call (it takes the bias in the data's type).
size_t nhwc_workspace_bytes(const Choice& c, const Geometry& g, Storage storage) {
  if (storage != Storage::kHalfNhwc) return c.workspace_bytes;
  return align_up(c.workspace_bytes) + align_up(size_t(g.k) * sizeof(uint16_t));
}
}  // namespace

size_t conv2d_forward_nhwc_workspace_bytes(CudaRuntime& runtime, const Conv2dShape& s, bool half) {
  CAMRT_CHECK(conv2d_channels_last_supported(s), "cuda::conv2d_forward_nhwc: needs a valid conv with symmetric pads");
  const Geometry g = geometry_of(s);
  const Storage storage = half ? Storage::kHalfNhwc : Storage::kFloatNhwc;
  const ConvDirection forward = ConvDirection::kForward;
  return nhwc_workspace_bytes(choose(runtime, g, forward, algo_key(g, forward, runtime, storage), storage), g, storage);
}

namespace {
// Conv + bias (+ residual z, alpha2 = 1) + relu in one cuDNN call, where cuDNN supports the combination (relu
// allows any algorithm; identity would force IMPLICIT_PRECOMP_GEMM, so bias-only convs take the epilogue kernel).
// Without a residual z is y with alpha2 = 0, as frameworks do; the bias is in the data's type (float32, or the
// half copy forward_nhwc makes). Returns false where the caller must run the conv and its epilogue: a combination
// cuDNN refuses (NOT_SUPPORTED or BAD_PARAM, checked before any work is queued) is remembered per key
// (fusion_refused) so the refusal happens once, on a plan's first (eager) run. The unfused path's descriptors
// surface any genuine mistake.
std::string unfused_key(const std::string& key, bool residual) { return key + (residual ? " residual" : "") + " unfused"; }
bool fusion_refused(CudaRuntime& runtime, const std::string& key, bool residual) {
  ConvAlgo unused;
  return runtime.find_conv_algo(unfused_key(key, residual), &unused);
}
bool fused_bias_relu(CudaRuntime& runtime, const std::string& key, const Geometry& g, Descriptors& d,
                     const Choice& c, const void* x, const void* weight, const void* bias, cudnnDataType_t bias_type,
                     const void* residual, void* out, void* cudnn_workspace, const FusedActivation& act) {
  if (act.kind != FusedActivation::kRelu || !bias || fusion_refused(runtime, key, residual != nullptr)) return false;
  d.add_bias_relu(g, bias_type);
  const float one = 1.f, zero = 0.f;
  const cudnnStatus_t status = cudnnConvolutionBiasActivationForward(
      runtime.cudnn(), &one, d.x, x, d.w, weight, d.conv, static_cast<cudnnConvolutionFwdAlgo_t>(c.algo),
      cudnn_workspace, c.workspace_bytes, residual ? &one : &zero, d.y, residual ? residual : out, d.bias, bias,
      d.act, d.y, out);
  if (status == CUDNN_STATUS_SUCCESS) return true;
  const int category = CUDNN_STATUS_CATEGORY(int(status));
  CAMRT_CHECK(category == CUDNN_STATUS_NOT_SUPPORTED || category == CUDNN_STATUS_BAD_PARAM,
              "cuDNN: cudnnConvolutionBiasActivationForward failed for " << key << ": " << cudnnGetErrorString(status));
  runtime.store_conv_algo(unfused_key(key, residual != nullptr), ConvAlgo{});
  return false;
}

// The float32 bias in half bits, for cuDNN's fused call on half data.
__global__ void bias_to_half_kernel(uint16_t* __restrict__ out, const float* __restrict__ bias, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __half_as_ushort(__float2half_rn(bias[i]));
}

// cuDNN's convolution into out (channels-last, symmetric pads: no padding copy): fused with bias + relu where
// cuDNN can, else followed by the epilogue kernel.
template <typename T>
void forward_nhwc(T* out, const T* in, const T* weight, const float* bias, const Conv2dShape& s,
                  const FusedActivation& act, void* workspace, size_t workspace_bytes, CudaRuntime& runtime,
                  const T* residual, Storage storage) {
  CAMRT_CHECK(conv2d_channels_last_supported(s), "cuda::conv2d_forward_nhwc: needs a valid conv with symmetric pads");
  CAMRT_CHECK(!residual || residual != out, "cuda::conv2d_forward_nhwc: the residual must not alias the output");
  const Geometry g = geometry_of(s);
  const std::string key = algo_key(g, ConvDirection::kForward, runtime, storage);
  const Choice c = choose(runtime, g, ConvDirection::kForward, key, storage);
  const size_t need = nhwc_workspace_bytes(c, g, storage);
  CAMRT_CHECK(workspace_bytes >= need && (need == 0 || workspace),
              "CUDA conv: " << key << " needs " << need << " workspace bytes, got " << workspace_bytes
                            << " (size it with conv2d_forward_nhwc_workspace_bytes)");
  cudnnHandle_t handle = runtime.cudnn();
  CAMRT_CUDNN_CHECK(cudnnSetStream(handle, runtime.stream()));
  Descriptors d(g, c.math, storage);
  void* cudnn_workspace = c.workspace_bytes ? workspace : nullptr;
  const void* fused_bias = bias;
  cudnnDataType_t bias_type = CUDNN_DATA_FLOAT;
  if (storage == Storage::kHalfNhwc && bias && act.kind == FusedActivation::kRelu &&
      !fusion_refused(runtime, key, residual != nullptr)) {
    uint16_t* half_bias = reinterpret_cast<uint16_t*>(static_cast<unsigned char*>(workspace) + align_up(c.workspace_bytes));
    bias_to_half_kernel<<<grid_for(g.k), 256, 0, runtime.stream()>>>(half_bias, bias, g.k);
    CAMRT_CUDA_CHECK_LAUNCH("bias_to_half_kernel");
    fused_bias = half_bias;
    bias_type = CUDNN_DATA_HALF;
  }
  if (fused_bias_relu(runtime, key, g, d, c, in, weight, fused_bias, bias_type, residual, out, cudnn_workspace, act))
    return;
  const float one = 1.f, zero = 0.f;  // float scaling factors: the compute type is float
  CAMRT_CUDNN_CHECK(cudnnConvolutionForward(handle, &one, d.x, in, d.w, weight, d.conv,
                                            static_cast<cudnnConvolutionFwdAlgo_t>(c.algo), cudnn_workspace,
                                            c.workspace_bytes, &zero, d.y, out));
  if (bias || residual || act.kind != FusedActivation::kNone)
    conv2d_epilogue_nhwc(out, bias, residual, int64_t(g.n) * g.oh * g.ow, g.k, act, runtime.stream());
}

template <typename T>
void launch_epilogue_nhwc(T* y, const float* bias, const T* residual, int64_t positions, int64_t channels,
                          const FusedActivation& act, cudaStream_t stream) {
  const int64_t n = positions * channels;
  if (n <= 0) return;
  epilogue_nhwc_kernel<<<grid_for(n), 256, 0, stream>>>(y, bias, residual, n, channels, int(act.kind), act.min, act.max);
  CAMRT_CUDA_CHECK_LAUNCH("epilogue_nhwc_kernel");
}
}  // namespace

void conv2d_forward_nhwc(uint16_t* out, const uint16_t* in, const uint16_t* weight, const float* bias,
                         const Conv2dShape& s, const FusedActivation& act, void* workspace, size_t workspace_bytes,
                         CudaRuntime& runtime, const uint16_t* residual) {
  forward_nhwc(out, in, weight, bias, s, act, workspace, workspace_bytes, runtime, residual, Storage::kHalfNhwc);
}

void conv2d_forward_nhwc(float* out, const float* in, const float* weight, const float* bias, const Conv2dShape& s,
                         const FusedActivation& act, void* workspace, size_t workspace_bytes, CudaRuntime& runtime,
                         const float* residual) {
  forward_nhwc(out, in, weight, bias, s, act, workspace, workspace_bytes, runtime, residual, Storage::kFloatNhwc);
}

bool conv2d_bias_relu_unfused(CudaRuntime& runtime, const Conv2dShape& s, bool channels_last, bool half, bool residual) {
  const Storage storage = !channels_last ? Storage::kFloatNchw : half ? Storage::kHalfNhwc : Storage::kFloatNhwc;
  return fusion_refused(runtime, algo_key(geometry_of(s), ConvDirection::kForward, runtime, storage), residual);
}

void conv2d_epilogue_nhwc(uint16_t* y, const float* bias, const uint16_t* residual, int64_t positions,
                          int64_t channels, const FusedActivation& act, cudaStream_t stream) {
  launch_epilogue_nhwc(y, bias, residual, positions, channels, act, stream);
}

void conv2d_epilogue_nhwc(float* y, const float* bias, const float* residual, int64_t positions, int64_t channels,
                          const FusedActivation& act, cudaStream_t stream) {
  launch_epilogue_nhwc(y, bias, residual, positions, channels, act, stream);
}

void conv2d_forward(float* out, const float* in, const float* weight, const float* bias, const Conv2dShape& s,
                    const FusedActivation& act, void* workspace, size_t workspace_bytes, CudaRuntime& runtime,
                    const float* residual) {
  CAMRT_CHECK(!residual || residual != out, "cuda::conv2d_forward: the residual must not alias the output");
  const Geometry g = geometry_of(s);
  const std::string key = algo_key(g, ConvDirection::kForward, runtime);
  const Choice c = choose(runtime, g, ConvDirection::kForward, key);
  check_workspace(key, g, c, workspace, workspace_bytes);
  cudaStream_t stream = runtime.stream();
  cudnnHandle_t handle = runtime.cudnn();
  CAMRT_CUDNN_CHECK(cudnnSetStream(handle, stream));

  const float* x = in;
  unsigned char* scratch = static_cast<unsigned char*>(workspace);
  if (g.prepad) {
    float* xp = reinterpret_cast<float*>(scratch);
    const int64_t planes = int64_t(g.n) * g.c, total = planes * g.h * g.w;
    pad_planes_kernel<<<grid_for(total), 256, 0, stream>>>(xp, in, planes, g.in_h, g.in_w, g.h, g.w, g.excess_top,
                                                            g.excess_left);
    CAMRT_CUDA_CHECK_LAUNCH("pad_planes_kernel");
    x = xp;
    scratch += g.padded_bytes();
  }
  void* cudnn_workspace = c.workspace_bytes ? scratch : nullptr;
  Descriptors d(g, c.math);
  const auto algo = static_cast<cudnnConvolutionFwdAlgo_t>(c.algo);
  const float one = 1.f, zero = 0.f;

  if (fused_bias_relu(runtime, key, g, d, c, x, weight, bias, CUDNN_DATA_FLOAT, residual, out, cudnn_workspace, act))
    return;
  CAMRT_CUDNN_CHECK(cudnnConvolutionForward(handle, &one, d.x, x, d.w, weight, d.conv, algo, cudnn_workspace,
                                            c.workspace_bytes, &zero, d.y, out));
  if (bias || residual || act.kind != FusedActivation::kNone) {
    const int64_t spatial = int64_t(g.oh) * g.ow, n = int64_t(g.n) * g.k * spatial;
    bias_activation_kernel<<<grid_for(n), 256, 0, stream>>>(out, bias, residual, n, spatial, g.k, int(act.kind),
                                                             act.min, act.max);
    CAMRT_CUDA_CHECK_LAUNCH("bias_activation_kernel");
  }
}

void conv2d_backward_data(float* dx, const float* dy, const float* weight, const Conv2dShape& s, void* workspace,
                          size_t workspace_bytes, CudaRuntime& runtime) {
  const Geometry g = geometry_of(s);
  const std::string key = algo_key(g, ConvDirection::kBackwardData, runtime);
  const Choice c = choose(runtime, g, ConvDirection::kBackwardData, key);
  check_workspace(key, g, c, workspace, workspace_bytes);
  cudaStream_t stream = runtime.stream();
  cudnnHandle_t handle = runtime.cudnn();
  CAMRT_CUDNN_CHECK(cudnnSetStream(handle, stream));

  unsigned char* scratch = static_cast<unsigned char*>(workspace);
  float* dxp = g.prepad ? reinterpret_cast<float*>(scratch) : nullptr;
  if (g.prepad) scratch += g.padded_bytes();
  void* cudnn_workspace = c.workspace_bytes ? scratch : nullptr;
  Descriptors d(g, c.math);
  const float one = 1.f, zero = 0.f;
  // Symmetric pads: cuDNN accumulates straight into dx (beta = 1). Asymmetric: the gradient of the padded input
  // is written whole (beta = 0) to the workspace, then its interior is added into dx.
  CAMRT_CUDNN_CHECK(cudnnConvolutionBackwardData(handle, &one, d.w, weight, d.y, dy, d.conv,
                                                 static_cast<cudnnConvolutionBwdDataAlgo_t>(c.algo), cudnn_workspace,
                                                 c.workspace_bytes, g.prepad ? &zero : &one, d.x, g.prepad ? dxp : dx));
  if (g.prepad) {
    const int64_t planes = int64_t(g.n) * g.c, total = planes * g.in_h * g.in_w;
    crop_add_planes_kernel<<<grid_for(total), 256, 0, stream>>>(dx, dxp, planes, g.in_h, g.in_w, g.h, g.w,
                                                                 g.excess_top, g.excess_left);
    CAMRT_CUDA_CHECK_LAUNCH("crop_add_planes_kernel");
  }
}

void conv2d_residual_backward(float* dz, const float* g, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  accumulate_kernel<<<grid_for(n), 256, 0, stream>>>(dz, g, n);
  CAMRT_CUDA_CHECK_LAUNCH("accumulate_kernel");
}

void conv2d_activation_backward(float* masked, const float* dy, const float* y, int64_t n, const FusedActivation& act,
                                bool guided_relu, cudaStream_t stream) {
  if (n <= 0) return;
  if (act.kind == FusedActivation::kNone && masked == dy) return;
  if (act.kind == FusedActivation::kNone) {
    CAMRT_CUDA_CHECK(cudaMemcpyAsync(masked, dy, size_t(n) * sizeof(float), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  activation_mask_kernel<<<grid_for(n), 256, 0, stream>>>(masked, dy, y, n, int(act.kind), act.min, act.max,
                                                           guided_relu);
  CAMRT_CUDA_CHECK_LAUNCH("activation_mask_kernel");
}

}  // namespace camrt::cuda
