// camrt eval's metrics (engine/eval/metrics.h) against hand-computed cases and independent naive references,
// the evaluator (engine/eval/evaluator.h) against a per-image recomputation with those metrics and plain
// run_model forwards, and the drawing helpers of the demo (bitmap font, contact sheet).
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>
#include <random>

#include "engine/cam/explainer.h"
#include "engine/eval/evaluator.h"
#include "engine/eval/metrics.h"
#include "engine/executor.h"
#include "engine/image/contact_sheet.h"
#include "engine/image/png.h"
#include "engine/image/text.h"

using namespace camrt;
namespace fs = std::filesystem;

namespace {

// Independent reference for the localization box: union-find over 8-neighbours (not the flood fill the library
// uses), component sizes counted afterwards, the largest one with the smallest first pixel.
Box reference_box(const std::vector<float>& map, int64_t h, int64_t w, float fraction) {
  const float mx = *std::max_element(map.begin(), map.end());
  std::vector<int64_t> parent(static_cast<size_t>(h * w));
  std::iota(parent.begin(), parent.end(), int64_t(0));
  std::function<int64_t(int64_t)> find = [&](int64_t i) { return parent[i] == i ? i : parent[i] = find(parent[i]); };
  auto on = [&](int64_t y, int64_t x) { return y >= 0 && x >= 0 && y < h && x < w && map[y * w + x] >= fraction * mx; };
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      if (on(y, x))
        for (int64_t dy = -1; dy <= 1; ++dy)
          for (int64_t dx = -1; dx <= 1; ++dx)
            if (on(y + dy, x + dx)) {
              const int64_t a = find(y * w + x), b = find((y + dy) * w + x + dx);
              parent[std::max(a, b)] = std::min(a, b);  // root = smallest index of the component
            }
  std::vector<int64_t> size(static_cast<size_t>(h * w), 0);
  for (int64_t i = 0; i < h * w; ++i)
    if (on(i / w, i % w)) ++size[find(i)];
  int64_t best = -1;
  for (int64_t i = 0; i < h * w; ++i)
    if (size[i] > 0 && (best < 0 || size[i] > size[best])) best = i;  // roots ascending: first of equals wins
  Box box;
  if (best < 0) return box;
  box = Box{int(w), int(h), -1, -1};
  for (int64_t i = 0; i < h * w; ++i)
    if (on(i / w, i % w) && find(i) == best) {
      box.x0 = std::min<int>(box.x0, int(i % w)), box.x1 = std::max<int>(box.x1, int(i % w));
      box.y0 = std::min<int>(box.y0, int(i / w)), box.y1 = std::max<int>(box.y1, int(i / w));
    }
  return box;
}

bool same_box(const Box& a, const Box& b) { return a.x0 == b.x0 && a.y0 == b.y0 && a.x1 == b.x1 && a.y1 == b.y1; }

}  // namespace

TEST_CASE("eval metrics: largest 8-connected component above 15% of the max") {
  // 6 x 8 map: a diagonal chain of 5 pixels (connected only through corners) and a 2x2 block (4 pixels).
  const int64_t h = 6, w = 8;
  std::vector<float> map(static_cast<size_t>(h * w), 0.1f);  // below 0.15 * 1.0
  for (int i = 0; i < 5; ++i) map[i * w + i] = 1.0f;          // (0,0) (1,1) ... (4,4)
  for (int y = 0; y < 2; ++y)
    for (int x = 6; x < 8; ++x) map[y * w + x] = 0.5f;
  const Box box = largest_component_box(map.data(), h, w);
  CHECK(same_box(box, Box{0, 0, 4, 4}));  // 4-connectivity would have picked the block instead

  // Exactly at the threshold counts: the block grows to 6 pixels with two values of exactly 0.15 * max.
  map[2 * w + 6] = 0.15f;
  map[3 * w + 6] = 0.15f;
  CHECK(same_box(largest_component_box(map.data(), h, w), Box{6, 0, 7, 3}));

  // Equal components: the first met in raster order wins.
  std::vector<float> two(static_cast<size_t>(h * w), 0.f);
  two[1 * w + 5] = two[1 * w + 6] = 1.f;  // row 1
  two[4 * w + 1] = two[4 * w + 2] = 1.f;  // row 4
  CHECK(same_box(largest_component_box(two.data(), h, w), Box{5, 1, 6, 1}));

  // An all-zero map keeps every pixel; an empty map has no box.
  std::vector<float> zero(static_cast<size_t>(h * w), 0.f);
  CHECK(same_box(largest_component_box(zero.data(), h, w), Box{0, 0, int(w) - 1, int(h) - 1}));
  CHECK(largest_component_box(zero.data(), 0, 0).area() == 0);

  // Against the union-find reference on random blobby maps (smoothed noise, many components).
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t hh = 5 + trial % 23, ww = 7 + (trial * 5) % 19;
    std::vector<float> noise(static_cast<size_t>(hh * ww)), m(noise.size());
    for (auto& v : noise) v = u(rng);
    for (int64_t y = 0; y < hh; ++y)
      for (int64_t x = 0; x < ww; ++x) {
        const float v = noise[y * ww + x] * noise[y * ww + (x + 1) % ww] * noise[((y + 1) % hh) * ww + x];
        m[y * ww + x] = v * v;  // few pixels above 15% of the max: several components
      }
    const float fraction = trial % 2 ? kLocThresholdFraction : 0.4f;
    const Box got = largest_component_box(m.data(), hh, ww, fraction), want = reference_box(m, hh, ww, fraction);
    INFO("trial " << trial);
    CHECK(same_box(got, want));
  }
}

TEST_CASE("eval metrics: IoU, pointing game, argmax") {
  CHECK(box_iou(Box{0, 0, 9, 9}, Box{0, 0, 9, 9}) == 1.0);
  CHECK(box_iou(Box{0, 0, 1, 1}, Box{1, 1, 2, 2}) == doctest::Approx(1.0 / 7.0));  // 1 shared of 4 + 4 - 1
  CHECK(box_iou(Box{0, 0, 3, 3}, Box{4, 0, 7, 3}) == 0.0);                          // touching, not overlapping
  CHECK(box_iou(Box{0, 0, 9, 4}, Box{0, 0, 4, 9}) == doctest::Approx(25.0 / 75.0));
  CHECK(box_iou(Box{}, Box{0, 0, 3, 3}) == 0.0);
  CHECK(Box{2, 3, 4, 8}.area() == 18);

  std::vector<float> map = {0.1f, 0.9f, 0.3f,  //
                            0.9f, 0.2f, 0.0f};
  CHECK(map_argmax(map.data(), 6) == 1);  // first of the two maxima
  CHECK(pointing_hit(map.data(), 2, 3, Box{1, 0, 2, 1}));
  CHECK_FALSE(pointing_hit(map.data(), 2, 3, Box{0, 1, 0, 1}));  // the other maximum does not count
  map[0] = NAN;
  CHECK(map_argmax(map.data(), 6) == 1);  // NaN never wins
}

TEST_CASE("eval metrics: Average Drop and Increase in Confidence") {
  ConfidenceStats stats;
  stats.add(0.8, 0.4);   // drop 0.5
  stats.add(0.5, 0.6);   // no drop, an increase
  stats.add(0.9, 0.9);   // neither
  stats.add(0.25, 0.0);  // drop 1
  CHECK(stats.average_drop() == doctest::Approx((0.5 + 0 + 0 + 1) / 4));
  CHECK(stats.increase_in_confidence() == doctest::Approx(0.25));
  ConfidenceStats other;
  other.add(1.0, 0.0);
  stats.merge(other);
  CHECK(stats.average_drop() == doctest::Approx(2.5 / 5));
  CHECK(ConfidenceStats{}.average_drop() == 0.0);

  const std::vector<float> image = {1, 2, 3, 4, 5, 6, 7, 8}, map = {0.f, 0.5f, 1.f, 2.f};  // (2, 2, 2), (2, 2)
  std::vector<float> out(8);
  mask_image(out.data(), image.data(), map.data(), 2, 2, 2);
  CHECK(out == std::vector<float>{0, 1, 3, 8, 0, 3, 7, 16});
}

TEST_CASE("eval metrics: ranking, steps, trapezoid AUC") {
  const std::vector<float> map = {0.5f, 0.9f, 0.5f, NAN, 0.1f, 0.9f};
  CHECK(rank_pixels(map.data(), 6) == std::vector<int64_t>{1, 5, 0, 2, 4, 3});  // ties in raster order, NaN last

  CHECK(pixels_at_step(0, 16, 9216) == 0);
  CHECK(pixels_at_step(1, 16, 9216) == 576);
  CHECK(pixels_at_step(16, 16, 9216) == 9216);
  CHECK(pixels_at_step(1, 3, 10) == 3);
  CHECK(pixels_at_step(2, 3, 10) == 6);
  CHECK_THROWS(pixels_at_step(4, 3, 10));

  const double falling[] = {1, 0};
  CHECK(trapezoid_auc(falling, 2) == doctest::Approx(0.5));
  const double tent[] = {0, 1, 0};
  CHECK(trapezoid_auc(tent, 3) == doctest::Approx(0.5));
  std::vector<double> line(11), constant(11, 0.3);
  for (int i = 0; i <= 10; ++i) line[i] = i / 10.0;
  CHECK(trapezoid_auc(line.data(), 11) == doctest::Approx(0.5));  // exact for linear curves
  CHECK(trapezoid_auc(constant.data(), 11) == doctest::Approx(0.3));
  const double two_steps[] = {1, 0.5, 0.5};
  CHECK(trapezoid_auc(two_steps, 3) == doctest::Approx((0.75 + 0.5) / 2));
}

TEST_CASE("eval metrics: deletion and insertion curves") {
  // A probe that returns the mean of the image: after deleting k of n pixels of an all-ones image the mean is
  // exactly 1 - k/n, so the curve is known in closed form.
  const int64_t C = 2, H = 4, W = 5, n = H * W, steps = 7;
  std::vector<float> ones(static_cast<size_t>(C * n), 1.f), zeros(ones.size(), 0.f), map(static_cast<size_t>(n));
  std::mt19937 rng(3);
  for (auto& v : map) v = std::uniform_real_distribution<float>(0, 1)(rng);
  int calls = 0;
  const ProbeFn mean_probe = [&](const float* images, int64_t count, double* p) {
    ++calls;
    for (int64_t i = 0; i < count; ++i) p[i] = std::accumulate(images + i * C * n, images + (i + 1) * C * n, 0.0) / double(C * n);
  };
  const std::vector<double> curve = causal_curve(ones.data(), zeros.data(), map.data(), C, H, W, steps, mean_probe, 3);
  REQUIRE(curve.size() == size_t(steps + 1));
  CHECK(calls == 3);  // 8 points in chunks of 3
  for (int64_t s = 0; s <= steps; ++s) CHECK(curve[s] == doctest::Approx(1.0 - double(s * n / steps) / n));
  CHECK(causal_curve(ones.data(), zeros.data(), map.data(), C, H, W, steps, mean_probe, 64) == curve);

  // The pixels go most-important-first: a probe reading one pixel sees it disappear at the right step.
  const std::vector<int64_t> order = rank_pixels(map.data(), n);
  const int64_t watched = order[7];  // the 8th most important pixel: gone once 8 or more are deleted
  const ProbeFn pixel_probe = [&](const float* images, int64_t count, double* p) {
    for (int64_t i = 0; i < count; ++i) p[i] = images[i * C * n + n + watched];  // channel 1: all channels go
  };
  const std::vector<double> seen = causal_curve(ones.data(), zeros.data(), map.data(), C, H, W, steps, pixel_probe);
  for (int64_t s = 0; s <= steps; ++s) CHECK(seen[s] == (s * n / steps >= 8 ? 0.0 : 1.0));

  // Insertion runs the other way: from a start image to the finish image.
  std::vector<float> out(static_cast<size_t>(C * n));
  causal_step_image(out.data(), zeros.data(), ones.data(), order.data(), 3, C, H, W);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < n; ++i) {
      const bool revealed = i == order[0] || i == order[1] || i == order[2];
      CHECK(out[c * n + i] == (revealed ? 1.f : 0.f));
    }
}

TEST_CASE("eval metrics: Gaussian blur equals a naive 2-D convolution with clamped borders") {
  const int64_t C = 2, H = 13, W = 17;
  const float sigma = 2.5f;
  std::vector<float> in(static_cast<size_t>(C * H * W)), out(in.size());
  std::mt19937 rng(11);
  for (auto& v : in) v = std::uniform_real_distribution<float>(0, 1)(rng);
  gaussian_blur(out.data(), in.data(), C, H, W, sigma);
  const int64_t r = static_cast<int64_t>(std::ceil(3 * sigma));
  double norm = 0;
  for (int64_t dy = -r; dy <= r; ++dy)
    for (int64_t dx = -r; dx <= r; ++dx) norm += std::exp(-(dx * dx + dy * dy) / (2.0 * sigma * sigma));
  double worst = 0;
  for (int64_t c = 0; c < C; ++c)
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < W; ++x) {
        double acc = 0;
        for (int64_t dy = -r; dy <= r; ++dy)
          for (int64_t dx = -r; dx <= r; ++dx) {
            const int64_t yy = std::clamp<int64_t>(y + dy, 0, H - 1), xx = std::clamp<int64_t>(x + dx, 0, W - 1);
            acc += std::exp(-(dx * dx + dy * dy) / (2.0 * sigma * sigma)) * in[(c * H + yy) * W + xx];
          }
        worst = std::max(worst, std::fabs(acc / norm - out[(c * H + y) * W + x]));
      }
  CHECK(worst < 1e-6);  // both sum in double; the only difference is the final float rounding (~6e-8 at 1.0)

  std::vector<float> flat(static_cast<size_t>(H * W), 0.7f), blurred(flat.size());
  gaussian_blur(blurred.data(), flat.data(), 1, H, W, kInsertionBlurSigma);  // radius 15 > the image: clamping
  for (float v : blurred) CHECK(v == doctest::Approx(0.7f).epsilon(1e-6));
}

TEST_CASE("eval metrics: baselines") {
  const Box c = center_box(96, 96);
  CHECK(same_box(c, Box{14, 14, 81, 81}));
  CHECK(double(c.area()) / (96 * 96) == doctest::Approx(0.5).epsilon(0.01));
  CHECK(same_box(center_box(10, 20, 0.25), Box{5, 2, 14, 6}));  // 5 x 10: half of each side, offsets floor((10-5)/2)

  std::vector<float> bm(12);
  box_map(bm.data(), 3, 4, Box{1, 1, 2, 2});
  CHECK(bm == std::vector<float>{0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0});

  const int64_t n = 96 * 96;
  std::vector<float> a(n), b(n), other(n);
  random_map(a.data(), n, 5, 17);
  random_map(b.data(), n, 5, 17);
  random_map(other.data(), n, 5, 18);
  CHECK(a == b);
  CHECK(a != other);
  double mean = 0;
  for (float v : a) {
    CHECK((v >= 0.f && v < 1.f));
    mean += v / n;
  }
  CHECK(mean == doctest::Approx(0.5).epsilon(0.04));  // uniform: sd of the mean 0.29/96 = 0.003; 0.02 is ~7 sd
}

TEST_CASE("eval: boxes follow the resize and centre crop") {
  // 200x100 -> resize 50 -> 100x50 -> crop 50: left offset 25.
  CHECK(same_box(transform_box(Box{100, 0, 199, 99}, 200, 100, 50, 50), Box{25, 0, 49, 49}));
  CHECK(same_box(transform_box(Box{0, 0, 199, 99}, 200, 100, 50, 50), Box{0, 0, 49, 49}));
  CHECK(transform_box(Box{0, 0, 40, 99}, 200, 100, 50, 50).area() == 0);  // entirely left of the crop
  // A pixel maps to every output pixel its area touches: x 3 (of 10) scaled by 0.5 covers [1.5, 2) -> pixel 1.
  CHECK(same_box(transform_box(Box{3, 3, 3, 3}, 10, 10, 5, 5), Box{1, 1, 1, 1}));
  CHECK(same_box(transform_box(Box{3, 3, 4, 4}, 10, 10, 5, 5), Box{1, 1, 2, 2}));
}

TEST_CASE("eval: boxes file") {
  const fs::path dir = fs::temp_directory_path() / ("camrt_test_boxes_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  Image img{40, 20, 3, std::vector<uint8_t>(40 * 20 * 3, 0)};
  for (int64_t y = 5; y < 10; ++y)
    for (int64_t x = 20; x < 30; ++x) img.row(y)[x * 3] = 255;  // red box
  write_png((dir / "a.png").string(), img);
  {
    std::ofstream f(dir / "boxes.csv");
    f << "path,label,x0,y0,x1,y1\n# a comment\n\n a.png , dog , 20, 5, 29, 9\na.png,0,0,0,39,19\n";
  }
  BoxFileDataset data((dir / "boxes.csv").string(), {"cat", "dog"}, 20, 20, 1);
  REQUIRE(data.size() == 2);
  const EvalSample s = data.sample(0);
  CHECK(s.label == 1);
  CHECK(s.image.width == 20);
  CHECK(s.image.height == 20);
  CHECK(same_box(s.box, Box{10, 5, 19, 9}));  // no resize (shorter side 20), crop offset (40 - 20) / 2 = 10
  CHECK(data.sample(1).label == 0);
  CHECK(BoxFileDataset((dir / "boxes.csv").string(), {"cat", "dog"}, 20, 20, 1, 1).size() == 1);
  {
    std::ofstream f(dir / "bad.csv");
    f << "a.png,bird,0,0,1,1\n";
  }
  CHECK_THROWS_WITH_AS(BoxFileDataset((dir / "bad.csv").string(), {"cat", "dog"}, 20, 20, 1), doctest::Contains("bad.csv:1"), Error);
  {
    std::ofstream f(dir / "bad.csv");
    f << "a.png,0,5,0,1,1\n";
  }
  CHECK_THROWS_AS(BoxFileDataset((dir / "bad.csv").string(), {}, 20, 20, 1), Error);
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------------------
// The evaluator against a per-image recomputation.
// ---------------------------------------------------------------------------------------------------------
namespace {

HostTensor seeded(const Shape& shape, uint32_t seed, float scale) {
  HostTensor t(DType::F32, shape);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = normal(rng);
  return t;
}

// 1 x 16 x 16 gray input -> Conv(6, 3x3) -> ReLU -> Conv(6, 3x3, stride 2) -> ReLU -> GAP -> Gemm(3).
Graph tiny_graph() {
  Model m;
  m.inputs = {{"input", DType::F32, {-1, 1, 16, 16}}};
  m.outputs = {{"logits", DType::F32, {-1, 3}}};
  m.weights["c1.w"] = seeded({6, 1, 3, 3}, 1, 0.6f);
  m.weights["c1.b"] = seeded({6}, 2, 0.1f);
  m.weights["c2.w"] = seeded({6, 6, 3, 3}, 3, 0.3f);
  m.weights["c2.b"] = seeded({6}, 4, 0.1f);
  m.weights["fc.w"] = seeded({3, 6}, 5, 1.0f);
  m.weights["fc.b"] = seeded({3}, 6, 0.1f);
  using json = nlohmann::json;
  m.nodes = {
      {"Conv", "c1", {"input", "c1.w", "c1.b"}, {"a1"}, json{{"kernel_shape", {3, 3}}, {"pads", {1, 1, 1, 1}}}},
      {"Relu", "r1", {"a1"}, {"h1"}, json::object()},
      {"Conv", "c2", {"h1", "c2.w", "c2.b"}, {"a2"}, json{{"kernel_shape", {3, 3}}, {"pads", {1, 1, 1, 1}}, {"strides", {2, 2}}}},
      {"Relu", "r2", {"a2"}, {"h2"}, json::object()},
      {"GlobalAveragePool", "gap", {"h2"}, {"g"}, json::object()},
      {"Flatten", "flat", {"g"}, {"f"}, json{{"axis", 1}}},
      {"Gemm", "fc", {"f", "fc.w", "fc.b"}, {"logits"}, json{{"transB", 1}}},
  };
  m.preprocess.mean = {0.2f, 0.2f, 0.2f};  // not 0/1, so pixel-space masking is distinguishable
  m.preprocess.std = {0.5f, 0.5f, 0.5f};
  m.explain_layer = "r2";
  return Graph(std::move(m), "tiny");
}

// Bright 5x5 squares (with texture) on black at index-dependent places, plus a dim clutter pixel.
class SquaresDataset : public EvalDataset {
 public:
  explicit SquaresDataset(int64_t n) : n_(n) {}
  int64_t size() const override { return n_; }
  std::string description() const override { return "squares"; }
  EvalSample sample(int64_t i) const override {
    EvalSample s;
    s.image = Image{16, 16, 1, std::vector<uint8_t>(256, 0)};
    const int x0 = int((i * 5) % 11), y0 = int((i * 3) % 11);
    for (int y = y0; y < y0 + 5; ++y)
      for (int x = x0; x < x0 + 5; ++x) s.image.pixels[y * 16 + x] = uint8_t(150 + 20 * ((x + y + i) % 5));
    s.image.pixels[((y0 + 8) % 16) * 16 + (x0 + 9) % 16] = 60;
    s.box = Box{x0, y0, x0 + 4, y0 + 4};
    s.label = i % 3;
    s.name = "square" + std::to_string(i);
    return s;
  }

 private:
  int64_t n_;
};

double softmax_at(const float* z, int64_t k, int64_t c) {
  double mx = *std::max_element(z, z + k), sum = 0;
  for (int64_t j = 0; j < k; ++j) sum += std::exp(z[j] - mx);
  return std::exp(z[c] - mx) / sum;
}

}  // namespace

TEST_CASE("eval: the evaluator equals a per-image recomputation, whatever the batch split") {
  Graph graph = tiny_graph();
  ThreadPool pool(2);
  SquaresDataset data(7);
  EvalOptions options;
  options.methods = {"gradcam", "eigencam"};
  options.steps = 5;
  options.batch = 3;  // 7 = 3 + 3 + 1: the last batch is padded
  options.probe_batch = 10;
  options.seed = 9;
  const EvalReport report = evaluate(graph, data, options, pool);
  REQUIRE(report.methods.size() == 2);
  REQUIRE(report.baselines.size() == 2);
  CHECK(report.n == 7);

  // Reference: batch-1 explanations, one run_model call per image for every probe.
  const int64_t plane = 256, S = options.steps;
  const float mean = 0.2f, sd = 0.5f;
  auto normalized = [&](const float* p, int64_t count) {
    HostTensor x(DType::F32, {count, 1, 16, 16});
    for (int64_t i = 0; i < count * plane; ++i) x.f32()[i] = (p[i] - mean) / sd;
    return x;
  };
  auto logits_of = [&](const float* p, int64_t count) { return run_model(graph, {{"input", normalized(p, count)}}, pool).at("logits"); };
  const std::vector<std::string> sources = {"gradcam", "eigencam", "center_box", "random_map"};
  for (size_t m = 0; m < sources.size(); ++m) {
    int64_t loc = 0, point = 0, correct = 0;
    double iou_sum = 0, del = 0, ins = 0;
    ConfidenceStats conf;
    for (int64_t i = 0; i < data.size(); ++i) {
      const EvalSample s = data.sample(i);
      std::vector<float> p(plane), map(plane), blurred(plane), zeros(plane, 0.f), masked(plane);
      for (int64_t k = 0; k < plane; ++k) p[k] = s.image.pixels[k] / 255.f;
      const HostTensor z = logits_of(p.data(), 1);
      const int64_t pred = std::max_element(z.f32(), z.f32() + 3) - z.f32();
      correct += pred == s.label;
      const double y = softmax_at(z.f32(), 3, pred);
      if (m < 2) {
        ExplainOptions eo;
        eo.methods = {sources[m]};
        Explainer ex(graph, 1, eo, pool);
        const Explanation e = ex.run(normalized(p.data(), 1));
        CHECK(e.classes[0][0] == pred);
        std::memcpy(map.data(), e.results[0].maps.f32(), plane * sizeof(float));
      } else if (m == 2) {
        box_map(map.data(), 16, 16, center_box(16, 16));
      } else {
        random_map(map.data(), plane, options.seed, static_cast<uint64_t>(i));
      }
      const Box box = m == 2 ? center_box(16, 16) : largest_component_box(map.data(), 16, 16);
      const double iou = box_iou(box, s.box);
      iou_sum += iou;
      loc += iou >= 0.5 && pred == s.label;
      point += m == 2 ? box_contains(s.box, 8, 8) : pointing_hit(map.data(), 16, 16, s.box);
      mask_image(masked.data(), p.data(), map.data(), 1, 16, 16);
      conf.add(y, softmax_at(logits_of(masked.data(), 1).f32(), 3, pred));
      const ProbeFn probe = [&](const float* images, int64_t count, double* out) {
        const HostTensor zz = logits_of(images, count);
        for (int64_t k = 0; k < count; ++k) out[k] = softmax_at(zz.f32() + 3 * k, 3, pred);
      };
      gaussian_blur(blurred.data(), p.data(), 1, 16, 16, kInsertionBlurSigma);
      const auto dc = causal_curve(p.data(), zeros.data(), map.data(), 1, 16, 16, S, probe);
      const auto ic = causal_curve(blurred.data(), p.data(), map.data(), 1, 16, 16, S, probe);
      del += trapezoid_auc(dc.data(), S + 1);
      ins += trapezoid_auc(ic.data(), S + 1);
    }
    const MethodScores& got = m < 2 ? report.methods[m].second : report.baselines[m - 2].second;
    const std::string name = m < 2 ? report.methods[m].first : report.baselines[m - 2].first;
    INFO("source " << sources[m]);
    CHECK(name == sources[m]);
    CHECK(got.n == 7);
    CHECK(report.classification_top1 == doctest::Approx(correct / 7.0));
    CHECK(got.loc_top1 == doctest::Approx(loc / 7.0));
    CHECK(got.pointing == doctest::Approx(point / 7.0));
    // Probabilities come from float32 forwards of different batch sizes; the conv kernels may round
    // differently per batch layout (a few ulp of the logits), so the means agree to ~1e-6, not bit for bit.
    CHECK(got.mean_iou == doctest::Approx(iou_sum / 7));
    CHECK(got.avg_drop == doctest::Approx(conf.average_drop()).epsilon(1e-5));
    CHECK(got.inc_conf == doctest::Approx(conf.increase_in_confidence()));
    CHECK(got.deletion_auc == doctest::Approx(del / 7).epsilon(1e-5));
    CHECK(got.insertion_auc == doctest::Approx(ins / 7).epsilon(1e-5));
  }

  // Another batch split and probe batch give the same numbers; so does a second run (determinism).
  EvalOptions other = options;
  other.batch = 4;
  other.probe_batch = 7;
  const EvalReport again = evaluate(graph, data, other, pool);
  for (size_t m = 0; m < 2; ++m) {
    const MethodScores &a = report.methods[m].second, &b = again.methods[m].second;
    CHECK(a.loc_top1 == b.loc_top1);
    CHECK(a.pointing == b.pointing);
    CHECK(a.deletion_auc == doctest::Approx(b.deletion_auc).epsilon(1e-5));
    CHECK(a.insertion_auc == doctest::Approx(b.insertion_auc).epsilon(1e-5));
  }
  const EvalReport same = evaluate(graph, data, options, pool);
  const nlohmann::json ja = report_to_json(report), jb = report_to_json(same);
  for (const char* group : {"methods", "baselines"})
    for (const auto& [name, v] : ja[group].items())
      for (const char* key : {"loc_top1", "pointing", "avg_drop", "inc_conf", "deletion_auc", "insertion_auc", "mean_iou"})
        CHECK(v[key] == jb[group][name][key]);
  CHECK(ja["n"] == 7);
  CHECK(ja["seed"] == 9);
  // A different seed changes the random baseline only.
  other = options;
  other.seed = 10;
  const EvalReport reseeded = evaluate(graph, data, other, pool);
  CHECK(reseeded.methods[0].second.deletion_auc == report.methods[0].second.deletion_auc);
  CHECK(reseeded.baselines[1].second.insertion_auc != report.baselines[1].second.insertion_auc);
  const std::string md = report_to_markdown(report);
  CHECK(md.find("| gradcam |") != std::string::npos);
  CHECK(md.find("random_map") != std::string::npos);
}

// ---------------------------------------------------------------------------------------------------------
// Drawing: font and contact sheet.
// ---------------------------------------------------------------------------------------------------------

TEST_CASE("text: glyphs, sizes, drawing") {
  const uint8_t* a = glyph_rows('A');
  CHECK(a[0] == 0b01110);
  CHECK(a[3] == 0b11111);
  CHECK(a[7] == 0);
  CHECK(glyph_rows('\x01') == glyph_rows('?'));  // unknown characters draw as '?'
  for (int c = 33; c < 127; ++c) {             // every printable glyph but space has ink
    const uint8_t* g = glyph_rows(char(c));
    int ink = 0;
    for (int r = 0; r < kGlyphHeight; ++r) ink += g[r] != 0;
    INFO("char " << char(c));
    CHECK(ink > 0);
  }
  CHECK(text_width("", 1) == 0);
  CHECK(text_width("ab", 1) == 11);  // 5 + 1 gap + 5
  CHECK(text_width("ab", 3) == 33);
  CHECK(text_height(2) == 16);

  Image img{20, 20, 3, std::vector<uint8_t>(20 * 20 * 3, 0)};
  const uint8_t white[3] = {255, 255, 255};
  draw_text(img, 1, 1, "I", white, 2);
  int lit = 0;
  for (int64_t i = 0; i < 20 * 20; ++i) lit += img.pixels[i * 3] == 255;
  int bits = 0;
  for (int r = 0; r < kGlyphHeight; ++r) bits += __builtin_popcount(glyph_rows('I')[r]);
  CHECK(lit == bits * 4);                 // each bit becomes a 2x2 block
  CHECK(img.row(1)[(1 + 2) * 3] == 255);  // 'I' top bar starts at column 1 of the glyph
  CHECK(img.row(0)[3 * 3] == 0);
  draw_text(img, 15, 8, "WWW", white, 3);  // clipped, not a crash
  CHECK(fit_text("hello world", text_width("hello...", 1), 1) == "hello...");
  CHECK(fit_text("hi", 100, 1) == "hi");
}

TEST_CASE("contact sheet: layout, boxes, text") {
  Image gray{4, 3, 1, std::vector<uint8_t>(12, 100)};
  SheetCell a;
  a.image = gray;
  SheetBox box;
  box.x0 = 0, box.y0 = 0, box.x1 = 3, box.y1 = 2;  // the whole 4x3 picture: (0..7, 0..5) after scaling
  box.rgb[0] = 255, box.rgb[1] = 0, box.rgb[2] = 0;
  a.boxes = {box};
  a.lines = {"x"};
  SheetCell b;
  b.image = gray;
  ContactSheetOptions o;
  o.scale = 2;
  o.text_scale = 1;
  o.padding = 3;
  const Image sheet = compose_contact_sheet({{a, b}, {b}}, {"t1", "t2"}, o);
  // Width: pad + 8 + pad + 8 + pad; height: pad + title line + (6 + 1 line) + pad + 6 + pad.
  CHECK(sheet.width == 3 + 8 + 3 + 8 + 3);
  CHECK(sheet.height == 3 + kLineHeight + (6 + kLineHeight) + 3 + 6 + 3);
  CHECK(sheet.channels == 3);
  const int64_t top = 3 + kLineHeight;
  auto px = [&](int64_t x, int64_t y) { return sheet.row(y) + x * 3; };
  CHECK(px(0, 0)[0] == 255);                                    // white background
  CHECK((px(3, top)[0] == 255 && px(3, top)[1] == 0));          // box outline, 2 px (= scale) wide
  CHECK((px(3 + 1, top + 1)[1] == 0));
  CHECK((px(3 + 7, top + 5)[0] == 255 && px(3 + 7, top + 5)[1] == 0));
  CHECK(px(3 + 3, top + 3)[1] == 100);                          // inside the outline: the picture, gray -> RGB
  CHECK(px(3 + 8 + 3, top)[1] == 100);                          // second column, no box
  int ink = 0;                                                  // the text line "x" under the first picture
  for (int64_t y = top + 6; y < top + 6 + kLineHeight; ++y)
    for (int64_t x = 3; x < 3 + 8; ++x) ink += px(x, y)[0] < 128;
  int bits = 0;
  for (int r = 0; r < kGlyphHeight; ++r) bits += __builtin_popcount(glyph_rows('x')[r]);
  CHECK(ink == bits);
  CHECK(upscale_nearest(gray, 3).width == 12);
}
