// camrt convert: ONNX -> model.json + model.safetensors. The converted graph is validated (every op known,
// every shape inferable at batch 1) before anything is written, so a failed convert leaves no output.
#include <filesystem>
#include <fstream>
#include <iostream>

#include "engine/graph.h"
#include "tools/camrt/args.h"
#include "tools/camrt/commands.h"
#include "weights/onnx/onnx_import.h"

namespace camrt::cli {

namespace {
std::array<float, 3> parse_three(const std::string& text, const std::string& option) {
  std::array<float, 3> v{};
  std::stringstream ss(text);
  std::string item;
  int n = 0;
  while (std::getline(ss, item, ',')) {
    CAMRT_CHECK(n < 3, "--" << option << " expects 3 comma-separated numbers, got '" << text << "'");
    try {
      v[n++] = std::stof(item);
    } catch (...) {
      CAMRT_FAIL("--" << option << " expects numbers, got '" << item << "'");
    }
  }
  CAMRT_CHECK(n == 3, "--" << option << " expects 3 comma-separated numbers, got '" << text << "'");
  return v;
}
}  // namespace

int run_convert(const std::vector<std::string>& argv) {
  Args args("convert", "camrt convert MODEL.onnx -o DIR [options]",
            "Converts an ONNX model (opsets 11-21) into camrt's files DIR/model.json and DIR/model.safetensors.\n"
            "Constant subgraphs are folded, BatchNormalization is folded into the preceding Conv, and ONNX node\n"
            "and tensor names are kept, so layers are named as in your exporter.");
  args.option("out", "DIR", "output directory (created if needed)")
      .flag("no-fold-bn", "keep BatchNormalization nodes instead of folding them into convolutions")
      .option("labels", "FILE", "text file with one class label per line")
      .option("explain-layer", "NAME", "default explanation layer (node or tensor name; default: automatic)")
      .option("resize", "N", "preprocessing: shorter side after resize", "256")
      .option("crop", "N", "preprocessing: center crop size", "224")
      .option("mean", "R,G,B", "preprocessing: normalization mean", "0.485,0.456,0.406")
      .option("std", "R,G,B", "preprocessing: normalization std", "0.229,0.224,0.225");
  if (!args.parse(argv)) return 0;
  CAMRT_CHECK(args.positionals().size() == 1, "camrt convert: expected one ONNX file (see camrt convert --help)");
  CAMRT_CHECK(args.has("out"), "camrt convert: missing -o DIR (see camrt convert --help)");
  const std::string onnx_path = args.positionals()[0];
  const std::string out_dir = args.get("out");

  OnnxImportOptions options;
  options.fold_batchnorm = !args.has("no-fold-bn");
  auto model = std::make_shared<Model>(import_onnx(onnx_path, options));
  model->preprocess.resize = args.get_int("resize");
  model->preprocess.crop = args.get_int("crop");
  CAMRT_CHECK(model->preprocess.resize > 0 && model->preprocess.crop > 0, "--resize and --crop must be positive");
  model->preprocess.mean = parse_three(args.get("mean"), "mean");
  model->preprocess.std = parse_three(args.get("std"), "std");
  if (args.has("labels")) {
    std::ifstream in(args.get("labels"));
    CAMRT_CHECK(in, "cannot read labels file '" << args.get("labels") << "'");
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      model->labels.push_back(line);
    }
  }

  const std::string source = std::filesystem::path(onnx_path).filename().string();
  Graph graph(model, source);
  graph.infer(graph.input_shapes_for_batch(1));  // shape errors surface here, before writing anything
  if (args.has("explain-layer")) {
    const std::string layer = args.get("explain-layer");
    const int node = graph.find_node(layer);
    CAMRT_CHECK(node >= 0, source << ": --explain-layer '" << layer << "' is neither a node nor a tensor name");
    model->explain_layer = graph.nodes()[node].node->name;
  } else {
    model->explain_layer = graph.default_explain_layer();
  }
  save_model(*model, out_dir);
  std::cout << "converted " << onnx_path << ": " << model->nodes.size() << " nodes, " << graph.parameter_count()
            << " parameters -> " << (std::filesystem::path(out_dir) / "model.json").string() << "\n";
  if (!model->explain_layer.empty()) std::cout << "default explanation layer: " << model->explain_layer << "\n";
  return 0;
}

}  // namespace camrt::cli
