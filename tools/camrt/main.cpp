// The camrt command: dispatches to a subcommand and turns any camrt::Error into one line on stderr and
// exit code 1. Nothing below main prints a stack of internals for a user mistake.
#include <cstring>
#include <iostream>
#include <new>

#include "engine/error.h"
#include "tools/camrt/commands.h"

namespace {

const char* kUsage =
    "usage: camrt <command> [options]\n"
    "\n"
    "camrt runs CNNs converted from ONNX and explains their decisions with class activation maps.\n"
    "\n"
    "commands:\n"
    "  convert MODEL.onnx -o DIR     convert an ONNX model into DIR/model.json + DIR/model.safetensors\n"
    "  inspect DIR/model.json        list nodes, shapes, parameters, planned vs naive memory\n"
    "  predict DIR/model.json --input x.npy   run the network and print the top classes\n"
    "  explain DIR/model.json IMAGE...        class activation maps (Grad-CAM and family) as PNG + .npy\n"
    "  bench DIR/model.json [--batch 1,8]     latency percentiles as JSON lines\n"
    "  demo                          explain a dozen test canvases with the shipped model: contact sheet PNG\n"
    "  eval [MODEL] [--data fashion-canvas]   localization and faithfulness of each CAM method vs baselines\n"
    "  dataset fashion-canvas --split test --n N -o DIR   export evaluation/training canvases as .npy\n"
    "\n"
    "Run 'camrt <command> --help' for the options of a command; 'camrt --version' for the version.\n";

std::string version_line() {
#ifdef CAMRT_WITH_CUDA
  const char* cuda = "CUDA backend compiled in";
#else
  const char* cuda = "CPU only";
#endif
  return std::string("camrt ") + CAMRT_VERSION + " (" + cuda + ")";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << kUsage;
    return 2;
  }
  const std::string command = argv[1];
  const std::vector<std::string> rest(argv + 2, argv + argc);
  try {
    if (command == "--help" || command == "-h" || command == "help") {
      std::cout << kUsage;
      return 0;
    }
    if (command == "--version" || command == "version") {
      std::cout << version_line() << "\n";
      return 0;
    }
    if (command == "convert") return camrt::cli::run_convert(rest);
    if (command == "inspect") return camrt::cli::run_inspect(rest);
    if (command == "predict") return camrt::cli::run_predict(rest);
    if (command == "explain") return camrt::cli::run_explain(rest);
    if (command == "bench") return camrt::cli::run_bench(rest);
    if (command == "eval") return camrt::cli::run_eval(rest);
    if (command == "demo") return camrt::cli::run_demo(rest);
    if (command == "dataset") return camrt::cli::run_dataset(rest);
    std::cerr << "camrt: unknown command '" << command << "'\n\n" << kUsage;
    return 2;
  } catch (const camrt::Error& e) {
    std::cerr << "camrt: error: " << e.what() << "\n";
    if (std::getenv("CAMRT_DEBUG")) std::cerr << "  at " << e.describe() << "\n";
    return 1;
  } catch (const std::bad_alloc&) {
    std::cerr << "camrt: error: out of memory\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "camrt: error: " << e.what() << "\n";
    return 1;
  }
}
