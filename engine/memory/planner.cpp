// Greedy-by-size offset assignment; see planner.h for the strategy.
#include "engine/memory/planner.h"

#include <algorithm>
#include <iterator>
#include <map>
#include <numeric>
#include <set>

namespace camrt {

namespace {
size_t round_up(size_t n, size_t alignment) { return (n + alignment - 1) / alignment * alignment; }
bool lifetimes_overlap(const BufferRequest& a, const BufferRequest& b) {
  return a.first_step <= b.last_step && b.first_step <= a.last_step;
}

// Greedy by size up to this many buffers (a ResNet-50 explain plan has ~400): O(n^2) comparisons stay cheap.
constexpr size_t kMaxGreedyBuffers = 4096;

// Many buffers (graphs of thousands of nodes, a backward pass keeping every activation): greedy by size compares
// each buffer with every one placed before it, O(n^2), minutes for a 100,000-node graph. This is an allocator run
// over time instead, O(n log n): at each step the buffers that died before it return their ranges to a free list
// (neighbours merged), then the step's new buffers, largest first, take the smallest free range that holds them,
// else the top of the arena. Plans are a little larger than greedy by size's; deterministic all the same.
MemoryPlan plan_memory_by_time(const std::vector<BufferRequest>& buffers, size_t alignment) {
  MemoryPlan plan;
  const size_t n = buffers.size();
  plan.offsets.assign(n, 0);
  std::vector<size_t> by_start(n), by_end(n);
  std::iota(by_start.begin(), by_start.end(), 0);
  std::iota(by_end.begin(), by_end.end(), 0);
  std::stable_sort(by_start.begin(), by_start.end(), [&](size_t a, size_t b) {
    if (buffers[a].first_step != buffers[b].first_step) return buffers[a].first_step < buffers[b].first_step;
    return buffers[a].bytes > buffers[b].bytes;
  });
  std::stable_sort(by_end.begin(), by_end.end(), [&](size_t a, size_t b) { return buffers[a].last_step < buffers[b].last_step; });
  std::map<size_t, size_t> free_by_offset;             // offset -> bytes of each free range below the top
  std::set<std::pair<size_t, size_t>> free_by_size;    // (bytes, offset) of the same ranges, for best fit
  size_t top = 0;
  auto release = [&](size_t offset, size_t bytes) {
    auto next = free_by_offset.lower_bound(offset);
    if (next != free_by_offset.end() && offset + bytes == next->first) {  // merge with the range above
      free_by_size.erase({next->second, next->first});
      bytes += next->second;
      next = free_by_offset.erase(next);
    }
    if (next != free_by_offset.begin()) {  // merge with the range below
      auto prev = std::prev(next);
      if (prev->first + prev->second == offset) {
        free_by_size.erase({prev->second, prev->first});
        offset = prev->first;
        bytes += prev->second;
        free_by_offset.erase(prev);
      }
    }
    if (offset + bytes == top) {  // the range reaches the top: lower the top instead
      top = offset;
      return;
    }
    free_by_offset[offset] = bytes;
    free_by_size.insert({bytes, offset});
  };
  size_t next_end = 0;
  for (size_t index : by_start) {
    const BufferRequest& request = buffers[index];
    const size_t bytes = round_up(request.bytes, alignment);
    plan.naive_bytes += bytes;
    for (; next_end < n && buffers[by_end[next_end]].last_step < request.first_step; ++next_end) {
      const size_t dead = by_end[next_end];
      const size_t dead_bytes = round_up(buffers[dead].bytes, alignment);
      // Only buffers already placed hold memory (a zero-length lifetime before any placement holds none).
      if (dead_bytes > 0 && buffers[dead].first_step < request.first_step) release(plan.offsets[dead], dead_bytes);
    }
    auto fit = free_by_size.lower_bound({bytes, 0});
    if (bytes > 0 && fit != free_by_size.end()) {
      const auto [range_bytes, offset] = *fit;
      free_by_size.erase(fit);
      free_by_offset.erase(offset);
      plan.offsets[index] = offset;
      if (range_bytes > bytes) {
        free_by_offset[offset + bytes] = range_bytes - bytes;
        free_by_size.insert({range_bytes - bytes, offset + bytes});
      }
    } else {
      plan.offsets[index] = top;
      top += bytes;
    }
    plan.arena_bytes = std::max(plan.arena_bytes, plan.offsets[index] + bytes);
  }
  return plan;
}

}  // namespace

MemoryPlan plan_memory(const std::vector<BufferRequest>& buffers, size_t alignment) {
  if (buffers.size() > kMaxGreedyBuffers) return plan_memory_by_time(buffers, alignment);
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
