// Concurrency: camrt::Session shared by several threads (through the copying calls) and one Session per thread,
// both giving results bit-identical to a single-threaded reference; and `camrt bench --soak` end to end.
// Threads only compare and count here; the doctest assertions run on the main thread.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "engine/camrt.h"

namespace fs = std::filesystem;

namespace {

const std::string kModel = std::string(CAMRT_SOURCE_DIR) + "/weights/models/fashion-canvas/model.json";

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

// Distinct inputs, so a result handed to the wrong caller (or two calls mixing buffers) shows as a mismatch.
std::vector<std::vector<float>> seeded_inputs(const camrt::Shape& shape, int count) {
  std::vector<std::vector<float>> inputs;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (int i = 0; i < count; ++i) {
    std::vector<float> x(static_cast<size_t>(camrt::checked_numel(shape)));
    for (float& v : x) v = normal(rng);
    inputs.push_back(std::move(x));
  }
  return inputs;
}

}  // namespace

TEST_CASE("concurrency: 4 threads x 200 explains on a shared session and on per-thread sessions") {
  camrt::ExplainOptions options;
  options.methods = {"gradcam"};
  // One worker per session: the 4 calling threads already fill the machine, and every session then computes
  // exactly what the single-threaded reference does.
  constexpr int kThreads = 4, kCalls = 200, kInputs = 4;
  camrt::Session shared(kModel, 1, options, /*num_threads=*/1);
  const auto inputs = seeded_inputs(shared.input_shape(), kInputs);
  std::vector<camrt::Explanation> reference;
  std::vector<camrt::HostTensor> reference_logits;
  {
    camrt::Session single(kModel, 1, options, 1);
    for (const auto& x : inputs) {
      reference.push_back(single.explain(x.data()));
      reference_logits.push_back(single.predict_copy(x.data()));
    }
  }
  for (int i = 1; i < kInputs; ++i) REQUIRE_FALSE(same_explanation(reference[0], reference[i]));

  std::atomic<int> mismatches{0}, calls{0};
  std::vector<std::string> errors(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      try {
        // Threads 0 and 1 share `shared` through the copying calls; 2 and 3 each own a session and use the views.
        std::unique_ptr<camrt::Session> own;
        if (t >= 2) own = std::make_unique<camrt::Session>(kModel, 1, options, 1);
        for (int c = 0; c < kCalls; ++c) {
          const int k = (c + t) % kInputs;
          bool ok = false;
          if (own) {
            ok = same_explanation(own->explain(inputs[k].data()), reference[k]);
          } else if (c % 10 == 9) {
            ok = same_tensor(shared.predict_copy(inputs[k].data()), reference_logits[k]);
          } else {
            ok = same_explanation(shared.explain_copy(inputs[k].data()), reference[k]);
          }
          if (!ok) ++mismatches;
          ++calls;
        }
      } catch (const std::exception& e) {
        errors[t] = e.what();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) CHECK_MESSAGE(errors[t].empty(), "thread " << t << ": " << errors[t]);
  CHECK(calls == kThreads * kCalls);
  CHECK(mismatches == 0);
}

TEST_CASE("concurrency: the reference-returning calls are serialized too") {
  // explain() on a shared session is safe to call concurrently (its result is only valid until the next call);
  // the logits of every call must still be those of some reference input, never a mix.
  camrt::ExplainOptions options;
  options.methods = {"gradcam"};
  camrt::Session shared(kModel, 1, options, 1);
  const auto inputs = seeded_inputs(shared.input_shape(), 2);
  std::vector<camrt::HostTensor> reference;
  for (const auto& x : inputs) reference.push_back(shared.predict_copy(x.data()));
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      for (int c = 0; c < 20; ++c) {
        const camrt::HostTensor logits = shared.explain_copy(inputs[t].data()).logits;
        if (!same_tensor(logits, reference[t])) ++bad;
        shared.explain(inputs[t].data());  // the view itself is not read: another thread may overwrite it
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(bad == 0);
}

TEST_CASE("concurrency: camrt bench --soak prints its JSON line and fails on memory growth") {
  const fs::path dir = fs::temp_directory_path() / ("camrt_soak_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto run = [&](const std::string& extra, std::string* out, std::string* err) {
    const fs::path out_path = dir / "stdout.txt", err_path = dir / "stderr.txt";
    const std::string command = std::string(CAMRT_CLI_PATH) + " bench " + kModel +
                                " --device cpu --threads 1 --soak 20 --warmup 2 " + extra + " >" + out_path.string() +
                                " 2>" + err_path.string();
    const int status = std::system(command.c_str());
    auto slurp = [](const fs::path& p) {
      std::ifstream in(p);
      std::stringstream ss;
      ss << in.rdbuf();
      return ss.str();
    };
    *out = slurp(out_path);
    *err = slurp(err_path);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  std::string out, err;
  // A generous threshold: a sanitizer build's allocator (quarantine) grows the resident set by design.
  REQUIRE(run("--max-rss-growth 1000", &out, &err) == 0);
  const nlohmann::json row = nlohmann::json::parse(out);
  CHECK(row.at("scenario") == "soak");
  CHECK(row.at("iterations") == 20);
  CHECK(row.at("rss_mib_start").get<double>() > 0);
  CHECK(row.at("rss_mib_end").get<double>() > 0);
  CHECK(row.at("rss_mib_max").get<double>() >= row.at("rss_mib_end").get<double>());
  CHECK(row.at("median_ms").get<double>() > 0);
  CHECK(row.contains("ms_first_1000"));
  CHECK(row.contains("ms_last_1000"));
  CHECK_FALSE(row.contains("device_mib_start"));  // the CPU has no device memory to report
  // A threshold no process can meet (memory cannot shrink by 200%): exit status 1 and one clear line.
  CHECK(run("--max-rss-growth -200", &out, &err) == 1);
  CHECK(err.find("resident memory grew") != std::string::npos);
  CHECK(nlohmann::json::parse(out).at("scenario") == "soak");  // the measurement is still printed
  fs::remove_all(dir);
}
