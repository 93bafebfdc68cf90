// camrt predict: one forward pass over a preprocessed float32 NCHW .npy batch, top-k per image, and
// optionally the raw logits saved as .npy.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <numeric>

#include "engine/executor.h"
#include "engine/npy.h"
#include "engine/paths.h"
#include "kernels/cuda/runtime.h"
#include "tools/camrt/args.h"
#include "tools/camrt/commands.h"

namespace camrt::cli {

int run_predict(const std::vector<std::string>& argv) {
  Args args("predict", "camrt predict DIR/model.json --input x.npy [--topk 5] [--save-logits y.npy]",
            "Runs the network on a preprocessed float32 NCHW batch (.npy, any batch size) and prints the top\n"
            "classes of each image with softmax probabilities.");
  args.option("input", "FILE.npy", "input batch, float32 (B, C, H, W), already normalized")
      .option("topk", "K", "classes to print per image", "5")
      .option("save-logits", "FILE.npy", "write the raw output (float32) to this file")
      .option("threads", "N", "CPU threads (0 = all cores)", "0")
      .option("device", "D", "cpu, cuda, or auto (cuda when a GPU is present)", "auto")
      .option("precision", "P", "GPU convolutions/GEMMs: fp32, tf32 or fp16", "tf32")
      .option("channels-last", "auto|off|half|float",
              "store activations NHWC (auto: half at --precision fp16 on the GPU, else off; on the CPU half and float "
              "run the reference twins)", "auto");
  if (!args.parse(argv)) return 0;
  CAMRT_CHECK(args.positionals().size() == 1, "camrt predict: expected one model.json (see camrt predict --help)");
  CAMRT_CHECK(args.has("input"), "camrt predict: missing --input x.npy");
  const std::string path = resolve_model_path(args.positionals()[0]);
  const int64_t topk = args.get_int("topk");
  CAMRT_CHECK(topk >= 1, "--topk must be at least 1");

  auto model = std::make_shared<const Model>(load_model(path));
  // Activation-fused (engine/fusion.h): only the outputs are read, so every Conv/Add + Relu/Clip pair merges.
  Graph graph(model, std::filesystem::path(path).filename().string(), GraphOptions{true, {}});
  CAMRT_CHECK(graph.input_ids().size() == 1, path << ": predict needs a model with one input, this one has " << graph.input_ids().size());
  HostTensor input = read_npy(args.get("input"));
  CAMRT_CHECK(input.dtype == DType::F32, args.get("input") << ": expected float32 data, got " << dtype_name(input.dtype));
  const std::string input_name = graph.values()[graph.input_ids()[0]].name;

  ThreadPool pool(static_cast<int>(args.get_int("threads")));
  std::unique_ptr<CudaRuntime> cuda;
  if (resolve_device(args.get("device")) == Device::CUDA)
    cuda = std::make_unique<CudaRuntime>(0, parse_precision(args.get("precision")));
  PlanOptions plan;
  plan.cuda = cuda.get();
  plan.channels_last = parse_channels_last(args.get("channels-last"));
  Executor executor(graph, {{input_name, input.shape}}, pool, plan);
  executor.set_input(input_name, input);
  const auto start = std::chrono::steady_clock::now();
  executor.forward();
  if (cuda) cuda->synchronize();
  const double forward_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();

  const HostTensor logits_host = executor.fetch(graph.output_ids()[0]);
  const Tensor logits = logits_host.view();
  CAMRT_CHECK(logits.dtype == DType::F32 && logits.rank() >= 1, path << ": output is not a float tensor");
  const int64_t batch = logits.shape[0];
  const int64_t classes = batch ? logits.numel() / batch : 0;
  for (int64_t b = 0; b < batch; ++b) {
    const float* z = logits.f32() + b * classes;
    const float max_logit = *std::max_element(z, z + classes);
    double sum = 0;
    for (int64_t c = 0; c < classes; ++c) sum += std::exp(static_cast<double>(z[c] - max_logit));
    std::vector<int64_t> order(static_cast<size_t>(classes));
    std::iota(order.begin(), order.end(), 0);
    const int64_t k = std::min(topk, classes);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t c) { return z[a] > z[c]; });
    std::printf("image %lld:\n", static_cast<long long>(b));
    for (int64_t i = 0; i < k; ++i) {
      const int64_t c = order[i];
      const double p = std::exp(static_cast<double>(z[c] - max_logit)) / sum;
      const std::string label = c < static_cast<int64_t>(model->labels.size()) ? model->labels[c] : "";
      std::printf("  %2lld. class %-5lld p=%.4f logit=%9.4f  %s\n", static_cast<long long>(i + 1),
                  static_cast<long long>(c), p, z[c], printable_name(label).c_str());  // escaped: labels come from model.json
    }
  }
  if (cuda)
    std::fprintf(stderr, "forward: %.2f ms for batch %lld on %s (%s)\n", forward_ms, static_cast<long long>(batch),
                 cuda->device_name().c_str(), precision_name(cuda->precision()));
  else
    std::fprintf(stderr, "forward: %.2f ms for batch %lld on %d thread(s)\n", forward_ms, static_cast<long long>(batch),
                 pool.num_threads());
  if (args.has("save-logits")) {
    write_npy(args.get("save-logits"), logits_host);
  }
  return 0;
}

}  // namespace camrt::cli
