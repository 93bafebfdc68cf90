// camrt dataset fashion-canvas: exports Fashion canvases (engine/eval/fashion_canvas.h) as .npy files, so that
// training scripts and other tools see exactly the canvases camrt generates: the C++ recipe is the only one.
#include <filesystem>
#include <iostream>

#include "engine/eval/fashion_canvas.h"
#include "engine/npy.h"
#include "tools/camrt/args.h"
#include "tools/camrt/commands.h"

namespace camrt::cli {

int run_dataset(const std::vector<std::string>& argv) {
  Args args("dataset", "camrt dataset fashion-canvas --split train|test --n N [--start I] [--seed S] -o DIR",
            "Writes Fashion canvases (Fashion-MNIST items scaled 1-2x and pasted on a 96x96 canvas with faint clutter)\n"
            "numbered start .. start+n-1 to DIR/canvases.npy uint8 (N, 1, 96, 96), DIR/labels.npy int64 (N) and\n"
            "DIR/boxes.npy int64 (N, 4) = inclusive x0, y0, x1, y1 of the item's nonzero pixels. Canvas i is a pure\n"
            "function of (split, i, seed); --split test --n 10000 --seed 0 is the benchmark split.");
  args.option("split", "train|test", "Fashion-MNIST split the items come from")
      .option("n", "N", "number of canvases")
      .option("start", "I", "index of the first canvas", "0")
      .option("seed", "S", "generation seed (0 = the documented benchmark)", "0")
      .option("data", "DIR", "Fashion-MNIST IDX files", default_fashion_mnist_dir())
      .option("out", "DIR", "output directory (created if needed)");
  if (!args.parse(argv)) return 0;
  CAMRT_CHECK(args.positionals().size() == 1 && args.positionals()[0] == "fashion-canvas",
              "camrt dataset: expected the dataset name fashion-canvas (see camrt dataset --help)");
  CAMRT_CHECK(args.has("split"), "camrt dataset: missing --split train|test");
  CAMRT_CHECK(args.has("n"), "camrt dataset: missing --n N");
  CAMRT_CHECK(args.has("out"), "camrt dataset: missing -o DIR");
  const std::string split = args.get("split");
  CAMRT_CHECK(split == "train" || split == "test", "camrt dataset: --split must be train or test, got '" << split << "'");
  const int64_t n = args.get_int("n"), start = args.get_int("start"), seed = args.get_int("seed");
  CAMRT_CHECK(n >= 1, "camrt dataset: --n must be at least 1");
  CAMRT_CHECK(start >= 0 && seed >= 0, "camrt dataset: --start and --seed must not be negative");

  const FashionMnist source = load_fashion_mnist(args.get("data"), split);
  constexpr int64_t kPixels = int64_t(kCanvasSize) * kCanvasSize;
  HostTensor canvases(DType::U8, {n, 1, kCanvasSize, kCanvasSize});
  HostTensor labels(DType::I64, {n});
  HostTensor boxes(DType::I64, {n, 4});
  int64_t* label_out = reinterpret_cast<int64_t*>(labels.bytes.data());
  int64_t* box_out = reinterpret_cast<int64_t*>(boxes.bytes.data());
  for (int64_t i = 0; i < n; ++i) {
    const Canvas canvas = make_fashion_canvas(source, split, start + i, static_cast<uint64_t>(seed));
    std::copy(canvas.pixels.begin(), canvas.pixels.end(), canvases.bytes.begin() + i * kPixels);
    label_out[i] = canvas.label;
    box_out[4 * i + 0] = canvas.box.x0, box_out[4 * i + 1] = canvas.box.y0;
    box_out[4 * i + 2] = canvas.box.x1, box_out[4 * i + 3] = canvas.box.y1;
  }
  const std::filesystem::path dir = args.get("out");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  CAMRT_CHECK(!ec, "cannot create output directory " << dir.string() << ": " << ec.message());
  write_npy((dir / "canvases.npy").string(), canvases);
  write_npy((dir / "labels.npy").string(), labels);
  write_npy((dir / "boxes.npy").string(), boxes);
  std::cout << "wrote " << n << " " << split << " canvases (start " << start << ", seed " << seed << ") to "
            << dir.string() << "\n";
  return 0;
}

}  // namespace camrt::cli
