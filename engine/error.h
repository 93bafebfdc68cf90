// camrt::Error and the CAMRT_CHECK family: the only way library code reports failure.
// An Error carries a user-facing message (with node, tensor or file names) and the source location;
// the CLI prints it as one line. The library never calls exit() or abort() for bad input.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace camrt {

class Error : public std::runtime_error {
 public:
  Error(const std::string& message, const char* file, int line, const char* expression)
      : std::runtime_error(message), file_(file), line_(line), expression_(expression ? expression : "") {}
  const char* file() const { return file_; }
  int line() const { return line_; }
  const std::string& expression() const { return expression_; }
  // "message (engine/graph.cpp:42)": the single line the CLI prints.
  std::string describe() const;

 private:
  const char* file_;
  int line_;
  std::string expression_;
};

[[noreturn]] void throw_error(const char* file, int line, const char* expression, const std::string& message);

}  // namespace camrt

// msg may be a stream expression: CAMRT_CHECK(n > 0, "node '" << name << "': empty input")
#define CAMRT_CHECK(cond, msg)                                                   \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::ostringstream camrt_check_stream_;                                    \
      camrt_check_stream_ << msg;                                                \
      ::camrt::throw_error(__FILE__, __LINE__, #cond, camrt_check_stream_.str()); \
    }                                                                            \
  } while (0)

#define CAMRT_FAIL(msg)                                                         \
  do {                                                                          \
    std::ostringstream camrt_check_stream_;                                     \
    camrt_check_stream_ << msg;                                                 \
    ::camrt::throw_error(__FILE__, __LINE__, nullptr, camrt_check_stream_.str()); \
  } while (0)
