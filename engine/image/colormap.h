// Turning [0, 1] maps into pictures: the four colormaps (OpenCV's jet by default; turbo, viridis, inferno),
// the heatmap-over-image overlay of cam-spec.md ("Overlay"), and the uint8 rendering of input-space gradients
// ("visualization of input-space maps"). Every function here matches pytorch-grad-cam's numpy/OpenCV steps.
#pragma once
#include <cstdint>
#include <string>

#include "engine/image/image.h"

namespace camrt {

enum class Colormap { Jet, Turbo, Viridis, Inferno };

// "jet", "turbo", "viridis", "inferno" (lower case); false for anything else.
bool colormap_from_name(const std::string& name, Colormap* cmap);
const char* colormap_name(Colormap cmap);
// The table entry for index 0..255: rgb[3]. All four tables equal OpenCV 4.6's applyColorMap (in RGB order).
const uint8_t* colormap_rgb(Colormap cmap, uint8_t index);
// The index a map value selects: uint8(255 * value) with numpy's truncation (float32 product); values outside
// [0, 1] are clamped and NaN maps to 0 (numpy would wrap or be undefined there).
uint8_t colormap_index(float value);

// The heatmap alone: (h, w, 3) RGB. map (h, w) in [0, 1].
Image colorize(const float* map, int64_t h, int64_t w, Colormap cmap);

// cam-spec "Overlay": heat = colormap(uint8(255 * map)) / 255, img = image / 255 (float32),
// out = (1 - a) * heat + a * img, out = out / max(out), uint8(255 * out) (truncation). image is the RGB picture
// the network saw, (h, w, 3) uint8, and map (image.height, image.width) in [0, 1]. Throws if sizes disagree.
Image overlay_cam(const Image& image, const float* map, Colormap cmap, float image_weight = 0.5f);

// cam-spec "visualization of input-space maps" for one image's gradient g (3, h, w), planar RGB:
// v = (g - mean g) / (std g + 1e-5) * 0.1 + 0.5 over all 3*h*w values, clipped to [0, 1], uint8(255 * v).
// Returns (h, w, 3) RGB.
Image visualize_gradient(const float* g, int64_t h, int64_t w);

}  // namespace camrt
