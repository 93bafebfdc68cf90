// NCHW float32 <-> NHWC (half or float32) conversions (kernels/cpu/layout.h). All are a per-image transpose of a
// (rows, cols) matrix, with a precision change on the way for half; the transpose goes tile by tile, so that the
// rows of a tile read on one side and written on the other stay in cache. Each element is rounded at most once
// (float -> half, to nearest even through float_to_half), so the result does not depend on the tiling or threads.
#include "kernels/cpu/layout.h"

#include <algorithm>

#include "engine/error.h"
#include "kernels/cpu/half.h"

namespace camrt {

namespace {

// 32 x 32 elements: 32 source rows of 128 bytes (float) or 64 bytes (half) and as many destination rows,
// about 6 KiB touched per tile, well inside L1.
constexpr int64_t kTile = 32;
// Below this many elements per chunk, waking workers (about 10 us) costs more than the work.
constexpr int64_t kMinElementsPerChunk = int64_t(1) << 15;

// out[(i * cols + c) * rows + r] = convert(in[(i * rows + r) * cols + c]): each of `images` (rows, cols)
// matrices transposed. Work items are (image, row tile, column tile) triples, so a single large image (one
// image of 3 x 224 x 224) spreads over the threads as well as a batch of small ones does.
template <typename To, typename From, typename Convert>
void transpose_images(To* out, const From* in, int64_t images, int64_t rows, int64_t cols, Convert convert,
                      ThreadPool& pool) {
  if (images == 0 || rows == 0 || cols == 0) return;
  const int64_t row_tiles = (rows + kTile - 1) / kTile, col_tiles = (cols + kTile - 1) / kTile;
  const int64_t tiles_per_image = row_tiles * col_tiles;
  pool.parallel_for(images * tiles_per_image, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t image = t / tiles_per_image, tile = t % tiles_per_image;
      // Row tiles vary fastest: consecutive tiles continue the same output rows (output row = source column).
      const int64_t r0 = (tile % row_tiles) * kTile, c0 = (tile / row_tiles) * kTile;
      const int64_t r1 = std::min(rows, r0 + kTile), c1 = std::min(cols, c0 + kTile);
      const From* src = in + image * rows * cols;
      To* dst = out + image * rows * cols;
      // Writes run along output rows; the strided reads touch kTile source rows, all kept in cache by the tile.
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) dst[c * rows + r] = convert(src[r * cols + c]);
    }
  }, std::max<int64_t>(1, kMinElementsPerChunk / (kTile * kTile)));
}

void check_sizes(const char* what, int64_t images, int64_t channels, int64_t positions) {
  CAMRT_CHECK(images >= 0 && channels >= 0 && positions >= 0,
              what << ": negative size (images " << images << ", channels " << channels << ", positions "
                   << positions << ")");
}

}  // namespace

void nchw_to_nhwc(uint16_t* out, const float* in, int64_t images, int64_t channels, int64_t positions,
                  ThreadPool& pool) {
  check_sizes("nchw_to_nhwc (half)", images, channels, positions);
  // Source rows are channels, source columns positions.
  transpose_images(out, in, images, channels, positions, [](float v) { return float_to_half(v); }, pool);
}

void nchw_to_nhwc(float* out, const float* in, int64_t images, int64_t channels, int64_t positions,
                  ThreadPool& pool) {
  check_sizes("nchw_to_nhwc (float)", images, channels, positions);
  transpose_images(out, in, images, channels, positions, [](float v) { return v; }, pool);
}

void nhwc_to_nchw(float* out, const uint16_t* in, int64_t images, int64_t channels, int64_t positions,
                  ThreadPool& pool) {
  check_sizes("nhwc_to_nchw (half)", images, channels, positions);
  // Source rows are positions, source columns channels.
  transpose_images(out, in, images, positions, channels, [](uint16_t h) { return half_to_float(h); }, pool);
}

void nhwc_to_nchw(float* out, const float* in, int64_t images, int64_t channels, int64_t positions,
                  ThreadPool& pool) {
  check_sizes("nhwc_to_nchw (float)", images, channels, positions);
  transpose_images(out, in, images, positions, channels, [](float v) { return v; }, pool);
}

}  // namespace camrt
