// Images in and out of the network: decoding (stb), torchvision-equivalent preprocessing (PIL's antialiased
// bilinear Resize on the shorter side, CenterCrop, ToTensor, Normalize) and bilinear resizing of float maps.
// Decoded images are always 8-bit RGB, row-major HWC, whatever the file held (see read_image).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace camrt {

struct Image {
  int64_t width = 0, height = 0, channels = 3;
  std::vector<uint8_t> pixels;  // (height, width, channels), row-major, RGB for channels == 3

  uint8_t* row(int64_t y) { return pixels.data() + static_cast<size_t>(y * width * channels); }
  const uint8_t* row(int64_t y) const { return pixels.data() + static_cast<size_t>(y * width * channels); }
};

// Largest image read_image accepts: each side <= kMaxImageSide and width*height <= kMaxImagePixels
// (2^28 pixels = 768 MiB of RGB), checked from the header before anything is decoded.
constexpr int64_t kMaxImageSide = 16384;
constexpr int64_t kMaxImagePixels = int64_t(1) << 28;

// Decodes PNG, JPEG (baseline and progressive) and BMP (the formats engine/image/stb_impl.cpp enables) into
// 8-bit RGB, matching PIL's Image.open(f).convert("RGB") as torchvision users get it:
// grayscale is replicated to three channels, palettes are expanded, alpha is DROPPED (not composited), 16-bit
// samples keep their high byte. One divergence: PIL clamps 16-bit grayscale to 255 in convert("RGB"); camrt
// takes the high byte there too. EXIF orientation is ignored, as PIL's open does. JPEG pixels may differ from
// libjpeg-turbo's by a few levels (different IDCT / colour-conversion rounding).
// Errors (camrt::Error, naming the file): missing/unreadable file, unsupported or corrupt data, truncated
// PNG/JPEG/BMP, images over the size cap.
Image read_image(const std::string& path);
// The same for bytes in memory; source_name is what error messages call the data.
Image decode_image(const uint8_t* data, size_t size, const std::string& source_name);

// torchvision's Resize(resize) size rule: the shorter side becomes `resize`, the longer
// int(resize * long / short). Returns {width, height}.
void resized_size(int64_t* out_width, int64_t* out_height, int64_t width, int64_t height, int64_t resize);

// PIL's Image.resize(..., BILINEAR) on an 8-bit image: separable triangle filter whose support grows with the
// downscale factor (antialiasing), 22-bit fixed-point coefficients, horizontal pass first and rounded to uint8
// before the vertical pass, exactly as Pillow's ImagingResample. Same size: a copy.
Image resize_bilinear_antialias(const Image& image, int64_t out_width, int64_t out_height);

// torchvision's CenterCrop(crop) of a (square) crop x crop window: top = int(round((h - crop) / 2.0)) with
// Python's round-half-to-even; where crop exceeds a side the image is zero-padded first, as torchvision does.
Image center_crop(const Image& image, int64_t crop);

// What the network sees, before normalization: Resize(resize) then CenterCrop(crop), uint8 (crop, crop, 3).
// This is the image overlays are drawn on.
Image resize_and_crop(const Image& image, int64_t resize, int64_t crop);

// Resize(resize), CenterCrop(crop), ToTensor (/255), Normalize(mean, std), all in float32 in torchvision's
// order of operations, into out (3, crop, crop), planar RGB.
void preprocess_image(float* out, const Image& image, int64_t resize, int64_t crop, const float mean[3],
                      const float std[3]);
// The last two steps only, for an image already resized and cropped: out (3, h, w).
void normalize_image(float* out, const Image& image, const float mean[3], const float std[3]);

// Bilinear resize of float maps (CAM upsampling, Score-CAM masks) lives with the CAM kernels:
// camrt::bilinear_resize in kernels/cpu/cam.h.

}  // namespace camrt
