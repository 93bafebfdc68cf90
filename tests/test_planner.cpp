// Memory planner: random lifetimes never overlap in memory, reuse actually happens, and the executor's
// plans for real graphs keep kept values intact.
#include <doctest/doctest.h>

#include <algorithm>
#include <random>

#include "engine/memory/planner.h"

using namespace camrt;

TEST_CASE("planner: random interval sets give valid plans with peak <= naive") {
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<BufferRequest> buffers;
    const int n = 1 + static_cast<int>(rng() % 60);
    for (int i = 0; i < n; ++i) {
      BufferRequest b;
      b.bytes = rng() % 5 == 0 ? 0 : 1 + rng() % 100000;
      b.first_step = rng() % 50;
      b.last_step = b.first_step + rng() % 20;
      buffers.push_back(b);
    }
    const MemoryPlan plan = plan_memory(buffers);
    REQUIRE(plan.offsets.size() == buffers.size());
    CHECK(plan_is_valid(buffers, plan));
    CHECK(plan.arena_bytes <= plan.naive_bytes);
    for (size_t off : plan.offsets) CHECK(off % 64 == 0);
  }
}

TEST_CASE("planner: past 4096 buffers the allocator-over-time plan is valid, reuses memory, and stays near-linear") {
  std::mt19937 rng(99);
  for (int trial = 0; trial < 4; ++trial) {
    std::vector<BufferRequest> buffers;
    const int n = 5000;
    for (int i = 0; i < n; ++i) {
      BufferRequest b;
      b.bytes = rng() % 7 == 0 ? 0 : 1 + rng() % 200000;
      b.first_step = rng() % 3000;
      b.last_step = b.first_step + (rng() % 10 == 0 ? rng() % 3000 : rng() % 20);  // a few long-lived
      buffers.push_back(b);
    }
    const MemoryPlan plan = plan_memory(buffers);
    REQUIRE(plan.offsets.size() == buffers.size());
    CHECK(plan_is_valid(buffers, plan));
    CHECK(plan.arena_bytes < plan.naive_bytes / 4);  // reuse happened
    // Never below the true peak: the largest sum of live sizes at one step.
    size_t peak = 0;
    for (int64_t step = 0; step < 6000; step += 7) {
      size_t live = 0;
      for (const auto& b : buffers)
        if (b.first_step <= step && step <= b.last_step) live += (b.bytes + 63) / 64 * 64;
      peak = std::max(peak, live);
    }
    CHECK(plan.arena_bytes >= peak);
    CHECK(plan.arena_bytes <= 2 * peak);
  }
  // 200,000 buffers all alive to the end (a 100,000-node graph explained from its first layer): one stack.
  std::vector<BufferRequest> kept(200000);
  for (size_t i = 0; i < kept.size(); ++i) kept[i] = BufferRequest{64, static_cast<int64_t>(i), 200000};
  const MemoryPlan stacked = plan_memory(kept);
  CHECK(stacked.arena_bytes == 200000 * 64);
}

TEST_CASE("planner: a chain reuses memory (peak is two buffers, not n)") {
  // A linear network: tensor i is written at step i and read at step i + 1.
  std::vector<BufferRequest> chain;
  for (int i = 0; i < 10; ++i) chain.push_back(BufferRequest{1024, i, i + 1});
  const MemoryPlan plan = plan_memory(chain);
  CHECK(plan_is_valid(chain, plan));
  CHECK(plan.arena_bytes == 2 * 1024);
  CHECK(plan.naive_bytes == 10 * 1024);
}

TEST_CASE("planner: the validity check itself detects an overlap") {
  std::vector<BufferRequest> buffers = {{128, 0, 2}, {128, 1, 3}};
  MemoryPlan bad;
  bad.offsets = {0, 64};
  bad.arena_bytes = 256;
  CHECK_FALSE(plan_is_valid(buffers, bad));
  bad.offsets = {0, 128};
  CHECK(plan_is_valid(buffers, bad));
}
