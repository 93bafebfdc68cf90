// PNG encoding through Debian's stb_image_write (libstb) into memory, then one atomic file write.
#include "engine/image/png.h"

#include <stb/stb_image_write.h>

#include <climits>

#include "engine/atomic_file.h"
#include "engine/error.h"

namespace camrt {

namespace {

void append_bytes(void* context, void* data, int size) {
  auto* out = static_cast<std::vector<uint8_t>*>(context);
  const auto* bytes = static_cast<const uint8_t*>(data);
  out->insert(out->end(), bytes, bytes + size);
}

}  // namespace

std::vector<uint8_t> encode_png(const Image& image) {
  CAMRT_CHECK(image.width > 0 && image.height > 0 && image.channels >= 1 && image.channels <= 4,
              "PNG: cannot encode a " << image.width << "x" << image.height << "x" << image.channels << " image");
  CAMRT_CHECK(image.pixels.size() == size_t(image.width * image.height * image.channels),
              "PNG: image buffer holds " << image.pixels.size() << " bytes, expected "
                                         << image.width * image.height * image.channels);
  // stb takes int sizes; the row stride must fit too.
  CAMRT_CHECK(image.width * image.channels <= INT_MAX && image.height <= INT_MAX,
              "PNG: image " << image.width << "x" << image.height << " is too large to encode");
  std::vector<uint8_t> bytes;
  const int ok = stbi_write_png_to_func(append_bytes, &bytes, int(image.width), int(image.height),
                                        int(image.channels), image.pixels.data(),
                                        int(image.width * image.channels));
  CAMRT_CHECK(ok != 0 && !bytes.empty(), "PNG: encoding a " << image.width << "x" << image.height << " image failed");
  return bytes;
}

void write_png(const std::string& path, const Image& image) {
  std::vector<uint8_t> bytes;
  try {
    bytes = encode_png(image);
  } catch (const Error& e) {
    CAMRT_FAIL(path << ": " << e.what());
  }
  write_file_atomic(path, bytes.data(), bytes.size());
}

}  // namespace camrt
