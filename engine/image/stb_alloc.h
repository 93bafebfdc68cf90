// A per-thread cap on the size of any one allocation stb_image makes (see stb_impl.cpp). stb trusts the
// file: a PNG whose IDAT inflates far past what its header implies (a "zlib bomb") grows stb's buffer
// without bound. decode_image sets the cap from the header's dimensions, so such a file fails with stb's
// "outofmem" instead of exhausting memory. stb's allocation macros take no context, hence thread-local state.
#pragma once
#include <cstddef>

namespace camrt::detail {

// While alive, stb allocations on this thread larger than max_bytes fail (return null). Not nestable.
class StbAllocationCap {
 public:
  explicit StbAllocationCap(size_t max_bytes);
  ~StbAllocationCap();
  StbAllocationCap(const StbAllocationCap&) = delete;
  StbAllocationCap& operator=(const StbAllocationCap&) = delete;
};

}  // namespace camrt::detail
