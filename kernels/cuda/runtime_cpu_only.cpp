// The CudaRuntime of a CPU-only build (compiled only when CAMRT_WITH_CUDA is off): constructing one fails with
// a clear message, so engine code can name the GPU types without #if and a user asking for --device cuda learns
// why it is not there. Nothing else can be reached without a runtime, so the remaining members only release.
#include "kernels/cuda/runtime.h"

namespace camrt {

CudaRuntime::CudaRuntime(int device, Precision precision) : device_(device), precision_(precision) {
  CAMRT_FAIL("this camrt was built without the CUDA backend (CAMRT_WITH_CUDA=OFF); use --device cpu");
}
CudaRuntime::~CudaRuntime() = default;
void CudaRuntime::synchronize() const {}
void* CudaRuntime::allocate(size_t, const char* what) { CAMRT_FAIL("CPU-only build: cannot allocate GPU memory for " << what); }
void CudaRuntime::release(void*) {}
void* CudaRuntime::allocate_pinned(size_t, const char* what) { CAMRT_FAIL("CPU-only build: cannot allocate pinned memory for " << what); }
void CudaRuntime::release_pinned(void*) {}
void CudaRuntime::memory_info(size_t* free_bytes, size_t* total_bytes) const { *free_bytes = *total_bytes = 0; }
bool CudaRuntime::find_conv_algo(const std::string&, ConvAlgo*) const { return false; }
void CudaRuntime::store_conv_algo(const std::string&, const ConvAlgo&) {}

DeviceBuffer::DeviceBuffer(CudaRuntime& runtime, size_t bytes, const char* what)
    : runtime_(&runtime), data_(static_cast<uint8_t*>(runtime.allocate(bytes, what))), bytes_(bytes) {}
DeviceBuffer::~DeviceBuffer() = default;
DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept : runtime_(other.runtime_), data_(other.data_), bytes_(other.bytes_) {
  other.runtime_ = nullptr;
  other.data_ = nullptr;
  other.bytes_ = 0;
}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  std::swap(runtime_, other.runtime_);
  std::swap(data_, other.data_);
  std::swap(bytes_, other.bytes_);
  return *this;
}

StreamTimer::StreamTimer(CudaRuntime& runtime) : runtime_(runtime) {}
StreamTimer::~StreamTimer() = default;
void StreamTimer::start() {}
double StreamTimer::stop_ms() { return 0.0; }

StreamGraph::~StreamGraph() = default;
void StreamGraph::begin_capture() { CAMRT_FAIL("CPU-only build: no CUDA graphs"); }
bool StreamGraph::end_capture() { return false; }
void StreamGraph::launch() {}

void copy_to_device(CudaRuntime&, void*, const void*, size_t) { CAMRT_FAIL("CPU-only build: no device copies"); }
void copy_to_host(CudaRuntime&, void*, const void*, size_t) { CAMRT_FAIL("CPU-only build: no device copies"); }
void copy_on_device(CudaRuntime&, void*, const void*, size_t) { CAMRT_FAIL("CPU-only build: no device copies"); }
void fill_zero(CudaRuntime&, void*, size_t) { CAMRT_FAIL("CPU-only build: no device copies"); }

}  // namespace camrt
