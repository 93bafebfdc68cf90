// Command-line parsing for the camrt tool; see args.h.
#include "tools/camrt/args.h"

#ifdef CAMRT_WITH_CUDA
#include "kernels/cuda/device.h"
#endif

#include <iostream>

#include "engine/error.h"

namespace camrt::cli {

Args::Args(std::string command, std::string usage, std::string description)
    : command_(std::move(command)), usage_(std::move(usage)), description_(std::move(description)) {}

Args& Args::option(const std::string& name, const std::string& value_name, const std::string& help,
                   const std::string& default_value) {
  specs_[name] = Spec{value_name, help, default_value, false};
  order_.push_back(name);
  return *this;
}

Args& Args::flag(const std::string& name, const std::string& help) {
  specs_[name] = Spec{"", help, "", true};
  order_.push_back(name);
  return *this;
}

bool Args::parse(const std::vector<std::string>& argv) {
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << help();
      return false;
    }
    if (arg.size() > 2 && arg.compare(0, 2, "--") == 0) {
      std::string name = arg.substr(2), value;
      const size_t eq = name.find('=');
      const bool inline_value = eq != std::string::npos;
      if (inline_value) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      auto it = specs_.find(name);
      CAMRT_CHECK(it != specs_.end(), "camrt " << command_ << ": unknown option --" << name << " (see camrt " << command_ << " --help)");
      if (it->second.is_flag) {
        CAMRT_CHECK(!inline_value, "camrt " << command_ << ": --" << name << " takes no value");
        values_[name] = "1";
        continue;
      }
      if (!inline_value) {
        CAMRT_CHECK(i + 1 < argv.size(), "camrt " << command_ << ": --" << name << " needs a value (" << it->second.value_name << ")");
        value = argv[++i];
      }
      values_[name] = value;
    } else if (arg.size() == 2 && arg[0] == '-' && arg != "--") {
      // Short forms: only -o (output) is offered.
      CAMRT_CHECK(arg == "-o" && specs_.count("out"), "camrt " << command_ << ": unknown option " << arg << " (see camrt " << command_ << " --help)");
      CAMRT_CHECK(i + 1 < argv.size(), "camrt " << command_ << ": -o needs a value");
      values_["out"] = argv[++i];
    } else {
      positionals_.push_back(arg);
    }
  }
  return true;
}

bool Args::has(const std::string& name) const { return values_.count(name) > 0; }

std::string Args::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it != values_.end()) return it->second;
  auto spec = specs_.find(name);
  return spec == specs_.end() ? "" : spec->second.default_value;
}

int64_t Args::get_int(const std::string& name) const {
  const std::string text = get(name);
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (...) {
    used = 0;
  }
  CAMRT_CHECK(!text.empty() && used == text.size(), "camrt " << command_ << ": --" << name << " expects an integer, got '" << text << "'");
  return value;
}

std::string Args::help() const {
  std::string out = "usage: " + usage_ + "\n\n" + description_ + "\n\noptions:\n";
  for (const auto& name : order_) {
    const Spec& s = specs_.at(name);
    std::string left = "  --" + name + (s.is_flag ? "" : " " + s.value_name);
    if (name == "out") left = "  -o, --out " + s.value_name;
    if (left.size() < 28) left.resize(28, ' ');
    else left += "  ";
    out += left + s.help;
    if (!s.default_value.empty()) out += " (default: " + s.default_value + ")";
    out += "\n";
  }
  out += "  -h, --help                  show this help\n";
  return out;
}

Device resolve_device(const std::string& text) {
  if (text == "cpu") return Device::CPU;
  if (text == "cuda" || text == "gpu") return Device::CUDA;
  CAMRT_CHECK(text == "auto", "--device '" << text << "': expected cpu, cuda or auto");
#ifdef CAMRT_WITH_CUDA
  if (query_cuda_devices().device_count > 0) return Device::CUDA;
#endif
  return Device::CPU;
}

}  // namespace camrt::cli
