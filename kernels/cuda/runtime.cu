// CudaRuntime: stream, library handles, precision, algorithm cache and counted device allocations (see
// runtime.h). Every cudaMalloc/cudaMallocHost of camrt goes through allocate/allocate_pinned so tests can
// assert that steady-state calls allocate nothing and bench can report the measured peak.
#include "kernels/cuda/check.h"
#include "kernels/cuda/runtime.h"

namespace camrt {

CudaRuntime::CudaRuntime(int device, Precision precision) : device_(device), precision_(precision) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) cudaGetLastError();
  CAMRT_CHECK(status == cudaSuccess && count > 0,
              "no CUDA device available (" << (status == cudaSuccess ? "device count is 0" : cudaGetErrorString(status))
                                           << "); run on the CPU backend instead (--device cpu)");
  CAMRT_CHECK(device >= 0 && device < count, "CUDA device " << device << " does not exist (" << count << " present)");
  CAMRT_CUDA_CHECK(cudaSetDevice(device));
  cudaDeviceProp prop{};
  CAMRT_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  device_name_ = prop.name;
  CAMRT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  try {
    CAMRT_CUBLAS_CHECK(cublasCreate(&cublas_));
    CAMRT_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));  // once: every later call would reset the workspace below
    CAMRT_CUDNN_CHECK(cudnnCreate(&cudnn_));
    CAMRT_CUDNN_CHECK(cudnnSetStream(cudnn_, stream_));
    // Owning cuBLAS's workspace keeps captures allocation-free. 4 MiB (cuBLAS's default before Hopper) is
    // plenty for CNN heads (one small GEMM) and keeps the measured peak close to the plan.
    constexpr size_t kCublasWorkspace = size_t(4) << 20;
    cublas_workspace_ = allocate(kCublasWorkspace, "cuBLAS workspace");
    CAMRT_CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_workspace_, kCublasWorkspace));
  } catch (...) {
    if (cublas_workspace_) release(cublas_workspace_);
    if (cudnn_) cudnnDestroy(cudnn_);
    if (cublas_) cublasDestroy(cublas_);
    cudaStreamDestroy(stream_);
    throw;
  }
}

CudaRuntime::~CudaRuntime() {
  // Destructors never throw: errors here (a dead context) are ignored.
  cudaStreamSynchronize(stream_);
  if (cudnn_) cudnnDestroy(cudnn_);
  if (cublas_) cublasDestroy(cublas_);
  if (cublas_workspace_) cudaFree(cublas_workspace_);
  if (stream_) cudaStreamDestroy(stream_);
}

void CudaRuntime::synchronize() const { CAMRT_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

void* CudaRuntime::allocate(size_t bytes, const char* what) {
  if (bytes == 0) return nullptr;
  void* pointer = nullptr;
  const cudaError_t status = cudaMalloc(&pointer, bytes);
  if (status != cudaSuccess) {
    cudaGetLastError();
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    CAMRT_FAIL("out of GPU memory: " << what << " needs " << bytes << " bytes (" << (bytes >> 20) << " MiB), "
                                     << (free_bytes >> 20) << " MiB free of " << (total_bytes >> 20) << " MiB on "
                                     << device_name_ << " (" << cudaGetErrorString(status)
                                     << "); try a smaller --batch or --chunk");
  }
  try {
    device_sizes_[pointer] = bytes;
  } catch (...) {  // no host memory to record it: give the device memory back rather than leak it
    cudaFree(pointer);
    throw;
  }
  ++device_allocations_;
  device_bytes_in_use_ += bytes;
  device_bytes_peak_ = std::max(device_bytes_peak_, device_bytes_in_use_);
  return pointer;
}

void CudaRuntime::release(void* pointer) {
  if (!pointer) return;
  auto it = device_sizes_.find(pointer);
  if (it != device_sizes_.end()) {
    device_bytes_in_use_ -= it->second;
    device_sizes_.erase(it);
  }
  cudaFree(pointer);
}

void* CudaRuntime::allocate_pinned(size_t bytes, const char* what) {
  if (bytes == 0) return nullptr;
  void* pointer = nullptr;
  const cudaError_t status = cudaMallocHost(&pointer, bytes);
  if (status != cudaSuccess) cudaGetLastError();
  CAMRT_CHECK(status == cudaSuccess, "cannot allocate " << bytes << " bytes of pinned host memory for " << what << ": "
                                                        << cudaGetErrorString(status));
  ++host_allocations_;
  return pointer;
}

void CudaRuntime::release_pinned(void* pointer) {
  if (pointer) cudaFreeHost(pointer);
}

void CudaRuntime::memory_info(size_t* free_bytes, size_t* total_bytes) const {
  CAMRT_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
}

bool CudaRuntime::find_conv_algo(const std::string& key, ConvAlgo* algo) const {
  std::lock_guard<std::mutex> lock(conv_algos_mutex_);
  auto it = conv_algos_.find(key);
  if (it == conv_algos_.end()) return false;
  *algo = it->second;
  return true;
}

void CudaRuntime::store_conv_algo(const std::string& key, const ConvAlgo& algo) {
  std::lock_guard<std::mutex> lock(conv_algos_mutex_);
  conv_algos_[key] = algo;
}

DeviceBuffer::DeviceBuffer(CudaRuntime& runtime, size_t bytes, const char* what)
    : runtime_(&runtime), data_(static_cast<uint8_t*>(runtime.allocate(bytes, what))), bytes_(bytes) {}

DeviceBuffer::~DeviceBuffer() {
  if (runtime_) runtime_->release(data_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : runtime_(other.runtime_), data_(other.data_), bytes_(other.bytes_) {
  other.runtime_ = nullptr;
  other.data_ = nullptr;
  other.bytes_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (runtime_) runtime_->release(data_);
    runtime_ = other.runtime_;
    data_ = other.data_;
    bytes_ = other.bytes_;
    other.runtime_ = nullptr;
    other.data_ = nullptr;
    other.bytes_ = 0;
  }
  return *this;
}

StreamTimer::StreamTimer(CudaRuntime& runtime) : runtime_(runtime) {
  CAMRT_CUDA_CHECK(cudaEventCreate(&start_));
  CAMRT_CUDA_CHECK(cudaEventCreate(&stop_));
}

StreamTimer::~StreamTimer() {
  cudaEventDestroy(start_);
  cudaEventDestroy(stop_);
}

void StreamTimer::start() { CAMRT_CUDA_CHECK(cudaEventRecord(start_, runtime_.stream())); }

double StreamTimer::stop_ms() {
  CAMRT_CUDA_CHECK(cudaEventRecord(stop_, runtime_.stream()));
  CAMRT_CUDA_CHECK(cudaEventSynchronize(stop_));
  float ms = 0.f;
  CAMRT_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
  return ms;
}

StreamGraph::~StreamGraph() {
  if (exec_) cudaGraphExecDestroy(exec_);
}

void StreamGraph::begin_capture() {
  CAMRT_CUDA_CHECK(cudaStreamBeginCapture(runtime_.stream(), cudaStreamCaptureModeRelaxed));
}

bool StreamGraph::end_capture() {
  cudaGraph_t graph = nullptr;
  const cudaError_t status = cudaStreamEndCapture(runtime_.stream(), &graph);
  if (status != cudaSuccess || !graph) {
    failure_ = std::string("cudaStreamEndCapture: ") + (status != cudaSuccess ? cudaGetErrorString(status) : "no graph");
    cudaGetLastError();  // an invalidated capture is not an error of the next call
    if (graph) cudaGraphDestroy(graph);
    return false;
  }
  const cudaError_t inst = cudaGraphInstantiate(&exec_, graph, 0);
  cudaGraphDestroy(graph);
  if (inst != cudaSuccess) {
    failure_ = std::string("cudaGraphInstantiate: ") + cudaGetErrorString(inst);
    cudaGetLastError();
    exec_ = nullptr;
    return false;
  }
  return true;
}

void StreamGraph::launch() { CAMRT_CUDA_CHECK(cudaGraphLaunch(exec_, runtime_.stream())); }

void copy_to_device(CudaRuntime& runtime, void* device_dst, const void* host_src, size_t bytes) {
  if (bytes) CAMRT_CUDA_CHECK(cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice, runtime.stream()));
}

void copy_to_host(CudaRuntime& runtime, void* host_dst, const void* device_src, size_t bytes) {
  if (bytes) CAMRT_CUDA_CHECK(cudaMemcpyAsync(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, runtime.stream()));
  runtime.synchronize();
}

void copy_on_device(CudaRuntime& runtime, void* dst, const void* src, size_t bytes) {
  if (bytes && dst != src) CAMRT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, runtime.stream()));
}

void fill_zero(CudaRuntime& runtime, void* device_dst, size_t bytes) {
  if (bytes) CAMRT_CUDA_CHECK(cudaMemsetAsync(device_dst, 0, bytes, runtime.stream()));
}

}  // namespace camrt
