// Liveness-based memory planner: given buffers with sizes and live step ranges, assigns offsets in one
// arena so that buffers whose lifetimes overlap never overlap in memory. Greedy by size, best-fit gap
// (the "greedy by size" strategy of TFLite's arena planner): large buffers are placed first, and each buffer
// goes into the smallest hole left between buffers it is simultaneously live with. That compares every pair,
// so past 4096 buffers (huge graphs, hostile files) the plan comes from an allocator run over the steps instead:
// best fit from a free list, O(n log n), a little less tight.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace camrt {

struct BufferRequest {
  size_t bytes = 0;
  int64_t first_step = 0;  // step that writes it first
  int64_t last_step = 0;   // last step that reads it (inclusive)
};

struct MemoryPlan {
  std::vector<size_t> offsets;  // one per request, multiple of alignment
  size_t arena_bytes = 0;       // planned peak: max(offset + bytes)
  size_t naive_bytes = 0;       // sum of all (aligned) sizes: what one buffer per tensor would cost
};

// alignment: every offset and size is rounded up to it (64 bytes: a cache line and AVX-512 vector).
MemoryPlan plan_memory(const std::vector<BufferRequest>& buffers, size_t alignment = 64);

// True if the plan is valid: no two buffers live at the same step share a byte. Used by tests.
bool plan_is_valid(const std::vector<BufferRequest>& buffers, const MemoryPlan& plan);

}  // namespace camrt
