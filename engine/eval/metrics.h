// The metrics of `camrt eval` (docs/cam-spec.md, "Faithfulness and localization metrics") as pure functions
// of maps, boxes and probabilities: no model, no I/O. The evaluator (engine/eval/evaluator.h) feeds them;
// tests check each against hand-computable cases. Maps are (h, w) row-major float, larger = more important.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "engine/eval/fashion_canvas.h"  // Box

namespace camrt {

// ---------------------------------------------------------------------------------------------------------
// Localization (Grad-CAM paper protocol) and pointing game.
// ---------------------------------------------------------------------------------------------------------

// Grad-CAM's weakly supervised localization threshold: 15% of the map's maximum.
constexpr float kLocThresholdFraction = 0.15f;
// A localization hit needs IoU >= 0.5 (PASCAL/ILSVRC criterion, as in the Grad-CAM paper).
constexpr double kLocIouThreshold = 0.5;

// Bounding box of the largest 8-connected component of {map >= fraction * max(map)}. Ties between equally large
// components go to the one met first in raster order. A map without any such pixel (empty, or NaN maximum)
// gives an empty box (area 0). An all-zero map keeps every pixel (0 >= 0): the whole map.
Box largest_component_box(const float* map,  // (h, w)
                          int64_t h, int64_t w, float fraction = kLocThresholdFraction);

// Intersection over union of two inclusive pixel boxes; 0 when either is empty.
double box_iou(const Box& a, const Box& b);

bool box_contains(const Box& box, int64_t x, int64_t y);

// Index of the first maximum in raster order (NaN never wins); 0 for n == 0.
int64_t map_argmax(const float* map, int64_t n);  // (n)

// Pointing game (Zhang et al. 2016, without their 15-px tolerance): the map's argmax lies inside the box.
bool pointing_hit(const float* map,  // (h, w)
                  int64_t h, int64_t w, const Box& box);

// ---------------------------------------------------------------------------------------------------------
// Average Drop and Increase in Confidence (Grad-CAM++ paper), accumulated over images.
// y: probability of the explained class on the image; o: on the image multiplied by the map.
// ---------------------------------------------------------------------------------------------------------
struct ConfidenceStats {
  int64_t count = 0;
  double drop_sum = 0;     // sum of max(0, y - o) / y
  int64_t increases = 0;   // images with o > y

  // y <= 0 cannot happen for a softmax probability; such an image counts as no drop.
  void add(double y, double o);
  void merge(const ConfidenceStats& other);
  // Fractions in [0, 1] (the spec's percentages / 100); 0 when nothing was added.
  double average_drop() const;
  double increase_in_confidence() const;
};

// out = image * map, the map broadcast over channels. out may equal image.
void mask_image(float* out,          // (C, H, W)
                const float* image,  // (C, H, W)
                const float* map,    // (H, W)
                int64_t C, int64_t H, int64_t W);

// ---------------------------------------------------------------------------------------------------------
// Deletion and insertion (RISE, Petsiuk et al. 2018). Both are "causal" curves: starting from `start`, the
// map's pixels are copied from `finish` most-important-first, H*W/steps pixels per step (the exact count after
// step s is pixels_at_step), and the class probability is read after each step: steps + 1 points, x = s/steps.
//   deletion:  start = the image, finish = zeros (black: the canvas background), lower AUC is better;
//   insertion: start = gaussian_blur(image), finish = the image, higher AUC is better.
// ---------------------------------------------------------------------------------------------------------

// Pixel indices (y * w + x) sorted by decreasing map value; equal values keep raster order (stable), NaN last.
std::vector<int64_t> rank_pixels(const float* map, int64_t n);  // (n)

// Pixels copied after `step` of `steps`: floor(step * n / steps), so step == steps is exactly n.
int64_t pixels_at_step(int64_t step, int64_t steps, int64_t n);

// One point's input: start with the first `count` pixels of `order` (all channels) taken from finish.
void causal_step_image(float* out,           // (C, H, W)
                       const float* start,   // (C, H, W)
                       const float* finish,  // (C, H, W)
                       const int64_t* order, // (H * W) from rank_pixels
                       int64_t count, int64_t C, int64_t H, int64_t W);

// probe(images, n, probabilities): the class probability of n images (n, C, H, W) into probabilities[n].
using ProbeFn = std::function<void(const float* images, int64_t n, double* probabilities)>;

// The whole curve (steps + 1 values) of one image; probe is called once per chunk of at most max_batch
// images, so a caller with a batched network decides the batch.
std::vector<double> causal_curve(const float* start,   // (C, H, W)
                                 const float* finish,  // (C, H, W)
                                 const float* map,     // (H, W)
                                 int64_t C, int64_t H, int64_t W, int64_t steps, const ProbeFn& probe,
                                 int64_t max_batch = 64);

// Area under a curve sampled at x = i / (points - 1), i = 0..points-1, by the trapezoid rule (x in [0, 1]).
double trapezoid_auc(const double* curve, int64_t points);

// RISE blurs the insertion start with a Gaussian (their kernel: sigma 5); camrt does the same on 96x96 canvases:
// sigma = 5 px, kernel radius ceil(3 sigma) = 15 taps each side, normalized, separable (rows then columns),
// borders replicated (clamped indices), accumulated in double.
constexpr float kInsertionBlurSigma = 5.f;
void gaussian_blur(float* out,       // (C, H, W), must not alias in
                   const float* in,  // (C, H, W)
                   int64_t C, int64_t H, int64_t W, float sigma = kInsertionBlurSigma);

// ---------------------------------------------------------------------------------------------------------
// Baselines: what a method must beat.
// ---------------------------------------------------------------------------------------------------------

// The centred box covering area_fraction of the canvas: sides round(sqrt(f) * h) x round(sqrt(f) * w), centred
// (offset floor((h - side) / 2)). 96x96 and 50%: 68x68 at (14, 14)..(81, 81).
Box center_box(int64_t h, int64_t w, double area_fraction = 0.5);

// Its map for the faithfulness metrics: 1 inside the box, 0 outside.
void box_map(float* map,  // (h, w)
             int64_t h, int64_t w, const Box& box);

// A uniform-random map in [0, 1): value i is a pure function of (seed, image_index, i) (splitmix64), so the
// baseline is the same on every machine and for every batch split.
void random_map(float* map,  // (n)
                int64_t n, uint64_t seed, uint64_t image_index);

}  // namespace camrt
