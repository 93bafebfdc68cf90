// camrt bench: latency of a forward pass and of explanations, as JSON lines that line up with the PyTorch
// baselines (../shared/bench/torch_baseline.py): one line per (batch, scenario) with percentiles, per-image
// time, throughput and planned peak memory. Warm-up runs are excluded; inputs are seeded random tensors.
// --soak N runs N explanations through one camrt::Session, as a long-running embedder would, and fails (exit 1)
// when resident memory grows.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include "engine/cam/explainer.h"
#include "engine/camrt.h"
#include "kernels/cuda/runtime.h"
#include "tools/camrt/args.h"
#include "tools/camrt/commands.h"

namespace camrt::cli {

namespace {

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) parts.push_back(item);
  return parts;
}

double percentile(std::vector<double> sorted, double q) {
  std::sort(sorted.begin(), sorted.end());
  const double pos = q * (sorted.size() - 1);
  const size_t lo = static_cast<size_t>(pos), hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (pos - lo) * (sorted[hi] - sorted[lo]);
}

double mib(size_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

// Resident set size of this process: the second field of /proc/self/statm, in pages.
size_t resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  CAMRT_CHECK(f, "camrt bench --soak: cannot read /proc/self/statm (resident memory is measured on Linux only)");
  unsigned long long size_pages = 0, resident_pages = 0;
  const int read = std::fscanf(f, "%llu %llu", &size_pages, &resident_pages);
  std::fclose(f);
  CAMRT_CHECK(read == 2, "camrt bench --soak: cannot parse /proc/self/statm");
  return static_cast<size_t>(resident_pages) * static_cast<size_t>(::sysconf(_SC_PAGESIZE));
}

// The soak: one Session, warm-up calls, then `iterations` explanations of one seeded input. Memory is read after
// the warm-up (start) and after the last call (end); the call times of the first and last 1000 show a slow-down.
int run_soak(const Args& args, const std::string& path, const std::string& name, bool gpu, Precision precision) {
  const int64_t iterations = args.get_int("soak");
  CAMRT_CHECK(iterations >= 1, "--soak: expected a positive number of explanations");
  const int64_t warmup = args.has("warmup") ? args.get_int("warmup") : 100;
  CAMRT_CHECK(warmup >= 0, "--warmup must not be negative");
  int64_t batch = 1;
  if (args.has("batch")) {
    try {
      batch = std::stoll(args.get("batch"));
    } catch (const std::logic_error&) {
      batch = 0;
    }
    CAMRT_CHECK(batch >= 1, "--soak takes one --batch size, got '" << args.get("batch") << "'");
  }
  ExplainOptions options;
  options.methods = args.has("method") ? split_list(args.get("method")) : std::vector<std::string>{"gradcam"};
  CAMRT_CHECK(!options.methods.empty(), "--method: expected CAM methods");
  for (const auto& method : options.methods)
    CAMRT_CHECK(is_cam_method(method), "--soak --method '" << method << "': expected CAM methods (a soak explains)");
  options.channels_last = parse_channels_last(args.get("channels-last"));
  // A Session picks its convolution algorithms with the runtime's default slack.
  CAMRT_CHECK(std::stod(args.get("algo-slack")) == 10.0, "--algo-slack applies to the scenarios, not to --soak");
  const double max_growth_pct = std::stod(args.get("max-rss-growth"));
  const int threads = static_cast<int>(args.get_int("threads"));

  Session session(path, batch, options, threads, gpu ? Device::CUDA : Device::CPU, precision);
  std::vector<float> x(static_cast<size_t>(checked_numel(session.input_shape())));
  std::mt19937 rng(0);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (float& v : x) v = normal(rng);

  const CudaRuntime* cuda = session.cuda_runtime();
  auto device_used = [&] {
    size_t free_bytes = 0, total_bytes = 0;
    cuda->memory_info(&free_bytes, &total_bytes);
    return total_bytes - free_bytes;
  };
  // Zero-filled before the start is measured, so its pages are already resident (10,000 times = 80 KB).
  std::vector<double> times(static_cast<size_t>(iterations));
  size_t rss_max = 0;  // over the samples taken every 100 explanations of the measured run
  auto timed_explain = [&](const char* phase, int64_t i, int64_t n, bool measured) {
    const auto t0 = std::chrono::steady_clock::now();
    session.explain(x.data());
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if ((i + 1) % 100 == 0 || i + 1 == n) {
      const size_t rss = resident_bytes();
      if (measured) rss_max = std::max(rss_max, rss);
      std::fprintf(stderr, "  soak %s: %lld/%lld, %.2f MiB resident\r", phase, static_cast<long long>(i + 1),
                   static_cast<long long>(n), mib(rss));
    }
    return ms;
  };
  // The warm-up runs the measured loop's own code (clock, explanation, reading /proc, progress line): the heap's
  // layout then settles before the start is read. (Reading /proc/self/statm only at the start and the end made the
  // CPU build's 12 MiB look 1.3% bigger at the end: the stdio buffers of that one read moved where glibc's heap
  // top sat, a constant 160 KiB whether the run had 2,000 or 30,000 explanations.)
  for (int64_t i = 0; i < warmup; ++i) timed_explain("warm-up", i, warmup, false);
  const size_t rss_start = resident_bytes();
  const size_t device_start = cuda ? cuda->device_bytes_in_use() : 0, device_used_start = cuda ? device_used() : 0;
  for (int64_t i = 0; i < iterations; ++i) times[static_cast<size_t>(i)] = timed_explain("explanations", i, iterations, true);
  const size_t rss_end = resident_bytes();
  const size_t device_end = cuda ? cuda->device_bytes_in_use() : 0, device_used_end = cuda ? device_used() : 0;
  std::fprintf(stderr, "%*s\r", 40, "");

  const size_t window = std::min<size_t>(1000, times.size());
  const double growth_pct = 100.0 * (static_cast<double>(rss_end) - static_cast<double>(rss_start)) / static_cast<double>(rss_start);
  std::string methods;
  for (const auto& m : options.methods) methods += (methods.empty() ? "" : ",") + m;
  const int pool_threads = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  nlohmann::json row = {{"model", name},
                        {"scenario", "soak"},
                        {"method", methods},
                        {"batch", batch},
                        {"channels_last", args.get("channels-last")},
                        {"iterations", iterations},
                        {"warmup", warmup},
                        {"rss_mib_start", mib(rss_start)},
                        {"rss_mib_end", mib(rss_end)},
                        {"rss_mib_max", mib(std::max(rss_max, rss_end))},
                        {"rss_growth_pct", growth_pct},
                        {"median_ms", percentile(times, 0.5)},
                        {"ms_first_1000", percentile(std::vector<double>(times.begin(), times.begin() + window), 0.5)},
                        {"ms_last_1000", percentile(std::vector<double>(times.end() - window, times.end()), 0.5)},
                        {"device", cuda ? cuda->device_name() : "cpu x" + std::to_string(pool_threads)}};
  if (cuda) {
    row["precision"] = precision_name(precision);
    row["device_mib_start"] = mib(device_start);
    row["device_mib_end"] = mib(device_end);
    row["device_used_mib_start"] = mib(device_used_start);  // the whole GPU (cudaMemGetInfo), other processes too
    row["device_used_mib_end"] = mib(device_used_end);
  }
  std::cout << row.dump() << std::endl;
  if (growth_pct > max_growth_pct) {
    std::fprintf(stderr, "camrt bench --soak: resident memory grew %.2f%% (%.1f MiB -> %.1f MiB) over %lld explanations, "
                 "more than %.2f%%\n", growth_pct, mib(rss_start), mib(rss_end), static_cast<long long>(iterations), max_growth_pct);
    return 1;
  }
  if (device_end > device_start) {
    std::fprintf(stderr, "camrt bench --soak: camrt's GPU memory grew from %.1f MiB to %.1f MiB over %lld explanations\n",
                 mib(device_start), mib(device_end), static_cast<long long>(iterations));
    return 1;
  }
  return 0;
}

}  // namespace

int run_bench(const std::vector<std::string>& argv) {
  Args args("bench", "camrt bench MODEL.json [--batch 1,8] [--method forward,gradcam] [--device cpu|cuda] [--precision P] [--iters N]\n"
            "       camrt bench MODEL.json --soak N [--method gradcam] [--batch 1] [--device D] [--max-rss-growth PCT]",
            "Times forward passes and explanations on seeded random inputs and prints one JSON line per\n"
            "scenario: model, batch, scenario, median_ms, min_ms, p90_ms, p99_ms, max_ms, per_image_ms,\n"
            "images_per_s, peak_mib, planned_mib, precision, device (and h2d_ms / d2h_ms on the GPU).\n"
            "An explanation's time covers the forward, backward, CAM, normalization and upsampling to the\n"
            "input size. On the GPU, times are CUDA-event times of the stream with the input already on the\n"
            "device and the maps left there (as frameworks time it); the host copies are h2d_ms / d2h_ms and\n"
            "end_to_end_ms covers all (host input in, host maps out). On the CPU there are no copies. peak_mib is the measured peak of camrt's device allocations (weights, arenas, buffers),\n"
            "planned_mib the executor's plan (main plan arena + workspace + weights). On the CPU both are\n"
            "the plan.\n"
            "\n"
            "--soak N: N explanations (default --method gradcam, --batch 1) through one camrt::Session after\n"
            "100 warm-up calls (or --warmup), as a long-running process would. One JSON line: model, scenario\n"
            "\"soak\", iterations, rss_mib_start, rss_mib_end, rss_growth_pct (resident memory from\n"
            "/proc/self/statm, after the warm-up and after the last call), rss_mib_max (largest of the samples\n"
            "read every 100 calls), median_ms, ms_first_1000 and\n"
            "ms_last_1000 (medians of the first and last 1000 calls), device, and on the GPU device_mib_start /\n"
            "device_mib_end (camrt's device memory in use) and device_used_mib_* (cudaMemGetInfo). Exits with\n"
            "status 1 and one line on stderr when resident memory grows by more than --max-rss-growth percent\n"
            "(default 1) or camrt's device memory grows at all.");
  args.option("batch", "LIST", "comma-separated batch sizes", "1,8")
      .option("method", "LIST", "forward and/or CAM methods", "forward,gradcam")
      .option("iters", "N", "timed iterations per scenario", "20")
      .option("warmup", "N", "untimed iterations first", "3")
      .option("device", "D", "cpu, cuda, or auto (cuda when a GPU is present)", "auto")
      .option("precision", "P", "fp32, tf32 or fp16 for convolutions/GEMMs on the GPU (default tf32; the CPU runs fp32)")
      .option("threads", "N", "CPU threads (0 = all cores)", "0")
      .option("fusion", "on|off", "plan the activation-fused graph (Conv/Add + Relu/Clip as one node)", "on")
      .option("algo-slack", "PCT", "GPU: a conv algorithm up to PCT% slower than the fastest may be picked for a "
              "smaller workspace (0: always the fastest)", "10")
      .option("channels-last", "auto|off|half|float",
              "store the forward-only part NHWC (auto: half at --precision fp16 on the GPU, else off)", "auto")
      .option("target", "T", "explained target, as camrt explain's --target (e.g. top5, softmax, 281)", "predicted")
      .flag("aug-smooth", "explain with aug-smooth's six variants (as camrt explain --aug-smooth)")
      .option("chunk", "N", "images per extra pass, as camrt explain's --chunk (0: automatic)", "0")
      .option("name", "NAME", "model name in the JSON (default: the model's directory name)")
      .option("soak", "N", "run N explanations through one Session and check memory (see above)")
      .option("max-rss-growth", "PCT", "--soak fails above this resident memory growth, percent", "1");
  if (!args.parse(argv)) return 0;
  CAMRT_CHECK(args.positionals().size() == 1, "camrt bench: expected one model.json (see camrt bench --help)");
  const std::string path = resolve_model_path(args.positionals()[0]);
  auto model = std::make_shared<const Model>(load_model(path));
  Graph graph(model, std::filesystem::path(path).filename().string());
  const std::string name = args.has("name") ? args.get("name") : std::filesystem::absolute(path).parent_path().filename().string();
  const int64_t iters = args.get_int("iters"), warmup = args.get_int("warmup");
  CAMRT_CHECK(iters >= 1 && warmup >= 0, "--iters must be at least 1");
  ThreadPool pool(static_cast<int>(args.get_int("threads")));
  const bool gpu = resolve_device(args.get("device")) == Device::CUDA;
  const Precision precision = args.has("precision") ? parse_precision(args.get("precision")) : gpu ? Precision::TF32 : Precision::FP32;
  CAMRT_CHECK(gpu || precision == Precision::FP32, "--precision " << args.get("precision") << ": the CPU backend runs fp32 only");
  const std::string input_name = graph.values()[graph.input_ids()[0]].name;
  CAMRT_CHECK(args.get("fusion") == "on" || args.get("fusion") == "off", "--fusion: expected on or off, got '" << args.get("fusion") << "'");
  const bool fusion = args.get("fusion") == "on";
  const ChannelsLast channels_last = parse_channels_last(args.get("channels-last"));
  const double algo_slack_pct = std::stod(args.get("algo-slack"));
  CAMRT_CHECK(algo_slack_pct >= 0, "--algo-slack must not be negative");
  if (args.has("soak")) return run_soak(args, path, name, gpu, precision);
  // The forward scenario plans what a Session's predictor plans.
  const std::unique_ptr<Graph> fused_graph = fusion ? graph.fused({}) : nullptr;
  const Graph& forward_graph = fusion ? *fused_graph : graph;

  for (const std::string& batch_text : split_list(args.get("batch"))) {
    int64_t batch = 0;
    try {
      batch = std::stoll(batch_text);
    } catch (const std::logic_error&) {  // not a number, or out of range
    }
    CAMRT_CHECK(batch >= 1, "--batch: '" << batch_text << "' is not a positive integer");
    const auto shapes = graph.input_shapes_for_batch(batch);
    HostTensor x(DType::F32, shapes.at(input_name));
    std::mt19937 rng(0);
    std::normal_distribution<float> normal(0.f, 1.f);
    for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] = normal(rng);

    for (const std::string& scenario : split_list(args.get("method"))) {
      // A runtime per scenario: its allocation peak is then this scenario's alone.
      std::unique_ptr<CudaRuntime> cuda;
      if (gpu) {
        cuda = std::make_unique<CudaRuntime>(0, precision);
        cuda->set_algo_slack(static_cast<float>(algo_slack_pct / 100.0));
      }
      std::unique_ptr<StreamTimer> timer;
      if (gpu) timer = std::make_unique<StreamTimer>(*cuda);
      std::function<void()> run;
      size_t planned_bytes = 0;
      int64_t channels_last_nodes = 0;  // nodes of the (main) plan on NHWC data (--channels-last; half at fp16)
      std::unique_ptr<Executor> executor;
      std::unique_ptr<Explainer> explainer;
      Explanation result;  // reused by every run, as Session::explain reuses its results (no allocation per call)
      HostTensor logits;
      std::vector<double> h2d_times, d2h_times;
      std::map<std::string, std::vector<double>> phase_times;  // an explanation's stages, host clock
      double forward_ms = 0;  // GPU forward: the compute part of the last run
      if (scenario == "forward") {
        PlanOptions plan;
        plan.cuda = cuda.get();
        plan.channels_last = channels_last;
        executor = std::make_unique<Executor>(forward_graph, shapes, pool, plan);
        executor->set_input(input_name, x);
        planned_bytes = executor->stats().arena_bytes + executor->stats().workspace_bytes + executor->stats().weight_bytes;
        channels_last_nodes = executor->stats().channels_last_nodes;
        const int out = forward_graph.output_ids()[0];  // captured by value: the lambda outlives this block
        logits = HostTensor(executor->descs()[out].dtype, executor->descs()[out].shape);
        // On the GPU the forward alone is timed by events; the transfers are timed separately.
        run = [&] { executor->forward(); };
        if (gpu) {
          run = [&, out] {
            timer->start();
            executor->set_input(input_name, x);
            h2d_times.push_back(timer->stop_ms());
            timer->start();
            executor->forward();
            forward_ms = timer->stop_ms();
            timer->start();
            executor->fetch(out, logits.bytes.data());
            d2h_times.push_back(timer->stop_ms());
          };
        }
      } else {
        CAMRT_CHECK(is_cam_method(scenario), "--method '" << scenario << "': expected forward or a CAM method");
        ExplainOptions options;
        options.methods = {scenario};
        options.fuse_activations = fusion;
        options.target = args.get("target");
        options.aug_smooth = args.has("aug-smooth");
        options.chunk = args.get_int("chunk");
        options.channels_last = channels_last;
        explainer = std::make_unique<Explainer>(graph, batch, options, pool, cuda.get());
        const PlanStats& s = explainer->main_plan_stats();
        planned_bytes = s.arena_bytes + s.workspace_bytes + s.weight_bytes;
        channels_last_nodes = s.channels_last_nodes;
        run = [&] {
          explainer->run(x, result);
          const Explanation& e = result;
          for (const auto& [phase, ms] : e.timings_ms) phase_times[phase].push_back(ms);
          if (gpu) {  // the host copies, timed inside (stream synchronized around them)
            h2d_times.push_back(e.timings_ms.count("upload") ? e.timings_ms.at("upload") : 0.0);
            d2h_times.push_back(e.timings_ms.count("download") ? e.timings_ms.at("download") : 0.0);
          }
        };
      }
      for (int64_t i = 0; i < warmup; ++i) run();
      h2d_times.clear();
      d2h_times.clear();
      phase_times.clear();
      const int64_t allocations_before = gpu ? cuda->device_allocations() + cuda->host_allocations() : 0;
      std::vector<double> times, end_to_end;
      for (int64_t i = 0; i < iters; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        if (gpu && scenario == "forward") {
          run();
          times.push_back(forward_ms);  // transfers are reported apart (h2d_ms, d2h_ms)
          end_to_end.push_back(h2d_times.back() + forward_ms + d2h_times.back());
        } else if (gpu) {
          timer->start();
          run();
          end_to_end.push_back(timer->stop_ms());
          times.push_back(std::max(0.0, end_to_end.back() - h2d_times.back() - d2h_times.back()));
        } else {
          run();
          times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
        }
        if (iters >= 10 && (i + 1) % 10 == 0) std::fprintf(stderr, "  %s batch %lld: %lld/%lld\r", scenario.c_str(), static_cast<long long>(batch), static_cast<long long>(i + 1), static_cast<long long>(iters));
      }
      const double median = percentile(times, 0.5);
      const double planned_mib = static_cast<double>(planned_bytes) / (1024.0 * 1024.0);
      const std::string device = gpu ? cuda->device_name() : "cpu x" + std::to_string(pool.num_threads());
      nlohmann::json row = {{"model", name},
                            {"batch", batch},
                            {"scenario", "camrt_" + scenario + "_" + precision_name(precision)},
                            {"median_ms", median},
                            {"min_ms", *std::min_element(times.begin(), times.end())},
                            {"p90_ms", percentile(times, 0.9)},
                            {"p99_ms", percentile(times, 0.99)},
                            {"max_ms", *std::max_element(times.begin(), times.end())},
                            {"per_image_ms", median / batch},
                            {"images_per_s", 1000.0 * batch / median},
                            {"peak_mib", gpu ? static_cast<double>(cuda->device_bytes_peak()) / (1024.0 * 1024.0) : planned_mib},
                            {"planned_mib", planned_mib},
                            {"precision", precision_name(precision)},
                            {"fusion", fusion},
                            {"channels_last", args.get("channels-last")},
                            {"algo_slack_pct", algo_slack_pct},
                            {"channels_last_nodes", channels_last_nodes},
                            {"target", args.get("target")},
                            {"aug_smooth", args.has("aug-smooth")},
                            {"chunk", args.get_int("chunk")},
                            {"device", device},
                            {"iters", iters}};
      if (!phase_times.empty()) {
        nlohmann::json phases;
        for (const auto& [phase, t] : phase_times) phases[phase] = percentile(t, 0.5);
        row["phases_ms"] = phases;
      }
      if (gpu) {
        if (!h2d_times.empty()) row["h2d_ms"] = percentile(h2d_times, 0.5);
        if (!d2h_times.empty()) row["d2h_ms"] = percentile(d2h_times, 0.5);
        row["end_to_end_ms"] = percentile(end_to_end, 0.5);
        // Steady state: the timed iterations must not have allocated device or pinned memory.
        row["allocations_in_timed_loop"] = cuda->device_allocations() + cuda->host_allocations() - allocations_before;
        // A plan or pass that could not be captured in a CUDA graph runs eagerly: slower, and this says why.
        const std::string capture_failure = explainer ? explainer->capture_failure() : executor->capture_failure();
        if (!capture_failure.empty()) row["capture_failure"] = capture_failure;
      }
      if (iters >= 10) std::fprintf(stderr, "%*s\r", 40, "");
      std::cout << row.dump() << std::endl;
    }
  }
  return 0;
}

}  // namespace camrt::cli
