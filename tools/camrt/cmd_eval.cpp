// camrt eval: how well each CAM method localizes and how faithful its maps are, on the fashion-canvas test
// split (or a folder of images with a boxes file), next to a centred-box and a random-map baseline. Prints a
// markdown table on stdout, a progress bar on stderr, and writes --json FILE. Metrics: docs/cam-spec.md,
// "Faithfulness and localization metrics"; the loop: engine/eval/evaluator.h.
//
// Cost: per image, every map source (7 methods + 2 baselines) needs 1 masked forward (Average Drop) and
// 2 * (steps - 1) curve forwards (deletion, insertion), plus 2 shared end points; Score-CAM adds one forward per
// channel of the explained layer. Measured with a 136k-parameter 96x96 CNN explained at a 128 x 12 x 12 layer:
// about 300 ms of CPU per canvas with the default 16 steps (576 pixels per step), Score-CAM ~100 ms of it, so
// the default 2,000 canvases take about 5-6 minutes on 2 idle cores; --steps 8 saves about a third of the probes.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "engine/atomic_file.h"
#include "engine/cam/explainer.h"
#include "engine/eval/evaluator.h"
#include "tools/camrt/args.h"
#include "tools/camrt/commands.h"

namespace camrt::cli {

namespace fs = std::filesystem;

namespace {

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) parts.push_back(item);
  return parts;
}

const char* kBoxesHelp =
    "Your own data: --data BOXES.csv, or --data FOLDER holding boxes.csv. One image per line:\n"
    "    path,label,x0,y0,x1,y1\n"
    "  path      image file (PNG, JPEG, BMP), relative to the boxes file's folder or absolute\n"
    "  label     ground-truth class: index (0-based) or one of the model's label names, exactly\n"
    "  x0..y1    the object's box in pixels of the ORIGINAL image, inclusive corners, 0-based,\n"
    "            x right, y down (a whole 640x480 image is 0,0,639,479)\n"
    "  Spaces around fields are ignored; empty lines and lines starting with # are skipped; a first\n"
    "  line whose x0 is not a number is a header. Images are resized and centre-cropped as the model's\n"
    "  preprocessing says; boxes follow the same resize and crop.";

}  // namespace

int run_eval(const std::vector<std::string>& argv) {
  std::string method_list;
  for (const auto& m : default_eval_methods()) method_list += (method_list.empty() ? "" : ",") + m;
  Args args("eval", "camrt eval [MODEL] [--data fashion-canvas|BOXES.csv|FOLDER] [--methods LIST] [--n N] [--json FILE]",
            "Scores CAM methods on labelled images with ground-truth boxes: classification top-1, top-1\n"
            "localization (map >= 15% of its max, box of the largest 8-connected component, IoU >= 0.5 and the\n"
            "class right), pointing game (map maximum inside the box), Average Drop % and Increase in\n"
            "Confidence % (softmax probability of the predicted class on image * map), deletion and insertion\n"
            "AUC (pixels ranked by the map: deletion sets them to 0 = black, insertion reveals them on a copy\n"
            "blurred with a Gaussian of sigma 5 px; H*W/steps pixels per step; trapezoid rule over [0, 1]).\n"
            "Masks and curves act on pixel values in [0, 1] before the model's normalization. Baselines: a\n"
            "centred box covering 50% of the image, and a uniform-random map. Same seed, same numbers.\n"
            "MODEL: model.json or its folder; default: the shipped fashion-canvas model.\n\n" +
                std::string(kBoxesHelp));
  args.option("data", "SPEC", "fashion-canvas, a boxes file, or a folder holding boxes.csv", "fashion-canvas")
      .option("methods", "LIST", "comma-separated CAM methods", method_list)
      .option("n", "N", "images to evaluate (fashion-canvas: canvases 0..N-1; boxes file: first N lines, 0 = all)", "2000")
      .option("seed", "N", "canvas seed and random-map baseline seed", "0")
      .option("split", "NAME", "fashion-canvas split: test or train", "test")
      .option("fashion-mnist", "DIR", "folder of the Fashion-MNIST IDX files", default_fashion_mnist_dir())
      .option("steps", "N", "deletion/insertion steps (H*W/N pixels each)", "16")
      .option("layer", "NAMES", "comma-separated layers to explain, or auto", "auto")
      .option("batch", "N", "images per explanation batch", "16")
      .option("probe-batch", "N", "images per forward of the metric probes", "32")
      .option("json", "FILE", "also write the results as JSON")
      .option("threads", "N", "CPU threads (0 = all cores)", "0")
      .flag("no-baselines", "skip the centre-box and random-map baselines")
      .flag("quiet", "no progress bar");
  if (!args.parse(argv)) return 0;
  CAMRT_CHECK(args.positionals().size() <= 1, "camrt eval: expected at most one MODEL (see camrt eval --help)");
  const std::string model_path = args.positionals().empty() ? find_default_model() : resolve_model_path(args.positionals()[0]);
  auto model = std::make_shared<const Model>(load_model(model_path));
  Graph graph(model, fs::path(model_path).filename().string());
  CAMRT_CHECK(graph.input_ids().size() == 1, model_path << ": eval needs a model with one input");
  const Shape model_in = graph.model().inputs[0].shape;
  CAMRT_CHECK(model_in.size() == 4 && model_in[2] > 0 && model_in[3] > 0,
              model_path << ": eval needs an image input (B, C, H, W) with a fixed H and W, got " << shape_str(model_in));

  EvalOptions options;
  options.methods = split_list(args.get("methods"));
  for (const auto& m : options.methods) CAMRT_CHECK(is_cam_method(m), "--methods: unknown method '" << m << "'");
  options.layers = split_list(args.get("layer"));
  options.steps = args.get_int("steps");
  options.batch = args.get_int("batch");
  options.probe_batch = args.get_int("probe-batch");
  options.baselines = !args.has("no-baselines");
  const int64_t seed = args.get_int("seed"), n = args.get_int("n");
  CAMRT_CHECK(seed >= 0, "--seed must be non-negative");
  CAMRT_CHECK(n >= 0, "--n must be non-negative");
  CAMRT_CHECK(options.steps >= 2 && options.steps <= model_in[2] * model_in[3], "--steps must be between 2 and H*W");
  CAMRT_CHECK(options.batch >= 1 && options.probe_batch >= 1, "--batch and --probe-batch must be at least 1");
  options.seed = static_cast<uint64_t>(seed);

  std::unique_ptr<EvalDataset> data;
  const std::string spec = args.get("data");
  if (spec == "fashion-canvas") {
    CAMRT_CHECK(n >= 1, "--n must be at least 1 for fashion-canvas");
    CAMRT_CHECK(model_in[2] == kCanvasSize && model_in[3] == kCanvasSize,
                model_path << ": fashion-canvas images are " << kCanvasSize << "x" << kCanvasSize << ", the model takes "
                           << model_in[2] << "x" << model_in[3]);
    auto source = std::make_shared<const FashionMnist>(load_fashion_mnist(args.get("fashion-mnist"), args.get("split")));
    data = std::make_unique<FashionCanvasDataset>(source, n, options.seed, args.get("split"));
  } else {
    fs::path boxes = spec;
    if (fs::is_directory(boxes)) boxes /= "boxes.csv";
    CAMRT_CHECK(fs::exists(boxes), "--data " << spec << ": expected fashion-canvas, a boxes file or a folder holding boxes.csv ("
                                             << boxes.string() << " does not exist)");
    CAMRT_CHECK(model_in[2] == model_in[3], model_path << ": image folders need a square model input");
    const int64_t crop = model_in[2];
    const Preprocess& pre = model->preprocess;
    const int64_t resize = std::max(crop, pre.resize * crop / std::max<int64_t>(pre.crop, 1));  // as Session::explain_images
    data = std::make_unique<BoxFileDataset>(boxes.string(), model->labels, resize, crop, model_in[1], n);
  }

  ThreadPool pool(static_cast<int>(args.get_int("threads")));
  const auto start = std::chrono::steady_clock::now();
  const bool show = !args.has("quiet");
  options.progress = [&](int64_t done, int64_t total) {
    if (!show) return;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const int width = 30, filled = static_cast<int>(width * done / std::max<int64_t>(total, 1));
    const double eta = done > 0 ? elapsed * (total - done) / done : 0;
    std::fprintf(stderr, "\r[%s%s] %lld/%lld images  %.0fs  eta %.0fs ", std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), static_cast<long long>(done), static_cast<long long>(total), elapsed, eta);
    if (done == total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  };
  const EvalReport report = evaluate(graph, *data, options, pool);
  std::cout << "model: " << model_path << "\n" << report_to_markdown(report);
  std::cout.flush();
  if (args.has("json")) {
    nlohmann::json j = report_to_json(report);
    j["model"] = model_path;
    j["threads"] = pool.num_threads();
    const std::string text = j.dump(1) + "\n";
    write_file_atomic(args.get("json"), text.data(), text.size());
    std::fprintf(stderr, "wrote %s\n", args.get("json").c_str());
  }
  return 0;
}

}  // namespace camrt::cli
