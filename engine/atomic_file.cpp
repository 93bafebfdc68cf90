// Atomic file output via write-to-temporary + fsync + rename (POSIX rename replaces atomically).
#include "engine/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "engine/error.h"

namespace camrt {

AtomicFile::AtomicFile(const std::string& path)
    : path_(path), temp_path_(path + ".tmp." + std::to_string(static_cast<long long>(::getpid()))) {
  CAMRT_CHECK(!path.empty(), "cannot write a file with an empty path");
  // A leftover temporary (a crashed run with the same pid) is removed, then the file is created afresh:
  // O_EXCL | O_NOFOLLOW never follow a symlink planted at the temporary name to a file outside the output
  // folder. (The final rename replaces a symlink at `path` itself, never its target.)
  ::unlink(temp_path_.c_str());
  // 0666 before umask: the same permissions a plain std::ofstream would create.
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
  CAMRT_CHECK(fd_ >= 0, "cannot write '" << path_ << "': cannot create temporary file '" << temp_path_
                                         << "': " << std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (!committed_) discard();
}

void AtomicFile::discard() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  ::unlink(temp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t size_bytes) {
  CAMRT_CHECK(fd_ >= 0 && !committed_, "cannot write '" << path_ << "': file already committed");
  const char* p = static_cast<const char*>(data);
  while (size_bytes > 0) {
    // write() may be partial (signals, pipes, > 2 GiB requests on Linux), so loop until done.
    const ssize_t n = ::write(fd_, p, size_bytes);
    if (n < 0 && errno == EINTR) continue;
    CAMRT_CHECK(n > 0, "cannot write '" << path_ << "': " << (n < 0 ? std::strerror(errno) : "write returned 0")
                                        << " after " << bytes_written_ << " bytes");
    p += n;
    size_bytes -= static_cast<size_t>(n);
    bytes_written_ += static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  CAMRT_CHECK(fd_ >= 0 && !committed_, "cannot write '" << path_ << "': file already committed");
  // fsync before rename: otherwise a crash can leave the new name pointing at unwritten blocks.
  if (::fsync(fd_) != 0) {
    const int err = errno;
    // EINVAL/EROFS: the file system cannot sync (e.g. some special mounts); the data is still written.
    CAMRT_CHECK(err == EINVAL || err == EROFS, "cannot write '" << path_ << "': fsync failed: " << std::strerror(err));
  }
  const int close_result = ::close(fd_);
  fd_ = -1;
  CAMRT_CHECK(close_result == 0, "cannot write '" << path_ << "': close failed: " << std::strerror(errno));
  CAMRT_CHECK(::rename(temp_path_.c_str(), path_.c_str()) == 0,
              "cannot write '" << path_ << "': rename from '" << temp_path_ << "' failed: " << std::strerror(errno));
  committed_ = true;
}

void write_file_atomic(const std::string& path, const void* data, size_t size_bytes) {
  AtomicFile file(path);
  file.write(data, size_bytes);
  file.commit();
}

void write_file_atomic(const std::string& path, const std::function<void(AtomicFile&)>& produce) {
  AtomicFile file(path);
  produce(file);
  file.commit();
}

}  // namespace camrt
