// camrt inspect: what a converted model contains and what running it costs in memory, from the plan
// itself (the same planner predict and explain use), for a chosen batch size.
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "engine/executor.h"
#include "tools/camrt/args.h"
#include "tools/camrt/commands.h"

namespace camrt::cli {

namespace {
double mib(size_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }
}  // namespace

int run_inspect(const std::vector<std::string>& argv) {
  Args args("inspect", "camrt inspect DIR/model.json [--batch N]",
            "Prints every node with its op, output shape and parameters, then the parameter count and the\n"
            "planned activation memory next to the naive sum (one buffer per tensor).");
  args.option("batch", "N", "batch size to plan for", "1").flag("summary", "print only the totals");
  if (!args.parse(argv)) return 0;
  CAMRT_CHECK(args.positionals().size() == 1, "camrt inspect: expected one model.json (see camrt inspect --help)");
  const std::string path = resolve_model_path(args.positionals()[0]);
  const int64_t batch = args.get_int("batch");
  CAMRT_CHECK(batch >= 1, "--batch must be at least 1");

  auto model = std::make_shared<const Model>(load_model(path));
  Graph graph(model, std::filesystem::path(path).filename().string());
  ThreadPool pool(1);
  Executor plan(graph, graph.input_shapes_for_batch(batch), pool);
  const auto& descs = plan.descs();

  if (!args.has("summary")) {
    std::printf("%-5s %-20s %-48s %-22s %s\n", "#", "op", "name", "output", "params");
    for (size_t n = 0; n < graph.nodes().size(); ++n) {
      const GraphNode& gn = graph.nodes()[n];
      int64_t params = 0;
      for (int id : gn.inputs)
        if (id >= 0 && graph.values()[id].constant && graph.values()[id].constant->dtype == DType::F32)
          params += graph.values()[id].constant->numel();
      std::string name = gn.node->name;
      if (name.size() > 48) name = "..." + name.substr(name.size() - 45);
      std::printf("%-5zu %-20s %-48s %-22s %lld\n", n, gn.node->op.c_str(), name.c_str(),
                  shape_str(descs[gn.outputs[0]].shape).c_str(), static_cast<long long>(params));
    }
    std::printf("\n");
  }
  const PlanStats& s = plan.stats();
  std::printf("model            %s\n", path.c_str());
  for (int id : graph.input_ids())
    std::printf("input            %s %s\n", graph.values()[id].name.c_str(), shape_str(descs[id].shape).c_str());
  for (int id : graph.output_ids())
    std::printf("output           %s %s\n", graph.values()[id].name.c_str(), shape_str(descs[id].shape).c_str());
  std::printf("nodes            %zu\n", graph.nodes().size());
  const auto fused = graph.fused({});
  std::printf("fused            %lld merges (Conv/Add + Relu/Clip, Conv + residual Add): predict and explain run %zu nodes\n",
              static_cast<long long>(fused->fused_pairs()), fused->nodes().size());
  std::printf("parameters       %lld (%.2f MiB of weights)\n", static_cast<long long>(graph.parameter_count()), mib(s.weight_bytes));
  std::printf("activations      planned %.2f MiB, naive %.2f MiB (%.1fx less), batch %lld\n", mib(s.arena_bytes),
              mib(s.naive_bytes), s.arena_bytes ? static_cast<double>(s.naive_bytes) / s.arena_bytes : 1.0,
              static_cast<long long>(batch));
  std::printf("workspace        %.2f MiB\n", mib(s.workspace_bytes));
  std::printf("in-place outputs %lld\n", static_cast<long long>(s.in_place_count));
  const std::string layer = graph.default_explain_layer();
  std::printf("explain layer    %s\n", layer.empty() ? "(none)" : layer.c_str());
  if (!model->labels.empty()) std::printf("labels           %zu classes\n", model->labels.size());
  return 0;
}

}  // namespace camrt::cli
