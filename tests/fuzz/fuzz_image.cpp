// libFuzzer target: image decoding (PNG, JPEG, BMP through stb, behind camrt's header checks) and, for what
// decodes, the preprocessing camrt explain runs (Resize, CenterCrop with and without padding, Normalize).
// Any input must decode to an in-limits RGB image or throw camrt::Error; a crash, leak or hang is a finding.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/error.h"
#include "engine/image/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  camrt::Image image;
  try {
    image = camrt::decode_image(data, size, "fuzz.img");
  } catch (const camrt::Error&) {
    return 0;
  }
  if (image.channels != 3 || image.width <= 0 || image.height <= 0 || image.width > camrt::kMaxImageSide ||
      image.height > camrt::kMaxImageSide || image.width * image.height > camrt::kMaxImagePixels ||
      image.pixels.size() != static_cast<size_t>(image.width * image.height * 3))
    __builtin_trap();
  // Preprocessing cost grows with the image (and long thin images resize to long thin ones); a quarter
  // megapixel keeps each input well under the 1 s timeout with the fuzzer's instrumentation.
  if (image.width * image.height > (int64_t(1) << 18)) return 0;
  const float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
  try {
    std::vector<float> out(3 * 28 * 28);
    camrt::preprocess_image(out.data(), image, 32, 28, mean, std);
    const camrt::Image shown = camrt::resize_and_crop(image, 8, 12);  // crop > resize: zero padding
    if (shown.width != 12 || shown.height != 12 || shown.pixels.size() != 12 * 12 * 3) __builtin_trap();
  } catch (const camrt::Error&) {
    // Extreme aspect ratios make the resized long side exceed kMaxImageSide: an error, not a crash.
  }
  return 0;
}
