// The metric functions of engine/eval/metrics.h. Everything is deterministic and single-threaded per image: the
// evaluator parallelizes over images, so no function here takes a pool.
#include "engine/eval/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "engine/error.h"

namespace camrt {

Box largest_component_box(const float* map, int64_t h, int64_t w, float fraction) {
  Box best;  // empty
  if (h <= 0 || w <= 0) return best;
  const int64_t n = h * w;
  const float max_value = map[map_argmax(map, n)];
  if (std::isnan(max_value)) return best;
  const float threshold = fraction * max_value;
  // label: 0 = below threshold, 1 = above and not yet visited, 2 = visited.
  std::vector<uint8_t> label(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) label[i] = map[i] >= threshold ? 1 : 0;
  std::vector<int64_t> stack;
  int64_t best_size = 0;
  for (int64_t seed = 0; seed < n; ++seed) {
    if (label[seed] != 1) continue;
    Box box{static_cast<int>(seed % w), static_cast<int>(seed / w), static_cast<int>(seed % w), static_cast<int>(seed / w)};
    int64_t size = 0;
    label[seed] = 2;
    stack.assign(1, seed);
    while (!stack.empty()) {
      const int64_t i = stack.back();
      stack.pop_back();
      ++size;
      const int64_t y = i / w, x = i % w;
      box.x0 = std::min<int>(box.x0, static_cast<int>(x));
      box.x1 = std::max<int>(box.x1, static_cast<int>(x));
      box.y0 = std::min<int>(box.y0, static_cast<int>(y));
      box.y1 = std::max<int>(box.y1, static_cast<int>(y));
      for (int64_t dy = -1; dy <= 1; ++dy)
        for (int64_t dx = -1; dx <= 1; ++dx) {
          const int64_t yy = y + dy, xx = x + dx;
          if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
          const int64_t j = yy * w + xx;
          if (label[j] == 1) {
            label[j] = 2;
            stack.push_back(j);
          }
        }
    }
    if (size > best_size) {  // strictly larger: the first of equal components wins
      best_size = size;
      best = box;
    }
  }
  return best;
}

double box_iou(const Box& a, const Box& b) {
  if (a.area() == 0 || b.area() == 0) return 0.0;
  const Box inter{std::max(a.x0, b.x0), std::max(a.y0, b.y0), std::min(a.x1, b.x1), std::min(a.y1, b.y1)};
  const double i = static_cast<double>(inter.area());
  return i / (static_cast<double>(a.area()) + static_cast<double>(b.area()) - i);
}

bool box_contains(const Box& box, int64_t x, int64_t y) {
  return x >= box.x0 && x <= box.x1 && y >= box.y0 && y <= box.y1;
}

int64_t map_argmax(const float* map, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (map[i] > map[best] || (std::isnan(map[best]) && !std::isnan(map[i]))) best = i;
  return best;
}

bool pointing_hit(const float* map, int64_t h, int64_t w, const Box& box) {
  if (h <= 0 || w <= 0) return false;
  const int64_t i = map_argmax(map, h * w);
  return box_contains(box, i % w, i / w);
}

void ConfidenceStats::add(double y, double o) {
  ++count;
  if (y > 0) drop_sum += std::max(0.0, y - o) / y;
  if (o > y) ++increases;
}

void ConfidenceStats::merge(const ConfidenceStats& other) {
  count += other.count;
  drop_sum += other.drop_sum;
  increases += other.increases;
}

double ConfidenceStats::average_drop() const { return count ? drop_sum / count : 0.0; }
double ConfidenceStats::increase_in_confidence() const { return count ? static_cast<double>(increases) / count : 0.0; }

void mask_image(float* out, const float* image, const float* map, int64_t C, int64_t H, int64_t W) {
  const int64_t plane = H * W;
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < plane; ++i) out[c * plane + i] = image[c * plane + i] * map[i];
}

std::vector<int64_t> rank_pixels(const float* map, int64_t n) {
  std::vector<int64_t> order(static_cast<size_t>(std::max<int64_t>(n, 0)));
  std::iota(order.begin(), order.end(), int64_t(0));
  // NaN compares false both ways; map it below everything so the order stays a strict weak ordering.
  auto key = [&](int64_t i) { return std::isnan(map[i]) ? -INFINITY : map[i]; };
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key(a) > key(b); });
  return order;
}

int64_t pixels_at_step(int64_t step, int64_t steps, int64_t n) {
  CAMRT_CHECK(steps >= 1 && step >= 0 && step <= steps, "pixels_at_step: step " << step << " of " << steps);
  return step * n / steps;
}

void causal_step_image(float* out, const float* start, const float* finish, const int64_t* order, int64_t count, int64_t C,
                       int64_t H, int64_t W) {
  const int64_t plane = H * W;
  if (out != start) std::memcpy(out, start, static_cast<size_t>(C * plane) * sizeof(float));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = 0; k < count; ++k) {
      const int64_t i = c * plane + order[k];
      out[i] = finish[i];
    }
}

std::vector<double> causal_curve(const float* start, const float* finish, const float* map, int64_t C, int64_t H, int64_t W,
                                 int64_t steps, const ProbeFn& probe, int64_t max_batch) {
  CAMRT_CHECK(steps >= 1 && max_batch >= 1, "causal_curve: steps and max_batch must be positive");
  const int64_t per_image = C * H * W, points = steps + 1;
  const std::vector<int64_t> order = rank_pixels(map, H * W);
  std::vector<double> curve(static_cast<size_t>(points));
  std::vector<float> images;
  for (int64_t s0 = 0; s0 < points; s0 += max_batch) {
    const int64_t n = std::min(max_batch, points - s0);
    images.resize(static_cast<size_t>(n * per_image));
    for (int64_t i = 0; i < n; ++i)
      causal_step_image(images.data() + i * per_image, start, finish, order.data(), pixels_at_step(s0 + i, steps, H * W), C, H, W);
    probe(images.data(), n, curve.data() + s0);
  }
  return curve;
}

double trapezoid_auc(const double* curve, int64_t points) {
  if (points < 2) return 0.0;
  double sum = 0;
  for (int64_t i = 0; i + 1 < points; ++i) sum += 0.5 * (curve[i] + curve[i + 1]);
  return sum / static_cast<double>(points - 1);
}

void gaussian_blur(float* out, const float* in, int64_t C, int64_t H, int64_t W, float sigma) {
  CAMRT_CHECK(sigma > 0, "gaussian_blur: sigma must be positive, got " << sigma);
  CAMRT_CHECK(out != in, "gaussian_blur: out must not alias in");
  const int64_t radius = static_cast<int64_t>(std::ceil(3.0 * sigma));
  std::vector<double> kernel(static_cast<size_t>(2 * radius + 1));
  double total = 0;
  for (int64_t k = -radius; k <= radius; ++k) total += kernel[k + radius] = std::exp(-0.5 * k * k / (double(sigma) * sigma));
  for (auto& v : kernel) v /= total;
  std::vector<double> rows(static_cast<size_t>(H * W));
  for (int64_t c = 0; c < C; ++c) {
    const float* src = in + c * H * W;
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < W; ++x) {
        double acc = 0;
        for (int64_t k = -radius; k <= radius; ++k) acc += kernel[k + radius] * src[y * W + std::clamp<int64_t>(x + k, 0, W - 1)];
        rows[y * W + x] = acc;
      }
    float* dst = out + c * H * W;
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < W; ++x) {
        double acc = 0;
        for (int64_t k = -radius; k <= radius; ++k) acc += kernel[k + radius] * rows[std::clamp<int64_t>(y + k, 0, H - 1) * W + x];
        dst[y * W + x] = static_cast<float>(acc);
      }
  }
}

Box center_box(int64_t h, int64_t w, double area_fraction) {
  CAMRT_CHECK(area_fraction > 0 && area_fraction <= 1, "center_box: area fraction " << area_fraction << " not in (0, 1]");
  const double side = std::sqrt(area_fraction);
  const int64_t bh = std::max<int64_t>(1, std::llround(side * h)), bw = std::max<int64_t>(1, std::llround(side * w));
  Box box;
  box.y0 = static_cast<int>((h - bh) / 2);
  box.x0 = static_cast<int>((w - bw) / 2);
  box.y1 = static_cast<int>(box.y0 + bh - 1);
  box.x1 = static_cast<int>(box.x0 + bw - 1);
  return box;
}

void box_map(float* map, int64_t h, int64_t w, const Box& box) {
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x) map[y * w + x] = box_contains(box, x, y) ? 1.f : 0.f;
}

namespace {
// splitmix64 (Steele et al.): a counter-based generator, so value i needs no state from values before it.
uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
}  // namespace

void random_map(float* map, int64_t n, uint64_t seed, uint64_t image_index) {
  const uint64_t key = splitmix64(splitmix64(seed ^ 0x72616E646F6D6D61ull) ^ image_index);  // "randomma": baseline's own stream
  for (int64_t i = 0; i < n; ++i)
    map[i] = static_cast<float>(splitmix64(key + static_cast<uint64_t>(i)) >> 40) * (1.f / 16777216.f);  // 24 bits: exact in float
}

}  // namespace camrt
