// Activation kernels: the switch on the kind happens once per launch, so each loop body is a
// compile-time function the compiler can vectorise. NaN inputs propagate (as in PyTorch) for Relu and Clip.
#include "kernels/cpu/activation.h"

#include <algorithm>
#include <cmath>

namespace camrt {

namespace {

// Below this many elements a launch runs on the calling thread: ~32K floats (128 KiB) of a memory-bound
// loop take about as long as waking the workers does.
constexpr int64_t kMinChunk = int64_t(1) << 15;

template <Activation K>
inline float activate(float x, const ActivationParams& p) {
  if constexpr (K == Activation::Relu) {
    return x < 0.f ? 0.f : x;  // written this way round so NaN passes through
  } else if constexpr (K == Activation::LeakyRelu) {
    return x < 0.f ? p.alpha * x : x;
  } else if constexpr (K == Activation::Clip) {
    // Lower bound first, then upper: with min > max every value becomes max (ONNX and numpy agree).
    const float t = x < p.min ? p.min : x;
    return t > p.max ? p.max : t;
  } else if constexpr (K == Activation::Sigmoid) {
    // exp(-x) overflows to +inf for x < -88, giving exactly 0: no NaN for any finite input.
    return 1.f / (1.f + std::exp(-x));
  } else if constexpr (K == Activation::HardSigmoid) {
    return std::min(1.f, std::max(0.f, p.alpha * x + p.beta));
  } else {  // HardSwish: x * HardSigmoid(x) with ONNX's fixed alpha = 1/6, beta = 0.5
    return x * std::min(1.f, std::max(0.f, x / 6.f + 0.5f));
  }
}

template <Activation K>
void run(float* y, const float* x, int64_t n, const ActivationParams& params, ThreadPool& pool) {
  const ActivationParams p = params;  // a local copy: the loop must not reload it through a pointer
  pool.parallel_for(
      n,
      [=](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) y[i] = activate<K>(x[i], p);
      },
      kMinChunk);
}

// dy * f'(.) from the saved value v (y or x, see activation_backward_reads_output).
template <Activation K, bool kGuided>
inline float derivative_times(float dy, float v, const ActivationParams& p) {
  if constexpr (K == Activation::Relu) {
    if constexpr (kGuided) return v > 0.f && dy > 0.f ? dy : 0.f;
    return v > 0.f ? dy : 0.f;
  } else if constexpr (K == Activation::LeakyRelu) {
    return v > 0.f ? dy : p.alpha * dy;
  } else if constexpr (K == Activation::Clip) {
    return p.min < v && v < p.max ? dy : 0.f;
  } else if constexpr (K == Activation::Sigmoid) {
    return dy * v * (1.f - v);
  } else if constexpr (K == Activation::HardSigmoid) {
    // From x, in double: PyTorch tests -3 < x < 3 exactly, while the float alpha * x + beta (alpha = 1/6 rounded)
    // already rounds to 1 at x = 3 - 1 ulp; in double the open region's ends fall within 1e-7 relative of +-3,
    // closer than float spacing, so every float x lands on PyTorch's side.
    const double t = static_cast<double>(p.alpha) * v + p.beta;
    return 0.0 < t && t < 1.0 ? p.alpha * dy : 0.f;
  } else {  // HardSwish, from x; x / 3 + 0.5 as aten writes it, so values match bit for bit
    return v < -3.f ? 0.f : v <= 3.f ? dy * (v / 3.f + 0.5f) : dy;
  }
}

template <Activation K, bool kGuided = false>
void run_backward(float* dx, const float* dy, const float* v, int64_t n, const ActivationParams& params,
                  ThreadPool& pool) {
  const ActivationParams p = params;
  pool.parallel_for(
      n,
      [=](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) dx[i] += derivative_times<K, kGuided>(dy[i], v[i], p);
      },
      kMinChunk);
}

}  // namespace

const char* activation_name(Activation kind) {
  switch (kind) {
    case Activation::Relu: return "Relu";
    case Activation::LeakyRelu: return "LeakyRelu";
    case Activation::Clip: return "Clip";
    case Activation::Sigmoid: return "Sigmoid";
    case Activation::HardSigmoid: return "HardSigmoid";
    case Activation::HardSwish: return "HardSwish";
  }
  return "?";
}

void activation_forward(float* y, const float* x, int64_t n, Activation kind, const ActivationParams& params,
                        ThreadPool& pool) {
  switch (kind) {
    case Activation::Relu: return run<Activation::Relu>(y, x, n, params, pool);
    case Activation::LeakyRelu: return run<Activation::LeakyRelu>(y, x, n, params, pool);
    case Activation::Clip: return run<Activation::Clip>(y, x, n, params, pool);
    case Activation::Sigmoid: return run<Activation::Sigmoid>(y, x, n, params, pool);
    case Activation::HardSigmoid: return run<Activation::HardSigmoid>(y, x, n, params, pool);
    case Activation::HardSwish: return run<Activation::HardSwish>(y, x, n, params, pool);
  }
}

bool activation_backward_reads_output(Activation kind, const ActivationParams& params) {
  switch (kind) {
    case Activation::Relu:
    case Activation::Sigmoid:
    case Activation::Clip:  // y == x exactly inside (min, max) and y == min or max outside: the same test
      return true;
    case Activation::LeakyRelu:
      // alpha >= 0 keeps y > 0 <=> x > 0 (alpha == 0 is Relu; a tiny alpha * x that underflows to 0 still
      // reads as "not > 0", the right side). A negative alpha maps x < 0 to y > 0.
      return params.alpha >= 0.f;
    case Activation::HardSigmoid:  // see derivative_times: y loses which side of a breakpoint x was on
    case Activation::HardSwish:
      return false;
  }
  return false;
}

void activation_backward(float* dx, const float* dy, const float* saved, int64_t n, Activation kind,
                         const ActivationParams& params, bool guided_relu, ThreadPool& pool) {
  switch (kind) {
    case Activation::Relu:
      if (guided_relu) return run_backward<Activation::Relu, true>(dx, dy, saved, n, params, pool);
      return run_backward<Activation::Relu>(dx, dy, saved, n, params, pool);
    case Activation::LeakyRelu: return run_backward<Activation::LeakyRelu>(dx, dy, saved, n, params, pool);
    case Activation::Clip: return run_backward<Activation::Clip>(dx, dy, saved, n, params, pool);
    case Activation::Sigmoid: return run_backward<Activation::Sigmoid>(dx, dy, saved, n, params, pool);
    case Activation::HardSigmoid: return run_backward<Activation::HardSigmoid>(dx, dy, saved, n, params, pool);
    case Activation::HardSwish: return run_backward<Activation::HardSwish>(dx, dy, saved, n, params, pool);
  }
}

}  // namespace camrt
