// The camrt subcommands. Each takes the arguments after its name and returns the process exit code;
// errors are thrown as camrt::Error and printed by main as one line.
#pragma once
#include <string>
#include <vector>

namespace camrt::cli {

int run_convert(const std::vector<std::string>& argv);
int run_inspect(const std::vector<std::string>& argv);
int run_predict(const std::vector<std::string>& argv);
int run_explain(const std::vector<std::string>& argv);
int run_bench(const std::vector<std::string>& argv);
int run_eval(const std::vector<std::string>& argv);
int run_demo(const std::vector<std::string>& argv);
int run_dataset(const std::vector<std::string>& argv);

// The shipped fashion-canvas model ($CAMRT_MODEL, next to the executable, installed share/, or the source
// tree). Throws naming every place it looked.
std::string find_default_model();
// MODEL may be a model.json or a folder holding one; returns the model.json's path.
std::string resolve_model_path(const std::string& path);

}  // namespace camrt::cli
