// Fault injection: every allocation of a Session call fails in turn, and each failure must surface as one
// camrt::Error saying "out of memory" (never std::bad_alloc, never a crash), leak nothing (LSan, in the sanitizer
// build) and leave the session working: the next call gives results bit-identical to a clean run.
// The mechanism is a replacement of the global operator new/delete for this test binary, armed per thread and
// disarmed by default, so every other suite in camrt_tests (and the thread pool's workers) allocate normally.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <new>
#include <random>
#include <string>
#include <thread>

#include "engine/camrt.h"
#include "tests/replace_new.h"

// --- The replacement (tests/replace_new.h): every allocation asks replaced_new, which fails the armed one.
namespace {

// The calling thread's state: countdown >= 0 arms it (that many allocations pass, the next one fails, then it
// disarms itself); allocations counts them while armed. Plain thread_local integers: constant-initialized, so
// reading them inside operator new needs no TLS initialization (and allocates nothing).
thread_local int64_t t_countdown = -1;
thread_local int64_t t_allocations = 0;
thread_local int t_failed = 0;  // 0: nothing failed; 1: a throwing new failed; 2: a nothrow new returned null

constexpr int kFailedThrowing = 1, kFailedNothrow = 2;

// True if this allocation is the one to fail.
inline bool inject(bool nothrow) {
  if (__builtin_expect(t_countdown < 0, 1)) return false;  // disarmed: the only cost for every other test
  ++t_allocations;
  if (t_countdown > 0) {
    --t_countdown;
    return false;
  }
  t_countdown = -1;
  t_failed = nothrow ? kFailedNothrow : kFailedThrowing;
  return true;
}

}  // namespace

void* replaced_new(std::size_t size, std::size_t alignment, bool nothrow) {
  if (inject(nothrow)) {
    if (nothrow) return nullptr;
    throw std::bad_alloc();
  }
  return allocate_for_new(size, alignment, nothrow);
}

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kFashion = std::string(CAMRT_SOURCE_DIR) + "/weights/models/fashion-canvas/model.json";

// A two-convolution network small enough that every CAM method (Score-CAM's masked forwards included) runs in
// well under a millisecond, so the loops below can fail every single allocation. Written once per process.
// The model's folder, removed at exit.
struct TempModel {
  fs::path dir;
  ~TempModel() {
    std::error_code ignored;
    fs::remove_all(dir, ignored);
  }
};

const std::string& tiny_model() {
  static TempModel folder{fs::temp_directory_path() / ("camrt_fault_" + std::to_string(::getpid()))};
  static const std::string path = [] {
    camrt::Model m;
    m.inputs = {{"input", camrt::DType::F32, {-1, 3, 12, 12}}};
    m.outputs = {{"logits", camrt::DType::F32, {-1, 4}}};
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.f, 0.5f);
    auto random = [&](const camrt::Shape& shape) {
      camrt::HostTensor t(camrt::DType::F32, shape);
      for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = normal(rng);
      return t;
    };
    m.weights["conv1.weight"] = random({6, 3, 3, 3});
    m.weights["conv1.bias"] = random({6});
    m.weights["conv2.weight"] = random({5, 6, 3, 3});
    m.weights["conv2.bias"] = random({5});
    m.weights["fc.weight"] = random({4, 5});
    m.weights["fc.bias"] = random({4});
    const json conv{{"kernel_shape", {3, 3}}, {"pads", {1, 1, 1, 1}}, {"strides", {1, 1}}, {"group", 1}};
    m.nodes = {
        {"Conv", "/conv1/Conv", {"input", "conv1.weight", "conv1.bias"}, {"c1"}, conv},
        {"Relu", "/relu1/Relu", {"c1"}, {"r1"}, json::object()},
        {"Conv", "/conv2/Conv", {"r1", "conv2.weight", "conv2.bias"}, {"c2"}, conv},
        {"Relu", "/relu2/Relu", {"c2"}, {"r2"}, json::object()},
        {"GlobalAveragePool", "/pool/GlobalAveragePool", {"r2"}, {"pooled"}, json::object()},
        {"Flatten", "/Flatten", {"pooled"}, {"flat"}, json{{"axis", 1}}},
        {"Gemm", "/fc/Gemm", {"flat", "fc.weight", "fc.bias"}, {"logits"}, json{{"transB", 1}}},
    };
    m.preprocess.resize = 12;
    m.preprocess.crop = 12;
    m.explain_layer = "/relu2/Relu";
    camrt::save_model(m, folder.dir.string());
    return (folder.dir / "model.json").string();
  }();
  return path;
}

// Arms the calling thread for the duration of one call; always disarmed afterwards, even if the call throws.
struct Armed {
  explicit Armed(int64_t fail_at) {
    t_allocations = 0;
    t_failed = 0;
    t_countdown = fail_at;
  }
  ~Armed() { t_countdown = -1; }
};

// Allocations one call makes on this thread.
int64_t count_allocations(const std::function<void()>& call) {
  {
    Armed armed(INT64_MAX);
    call();
  }
  return t_allocations;
}

struct Attempt {
  int failed = 0;      // t_failed after the call
  bool threw = false;  // a camrt::Error came out
  std::string message;
};

// The call with its fail_at-th allocation failing. Anything but camrt::Error escapes and fails the test case.
Attempt attempt(int64_t fail_at, const std::function<void()>& call) {
  Attempt a;
  {
    Armed armed(fail_at);
    try {
      call();
    } catch (const camrt::Error& e) {
      t_countdown = -1;  // the message copy below may allocate; nothing more may fail
      a.threw = true;
      a.message = e.what();
    }
  }
  a.failed = t_failed;
  return a;
}

// A failed allocation must be an Error saying so; a failed nothrow allocation is the caller's to handle (std::
// stable_sort falls back to an in-place sort), so it may end either way, but an Error must still say why.
// Returns whether the attempt was acceptable (the CHECKs report why not).
bool check_attempt(const Attempt& a, int64_t i, const char* what) {
  bool ok = true;
  if (a.failed == kFailedThrowing) {
    ok = a.threw && a.message.find("out of memory") != std::string::npos;
    CHECK_MESSAGE(a.threw, what << ": allocation " << i << " failed, yet the call succeeded");
    CHECK_MESSAGE(a.message.find("out of memory") != std::string::npos,
                  what << ": allocation " << i << " failed with an Error that does not say so: " << a.message);
  } else if (a.threw) {
    ok = a.message.find("out of memory") != std::string::npos;
    CHECK_MESSAGE(ok, what << ": allocation " << i << " (nothrow or none) failed with an unrelated Error: " << a.message);
  }
  return ok;
}

std::vector<float> seeded_input(const camrt::Shape& shape) {
  std::vector<float> x(static_cast<size_t>(camrt::checked_numel(shape)));
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (float& v : x) v = normal(rng);
  return x;
}

bool same_tensor(const camrt::HostTensor& a, const camrt::HostTensor& b) {
  return a.dtype == b.dtype && a.shape == b.shape && a.bytes == b.bytes;
}

bool same_explanation(const camrt::Explanation& a, const camrt::Explanation& b) {
  if (!same_tensor(a.logits, b.logits) || a.classes != b.classes || a.layers != b.layers) return false;
  if (a.results.size() != b.results.size()) return false;
  for (size_t i = 0; i < a.results.size(); ++i)
    if (a.results[i].method != b.results[i].method || !same_tensor(a.results[i].maps, b.results[i].maps)) return false;
  return true;
}

// Every method, two targets per image, Score-CAM / Ablation-CAM in uneven chunks (the last one padded).
camrt::ExplainOptions every_method() {
  camrt::ExplainOptions options;
  options.methods = camrt::cam_method_names();
  options.target = "top2";
  options.smooth_samples = 2;
  options.chunk = 2;
  return options;
}

// Fails each allocation of session.explain(x) in turn (warm session: a clean call came first), checks the Error,
// and that the next call reproduces `reference` bit for bit. Returns the number of allocations of one call.
int64_t fail_each_explain_allocation(camrt::Session& session, const std::vector<float>& x,
                                     const camrt::Explanation& reference, const char* what) {
  int64_t i = 0;
  for (;; ++i) {
    const Attempt a = attempt(i, [&] { session.explain(x.data()); });
    if (!check_attempt(a, i, what)) break;  // one report, not thousands
    if (a.failed == 0) break;  // the call ran to its end: every allocation has had its turn
    const camrt::Explanation& again = session.explain(x.data());
    if (!same_explanation(again, reference)) {
      FAIL_CHECK(what << ": explain after failing allocation " << i << " differs from a clean run");
      break;
    }
  }
  return i;
}

}  // namespace

TEST_CASE("fault injection: the replacement counts and fails only on the armed thread") {
  const int64_t n = count_allocations([] {
    std::vector<int> v(3);
    std::string s(100, 'x');
  });
  CHECK(n == 2);
  const Attempt a = attempt(1, [] {
    std::vector<int> v(3);
    try {
      std::string s(100, 'x');
    } catch (const std::bad_alloc&) {
      throw camrt::Error("out of memory (test)", __FILE__, __LINE__, nullptr);
    }
  });
  CHECK(a.failed == kFailedThrowing);
  CHECK(a.threw);
  const Attempt b = attempt(0, [] { CHECK(new (std::nothrow) int[4] == nullptr); });
  CHECK(b.failed == kFailedNothrow);
  // Another thread, while this one is armed, allocates normally.
  bool other_ok = false;
  const Attempt c = attempt(0, [&] {
    try {
      std::thread([&] { other_ok = std::vector<int>(100).size() == 100; }).join();
    } catch (const std::bad_alloc&) {  // starting the thread is this thread's first allocation
      std::thread([&] { other_ok = std::vector<int>(100).size() == 100; }).join();
    }
  });
  CHECK(c.failed == kFailedThrowing);
  CHECK(other_ok);
}

TEST_CASE("fault injection: every allocation of an explain call fails in turn; the session recovers") {
  const std::vector<float> x = seeded_input({1, 3, 12, 12});
  SUBCASE("every method, tiny model") {
    camrt::Session session(tiny_model(), 1, every_method(), /*num_threads=*/1);
    const camrt::Explanation reference = session.explain_copy(x.data());
    REQUIRE(reference.results.size() == camrt::cam_method_names().size());
    const int64_t n = fail_each_explain_allocation(session, x, reference, "explain (every method)");
    MESSAGE("explain, every method: failed each of " << n << " allocations of one call");
    CHECK(n > 0);
    // Each failure above left the result being filled half made; once both of the session's result buffers hold
    // their tensors a call allocates nothing at all (tests/steady_state_allocations.cpp counts that too).
    CHECK(count_allocations([&] { session.explain(x.data()); }) == 0);
  }
  SUBCASE("aug-smooth and eigen-smooth, tiny model") {
    camrt::ExplainOptions options;
    options.methods = {"gradcam", "cam", "scorecam", "eigengradcam"};
    options.aug_smooth = options.eigen_smooth = true;
    options.chunk = 3;
    camrt::Session session(tiny_model(), 1, options, 1);
    const camrt::Explanation reference = session.explain_copy(x.data());
    const int64_t n = fail_each_explain_allocation(session, x, reference, "explain (aug/eigen smooth)");
    CHECK(n > 0);
  }
}

TEST_CASE("fault injection: a real model, batch 2, the planned convolutions and their workspace") {
  camrt::ExplainOptions options;
  options.methods = {"gradcam", "gradcampp", "eigencam", "layercam"};
  camrt::Session session(kFashion, 2, options, 1);
  const std::vector<float> x = seeded_input(session.input_shape());
  const camrt::Explanation reference = session.explain_copy(x.data());
  const int64_t n = fail_each_explain_allocation(session, x, reference, "explain (fashion-canvas)");
  MESSAGE("explain, fashion-canvas: failed each of " << n << " allocations of one call");
  CHECK(n > 0);
}

TEST_CASE("fault injection: the first explain of a fresh session (its working buffers half made) recovers") {
  const std::vector<float> x = seeded_input({1, 3, 12, 12});
  camrt::Session reference_session(tiny_model(), 1, every_method(), 1);
  const camrt::Explanation reference = reference_session.explain_copy(x.data());
  int64_t i = 0;
  for (;; ++i) {
    camrt::Session session(tiny_model(), 1, every_method(), 1);
    const Attempt a = attempt(i, [&] { session.explain(x.data()); });
    if (!check_attempt(a, i, "first explain")) break;
    if (a.failed == 0) break;
    if (!same_explanation(session.explain(x.data()), reference)) {
      FAIL_CHECK("first explain: the call after failing allocation " << i << " differs from a clean run");
      break;
    }
  }
  MESSAGE("first explain: failed each of " << i << " allocations");
  CHECK(i > 0);
}

TEST_CASE("fault injection: predict recovers after every failed allocation") {
  camrt::Session session(tiny_model(), 1, every_method(), 1);
  const std::vector<float> x = seeded_input(session.input_shape());
  const camrt::HostTensor reference = session.predict_copy(x.data());
  int64_t i = 0;
  for (;; ++i) {
    const Attempt a = attempt(i, [&] { session.predict_copy(x.data()); });
    if (!check_attempt(a, i, "predict") || a.failed == 0) break;
    CHECK(same_tensor(session.predict_copy(x.data()), reference));
  }
  CHECK(i > 0);  // the copy allocates: at least one failure point was exercised
}

// Not tested here: failures during Session construction. nlohmann::json's destructor allocates a work stack
// (json_value::destroy), so an allocation that fails inside the destruction of a JSON value (while model.json or
// the safetensors header is parsed, or node attributes are copied) terminates the program whatever camrt does;
// an exhaustive loop over construction hits such points. Construction failures elsewhere are covered by the
// fresh-session explain case above (its working buffers and lazily made plans).
