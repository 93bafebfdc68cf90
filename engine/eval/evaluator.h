// The evaluation behind `camrt eval`: runs CAM methods (engine/cam/explainer.h) over a labelled data set with
// ground-truth boxes and scores every map with the metrics of engine/eval/metrics.h, next to two baselines
// (a centred box covering 50% of the image, a uniform-random map). The extra forwards of Average Drop and
// deletion/insertion go through one batched Executor. Masking happens in pixel space ([0, 1], before the model's
// mean/std normalization), so "0" is black: the canvas background. Results depend only on the data, the model,
// the options and the seed (never on the batch split or the thread count), except the timings.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/eval/fashion_canvas.h"
#include "engine/eval/metrics.h"
#include "engine/graph.h"
#include "engine/image/image.h"
#include "kernels/cpu/parallel.h"

namespace camrt {

// One evaluation image, already at the model's input resolution.
struct EvalSample {
  Image image;        // (H, W, 1 or 3) uint8, exactly what the network sees before normalization
  Box box;            // ground-truth box on `image`
  int64_t label = 0;  // ground-truth class index
  std::string name;   // for messages and the demo
};

// Random access to samples; sample() must be callable from several threads.
class EvalDataset {
 public:
  virtual ~EvalDataset() = default;
  virtual int64_t size() const = 0;
  virtual EvalSample sample(int64_t index) const = 0;
  virtual std::string description() const = 0;  // "fashion-canvas test, seed 0"
};

// Canvases 0..count-1 of a Fashion-MNIST split: sample i = make_fashion_canvas(*source, split, i, seed).
class FashionCanvasDataset : public EvalDataset {
 public:
  FashionCanvasDataset(std::shared_ptr<const FashionMnist> source, int64_t count, uint64_t seed, std::string split = "test");
  int64_t size() const override { return count_; }
  EvalSample sample(int64_t index) const override;
  std::string description() const override;

 private:
  std::shared_ptr<const FashionMnist> source_;
  int64_t count_;
  uint64_t seed_;
  std::string split_;
};

// A folder of images and a boxes file, so users evaluate their own models and data.
//
// Boxes file format (CSV, UTF-8, one image per line):
//     path,label,x0,y0,x1,y1
//   - path: image file (PNG, JPEG or BMP), relative to the boxes file's folder (or absolute);
//   - label: the ground-truth class, as an index (0-based) or as one of the model's label names, exactly;
//   - x0,y0,x1,y1: the object's box in pixels of the ORIGINAL image file, inclusive corners, 0-based, x to the
//     right and y down (so a whole 640x480 image is 0,0,639,479).
//   Fields are trimmed of spaces; empty lines and lines starting with '#' are skipped; a first line whose x0
//   field is not a number is a header and is skipped. Images are resized and centre-cropped like the model's
//   preprocessing (camrt explain), and the box goes through the same resize and crop (clipped to the crop); an
//   image whose box falls entirely outside the crop is an error naming the line.
class BoxFileDataset : public EvalDataset {
 public:
  // labels: the model's class names (may be empty: then only indices are accepted). channels: 1 (gray, by
  // ITU-R 601 luma, as PIL's convert("L")) or 3. limit > 0 keeps the first `limit` lines.
  BoxFileDataset(const std::string& boxes_file, const std::vector<std::string>& labels, int64_t resize, int64_t crop,
                 int64_t channels, int64_t limit = 0);
  int64_t size() const override { return static_cast<int64_t>(entries_.size()); }
  EvalSample sample(int64_t index) const override;
  std::string description() const override { return boxes_file_; }

 private:
  struct Entry {
    std::string path;
    int64_t label = 0;
    int64_t x0 = 0, y0 = 0, x1 = 0, y1 = 0;
    int64_t line = 0;
  };
  std::string boxes_file_;
  int64_t resize_, crop_, channels_;
  std::vector<Entry> entries_;
};

// The box of an inclusive pixel box of a width x height image after resize (shorter side -> resize, as
// resized_size) and centre crop (crop x crop, torchvision's offsets): the resized box covers every output pixel
// whose area overlaps the scaled original box, then it is shifted by the crop offset and clipped. Empty if outside.
Box transform_box(const Box& box, int64_t width, int64_t height, int64_t resize, int64_t crop);

// The methods `camrt eval` and `camrt demo` run by default.
const std::vector<std::string>& default_eval_methods();

struct EvalOptions {
  std::vector<std::string> methods = default_eval_methods();
  std::vector<std::string> layers;  // explained layers; empty: the model's default
  int64_t batch = 16;               // images per Explainer call
  int64_t probe_batch = 32;         // images per forward of the metric probes; 32 measured ~10% faster than 64 (cache)
  int64_t explain_chunk = 32;       // Score-CAM masked inputs per forward
  // Deletion/insertion resolution: H*W/steps pixels per step, steps + 1 points per curve. 16 steps on a 96x96
  // canvas = 576 pixels (6%) per step; tools/camrt/cmd_eval.cpp records the timing that chose it.
  int64_t steps = 16;
  float blur_sigma = kInsertionBlurSigma;
  float loc_fraction = kLocThresholdFraction;
  double center_box_fraction = 0.5;
  bool baselines = true;
  uint64_t seed = 0;  // random-map baseline (the data set carries its own seed)
  // Called after each batch with (images done, total).
  std::function<void(int64_t, int64_t)> progress;
};

struct MethodScores {
  int64_t n = 0;
  double loc_top1 = 0;       // fraction of images with IoU >= 0.5 and the top-1 class right
  double pointing = 0;       // fraction of images whose map maximum lies in the box
  double avg_drop = 0;       // Average Drop as a fraction (spec's % / 100)
  double inc_conf = 0;       // Increase in Confidence as a fraction
  double deletion_auc = 0;   // mean over images, lower is better
  double insertion_auc = 0;  // mean over images, higher is better
  double mean_iou = 0;       // mean IoU of the map's box with the ground truth (class ignored)
  double ms_per_image = 0;   // explanation time per image (forward + backward + method), batch of `batch`
};

struct EvalReport {
  int64_t n = 0;
  uint64_t seed = 0;
  int64_t steps = 0;
  double classification_top1 = 0;
  std::string data;  // the data set's description
  std::vector<std::pair<std::string, MethodScores>> methods;    // in the order of EvalOptions::methods
  std::vector<std::pair<std::string, MethodScores>> baselines;  // center_box, random_map
  double total_s = 0;
};

// Runs every method on every sample of data. The graph must take one (B, C, H, W) input at the samples'
// resolution and give (B, classes) logits.
EvalReport evaluate(const Graph& graph, const EvalDataset& data, const EvalOptions& options, ThreadPool& pool);

// The JSON of `camrt eval --json`: {"n", "seed", "steps", "data", "classification_top1", "methods": {NAME:
// {"loc_top1", "pointing", "avg_drop", "inc_conf", "deletion_auc", "insertion_auc", "mean_iou",
// "ms_per_image"}}, "baselines": {"center_box": {...}, "random_map": {...}}}; fractions in [0, 1].
nlohmann::json report_to_json(const EvalReport& report);
// The markdown table of `camrt eval` (percentages with one decimal, AUCs with three).
std::string report_to_markdown(const EvalReport& report);

// Pixel-space input of one sample for a model with `channels` input channels: (channels, H, W) in [0, 1].
// Gray images are replicated to 3 channels; RGB images become gray by ITU-R 601 luma for 1-channel models.
void sample_pixels(float* out, const Image& image, int64_t channels);
// (p - mean[c]) / std[c] for every channel plane; 1-channel models use mean[0], std[0].
void normalize_pixels(float* out, const float* pixels, int64_t channels, int64_t plane, const float* mean, const float* std);

}  // namespace camrt
