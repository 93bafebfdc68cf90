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
//
// Residual fusion, given the tensors' shapes: an Add (fused activation or not) of a Conv's output (read by that
// Add only, no activation of its own) and another tensor Z of the same shape becomes the Conv with Z as a fourth
// input, y = act(conv(x) + b + Z), placed where the Add was (on the GPU one cuDNN call; torchvision's ResNet-50:
// all 16 bottleneck Adds). Its backward passes the masked dy to Z as the Add did, in the same order.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "weights/model.h"

namespace camrt {

struct FusedNodes {
  std::vector<Node> nodes;  // the model's nodes, each fused pair replaced by one node at the producer's place
  // Absorbed activation (and residual Add) node name -> the fused node's name (the producer's, the conv's), so
  // names users know still resolve.
  std::map<std::string, std::string> absorbed;
};

// keep: tensor or node names (a node means its first output) whose value must stay computed. shapes: every
// tensor's shape by name at one batch size, or null to skip residual fusion (which needs them).
FusedNodes fuse_activations(const Model& model, const std::vector<std::string>& keep,
                            const std::map<std::string, Shape>* shapes = nullptr);

}  // namespace camrt
