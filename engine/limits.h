// What camrt accepts from a file before it refuses it: model files, images and arrays are untrusted input
// (README "Security"), so every reader checks sizes it is told against these limits before allocating or
// looping, and a hostile file becomes one camrt::Error instead of an allocation storm, a crash or a hang.
// The limits are generous for real CNNs (VGG-16's largest weight has 1.0e8 elements; ResNet-152 has 500 nodes).
#pragma once
#include <cstdint>

namespace camrt::limits {

constexpr int64_t kMaxTensorElements = int64_t(1) << 31;  // per tensor: 8 GiB of float32
constexpr int64_t kMaxTensorBytes = int64_t(1) << 33;     // per tensor, any dtype
constexpr int64_t kMaxModelBytes = int64_t(1) << 34;      // all weights of one model (16 GiB)
constexpr int64_t kMaxRank = 8;                           // dimensions of one tensor
constexpr int64_t kMaxGraphNodes = 100000;                // nodes of one graph
constexpr int64_t kMaxGraphValues = 400000;               // named values (tensors) of one graph
constexpr int64_t kMaxNodeInputs = 1024;                  // inputs or outputs of one node (Concat of many)
constexpr int64_t kMaxNesting = 64;                       // protobuf message / JSON nesting depth
constexpr int64_t kMaxNameBytes = 4096;                   // one node / tensor / attribute name
constexpr int64_t kMaxFileBytes = int64_t(1) << 35;       // one file read into memory (32 GiB)

}  // namespace camrt::limits
