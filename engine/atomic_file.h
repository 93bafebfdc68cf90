// Atomic file output: bytes go to "<path>.tmp.<pid>", are flushed to disk, and only then renamed over
// <path>, so a reader (or a crash) never sees a half-written file. Every error names the final path.
// Two writers of the same path in one process must not overlap (they would share the temporary name).
#pragma once
#include <cstddef>
#include <functional>
#include <string>

namespace camrt {

// One atomic write in progress. Nothing appears at path() until commit(); destroying an
// uncommitted AtomicFile (an exception while producing the data) removes the temporary file.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t size_bytes);
  void write(const std::string& text) { write(text.data(), text.size()); }
  // fsync, close, rename over path(). Further writes are an error.
  void commit();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }
  size_t bytes_written() const { return bytes_written_; }

 private:
  void discard() noexcept;

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  size_t bytes_written_ = 0;
  bool committed_ = false;
};

void write_file_atomic(const std::string& path, const void* data, size_t size_bytes);
// Streams a file through `produce` (which calls AtomicFile::write as often as it likes), then commits.
// If `produce` throws, the destination is left untouched and the exception propagates.
void write_file_atomic(const std::string& path, const std::function<void(AtomicFile&)>& produce);

}  // namespace camrt
