// Colormap lookup, CAM overlay and gradient visualization. The tables are generated data
// (colormap_tables.inc, written by tools/golden/make_image_golden.py); the arithmetic repeats pytorch-grad-cam's
// float32 numpy steps (show_cam_on_image, deprocess_image) so overlays match its PNGs pixel for pixel.
#include "engine/image/colormap.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/error.h"

namespace camrt {

namespace {

#include "engine/image/colormap_tables.inc"

const uint8_t (*table_for(Colormap cmap))[3] {
  switch (cmap) {
    case Colormap::Jet: return k_jet_rgb;
    case Colormap::Turbo: return k_turbo_rgb;
    case Colormap::Viridis: return k_viridis_rgb;
    case Colormap::Inferno: return k_inferno_rgb;
  }
  CAMRT_FAIL("unknown colormap " << int(cmap));
}

}  // namespace

bool colormap_from_name(const std::string& name, Colormap* cmap) {
  static constexpr Colormap kAll[] = {Colormap::Jet, Colormap::Turbo, Colormap::Viridis, Colormap::Inferno};
  for (Colormap c : kAll) {
    if (name == colormap_name(c)) {
      *cmap = c;
      return true;
    }
  }
  return false;
}

const char* colormap_name(Colormap cmap) {
  switch (cmap) {
    case Colormap::Jet: return "jet";
    case Colormap::Turbo: return "turbo";
    case Colormap::Viridis: return "viridis";
    case Colormap::Inferno: return "inferno";
  }
  return "unknown";
}

const uint8_t* colormap_rgb(Colormap cmap, uint8_t index) { return table_for(cmap)[index]; }

uint8_t colormap_index(float value) {
  const float scaled = 255.0f * value;  // numpy: float32 array * 255 stays float32
  if (!(scaled > 0.f)) return 0;        // also NaN
  if (scaled >= 255.f) return 255;
  return uint8_t(scaled);               // np.uint8() truncates toward zero
}

Image colorize(const float* map, int64_t h, int64_t w, Colormap cmap) {
  CAMRT_CHECK(h > 0 && w > 0, "colorize: map size " << h << "x" << w);
  const uint8_t(*table)[3] = table_for(cmap);
  Image out{w, h, 3, std::vector<uint8_t>(size_t(h * w * 3))};
  for (int64_t i = 0; i < h * w; ++i) {
    const uint8_t* rgb = table[colormap_index(map[i])];
    std::copy(rgb, rgb + 3, out.pixels.data() + i * 3);
  }
  return out;
}

Image overlay_cam(const Image& image, const float* map, Colormap cmap, float image_weight) {
  CAMRT_CHECK(image.channels == 3 && image.width > 0 && image.height > 0 &&
                  image.pixels.size() == size_t(image.width * image.height * 3),
              "overlay: expected an RGB image, got " << image.width << "x" << image.height << "x" << image.channels);
  CAMRT_CHECK(image_weight >= 0.f && image_weight <= 1.f, "overlay: image weight " << image_weight
                                                                                    << " is outside [0, 1]");
  const uint8_t(*table)[3] = table_for(cmap);
  const size_t n = size_t(image.width * image.height * 3);
  // Python evaluates (1 - image_weight) in double; numpy then rounds it to float32 against the float32 arrays.
  const float heat_weight = float(1.0 - double(image_weight));
  std::vector<float> blended(n);
  float max_value = 0.f;
  for (size_t i = 0; i < n; ++i) {
    const float heat = float(table[colormap_index(map[i / 3])][i % 3]) / 255.0f;
    const float img = float(image.pixels[i]) / 255.0f;
    blended[i] = heat_weight * heat + image_weight * img;
    max_value = std::max(max_value, blended[i]);
  }
  Image out{image.width, image.height, 3, std::vector<uint8_t>(n, 0)};
  if (max_value <= 0.f) return out;  // only for image_weight 1 and a black image; numpy would divide by 0
  for (size_t i = 0; i < n; ++i) {
    const float v = 255.0f * (blended[i] / max_value);
    out.pixels[i] = uint8_t(std::min(std::max(v, 0.f), 255.f));  // truncation, as np.uint8
  }
  return out;
}

Image visualize_gradient(const float* g, int64_t h, int64_t w) {
  CAMRT_CHECK(h > 0 && w > 0, "visualize_gradient: size " << h << "x" << w);
  const int64_t plane = h * w, n = 3 * plane;
  // Mean and population std in double (numpy uses float32 pairwise sums: results agree to ~1e-7 relative,
  // which can move a value across a uint8 truncation boundary, i.e. rare +-1 differences).
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += g[i];
  const double mean = sum / double(n);
  double sq = 0.0;
  for (int64_t i = 0; i < n; ++i) sq += (g[i] - mean) * (g[i] - mean);
  const float mean_f = float(mean);
  const float denom = float(std::sqrt(sq / double(n))) + 1e-5f;
  Image out{w, h, 3, std::vector<uint8_t>(size_t(n))};
  for (int64_t c = 0; c < 3; ++c) {
    for (int64_t i = 0; i < plane; ++i) {
      float v = (g[c * plane + i] - mean_f) / denom * 0.1f + 0.5f;
      v = std::min(std::max(v, 0.f), 1.f);  // NaN (a NaN gradient) stays NaN here and becomes 0 below
      const float scaled = v * 255.0f;
      out.pixels[size_t(i * 3 + c)] = scaled > 0.f ? uint8_t(scaled) : 0;
    }
  }
  return out;
}

}  // namespace camrt
