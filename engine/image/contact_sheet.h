// Contact sheets: a grid of pictures (rows = images, columns = input + one overlay per method), each cell
// upscaled by an integer factor (nearest neighbour, so single pixels stay visible), with boxes drawn on it and
// text lines under it, and column titles on top. Text uses camrt's bitmap font (engine/image/text.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/image/image.h"

namespace camrt {

// An inclusive pixel box in the cell image's own coordinates (before upscaling) and its colour.
struct SheetBox {
  int64_t x0 = 0, y0 = 0, x1 = -1, y1 = -1;
  uint8_t rgb[3] = {0, 255, 0};
};

struct SheetCell {
  Image image;                     // gray (1 channel) or RGB; empty (width 0) leaves the cell blank
  std::vector<SheetBox> boxes;     // drawn in order, so later boxes are on top
  std::vector<std::string> lines;  // text under the picture, one line each, cut with "..." if too long
};

struct ContactSheetOptions {
  int scale = 2;          // cell pictures are upscaled by this factor
  int text_scale = 2;     // glyph scale of cell lines and titles
  int padding = 8;        // pixels between cells and around the sheet
  uint8_t background[3] = {255, 255, 255};
  uint8_t text_rgb[3] = {20, 20, 20};
  std::vector<std::string> caption;  // lines under the grid (a legend), cut to the sheet's width
};

// rows[r][c]: the cells; every row may have a different number of cells. Column c is as wide as its widest
// picture (times scale); each row as tall as its tallest picture plus its largest number of text lines.
// column_titles (may be shorter than the number of columns) are drawn above the first row, options.caption under
// the last. Returns RGB.
Image compose_contact_sheet(const std::vector<std::vector<SheetCell>>& rows, const std::vector<std::string>& column_titles,
                            const ContactSheetOptions& options = {});

// Gray or RGB to RGB (gray replicated); RGB is copied.
Image to_rgb(const Image& image);
// Each pixel becomes a scale x scale block.
Image upscale_nearest(const Image& image, int scale);
// Outline of an inclusive box, `thickness` pixels wide, growing inwards; clipped to the image. RGB images only.
void draw_box(Image& image, int64_t x0, int64_t y0, int64_t x1, int64_t y1, const uint8_t rgb[3], int thickness = 1);
// Fills a rectangle (inclusive corners), clipped. RGB images only.
void fill_rect(Image& image, int64_t x0, int64_t y0, int64_t x1, int64_t y1, const uint8_t rgb[3]);

}  // namespace camrt
