// A tiny bitmap font for labels on contact sheets and overlays: camrt's own 5x8 glyphs (5x7 body plus one
// descender row) for printable ASCII, drawn with an integer scale factor. No font files, no third-party data.
#pragma once
#include <cstdint>
#include <string>

#include "engine/image/image.h"

namespace camrt {

constexpr int kGlyphWidth = 5;    // pixels of a glyph at scale 1
constexpr int kGlyphHeight = 8;   // 7 rows of body + 1 descender row (g, j, p, q, y, _)
constexpr int kGlyphAdvance = 6;  // one blank column between characters
constexpr int kLineHeight = 10;   // one blank row above and below

// The 8 rows of one glyph: bit (4 - x) of row y set = pixel (x, y) on. Characters outside 32..126 use '?'.
const uint8_t* glyph_rows(char c);

// Size of a single line of text at `scale`: width = advance * chars - 1 gap, height = kGlyphHeight * scale.
int64_t text_width(const std::string& text, int scale = 1);
int64_t text_height(int scale = 1);

// Draws one line with its top-left corner at (x, y); pixels outside the image are clipped. rgb is the colour
// (gray images take rgb[0]). Newlines are not interpreted.
void draw_text(Image& image, int64_t x, int64_t y, const std::string& text, const uint8_t rgb[3], int scale = 1);

// Largest prefix of text (plus "..." when cut) that fits in max_width pixels at scale.
std::string fit_text(const std::string& text, int64_t max_width, int scale = 1);

}  // namespace camrt
