// CPU arenas come from aligned operator new (64 bytes: one cache line, one AVX-512 vector); device arenas from
// the CudaRuntime (cudaMalloc: 256-byte aligned).
#include "engine/memory/arena.h"

#include <new>

namespace camrt {

namespace {
constexpr std::align_val_t kArenaAlignment{64};
}

Arena::Arena(size_t bytes, Device device, CudaRuntime* cuda, const char* what) : bytes_(bytes), device_(device) {
  if (bytes == 0) return;
  if (device == Device::CUDA) {
    CAMRT_CHECK(cuda, "Arena: a device arena needs a CUDA runtime");
    data_ = static_cast<uint8_t*>(cuda->allocate(bytes, what));
    cuda_ = cuda;
    return;
  }
  try {
    data_ = static_cast<uint8_t*>(::operator new(bytes, kArenaAlignment));
  } catch (const std::bad_alloc&) {
    CAMRT_FAIL("out of memory: " << what << " needs " << bytes << " bytes (" << (bytes >> 20) << " MiB) of host memory");
  }
}

Arena::~Arena() { release(); }

Arena::Arena(Arena&& other) noexcept
    : data_(other.data_), bytes_(other.bytes_), device_(other.device_), cuda_(other.cuda_) {
  other.data_ = nullptr;
  other.bytes_ = 0;
}

Arena& Arena::operator=(Arena&& other) noexcept {
  if (this != &other) {
    release();
    data_ = other.data_;
    bytes_ = other.bytes_;
    device_ = other.device_;
    cuda_ = other.cuda_;
    other.data_ = nullptr;
    other.bytes_ = 0;
  }
  return *this;
}

void Arena::release() {
  if (data_ && cuda_) cuda_->release(data_);
  else if (data_) ::operator delete(data_, kArenaAlignment);
  data_ = nullptr;
  bytes_ = 0;
}

}  // namespace camrt
