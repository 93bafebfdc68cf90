// The explain pipeline around the CAM kernels: targets (top-k, softmax, similarity), aug-smooth, several
// layers, and the camrt explain command's files. Per-method numerics are in test_golden_cams.cpp.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "engine/cam/explainer.h"
#include "engine/executor.h"
#include "engine/image/image.h"
#include "engine/npy.h"
#include "tests/small_models.h"
#include "weights/onnx/onnx_import.h"

using namespace camrt;
using camrt::testing::batch_folding_model;
using camrt::testing::random_images;
namespace fs = std::filesystem;

namespace {

const fs::path kFixtures = fs::path(CAMRT_SOURCE_DIR) / "tests/fixtures";

Graph fixture_graph(const std::string& name) {
  return Graph(import_onnx((kFixtures / "models" / name / "model.onnx").string()), name);
}

double max_abs_diff(const HostTensor& a, const HostTensor& b) {
  REQUIRE(a.numel() == b.numel());
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, std::fabs(double(a.f32()[i]) - double(b.f32()[i])));
  return m;
}

// Target t's maps of a (T, B, ...) result as their own tensor.
HostTensor target_slice(const HostTensor& maps, int64_t t) {
  Shape shape = maps.shape;
  shape[0] = 1;
  HostTensor slice(DType::F32, shape);
  std::memcpy(slice.f32(), maps.f32() + t * slice.numel(), static_cast<size_t>(slice.numel()) * sizeof(float));
  return slice;
}

}  // namespace

TEST_CASE("explain: top-k targets come from one forward and one backward and equal single-class runs") {
  // mobilenet_v3_small: its gradient depends on the class in space (not a GAP+linear head), so maps differ. The
  // three targets' seeds share one backward pass of the main plan and one of the Guided Backprop plan (whose
  // gradient reaches the input through every op kind of the model); each map equals its single-class run.
  Graph graph = fixture_graph("mobilenet_v3_small");
  ThreadPool pool(2);
  const HostTensor x = read_npy((kFixtures / "models/mobilenet_v3_small/input.npy").string());
  ExplainOptions top;
  top.methods = {"gradcam", "layercam", "guided-backprop", "guided-gradcam"};
  top.target = "top3";
  Explainer explainer(graph, x.shape[0], top, pool);
  const Explanation ex = explainer.run(x);
  REQUIRE(ex.classes.size() == 3);
  for (size_t t = 0; t < 3; ++t) {
    ExplainOptions one = top;
    one.target = std::to_string(ex.classes[t][0]);
    if (ex.classes[t][0] != ex.classes[t][1]) continue;  // a fixed class applies to every image
    const Explanation single = Explainer(graph, x.shape[0], one, pool).run(x);
    for (size_t m = 0; m < top.methods.size(); ++m) {
      const int64_t per_target = ex.results[m].maps.numel() / 3;
      HostTensor slice(DType::F32, single.results[m].maps.shape);
      std::memcpy(slice.f32(), ex.results[m].maps.f32() + t * per_target, per_target * sizeof(float));
      CHECK(max_abs_diff(slice, single.results[m].maps) == 0.0);
    }
  }
}

TEST_CASE("explain: top-k with Guided Backprop where only the main plan can stack seeds equals single-class runs") {
  // The guided plan's backward crosses the batch-folding Reshapes and falls back to one seed per pass; the main
  // plan (gradient at "a") could take all three. Both then run one target per pass, and the main plan must keep
  // the activations its backward reads for the passes after the first.
  const Graph graph = Graph(batch_folding_model(0), "batch-folding");
  ThreadPool pool(2);
  const HostTensor x = random_images(2, 21);
  ExplainOptions top;
  top.methods = {"gradcam", "guided-backprop", "guided-gradcam"};
  top.layers = {"relu1"};
  top.target = "top3";
  Explainer explainer(graph, 2, top, pool);
  const Explanation ex = explainer.run(x);
  REQUIRE(ex.classes.size() == 3);
  // The main plan is the one made for the groups it runs (one target each, activations kept across them).
  PlanOptions expected_options;
  expected_options.keep = expected_options.grad_targets = {"a"};
  expected_options.repeat_backward = true;
  const std::unique_ptr<Graph> fused = graph.fused({"a"});
  const Executor expected(*fused, graph.input_shapes_for_batch(2), pool, expected_options);
  CHECK(explainer.main_plan_stats().arena_bytes == expected.stats().arena_bytes);
  CHECK(explainer.main_plan_stats().kept_for_backward == expected.stats().kept_for_backward);
  // Each image's top-3 maps (one image per run: the images' classes differ) equal its single-class runs.
  for (int64_t b = 0; b < 2; ++b) {
    HostTensor xb(DType::F32, {1, 2, 6, 6});
    std::memcpy(xb.f32(), x.f32() + b * xb.numel(), static_cast<size_t>(xb.numel()) * sizeof(float));
    const Explanation mine = Explainer(graph, 1, top, pool).run(xb);
    for (int64_t t = 0; t < 3; ++t) {
      ExplainOptions one = top;
      one.target = std::to_string(mine.classes[t][0]);
      const Explanation single = Explainer(graph, 1, one, pool).run(xb);
      for (size_t m = 0; m < top.methods.size(); ++m) {
        CAPTURE(top.methods[m]);
        CHECK(max_abs_diff(target_slice(mine.results[m].maps, t), single.results[m].maps) == 0.0);
      }
    }
  }
}

TEST_CASE("explain: a model with a fixed input batch takes one noisy copy and one aug-smooth variant per pass") {
  // Its plans run at batch 1 whatever batch they are asked for, so --chunk's several copies or variants per pass
  // cannot apply: the maps equal those of one per pass (before, the copies overran the plan's buffers and the
  // variant plan refused the model).
  const Graph graph = Graph(batch_folding_model(1), "fixed-batch");
  ThreadPool pool(2);
  const HostTensor x = random_images(1, 22);
  ExplainOptions options;
  options.methods = {"smooth-gradcampp", "gradcam"};
  options.layers = {"relu1"};
  options.smooth_samples = 4;
  std::vector<Explanation> runs;
  for (int64_t chunk : {1, 4}) {
    options.chunk = chunk;
    runs.push_back(Explainer(graph, 1, options, pool).run(x));
  }
  for (size_t m = 0; m < 2; ++m) CHECK(max_abs_diff(runs[0].results[m].maps, runs[1].results[m].maps) == 0.0);
  options.methods = {"gradcam"};
  options.aug_smooth = true;
  runs.clear();
  for (int64_t chunk : {1, 6}) {
    options.chunk = chunk;
    runs.push_back(Explainer(graph, 1, options, pool).run(x));
  }
  CHECK(max_abs_diff(runs[0].results[0].maps, runs[1].results[0].maps) == 0.0);
  // And a batch the model does not have is a clear error.
  CHECK_THROWS_WITH_AS(Explainer(graph, 2, options, pool), doctest::Contains("fixed shape"), Error);
}

TEST_CASE("explain: Ablation-CAM of a target whose score is exactly 0 is an error naming the image") {
  // Class 4 of the batch-folding model has a zero row and bias: y = 0, and w_k = (y - y_k) / y is undefined.
  const Graph graph(batch_folding_model(0), "batch-folding");
  ThreadPool pool(2);
  ExplainOptions options;
  options.methods = {"ablationcam"};
  options.layers = {"relu1"};
  options.target = "4";
  CHECK_THROWS_WITH_AS(Explainer(graph, 2, options, pool).run(random_images(2, 24)),
                       doctest::Contains("score of image 0 is exactly 0"), Error);
  options.target = "3";
  CHECK_NOTHROW(Explainer(graph, 2, options, pool).run(random_images(2, 24)));
}

TEST_CASE("explain: Smooth Grad-CAM++ gives the same maps however many noisy copies share one pass") {
  // mobilenet_v3_small fixture (its layer gradient depends on the input, unlike a GAP + linear head's), the
  // fixture batch, 7 samples: one copy per pass (chunk = batch), 3 + 3 + 1 (a partial last pass, padded with
  // zeros) and all 7 at once. Same noise (drawn in the same order), same seeds per copy.
  Graph graph = fixture_graph("mobilenet_v3_small");
  ThreadPool pool(2);
  const HostTensor x = read_npy((kFixtures / "models/mobilenet_v3_small/input.npy").string());
  const int64_t B = x.shape[0];
  ExplainOptions options;
  options.methods = {"smooth-gradcampp", "gradcam"};
  options.smooth_samples = 7;
  options.target = "top2";
  options.seed = 5;
  std::vector<Explanation> runs;
  for (int64_t copies : {1, 3, 7}) {
    options.chunk = copies * B;
    runs.push_back(Explainer(graph, B, options, pool).run(x));
  }
  for (size_t r = 1; r < runs.size(); ++r) {
    CAPTURE(r);
    REQUIRE(runs[r].results.size() == 2);
    for (size_t m = 0; m < 2; ++m) {
      CAPTURE(runs[r].results[m].method);
      // Grad-CAM: the main plan, untouched by the smoothing passes: exact. Smooth Grad-CAM++: a plan of another
      // batch size may take other CPU kernel paths (the layer gradient then differs by ~1e-6 relative: measured
      // 8.9e-8 of 0.074 at batch 14 vs 2), which Grad-CAM++'s divisions amplify (2.1e-3 in the map, measured);
      // a wrong noise row or seed moves the map by far more (see the 1-sample check below).
      const double diff = max_abs_diff(runs[r].results[m].maps, runs[0].results[m].maps);
      CHECK(diff <= (runs[r].results[m].method == "gradcam" ? 0.0 : 1e-2));
    }
  }
  // And the copies do matter: 7 samples differ from 1.
  options.smooth_samples = 1;
  options.chunk = 0;
  const Explanation one = Explainer(graph, B, options, pool).run(x);
  const double one_vs_seven = max_abs_diff(one.results[0].maps, runs[0].results[0].maps);
  MESSAGE("Smooth Grad-CAM++ with 1 vs 7 samples: max map difference " << one_vs_seven);
  CHECK(one_vs_seven > 0.1);
}

TEST_CASE("explain: aug-smooth is the mean of the six flipped/scaled variants, flipped back") {
  Graph graph = fixture_graph("vgg11_bn");
  ThreadPool pool(2);
  const HostTensor x = read_npy((kFixtures / "models/vgg11_bn/cam/chelsea/input.npy").string());
  ExplainOptions options;
  options.methods = {"gradcam"};
  options.target = "0";  // a fixed class, so every variant explains the same score
  ExplainOptions smooth = options;
  smooth.aug_smooth = true;
  const Explanation got = Explainer(graph, 1, smooth, pool).run(x);
  const int64_t W = x.shape[3];
  HostTensor expected(DType::F32, got.results[0].maps.shape);
  Explainer plain(graph, 1, options, pool);
  for (bool flip : {false, true})
    for (float factor : {0.9f, 1.0f, 1.1f}) {
      HostTensor v = x;
      for (int64_t i = 0; i < v.numel(); ++i) v.f32()[i] *= factor;
      if (flip)
        for (int64_t r = 0; r < v.numel() / W; ++r) std::reverse(v.f32() + r * W, v.f32() + (r + 1) * W);
      HostTensor map = plain.run(v).results[0].maps;
      if (flip)
        for (int64_t r = 0; r < map.numel() / W; ++r) std::reverse(map.f32() + r * W, map.f32() + (r + 1) * W);
      for (int64_t i = 0; i < map.numel(); ++i) expected.f32()[i] += map.f32()[i] / 6.f;
    }
  // Same float operations in a different summation order: a few ulps of values in [0, 1].
  CHECK(max_abs_diff(got.results[0].maps, expected) <= 1e-6);
}

TEST_CASE("explain: aug-smooth gives the same maps however many variants share one pass") {
  // mobilenet_v3_small fixture (batch 2), two targets, a gradient method, Guided Backprop (maps with channels),
  // Score-CAM (its own chunked forwards per image) and Smooth Grad-CAM++ (noise drawn per variant as the
  // one-variant-per-pass run draws it): 1, 2, 3 and 6 variants per pass (--chunk = P x batch).
  Graph graph = fixture_graph("mobilenet_v3_small");
  ThreadPool pool(2);
  const HostTensor x = read_npy((kFixtures / "models/mobilenet_v3_small/input.npy").string());
  const int64_t B = x.shape[0];
  ExplainOptions options;
  options.methods = {"gradcam", "guided-backprop", "scorecam", "smooth-gradcampp"};
  options.target = "top2";
  options.aug_smooth = true;
  options.smooth_samples = 2;
  options.seed = 3;
  options.chunk = B;
  const Explanation one = Explainer(graph, B, options, pool).run(x);
  for (int64_t per_pass : {2, 3, 6}) {
    CAPTURE(per_pass);
    options.chunk = per_pass * B;
    const Explanation batched = Explainer(graph, B, options, pool).run(x);
    REQUIRE(batched.results.size() == one.results.size());
    for (size_t m = 0; m < one.results.size(); ++m) {
      CAPTURE(one.results[m].method);
      REQUIRE(batched.results[m].maps.shape == one.results[m].maps.shape);
      // 2 and 3 per pass: bit-identical (measured); 6 per pass: a plan of batch 12 takes other CPU kernel paths,
      // ulps apart (measured <= 2.7e-7). A wrong variant, flip, target or noise row moves a map by far more.
      CHECK(max_abs_diff(batched.results[m].maps, one.results[m].maps) <= 1e-5);
    }
  }
}

TEST_CASE("explain: similarity target with the embedding itself as concept has zero gradient") {
  // cos(e, v) is maximal at v = e, so dy/de = 0 and every gradient map is empty: a check of the seed formula.
  Graph graph = fixture_graph("vgg11_bn");
  ThreadPool pool(2);
  const HostTensor x = read_npy((kFixtures / "models/vgg11_bn/cam/chelsea/input.npy").string());
  ExplainOptions options;
  options.methods = {"gradcam", "hirescam"};
  options.target = "similarity";
  auto logits = run_model(graph, {{graph.values()[graph.input_ids()[0]].name, x}}, pool);
  options.concept_vector = std::make_shared<HostTensor>(logits.begin()->second);
  options.concept_vector = std::make_shared<HostTensor>(HostTensor(DType::F32, {options.concept_vector->numel()}));
  std::memcpy(const_cast<float*>(options.concept_vector->f32()), logits.begin()->second.f32(), logits.begin()->second.bytes.size());
  const Explanation same = Explainer(graph, 1, options, pool).run(x);
  // float32 rounding leaves |G| ~ 1e-9; after ReLU and normalization by (max + 1e-7) such noise stays below
  // 1e-9 / 1e-7 = 1e-2, while a real map reaches 1.
  for (const auto& r : same.results) {
    CAPTURE(r.method);
    CHECK(*std::max_element(r.maps.f32(), r.maps.f32() + r.maps.numel()) <= 1e-2f);
  }
  // A different concept vector gives a non-empty map.
  auto other = std::make_shared<HostTensor>(DType::F32, Shape{options.concept_vector->numel()});
  other->f32()[0] = 1.f;
  options.concept_vector = other;
  const Explanation diff = Explainer(graph, 1, options, pool).run(x);
  CHECK(*std::max_element(diff.results[0].maps.f32(), diff.results[0].maps.f32() + diff.results[0].maps.numel()) > 0.5f);
  // The methods that score or seed extra passes do it on the host for this target (cosine with the concept):
  // finite maps in [0, 1]; Score-CAM's (softmax weights, non-negative activations) reaches 1.
  options.methods = {"scorecam", "ablationcam", "smooth-gradcampp"};
  options.smooth_samples = 2;
  const Explanation host_scored = Explainer(graph, 1, options, pool).run(x);
  for (const auto& r : host_scored.results) {
    CAPTURE(r.method);
    const auto [lo, hi] = std::minmax_element(r.maps.f32(), r.maps.f32() + r.maps.numel());
    CHECK((std::isfinite(*lo) && std::isfinite(*hi) && *lo >= 0.f && *hi <= 1.f));
    if (r.method == "scorecam") CHECK(*hi > 0.99f);
  }
}

TEST_CASE("explain: unknown method, bad layer, bad target are clear errors") {
  Graph graph = fixture_graph("resnet18");
  ThreadPool pool(1);
  ExplainOptions options;
  options.methods = {"gradcamm"};
  CHECK_THROWS_WITH_AS(Explainer(graph, 1, options, pool), doctest::Contains("unknown CAM method 'gradcamm'"), Error);
  options.methods = {"gradcam"};
  options.layers = {"/no/such/Relu"};
  CHECK_THROWS_WITH_AS(Explainer(graph, 1, options, pool), doctest::Contains("'/no/such/Relu'"), Error);
  options.layers = {};
  options.target = "top0";
  CHECK_THROWS_AS(Explainer(graph, 1, options, pool), Error);
  options.target = "softmax:x";
  CHECK_THROWS_AS(Explainer(graph, 1, options, pool), Error);
  options.target = "region:1";  // a classifier has no spatial output and no mask was given
  CHECK_THROWS_AS(Explainer(graph, 1, options, pool), Error);
}

TEST_CASE("cli: explain writes overlays, maps and results.json for images, directories and top-k") {
  const fs::path dir = fs::temp_directory_path() / ("camrt_explain_cli_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "photos");
  fs::copy(kFixtures / "image/chelsea.jpg", dir / "photos/cat.jpg");
  fs::copy(kFixtures / "image/chelsea.jpg", dir / "photos/cat2.jpg");
  auto run = [&](const std::string& args) {
    const std::string cmd = std::string(CAMRT_CLI_PATH) + " " + args + " >" + (dir / "out.txt").string() + " 2>" + (dir / "err.txt").string();
    const int status = std::system(cmd.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  REQUIRE(run("convert " + (kFixtures / "models/resnet18/model.onnx").string() + " -o " + (dir / "m").string()) == 0);
  REQUIRE(run("explain " + (dir / "m/model.json").string() + " " + (dir / "photos").string() +
              " --method gradcam,eigencam,guided-backprop --target top2 --batch 2 --out " + (dir / "out").string()) == 0);
  std::ifstream in(dir / "out/results.json");
  const nlohmann::json results = nlohmann::json::parse(in);
  REQUIRE(results["images"].size() == 2);
  for (const auto& image : results["images"]) {
    REQUIRE(image["targets"].size() == 2);
    for (const auto& c : image["targets"]) {
      const std::string stem = (dir / "out" / image["name"].get<std::string>()).string() + ".";
      const std::string cls = std::to_string(c.get<int64_t>());
      for (const std::string method : {"gradcam", "eigencam"}) {
        const HostTensor map = read_npy(stem + method + "." + cls + ".npy");
        CHECK(map.shape == Shape{64, 64});
        const auto [lo, hi] = std::minmax_element(map.f32(), map.f32() + map.numel());
        CHECK(*lo >= 0.f);
        CHECK(*hi <= 1.f);
        const Image png = read_image(stem + method + "." + cls + ".png");
        CHECK(png.width == 64);
      }
      CHECK(read_npy(stem + "guided-backprop." + cls + ".npy").shape == Shape{3, 64, 64});
    }
  }
  CHECK(results["timing_ms"].contains("forward"));
  // Errors: one line, exit code 1.
  CHECK(run("explain " + (dir / "m/model.json").string() + " " + (dir / "photos/cat.jpg").string() + " --method nope") == 1);
  std::ofstream(dir / "broken.jpg") << "not an image";
  CHECK(run("explain " + (dir / "m/model.json").string() + " " + (dir / "broken.jpg").string() + " --out " + (dir / "o2").string()) == 1);
  fs::remove_all(dir);
}
