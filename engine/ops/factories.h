// Factory of every op family, defined in its engine/ops/<family>.cpp; the registry table maps op types to these.
#pragma once
#include "engine/ops/op.h"

namespace camrt {

// activation.cpp
std::unique_ptr<Op> make_relu(const Node& node);
std::unique_ptr<Op> make_leaky_relu(const Node& node);
std::unique_ptr<Op> make_clip(const Node& node);
std::unique_ptr<Op> make_sigmoid(const Node& node);
std::unique_ptr<Op> make_hard_sigmoid(const Node& node);
std::unique_ptr<Op> make_hard_swish(const Node& node);
std::unique_ptr<Op> make_identity(const Node& node);  // Identity and Dropout (inference)
// elementwise.cpp (numpy broadcasting)
std::unique_ptr<Op> make_add(const Node& node);
std::unique_ptr<Op> make_sub(const Node& node);
std::unique_ptr<Op> make_mul(const Node& node);
std::unique_ptr<Op> make_div(const Node& node);
// batchnorm.cpp
std::unique_ptr<Op> make_batch_norm(const Node& node);
// softmax.cpp
std::unique_ptr<Op> make_softmax(const Node& node);
// conv.cpp
std::unique_ptr<Op> make_conv(const Node& node);
// gemm.cpp
std::unique_ptr<Op> make_gemm(const Node& node);
std::unique_ptr<Op> make_matmul(const Node& node);
// pool.cpp
std::unique_ptr<Op> make_max_pool(const Node& node);
std::unique_ptr<Op> make_average_pool(const Node& node);
std::unique_ptr<Op> make_global_average_pool(const Node& node);
// reduce.cpp
std::unique_ptr<Op> make_reduce_mean(const Node& node);
// pad.cpp
std::unique_ptr<Op> make_pad(const Node& node);
// shape_ops.cpp (views and copies: no arithmetic)
std::unique_ptr<Op> make_flatten(const Node& node);
std::unique_ptr<Op> make_reshape(const Node& node);
std::unique_ptr<Op> make_squeeze(const Node& node);
std::unique_ptr<Op> make_unsqueeze(const Node& node);
std::unique_ptr<Op> make_concat(const Node& node);

}  // namespace camrt
