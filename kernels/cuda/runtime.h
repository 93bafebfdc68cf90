// CudaRuntime: what every CUDA kernel launch needs from one GPU: the stream all work runs on, the cuBLAS and
// cuDNN handles bound to it, the precision policy, the convolution algorithm cache, and device memory accounting.
// One runtime per (device, thread of use); executors and explainers borrow it through Context::cuda.
// This header includes no CUDA headers, so engine code and CPU-only builds can name it; the types below are
// the CUDA/cuDNN/cuBLAS handle types, declared exactly as those libraries declare them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/error.h"

struct CUstream_st;
typedef struct CUstream_st* cudaStream_t;
struct cudnnContext;
typedef struct cudnnContext* cudnnHandle_t;
struct cublasContext;
typedef struct cublasContext* cublasHandle_t;
struct CUevent_st;
typedef struct CUevent_st* cudaEvent_t;
struct CUgraphExec_st;
typedef struct CUgraphExec_st* cudaGraphExec_t;

namespace camrt {

// How convolutions and matrix products compute. tf32 and fp16 let cuDNN/cuBLAS use tensor cores with TF32 or
// FP16 inputs and fp32 accumulation (cuDNN's TENSOR_OP_MATH_ALLOW_CONVERSION, cuBLAS's COMPUTE_32F_FAST_TF32 /
// FAST_16F) on fp32 storage. At fp16 a plan's forward-only part also stores its activations as NHWC half
// (PlanOptions::channels_last: convolutions and max pooling in the form fp16 tensor cores read), converting to
// fp32 where other ops, kept values and the backward pass read them. CAM reductions are fp32 in every mode.
enum class Precision : uint8_t { FP32, TF32, FP16 };
inline const char* precision_name(Precision precision) {
  return precision == Precision::FP32 ? "fp32" : precision == Precision::TF32 ? "tf32" : "fp16";
}
// "fp32", "tf32", "fp16"; throws naming the accepted values otherwise.
inline Precision parse_precision(const std::string& name) {
  if (name == "fp32") return Precision::FP32;
  if (name == "tf32") return Precision::TF32;
  if (name == "fp16") return Precision::FP16;
  CAMRT_FAIL("unknown precision '" << name << "' (expected fp32, tf32 or fp16)");
}

// One chosen convolution algorithm (cuDNN enum values stored as int so this header stays CUDA-free).
struct ConvAlgo {
  int algo = 0;
  size_t workspace_bytes = 0;
};

class CudaRuntime {
 public:
  // Selects `device`, creates a non-blocking stream and the cuBLAS/cuDNN handles. Throws camrt::Error if the
  // build has no CUDA or no device is present.
  explicit CudaRuntime(int device = 0, Precision precision = Precision::TF32);
  ~CudaRuntime();
  CudaRuntime(const CudaRuntime&) = delete;
  CudaRuntime& operator=(const CudaRuntime&) = delete;

  int device() const { return device_; }
  const std::string& device_name() const { return device_name_; }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  cudnnHandle_t cudnn() const { return cudnn_; }
  Precision precision() const { return precision_; }
  void set_precision(Precision precision) { precision_ = precision; }
  // How much slower than the fastest (by cuDNN's Find timings) a convolution algorithm may be and still be picked
  // for a smaller workspace: 0.10 by default (memory planned up front is worth a few percent), 0: the fastest.
  // Part of the algorithm cache's key, like the precision: set it before planning the plans it should apply to.
  float algo_slack() const { return algo_slack_; }
  void set_algo_slack(float slack) {
    CAMRT_CHECK(slack >= 0.f && slack <= 100.f, "CudaRuntime::set_algo_slack: " << slack << " is not a fraction in [0, 100]");
    algo_slack_ = slack;
  }
  // Waits for all work on the stream; throws with the CUDA error of any failed kernel.
  void synchronize() const;

  // Device memory through one place, so tests can count allocations and bench can report the peak.
  void* allocate(size_t bytes, const char* what);
  void release(void* pointer);
  void* allocate_pinned(size_t bytes, const char* what);  // page-locked host memory for H2D/D2H staging
  void release_pinned(void* pointer);
  int64_t device_allocations() const { return device_allocations_; }  // cudaMalloc calls so far
  int64_t host_allocations() const { return host_allocations_; }      // cudaMallocHost calls so far
  size_t device_bytes_in_use() const { return device_bytes_in_use_; }
  size_t device_bytes_peak() const { return device_bytes_peak_; }
  // Free and total device memory right now (cudaMemGetInfo).
  void memory_info(size_t* free_bytes, size_t* total_bytes) const;

  // Convolution algorithm cache: key is a string describing shapes, attributes, direction and precision.
  // Algorithms are chosen once per key (conv.cu) and reused by every plan of every graph on this runtime.
  bool find_conv_algo(const std::string& key, ConvAlgo* algo) const;
  void store_conv_algo(const std::string& key, const ConvAlgo& algo);

 private:
  int device_ = 0;
  std::string device_name_;
  Precision precision_ = Precision::TF32;
  float algo_slack_ = 0.10f;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cudnnHandle_t cudnn_ = nullptr;
  void* cublas_workspace_ = nullptr;  // given to cuBLAS so it never allocates inside a CUDA graph capture
  int64_t device_allocations_ = 0, host_allocations_ = 0;
  size_t device_bytes_in_use_ = 0, device_bytes_peak_ = 0;
  std::map<void*, size_t> device_sizes_;
  mutable std::mutex conv_algos_mutex_;
  std::map<std::string, ConvAlgo> conv_algos_;
};

// RAII device buffer from a runtime (weights block, arenas).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(CudaRuntime& runtime, size_t bytes, const char* what);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  uint8_t* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  CudaRuntime* runtime_ = nullptr;
  uint8_t* data_ = nullptr;
  size_t bytes_ = 0;
};

// Device-side timing of the work queued on a runtime's stream between start() and stop_ms() (CUDA events,
// created once, so timing a loop allocates nothing).
class StreamTimer {
 public:
  explicit StreamTimer(CudaRuntime& runtime);
  ~StreamTimer();
  StreamTimer(const StreamTimer&) = delete;
  StreamTimer& operator=(const StreamTimer&) = delete;
  void start();
  double stop_ms();  // waits for the work to finish

 private:
  CudaRuntime& runtime_;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

// A CUDA graph of the work a function queues on the runtime's stream: captured once, then replayed with one
// launch (no per-kernel launch cost). The captured work must not synchronize, allocate, or change its pointers
// between replays: executor plans satisfy this (fixed arena, fixed workspace, fixed weights).
class StreamGraph {
 public:
  explicit StreamGraph(CudaRuntime& runtime) : runtime_(runtime) {}
  ~StreamGraph();
  StreamGraph(const StreamGraph&) = delete;
  StreamGraph& operator=(const StreamGraph&) = delete;
  bool captured() const { return exec_ != nullptr; }
  // Starts capturing the runtime's stream (relaxed mode: other threads' CUDA calls are not disturbed).
  void begin_capture();
  // Ends the capture and instantiates the graph. Returns false (and leaves nothing captured) if the captured
  // work was not capturable; the caller then keeps running it eagerly.
  bool end_capture();
  void launch();
  // Why the last end_capture() returned false (the CUDA error of the capture or of the instantiation).
  const std::string& failure() const { return failure_; }

 private:
  CudaRuntime& runtime_;
  cudaGraphExec_t exec_ = nullptr;
  std::string failure_;
};

// Copies and fills on the runtime's stream (asynchronous with respect to the host unless stated).
void copy_to_device(CudaRuntime& runtime, void* device_dst, const void* host_src, size_t bytes);
void copy_to_host(CudaRuntime& runtime, void* host_dst, const void* device_src, size_t bytes);  // synchronizes
void copy_on_device(CudaRuntime& runtime, void* dst, const void* src, size_t bytes);
void fill_zero(CudaRuntime& runtime, void* device_dst, size_t bytes);

}  // namespace camrt
