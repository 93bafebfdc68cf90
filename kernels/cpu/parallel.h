// ThreadPool: the CPU backend's workers. Owned by a Context (never global) and passed to every CPU
// launcher the way a CUDA launcher takes a stream. parallel_for splits [0, n) into contiguous chunks;
// with one thread, or when called from inside a worker, it runs inline.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace camrt {

// A non-owning reference to a callable fn(begin, end), the job of a parallel_for. parallel_for blocks until every
// chunk is done, so the callable (a lambda temporary included) outlives every call through this reference; and
// taking it this way allocates nothing, where a std::function made from a lambda with more captures than fit
// inline allocates on every call (the kernels' lambdas capture many sizes and pointers).
class ChunkFn {
 public:
  template <typename F, typename = std::enable_if_t<!std::is_same_v<std::decay_t<F>, ChunkFn>>>
  ChunkFn(F&& fn)  // NOLINT(google-explicit-constructor): lambdas convert where a parallel_for takes them
      : object_(const_cast<void*>(static_cast<const void*>(std::addressof(fn)))),
        call_([](void* object, int64_t begin, int64_t end) {
          (*static_cast<std::remove_reference_t<F>*>(object))(begin, end);
        }) {}
  void operator()(int64_t begin, int64_t end) const { call_(object_, begin, end); }

 private:
  void* object_;
  void (*call_)(void*, int64_t, int64_t);
};

class ThreadPool {
 public:
  // num_threads <= 0: std::thread::hardware_concurrency().
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Calls fn(begin, end) on disjoint chunks covering [0, n); chunks are at least min_chunk long.
  // Blocks until all chunks are done. Exceptions thrown by fn are rethrown here (first one wins).
  void parallel_for(int64_t n, ChunkFn fn, int64_t min_chunk = 1);

 private:
  void worker_loop(int worker_index);
  void shutdown();  // stops and joins the workers (destructor, or a constructor that failed half-way)

  int num_threads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const ChunkFn* job_ = nullptr;
  int64_t job_n_ = 0, job_chunk_ = 0, job_num_chunks_ = 0;
  int64_t next_chunk_ = 0, chunks_done_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread::id owner_;
  bool busy_ = false;
};

}  // namespace camrt
