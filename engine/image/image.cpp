// Image decoding through Debian's stb_image (libstb), and preprocessing that reproduces what torchvision 0.14
// does to a PIL image, down to Pillow's fixed-point bilinear resampler, so camrt's input tensor matches a
// PyTorch user's to float32 rounding when both start from the same pixels.
#include "engine/image/image.h"

#include <stb/stb_image.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include "engine/error.h"

namespace camrt {

namespace {

uint32_t le16(const uint8_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8; }
uint32_t le32(const uint8_t* p) { return le16(p) | le16(p + 2) << 16; }

const char* format_name(const uint8_t* data, size_t size) {
  if (size >= 8 && std::memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0) return "PNG";
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return "JPEG";
  if (size >= 2 && data[0] == 'B' && data[1] == 'M') return "BMP";
  return "image";
}

const char* stb_reason() {
  const char* reason = stbi_failure_reason();
  return reason ? reason : "unknown error";
}

// stb_image fills missing BMP pixel rows with zeros instead of failing (PNG and JPEG decoding does fail on
// truncation), so an uncompressed BMP is checked against the size its header implies. RLE BMPs, which stb
// rejects anyway, are left to stb.
void check_bmp_complete(const uint8_t* data, size_t size, int64_t width, int64_t height, const std::string& name) {
  if (size < 30 || data[0] != 'B' || data[1] != 'M') return;
  const uint32_t pixel_offset = le32(data + 10);
  const uint32_t header_bytes = le32(data + 14);
  uint32_t bits_per_pixel = 0, compression = 0;
  if (header_bytes == 12) {  // OS/2 BITMAPCOREHEADER
    bits_per_pixel = le16(data + 24);
  } else if (header_bytes >= 40 && size >= 34) {
    bits_per_pixel = le16(data + 28);
    compression = le32(data + 30);
  } else {
    return;
  }
  constexpr uint32_t kRgb = 0, kBitfields = 3, kAlphaBitfields = 6;
  if (compression != kRgb && compression != kBitfields && compression != kAlphaBitfields) return;
  const int64_t row_bytes = (width * bits_per_pixel + 31) / 32 * 4;  // rows are padded to 4 bytes
  const int64_t needed = int64_t(pixel_offset) + row_bytes * height;
  CAMRT_CHECK(int64_t(size) >= needed, name << ": truncated BMP data: the file has " << size
                                            << " bytes, its pixel rows end at byte " << needed);
}

// ---------------------------------------------------------------------------------------------------------
// Pillow's resampler (libImaging/Resample.c, ImagingResample with the BILINEAR filter), reimplemented.
// ---------------------------------------------------------------------------------------------------------

// Coefficients are 8-bit-pixel fixed point with 22 fraction bits: 32 bits minus 8 for the pixel value minus
// 2 of headroom, Pillow's PRECISION_BITS.
constexpr int kPrecisionBits = 32 - 8 - 2;

struct ResampleCoeffs {
  int64_t ksize = 0;                // taps per output pixel (padded with zeros)
  std::vector<int64_t> first;       // (out) first input index
  std::vector<int64_t> count;       // (out) taps used
  std::vector<int32_t> weights;     // (out, ksize) fixed point
};

double triangle(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

// precompute_coeffs + normalize_coeffs_8bpc for the box [0, in_size): the triangle filter (support 1) is
// stretched by the downscale factor, so every input pixel under an output pixel contributes (antialiasing).
ResampleCoeffs resample_coeffs(int64_t in_size, int64_t out_size) {
  const double scale = double(in_size) / double(out_size);
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;
  ResampleCoeffs c;
  c.ksize = int64_t(std::ceil(support)) * 2 + 1;
  c.first.resize(size_t(out_size));
  c.count.resize(size_t(out_size));
  c.weights.assign(size_t(out_size * c.ksize), 0);
  std::vector<double> k(size_t(c.ksize));
  for (int64_t xx = 0; xx < out_size; ++xx) {
    const double center = (double(xx) + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    // Pillow rounds with (int)(v + 0.5), i.e. truncation toward zero of v + 0.5.
    int64_t xmin = int64_t(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int64_t xmax = int64_t(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int64_t x = 0; x < xmax; ++x) {
      k[size_t(x)] = triangle((double(x + xmin) - center + 0.5) * ss);
      ww += k[size_t(x)];
    }
    for (int64_t x = 0; x < xmax; ++x) {
      double w = ww != 0.0 ? k[size_t(x)] / ww : k[size_t(x)];
      w *= double(1 << kPrecisionBits);
      c.weights[size_t(xx * c.ksize + x)] = int32_t(w < 0 ? -0.5 + w : 0.5 + w);
    }
    c.first[size_t(xx)] = xmin;
    c.count[size_t(xx)] = xmax;
  }
  return c;
}

uint8_t clip8(int32_t v) {
  if (v >= (1 << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return uint8_t(v >> kPrecisionBits);
}

// One horizontal pass: out (h, out_w, ch) from in (h, in_w, ch), rounded to uint8 as Pillow does.
Image resample_horizontal(const Image& in, int64_t out_w) {
  const ResampleCoeffs c = resample_coeffs(in.width, out_w);
  const int64_t ch = in.channels;
  Image out{out_w, in.height, ch, std::vector<uint8_t>(size_t(out_w * in.height * ch))};
  for (int64_t y = 0; y < in.height; ++y) {
    const uint8_t* src = in.row(y);
    uint8_t* dst = out.row(y);
    for (int64_t xx = 0; xx < out_w; ++xx) {
      const int32_t* k = &c.weights[size_t(xx * c.ksize)];
      const int64_t x0 = c.first[size_t(xx)], n = c.count[size_t(xx)];
      for (int64_t ci = 0; ci < ch; ++ci) {
        int32_t ss = 1 << (kPrecisionBits - 1);  // + 0.5 for rounding
        for (int64_t x = 0; x < n; ++x) ss += int32_t(src[(x0 + x) * ch + ci]) * k[x];
        dst[xx * ch + ci] = clip8(ss);
      }
    }
  }
  return out;
}

// One vertical pass: out (out_h, w, ch) from in (h, w, ch).
Image resample_vertical(const Image& in, int64_t out_h) {
  const ResampleCoeffs c = resample_coeffs(in.height, out_h);
  const int64_t ch = in.channels, row_len = in.width * ch;
  Image out{in.width, out_h, ch, std::vector<uint8_t>(size_t(row_len * out_h))};
  for (int64_t yy = 0; yy < out_h; ++yy) {
    const int32_t* k = &c.weights[size_t(yy * c.ksize)];
    const int64_t y0 = c.first[size_t(yy)], n = c.count[size_t(yy)];
    uint8_t* dst = out.row(yy);
    for (int64_t i = 0; i < row_len; ++i) {
      int32_t ss = 1 << (kPrecisionBits - 1);
      for (int64_t y = 0; y < n; ++y) ss += int32_t(in.row(y0 + y)[i]) * k[y];
      dst[i] = clip8(ss);
    }
  }
  return out;
}

// torchvision's crop offset along one side (see center_crop in image.h).
int64_t center_crop_offset(int64_t size, int64_t crop) {
  if (crop > size) return -((crop - size) / 2);  // torchvision pads (crop - size) // 2 on the left/top
  const int64_t d = size - crop;
  int64_t half = d / 2;
  // Python's round() of half + 0.5 goes to the even neighbour.
  if (d % 2 == 1 && half % 2 == 1) half += 1;
  return half;
}

void check_image(const Image& image, const char* what) {
  CAMRT_CHECK(image.width > 0 && image.height > 0 && image.channels >= 1 && image.channels <= 4,
              what << ": invalid image " << image.width << "x" << image.height << "x" << image.channels);
  CAMRT_CHECK(image.pixels.size() == size_t(image.width * image.height * image.channels),
              what << ": image buffer holds " << image.pixels.size() << " bytes, expected "
                   << image.width * image.height * image.channels);
}

}  // namespace

Image decode_image(const uint8_t* data, size_t size, const std::string& source_name) {
  CAMRT_CHECK(size > 0, source_name << ": empty file, not an image");
  CAMRT_CHECK(size <= size_t(INT_MAX), source_name << ": " << size << " bytes is larger than the 2 GiB the image decoder reads");
  const int len = int(size);
  int w = 0, h = 0, comp = 0;
  if (!stbi_info_from_memory(data, len, &w, &h, &comp))
    CAMRT_FAIL(source_name << ": not a supported image (PNG, JPEG, BMP): " << stb_reason());
  CAMRT_CHECK(w > 0 && h > 0 && w <= kMaxImageSide && h <= kMaxImageSide && int64_t(w) * h <= kMaxImagePixels,
              source_name << ": image is " << w << "x" << h << "; camrt reads images up to " << kMaxImageSide
                          << " pixels a side and " << kMaxImagePixels << " pixels in all");
  check_bmp_complete(data, size, w, h, source_name);

  int dw = 0, dh = 0, file_channels = 0;
  // req_comp = 3: stb replicates gray, expands palettes, drops alpha and keeps the high byte of 16-bit
  // samples, which is PIL's convert("RGB") (see image.h for the one divergence).
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(stbi_load_from_memory(data, len, &dw, &dh, &file_channels, 3),
                                                   stbi_image_free);
  if (!pixels)
    CAMRT_FAIL(source_name << ": cannot decode " << format_name(data, size)
                           << " image (corrupt or truncated data): " << stb_reason());
  CAMRT_CHECK(dw == w && dh == h, source_name << ": decoder returned " << dw << "x" << dh << ", header says " << w
                                              << "x" << h);
  Image image{w, h, 3, {}};
  image.pixels.assign(pixels.get(), pixels.get() + size_t(w) * size_t(h) * 3);
  return image;
}

Image read_image(const std::string& path) {
  std::error_code ec;
  CAMRT_CHECK(!std::filesystem::is_directory(path, ec), path << ": is a directory, not an image file");
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) CAMRT_FAIL(path << ": cannot open image file: " << std::strerror(errno));
  const std::streamoff size = in.tellg();
  CAMRT_CHECK(size >= 0, path << ": cannot determine the size of the image file");
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(bytes.data()), size);
  CAMRT_CHECK(in.gcount() == size, path << ": error while reading the image file (read " << in.gcount() << " of "
                                        << size << " bytes)");
  return decode_image(bytes.data(), bytes.size(), path);
}

void resized_size(int64_t* out_width, int64_t* out_height, int64_t width, int64_t height, int64_t resize) {
  CAMRT_CHECK(width > 0 && height > 0 && resize > 0,
              "resize: image " << width << "x" << height << " to shorter side " << resize);
  const int64_t shorter = std::min(width, height), longer = std::max(width, height);
  // Python: int(size * long / short), a float64 division truncated; exact for these magnitudes.
  const int64_t new_long = int64_t(double(resize * longer) / double(shorter));
  *out_width = width <= height ? resize : new_long;
  *out_height = width <= height ? new_long : resize;
}

Image resize_bilinear_antialias(const Image& image, int64_t out_width, int64_t out_height) {
  check_image(image, "resize");
  CAMRT_CHECK(out_width > 0 && out_height > 0 && out_width <= kMaxImageSide && out_height <= kMaxImageSide,
              "resize: output size " << out_width << "x" << out_height << " is out of range");
  // Pillow runs the horizontal pass first (only if the width changes), rounding to uint8 in between.
  Image out = out_width != image.width ? resample_horizontal(image, out_width) : image;
  if (out_height != image.height) out = resample_vertical(out, out_height);
  return out;
}

Image center_crop(const Image& image, int64_t crop) {
  check_image(image, "center crop");
  CAMRT_CHECK(crop > 0 && crop <= kMaxImageSide, "center crop: crop size " << crop << " is out of range");
  const int64_t top = center_crop_offset(image.height, crop), left = center_crop_offset(image.width, crop);
  const int64_t ch = image.channels;
  Image out{crop, crop, ch, std::vector<uint8_t>(size_t(crop * crop * ch), 0)};  // padding is 0, as torchvision's
  const int64_t x_begin = std::max<int64_t>(0, -left), x_end = std::min(crop, image.width - left);
  for (int64_t y = 0; y < crop; ++y) {
    const int64_t sy = y + top;
    if (sy < 0 || sy >= image.height || x_end <= x_begin) continue;
    std::memcpy(out.row(y) + x_begin * ch, image.row(sy) + (x_begin + left) * ch, size_t((x_end - x_begin) * ch));
  }
  return out;
}

Image resize_and_crop(const Image& image, int64_t resize, int64_t crop) {
  check_image(image, "resize and crop");
  int64_t w = 0, h = 0;
  resized_size(&w, &h, image.width, image.height, resize);
  return center_crop(resize_bilinear_antialias(image, w, h), crop);
}

void normalize_image(float* out, const Image& image, const float mean[3], const float std[3]) {
  check_image(image, "normalize");
  CAMRT_CHECK(image.channels == 3, "normalize: expected an RGB image, got " << image.channels << " channels");
  for (int c = 0; c < 3; ++c)
    CAMRT_CHECK(std[c] != 0.f && std::isfinite(std[c]) && std::isfinite(mean[c]),
                "normalize: mean/std of channel " << c << " must be finite with std != 0 (got " << mean[c] << ", "
                                                  << std[c] << ")");
  const int64_t plane = image.width * image.height;
  for (int64_t i = 0; i < plane; ++i) {
    for (int64_t c = 0; c < 3; ++c) {
      // ToTensor divides by 255 in float32, Normalize subtracts then divides: same operations, same order.
      const float v = float(image.pixels[size_t(i * 3 + c)]) / 255.0f;
      out[c * plane + i] = (v - mean[c]) / std[c];
    }
  }
}

void preprocess_image(float* out, const Image& image, int64_t resize, int64_t crop, const float mean[3],
                      const float std[3]) {
  normalize_image(out, resize_and_crop(image, resize, crop), mean, std);
}


}  // namespace camrt
