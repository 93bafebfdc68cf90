// PNG output for heatmaps and overlays: stb_image_write's encoder, written atomically (temporary file, then
// rename) so an interrupted `camrt explain` never leaves a half-written picture behind.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/image/image.h"

namespace camrt {

// PNG bytes of an 8-bit image with 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA) channels.
std::vector<uint8_t> encode_png(const Image& image);
// encode_png, then write_file_atomic(path). Errors name the path.
void write_png(const std::string& path, const Image& image);

}  // namespace camrt
