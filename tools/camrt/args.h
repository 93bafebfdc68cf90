// A small command-line parser for the camrt subcommands: declared options with help text, "--name value"
// and "--name=value" forms, flags, positionals, and an error (camrt::Error) for anything unknown.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace camrt::cli {

class Args {
 public:
  Args(std::string command, std::string usage, std::string description);
  // An option taking a value; default_value "" means unset unless given.
  Args& option(const std::string& name, const std::string& value_name, const std::string& help,
               const std::string& default_value = "");
  Args& flag(const std::string& name, const std::string& help);

  // Parses argv (after the subcommand). Returns false if --help was asked (help already printed).
  bool parse(const std::vector<std::string>& argv);

  bool has(const std::string& name) const;  // given on the command line (or a flag that is set)
  std::string get(const std::string& name) const;
  int64_t get_int(const std::string& name) const;
  const std::vector<std::string>& positionals() const { return positionals_; }
  std::string help() const;

 private:
  struct Spec {
    std::string value_name, help, default_value;
    bool is_flag = false;
  };
  std::string command_, usage_, description_;
  std::vector<std::string> order_;
  std::map<std::string, Spec> specs_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> positionals_;
};

// --device: "cpu", "cuda" (or "gpu"), or "auto" (cuda when this build has the CUDA backend and a GPU is present).
Device resolve_device(const std::string& text);

}  // namespace camrt::cli
