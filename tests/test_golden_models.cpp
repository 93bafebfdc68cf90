// Whole-model check against PyTorch: every fixture in tests/fixtures/models (written by
// tools/golden/make_golden.py from torchvision-style nets) is converted, run on its input.npy, and compared
// with PyTorch's logits.npy. Tolerance from the issue: max abs error <= 1e-4 * max |logit|.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>

#include "engine/executor.h"
#include "engine/npy.h"
#include "weights/onnx/onnx_import.h"

using namespace camrt;
namespace fs = std::filesystem;

namespace {

std::vector<fs::path> golden_model_dirs() {
  std::vector<fs::path> dirs;
  const fs::path root = fs::path(CAMRT_SOURCE_DIR) / "tests" / "fixtures" / "models";
  if (fs::exists(root))
    for (const auto& entry : fs::directory_iterator(root))
      if (fs::exists(entry.path() / "model.onnx")) dirs.push_back(entry.path());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

// Runs the model on input.npy and returns max |camrt - torch| / max |torch|.
double relative_logit_error(const Graph& graph, const fs::path& dir, ThreadPool& pool) {
  const HostTensor input = read_npy((dir / "input.npy").string());
  const HostTensor expected = read_npy((dir / "logits.npy").string());
  const std::string input_name = graph.values()[graph.input_ids()[0]].name;
  auto outputs = run_model(graph, {{input_name, input}}, pool);
  const HostTensor& logits = outputs.at(graph.values()[graph.output_ids()[0]].name);
  REQUIRE(logits.shape == expected.shape);
  double max_err = 0, max_ref = 0;
  for (int64_t i = 0; i < logits.numel(); ++i) {
    max_err = std::max(max_err, std::fabs(double(logits.f32()[i]) - double(expected.f32()[i])));
    max_ref = std::max(max_ref, std::fabs(double(expected.f32()[i])));
  }
  return max_err / std::max(max_ref, 1e-12);
}

}  // namespace

TEST_CASE("golden models: camrt logits match PyTorch (BN folded and not folded, activations fused and not, after a save/load round trip)") {
  const auto dirs = golden_model_dirs();
  REQUIRE_MESSAGE(dirs.size() >= 7, "expected the 7 golden fixture models; run tools/golden/make_golden.py");
  ThreadPool pool(2);
  for (const fs::path& dir : dirs) {
    const std::string name = dir.filename().string();
    for (bool fold : {true, false}) {
      CAPTURE(name);
      CAPTURE(fold);
      OnnxImportOptions options;
      options.fold_batchnorm = fold;
      Model imported = import_onnx((dir / "model.onnx").string(), options);
      // Through the files, as `camrt convert` + `camrt predict` would.
      const fs::path out = fs::temp_directory_path() / ("camrt_golden_" + name + (fold ? "_fold" : "_nofold"));
      save_model(imported, out.string());
      Graph graph(load_model((out / "model.json").string()), name);
      const double err = relative_logit_error(graph, dir, pool);
      std::cout << "golden " << name << (fold ? " (BN folded)" : " (BN kept)") << ": max rel logit error " << err << "\n";
      CHECK(err <= 1e-4);
      // The activation-fused plan (what camrt predict and explain run) against PyTorch too.
      const auto fused = graph.fused({});
      const double fused_err = relative_logit_error(*fused, dir, pool);
      std::cout << "golden " << name << (fold ? " (BN folded)" : " (BN kept)") << ", " << fused->fused_pairs()
                << " activations fused: max rel logit error " << fused_err << "\n";
      CHECK(fused_err <= 1e-4);
      const bool has_relu_or_clip = std::any_of(imported.nodes.begin(), imported.nodes.end(),
                                                [](const Node& n) { return n.op == "Relu" || n.op == "Clip"; });
      if (fold && has_relu_or_clip) CHECK(fused->fused_pairs() > 0);
      fs::remove_all(out);
    }
  }
}
