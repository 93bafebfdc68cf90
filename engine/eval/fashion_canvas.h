// Fashion canvas: the evaluation data of `camrt eval` / `camrt demo` and the training data of the shipped
// default model. Each Fashion-MNIST item (Debian's dataset-fashion-mnist, gzipped IDX files read with zlib)
// is scaled and pasted at a random position on a 96x96 canvas with faint clutter (small fragments of other
// items); the ground-truth box is the pasted item's nonzero pixels. Generation is a pure function of
// (split, index, seed), documented step by step in fashion_canvas.cpp, so every machine gets the same canvases.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace camrt {

// Fashion-MNIST, one split, as stored in the IDX files.
struct FashionMnist {
  int64_t count = 0;             // 60000 (train) or 10000 (test)
  std::vector<uint8_t> images;   // (count, 28, 28), 0 = background
  std::vector<uint8_t> labels;   // (count), 0..9
};

// The ten class names in label order ("T-shirt/top", "Trouser", ...).
const std::vector<std::string>& fashion_mnist_classes();

// Where Debian installs the data: /usr/share/datasets/fashion-mnist.
const char* default_fashion_mnist_dir();

// Reads `split` ("train" or "test") from dir (train-images-idx3-ubyte.gz, ...). Throws one clear camrt::Error
// if the files are missing (naming the Debian package dataset-fashion-mnist) or malformed.
FashionMnist load_fashion_mnist(const std::string& dir, const std::string& split);

// Inclusive pixel box on the canvas.
struct Box {
  int x0 = 0, y0 = 0, x1 = -1, y1 = -1;
  int64_t area() const { return x1 < x0 || y1 < y0 ? 0 : int64_t(x1 - x0 + 1) * (y1 - y0 + 1); }
};

constexpr int kCanvasSize = 96;

struct Canvas {
  std::vector<uint8_t> pixels;  // (96, 96) grayscale, 0..255
  int label = 0;
  Box box;                      // the pasted item's nonzero pixels
  int64_t source_index = 0;     // index of the item in its split
};

// Canvas number `index` of a split for a seed (default seed 0 is the documented benchmark split).
// Item = source[index % count]; scale, position and clutter come from a counter-based RNG keyed by
// (seed, split, index), so canvas i never depends on canvases before it.
Canvas make_fashion_canvas(const FashionMnist& source, const std::string& split, int64_t index, uint64_t seed);

}  // namespace camrt
