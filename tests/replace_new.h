// Every variant of the global operator new and delete, replaced for a test binary that watches its allocations:
// new asks replaced_new(size, alignment, nothrow), which the one file of the binary that includes this header
// defines (to count or to fail allocations), and delete frees. malloc/posix_memalign underneath (ASan intercepts
// those, so its checks still apply); every variant is replaced, so no pointer crosses between this allocator and
// the runtime's (ASan reports such a mismatch).
#pragma once
#include <cstdlib>
#include <new>

void* replaced_new(std::size_t size, std::size_t alignment, bool nothrow);

// An allocation as the standard's operator new makes it, for replaced_new once it lets one through: malloc (or
// posix_memalign past the default alignment), retried through the new_handler, bad_alloc or null at the end.
inline void* allocate_for_new(std::size_t size, std::size_t alignment, bool nothrow) {
  if (size == 0) size = 1;
  for (;;) {
    void* p = nullptr;
    if (alignment <= __STDCPP_DEFAULT_NEW_ALIGNMENT__) p = std::malloc(size);
    else if (posix_memalign(&p, alignment, size) != 0) p = nullptr;
    if (p) return p;
    // The standard's loop: a new_handler may free memory and let us retry.
    const std::new_handler handler = std::get_new_handler();
    if (!handler) {
      if (nothrow) return nullptr;
      throw std::bad_alloc();
    }
    if (!nothrow) {
      handler();
      continue;
    }
    try {
      handler();
    } catch (...) {
      return nullptr;
    }
  }
}

void* operator new(std::size_t n) { return replaced_new(n, __STDCPP_DEFAULT_NEW_ALIGNMENT__, false); }
void* operator new[](std::size_t n) { return replaced_new(n, __STDCPP_DEFAULT_NEW_ALIGNMENT__, false); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return replaced_new(n, __STDCPP_DEFAULT_NEW_ALIGNMENT__, true);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return replaced_new(n, __STDCPP_DEFAULT_NEW_ALIGNMENT__, true);
}
void* operator new(std::size_t n, std::align_val_t a) { return replaced_new(n, static_cast<std::size_t>(a), false); }
void* operator new[](std::size_t n, std::align_val_t a) { return replaced_new(n, static_cast<std::size_t>(a), false); }
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return replaced_new(n, static_cast<std::size_t>(a), true);
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return replaced_new(n, static_cast<std::size_t>(a), true);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
