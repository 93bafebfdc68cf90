// ONNX importer: decodes a ModelProto with camrt's own protobuf reader and turns it into a camrt::Model
// in the one normalized form the runtime ops expect (constants folded into weights, shape chains of
// dynamic-batch exports resolved, BatchNormalization folded into Conv). Errors name the file and node.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/tensor.h"
#include "weights/model.h"

namespace camrt {

struct OnnxImportOptions {
  bool fold_batchnorm = true;                     // fold BN into the preceding Conv when legal
  std::map<std::string, HostTensor> bind_inputs;  // graph inputs to treat as constants (tests bind them)
};

// Reads and converts an .onnx file. Throws camrt::Error ("model.onnx: ...") on any problem; unsupported
// ops are all listed in one error.
Model import_onnx(const std::string& path, const OnnxImportOptions& options = {});
// Same, from bytes in memory; source_name is used in error messages and metadata.
Model import_onnx_bytes(const uint8_t* data, size_t size, const std::string& source_name,
                        const OnnxImportOptions& options = {});
// What an ONNX file contains at a glance, without importing it: the op types of its nodes and its
// runtime graph inputs (initializers excluded), in file order. Used to bind test inputs and to list
// unsupported ops.
struct OnnxSummary {
  std::vector<std::string> op_types;     // one per node, e.g. "Conv"; domain-qualified if not ONNX's
  std::vector<std::string> input_names;  // graph inputs that are not initializers
  int64_t opset = 0;                     // default-domain opset, 0 if absent
};
OnnxSummary summarize_onnx(const std::string& path);

// Reads a serialized TensorProto (the ONNX test-data input_0.pb/output_0.pb files); *name gets its name.
HostTensor read_onnx_tensor_file(const std::string& path, std::string* name = nullptr);

}  // namespace camrt
