// Pad kernel: each output row (last dim) maps its coordinates back to the input; rows entirely inside the
// input are copied with memcpy, the rest element by element. Reflect excludes the edge (numpy "reflect").
#include "kernels/cpu/pad.h"

#include <cstring>
#include <vector>

namespace camrt {

namespace {
// Maps an output coordinate to an input coordinate, or -1 for "use the constant".
int64_t source_index(int64_t o, int64_t begin, int64_t size, PadMode mode) {
  int64_t i = o - begin;
  if (i >= 0 && i < size) return i;
  switch (mode) {
    case PadMode::Constant: return -1;
    case PadMode::Edge: return i < 0 ? 0 : size - 1;
    case PadMode::Reflect: {
      if (size == 1) return 0;
      const int64_t period = 2 * (size - 1);
      i %= period;
      if (i < 0) i += period;
      return i < size ? i : period - i;
    }
  }
  return -1;
}
}  // namespace

void pad_forward(float* out, const float* in, const int64_t* in_dims, const int64_t* out_dims,
                 const int64_t* pads_begin, int64_t rank, PadMode mode, float value, ThreadPool& pool) {
  if (rank == 0) {
    out[0] = in[0];
    return;
  }
  const int64_t width_out = out_dims[rank - 1], width_in = in_dims[rank - 1];
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < rank; ++d) rows *= out_dims[d];
  std::vector<int64_t> in_strides(static_cast<size_t>(rank), 1);
  for (int64_t d = rank - 2; d >= 0; --d) in_strides[d] = in_strides[d + 1] * in_dims[d + 1];
  pool.parallel_for(rows, [&](int64_t row_begin, int64_t row_end) {
    std::vector<int64_t> coord(static_cast<size_t>(rank), 0);
    for (int64_t row = row_begin; row < row_end; ++row) {
      float* dst = out + row * width_out;
      // Decompose the row index into output coordinates of dims 0..rank-2 and map each to the input.
      int64_t rest = row, in_offset = 0;
      bool constant_row = false;
      for (int64_t d = rank - 2; d >= 0; --d) {
        const int64_t o = rest % out_dims[d];
        rest /= out_dims[d];
        const int64_t i = in_dims[d] > 0 ? source_index(o, pads_begin[d], in_dims[d], mode) : -1;
        if (i < 0) constant_row = true;
        else in_offset += i * in_strides[d];
      }
      if (constant_row || width_in == 0) {
        for (int64_t x = 0; x < width_out; ++x) dst[x] = value;
        continue;
      }
      const float* src = in + in_offset;
      for (int64_t x = 0; x < width_out; ++x) {
        const int64_t i = source_index(x, pads_begin[rank - 1], width_in, mode);
        dst[x] = i < 0 ? value : src[i];
      }
    }
  }, 16);
}

}  // namespace camrt
