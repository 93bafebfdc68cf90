// CUDA copies for the shape ops: strided row copies of any dtype (Concat's forward, and any op that moves
// blocks of rows), their float-accumulating reverse (Concat's backward) and plain accumulation (the view ops'
// backward). Twins of copy_blocks / add_blocks in engine/ops/shape_ops.cpp; a stream instead of the ThreadPool.
// Every destination element is written by exactly one thread: no atomics, bit-reproducible.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/cuda/runtime.h"

namespace camrt::cuda {

// `rows` rows of `width_bytes` bytes: row r goes from src + r * src_pitch_bytes to dst + r * dst_pitch_bytes.
// Source and destination must not overlap. Moves 16, 8, 4, 2 or 1 bytes per access, whichever the
// pointers, pitches and width all allow.
void copy_rows(void* dst, int64_t dst_pitch_bytes,          // (rows, dst_pitch_bytes)
               const void* src, int64_t src_pitch_bytes,    // (rows, src_pitch_bytes)
               int64_t width_bytes, int64_t rows, cudaStream_t stream);

// Concat forward: row r of dst is srcs[0] block r, srcs[1] block r, ... where srcs[i] holds `rows` contiguous
// blocks of block_bytes[i] bytes. One launch per 32 sources.
void concat_forward(void* dst,                             // (rows, sum of block_bytes)
                    const std::vector<const void*>& srcs,  // srcs[i]: (rows, block_bytes[i])
                    const std::vector<int64_t>& block_bytes, int64_t rows, cudaStream_t stream);

// Concat backward: dsts[i] row r += block i of src row r. A null dst skips its block (an input that wants no
// gradient).
void concat_backward(const std::vector<float*>& dsts,  // dsts[i]: (rows, block_elems[i])
                     const float* src,                 // (rows, sum of block_elems)
                     const std::vector<int64_t>& block_elems, int64_t rows, cudaStream_t stream);

// dst[i] += src[i] for i < n (dy has dx's elements in the same order for Flatten / Reshape / Squeeze / Unsqueeze).
void accumulate(float* dst,        // (n)
                const float* src,  // (n)
                int64_t n, cudaStream_t stream);

}  // namespace camrt::cuda
