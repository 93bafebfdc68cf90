// The stb image decoder and PNG encoder, compiled from Debian's libstb-dev headers (not copied into the
// repository). Built here rather than linked from libstb so the staged headers alone suffice on machines
// without Debian's library (the GPU machine, edge boards). Only the formats camrt accepts are enabled, and
// the decoder's allocations go through a per-thread cap (stb_alloc.h) so a hostile file cannot make it
// allocate more than its dimensions justify.
#include <cstdint>
#include <cstdlib>

#include "engine/image/stb_alloc.h"

namespace camrt::detail {
namespace {
thread_local size_t stb_allocation_cap = SIZE_MAX;
}  // namespace

StbAllocationCap::StbAllocationCap(size_t max_bytes) { stb_allocation_cap = max_bytes; }
StbAllocationCap::~StbAllocationCap() { stb_allocation_cap = SIZE_MAX; }

void* stb_malloc(size_t bytes) { return bytes > stb_allocation_cap ? nullptr : std::malloc(bytes); }
void* stb_realloc(void* p, size_t bytes) { return bytes > stb_allocation_cap ? nullptr : std::realloc(p, bytes); }

}  // namespace camrt::detail

#define STBI_MALLOC(bytes) camrt::detail::stb_malloc(bytes)
#define STBI_REALLOC(p, bytes) camrt::detail::stb_realloc(p, bytes)
#define STBI_FREE(p) std::free(p)

#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_WRITE_NO_STDIO
#define STB_IMAGE_WRITE_IMPLEMENTATION
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wunused-function"
#endif
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>
