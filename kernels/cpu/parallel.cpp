// ThreadPool implementation: workers pull chunk indices from a shared counter, so uneven chunks balance
// themselves; the calling thread works too, so a pool of N threads has N-1 background workers.
#include "kernels/cpu/parallel.h"

#include <algorithm>

namespace camrt {

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  num_threads_ = num_threads;
  try {
    for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
  } catch (...) {
    // A thread (or the vector) could not be created: stop and join the workers already running, or their
    // std::thread destructors would terminate the program, then report the failure.
    shutdown();
    throw;
  }
}

ThreadPool::~ThreadPool() { shutdown(); }

void ThreadPool::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::parallel_for(int64_t n, ChunkFn fn, int64_t min_chunk) {
  if (n <= 0) return;
  min_chunk = std::max<int64_t>(1, min_chunk);
  // A few chunks per thread lets fast threads pick up the slack of slow ones.
  const int64_t target_chunks = static_cast<int64_t>(num_threads_) * 4;
  const int64_t chunk = std::max(min_chunk, (n + target_chunks - 1) / target_chunks);
  const int64_t num_chunks = (n + chunk - 1) / chunk;
  std::unique_lock<std::mutex> lock(mutex_);
  // Inline when single-threaded, when there is one chunk, or when nested inside a running job.
  if (num_threads_ == 1 || num_chunks == 1 || busy_) {
    lock.unlock();
    for (int64_t b = 0; b < n; b += chunk) fn(b, std::min(n, b + chunk));
    return;
  }
  busy_ = true;
  job_ = &fn;
  job_n_ = n;
  job_chunk_ = chunk;
  job_num_chunks_ = num_chunks;
  next_chunk_ = 0;
  chunks_done_ = 0;
  error_ = nullptr;
  ++generation_;
  wake_.notify_all();
  // The caller takes chunks too.
  while (next_chunk_ < job_num_chunks_) {
    const int64_t c = next_chunk_++;
    lock.unlock();
    try {
      fn(c * chunk, std::min(n, (c + 1) * chunk));
    } catch (...) {
      lock.lock();
      if (!error_) error_ = std::current_exception();
      lock.unlock();
    }
    lock.lock();
    ++chunks_done_;
  }
  done_.wait(lock, [&] { return chunks_done_ == job_num_chunks_; });
  job_ = nullptr;
  busy_ = false;
  std::exception_ptr error = error_;
  error_ = nullptr;
  lock.unlock();
  if (error) std::rethrow_exception(error);
}

void ThreadPool::worker_loop(int) {
  uint64_t seen = 0;
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake_.wait(lock, [&] { return stop_ || (generation_ != seen && job_ && next_chunk_ < job_num_chunks_); });
    if (stop_) return;
    seen = generation_;
    while (job_ && next_chunk_ < job_num_chunks_) {
      const int64_t c = next_chunk_++;
      const auto* fn = job_;
      const int64_t n = job_n_, chunk = job_chunk_;
      lock.unlock();
      try {
        (*fn)(c * chunk, std::min(n, (c + 1) * chunk));
      } catch (...) {
        lock.lock();
        if (!error_) error_ = std::current_exception();
        lock.unlock();
      }
      lock.lock();
      if (++chunks_done_ == job_num_chunks_) done_.notify_all();
    }
  }
}

}  // namespace camrt
