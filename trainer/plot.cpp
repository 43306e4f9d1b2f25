#include "trainer/plot.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace anvil {

namespace fs = std::filesystem;

Image::Image(int w, int h, uint32_t fill) : width(w), height(h), rgb(static_cast<size_t>(w) * h * 3) {
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) set(x, y, fill);
}

void Image::set(int x, int y, uint32_t c) {
  if (x < 0 || y < 0 || x >= width || y >= height) return;
  uint8_t* p = &rgb[(static_cast<size_t>(y) * width + x) * 3];
  p[0] = static_cast<uint8_t>(c >> 16);
  p[1] = static_cast<uint8_t>(c >> 8);
  p[2] = static_cast<uint8_t>(c);
}

uint32_t Image::get(int x, int y) const {
  const uint8_t* p = &rgb[(static_cast<size_t>(y) * width + x) * 3];
  return uint32_t(p[0]) << 16 | uint32_t(p[1]) << 8 | p[2];
}

namespace {

void put_be32(std::string& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<char>(v >> s));
}

void put_chunk(std::string& out, const char* type, const std::string& data) {
  put_be32(out, static_cast<uint32_t>(data.size()));
  const std::string body = std::string(type, 4) + data;
  out += body;
  put_be32(out, static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(body.data()), body.size())));
}

// ---- a 5x7 bitmap font: rows top to bottom, bit 4 = leftmost column ----
struct Glyph {
  char c;
  uint8_t rows[7];
};
const Glyph kFont[] = {
    {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}}, {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}}, {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
    {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}}, {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
    {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}}, {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}}, {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
    {'.', {0, 0, 0, 0, 0, 0x0C, 0x0C}},                 {'-', {0, 0, 0, 0x1F, 0, 0, 0}},
    {'+', {0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0}},        {'/', {0, 0x01, 0x02, 0x04, 0x08, 0x10, 0}},
    {'(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}}, {')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}},
    {',', {0, 0, 0, 0, 0x0C, 0x04, 0x08}},              {':', {0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0}},
    {'%', {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}}, {'_', {0, 0, 0, 0, 0, 0, 0x1F}},
    {'a', {0, 0, 0x0E, 0x01, 0x0F, 0x11, 0x0F}},        {'b', {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E}},
    {'c', {0, 0, 0x0E, 0x10, 0x10, 0x11, 0x0E}},        {'d', {0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F}},
    {'e', {0, 0, 0x0E, 0x11, 0x1F, 0x10, 0x0E}},        {'f', {0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08}},
    {'g', {0, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E}},     {'h', {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11}},
    {'i', {0x04, 0, 0x0C, 0x04, 0x04, 0x04, 0x0E}},     {'j', {0x02, 0, 0x06, 0x02, 0x02, 0x12, 0x0C}},
    {'k', {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12}}, {'l', {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'m', {0, 0, 0x1A, 0x15, 0x15, 0x11, 0x11}},        {'n', {0, 0, 0x16, 0x19, 0x11, 0x11, 0x11}},
    {'o', {0, 0, 0x0E, 0x11, 0x11, 0x11, 0x0E}},        {'p', {0, 0, 0x1E, 0x11, 0x1E, 0x10, 0x10}},
    {'q', {0, 0, 0x0D, 0x13, 0x0F, 0x01, 0x01}},        {'r', {0, 0, 0x16, 0x19, 0x10, 0x10, 0x10}},
    {'s', {0, 0, 0x0E, 0x10, 0x0E, 0x01, 0x1E}},        {'t', {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06}},
    {'u', {0, 0, 0x11, 0x11, 0x11, 0x13, 0x0D}},        {'v', {0, 0, 0x11, 0x11, 0x11, 0x0A, 0x04}},
    {'w', {0, 0, 0x11, 0x11, 0x15, 0x15, 0x0A}},        {'x', {0, 0, 0x11, 0x0A, 0x04, 0x0A, 0x11}},
    {'y', {0, 0, 0x11, 0x11, 0x0F, 0x01, 0x0E}},        {'z', {0, 0, 0x1F, 0x02, 0x04, 0x08, 0x1F}},
};
constexpr int kScale = 2, kCharW = 6 * kScale;  // 5 columns + 1 of spacing

void draw_text(Image& img, int x, int y, const std::string& text, uint32_t color) {
  for (char ch : text) {
    const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    for (const Glyph& g : kFont) {
      if (g.c != c) continue;
      for (int row = 0; row < 7; ++row)
        for (int col = 0; col < 5; ++col)
          if (g.rows[row] >> (4 - col) & 1)
            for (int dy = 0; dy < kScale; ++dy)
              for (int dx = 0; dx < kScale; ++dx) img.set(x + col * kScale + dx, y + row * kScale + dy, color);
    }
    x += kCharW;
  }
}

void draw_line(Image& img, int x0, int y0, int x1, int y1, uint32_t color, int thick) {
  const int dx = std::abs(x1 - x0), dy = -std::abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
  int err = dx + dy;
  for (;;) {  // Bresenham, each point a thick x thick square
    for (int a = 0; a < thick; ++a)
      for (int b = 0; b < thick; ++b) img.set(x0 + a - thick / 2, y0 + b - thick / 2, color);
    if (x0 == x1 && y0 == y1) break;
    const int e2 = 2 * err;
    if (e2 >= dy) err += dy, x0 += sx;
    if (e2 <= dx) err += dx, y0 += sy;
  }
}

std::string tick_label(double v) {
  char buf[32];
  const double a = std::fabs(v);
  if (a != 0 && (a < 1e-2 || a >= 1e7)) std::snprintf(buf, sizeof buf, "%.2e", v);
  else if (a >= 1e4) std::snprintf(buf, sizeof buf, "%.0f", v);
  else std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

struct Series {
  std::vector<double> x, y;
  uint32_t color;
  bool dots;
};

// One panel at vertical offset `top`: frame, ticks, title, the series.
void draw_panel(Image& img, int top, const std::string& title, const std::vector<Series>& series) {
  const int left = 110, right = kPlotWidth - 20, y0 = top + 40, y1 = top + kPanelHeight - 40;
  const uint32_t ink = 0x333333, grid = 0xE6E6E6;
  draw_text(img, left, top + 12, title, ink);
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (const Series& s : series)
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.y[i])) continue;
      xmin = std::min(xmin, s.x[i]), xmax = std::max(xmax, s.x[i]);
      ymin = std::min(ymin, s.y[i]), ymax = std::max(ymax, s.y[i]);
    }
  if (!std::isfinite(xmin)) {
    draw_text(img, left + 20, (y0 + y1) / 2, "no data", ink);
    return;
  }
  if (xmax == xmin) xmax = xmin + 1;
  if (ymax == ymin) ymax = ymin + std::max(1e-12, std::fabs(ymin) * 0.05), ymin -= (ymax - ymin);
  const double pad = 0.05 * (ymax - ymin);
  ymin -= pad, ymax += pad;
  auto px = [&](double x) { return left + static_cast<int>(std::lround((x - xmin) / (xmax - xmin) * (right - left))); };
  auto py = [&](double y) { return y1 - static_cast<int>(std::lround((y - ymin) / (ymax - ymin) * (y1 - y0))); };
  for (int k = 0; k <= 4; ++k) {  // grid and tick labels
    const double yv = ymin + (ymax - ymin) * k / 4, xv = xmin + (xmax - xmin) * k / 4;
    draw_line(img, left, py(yv), right, py(yv), grid, 1);
    draw_line(img, px(xv), y0, px(xv), y1, grid, 1);
    const std::string yl = tick_label(yv), xl = tick_label(std::round(xv));
    draw_text(img, left - 8 - kCharW * static_cast<int>(yl.size()), py(yv) - 7, yl, ink);
    draw_text(img, px(xv) - kCharW * static_cast<int>(xl.size()) / 2, y1 + 8, xl, ink);
  }
  draw_line(img, left, y0, left, y1, ink, 1);
  draw_line(img, left, y1, right, y1, ink, 1);
  draw_text(img, right - kCharW * 4, y1 + 24, "step", ink);
  for (const Series& s : series) {
    int lx = 0, ly = 0;
    bool have = false;
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.y[i])) { have = false; continue; }  // a gap where the value was not finite
      const int x = px(s.x[i]), y = py(s.y[i]);
      if (s.dots) for (int a = -3; a <= 3; ++a) for (int b = -3; b <= 3; ++b) if (a * a + b * b <= 9) img.set(x + a, y + b, s.color);
      if (have) draw_line(img, lx, ly, x, y, s.color, 2);
      lx = x, ly = y, have = true;
    }
  }
}

double number(const nlohmann::json& j, const char* key) {
  if (!j.contains(key)) return NAN;
  const auto& v = j[key];
  return v.is_number() ? v.get<double>() : NAN;
}

}  // namespace

void write_png(const std::string& path, const Image& image) {
  std::string raw;
  raw.reserve(static_cast<size_t>(image.height) * (image.width * 3 + 1));
  for (int y = 0; y < image.height; ++y) {
    raw.push_back(0);  // filter: none
    raw.append(reinterpret_cast<const char*>(&image.rgb[static_cast<size_t>(y) * image.width * 3]), image.width * 3);
  }
  uLongf size = compressBound(raw.size());
  std::string z(size, '\0');
  ANVIL_CHECK(compress2(reinterpret_cast<Bytef*>(z.data()), &size, reinterpret_cast<const Bytef*>(raw.data()),
                        raw.size(), 6) == Z_OK,
              "plot: zlib failed to compress the image for ", path);
  z.resize(size);
  std::string png = "\x89PNG\r\n\x1a\n";
  std::string ihdr;
  put_be32(ihdr, static_cast<uint32_t>(image.width));
  put_be32(ihdr, static_cast<uint32_t>(image.height));
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit, RGB, deflate, filter 0, no interlace
  put_chunk(png, "IHDR", ihdr);
  put_chunk(png, "IDAT", z);
  put_chunk(png, "IEND", "");
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(png.data(), static_cast<std::streamsize>(png.size()));
  ANVIL_CHECK(out.good(), "plot: cannot write ", path, " — check the directory exists and is writable");
}

std::string plot_run(const std::string& run_dir, const std::string& out_png) {
  const fs::path metrics = fs::path(run_dir) / "metrics.jsonl";
  std::ifstream in(metrics);
  ANVIL_CHECK(in.good(), "plot: ", metrics.string(), " not found — pass a run directory (run.out_dir of a run with "
              "logging.jsonl: true)");
  Series train{{}, {}, kTrainColor, false}, valid{{}, {}, kValidColor, true}, lr{{}, {}, kLrColor, false},
      tps{{}, {}, kThroughputColor, false};
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line, nullptr, false);
    ANVIL_CHECK(j.is_object() && j.contains("step") && j["step"].is_number(), "plot: ", metrics.string(), ":", lineno,
                " is not a metrics record (a JSON object with a step) — is this an anvil run directory?");
    const double step = j["step"].get<double>();
    if (j.contains("val_loss")) {
      valid.x.push_back(step), valid.y.push_back(number(j, "val_loss"));
      continue;
    }
    train.x.push_back(step), train.y.push_back(number(j, "loss"));
    lr.x.push_back(step), lr.y.push_back(number(j, "lr"));
    tps.x.push_back(step), tps.y.push_back(number(j, "tokens_per_s"));
  }
  ANVIL_CHECK(!train.x.empty(), "plot: ", metrics.string(), " holds no training steps yet — run some steps first");
  Image img(kPlotWidth, 3 * kPanelHeight);
  draw_panel(img, 0, "loss: train (blue), validation (orange)", {train, valid});
  draw_panel(img, kPanelHeight, "learning rate", {lr});
  draw_panel(img, 2 * kPanelHeight, "throughput (tokens/s)", {tps});
  const std::string out = out_png.empty() ? (fs::path(run_dir) / "curves.png").string() : out_png;
  write_png(out, img);
  return out;
}

}  // namespace anvil
