// Contact sheet composition (engine/image/contact_sheet.h): pure pixel pushing on camrt::Image.
#include "engine/image/contact_sheet.h"

#include <algorithm>

#include "engine/error.h"
#include "engine/image/text.h"

namespace camrt {

Image to_rgb(const Image& image) {
  CAMRT_CHECK(image.channels == 1 || image.channels == 3, "contact sheet: images need 1 or 3 channels, got " << image.channels);
  if (image.channels == 3) return image;
  Image out;
  out.width = image.width;
  out.height = image.height;
  out.channels = 3;
  out.pixels.resize(static_cast<size_t>(image.width * image.height * 3));
  for (int64_t i = 0; i < image.width * image.height; ++i)
    out.pixels[i * 3] = out.pixels[i * 3 + 1] = out.pixels[i * 3 + 2] = image.pixels[i];
  return out;
}

Image upscale_nearest(const Image& image, int scale) {
  CAMRT_CHECK(scale >= 1, "upscale_nearest: scale must be at least 1, got " << scale);
  Image out;
  out.width = image.width * scale;
  out.height = image.height * scale;
  out.channels = image.channels;
  out.pixels.resize(static_cast<size_t>(out.width * out.height * out.channels));
  const int64_t C = image.channels;
  for (int64_t y = 0; y < out.height; ++y)
    for (int64_t x = 0; x < out.width; ++x)
      for (int64_t c = 0; c < C; ++c) out.pixels[(y * out.width + x) * C + c] = image.pixels[((y / scale) * image.width + x / scale) * C + c];
  return out;
}

void fill_rect(Image& image, int64_t x0, int64_t y0, int64_t x1, int64_t y1, const uint8_t rgb[3]) {
  CAMRT_CHECK(image.channels == 3, "fill_rect: RGB images only");
  x0 = std::max<int64_t>(x0, 0), y0 = std::max<int64_t>(y0, 0);
  x1 = std::min<int64_t>(x1, image.width - 1), y1 = std::min<int64_t>(y1, image.height - 1);
  for (int64_t y = y0; y <= y1; ++y)
    for (int64_t x = x0; x <= x1; ++x) {
      uint8_t* p = image.pixels.data() + (y * image.width + x) * 3;
      p[0] = rgb[0], p[1] = rgb[1], p[2] = rgb[2];
    }
}

void draw_box(Image& image, int64_t x0, int64_t y0, int64_t x1, int64_t y1, const uint8_t rgb[3], int thickness) {
  if (x1 < x0 || y1 < y0) return;  // empty box: nothing to draw
  const int64_t t = std::max(1, thickness) - 1;
  fill_rect(image, x0, y0, x1, std::min(y0 + t, y1), rgb);  // top
  fill_rect(image, x0, std::max(y1 - t, y0), x1, y1, rgb);  // bottom
  fill_rect(image, x0, y0, std::min(x0 + t, x1), y1, rgb);  // left
  fill_rect(image, std::max(x1 - t, x0), y0, x1, y1, rgb);  // right
}

Image compose_contact_sheet(const std::vector<std::vector<SheetCell>>& rows, const std::vector<std::string>& column_titles,
                            const ContactSheetOptions& options) {
  const int s = options.scale, ts = options.text_scale, pad = options.padding;
  CAMRT_CHECK(s >= 1 && ts >= 1 && pad >= 0, "contact sheet: scale, text scale must be >= 1 and padding >= 0");
  const int64_t line_h = int64_t(kLineHeight) * ts;
  size_t columns = column_titles.size();
  for (const auto& row : rows) columns = std::max(columns, row.size());
  std::vector<int64_t> col_w(columns, 0), row_h(rows.size(), 0);
  for (size_t r = 0; r < rows.size(); ++r)
    for (size_t c = 0; c < rows[r].size(); ++c) {
      const SheetCell& cell = rows[r][c];
      col_w[c] = std::max(col_w[c], cell.image.width * s);
      row_h[r] = std::max(row_h[r], cell.image.height * s + static_cast<int64_t>(cell.lines.size()) * line_h);
    }
  for (size_t c = 0; c < columns; ++c)  // a column without pictures is as wide as its title
    if (col_w[c] == 0 && c < column_titles.size()) col_w[c] = text_width(column_titles[c], ts);
  const int64_t title_h = column_titles.empty() ? 0 : line_h;
  Image sheet;
  sheet.channels = 3;
  sheet.width = pad;
  for (int64_t w : col_w) sheet.width += w + pad;
  sheet.height = pad + title_h;
  for (int64_t h : row_h) sheet.height += h + pad;
  sheet.height += static_cast<int64_t>(options.caption.size()) * line_h + (options.caption.empty() ? 0 : pad);
  sheet.pixels.resize(static_cast<size_t>(sheet.width * sheet.height * 3));
  fill_rect(sheet, 0, 0, sheet.width - 1, sheet.height - 1, options.background);

  std::vector<int64_t> col_x(columns, pad);
  for (size_t c = 1; c < columns; ++c) col_x[c] = col_x[c - 1] + col_w[c - 1] + pad;
  for (size_t c = 0; c < column_titles.size(); ++c)
    draw_text(sheet, col_x[c], pad + (line_h - text_height(ts)) / 2, fit_text(column_titles[c], col_w[c], ts), options.text_rgb, ts);
  int64_t y = pad + title_h;
  for (size_t r = 0; r < rows.size(); ++r) {
    for (size_t c = 0; c < rows[r].size(); ++c) {
      const SheetCell& cell = rows[r][c];
      int64_t text_y = y;
      if (cell.image.width > 0) {
        Image big = upscale_nearest(to_rgb(cell.image), s);
        for (const SheetBox& b : cell.boxes) draw_box(big, b.x0 * s, b.y0 * s, (b.x1 + 1) * s - 1, (b.y1 + 1) * s - 1, b.rgb, s);
        for (int64_t yy = 0; yy < big.height; ++yy)
          std::copy(big.row(yy), big.row(yy) + big.width * 3, sheet.row(y + yy) + col_x[c] * 3);
        text_y += big.height;
      }
      for (size_t l = 0; l < cell.lines.size(); ++l)
        draw_text(sheet, col_x[c], text_y + static_cast<int64_t>(l) * line_h + (line_h - text_height(ts)) / 2,
                  fit_text(cell.lines[l], col_w[c], ts), options.text_rgb, ts);
    }
    y += row_h[r] + pad;
  }
  for (size_t l = 0; l < options.caption.size(); ++l)
    draw_text(sheet, pad, y + static_cast<int64_t>(l) * line_h + (line_h - text_height(ts)) / 2,
              fit_text(options.caption[l], sheet.width - 2 * pad, ts), options.text_rgb, ts);
  return sheet;
}

}  // namespace camrt
