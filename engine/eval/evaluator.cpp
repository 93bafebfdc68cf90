// camrt's evaluation loop (engine/eval/evaluator.h). Per batch of images: one predictor forward for the
// classes, one Explainer run per method (timed alone, so ms_per_image is what that method costs), then every
// metric probe of every map source (methods and baselines) queued as jobs and pushed through one Executor in
// chunks of probe_batch images. The deletion curve's end points (the image, a black image) and the insertion
// curve's (the blurred image, the image) are the same for every map, so they are probed once per image.
#include "engine/eval/evaluator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/cam/explainer.h"
#include "engine/executor.h"

namespace camrt {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

bool parse_int64(const std::string& s, int64_t* value) {
  if (s.empty()) return false;
  size_t used = 0;
  try {
    *value = std::stoll(s, &used);
  } catch (...) {
    return false;
  }
  return used == s.size();
}

// torchvision's CenterCrop offset along one side; the same rule as center_crop in engine/image/image.cpp
// (Python's round-half-to-even of (size - crop) / 2, and padding split (crop - size) // 2 before).
int64_t crop_offset(int64_t size, int64_t crop) {
  if (crop > size) return -((crop - size) / 2);
  const int64_t d = size - crop;
  int64_t half = d / 2;
  if (d % 2 == 1 && half % 2 == 1) half += 1;
  return half;
}

double softmax_probability(const float* z, int64_t classes, int64_t c) {
  const float max_z = *std::max_element(z, z + classes);
  double sum = 0;
  for (int64_t j = 0; j < classes; ++j) sum += std::exp(double(z[j]) - max_z);
  return std::exp(double(z[c]) - max_z) / sum;
}

// One map source: a CAM method or a baseline, with its running sums.
struct Source {
  std::string name;
  bool baseline = false;
  std::unique_ptr<Explainer> explainer;  // methods only
  int64_t n = 0, loc_hits = 0, point_hits = 0;
  double iou_sum = 0, deletion_sum = 0, insertion_sum = 0, explain_ms = 0;
  ConfidenceStats confidence;
  MethodScores scores() const {
    MethodScores s;
    s.n = n;
    if (n == 0) return s;
    s.loc_top1 = double(loc_hits) / n;
    s.pointing = double(point_hits) / n;
    s.avg_drop = confidence.average_drop();
    s.inc_conf = confidence.increase_in_confidence();
    s.deletion_auc = deletion_sum / n;
    s.insertion_auc = insertion_sum / n;
    s.mean_iou = iou_sum / n;
    s.ms_per_image = explain_ms / n;
    return s;
  }
};

// A probe input: kind Mask = pixels * map; Deletion / Insertion step s (1..steps-1) of the source's ranking;
// Black and Blur are the shared curve end points of image b (source unused).
struct Job {
  enum Kind { Mask, Deletion, Insertion, Black, Blur } kind;
  int source = -1;
  int64_t image = 0;
  int64_t step = 0;
};

}  // namespace

// ------------------------------------------------------------------------------------------------------------
// Data sets
// ------------------------------------------------------------------------------------------------------------

FashionCanvasDataset::FashionCanvasDataset(std::shared_ptr<const FashionMnist> source, int64_t count, uint64_t seed,
                                           std::string split)
    : source_(std::move(source)), count_(count), seed_(seed), split_(std::move(split)) {
  CAMRT_CHECK(source_ && source_->count > 0, "fashion-canvas: empty Fashion-MNIST source");
  CAMRT_CHECK(count_ >= 1, "fashion-canvas: the number of canvases must be at least 1, got " << count_);
}

EvalSample FashionCanvasDataset::sample(int64_t index) const {
  CAMRT_CHECK(index >= 0 && index < count_, "fashion-canvas: canvas " << index << " out of range (" << count_ << ")");
  Canvas canvas = make_fashion_canvas(*source_, split_, index, seed_);
  EvalSample s;
  s.image.width = kCanvasSize;
  s.image.height = kCanvasSize;
  s.image.channels = 1;
  s.image.pixels = std::move(canvas.pixels);
  s.box = canvas.box;
  s.label = canvas.label;
  s.name = split_ + "-" + std::to_string(index);
  return s;
}

std::string FashionCanvasDataset::description() const {
  return "fashion-canvas " + split_ + ", seed " + std::to_string(seed_);
}

Box transform_box(const Box& box, int64_t width, int64_t height, int64_t resize, int64_t crop) {
  int64_t rw = 0, rh = 0;
  resized_size(&rw, &rh, width, height, resize);
  const double sx = double(rw) / double(width), sy = double(rh) / double(height);
  // Continuous extent [x0, x1 + 1) scaled; every output pixel it overlaps is in the box.
  int64_t x0 = static_cast<int64_t>(std::floor(box.x0 * sx)), x1 = static_cast<int64_t>(std::ceil((box.x1 + 1) * sx)) - 1;
  int64_t y0 = static_cast<int64_t>(std::floor(box.y0 * sy)), y1 = static_cast<int64_t>(std::ceil((box.y1 + 1) * sy)) - 1;
  const int64_t left = crop_offset(rw, crop), top = crop_offset(rh, crop);
  x0 = std::max<int64_t>(x0 - left, 0), x1 = std::min<int64_t>(x1 - left, crop - 1);
  y0 = std::max<int64_t>(y0 - top, 0), y1 = std::min<int64_t>(y1 - top, crop - 1);
  if (x1 < x0 || y1 < y0) return Box{};
  return Box{static_cast<int>(x0), static_cast<int>(y0), static_cast<int>(x1), static_cast<int>(y1)};
}

BoxFileDataset::BoxFileDataset(const std::string& boxes_file, const std::vector<std::string>& labels, int64_t resize,
                               int64_t crop, int64_t channels, int64_t limit)
    : boxes_file_(boxes_file), resize_(resize), crop_(crop), channels_(channels) {
  CAMRT_CHECK(channels == 1 || channels == 3, boxes_file << ": the model must take 1 or 3 input channels, not " << channels);
  CAMRT_CHECK(resize >= crop && crop > 0, boxes_file << ": resize " << resize << " must be at least crop " << crop << " > 0");
  std::ifstream in(boxes_file);
  CAMRT_CHECK(in, boxes_file << ": cannot open the boxes file");
  const fs::path root = fs::path(boxes_file).parent_path();
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    const std::string t = trim(line);
    if (t.empty() || t[0] == '#') continue;
    std::vector<std::string> f;
    std::stringstream ss(t);
    for (std::string item; std::getline(ss, item, ',');) f.push_back(trim(item));
    if (!t.empty() && t.back() == ',') f.push_back("");
    int64_t v = 0;
    if (entries_.empty() && f.size() >= 3 && !parse_int64(f[2], &v)) continue;  // header line
    CAMRT_CHECK(f.size() == 6, boxes_file << ":" << number << ": expected 6 comma-separated fields path,label,x0,y0,x1,y1, got " << f.size());
    Entry e;
    e.line = number;
    e.path = fs::path(f[0]).is_absolute() ? f[0] : (root / f[0]).string();
    if (!parse_int64(f[1], &e.label)) {
      const auto it = std::find(labels.begin(), labels.end(), f[1]);
      CAMRT_CHECK(it != labels.end(), boxes_file << ":" << number << ": label '" << f[1] << "' is neither a class index nor one of the model's label names");
      e.label = it - labels.begin();
    }
    CAMRT_CHECK(e.label >= 0 && (labels.empty() || e.label < static_cast<int64_t>(labels.size())),
                boxes_file << ":" << number << ": class " << e.label << " out of range (the model has " << labels.size() << " labels)");
    int64_t* coords[4] = {&e.x0, &e.y0, &e.x1, &e.y1};
    for (int k = 0; k < 4; ++k)
      CAMRT_CHECK(parse_int64(f[2 + k], coords[k]) && *coords[k] >= 0,
                  boxes_file << ":" << number << ": box coordinate '" << f[2 + k] << "' is not a non-negative integer");
    CAMRT_CHECK(e.x0 <= e.x1 && e.y0 <= e.y1, boxes_file << ":" << number << ": box needs x0 <= x1 and y0 <= y1 (inclusive corners)");
    entries_.push_back(std::move(e));
    if (limit > 0 && static_cast<int64_t>(entries_.size()) >= limit) break;
  }
  CAMRT_CHECK(!entries_.empty(), boxes_file << ": no boxes (format: path,label,x0,y0,x1,y1 per line)");
}

EvalSample BoxFileDataset::sample(int64_t index) const {
  const Entry& e = entries_.at(static_cast<size_t>(index));
  const Image original = read_image(e.path);
  CAMRT_CHECK(e.x1 < original.width && e.y1 < original.height,
              boxes_file_ << ":" << e.line << ": box " << e.x0 << "," << e.y0 << "," << e.x1 << "," << e.y1 << " lies outside the "
                          << original.width << "x" << original.height << " image " << e.path);
  EvalSample s;
  s.box = transform_box(Box{int(e.x0), int(e.y0), int(e.x1), int(e.y1)}, original.width, original.height, resize_, crop_);
  CAMRT_CHECK(s.box.area() > 0, boxes_file_ << ":" << e.line << ": the box lies outside the centre crop the model sees");
  s.image = resize_and_crop(original, resize_, crop_);
  s.label = e.label;
  s.name = fs::path(e.path).filename().string();
  return s;
}

// ------------------------------------------------------------------------------------------------------------
// Pixels
// ------------------------------------------------------------------------------------------------------------

const std::vector<std::string>& default_eval_methods() {
  static const std::vector<std::string> methods = {"gradcam", "gradcampp", "xgradcam", "layercam", "scorecam", "eigencam", "normgrad"};
  return methods;
}

void sample_pixels(float* out, const Image& image, int64_t channels) {
  const int64_t plane = image.width * image.height, ic = image.channels;
  CAMRT_CHECK(ic == 1 || ic >= 3, "evaluation image with " << ic << " channels");
  for (int64_t i = 0; i < plane; ++i) {
    const uint8_t* p = image.pixels.data() + i * ic;
    if (channels == 1) {
      // ITU-R 601 luma, PIL's convert("L"): (299 R + 587 G + 114 B) / 1000, rounded.
      const double v = ic == 1 ? p[0] : std::floor((299.0 * p[0] + 587.0 * p[1] + 114.0 * p[2]) / 1000.0 + 0.5);
      out[i] = static_cast<float>(v / 255.0);
    } else {
      for (int64_t c = 0; c < channels; ++c) out[c * plane + i] = p[ic == 1 ? 0 : std::min<int64_t>(c, 2)] / 255.f;
    }
  }
}

void normalize_pixels(float* out, const float* pixels, int64_t channels, int64_t plane, const float* mean, const float* std) {
  for (int64_t c = 0; c < channels; ++c) {
    const int64_t k = std::min<int64_t>(c, 2);
    for (int64_t i = 0; i < plane; ++i) out[c * plane + i] = (pixels[c * plane + i] - mean[k]) / std[k];
  }
}

// ------------------------------------------------------------------------------------------------------------
// The loop
// ------------------------------------------------------------------------------------------------------------

EvalReport evaluate(const Graph& graph, const EvalDataset& data, const EvalOptions& options, ThreadPool& pool) {
  const auto start = Clock::now();
  CAMRT_CHECK(graph.input_ids().size() == 1 && graph.output_ids().size() >= 1, graph.source_name() << ": eval needs a model with one input");
  CAMRT_CHECK(options.batch >= 1 && options.probe_batch >= 1 && options.steps >= 1 && options.explain_chunk >= 1,
              "eval: batch, probe batch, steps and chunk must be positive");
  CAMRT_CHECK(!options.methods.empty() || options.baselines, "eval: nothing to evaluate (no methods, no baselines)");
  const int64_t N = data.size(), B = std::min(options.batch, N), S = options.steps;
  const std::string input_name = graph.values()[graph.input_ids()[0]].name;
  const Shape in_shape = graph.input_shapes_for_batch(B).at(input_name);
  CAMRT_CHECK(in_shape.size() == 4, graph.source_name() << ": eval needs an image input (B, C, H, W), got " << shape_str(in_shape));
  const int64_t C = in_shape[1], H = in_shape[2], W = in_shape[3], plane = H * W, per_image = C * plane;
  const Preprocess& pre = graph.model().preprocess;
  for (int64_t c = 0; c < std::min<int64_t>(C, 3); ++c)
    CAMRT_CHECK(pre.std[c] != 0.f, graph.source_name() << ": preprocessing std of channel " << c << " is 0");

  Executor predictor(graph, graph.input_shapes_for_batch(B), pool);
  Executor probe(graph, graph.input_shapes_for_batch(options.probe_batch), pool);
  const Shape out_shape = predictor.descs()[graph.output_ids()[0]].shape;
  CAMRT_CHECK(out_shape.size() == 2, graph.source_name() << ": eval needs (B, classes) logits, got " << shape_str(out_shape));
  const int64_t classes = out_shape[1];

  std::vector<Source> sources;
  for (const auto& method : options.methods) {
    CAMRT_CHECK(is_cam_method(method), "eval: unknown method '" << method << "'");
    CAMRT_CHECK(method != "guided-backprop" && method != "guided-gradcam",
                "eval: " << method << " gives input-space gradients, not a map; it cannot be scored by these metrics");
    ExplainOptions eo;
    eo.methods = {method};
    eo.layers = options.layers;
    eo.chunk = options.explain_chunk;
    eo.seed = options.seed;
    Source s;
    s.name = method;
    s.explainer = std::make_unique<Explainer>(graph, B, eo, pool);
    sources.push_back(std::move(s));
  }
  const int center_index = static_cast<int>(sources.size());
  if (options.baselines) {
    Source center, random;
    center.name = "center_box", center.baseline = true;
    random.name = "random_map", random.baseline = true;
    sources.push_back(std::move(center));
    sources.push_back(std::move(random));
  }
  const Box centred = center_box(H, W, options.center_box_fraction);
  const int M = static_cast<int>(sources.size());

  // Per batch buffers.
  HostTensor x(DType::F32, {B, C, H, W});                               // normalized input
  std::vector<float> pixels(static_cast<size_t>(B * per_image));        // (B, C, H, W) in [0, 1]
  std::vector<float> blurred(static_cast<size_t>(B * per_image));       // insertion start
  std::vector<float> zeros(static_cast<size_t>(per_image), 0.f);        // deletion finish
  std::vector<float> maps(static_cast<size_t>(M * B * plane));          // (M, B, H, W)
  std::vector<std::vector<int64_t>> order(static_cast<size_t>(M * B));  // ranking per (source, image)
  std::vector<double> results;                                          // per job
  int64_t correct = 0;
  std::vector<EvalSample> samples(static_cast<size_t>(B));
  std::vector<int64_t> predicted(static_cast<size_t>(B));
  std::vector<double> y_clean(static_cast<size_t>(B));
  const float* mean = pre.mean.data();
  const float* stdev = pre.std.data();

  Tensor probe_in = probe.input(input_name);
  for (int64_t i0 = 0; i0 < N; i0 += B) {
    const int64_t real = std::min(B, N - i0);  // the last batch repeats its last image to fill the plan
    pool.parallel_for(B, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        samples[b] = data.sample(i0 + std::min(b, real - 1));
        const EvalSample& s = samples[b];
        CAMRT_CHECK(s.image.width == W && s.image.height == H,
                    s.name << ": image is " << s.image.width << "x" << s.image.height << ", the model expects " << W << "x" << H);
        sample_pixels(pixels.data() + b * per_image, s.image, C);
        normalize_pixels(x.f32() + b * per_image, pixels.data() + b * per_image, C, plane, mean, stdev);
        gaussian_blur(blurred.data() + b * per_image, pixels.data() + b * per_image, C, H, W, options.blur_sigma);
      }
    });
    predictor.set_input(input_name, x);
    predictor.forward();
    const Tensor logits = predictor.value(graph.output_ids()[0]);
    for (int64_t b = 0; b < real; ++b) {
      const float* z = logits.f32() + b * classes;
      predicted[b] = std::max_element(z, z + classes) - z;
      y_clean[b] = softmax_probability(z, classes, predicted[b]);
      correct += predicted[b] == samples[b].label;
    }
    // Maps of every source.
    for (int m = 0; m < M; ++m) {
      Source& src = sources[m];
      float* out = maps.data() + m * B * plane;
      if (!src.baseline) {
        const auto t0 = Clock::now();
        const Explanation ex = src.explainer->run(x);
        src.explain_ms += std::chrono::duration<double, std::milli>(Clock::now() - t0).count() * real / B;
        const HostTensor& r = ex.results[0].maps;  // (1, B, H, W)
        CAMRT_CHECK(r.numel() == B * plane, "eval: " << src.name << " returned " << shape_str(r.shape) << " maps");
        std::memcpy(out, r.f32(), static_cast<size_t>(B * plane) * sizeof(float));
      } else {
        const auto t0 = Clock::now();
        for (int64_t b = 0; b < B; ++b) {
          if (m == center_index) box_map(out + b * plane, H, W, centred);
          else random_map(out + b * plane, plane, options.seed, static_cast<uint64_t>(i0 + b));
        }
        src.explain_ms += std::chrono::duration<double, std::milli>(Clock::now() - t0).count() * real / B;
      }
    }
    // Localization and pointing; rankings for the curves.
    pool.parallel_for(M * real, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) order[j] = rank_pixels(maps.data() + (j / real * B + j % real) * plane, plane);
    });
    for (int m = 0; m < M; ++m) {
      Source& src = sources[m];
      for (int64_t b = 0; b < real; ++b) {
        const float* map = maps.data() + (m * B + b) * plane;
        const Box& truth = samples[b].box;
        const Box box = m == center_index ? centred : largest_component_box(map, H, W, options.loc_fraction);
        const double iou = box_iou(box, truth);
        const bool point = m == center_index ? box_contains(truth, W / 2, H / 2) : pointing_hit(map, H, W, truth);
        ++src.n;
        src.iou_sum += iou;
        src.loc_hits += iou >= kLocIouThreshold && predicted[b] == samples[b].label;
        src.point_hits += point;
      }
    }
    // Probe jobs: shared end points first, then per source: mask, deletion and insertion interior steps.
    std::vector<Job> jobs;
    for (int64_t b = 0; b < real; ++b) {
      jobs.push_back({Job::Black, -1, b, 0});
      jobs.push_back({Job::Blur, -1, b, 0});
    }
    for (int m = 0; m < M; ++m)
      for (int64_t b = 0; b < real; ++b) {
        jobs.push_back({Job::Mask, m, b, 0});
        for (int64_t s = 1; s < S; ++s) jobs.push_back({Job::Deletion, m, b, s});
        for (int64_t s = 1; s < S; ++s) jobs.push_back({Job::Insertion, m, b, s});
      }
    results.assign(jobs.size(), 0.0);
    const int64_t P = options.probe_batch, J = static_cast<int64_t>(jobs.size());
    for (int64_t k0 = 0; k0 < J; k0 += P) {
      const int64_t n = std::min(P, J - k0);
      pool.parallel_for(n, [&](int64_t a, int64_t e) {
        std::vector<float> scratch(static_cast<size_t>(per_image));
        for (int64_t k = a; k < e; ++k) {
          const Job& job = jobs[k0 + k];
          const float* px = pixels.data() + job.image * per_image;
          switch (job.kind) {
            case Job::Black: std::fill(scratch.begin(), scratch.end(), 0.f); break;
            case Job::Blur: std::memcpy(scratch.data(), blurred.data() + job.image * per_image, scratch.size() * sizeof(float)); break;
            case Job::Mask: mask_image(scratch.data(), px, maps.data() + (job.source * B + job.image) * plane, C, H, W); break;
            case Job::Deletion:
            case Job::Insertion: {
              const bool del = job.kind == Job::Deletion;
              const auto& rank = order[job.source * real + job.image];
              causal_step_image(scratch.data(), del ? px : blurred.data() + job.image * per_image, del ? zeros.data() : px, rank.data(),
                                pixels_at_step(job.step, S, plane), C, H, W);
              break;
            }
          }
          normalize_pixels(probe_in.f32() + k * per_image, scratch.data(), C, plane, mean, stdev);
        }
      });
      // Unused slots of the last chunk keep stale inputs: their outputs are never read.
      probe.forward();
      const Tensor out = probe.value(graph.output_ids()[0]);
      for (int64_t k = 0; k < n; ++k) results[k0 + k] = softmax_probability(out.f32() + k * classes, classes, predicted[jobs[k0 + k].image]);
    }
    // Assemble the curves: jobs are in the order built above.
    std::vector<double> black(static_cast<size_t>(real)), blur(static_cast<size_t>(real));
    size_t k = 0;
    for (int64_t b = 0; b < real; ++b) black[b] = results[k++], blur[b] = results[k++];
    std::vector<double> deletion(static_cast<size_t>(S + 1)), insertion(static_cast<size_t>(S + 1));
    for (int m = 0; m < M; ++m)
      for (int64_t b = 0; b < real; ++b) {
        Source& src = sources[m];
        src.confidence.add(y_clean[b], results[k++]);
        deletion[0] = y_clean[b], deletion[S] = black[b];
        insertion[0] = blur[b], insertion[S] = y_clean[b];
        for (int64_t s = 1; s < S; ++s) deletion[s] = results[k++];
        for (int64_t s = 1; s < S; ++s) insertion[s] = results[k++];
        src.deletion_sum += trapezoid_auc(deletion.data(), S + 1);
        src.insertion_sum += trapezoid_auc(insertion.data(), S + 1);
      }
    if (options.progress) options.progress(i0 + real, N);
  }

  EvalReport report;
  report.n = N;
  report.seed = options.seed;
  report.steps = S;
  report.data = data.description();
  report.classification_top1 = double(correct) / N;
  for (const Source& s : sources) (s.baseline ? report.baselines : report.methods).emplace_back(s.name, s.scores());
  report.total_s = std::chrono::duration<double>(Clock::now() - start).count();
  return report;
}

nlohmann::json report_to_json(const EvalReport& report) {
  auto scores = [](const MethodScores& s) {
    return nlohmann::json{{"loc_top1", s.loc_top1},         {"pointing", s.pointing},          {"avg_drop", s.avg_drop},
                          {"inc_conf", s.inc_conf},         {"deletion_auc", s.deletion_auc}, {"insertion_auc", s.insertion_auc},
                          {"mean_iou", s.mean_iou},         {"ms_per_image", s.ms_per_image}};
  };
  nlohmann::json j;
  j["n"] = report.n;
  j["seed"] = report.seed;
  j["steps"] = report.steps;
  j["data"] = report.data;
  j["classification_top1"] = report.classification_top1;
  j["methods"] = nlohmann::json::object();
  for (const auto& [name, s] : report.methods) j["methods"][name] = scores(s);
  j["baselines"] = nlohmann::json::object();
  for (const auto& [name, s] : report.baselines) j["baselines"][name] = scores(s);
  j["total_s"] = report.total_s;
  return j;
}

std::string report_to_markdown(const EvalReport& report) {
  std::ostringstream out;
  char line[512];
  std::snprintf(line, sizeof line, "%s: n = %lld, seed %llu, classification top-1 %.1f%%, %lld deletion/insertion steps\n\n",
                report.data.c_str(), static_cast<long long>(report.n), static_cast<unsigned long long>(report.seed),
                100.0 * report.classification_top1, static_cast<long long>(report.steps));
  out << line;
  out << "| method | loc top-1 % | pointing % | mean IoU | avg drop % (lower) | inc conf % | deletion AUC (lower) | insertion AUC | ms/image |\n";
  out << "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  auto row = [&](const std::string& name, const MethodScores& s, bool baseline) {
    char ms[32] = "-";
    if (!baseline) std::snprintf(ms, sizeof ms, "%.2f", s.ms_per_image);
    std::snprintf(line, sizeof line, "| %s | %.1f | %.1f | %.3f | %.1f | %.1f | %.3f | %.3f | %s |\n", name.c_str(), 100 * s.loc_top1,
                  100 * s.pointing, s.mean_iou, 100 * s.avg_drop, 100 * s.inc_conf, s.deletion_auc, s.insertion_auc, ms);
    out << line;
  };
  for (const auto& [name, s] : report.methods) row(name, s, false);
  for (const auto& [name, s] : report.baselines) row("*" + name + "* (baseline)", s, true);
  return out.str();
}

}  // namespace camrt
