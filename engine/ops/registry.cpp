// The op registry: one explicit line per supported ONNX op type, mapping it to the factory defined in
// that op family's file. Nothing registers itself; what camrt supports is this table.
#include <algorithm>
#include <cstring>

#include "engine/ops/op.h"
#include "engine/ops/factories.h"

namespace camrt {

namespace {
struct OpEntry {
  const char* op_type;
  OpFactory factory;
};

constexpr OpEntry kOps[] = {
    {"Add", make_add},
    {"AveragePool", make_average_pool},
    {"BatchNormalization", make_batch_norm},
    {"Clip", make_clip},
    {"Concat", make_concat},
    {"Conv", make_conv},
    {"Div", make_div},
    {"Dropout", make_identity},
    {"Flatten", make_flatten},
    {"Gemm", make_gemm},
    {"GlobalAveragePool", make_global_average_pool},
    {"HardSigmoid", make_hard_sigmoid},
    {"HardSwish", make_hard_swish},
    {"Identity", make_identity},
    {"LeakyRelu", make_leaky_relu},
    {"MatMul", make_matmul},
    {"MaxPool", make_max_pool},
    {"Mul", make_mul},
    {"Pad", make_pad},
    {"ReduceMean", make_reduce_mean},
    {"Relu", make_relu},
    {"Reshape", make_reshape},
    {"Sigmoid", make_sigmoid},
    {"Softmax", make_softmax},
    {"Squeeze", make_squeeze},
    {"Sub", make_sub},
    {"Unsqueeze", make_unsqueeze},
};
}  // namespace

OpFactory find_op(const std::string& op_type) {
  for (const auto& entry : kOps)
    if (op_type == entry.op_type) return entry.factory;
  return nullptr;
}

std::vector<std::string> supported_ops() {
  std::vector<std::string> names;
  for (const auto& entry : kOps) names.emplace_back(entry.op_type);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace camrt
