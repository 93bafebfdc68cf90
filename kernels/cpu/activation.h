// CPU element-wise activations (Relu, LeakyRelu, Clip, Sigmoid, HardSigmoid, HardSwish), one launcher
// parameterised by an Activation enum so the matching activation_backward can sit beside it.
// y may alias x (in-place execution): every element is read before it is written.
#pragma once
#include <cstdint>
#include <limits>

#include "kernels/cpu/parallel.h"

namespace camrt {

enum class Activation : uint8_t { Relu, LeakyRelu, Clip, Sigmoid, HardSigmoid, HardSwish };

const char* activation_name(Activation kind);

// The constants an activation needs; each kind reads only its own fields (ONNX attribute meanings).
struct ActivationParams {
  float alpha = 0.f;  // LeakyRelu: slope for x < 0; HardSigmoid: slope
  float beta = 0.f;   // HardSigmoid: offset
  float min = -std::numeric_limits<float>::infinity();  // Clip lower bound
  float max = std::numeric_limits<float>::infinity();   // Clip upper bound
};

// y = f(x) element by element; y and x: (n,), y may equal x.
void activation_forward(float* y, const float* x, int64_t n, Activation kind, const ActivationParams& params,
                        ThreadPool& pool);

}  // namespace camrt
