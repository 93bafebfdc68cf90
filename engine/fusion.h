// Activation fusion: a rewrite of a model's node list in which each Conv or Add whose output is read by exactly one
// node, a Relu or a Clip with constant bounds, becomes one node computing act(conv(...)) or act(a + b) (the ops'
// "activation" attribute, see engine/ops/conv.cpp and engine/ops/elementwise.cpp). The pre-activation tensor then
// never exists: one kernel (and one memory pass) less per pair, on the CPU and the GPU, and one buffer less to
// plan. torchvision's ResNet-50 has 49 such pairs (33 Conv+Relu, 16 residual Add+Relu), MobileNetV2 35 Conv+Clip.
//
// Backward passes are unchanged in value: the fused op masks dy with its own output exactly as the Relu/Clip did
// (y > 0; min < y < max; Guided Backprop's dy > 0 as well), so a gradient target on the activation's output keeps
// its gradient, and the explained layer (an activation output in practice) stays a tensor of the fused graph.
// Tensors that must stay observable (an explained conv output, kept values, graph outputs) are never absorbed.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "weights/model.h"

namespace camrt {

struct FusedNodes {
  std::vector<Node> nodes;  // the model's nodes, each fused pair replaced by one node at the producer's place
  // Absorbed activation node name -> the fused node's name (the producer's), so names users know still resolve.
  std::map<std::string, std::string> absorbed;
};

// keep: tensor or node names (a node means its first output) whose value must stay computed.
FusedNodes fuse_activations(const Model& model, const std::vector<std::string>& keep);

}  // namespace camrt
