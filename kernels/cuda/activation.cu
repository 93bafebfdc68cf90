// Activation kernels on the GPU: one grid-stride kernel per kind (the switch on the kind happens once per
// launch). Products and sums go through __fmul_rn/__fadd_rn so nvcc never fuses them: results equal an unfused
// CPU twin's bit for bit, except Sigmoid (expf differs from the host's exp by an ulp or two); a CPU build that
// fuses a * b + c (GCC with -march=native on FMA hardware) differs there by one rounding.
#include "kernels/cuda/activation.h"

#include "kernels/cuda/check.h"

namespace camrt::cuda {

namespace {

constexpr int kThreads = 256;

// ActivationParams without its host-side default initialisers, so device code only copies plain floats.
struct Params {
  float alpha, beta, min, max;
};

Params device_params(const ActivationParams& p) { return Params{p.alpha, p.beta, p.min, p.max}; }

// std::max / std::min exactly as the CPU twin calls them (NaN handling included): max(a, b) = a < b ? b : a,
// min(a, b) = b < a ? b : a.
__device__ __forceinline__ float std_max(float a, float b) { return a < b ? b : a; }
__device__ __forceinline__ float std_min(float a, float b) { return b < a ? b : a; }

template <Activation K>
__device__ __forceinline__ float activate(float x, const Params& p) {
  if constexpr (K == Activation::Relu) {
    return x < 0.f ? 0.f : x;  // NaN passes through, as on the CPU
  } else if constexpr (K == Activation::LeakyRelu) {
    return x < 0.f ? __fmul_rn(p.alpha, x) : x;
  } else if constexpr (K == Activation::Clip) {
    const float t = x < p.min ? p.min : x;  // lower bound first: with min > max every value becomes max
    return t > p.max ? p.max : t;
  } else if constexpr (K == Activation::Sigmoid) {
    return 1.f / (1.f + expf(-x));  // IEEE division (nvcc's default -prec-div=true)
  } else if constexpr (K == Activation::HardSigmoid) {
    return std_min(1.f, std_max(0.f, __fadd_rn(__fmul_rn(p.alpha, x), p.beta)));
  } else {  // HardSwish with ONNX's fixed alpha = 1/6, beta = 0.5
    return __fmul_rn(x, std_min(1.f, std_max(0.f, __fadd_rn(__fdiv_rn(x, 6.f), 0.5f))));
  }
}

template <Activation K>
__global__ void activation_forward_kernel(float* y, const float* x, int64_t n, Params p, const float* min_bound,
                                          const float* max_bound) {
  if constexpr (K == Activation::Clip) {
    if (min_bound != nullptr) p.min = *min_bound;
    if (max_bound != nullptr) p.max = *max_bound;
  }
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = activate<K>(x[i], p);  // read before write: in-place is safe element by element
}

// dy * f'(.) from the saved value v (y or x, see activation_backward_reads_output).
template <Activation K, bool kGuided>
__device__ __forceinline__ float derivative_times(float dy, float v, const Params& p) {
  if constexpr (K == Activation::Relu) {
    if constexpr (kGuided) return v > 0.f && dy > 0.f ? dy : 0.f;
    return v > 0.f ? dy : 0.f;
  } else if constexpr (K == Activation::LeakyRelu) {
    return v > 0.f ? dy : __fmul_rn(p.alpha, dy);
  } else if constexpr (K == Activation::Clip) {
    return p.min < v && v < p.max ? dy : 0.f;
  } else if constexpr (K == Activation::Sigmoid) {
    return __fmul_rn(__fmul_rn(dy, v), __fsub_rn(1.f, v));
  } else if constexpr (K == Activation::HardSigmoid) {
    // In double, as the CPU twin does (see its comment): every float x lands on PyTorch's side of +-3.
    const double t = __dadd_rn(__dmul_rn(static_cast<double>(p.alpha), static_cast<double>(v)),
                               static_cast<double>(p.beta));
    return 0.0 < t && t < 1.0 ? __fmul_rn(p.alpha, dy) : 0.f;
  } else {  // HardSwish from x: x / 3 + 0.5 as aten writes it
    return v < -3.f ? 0.f : v <= 3.f ? __fmul_rn(dy, __fadd_rn(__fdiv_rn(v, 3.f), 0.5f)) : dy;
  }
}

template <Activation K, bool kGuided>
__global__ void activation_backward_kernel(float* dx, const float* dy, const float* v, int64_t n, Params p,
                                           const float* min_bound, const float* max_bound) {
  if constexpr (K == Activation::Clip) {
    if (min_bound != nullptr) p.min = *min_bound;
    if (max_bound != nullptr) p.max = *max_bound;
  }
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    dx[i] = __fadd_rn(dx[i], derivative_times<K, kGuided>(dy[i], v[i], p));
}

template <Activation K>
void launch_forward(float* y, const float* x, int64_t n, const ActivationParams& params, const float* min_bound,
                    const float* max_bound, cudaStream_t stream) {
  activation_forward_kernel<K><<<grid_for(n, kThreads), kThreads, 0, stream>>>(y, x, n, device_params(params),
                                                                               min_bound, max_bound);
  CAMRT_CUDA_CHECK_LAUNCH("activation_forward_kernel");
}

template <Activation K, bool kGuided = false>
void launch_backward(float* dx, const float* dy, const float* v, int64_t n, const ActivationParams& params,
                     const float* min_bound, const float* max_bound, cudaStream_t stream) {
  activation_backward_kernel<K, kGuided><<<grid_for(n, kThreads), kThreads, 0, stream>>>(
      dx, dy, v, n, device_params(params), min_bound, max_bound);
  CAMRT_CUDA_CHECK_LAUNCH("activation_backward_kernel");
}


}  // namespace

void activation_forward(float* y, const float* x, int64_t n, Activation kind, const ActivationParams& params,
                        cudaStream_t stream) {
  activation_forward(y, x, n, kind, params, nullptr, nullptr, stream);
}

void activation_forward(float* y, const float* x, int64_t n, Activation kind, const ActivationParams& params,
                        const float* min_bound, const float* max_bound, cudaStream_t stream) {
  if (n <= 0) return;
  switch (kind) {
    case Activation::Relu: return launch_forward<Activation::Relu>(y, x, n, params, min_bound, max_bound, stream);
    case Activation::LeakyRelu:
      return launch_forward<Activation::LeakyRelu>(y, x, n, params, min_bound, max_bound, stream);
    case Activation::Clip: return launch_forward<Activation::Clip>(y, x, n, params, min_bound, max_bound, stream);
    case Activation::Sigmoid:
      return launch_forward<Activation::Sigmoid>(y, x, n, params, min_bound, max_bound, stream);
    case Activation::HardSigmoid:
      return launch_forward<Activation::HardSigmoid>(y, x, n, params, min_bound, max_bound, stream);
    case Activation::HardSwish:
      return launch_forward<Activation::HardSwish>(y, x, n, params, min_bound, max_bound, stream);
  }
}

void activation_backward(float* dx, const float* dy, const float* saved, int64_t n, Activation kind,
                         const ActivationParams& params, bool guided_relu, cudaStream_t stream) {
  activation_backward(dx, dy, saved, n, kind, params, nullptr, nullptr, guided_relu, stream);
}

void activation_backward(float* dx, const float* dy, const float* saved, int64_t n, Activation kind,
                         const ActivationParams& params, const float* min_bound, const float* max_bound,
                         bool guided_relu, cudaStream_t stream) {
  if (n <= 0) return;
  const float* lo = min_bound;
  const float* hi = max_bound;
  switch (kind) {
    case Activation::Relu:
      if (guided_relu) return launch_backward<Activation::Relu, true>(dx, dy, saved, n, params, lo, hi, stream);
      return launch_backward<Activation::Relu>(dx, dy, saved, n, params, lo, hi, stream);
    case Activation::LeakyRelu:
      return launch_backward<Activation::LeakyRelu>(dx, dy, saved, n, params, lo, hi, stream);
    case Activation::Clip: return launch_backward<Activation::Clip>(dx, dy, saved, n, params, lo, hi, stream);
    case Activation::Sigmoid: return launch_backward<Activation::Sigmoid>(dx, dy, saved, n, params, lo, hi, stream);
    case Activation::HardSigmoid:
      return launch_backward<Activation::HardSigmoid>(dx, dy, saved, n, params, lo, hi, stream);
    case Activation::HardSwish:
      return launch_backward<Activation::HardSwish>(dx, dy, saved, n, params, lo, hi, stream);
  }
}


void fill_bytes(void* dst, uint8_t value, size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return;
  CAMRT_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, stream));
}

}  // namespace camrt::cuda
