// Image side of camrt against independent references in tests/fixtures/image (written by
// tools/golden/make_image_golden.py): PIL's decoding, torchvision's preprocessing, torch's bilinear
// interpolation, OpenCV's colormaps and pytorch-grad-cam's overlay / gradient rendering.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/image/colormap.h"
#include "engine/image/image.h"
#include "kernels/cpu/cam.h"
#include "engine/image/png.h"
#include "engine/npy.h"

using namespace camrt;
namespace fs = std::filesystem;

namespace {

const float kMean[3] = {0.485f, 0.456f, 0.406f};  // what the script passes to Normalize (ImageNet)
const float kStd[3] = {0.229f, 0.224f, 0.225f};

std::string fixture(const std::string& name) {
  return (fs::path(CAMRT_SOURCE_DIR) / "tests" / "fixtures" / "image" / name).string();
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), path << " is missing; run tools/golden/make_image_golden.py");
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  REQUIRE(out.good());
}

// A fresh directory under the system temp dir, removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("camrt_test_image_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

// A uint8 (h, w, 3) fixture.
std::vector<uint8_t> load_u8(const std::string& name, int64_t* h, int64_t* w) {
  const HostTensor t = read_npy(fixture(name));
  REQUIRE(t.dtype == DType::U8);
  REQUIRE(t.shape.size() == 3);
  REQUIRE(t.shape[2] == 3);
  *h = t.shape[0];
  *w = t.shape[1];
  return t.bytes;
}

HostTensor load_f32(const std::string& name) {
  HostTensor t = read_npy(fixture(name));
  REQUIRE(t.dtype == DType::F32);
  return t;
}

struct U8Diff {
  int max = 0;
  int64_t count = 0;  // values that differ at all
};
U8Diff compare_u8(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  REQUIRE(a.size() == b.size());
  U8Diff d;
  for (size_t i = 0; i < a.size(); ++i) {
    const int diff = std::abs(int(a[i]) - int(b[i]));
    d.max = std::max(d.max, diff);
    d.count += diff != 0;
  }
  return d;
}

// Expected image from a "decoded_*" / "shown_*" fixture, compared with what camrt produced.
U8Diff compare_image(const Image& got, const std::string& expected_name) {
  int64_t h = 0, w = 0;
  const std::vector<uint8_t> expected = load_u8(expected_name, &h, &w);
  REQUIRE(got.channels == 3);
  REQUIRE(got.height == h);
  REQUIRE(got.width == w);
  return compare_u8(got.pixels, expected);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace

TEST_CASE("PNG and BMP decode exactly as PIL's convert(\"RGB\")") {
  // rgb.png holds the same pixels as rgba.png's colour channels (the script asserts it).
  const std::pair<std::string, std::string> cases[] = {
      {"rgb.png", "decoded_rgba_png.npy"},   {"rgba.png", "decoded_rgba_png.npy"},     // alpha dropped
      {"gray.png", "decoded_gray_png.npy"},  {"la.png", "decoded_la_png.npy"},         // gray replicated
      {"palette.png", "decoded_palette_png.npy"},                                       // palette + tRNS
      {"rgb16.png", "decoded_rgb16_png.npy"},                                           // high byte, as PIL
      {"gray16.png", "decoded_gray16_png.npy"},  // high byte (PIL would clamp; documented divergence)
      {"rgb.bmp", "decoded_rgb_bmp.npy"},    {"gray.bmp", "decoded_gray_bmp.npy"},     // 24-bit, 8-bit palette
  };
  for (const auto& [file, expected] : cases) {
    CAPTURE(file);
    const Image image = read_image(fixture(file));
    CHECK(image.channels == 3);
    const U8Diff d = compare_image(image, expected);
    CHECK(d.max == 0);
  }
}

TEST_CASE("JPEG decodes within a few levels of libjpeg-turbo") {
  // stb_image and libjpeg-turbo (PIL) use different IDCT and YCbCr->RGB rounding and, for 4:2:0, different chroma
  // upsampling; measured on these fixtures: max 2 levels at 7.6% of the values for 4:2:0 colour (baseline and
  // progressive), max 1 at 1.1% for grayscale (3 levels, 6% on a 180x120 photo). The bound (4) leaves headroom for
  // other stb/libjpeg builds; the share of differing values (< 25%) shows it is rounding noise, not a wrong decoder
  // (a swapped channel or a shifted block differs by tens of levels almost everywhere).
  for (const auto& [file, expected] : {std::pair<std::string, std::string>{"rgb.jpg", "decoded_rgb_jpg.npy"},
                                       {"rgb_progressive.jpg", "decoded_rgb_progressive_jpg.npy"},
                                       {"gray.jpg", "decoded_gray_jpg.npy"}}) {
    CAPTURE(file);
    const Image image = read_image(fixture(file));
    const U8Diff d = compare_image(image, expected);
    MESSAGE(file << ": max difference " << d.max << " levels, " << d.count << " of " << image.pixels.size()
                 << " values differ");
    CHECK(d.max <= 4);
    CHECK(d.count * 4 < int64_t(image.pixels.size()));
  }
}

TEST_CASE("decode_image from memory equals read_image") {
  const std::vector<uint8_t> bytes = read_bytes(fixture("palette.png"));
  const Image a = decode_image(bytes.data(), bytes.size(), "palette.png");
  const Image b = read_image(fixture("palette.png"));
  CHECK(a.width == 40);
  CHECK(a.height == 30);
  CHECK(a.pixels == b.pixels);
}

TEST_CASE("unreadable, unsupported, truncated and oversized images are clear errors") {
  TempDir dir;
  std::string msg = error_of([&] { read_image(dir.file("photo.jpg")); });
  CHECK(msg.find("photo.jpg") != std::string::npos);
  CHECK(msg.find("cannot open") != std::string::npos);

  msg = error_of([&] { read_image(dir.path.string()); });
  CHECK(msg.find("directory") != std::string::npos);

  const uint8_t text[] = "this is not an image, just some text bytes";
  write_bytes(dir.file("notes.png"), text, sizeof(text));
  msg = error_of([&] { read_image(dir.file("notes.png")); });
  CHECK(msg.find("notes.png: not a supported image (PNG, JPEG, BMP)") != std::string::npos);
  CHECK_THROWS_AS(decode_image(text, 0, "empty"), Error);

  // Truncations: 60% of each file, and (BMP, where stb would zero-fill silently) the last row missing.
  for (const std::string name : {"rgb.png", "rgb.jpg", "rgb_progressive.jpg", "rgb.bmp", "chelsea.jpg"}) {
    CAPTURE(name);
    const std::vector<uint8_t> bytes = read_bytes(fixture(name));
    const std::string cut = dir.file("cut_" + name);
    write_bytes(cut, bytes.data(), bytes.size() * 6 / 10);
    msg = error_of([&] { read_image(cut); });
    CHECK(msg.find(cut) != std::string::npos);
    CHECK((msg.find("corrupt or truncated") != std::string::npos || msg.find("truncated BMP") != std::string::npos));
  }
  const std::vector<uint8_t> bmp = read_bytes(fixture("rgb.bmp"));
  msg = error_of([&] { decode_image(bmp.data(), bmp.size() - 1, "short.bmp"); });
  CHECK(msg.find("short.bmp: truncated BMP data") != std::string::npos);
  // JPEG cut just before its end-of-image marker: stb fails, so does PIL.
  const std::vector<uint8_t> jpg = read_bytes(fixture("rgb.jpg"));
  CHECK_THROWS_AS(decode_image(jpg.data(), jpg.size() - 2, "short.jpg"), Error);

  // A PNG header announcing 20000 x 10 pixels: refused from the header, before any decoding.
  std::vector<uint8_t> big = read_bytes(fixture("rgb.png"));
  REQUIRE(std::memcmp(big.data() + 12, "IHDR", 4) == 0);
  const uint8_t width_be[4] = {0, 0, 0x4E, 0x20};  // 20000
  std::memcpy(big.data() + 16, width_be, 4);
  msg = error_of([&] { decode_image(big.data(), big.size(), "huge.png"); });
  CHECK(msg.find("huge.png: image is 20000x30") != std::string::npos);
}

TEST_CASE("Resize keeps torchvision's shorter-side rule") {
  int64_t w = 0, h = 0;
  resized_size(&w, &h, 40, 30, 20);  // int(20 * 40 / 30) = 26
  CHECK((w == 26 && h == 20));
  resized_size(&w, &h, 30, 41, 22);  // int(22 * 41 / 30) = int(30.07) = 30
  CHECK((w == 22 && h == 30));
  resized_size(&w, &h, 500, 375, 256);  // int(341.33) = 341
  CHECK((w == 341 && h == 256));
  resized_size(&w, &h, 64, 64, 72);
  CHECK((w == 72 && h == 72));
  CHECK_THROWS_AS(resized_size(&w, &h, 40, 30, 0), Error);
}

TEST_CASE("CenterCrop offsets round half to even and pad with zeros") {
  // Image whose pixel value encodes its column and row, so the crop window can be read back.
  Image ramp{11, 9, 3, std::vector<uint8_t>(11 * 9 * 3)};
  for (int64_t y = 0; y < 9; ++y)
    for (int64_t x = 0; x < 11; ++x) {
      ramp.row(y)[x * 3 + 0] = uint8_t(x + 1);
      ramp.row(y)[x * 3 + 1] = uint8_t(y + 1);
      ramp.row(y)[x * 3 + 2] = 7;
    }
  for (int64_t crop : {1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14}) {
    CAPTURE(crop);
    const Image c = center_crop(ramp, crop);
    REQUIRE(c.width == crop);
    REQUIRE(c.height == crop);
    // torchvision: int(round(d / 2.0)) with Python's half-to-even round; nearbyint rounds the same way in the
    // default rounding mode. Negative d: padding of (crop - size) // 2 before.
    auto offset = [](int64_t size, int64_t crop_size) {
      const int64_t d = size - crop_size;
      return d >= 0 ? int64_t(std::nearbyint(double(d) / 2.0)) : -((-d) / 2);
    };
    const int64_t left = offset(11, crop), top = offset(9, crop);
    for (int64_t y = 0; y < crop; ++y)
      for (int64_t x = 0; x < crop; ++x) {
        const int64_t sx = x + left, sy = y + top;
        const bool inside = sx >= 0 && sx < 11 && sy >= 0 && sy < 9;
        CHECK(c.row(y)[x * 3 + 0] == (inside ? sx + 1 : 0));
        CHECK(c.row(y)[x * 3 + 1] == (inside ? sy + 1 : 0));
        CHECK(c.row(y)[x * 3 + 2] == (inside ? 7 : 0));
      }
  }
}

TEST_CASE("resize_and_crop and preprocess_image match torchvision on PNG input") {
  // torchvision: Resize(r) [PIL bilinear with antialias], CenterCrop(c), ToTensor, Normalize(ImageNet).
  // camrt reimplements Pillow's fixed-point resampler, so the uint8 pictures must be identical and the tensors
  // equal up to float32 rounding of (v / 255 - mean) / std: values are below 2.7, so 1e-6 is a few ulps.
  const struct {
    std::string name;
    std::string source;
    int64_t resize, crop;
  } cases[] = {{"rgb_r20_c16", "rgb.png", 20, 16},   {"rgb_r33_c28", "rgb.png", 33, 28},
               {"rgb_r33_c30", "rgb.png", 33, 30},   {"rgb_r7_c5", "rgb.png", 7, 5},
               {"rgb_r16_c20", "rgb.png", 16, 20},   {"portrait_r22_c19", "portrait.png", 22, 19}};
  for (const auto& c : cases) {
    CAPTURE(c.name);
    const Image image = read_image(fixture(c.source));
    const Image shown = resize_and_crop(image, c.resize, c.crop);
    const U8Diff d = compare_image(shown, "shown_" + c.name + ".npy");
    CHECK(d.max == 0);

    const HostTensor expected = load_f32("pre_" + c.name + ".npy");
    REQUIRE(expected.shape == Shape{3, c.crop, c.crop});
    std::vector<float> got(size_t(3 * c.crop * c.crop));
    preprocess_image(got.data(), image, c.resize, c.crop, kMean, kStd);
    float max_diff = 0.f;
    for (size_t i = 0; i < got.size(); ++i) max_diff = std::max(max_diff, std::fabs(got[i] - expected.f32()[i]));
    MESSAGE(c.name << ": max |camrt - torchvision| = " << max_diff);
    CHECK(max_diff <= 1e-6f);
  }
}

TEST_CASE("preprocess_image on the JPEG photo stays within the decoders' difference") {
  // torchvision's tensor comes from PIL's libjpeg-turbo decode, camrt's from stb: the 4:4:4 photo differs by up to
  // 2 levels at ~1.4% of the values before resizing, and resizing averages neighbours (measured after resize and
  // crop: 1 level, max 0.0175 = 1 / 255 / 0.224, mean 0.0003). Bound: 2 levels in the normalized units of the
  // smallest std, 2 / 255 / 0.224 = 0.035.
  const Image image = read_image(fixture("chelsea.jpg"));
  CHECK(image.width == 180);
  CHECK(image.height == 120);
  const HostTensor expected = load_f32("pre_chelsea_r72_c64.npy");
  REQUIRE(expected.shape == Shape{3, 64, 64});
  std::vector<float> got(3 * 64 * 64);
  preprocess_image(got.data(), image, 72, 64, kMean, kStd);
  float max_diff = 0.f;
  double sum_diff = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const float d = std::fabs(got[i] - expected.f32()[i]);
    max_diff = std::max(max_diff, d);
    sum_diff += d;
  }
  MESSAGE("chelsea.jpg r72 c64: max |camrt - torchvision| = " << max_diff << ", mean " << sum_diff / got.size());
  CHECK(max_diff <= 2.f / 255.f / 0.224f);
  CHECK(sum_diff / double(got.size()) < 0.2 / 255.0 / 0.224);  // rounding noise, on average well under a level
  const U8Diff d = compare_image(resize_and_crop(image, 72, 64), "shown_chelsea_r72_c64.npy");
  CHECK(d.max <= 2);
}

TEST_CASE("preprocess without a size change is a plain crop and normalization") {
  // torchvision returns the image unchanged when the shorter side already equals the resize target.
  const Image image = read_image(fixture("rgb.png"));  // 40 x 30
  std::vector<float> got(3 * 30 * 30);
  preprocess_image(got.data(), image, 30, 30, kMean, kStd);
  for (int64_t c = 0; c < 3; ++c)
    for (int64_t y = 0; y < 30; ++y)
      for (int64_t x = 0; x < 30; ++x) {
        const float v = float(image.row(y)[(x + 5) * 3 + c]) / 255.0f;  // left = round(10 / 2) = 5
        REQUIRE(got[size_t((c * 30 + y) * 30 + x)] == (v - kMean[c]) / kStd[c]);
      }
}

TEST_CASE("bilinear_resize matches torch.nn.functional.interpolate") {
  ThreadPool resize_pool(2);
  // Same float32 index/weight arithmetic and evaluation order as ATen; inputs ~N(0, 1), so 1e-6 is a few ulps.
  for (const std::string name : {"up", "down", "row", "mixed"}) {
    const HostTensor in = load_f32("interp_" + name + "_in.npy");
    REQUIRE(in.shape.size() == 3);
    for (bool align_corners : {false, true}) {
      CAPTURE(name);
      CAPTURE(align_corners);
      const HostTensor expected = load_f32("interp_" + name + (align_corners ? "_ac" : "_hp") + ".npy");
      REQUIRE(expected.shape.size() == 3);
      REQUIRE(expected.shape[0] == in.shape[0]);
      std::vector<float> got(size_t(expected.numel()));
      bilinear_resize(got.data(), in.f32(), in.shape[0], in.shape[1], in.shape[2], expected.shape[1],
                      expected.shape[2], align_corners, resize_pool);
      float max_diff = 0.f;
      for (size_t i = 0; i < got.size(); ++i) max_diff = std::max(max_diff, std::fabs(got[i] - expected.f32()[i]));
      CHECK(max_diff <= 1e-6f);
    }
  }
}

TEST_CASE("bilinear_resize keeps constants and, with align_corners, the corners") {
  ThreadPool resize_pool(2);
  std::vector<float> in(2 * 3 * 4);
  for (size_t i = 0; i < in.size(); ++i) in[i] = i < 12 ? 0.25f : float(i) * 0.5f;
  std::vector<float> out(2 * 7 * 9);
  bilinear_resize(out.data(), in.data(), 2, 3, 4, 7, 9, true, resize_pool);
  for (size_t i = 0; i < 63; ++i) CHECK(out[i] == 0.25f);
  const float* p = out.data() + 63;  // second plane: corners are exactly the input corners
  CHECK(p[0] == in[12]);
  CHECK(p[8] == in[15]);
  CHECK(p[54] == in[20]);
  CHECK(p[62] == in[23]);
  CHECK_THROWS_AS(bilinear_resize(out.data(), in.data(), 1, 0, 4, 7, 9, false, resize_pool), Error);
}

TEST_CASE("colormap tables equal OpenCV's applyColorMap") {
  for (Colormap cmap : {Colormap::Jet, Colormap::Turbo, Colormap::Viridis, Colormap::Inferno}) {
    const std::string name = colormap_name(cmap);
    CAPTURE(name);
    Colormap parsed;
    REQUIRE(colormap_from_name(name, &parsed));
    CHECK(parsed == cmap);
    const HostTensor ref = read_npy(fixture("cmap_" + name + "_cv2.npy"));
    REQUIRE(ref.dtype == DType::U8);
    REQUIRE(ref.shape == Shape{256, 3});
    int mismatches = 0;
    for (int i = 0; i < 256; ++i)
      for (int c = 0; c < 3; ++c) mismatches += colormap_rgb(cmap, uint8_t(i))[c] != ref.bytes[size_t(i * 3 + c)];
    CHECK(mismatches == 0);
  }
  // Spot values that identify each map (OpenCV jet starts at dark blue (0, 0, 128), ends at dark red).
  CHECK(colormap_rgb(Colormap::Jet, 0)[2] == 128);
  CHECK(colormap_rgb(Colormap::Jet, 255)[0] == 128);
  CHECK(colormap_rgb(Colormap::Viridis, 255)[1] == 231);
  Colormap unused;
  CHECK_FALSE(colormap_from_name("hot", &unused));
  CHECK_FALSE(colormap_from_name("JET", &unused));
}

TEST_CASE("colormap index truncates 255 * value like np.uint8 and clamps") {
  CHECK(colormap_index(0.f) == 0);
  CHECK(colormap_index(1.f) == 255);
  CHECK(colormap_index(0.5f) == 127);
  CHECK(colormap_index(-0.1f) == 0);
  CHECK(colormap_index(1.5f) == 255);
  CHECK(colormap_index(std::nanf("")) == 0);
  for (int k = 0; k < 256; ++k) {  // the float32 product decides: k/255 may land just below k
    const float v = float(k) / 255.0f;
    CHECK(colormap_index(v) == uint8_t(255.0f * v));
  }
}

TEST_CASE("overlay_cam and colorize match pytorch-grad-cam's show_cam_on_image") {
  int64_t h = 0, w = 0;
  const std::vector<uint8_t> pixels = load_u8("overlay_image.npy", &h, &w);
  const Image image{w, h, 3, pixels};
  const HostTensor mask = load_f32("overlay_mask.npy");
  REQUIRE(mask.shape == Shape{h, w});
  for (Colormap cmap : {Colormap::Jet, Colormap::Turbo, Colormap::Viridis, Colormap::Inferno}) {
    const std::string name = colormap_name(cmap);
    CAPTURE(name);
    const U8Diff d = compare_image(overlay_cam(image, mask.f32(), cmap), "overlay_" + name + ".npy");
    CHECK(d.max == 0);
    const Image heat = colorize(mask.f32(), h, w, cmap);
    for (int64_t i = 0; i < h * w; ++i)
      for (int c = 0; c < 3; ++c)
        REQUIRE(heat.pixels[size_t(i * 3 + c)] == colormap_rgb(cmap, colormap_index(mask.f32()[i]))[c]);
  }
  CHECK(compare_image(overlay_cam(image, mask.f32(), Colormap::Jet, 0.3f), "overlay_jet_w03.npy").max == 0);
  CHECK_THROWS_AS(overlay_cam(image, mask.f32(), Colormap::Jet, 1.5f), Error);
}

TEST_CASE("visualize_gradient matches pytorch-grad-cam's deprocess_image") {
  const HostTensor g = load_f32("gradient.npy");
  REQUIRE(g.shape.size() == 3);
  const Image vis = visualize_gradient(g.f32(), g.shape[1], g.shape[2]);
  const U8Diff d = compare_image(vis, "gradient_vis.npy");
  // numpy's float32 pairwise mean/std vs camrt's double ones differ by ~1e-7 relative, which can move a value
  // across a uint8 truncation boundary: at most 1 level, at a handful of the 576 values.
  CHECK(d.max <= 1);
  CHECK(d.count <= 6);
}

TEST_CASE("write_png round-trips through read_image, atomically") {
  TempDir dir;
  const Image image = read_image(fixture("rgb.png"));
  const std::string path = dir.file("out.png");
  write_png(path, image);
  const Image back = read_image(path);
  CHECK(back.width == image.width);
  CHECK(back.height == image.height);
  CHECK(back.pixels == image.pixels);

  Image gray{5, 4, 1, std::vector<uint8_t>(20)};
  for (size_t i = 0; i < 20; ++i) gray.pixels[i] = uint8_t(i * 13);
  write_png(dir.file("gray.png"), gray);
  const Image gray_back = read_image(dir.file("gray.png"));
  REQUIRE(gray_back.pixels.size() == 60);
  for (size_t i = 0; i < 20; ++i)
    for (size_t c = 0; c < 3; ++c) CHECK(gray_back.pixels[i * 3 + c] == gray.pixels[i]);

  // Overwrite in place, and a failed write leaves nothing behind.
  write_png(path, gray);
  CHECK(read_image(path).width == 5);
  const std::string missing_dir = dir.file("no/such/dir/x.png");
  const std::string msg = error_of([&] { write_png(missing_dir, image); });
  CHECK(msg.find(missing_dir) != std::string::npos);
  Image broken = image;
  broken.pixels.pop_back();
  CHECK_THROWS_AS(write_png(dir.file("broken.png"), broken), Error);
  CHECK_FALSE(fs::exists(dir.file("broken.png")));
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir.path)) files += entry.is_regular_file();
  CHECK(files == 2);  // out.png and gray.png: no temporary left over
}
