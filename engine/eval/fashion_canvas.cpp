// Fashion canvas generation (see fashion_canvas.h) and the Fashion-MNIST IDX reader. Every canvas is a pure
// function of (seed, split, index) computed with integer arithmetic only, so the benchmark split is bit-identical
// on every machine, compiler and architecture. The recipe is written out step by step below.
#include "engine/eval/fashion_canvas.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <filesystem>

#include "engine/error.h"

namespace camrt {

// ---------------------------------------------------------------------------------------------------------------
// The recipe (version 1). Changing any step changes the benchmark numbers: bump the version in this comment and
// in the model README when you do.
//
// 0. Source: item = source[index % count] of the split's Fashion-MNIST images (28x28, 0 = background); the
//    canvas label is that item's label. Canvas indices past `count` reuse the items with fresh draws.
// 1. Random numbers: a counter-based generator. key = M(M(M(seed) ^ tag) ^ index) with M the splitmix64
//    finalizer (M(z): z += 0x9E3779B97F4A7C15, then the two xor-shift-multiply rounds) and tag = 1 for "train",
//    2 for "test". Draw number `slot` is M(key ^ M(slot)). A uniform integer in [lo, hi] is
//    lo + draw % (hi - lo + 1) (the modulo bias is below 2^-57 for our ranges). Slots are fixed per purpose
//    (kSlot* below), so no draw depends on how many draws came before it: canvas i never depends on canvas i-1
//    and a fragment's placement never depends on how many tries the previous fragment needed.
// 2. Scale: the item's side S is uniform in [28, 56] pixels (scale S/28 in [1.0, 2.0]); S = 28 is the item as is.
// 3. Resize: bilinear with half-pixel centres (PyTorch's align_corners=False, edge pixels clamped), in exact
//    integer arithmetic: output row oy samples source row (2*oy + 1) * 28 / (2S) - 1/2 = num / (2S) with
//    num = (2*oy + 1) * 28 - S (clamped at 0), so row = num / (2S) and weight = num % (2S) in units of 1/(2S);
//    the same for columns. value = (sum of w_y * w_x * pixel + 2S^2) / (4S^2) (round half up).
// 4. Position: the top-left corner (x, y) of the S x S item is uniform in [0, 96 - S] on each axis.
// 5. Box: the inclusive box of the scaled item's nonzero pixels, in canvas coordinates (the ground truth).
// 6. Clutter: F fragments, F uniform in [2, 4]. Fragment f: another item j (uniform index in the split, moved
//    one on if it is the canvas's own item), a crop of fw x fh pixels (each uniform in [6, 10]) taken inside
//    j's nonzero box (so it shows part of an item, not empty background), intensity x0.3
//    ((3 * pixel + 5) / 10). Placement: up to 8 tries of a uniform top-left corner on the canvas; the first one
//    whose overlap with the item's box (step 5) is at most 1/5 of the fragment area is used; a fragment with no
//    such try is left out. Fragments are drawn with max() onto the zero canvas, in order.
// 7. Item: the scaled item is drawn with max() over the clutter, so clutter never hides item pixels; the box
//    stays that of the item alone.
// ---------------------------------------------------------------------------------------------------------------

namespace {

constexpr int kItemSide = 28;
constexpr int kMinSide = 28, kMaxSide = 56;          // scale 1.0 .. 2.0
constexpr int kMinFragments = 2, kMaxFragments = 4;
constexpr int kMinFragmentSide = 6, kMaxFragmentSide = 10;
constexpr int kPlacementTries = 8;

// Draw slots: fixed per purpose so that each draw is independent of the others' outcomes.
constexpr uint64_t kSlotSide = 0, kSlotX = 1, kSlotY = 2, kSlotFragmentCount = 3;
constexpr uint64_t kSlotFragmentBase = 16, kSlotsPerFragment = 32;
constexpr uint64_t kFragItem = 0, kFragWidth = 1, kFragHeight = 2, kFragCropX = 3, kFragCropY = 4, kFragTry = 8;

uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct CanvasRng {
  uint64_t key;
  // Uniform integer in [lo, hi] from draw `slot`.
  int64_t uniform(uint64_t slot, int64_t lo, int64_t hi) const {
    const uint64_t span = static_cast<uint64_t>(hi - lo + 1);
    return lo + static_cast<int64_t>(mix64(key ^ mix64(slot)) % span);
  }
};

uint64_t split_tag(const std::string& split) {
  if (split == "train") return 1;
  if (split == "test") return 2;
  CAMRT_FAIL("Fashion canvas: unknown split '" << split << "' (expected train or test)");
}

// Nonzero box of one 28x28 item; the full item if it is blank (no Fashion-MNIST item is).
Box item_box(const uint8_t* item) {  // item (28, 28)
  Box b{kItemSide, kItemSide, -1, -1};
  for (int y = 0; y < kItemSide; ++y)
    for (int x = 0; x < kItemSide; ++x)
      if (item[y * kItemSide + x]) {
        b.x0 = std::min(b.x0, x), b.y0 = std::min(b.y0, y);
        b.x1 = std::max(b.x1, x), b.y1 = std::max(b.y1, y);
      }
  if (b.area() == 0) b = Box{0, 0, kItemSide - 1, kItemSide - 1};
  return b;
}

// Step 3: exact integer bilinear resize of a 28x28 item to side x side.
void scale_item(uint8_t* out, const uint8_t* item, int side) {  // out (side, side), item (28, 28)
  const int den = 2 * side;
  std::array<int, kMaxSide> idx{}, frac{};
  for (int o = 0; o < side; ++o) {
    const int num = std::max(0, (2 * o + 1) * kItemSide - side);
    idx[o] = num / den;
    frac[o] = num % den;
  }
  const int64_t total = int64_t(den) * den;
  for (int oy = 0; oy < side; ++oy) {
    const int y0 = idx[oy], y1 = std::min(y0 + 1, kItemSide - 1), fy = frac[oy];
    for (int ox = 0; ox < side; ++ox) {
      const int x0 = idx[ox], x1 = std::min(x0 + 1, kItemSide - 1), fx = frac[ox];
      const int64_t top = int64_t(den - fx) * item[y0 * kItemSide + x0] + int64_t(fx) * item[y0 * kItemSide + x1];
      const int64_t bottom = int64_t(den - fx) * item[y1 * kItemSide + x0] + int64_t(fx) * item[y1 * kItemSide + x1];
      const int64_t acc = int64_t(den - fy) * top + int64_t(fy) * bottom;
      out[oy * side + ox] = static_cast<uint8_t>((acc + total / 2) / total);
    }
  }
}

int64_t overlap_area(const Box& a, const Box& b) {
  const Box o{std::max(a.x0, b.x0), std::max(a.y0, b.y0), std::min(a.x1, b.x1), std::min(a.y1, b.y1)};
  return o.area();
}

// gzread in chunks (its length is an unsigned int); false on a short read.
bool gz_read_exact(gzFile file, uint8_t* out, size_t bytes) {
  while (bytes > 0) {
    const unsigned chunk = static_cast<unsigned>(std::min<size_t>(bytes, size_t(1) << 30));
    const int got = gzread(file, out, chunk);
    if (got <= 0) return false;
    out += got;
    bytes -= static_cast<size_t>(got);
  }
  return true;
}

// Reads one IDX file (gzipped or not: zlib reads both) whose magic says unsigned bytes with `rank` dims.
// Returns the dims; data receives the payload.
std::vector<int64_t> read_idx(const std::string& path, int rank, std::vector<uint8_t>* data) {
  CAMRT_CHECK(std::filesystem::exists(path),
              "Fashion-MNIST file not found: " << path
                                               << " (install Debian's package: apt-get install dataset-fashion-mnist)");
  gzFile file = gzopen(path.c_str(), "rb");
  CAMRT_CHECK(file != nullptr, "cannot open Fashion-MNIST file " << path);
  struct Closer {
    gzFile f;
    ~Closer() { gzclose(f); }
  } closer{file};
  uint8_t magic[4];
  CAMRT_CHECK(gz_read_exact(file, magic, 4), path << ": not an IDX file (shorter than its 4-byte magic)");
  // IDX magic: two zero bytes, the element type (0x08 = unsigned byte), the number of dimensions.
  CAMRT_CHECK(magic[0] == 0 && magic[1] == 0 && magic[2] == 0x08 && magic[3] == rank,
              path << ": not an IDX file of unsigned bytes with " << rank << " dimension(s) (magic "
                   << int(magic[0]) << "," << int(magic[1]) << "," << int(magic[2]) << "," << int(magic[3]) << ")");
  std::vector<int64_t> dims(static_cast<size_t>(rank));
  int64_t total = 1;
  for (int d = 0; d < rank; ++d) {
    uint8_t b[4];
    CAMRT_CHECK(gz_read_exact(file, b, 4), path << ": truncated IDX header");
    dims[d] = (int64_t(b[0]) << 24) | (int64_t(b[1]) << 16) | (int64_t(b[2]) << 8) | int64_t(b[3]);
    // Fashion-MNIST has at most 60000 items: anything past 2^24 per dimension is a corrupt header.
    CAMRT_CHECK(dims[d] > 0 && dims[d] <= (int64_t(1) << 24), path << ": implausible IDX dimension " << dims[d]);
    total *= dims[d];
  }
  CAMRT_CHECK(total <= (int64_t(1) << 32), path << ": IDX payload too large");
  data->resize(static_cast<size_t>(total));
  CAMRT_CHECK(gz_read_exact(file, data->data(), data->size()),
              path << ": truncated (expected " << total << " bytes of data after the header)");
  uint8_t extra;
  CAMRT_CHECK(gzread(file, &extra, 1) == 0, path << ": trailing data after " << total << " bytes of IDX payload");
  return dims;
}

}  // namespace

const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> classes = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                   "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return classes;
}

const char* default_fashion_mnist_dir() { return "/usr/share/datasets/fashion-mnist"; }

FashionMnist load_fashion_mnist(const std::string& dir, const std::string& split) {
  CAMRT_CHECK(split == "train" || split == "test", "Fashion-MNIST: unknown split '" << split << "' (expected train or test)");
  CAMRT_CHECK(std::filesystem::is_directory(dir),
              "Fashion-MNIST not found: " << dir
                                          << " is not a directory (install Debian's package: apt-get install "
                                             "dataset-fashion-mnist)");
  const std::string prefix = (std::filesystem::path(dir) / (split == "train" ? "train" : "t10k")).string();
  const std::string images_path = prefix + "-images-idx3-ubyte.gz", labels_path = prefix + "-labels-idx1-ubyte.gz";
  FashionMnist out;
  const std::vector<int64_t> image_dims = read_idx(images_path, 3, &out.images);
  CAMRT_CHECK(image_dims[1] == kItemSide && image_dims[2] == kItemSide,
              images_path << ": expected 28x28 images, got " << image_dims[1] << "x" << image_dims[2]);
  const std::vector<int64_t> label_dims = read_idx(labels_path, 1, &out.labels);
  CAMRT_CHECK(label_dims[0] == image_dims[0], labels_path << " holds " << label_dims[0] << " labels but " << images_path
                                                          << " holds " << image_dims[0] << " images");
  for (size_t i = 0; i < out.labels.size(); ++i)
    CAMRT_CHECK(out.labels[i] < 10, labels_path << ": label " << int(out.labels[i]) << " of item " << i << " is not 0..9");
  out.count = image_dims[0];
  return out;
}

Canvas make_fashion_canvas(const FashionMnist& source, const std::string& split, int64_t index, uint64_t seed) {
  CAMRT_CHECK(source.count > 0 && source.images.size() == size_t(source.count) * kItemSide * kItemSide &&
                  source.labels.size() == size_t(source.count),
              "Fashion canvas: the source data is empty or inconsistent");
  CAMRT_CHECK(index >= 0, "Fashion canvas: negative index " << index);
  // Step 1.
  const CanvasRng rng{mix64(mix64(mix64(seed) ^ split_tag(split)) ^ static_cast<uint64_t>(index))};
  const int64_t item_index = index % source.count;
  auto item_at = [&](int64_t i) { return source.images.data() + i * kItemSide * kItemSide; };

  Canvas canvas;
  canvas.pixels.assign(size_t(kCanvasSize) * kCanvasSize, 0);
  canvas.label = source.labels[static_cast<size_t>(item_index)];
  canvas.source_index = item_index;

  // Steps 2-5.
  const int side = static_cast<int>(rng.uniform(kSlotSide, kMinSide, kMaxSide));
  const int left = static_cast<int>(rng.uniform(kSlotX, 0, kCanvasSize - side));
  const int top = static_cast<int>(rng.uniform(kSlotY, 0, kCanvasSize - side));
  std::vector<uint8_t> scaled(size_t(side) * side);
  scale_item(scaled.data(), item_at(item_index), side);
  Box box{kCanvasSize, kCanvasSize, -1, -1};
  for (int y = 0; y < side; ++y)
    for (int x = 0; x < side; ++x)
      if (scaled[y * side + x]) {
        box.x0 = std::min(box.x0, left + x), box.y0 = std::min(box.y0, top + y);
        box.x1 = std::max(box.x1, left + x), box.y1 = std::max(box.y1, top + y);
      }
  if (box.area() == 0) box = Box{};  // a blank item (none exists in Fashion-MNIST): empty box
  canvas.box = box;

  // Step 6.
  const int fragments = static_cast<int>(rng.uniform(kSlotFragmentCount, kMinFragments, kMaxFragments));
  for (int f = 0; f < fragments; ++f) {
    const uint64_t base = kSlotFragmentBase + uint64_t(f) * kSlotsPerFragment;
    int64_t other = rng.uniform(base + kFragItem, 0, source.count - 1);
    if (other == item_index) other = (other + 1) % source.count;
    const uint8_t* piece = item_at(other);
    const int fw = static_cast<int>(rng.uniform(base + kFragWidth, kMinFragmentSide, kMaxFragmentSide));
    const int fh = static_cast<int>(rng.uniform(base + kFragHeight, kMinFragmentSide, kMaxFragmentSide));
    const Box pb = item_box(piece);
    // Crop origin inside the piece's nonzero box where the crop fits, kept inside the 28x28 item.
    auto crop_origin = [&](uint64_t slot, int lo, int hi_end, int extent) {
      const int hi = std::min(std::max(lo, hi_end - extent + 1), kItemSide - extent);
      const int from = std::min(lo, hi);
      return static_cast<int>(rng.uniform(slot, from, hi));
    };
    const int cx = crop_origin(base + kFragCropX, pb.x0, pb.x1, fw);
    const int cy = crop_origin(base + kFragCropY, pb.y0, pb.y1, fh);
    for (int t = 0; t < kPlacementTries; ++t) {
      const int px = static_cast<int>(rng.uniform(base + kFragTry + 2 * uint64_t(t), 0, kCanvasSize - fw));
      const int py = static_cast<int>(rng.uniform(base + kFragTry + 2 * uint64_t(t) + 1, 0, kCanvasSize - fh));
      const Box placed{px, py, px + fw - 1, py + fh - 1};
      if (5 * overlap_area(placed, box) > int64_t(fw) * fh) continue;
      for (int y = 0; y < fh; ++y)
        for (int x = 0; x < fw; ++x) {
          const int value = (3 * piece[(cy + y) * kItemSide + cx + x] + 5) / 10;
          uint8_t& dst = canvas.pixels[size_t(py + y) * kCanvasSize + px + x];
          dst = std::max<uint8_t>(dst, static_cast<uint8_t>(value));
        }
      break;
    }
  }

  // Step 7.
  for (int y = 0; y < side; ++y)
    for (int x = 0; x < side; ++x) {
      uint8_t& dst = canvas.pixels[size_t(top + y) * kCanvasSize + left + x];
      dst = std::max(dst, scaled[y * side + x]);
    }
  return canvas;
}

}  // namespace camrt
