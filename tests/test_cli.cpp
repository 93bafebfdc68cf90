// The camrt command end to end: convert, inspect, predict on a golden fixture; bad input gives exit code 1
// and one error line, and no output file.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/npy.h"

namespace fs = std::filesystem;

namespace {

struct Run {
  int exit_code;
  std::string out, err;
};

Run run_cli(const std::string& arguments, const fs::path& dir) {
  const fs::path out = dir / "stdout.txt", err = dir / "stderr.txt";
  const std::string command = std::string(CAMRT_CLI_PATH) + " " + arguments + " >" + out.string() + " 2>" + err.string();
  const int status = std::system(command.c_str());
  auto slurp = [](const fs::path& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  return Run{WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("camrt_cli_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

}  // namespace

TEST_CASE("cli: convert, inspect and predict a golden model") {
  const fs::path fixture = fs::path(CAMRT_SOURCE_DIR) / "tests/fixtures/models/resnet18";
  REQUIRE(fs::exists(fixture / "model.onnx"));
  const fs::path dir = fresh_dir("ok");
  Run convert = run_cli("convert " + (fixture / "model.onnx").string() + " -o " + (dir / "m").string(), dir);
  INFO(convert.err);
  REQUIRE(convert.exit_code == 0);
  CHECK(fs::exists(dir / "m/model.json"));
  CHECK(fs::exists(dir / "m/model.safetensors"));

  Run inspect = run_cli("inspect " + (dir / "m/model.json").string() + " --batch 2", dir);
  CHECK(inspect.exit_code == 0);
  CHECK(inspect.out.find("planned") != std::string::npos);
  CHECK(inspect.out.find("parameters") != std::string::npos);

  Run predict = run_cli("predict " + (dir / "m/model.json").string() + " --input " + (fixture / "input.npy").string() +
                            " --topk 3 --save-logits " + (dir / "logits.npy").string(),
                        dir);
  INFO(predict.err);
  REQUIRE(predict.exit_code == 0);
  CHECK(predict.out.find("image 1:") != std::string::npos);
  const camrt::HostTensor ours = camrt::read_npy((dir / "logits.npy").string());
  const camrt::HostTensor torch = camrt::read_npy((fixture / "logits.npy").string());
  REQUIRE(ours.shape == torch.shape);
  double max_err = 0, max_ref = 0;
  for (int64_t i = 0; i < ours.numel(); ++i) {
    max_err = std::max(max_err, double(std::fabs(ours.f32()[i] - torch.f32()[i])));
    max_ref = std::max(max_ref, double(std::fabs(torch.f32()[i])));
  }
  CHECK(max_err <= 1e-4 * max_ref);
  fs::remove_all(dir);
}

TEST_CASE("cli: broken inputs give one error line and exit code 1") {
  const fs::path fixture = fs::path(CAMRT_SOURCE_DIR) / "tests/fixtures/models/resnet18";
  const fs::path dir = fresh_dir("bad");
  REQUIRE(run_cli("convert " + (fixture / "model.onnx").string() + " -o " + (dir / "m").string(), dir).exit_code == 0);

  auto expect_one_line_error = [&](const std::string& arguments, const std::string& needle) {
    Run r = run_cli(arguments, dir);
    CAPTURE(arguments);
    CAPTURE(r.err);
    CHECK(r.exit_code == 1);
    CHECK(r.err.rfind("camrt: error: ", 0) == 0);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK(r.err.find(needle) != std::string::npos);
  };
  // Truncated weights.
  fs::copy(dir / "m", dir / "truncated", fs::copy_options::recursive);
  fs::resize_file(dir / "truncated/model.safetensors", fs::file_size(dir / "truncated/model.safetensors") / 2);
  expect_one_line_error("predict " + (dir / "truncated/model.json").string() + " --input " + (fixture / "input.npy").string(),
                        "model.safetensors");
  // Hand-edited JSON: a node reads a tensor that does not exist.
  fs::copy(dir / "m", dir / "edited", fs::copy_options::recursive);
  {
    std::ifstream in(dir / "edited/model.json");
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    const size_t pos = text.find("\"inputs\"", text.find("\"nodes\""));
    REQUIRE(pos != std::string::npos);
    const size_t quote = text.find('"', text.find('[', pos) + 1);
    text.insert(quote + 1, "no_such_tensor_");
    std::ofstream(dir / "edited/model.json") << text;
  }
  expect_one_line_error("inspect " + (dir / "edited/model.json").string(), "no_such_tensor_");
  // Corrupted JSON.
  fs::copy(dir / "m", dir / "garbage", fs::copy_options::recursive);
  std::ofstream(dir / "garbage/model.json") << "{ \"format_version\": 1, ";
  expect_one_line_error("inspect " + (dir / "garbage/model.json").string(), "model.json");
  // Not an ONNX file: nothing may be written.
  std::ofstream(dir / "junk.onnx") << "this is not protobuf";
  expect_one_line_error("convert " + (dir / "junk.onnx").string() + " -o " + (dir / "junk_out").string(), "junk.onnx");
  CHECK_FALSE(fs::exists(dir / "junk_out/model.json"));
  // Wrong input shape for predict.
  expect_one_line_error("predict " + (dir / "m/model.json").string() + " --input " + (dir / "logits_missing.npy").string(),
                        "logits_missing.npy");
  fs::remove_all(dir);
}
