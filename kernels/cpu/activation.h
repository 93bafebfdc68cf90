// CPU element-wise activations (Relu, LeakyRelu, Clip, Sigmoid, HardSigmoid, HardSwish), forward and
// backward, one launcher each parameterised by an Activation enum.
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

// Which forward value activation_backward reads for a kind: the output wherever it determines the
// derivative exactly (so the forward may still run in place), the input otherwise.
//   Relu, Sigmoid, Clip: y.  LeakyRelu: y if alpha >= 0 (sign(y) == sign(x)), else x.
//   HardSigmoid: x (within 1 ulp of a breakpoint the float y is already 0 or 1 while PyTorch's gradient is alpha).
//   HardSwish: x (y = x * relu6(x + 3) / 6 is not one-to-one on [-3, 0]).
bool activation_backward_reads_output(Activation kind, const ActivationParams& params);

// dx += dy * f'(x), element by element; dx, dy, saved: (n,). `saved` is y or x as
// activation_backward_reads_output says. Derivatives at the kinks follow PyTorch's autograd:
//   Relu: 1 where y > 0 (0 at x == 0). guided_relu (Relu only): also 0 where dy <= 0 (Guided Backprop).
//   LeakyRelu: 1 where saved > 0, alpha elsewhere (alpha at x == 0).
//   Clip: 1 where min < y < max, 0 elsewhere, 0 at the bounds (hardtanh_backward; ReLU6 exports as Clip).
//   Sigmoid: y * (1 - y).
//   HardSigmoid: alpha where 0 < alpha * x + beta < 1 (the open linear region, tested in double), 0 elsewhere;
//   PyTorch's hardsigmoid_backward (-3 < x < 3) for the exported alpha = 1/6, beta = 0.5.
//   HardSwish: 0 for x < -3, x / 3 + 0.5 for -3 <= x <= 3, 1 for x > 3 (aten's hardswish_backward: the
//   inner formula holds at both breakpoints, giving -0.5 at x == -3 and 1.5 at x == 3).
// dx must not alias dy or saved.
void activation_backward(float* dx, const float* dy, const float* saved, int64_t n, Activation kind,
                         const ActivationParams& params, bool guided_relu, ThreadPool& pool);

}  // namespace camrt
