// Pad kernels: each output row (last dim) maps its coordinates back to the input; rows entirely inside the
// input are copied with memcpy, the rest element by element. Reflect excludes the edge (numpy "reflect").
// The backward inverts the row map per dim, so each dx row gathers the dy rows that read it.
#include "kernels/cpu/pad.h"

#include <algorithm>
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

void pad_backward(float* dx, const float* dy, const int64_t* in_dims, const int64_t* out_dims,
                  const int64_t* pads_begin, int64_t rank, PadMode mode, ThreadPool& pool) {
  if (rank == 0) {
    dx[0] += dy[0];
    return;
  }
  int64_t in_rows = 1, out_numel = 1;
  for (int64_t d = 0; d + 1 < rank; ++d) in_rows *= in_dims[d];
  for (int64_t d = 0; d < rank; ++d) out_numel *= out_dims[d];
  const int64_t width_in = in_dims[rank - 1], width_out = out_dims[rank - 1];
  if (in_rows == 0 || width_in == 0 || out_numel == 0) return;
  // readers[d][i]: the output coordinates along dim d (< rank-1) that read input coordinate i.
  std::vector<std::vector<std::vector<int64_t>>> readers(static_cast<size_t>(rank - 1));
  for (int64_t d = 0; d + 1 < rank; ++d) {
    readers[d].resize(static_cast<size_t>(in_dims[d]));
    for (int64_t o = 0; o < out_dims[d]; ++o) {
      const int64_t i = source_index(o, pads_begin[d], in_dims[d], mode);
      if (i >= 0) readers[d][static_cast<size_t>(i)].push_back(o);
    }
  }
  std::vector<int64_t> x_source(static_cast<size_t>(width_out));
  for (int64_t x = 0; x < width_out; ++x) x_source[x] = source_index(x, pads_begin[rank - 1], width_in, mode);
  const int64_t rows_per_input_row = std::max<int64_t>(1, out_numel / (in_rows * width_in));
  pool.parallel_for(in_rows, [&](int64_t row_begin, int64_t row_end) {
    std::vector<int64_t> in_coord(static_cast<size_t>(rank - 1)), pick(static_cast<size_t>(rank - 1));
    for (int64_t row = row_begin; row < row_end; ++row) {
      int64_t rest = row;
      bool read = true;
      for (int64_t d = rank - 2; d >= 0; --d) {
        in_coord[d] = rest % in_dims[d];
        rest /= in_dims[d];
        read = read && !readers[d][static_cast<size_t>(in_coord[d])].empty();
      }
      if (!read) continue;  // cropped away (or, in constant mode, never read)
      float* g_in = dx + row * width_in;
      // Visit every combination of reader coordinates (an odometer over the per-dim reader lists).
      std::fill(pick.begin(), pick.end(), 0);
      for (;;) {
        int64_t out_row = 0;
        for (int64_t d = 0; d + 1 < rank; ++d) out_row = out_row * out_dims[d] + readers[d][in_coord[d]][pick[d]];
        const float* g_out = dy + out_row * width_out;
        for (int64_t x = 0; x < width_out; ++x)
          if (x_source[x] >= 0) g_in[x_source[x]] += g_out[x];
        int64_t d = rank - 2;
        for (; d >= 0; --d) {
          if (++pick[d] < static_cast<int64_t>(readers[d][in_coord[d]].size())) break;
          pick[d] = 0;
        }
        if (d < 0) break;
      }
    }
  }, std::max<int64_t>(1, 16 / rows_per_input_row));
}

}  // namespace camrt
