// Error formatting: the location is kept short (path from the repository root) so one line stays readable.
#include "engine/error.h"

#include <cstring>

namespace camrt {

static const char* short_path(const char* file) {
  for (const char* top : {"/engine/", "/kernels/", "/weights/", "/tools/", "/tests/"}) {
    const char* hit = std::strstr(file, top);
    if (hit) return hit + 1;
  }
  return file;
}

std::string Error::describe() const {
  std::ostringstream os;
  os << what() << " (" << short_path(file_) << ":" << line_ << ")";
  return os.str();
}

void throw_error(const char* file, int line, const char* expression, const std::string& message) {
  throw Error(message, file, line, expression);
}

}  // namespace camrt
