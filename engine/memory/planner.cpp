// Greedy-by-size offset assignment; see planner.h for the strategy.
#include "engine/memory/planner.h"

#include <algorithm>
#include <numeric>

namespace camrt {

namespace {
size_t round_up(size_t n, size_t alignment) { return (n + alignment - 1) / alignment * alignment; }
bool lifetimes_overlap(const BufferRequest& a, const BufferRequest& b) {
  return a.first_step <= b.last_step && b.first_step <= a.last_step;
}
}  // namespace

MemoryPlan plan_memory(const std::vector<BufferRequest>& buffers, size_t alignment) {
  MemoryPlan plan;
  const size_t n = buffers.size();
  plan.offsets.assign(n, 0);
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  // Largest first; ties broken by first use, then index, so plans are deterministic.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (buffers[a].bytes != buffers[b].bytes) return buffers[a].bytes > buffers[b].bytes;
    return buffers[a].first_step < buffers[b].first_step;
  });
  std::vector<size_t> placed;  // indices already given an offset
  std::vector<std::pair<size_t, size_t>> busy;  // [begin, end) of placed buffers live at the same time
  for (size_t index : order) {
    const BufferRequest& request = buffers[index];
    const size_t bytes = round_up(request.bytes, alignment);
    plan.naive_bytes += bytes;
    busy.clear();
    for (size_t other : placed)
      if (lifetimes_overlap(request, buffers[other]))
        busy.emplace_back(plan.offsets[other], plan.offsets[other] + round_up(buffers[other].bytes, alignment));
    std::sort(busy.begin(), busy.end());
    // Best fit: the smallest gap between busy ranges that holds the buffer; otherwise after the last one.
    size_t best_offset = 0, best_gap = SIZE_MAX, cursor = 0;
    bool found = false;
    for (const auto& range : busy) {
      if (range.first > cursor) {
        const size_t gap = range.first - cursor;
        if (gap >= bytes && gap < best_gap) {
          best_gap = gap;
          best_offset = cursor;
          found = true;
        }
      }
      cursor = std::max(cursor, range.second);
    }
    plan.offsets[index] = found ? best_offset : cursor;
    plan.arena_bytes = std::max(plan.arena_bytes, plan.offsets[index] + bytes);
    placed.push_back(index);
  }
  return plan;
}

bool plan_is_valid(const std::vector<BufferRequest>& buffers, const MemoryPlan& plan) {
  for (size_t a = 0; a < buffers.size(); ++a) {
    if (plan.offsets[a] + buffers[a].bytes > plan.arena_bytes) return false;
    for (size_t b = a + 1; b < buffers.size(); ++b) {
      if (!lifetimes_overlap(buffers[a], buffers[b]) || buffers[a].bytes == 0 || buffers[b].bytes == 0) continue;
      const size_t a0 = plan.offsets[a], a1 = a0 + buffers[a].bytes;
      const size_t b0 = plan.offsets[b], b1 = b0 + buffers[b].bytes;
      if (a0 < b1 && b0 < a1) return false;
    }
  }
  return true;
}

}  // namespace camrt
