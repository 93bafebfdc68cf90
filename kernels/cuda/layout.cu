// CUDA NCHW float32 <-> NHWC (half or float32) conversions, the twins of kernels/cpu/layout.cpp: a per-image
// transpose of a (rows, cols) matrix through a 32 x 32 shared-memory tile, so that both the reads and the writes
// of a warp touch consecutive addresses. The tile holds floats; the one rounding per element (__float2half_rn, to
// nearest even, as float_to_half on the CPU) happens when a half is stored; half -> float is exact and float32
// elements are only moved (loads and stores copy bits, NaN payloads included).
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/cuda/check.h"
#include "kernels/cuda/layout.h"

namespace camrt::cuda {

namespace {

constexpr int kTile = 32;      // a warp's width: one tile row is one coalesced access
constexpr int kBlockRows = 8;  // 32 x 8 threads, each moving 4 elements of a tile
// Grid cap (as grid_for's): blocks loop over the tiles beyond it, so any images * tiles count works.
constexpr int64_t kMaxBlocks = 65535 * 8;

__device__ __forceinline__ float load_float(const float* p) { return *p; }
__device__ __forceinline__ float load_float(const uint16_t* p) { return __half2float(__ushort_as_half(*p)); }
__device__ __forceinline__ void store_float(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_float(uint16_t* p, float v) { *p = __half_as_ushort(__float2half_rn(v)); }

// out[(i * cols + c) * rows + r] = in[(i * rows + r) * cols + c] for each of the images' (rows, cols) matrices,
// converted through float. Block b handles tiles b, b + gridDim.x, ...: the loop bound is the same for every
// thread of a block, so all of them reach the barriers inside.
template <typename To, typename From>
__device__ __forceinline__ void transpose_tiles(To* __restrict__ out, const From* __restrict__ in, int64_t rows,
                                                int64_t cols, int64_t row_tiles, int64_t tiles_per_image,
                                                int64_t total_tiles) {
  // One padding column: a warp walking a tile column then hits 32 different banks.
  __shared__ float tile[kTile][kTile + 1];
  const int tx = static_cast<int>(threadIdx.x), ty = static_cast<int>(threadIdx.y);
  for (int64_t t = blockIdx.x; t < total_tiles; t += gridDim.x) {
    const int64_t image = t / tiles_per_image, tile_index = t - image * tiles_per_image;
    const int64_t r0 = (tile_index % row_tiles) * kTile, c0 = (tile_index / row_tiles) * kTile;
    const From* src = in + image * rows * cols;
    To* dst = out + image * rows * cols;
    // Read: a warp takes 32 consecutive columns of one source row.
    for (int k = ty; k < kTile; k += kBlockRows) {
      const int64_t r = r0 + k, c = c0 + tx;
      if (r < rows && c < cols) tile[k][tx] = load_float(src + r * cols + c);
    }
    __syncthreads();
    // Write: a warp takes 32 consecutive source rows of one source column, i.e. 32 consecutive outputs.
    for (int k = ty; k < kTile; k += kBlockRows) {
      const int64_t c = c0 + k, r = r0 + tx;
      if (r < rows && c < cols) store_float(dst + c * rows + r, tile[tx][k]);
    }
    __syncthreads();  // the tile is refilled for the next t
  }
}

// Source (channels, positions) float, destination (positions, channels) half bits or float, per image.
template <typename To>
__global__ void nchw_to_nhwc_kernel(To* __restrict__ out, const float* __restrict__ in, int64_t channels,
                                    int64_t positions, int64_t row_tiles, int64_t tiles_per_image,
                                    int64_t total_tiles) {
  transpose_tiles(out, in, channels, positions, row_tiles, tiles_per_image, total_tiles);
}

// Source (positions, channels) half bits or float, destination (channels, positions) float, per image.
template <typename From>
__global__ void nhwc_to_nchw_kernel(float* __restrict__ out, const From* __restrict__ in, int64_t channels,
                                    int64_t positions, int64_t row_tiles, int64_t tiles_per_image,
                                    int64_t total_tiles) {
  transpose_tiles(out, in, positions, channels, row_tiles, tiles_per_image, total_tiles);
}

// Tiling of `images` (rows, cols) matrices; total 0 means there is nothing to launch.
struct Tiling {
  int64_t row_tiles = 0, tiles_per_image = 0, total = 0;
  Tiling(int64_t images, int64_t rows, int64_t cols) {
    if (images <= 0 || rows <= 0 || cols <= 0) return;
    row_tiles = (rows + kTile - 1) / kTile;
    tiles_per_image = row_tiles * ((cols + kTile - 1) / kTile);
    total = images * tiles_per_image;
  }
  unsigned blocks() const { return static_cast<unsigned>(std::min(total, kMaxBlocks)); }
};

void check_sizes(const char* what, int64_t images, int64_t channels, int64_t positions) {
  CAMRT_CHECK(images >= 0 && channels >= 0 && positions >= 0,
              what << ": negative size (images " << images << ", channels " << channels << ", positions "
                   << positions << ")");
}

template <typename To>
void launch_nchw_to_nhwc(const char* what, To* out, const float* in, int64_t images, int64_t channels,
                         int64_t positions, cudaStream_t stream) {
  check_sizes(what, images, channels, positions);
  const Tiling tiling(images, channels, positions);
  if (tiling.total == 0) return;
  nchw_to_nhwc_kernel<To><<<tiling.blocks(), dim3(kTile, kBlockRows), 0, stream>>>(
      out, in, channels, positions, tiling.row_tiles, tiling.tiles_per_image, tiling.total);
  CAMRT_CUDA_CHECK_LAUNCH("nchw_to_nhwc_kernel");
}

template <typename From>
void launch_nhwc_to_nchw(const char* what, float* out, const From* in, int64_t images, int64_t channels,
                         int64_t positions, cudaStream_t stream) {
  check_sizes(what, images, channels, positions);
  const Tiling tiling(images, positions, channels);
  if (tiling.total == 0) return;
  nhwc_to_nchw_kernel<From><<<tiling.blocks(), dim3(kTile, kBlockRows), 0, stream>>>(
      out, in, channels, positions, tiling.row_tiles, tiling.tiles_per_image, tiling.total);
  CAMRT_CUDA_CHECK_LAUNCH("nhwc_to_nchw_kernel");
}

}  // namespace

void nchw_to_nhwc(uint16_t* out, const float* in, int64_t images, int64_t channels, int64_t positions,
                  cudaStream_t stream) {
  launch_nchw_to_nhwc("nchw_to_nhwc (half)", out, in, images, channels, positions, stream);
}

void nchw_to_nhwc(float* out, const float* in, int64_t images, int64_t channels, int64_t positions,
                  cudaStream_t stream) {
  launch_nchw_to_nhwc("nchw_to_nhwc (float)", out, in, images, channels, positions, stream);
}

void nhwc_to_nchw(float* out, const uint16_t* in, int64_t images, int64_t channels, int64_t positions,
                  cudaStream_t stream) {
  launch_nhwc_to_nchw("nhwc_to_nchw (half)", out, in, images, channels, positions, stream);
}

void nhwc_to_nchw(float* out, const float* in, int64_t images, int64_t channels, int64_t positions,
                  cudaStream_t stream) {
  launch_nhwc_to_nchw("nhwc_to_nchw (float)", out, in, images, channels, positions, stream);
}

}  // namespace camrt::cuda
