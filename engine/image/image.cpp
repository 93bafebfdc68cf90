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
#include "engine/image/stb_alloc.h"
#include "engine/limits.h"
#include "engine/paths.h"

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

// stb's reason can quote bytes of the file (an unknown PNG chunk's type), so it is escaped for the message.
std::string stb_reason() {
  const char* reason = stbi_failure_reason();
  return reason ? printable_name(reason) : "unknown error";
}

// stb_image fills missing BMP pixel rows with zeros instead of failing (PNG and JPEG decoding does fail on
// truncation), so a BMP is checked against the size its header implies. stb refuses only the RLE
// compressions (1 and 2) and reads every other value as uncompressed data, so only those are left to stb.
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
  constexpr uint32_t kRle8 = 1, kRle4 = 2;
  if (compression == kRle8 || compression == kRle4) return;
  const int64_t row_bytes = (width * bits_per_pixel + 31) / 32 * 4;  // rows are padded to 4 bytes
  const int64_t needed = int64_t(pixel_offset) + row_bytes * height;
  CAMRT_CHECK(int64_t(size) >= needed, name << ": truncated BMP data: the file has " << size
                                            << " bytes, its pixel rows end at byte " << needed);
}

// stb_image 2.27 trusts the symbol counts of a JPEG Huffman table (DHT): counts summing past 256 write past
// its 256-entry tables. Every DHT segment, before the first scan and between scans, is checked here, walking
// the markers as stb does: a marker is 0xFF followed by a byte other than 0x00 (a stuffed 0xFF) and the
// restart markers 0xD0-0xD7, after any number of 0xFF fill bytes; other bytes (entropy-coded data, or
// padding between segments, which stb skips too) are passed over. A truncated DHT is checked up to the end.
// `start`: the byte after the SOI marker.
void check_jpeg_tables(const uint8_t* data, size_t size, size_t start, const std::string& name) {
  // stb also decodes with a Huffman table no DHT defined, reading its uninitialized memory as indices; so
  // every table a scan will decode with must have been defined before the scan.
  bool defined[2][4] = {};  // [DC, AC][table id]
  bool progressive = false, have_frame = false;
  size_t i = start;
  while (i < size) {
    if (data[i] != 0xFF) {
      ++i;
      continue;
    }
    size_t j = i + 1;
    while (j < size && data[j] == 0xFF) ++j;  // fill bytes
    if (j >= size) return;
    const uint8_t marker = data[j];
    if (marker == 0x00 || (marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) {  // stuffing, restart, TEM
      i = j + 1;
      continue;
    }
    if (marker == 0xD9) return;  // EOI
    if (j + 2 >= size) return;
    const size_t length = size_t(data[j + 1]) << 8 | data[j + 2];  // includes its own two bytes
    const size_t begin = j + 3, end = j + 1 + length;
    if (length < 2) return;
    if (marker == 0xC4) {
      // stb reads a whole table header whenever the segment has a byte left, even past the segment's end
      // (and zeros past the file's end), so the check does the same.
      for (size_t p = begin; p < std::min(end, size);) {
        size_t symbols = 0;
        for (size_t k = 1; k <= 16 && p + k < size; ++k) symbols += data[p + k];
        CAMRT_CHECK(symbols <= 256, name << ": corrupt JPEG: Huffman table at byte " << p << " declares " << symbols
                                         << " codes, at most 256 exist");
        const int table_class = data[p] >> 4, id = data[p] & 15;
        if (table_class <= 1 && id <= 3) defined[table_class][id] = true;  // stb refuses other values
        p += 17 + symbols;
      }
    } else if ((marker == 0xC0 || marker == 0xC1 || marker == 0xC2) && !have_frame) {  // stb's SOF types
      have_frame = true;
      progressive = marker == 0xC2;
    } else if (marker == 0xDA) {  // SOS: component count, (id, DC table << 4 | AC table) each, Ss, Se, Ah|Al
      if (begin >= size) return;
      const size_t components = data[begin];
      if (begin + 1 + 2 * components + 3 > size) return;
      const uint8_t ss = data[begin + 1 + 2 * components], ah = data[begin + 3 + 2 * components] >> 4;
      // Baseline scans decode DC and AC; progressive ones DC only (first DC pass, Ah == 0) or AC only (Ss > 0).
      const bool uses_dc = !progressive || (ss == 0 && ah == 0), uses_ac = !progressive || ss > 0;
      for (size_t k = 0; k < components; ++k) {
        const int dc = data[begin + 2 + 2 * k] >> 4, ac = data[begin + 2 + 2 * k] & 15;
        if (dc > 3 || ac > 3) return;  // stb refuses the scan
        CAMRT_CHECK((!uses_dc || defined[0][dc]) && (!uses_ac || defined[1][ac]),
                    name << ": corrupt JPEG: the scan at byte " << j - 1 << " uses Huffman table "
                         << (uses_dc && !defined[0][dc] ? "DC " + std::to_string(dc) : "AC " + std::to_string(ac))
                         << ", which no DHT segment defined before it");
      }
    }
    i = end;  // past the end of the file for a truncated segment: the walk is over
  }
}

// stb_image 2.27 copies a PNG's first IDAT chunk through a null pointer when that chunk is empty (undefined
// behaviour, though harmless on glibc). Empty IDAT chunks are legal and carry nothing, so the ones before
// the first non-empty IDAT are removed, in a copy (kept in `storage`), before stb sees the file. Returns the
// bytes to decode: `data` itself when nothing needs removing.
const uint8_t* drop_leading_empty_idat(const uint8_t* data, size_t* size, std::vector<uint8_t>* storage) {
  if (*size < 8 || std::memcmp(data, "\x89PNG\r\n\x1a\n", 8) != 0) return data;
  std::vector<std::pair<size_t, size_t>> drop;  // byte ranges of chunks to remove
  for (size_t pos = 8; pos + 12 <= *size;) {
    const uint64_t length = uint64_t(data[pos]) << 24 | uint64_t(data[pos + 1]) << 16 | uint64_t(data[pos + 2]) << 8 | data[pos + 3];
    if (std::memcmp(data + pos + 4, "IDAT", 4) == 0) {
      if (length > 0) break;
      if (pos > 8) drop.emplace_back(pos, pos + 12);  // a first chunk other than IHDR stays, for stb to refuse
    }
    if (length > *size - pos - 12) break;
    pos += 12 + size_t(length);
  }
  if (drop.empty()) return data;
  storage->assign(data, data + drop[0].first);
  for (size_t k = 0; k < drop.size(); ++k) {
    const size_t next = k + 1 < drop.size() ? drop[k + 1].first : *size;
    storage->insert(storage->end(), data + drop[k].second, data + next);
  }
  *size = storage->size();
  return storage->data();
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
  // Even stbi_info parses a JPEG's Huffman tables, so they are checked first.
  // stb takes a file for a JPEG when it starts with the SOI marker, 0xFF 0xD8, after any 0xFF fill bytes.
  size_t soi = 1;
  while (soi < size && data[soi] == 0xFF) ++soi;
  const bool is_jpeg = data[0] == 0xFF && soi < size && data[soi] == 0xD8;
  if (is_jpeg) check_jpeg_tables(data, size, soi + 1, source_name);
  int w = 0, h = 0, comp = 0;
  if (!stbi_info_from_memory(data, len, &w, &h, &comp))
    CAMRT_FAIL(source_name << ": not a supported image (PNG, JPEG, BMP): " << stb_reason());
  // A BMP stores top-down rows as a negative height, which stbi_info passes on; stb's loader takes abs(),
  // undefined for INT_MIN, which the size check below refuses.
  if (size >= 2 && data[0] == 'B' && data[1] == 'M' && h < 0 && h != INT_MIN) h = -h;
  CAMRT_CHECK(w > 0 && h > 0 && w <= kMaxImageSide && h <= kMaxImageSide && int64_t(w) * h <= kMaxImagePixels,
              source_name << ": image is " << w << "x" << h << "; camrt reads images up to " << kMaxImageSide
                          << " pixels a side and " << kMaxImagePixels << " pixels in all");
  check_bmp_complete(data, size, w, h, source_name);
  // stb decodes a truncated JPEG by padding the entropy-coded data with zeros, so a few hundred bytes could
  // claim 16384x16384 and cost gigabytes and seconds. Huffman-coded JPEG (the only kind stb reads) spends at
  // least one bit per 8x8 block of the full-resolution component (its DC code), so a real file has at least
  // w*h/512 bytes.
  if (is_jpeg) {
    const int64_t min_bytes = int64_t(w) * h / 512;
    CAMRT_CHECK(int64_t(size) >= min_bytes, source_name << ": truncated or corrupt JPEG: " << w << "x" << h
                                                        << " pixels need at least " << min_bytes
                                                        << " bytes of data, the file has " << size);
  }
  // stb allocates a PNG's whole inflated size up front, from the header. Deflate expands at most 1032-fold
  // (a 258-byte match in 2 bits), so a file that cannot hold its pixels even at that ratio is refused first.
  if (size >= 26 && std::memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0 && std::memcmp(data + 12, "IHDR", 4) == 0) {
    const int64_t depth = data[24], color = data[25];
    const int64_t channels = color == 2 ? 3 : color == 4 ? 2 : color == 6 ? 4 : 1;
    const int64_t raw_bytes = int64_t(h) * (1 + (int64_t(w) * depth * channels + 7) / 8);  // rows + filter bytes
    CAMRT_CHECK(raw_bytes <= 1032 * int64_t(size), source_name << ": truncated or corrupt PNG: " << w << "x" << h
                                                               << " pixels cannot be compressed into " << size << " bytes");
  }
  // No legitimate stb allocation for a w x h image exceeds 16 bytes a pixel: 16-bit RGBA is 8, and the
  // zlib buffer for an interlaced PNG may double once past its initial guess; padding to JPEG MCUs (up to
  // 32 pixels) and small tables are covered by the rest.
  const detail::StbAllocationCap cap(size_t(16) * size_t(w) * size_t(h) + size_t(32) * (size_t(w) + size_t(h)) +
                                     (size_t(1) << 20));

  std::vector<uint8_t> cleaned;
  size_t decode_size = size;
  const uint8_t* decode_data = drop_leading_empty_idat(data, &decode_size, &cleaned);
  int dw = 0, dh = 0, file_channels = 0;
  // req_comp = 3: stb replicates gray, expands palettes, drops alpha and keeps the high byte of 16-bit
  // samples, which is PIL's convert("RGB") (see image.h for the one divergence).
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(stbi_load_from_memory(decode_data, int(decode_size), &dw, &dh, &file_channels, 3),
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
  // A regular file only: a FIFO or a device would block the open or never end.
  if (!std::filesystem::is_regular_file(path, ec)) {
    CAMRT_CHECK(std::filesystem::exists(path, ec), path << ": cannot open image file: no such file");
    CAMRT_FAIL(path << ": not a regular file, cannot read it as an image");
  }
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) CAMRT_FAIL(path << ": cannot open image file: " << std::strerror(errno));
  const std::streamoff size = in.tellg();
  CAMRT_CHECK(size >= 0, path << ": cannot determine the size of the image file");
  // Checked before the buffer is allocated: stb reads at most INT_MAX bytes.
  CAMRT_CHECK(size <= std::streamoff(std::min<int64_t>(INT_MAX, limits::kMaxFileBytes)),
              path << ": image file of " << size << " bytes exceeds the " << INT_MAX << "-byte limit");
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
