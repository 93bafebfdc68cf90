// Names that come from untrusted data (image file names, labels in a model.json, tensor names in a weights
// file) used where they could do harm: as output file names, which must never leave the output folder, and
// inside one-line error messages, which must stay one line and of bounded length.
#pragma once
#include <cstddef>
#include <string>

namespace camrt {

// Longest sanitized name: leaves room under NAME_MAX (255 bytes on Linux) for camrt's own suffixes.
inline constexpr size_t kMaxDerivedNameBytes = 160;

// A file name (one path component) made from `name`: '/', '\\', NUL, control characters and invalid UTF-8
// bytes become '_', a leading '-' or '.' becomes '_' (no hidden files, no option-like names, never "." or
// ".."), every '.' that follows another '.' becomes '_' (no ".." anywhere), and the result is cut to
// kMaxDerivedNameBytes at a character boundary. Never empty: "" becomes "_". Valid UTF-8 letters are kept.
std::string sanitize_file_name(const std::string& name);

// dir / (sanitize_file_name(derived_name) + suffix): the path of an output file whose name is derived from
// input data. `suffix` is camrt's own (".gradcam.png") and must hold no separator and no "..".
std::string safe_output_path(const std::string& dir, const std::string& derived_name, const std::string& suffix = "");

// `text` for an error message: control characters, '\\' and invalid UTF-8 bytes escaped as \xNN, cut after
// max_bytes with "..." appended, so a hostile name cannot break the one-line error or flood the terminal.
std::string printable_name(const std::string& text, size_t max_bytes = 200);

}  // namespace camrt
