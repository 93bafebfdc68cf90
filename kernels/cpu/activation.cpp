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

}  // namespace camrt
