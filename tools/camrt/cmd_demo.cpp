// camrt demo: the README's first command. With no arguments it finds the shipped fashion-canvas model, explains
// a dozen test canvases (one of each class first) with seven CAM methods in one batch, and writes a contact
// sheet (rows = canvases, columns = input + one overlay per method, ground-truth box in green, the map's box in
// white, class, probability and IoU as text) plus results.json, then prints a short summary table.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include "engine/atomic_file.h"
#include "engine/cam/explainer.h"
#include "engine/eval/evaluator.h"
#include "engine/eval/metrics.h"
#include "engine/image/colormap.h"
#include "engine/image/contact_sheet.h"
#include "engine/image/png.h"
#include "tools/camrt/args.h"
#include "tools/camrt/commands.h"

namespace camrt::cli {

namespace fs = std::filesystem;

std::string resolve_model_path(const std::string& path) {
  const fs::path p = path;
  if (fs::is_directory(p)) {
    CAMRT_CHECK(fs::exists(p / "model.json"), path << ": folder without model.json");
    return (p / "model.json").string();
  }
  CAMRT_CHECK(fs::exists(p), path << ": no such model file");
  return path;
}

std::string find_default_model() {
  std::vector<fs::path> candidates;
  if (const char* env = std::getenv("CAMRT_MODEL"); env && *env) {
    // An explicit choice: use it or fail, never fall back silently to another model.
    return resolve_model_path(env);
  }
  char exe[4096];
  const ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len > 0) {
    const fs::path dir = fs::path(std::string(exe, static_cast<size_t>(len))).parent_path();
    candidates.push_back(dir / ".." / "weights" / "models" / "fashion-canvas");  // build tree next to the sources
    candidates.push_back(dir / ".." / "share" / "camrt" / "models" / "fashion-canvas");  // installed
  }
  // The source tree this binary was compiled from (__FILE__ is absolute under CMake).
  const fs::path here = __FILE__;
  if (here.is_absolute()) candidates.push_back(here.parent_path().parent_path().parent_path() / "weights" / "models" / "fashion-canvas");
  std::string looked;
  std::set<std::string> seen;  // the build tree's ../weights is often the source tree itself
  for (const auto& c : candidates) {
    if (fs::exists(c / "model.json")) return fs::weakly_canonical(c / "model.json").string();
    const std::string where = fs::weakly_canonical(c).string();
    if (seen.insert(where).second) looked += "\n  " + where;
  }
  CAMRT_FAIL("no default model: name one (a model.json or its folder) or set CAMRT_MODEL; looked for fashion-canvas/model.json in:" << looked);
}

namespace {

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) parts.push_back(item);
  return parts;
}

// Display names for the sheet's column titles.
std::string pretty_method(const std::string& m) {
  static const std::map<std::string, std::string> names = {
      {"gradcam", "Grad-CAM"}, {"gradcampp", "Grad-CAM++"}, {"xgradcam", "XGrad-CAM"}, {"layercam", "LayerCAM"},
      {"scorecam", "Score-CAM"}, {"eigencam", "Eigen-CAM"}, {"normgrad", "NormGrad"}, {"hirescam", "HiResCAM"},
      {"ablationcam", "Ablation-CAM"}, {"cam", "CAM"}, {"eigengradcam", "EigenGrad-CAM"}, {"gradcam-ew", "Grad-CAM EW"},
      {"smooth-gradcampp", "Smooth G-CAM++"}, {"gradcam-neg", "Grad-CAM neg"}};
  const auto it = names.find(m);
  return it == names.end() ? m : it->second;
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// The demo's canvases: the first canvas of each class (in canvas order), then the next ones not yet taken.
std::vector<int64_t> pick_canvases(const FashionCanvasDataset& data, int64_t count, std::vector<EvalSample>& samples) {
  std::vector<int64_t> picked;
  std::set<int64_t> classes_seen;
  std::vector<EvalSample> pool;
  const int64_t scan = std::min<int64_t>(data.size(), 200);  // 200 canvases hold every class many times over
  for (int64_t i = 0; i < scan && static_cast<int64_t>(picked.size()) < count; ++i) {
    EvalSample s = data.sample(i);
    if (classes_seen.insert(s.label).second) {
      picked.push_back(i);
      samples.push_back(std::move(s));
    }
  }
  for (int64_t i = 0; i < data.size() && static_cast<int64_t>(picked.size()) < count; ++i) {
    if (std::find(picked.begin(), picked.end(), i) != picked.end()) continue;
    picked.push_back(i);
    samples.push_back(data.sample(i));
  }
  return picked;
}

}  // namespace

int run_demo(const std::vector<std::string>& argv) {
  std::string method_list;
  for (const auto& m : default_eval_methods()) method_list += (method_list.empty() ? "" : ",") + m;
  Args args("demo", "camrt demo [--model DIR|model.json] [--out DIR] [--n 12]",
            "Explains a dozen fashion-canvas test images with the shipped model and seven CAM methods and writes\n"
            "DIR/contact_sheet.png (rows = images; columns = input, then one overlay per method; green = the\n"
            "ground-truth box, white = the box of the map's largest component above 15% of its maximum) and\n"
            "DIR/results.json, then prints a summary. The model is --model, else $CAMRT_MODEL, else the shipped\n"
            "weights/models/fashion-canvas next to the camrt executable, installed, or in the source tree.");
  args.option("model", "PATH", "model.json or its folder (default: the shipped fashion-canvas model)")
      .option("out", "DIR", "output folder", "camrt-demo")
      .option("n", "N", "canvases to explain", "12")
      .option("seed", "N", "canvas seed", "0")
      .option("methods", "LIST", "comma-separated CAM methods", method_list)
      .option("fashion-mnist", "DIR", "folder of the Fashion-MNIST IDX files", default_fashion_mnist_dir())
      .option("colormap", "NAME", "jet, turbo, viridis or inferno", "jet")
      .option("scale", "N", "upscaling of the canvases on the sheet", "2")
      .option("threads", "N", "CPU threads (0 = all cores)", "0");
  if (!args.parse(argv)) return 0;
  CAMRT_CHECK(args.positionals().empty(), "camrt demo takes no positional arguments (see camrt demo --help)");
  const auto start = std::chrono::steady_clock::now();
  const std::string model_path = args.has("model") ? resolve_model_path(args.get("model")) : find_default_model();
  auto model = std::make_shared<const Model>(load_model(model_path));
  Graph graph(model, fs::path(model_path).filename().string());
  const Shape model_in = model->inputs.at(0).shape;
  CAMRT_CHECK(model_in.size() == 4 && model_in[2] == kCanvasSize && model_in[3] == kCanvasSize,
              model_path << ": the demo needs a model taking " << kCanvasSize << "x" << kCanvasSize << " canvases, got " << shape_str(model_in));
  const int64_t n = args.get_int("n"), seed = args.get_int("seed"), scale = args.get_int("scale");
  CAMRT_CHECK(n >= 1 && n <= 1000, "--n must be between 1 and 1000");
  CAMRT_CHECK(seed >= 0, "--seed must be non-negative");
  CAMRT_CHECK(scale >= 1 && scale <= 8, "--scale must be between 1 and 8");
  Colormap cmap;
  CAMRT_CHECK(colormap_from_name(args.get("colormap"), &cmap), "--colormap '" << args.get("colormap") << "': expected jet, turbo, viridis or inferno");
  ExplainOptions options;
  options.methods = split_list(args.get("methods"));
  CAMRT_CHECK(!options.methods.empty(), "--methods: no method given");
  for (const auto& m : options.methods) {
    CAMRT_CHECK(is_cam_method(m), "--methods: unknown method '" << m << "'");
    CAMRT_CHECK(m != "guided-backprop" && m != "guided-gradcam", "--methods: " << m << " has no map to overlay in the demo");
  }
  options.chunk = 32;

  auto source = std::make_shared<const FashionMnist>(load_fashion_mnist(args.get("fashion-mnist"), "test"));
  FashionCanvasDataset data(source, source->count, static_cast<uint64_t>(seed), "test");
  std::vector<EvalSample> samples;
  const std::vector<int64_t> picked = pick_canvases(data, n, samples);
  const int64_t B = static_cast<int64_t>(picked.size()), C = model_in[1], H = kCanvasSize, W = kCanvasSize, plane = H * W;
  HostTensor x(DType::F32, {B, C, H, W});
  std::vector<float> pixels(static_cast<size_t>(C * plane));
  for (int64_t b = 0; b < B; ++b) {
    sample_pixels(pixels.data(), samples[b].image, C);
    normalize_pixels(x.f32() + b * C * plane, pixels.data(), C, plane, model->preprocess.mean.data(), model->preprocess.std.data());
  }

  ThreadPool pool(static_cast<int>(args.get_int("threads")));
  Explainer explainer(graph, B, options, pool);
  const Explanation ex = explainer.run(x);
  const int64_t classes = ex.logits.shape[1];
  const std::vector<std::string>& names = model->labels.size() == size_t(classes) ? model->labels : fashion_mnist_classes();
  auto class_name = [&](int64_t c) { return c < static_cast<int64_t>(names.size()) ? names[c] : "class " + std::to_string(c); };

  // Per image: prediction; per method: box, IoU, pointing.
  const uint8_t green[3] = {0, 230, 0}, white[3] = {255, 255, 255};
  std::vector<std::vector<SheetCell>> rows;
  nlohmann::json images = nlohmann::json::array();
  const size_t M = options.methods.size();
  std::vector<double> iou_sum(M, 0);
  std::vector<int64_t> loc_hits(M, 0), point_hits(M, 0);
  int64_t correct = 0;
  auto sheet_box = [](const Box& b, const uint8_t rgb[3]) {
    SheetBox s;
    s.x0 = b.x0, s.y0 = b.y0, s.x1 = b.x1, s.y1 = b.y1;
    std::copy(rgb, rgb + 3, s.rgb);
    return s;
  };
  auto box_json = [](const Box& b) { return nlohmann::json::array({b.x0, b.y0, b.x1, b.y1}); };
  for (int64_t b = 0; b < B; ++b) {
    const EvalSample& s = samples[b];
    const float* z = ex.logits.f32() + b * classes;
    const int64_t pred = ex.classes[0][b];
    const float max_z = *std::max_element(z, z + classes);
    double sum = 0;
    for (int64_t j = 0; j < classes; ++j) sum += std::exp(double(z[j]) - max_z);
    const double prob = std::exp(double(z[pred]) - max_z) / sum;
    correct += pred == s.label;
    const Image shown = to_rgb(s.image);
    std::vector<SheetCell> row;
    SheetCell input;
    input.image = shown;
    input.boxes = {sheet_box(s.box, green)};
    input.lines = {class_name(pred) + " " + fixed(prob, 2), std::string(pred == s.label ? "true " : "TRUE ") + class_name(s.label)};
    row.push_back(std::move(input));
    nlohmann::json entry = {{"canvas", picked[b]},          {"label", s.label},
                            {"label_name", class_name(s.label)}, {"predicted", pred},
                            {"predicted_name", class_name(pred)}, {"probability", prob},
                            {"box", box_json(s.box)},         {"methods", nlohmann::json::object()}};
    for (size_t m = 0; m < M; ++m) {
      const float* map = ex.results[m].maps.f32() + b * plane;  // target 0 of (1, B, H, W)
      const Box box = largest_component_box(map, H, W);
      const double iou = box_iou(box, s.box);
      const bool point = pointing_hit(map, H, W, s.box);
      iou_sum[m] += iou;
      loc_hits[m] += iou >= kLocIouThreshold && pred == s.label;
      point_hits[m] += point;
      SheetCell cell;
      cell.image = overlay_cam(shown, map, cmap);
      cell.boxes = {sheet_box(s.box, green), sheet_box(box, white)};
      cell.lines = {"IoU " + fixed(iou, 2) + (point ? " in" : " out")};
      row.push_back(std::move(cell));
      entry["methods"][options.methods[m]] = {{"box", box_json(box)}, {"iou", iou}, {"pointing", point}};
    }
    rows.push_back(std::move(row));
    images.push_back(std::move(entry));
  }

  std::vector<std::string> titles = {"input"};
  for (const auto& m : options.methods) titles.push_back(pretty_method(m));
  ContactSheetOptions sheet_options;
  sheet_options.scale = static_cast<int>(scale);
  sheet_options.text_scale = scale >= 2 ? 2 : 1;
  sheet_options.caption = {
      "green: ground truth; white: box of the map's largest component >= 15% of its max",
      "IoU: white vs green box; in/out: the map's maximum inside/outside the green box (pointing game)",
      "input column: predicted class and probability, then the true class (TRUE when the prediction is wrong)"};
  const Image sheet = compose_contact_sheet(rows, titles, sheet_options);

  const fs::path out_dir = args.get("out");
  fs::create_directories(out_dir);
  const fs::path png = out_dir / "contact_sheet.png";
  write_png(png.string(), sheet);
  const double total_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();

  nlohmann::json results;
  results["model"] = model_path;
  results["data"] = data.description();
  results["methods"] = options.methods;
  results["layers"] = ex.layers;
  results["images"] = std::move(images);
  results["classification_correct"] = correct;
  results["timing_ms"] = ex.timings_ms;
  results["total_ms"] = total_ms;
  results["contact_sheet"] = png.filename().string();
  nlohmann::json summary = nlohmann::json::object();
  for (size_t m = 0; m < M; ++m)
    summary[options.methods[m]] = {{"mean_iou", iou_sum[m] / B}, {"loc_top1_hits", loc_hits[m]}, {"pointing_hits", point_hits[m]},
                                   {"ms_per_image", ex.timings_ms.count(options.methods[m]) ? ex.timings_ms.at(options.methods[m]) / B : 0.0}};
  results["summary"] = summary;
  const std::string text = results.dump(1) + "\n";
  write_file_atomic((out_dir / "results.json").string(), text.data(), text.size());

  // Summary: shared passes once, then each method's own cost.
  const double forward_ms = ex.timings_ms.count("forward") ? ex.timings_ms.at("forward") : 0.0;
  const double backward_ms = ex.timings_ms.count("backward") ? ex.timings_ms.at("backward") : 0.0;
  std::printf("%s on %lld fashion-canvas test images: %lld/%lld classified correctly (layer %s)\n\n", fs::path(model_path).parent_path().filename().string().c_str(),
              static_cast<long long>(B), static_cast<long long>(correct), static_cast<long long>(B), ex.layers.empty() ? "?" : ex.layers[0].c_str());
  std::printf("%-14s %9s %11s %10s %12s\n", "method", "mean IoU", "loc top-1", "pointing", "ms/image");
  for (size_t m = 0; m < M; ++m)
    std::printf("%-14s %9.2f %8lld/%-2lld %7lld/%-2lld %12.2f\n", pretty_method(options.methods[m]).c_str(), iou_sum[m] / B,
                static_cast<long long>(loc_hits[m]), static_cast<long long>(B), static_cast<long long>(point_hits[m]),
                static_cast<long long>(B), summary[options.methods[m]]["ms_per_image"].get<double>());
  std::printf("\n(shared forward %.2f ms and backward %.2f ms per image not included; total %.1f s)\n", forward_ms / B, backward_ms / B,
              total_ms / 1000.0);
  std::printf("contact sheet: %s\nresults:       %s\n", png.string().c_str(), (out_dir / "results.json").string().c_str());
  return 0;
}

}  // namespace camrt::cli
