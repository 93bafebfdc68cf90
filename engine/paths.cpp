// Sanitizing untrusted names for file paths and messages (see paths.h). Byte-level and locale-independent:
// the same name gives the same file on every machine.
#include "engine/paths.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>

#include "engine/error.h"

namespace camrt {

namespace {

// Length of the valid UTF-8 sequence starting at s[i], or 0 if it is not one (overlong forms, surrogates
// and code points above U+10FFFF are invalid, as in RFC 3629).
size_t utf8_sequence_length(const std::string& s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = byte(i);
  if (c < 0x80) return 1;
  size_t n = 0;
  uint32_t cp = 0;
  if ((c & 0xE0) == 0xC0) n = 2, cp = c & 0x1F;
  else if ((c & 0xF0) == 0xE0) n = 3, cp = c & 0x0F;
  else if ((c & 0xF8) == 0xF0) n = 4, cp = c & 0x07;
  else return 0;
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

bool is_control(unsigned char c) { return c < 0x20 || c == 0x7F; }

}  // namespace

std::string sanitize_file_name(const std::string& name) {
  std::string out;
  for (size_t i = 0; i < name.size();) {
    const size_t n = utf8_sequence_length(name, i);
    if (out.size() + std::max<size_t>(n, 1) > kMaxDerivedNameBytes) break;
    if (n == 0) {  // invalid UTF-8 byte
      out += '_';
      ++i;
      continue;
    }
    if (n > 1) {
      out.append(name, i, n);
      i += n;
      continue;
    }
    char c = name[i++];
    if (c == '/' || c == '\\' || is_control(static_cast<unsigned char>(c))) c = '_';
    if (out.empty() && (c == '-' || c == '.')) c = '_';
    if (c == '.' && out.back() == '.') c = '_';
    out += c;
  }
  return out.empty() ? "_" : out;
}

std::string safe_output_path(const std::string& dir, const std::string& derived_name, const std::string& suffix) {
  CAMRT_CHECK(suffix.find('/') == std::string::npos && suffix.find('\\') == std::string::npos &&
                  suffix.find("..") == std::string::npos && suffix.find('\0') == std::string::npos,
              "output file suffix '" << printable_name(suffix) << "' is not a plain file name ending");
  std::string file = sanitize_file_name(derived_name);
  // The suffix may start with '.': "name" + ".png" cannot form ".." because the name never ends in "..",
  // but a name ending in '.' followed by a suffix starting with '.' would; break that pair.
  if (!suffix.empty() && suffix[0] == '.' && file.back() == '.') file.back() = '_';
  return (std::filesystem::path(dir) / (file + suffix)).string();
}

std::string printable_name(const std::string& text, size_t max_bytes) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < text.size();) {
    if (out.size() >= max_bytes) return out + "...";
    const size_t n = utf8_sequence_length(text, i);
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (n > 1) {
      out.append(text, i, n);
      i += n;
    } else if (n == 0 || is_control(c) || c == '\\') {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
      ++i;
    } else {
      out += static_cast<char>(c);
      ++i;
    }
  }
  return out;
}

}  // namespace camrt
