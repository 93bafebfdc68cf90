// camrt explain: images (or a preprocessed .npy batch) in, top classes plus one heatmap overlay (PNG) and one
// float32 map (.npy) per input and method out, and a results.json describing the run. Several methods share
// the forward and backward passes; directories are processed in batches with a progress bar on stderr.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <set>
#include <sstream>

#include "engine/atomic_file.h"
#include "engine/cam/explainer.h"
#include "engine/image/colormap.h"
#include "engine/image/image.h"
#include "engine/image/png.h"
#include "engine/npy.h"
#include "engine/paths.h"
#include "kernels/cuda/runtime.h"
#include "tools/camrt/args.h"
#include "tools/camrt/commands.h"

namespace camrt::cli {

namespace fs = std::filesystem;

namespace {

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, sep);)
    if (!item.empty()) parts.push_back(item);
  return parts;
}

bool is_image_file(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp";
}

// One unit of work: an image file, or a whole .npy batch.
struct InputItem {
  fs::path path;
  bool is_npy = false;
  std::string name;  // the stem its outputs are named after, unique among the inputs (see unique_output_names)
};

// Output stems for the inputs: the sanitized file stem, with "-2", "-3", ... appended where two inputs would share
// one (cat.png and cat.jpg, a/cat.png and b/cat.png, names differing only in bytes sanitizing replaces), so no
// output overwrites another's. Compared in lower case: on case-insensitive file systems Cat and cat collide too.
void unique_output_names(std::vector<InputItem>& items) {
  std::set<std::string> used;
  auto lower = [](std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  };
  for (InputItem& item : items) {
    const std::string base = sanitize_file_name(item.path.stem().string());
    std::string name = base;
    for (int n = 2; used.count(lower(name)); ++n) name = base + "-" + std::to_string(n);
    used.insert(lower(name));
    item.name = name;
  }
}

// The picture the user sees for a preprocessed tensor: undo mean/std, clamp, uint8 (H, W, 3).
Image display_image(const float* x, int64_t C, int64_t H, int64_t W, const Preprocess& pre) {
  Image image;
  image.width = W;
  image.height = H;
  image.channels = 3;
  image.pixels.resize(static_cast<size_t>(H * W * 3));
  for (int64_t y = 0; y < H; ++y)
    for (int64_t xx = 0; xx < W; ++xx)
      for (int64_t c = 0; c < 3; ++c) {
        const int64_t src = std::min<int64_t>(c, C - 1);
        const float v = x[(src * H + y) * W + xx] * pre.std[src] + pre.mean[src];
        image.pixels[(y * W + xx) * 3 + c] = static_cast<uint8_t>(std::clamp(v, 0.f, 1.f) * 255.f + 0.5f);
      }
  return image;
}

void progress(int64_t done, int64_t total, double elapsed_s) {
  const int width = 30;
  const int filled = total ? static_cast<int>(width * done / total) : width;
  std::fprintf(stderr, "\r[%s%s] %lld/%lld images  %.1fs", std::string(filled, '#').c_str(),
               std::string(width - filled, '.').c_str(), static_cast<long long>(done), static_cast<long long>(total), elapsed_s);
  if (done == total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

}  // namespace

int run_explain(const std::vector<std::string>& argv) {
  std::string method_list;
  for (const auto& m : cam_method_names()) method_list += (method_list.empty() ? "" : ", ") + m;
  Args args("explain", "camrt explain MODEL.json INPUT... [--method m1,m2] [--target T] [--layer L] [--out DIR]",
            "Explains the network's decision for each INPUT (an image file, a directory of images, or a\n"
            "preprocessed float32 NCHW .npy batch) with class activation maps. Writes NAME.METHOD.png (overlay)\n"
            "and NAME.METHOD.npy (float32 map in [0, 1] at input resolution) per input and method, and\n"
            "results.json (classes, probabilities, timings).\n\nmethods: " + method_list);
  args.option("method", "LIST", "comma-separated methods", "gradcam")
      .option("target", "T", "class index, softmax:C, topK, predicted, region:C (with --mask) or similarity (with --concept)", "predicted")
      .option("mask", "FILE.npy", "region target: float32 mask over the output's spatial positions")
      .option("concept", "FILE.npy", "similarity target: float32 concept vector (embedding size)")
      .option("layer", "NAMES", "comma-separated node or tensor names, or auto", "auto")
      .option("out", "DIR", "output directory", "camrt-out")
      .option("batch", "N", "images per batch for directories", "8")
      .option("colormap", "NAME", "jet, turbo, viridis or inferno", "jet")
      .option("topk", "K", "classes to report per image", "5")
      .flag("aug-smooth", "average over flips and brightness variants (spec step 5)")
      .flag("eigen-smooth", "project weighted activations on their first principal component (spec step 6)")
      .flag("layercam-tanh", "LayerCAM's tanh scaling for shallow layers")
      .option("scorecam", "MODE", "Score-CAM weighting: default or paper", "default")
      .option("smooth-samples", "N", "Smooth Grad-CAM++ noisy copies", "8")
      .option("seed", "N", "seed of the Smooth Grad-CAM++ noise", "0")
      .option("chunk", "N", "images per extra pass: Score-CAM / Ablation-CAM forwards, Smooth Grad-CAM++ noisy copies, aug-smooth variants (0: from free memory on the GPU; on the CPU 16 forwards, one copy or variant)", "0")
      .option("resize", "N", "override the model's resize")
      .option("crop", "N", "override the model's crop")
      .option("threads", "N", "CPU threads (0 = all cores)", "0")
      .option("device", "D", "cpu, cuda, or auto (cuda when a GPU is present)", "auto")
      .option("precision", "P", "GPU convolutions/GEMMs: fp32, tf32 or fp16", "tf32");
  if (!args.parse(argv)) return 0;
  CAMRT_CHECK(args.positionals().size() >= 2, "camrt explain: expected MODEL.json and at least one INPUT (see camrt explain --help)");
  const std::string model_path = args.positionals()[0];
  auto model = std::make_shared<const Model>(load_model(model_path));
  Graph graph(model, fs::path(model_path).filename().string());
  Preprocess pre = model->preprocess;
  if (args.has("resize")) pre.resize = args.get_int("resize");
  if (args.has("crop")) pre.crop = args.get_int("crop");
  CAMRT_CHECK(pre.resize >= pre.crop && pre.crop > 0, "--crop must be positive and at most --resize");
  Colormap cmap;
  CAMRT_CHECK(colormap_from_name(args.get("colormap"), &cmap), "--colormap '" << args.get("colormap") << "': expected jet, turbo, viridis or inferno");
  CAMRT_CHECK(args.get("scorecam") == "default" || args.get("scorecam") == "paper", "--scorecam must be default or paper");

  ExplainOptions options;
  options.methods = split(args.get("method"), ',');
  for (const auto& m : options.methods) CAMRT_CHECK(is_cam_method(m), "--method '" << m << "': unknown (methods: " << method_list << ")");
  options.layers = split(args.get("layer"), ',');
  options.target = args.get("target");
  if (args.has("mask")) options.region_mask = std::make_shared<HostTensor>(read_npy(args.get("mask")));
  if (args.has("concept")) options.concept_vector = std::make_shared<HostTensor>(read_npy(args.get("concept")));
  options.aug_smooth = args.has("aug-smooth");
  options.eigen_smooth = args.has("eigen-smooth");
  options.layercam_tanh = args.has("layercam-tanh");
  options.scorecam_paper = args.get("scorecam") == "paper";
  options.smooth_samples = args.get_int("smooth-samples");
  options.seed = static_cast<uint64_t>(args.get_int("seed"));
  options.chunk = args.get_int("chunk");
  const int64_t batch_size = args.get_int("batch"), topk = args.get_int("topk");
  CAMRT_CHECK(batch_size >= 1 && topk >= 1, "--batch and --topk must be at least 1");

  // Collect inputs: files, directories (images inside, sorted), .npy batches.
  std::vector<InputItem> items;
  for (size_t i = 1; i < args.positionals().size(); ++i) {
    const fs::path p = args.positionals()[i];
    CAMRT_CHECK(fs::exists(p), p.string() << ": no such file or directory");
    if (fs::is_directory(p)) {
      std::vector<fs::path> files;
      for (const auto& e : fs::directory_iterator(p))
        if (e.is_regular_file() && is_image_file(e.path())) files.push_back(e.path());
      std::sort(files.begin(), files.end());
      CAMRT_CHECK(!files.empty(), p.string() << ": no PNG, JPEG or BMP images in this directory");
      for (const auto& f : files) items.push_back({f, false, ""});
    } else {
      items.push_back({p, p.extension() == ".npy", ""});
    }
  }
  unique_output_names(items);
  const fs::path out_dir = args.get("out");
  fs::create_directories(out_dir);
  ThreadPool pool(static_cast<int>(args.get_int("threads")));
  std::unique_ptr<CudaRuntime> cuda;
  if (resolve_device(args.get("device")) == Device::CUDA)
    cuda = std::make_unique<CudaRuntime>(0, parse_precision(args.get("precision")));
  const std::string input_name = graph.values()[graph.input_ids()[0]].name;
  const Shape model_in = graph.model().inputs[0].shape;
  CAMRT_CHECK(model_in.size() == 4, model_path << ": explain needs an image input (B, C, H, W)");
  if (model_in[2] > 0 && !args.has("crop")) pre.crop = model_in[2];
  const int64_t C = model_in[1];

  nlohmann::json results = nlohmann::json::object();
  results["model"] = model_path;
  results["methods"] = options.methods;
  results["target"] = options.target;
  results["images"] = nlohmann::json::array();
  results["timing_ms"] = nlohmann::json::object();
  std::map<int64_t, std::unique_ptr<Explainer>> explainers;  // per batch size
  auto explainer_for = [&](int64_t b) -> Explainer& {
    auto& e = explainers[b];
    if (!e) e = std::make_unique<Explainer>(graph, b, options, pool, cuda.get());
    return *e;
  };
  int64_t total_images = 0;
  for (const auto& item : items) total_images += item.is_npy ? 0 : 1;
  const auto start = std::chrono::steady_clock::now();
  int64_t done_images = 0;

  // Writes the outputs of one explained batch: names[b] is the stem of image b (npy_stem: one .npy batch).
  auto write_outputs = [&](const Explanation& ex, const HostTensor& x, const std::vector<std::string>& names,
                           const std::string& npy_stem) {
    const int64_t B = x.shape[0], H = x.shape[2], W = x.shape[3];
    const size_t T = ex.classes.size();
    for (const auto& r : ex.results) {
      const bool input_space = r.maps.shape.size() == 5;  // (T, B, C, H, W)
      const int64_t per_image = input_space ? C * H * W : H * W;
      for (size_t t = 0; t < T; ++t) {
        const std::string suffix = T > 1 ? "." + std::to_string(ex.classes[t][0]) : "";
        if (!npy_stem.empty()) {
          Shape shape = input_space ? Shape{B, C, H, W} : Shape{B, H, W};
          HostTensor maps(DType::F32, shape);
          std::memcpy(maps.bytes.data(), r.maps.f32() + t * B * per_image, maps.bytes.size());
          write_npy(safe_output_path(out_dir.string(), npy_stem + "." + r.method + suffix, ".npy"), maps);
        }
        for (int64_t b = 0; b < B; ++b) {
          const float* map = r.maps.f32() + (t * B + b) * per_image;
          const std::string target_suffix = T > 1 ? "." + std::to_string(ex.classes[t][b]) : "";
          if (npy_stem.empty()) {
            HostTensor one(DType::F32, input_space ? Shape{C, H, W} : Shape{H, W});
            std::memcpy(one.bytes.data(), map, one.bytes.size());
            write_npy(safe_output_path(out_dir.string(), names[b] + "." + r.method + target_suffix, ".npy"), one);
          }
          const Image shown = display_image(x.f32() + b * C * H * W, C, H, W, pre);
          const Image picture = input_space ? visualize_gradient(map, H, W) : overlay_cam(shown, map, cmap);
          write_png(safe_output_path(out_dir.string(), names[b] + "." + r.method + target_suffix, ".png"), picture);
        }
      }
    }
    const int64_t classes = ex.logits.shape.size() == 2 ? ex.logits.shape[1] : 0;  // no top-k for other outputs
    for (int64_t b = 0; b < B && classes == 0; ++b) {
      nlohmann::json entry;
      entry["name"] = names[b];
      entry["targets"] = nlohmann::json::array();
      for (size_t t = 0; t < T; ++t) entry["targets"].push_back(ex.classes[t][b]);
      results["images"].push_back(entry);
    }
    for (int64_t b = 0; b < B && classes > 0; ++b) {
      const float* z = ex.logits.f32() + b * classes;
      const float max_z = *std::max_element(z, z + classes);
      double sum = 0;
      for (int64_t c = 0; c < classes; ++c) sum += std::exp(double(z[c]) - max_z);
      std::vector<int64_t> order(static_cast<size_t>(classes));
      for (int64_t c = 0; c < classes; ++c) order[c] = c;
      const int64_t k = std::min(topk, classes);
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int64_t a, int64_t c) { return z[a] > z[c]; });
      nlohmann::json entry;
      entry["name"] = names[b];
      entry["top"] = nlohmann::json::array();
      std::printf("%s:", printable_name(names[b]).c_str());
      for (int64_t i = 0; i < k; ++i) {
        const int64_t c = order[i];
        const double p = std::exp(double(z[c]) - max_z) / sum;
        const std::string label = c < static_cast<int64_t>(model->labels.size()) ? model->labels[c] : "";
        entry["top"].push_back({{"class", c}, {"probability", p}, {"logit", z[c]}, {"label", label}});
        // Labels come from model.json: escaped, so a crafted one cannot send terminal control sequences.
        if (i < 3)
          std::printf("  %s%lld (%.3f)", label.empty() ? "class " : (printable_name(label) + " ").c_str(), static_cast<long long>(c), p);
      }
      std::printf("\n");
      entry["targets"] = nlohmann::json::array();
      for (size_t t = 0; t < T; ++t) entry["targets"].push_back(ex.classes[t][b]);
      results["images"].push_back(entry);
    }
    results["layers"] = ex.layers;
    for (const auto& [stage, ms] : ex.timings_ms) results["timing_ms"][stage] = results["timing_ms"].value(stage, 0.0) + ms;
  };

  for (size_t i = 0; i < items.size();) {
    if (items[i].is_npy) {
      const HostTensor x = read_npy(items[i].path.string());
      CAMRT_CHECK(x.dtype == DType::F32 && x.shape.size() == 4 && x.shape[1] == C,
                  items[i].path.string() << ": expected float32 (B, " << C << ", H, W), got " << dtype_name(x.dtype) << " " << shape_str(x.shape));
      CAMRT_CHECK(model_in[2] < 0 || (x.shape[2] == model_in[2] && x.shape[3] == model_in[3]),
                  items[i].path.string() << ": the model expects " << model_in[2] << "x" << model_in[3] << " inputs, got " << x.shape[2] << "x" << x.shape[3]);
      const std::string stem = items[i].name;
      std::vector<std::string> names;
      for (int64_t b = 0; b < x.shape[0]; ++b) names.push_back(x.shape[0] == 1 ? stem : stem + ".b" + std::to_string(b));
      write_outputs(explainer_for(x.shape[0]).run(x), x, names, stem);
      ++i;
      continue;
    }
    // A batch of consecutive image files.
    std::vector<const InputItem*> group;
    while (i < items.size() && !items[i].is_npy && static_cast<int64_t>(group.size()) < batch_size) group.push_back(&items[i++]);
    const int64_t B = static_cast<int64_t>(group.size());
    HostTensor x(DType::F32, {B, 3, pre.crop, pre.crop});
    std::vector<std::string> names;
    for (int64_t b = 0; b < B; ++b) {
      const Image image = read_image(group[b]->path.string());
      preprocess_image(x.f32() + b * 3 * pre.crop * pre.crop, image, pre.resize, pre.crop, pre.mean.data(), pre.std.data());
      names.push_back(group[b]->name);
    }
    CAMRT_CHECK(C == 3, model_path << ": image inputs need a 3-channel model, this one takes " << C);
    write_outputs(explainer_for(B).run(x), x, names, "");
    done_images += B;
    if (total_images > 1)
      progress(done_images, total_images, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  results["total_ms"] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  // File names and labels need not be UTF-8, which JSON requires: such bytes become U+FFFD instead of an error.
  const std::string text = results.dump(1, ' ', false, nlohmann::json::error_handler_t::replace);
  write_file_atomic((out_dir / "results.json").string(), text.data(), text.size());
  std::fprintf(stderr, "wrote %s\n", (out_dir / "results.json").string().c_str());
  return 0;
}

}  // namespace camrt::cli
