// `anoclip make-test-model`: seeded random weights in the OpenCLIP layout, loaded by the same
// path real weights take. Their scores mean nothing; they exist for tests and benchmarks.
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/arguments.h"
#include "cli/commands.h"
#include "common/status_macros.h"
#include "io/state_dict.h"
#include "model/clip_model.h"

namespace anoclip::cli {
namespace {

constexpr char kUsage[] =
    "usage: anoclip make-test-model (--arch ViT-B-16-plus-240 | --config open_clip_config.json)\n"
    "         --seed N --out DIR [--vocab FILE (copied into DIR)]\n";

absl::Status MakeTestModel(const Arguments& args) {
  if (args.Has("arch") == args.Has("config")) return absl::InvalidArgumentError("give one of --arch or --config");
  model::OpenClipConfig config;
  if (args.Has("arch")) {
    ANOCLIP_ASSIGN_OR_RETURN(config, model::BuiltinArchitecture(args.String("arch")));
  } else {
    ANOCLIP_ASSIGN_OR_RETURN(config, model::ReadOpenClipConfig(args.String("config")));
  }
  ANOCLIP_ASSIGN_OR_RETURN(const std::string out, args.Required("out"));
  ANOCLIP_ASSIGN_OR_RETURN(int64_t seed, args.Int("seed", 0, 0, INT64_MAX));

  std::error_code error;
  std::filesystem::create_directories(out, error);
  if (error) return absl::PermissionDeniedError(absl::StrCat("cannot create ", out, ": ", error.message()));

  torch::manual_seed(static_cast<uint64_t>(seed));
  model::ClipModel model(config);
  io::StateDict weights;
  for (const auto& item : model->named_parameters()) weights[item.key()] = item.value().detach();
  ANOCLIP_RETURN_IF_ERROR(io::WriteSafetensors(out + "/open_clip_model.safetensors", weights, {{"format", "pt"}}));
  std::ofstream config_file(out + "/open_clip_config.json", std::ios::trunc);
  config_file << model::OpenClipConfigToJson(config) << "\n";
  if (!config_file) return absl::DataLossError(absl::StrCat("cannot write ", out, "/open_clip_config.json"));
  if (args.Has("vocab")) {
    std::filesystem::copy_file(args.String("vocab"), out + "/bpe_simple_vocab_16e6.txt.gz",
                               std::filesystem::copy_options::overwrite_existing, error);
    if (error) return absl::NotFoundError(absl::StrCat("cannot copy vocabulary: ", error.message()));
  }
  std::cout << "wrote random model (seed " << seed << ", " << weights.size() << " tensors) to " << out
            << "\nits scores are meaningless: it is for tests and benchmarks\n";
  return absl::OkStatus();
}

}  // namespace

int RunMakeTestModelCommand(const std::vector<std::string>& words) {
  auto args = Arguments::Parse(words, {"arch", "config", "seed", "out", "vocab"}, {"help"});
  if (!args.ok() || args->Flag("help")) {
    if (!args.ok()) std::cerr << "anoclip make-test-model: " << args.status().message() << "\n";
    std::cerr << kUsage;
    return args.ok() ? 0 : 2;
  }
  if (auto status = MakeTestModel(*args); !status.ok()) {
    std::cerr << "anoclip make-test-model: " << status.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace anoclip::cli
