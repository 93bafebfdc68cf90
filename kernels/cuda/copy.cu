// CUDA strided copies for the shape ops (see copy.h). All copies are batches of 2-D "segments" (rows of a
// fixed width between two pitches): one launch moves up to kMaxSegments of them, blockIdx.y picking the segment,
// so a Concat of many inputs (DenseNet's) is one or two launches, not one per input.
#include <algorithm>

#include "kernels/cuda/check.h"
#include "kernels/cuda/copy.h"

namespace camrt::cuda {

namespace {

constexpr int kThreads = 256;
// Segments per launch: 32 * 40 bytes of kernel parameters, well under the 4 KiB every architecture accepts.
constexpr int kMaxSegments = 32;

// Pointers, pitches and width in units of T.
template <typename T>
struct Segment {
  T* dst;
  const T* src;
  int64_t dst_pitch, src_pitch, width;
};

template <typename T>
struct Batch {
  int n = 0;
  Segment<T> segment[kMaxSegments];
};

// A segment described in bytes (host side, before the unit is chosen).
struct ByteSegment {
  uint8_t* dst;
  const uint8_t* src;
  int64_t dst_pitch, src_pitch, width;
};

__device__ __forceinline__ int64_t grid_start() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_step() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

template <typename T, bool kAdd>
__global__ void segments_kernel(const Batch<T> batch, int64_t rows) {
  const Segment<T>& s = batch.segment[blockIdx.y];
  const int64_t total = rows * s.width;
  for (int64_t t = grid_start(); t < total; t += grid_step()) {
    const int64_t r = t / s.width, j = t - r * s.width;
    if constexpr (kAdd)
      s.dst[r * s.dst_pitch + j] += s.src[r * s.src_pitch + j];
    else
      s.dst[r * s.dst_pitch + j] = s.src[r * s.src_pitch + j];
  }
}

// Launches `segments` (none empty) in batches, every address and size divided by sizeof(T).
template <typename T, bool kAdd>
void launch_segments(const std::vector<ByteSegment>& segments, int64_t rows, cudaStream_t stream) {
  const int64_t unit = static_cast<int64_t>(sizeof(T));
  for (size_t first = 0; first < segments.size(); first += kMaxSegments) {
    Batch<T> batch;
    int64_t widest = 0;
    for (size_t i = first; i < segments.size() && batch.n < kMaxSegments; ++i) {
      const ByteSegment& b = segments[i];
      batch.segment[batch.n++] = Segment<T>{reinterpret_cast<T*>(b.dst), reinterpret_cast<const T*>(b.src),
                                            b.dst_pitch / unit, b.src_pitch / unit, b.width / unit};
      widest = std::max(widest, b.width / unit);
    }
    const dim3 grid(grid_for(rows * widest, kThreads), static_cast<unsigned>(batch.n));
    segments_kernel<T, kAdd><<<grid, kThreads, 0, stream>>>(batch, rows);
    CAMRT_CUDA_CHECK_LAUNCH("segments_kernel");
  }
}

// Copies with the widest access every segment's addresses, pitches and width are aligned to.
void copy_segments(std::vector<ByteSegment> segments, int64_t rows, cudaStream_t stream) {
  segments.erase(std::remove_if(segments.begin(), segments.end(), [](const ByteSegment& s) { return s.width == 0; }),
                 segments.end());
  if (rows == 0 || segments.empty()) return;
  uint64_t bits = 0;  // lowest set bit = the common alignment
  for (const ByteSegment& s : segments)
    bits |= reinterpret_cast<uintptr_t>(s.dst) | reinterpret_cast<uintptr_t>(s.src) | static_cast<uint64_t>(s.width) |
            (rows > 1 ? static_cast<uint64_t>(s.dst_pitch) | static_cast<uint64_t>(s.src_pitch) : 0);
  if (bits % 16 == 0)
    launch_segments<uint4, false>(segments, rows, stream);
  else if (bits % 8 == 0)
    launch_segments<uint2, false>(segments, rows, stream);
  else if (bits % 4 == 0)
    launch_segments<uint32_t, false>(segments, rows, stream);
  else if (bits % 2 == 0)
    launch_segments<uint16_t, false>(segments, rows, stream);
  else
    launch_segments<uint8_t, false>(segments, rows, stream);
}

}  // namespace

void copy_rows(void* dst, int64_t dst_pitch_bytes, const void* src, int64_t src_pitch_bytes, int64_t width_bytes,
               int64_t rows, cudaStream_t stream) {
  CAMRT_CHECK(width_bytes >= 0 && rows >= 0 && (rows <= 1 || (dst_pitch_bytes >= width_bytes && src_pitch_bytes >= width_bytes)),
              "cuda::copy_rows: rows of " << width_bytes << " bytes do not fit pitches " << dst_pitch_bytes << " / "
                                          << src_pitch_bytes);
  copy_segments({ByteSegment{static_cast<uint8_t*>(dst), static_cast<const uint8_t*>(src), dst_pitch_bytes,
                             src_pitch_bytes, width_bytes}},
                rows, stream);
}

void concat_forward(void* dst, const std::vector<const void*>& srcs, const std::vector<int64_t>& block_bytes, int64_t rows,
                    cudaStream_t stream) {
  CAMRT_CHECK(srcs.size() == block_bytes.size(),
              "cuda::concat_forward: " << srcs.size() << " sources but " << block_bytes.size() << " block sizes");
  int64_t row_bytes = 0;
  for (int64_t b : block_bytes) row_bytes += b;
  std::vector<ByteSegment> segments;
  int64_t offset = 0;
  for (size_t i = 0; i < srcs.size(); ++i) {
    segments.push_back(ByteSegment{static_cast<uint8_t*>(dst) + offset, static_cast<const uint8_t*>(srcs[i]), row_bytes,
                                   block_bytes[i], block_bytes[i]});
    offset += block_bytes[i];
  }
  copy_segments(std::move(segments), rows, stream);
}

void concat_backward(const std::vector<float*>& dsts, const float* src, const std::vector<int64_t>& block_elems,
                     int64_t rows, cudaStream_t stream) {
  CAMRT_CHECK(dsts.size() == block_elems.size(),
              "cuda::concat_backward: " << dsts.size() << " gradients but " << block_elems.size() << " block sizes");
  constexpr int64_t f = static_cast<int64_t>(sizeof(float));
  int64_t row_elems = 0;
  for (int64_t b : block_elems) row_elems += b;
  std::vector<ByteSegment> segments;
  int64_t offset = 0;
  for (size_t i = 0; i < dsts.size(); ++i) {
    if (dsts[i] && block_elems[i] > 0)
      segments.push_back(ByteSegment{reinterpret_cast<uint8_t*>(dsts[i]), reinterpret_cast<const uint8_t*>(src + offset),
                                     block_elems[i] * f, row_elems * f, block_elems[i] * f});
    offset += block_elems[i];
  }
  if (rows == 0 || segments.empty()) return;
  launch_segments<float, true>(segments, rows, stream);
}

void accumulate(float* dst, const float* src, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  constexpr int64_t f = static_cast<int64_t>(sizeof(float));
  launch_segments<float, true>({ByteSegment{reinterpret_cast<uint8_t*>(dst), reinterpret_cast<const uint8_t*>(src), n * f,
                                            n * f, n * f}},
                               1, stream);
}

}  // namespace camrt::cuda
