// `anvil plot RUN_DIR`: the run's curves from metrics.jsonl (training and validation loss,
// learning rate, tokens/s, each against the step) drawn as one PNG, with a small built-in
// rasterizer (lines, axes, a 5x7 bitmap font) and zlib for the PNG stream: no plotting
// library at run time.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace anvil {

// An RGB image, row-major, 3 bytes per pixel.
struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;
  Image(int w, int h, uint32_t fill = 0xFFFFFF);
  void set(int x, int y, uint32_t color);  // clipped
  uint32_t get(int x, int y) const;
};

// A PNG file (8-bit RGB, filter 0, one zlib stream). Throws anvil::Error naming the path.
void write_png(const std::string& path, const Image& image);

// Reads RUN_DIR/metrics.jsonl and writes the figure to `out_png` (default RUN_DIR/curves.png);
// returns the path written. A missing or empty metrics file is an error saying so.
std::string plot_run(const std::string& run_dir, const std::string& out_png = "");

// Colours the figure uses, for tests that look for the curves.
inline constexpr uint32_t kTrainColor = 0x1F77B4, kValidColor = 0xFF7F0E, kLrColor = 0x2CA02C,
                          kThroughputColor = 0xD62728;
// Panel layout: the figure is three panels stacked, kPanelHeight pixels each, kPlotWidth wide.
inline constexpr int kPlotWidth = 960, kPanelHeight = 300;

}  // namespace anvil
