// `anoclip make-test-model`: seeded random weights in the OpenCLIP layout, loaded by the same
// path real weights take. Their scores mean nothing; they exist for tests and benchmarks.
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "cli/command_support.h"
#include "cli/commands.h"
#include "common/status_macros.h"
#include "io/state_dict.h"
#include "model/clip_model.h"

namespace anoclip::cli {
namespace {

constexpr char kUsage[] =
    "usage: anoclip make-test-model (--arch NAME | --config JSON_FILE) --seed N --out DIR\n"
    "         [--format safetensors] [--vocab FILE]\n"
    "  Writes DIR/open_clip_config.json and DIR/open_clip_model.safetensors with weights drawn\n"
    "  from the seed (the same seed gives the same bytes). --arch takes a built-in OpenCLIP\n"
    "  name (e.g. ViT-B-16-plus-240); --config an open_clip_config.json, or just its\n"
    "  model_cfg. Only safetensors can be written. --vocab copies the BPE vocabulary into DIR.\n";

struct MakeTestModelRequest {
  std::string arch;         // or
  std::string config_path;
  uint64_t seed = 0;
  std::string out;
  std::string vocab;        // empty: none copied
};

absl::StatusOr<MakeTestModelRequest> RequestFromArguments(const Arguments& args) {
  MakeTestModelRequest request;
  if (args.Has("arch") == args.Has("config")) return absl::InvalidArgumentError("give one of --arch or --config");
  if (args.Has("arch")) {
    ANOCLIP_ASSIGN_OR_RETURN(request.arch, args.Required("arch"));
    ANOCLIP_RETURN_IF_ERROR(model::BuiltinArchitecture(request.arch).status());
  } else {
    ANOCLIP_ASSIGN_OR_RETURN(request.config_path, args.Required("config"));
  }
  if (!args.Has("seed")) return absl::InvalidArgumentError("--seed is required");
  ANOCLIP_ASSIGN_OR_RETURN(int64_t seed, args.Int("seed", 0, 0, INT64_MAX));
  request.seed = static_cast<uint64_t>(seed);
  ANOCLIP_ASSIGN_OR_RETURN(request.out, args.Required("out"));
  const std::string format = args.String("format", "safetensors");
  if (format == "bin") {
    return absl::InvalidArgumentError("--format bin is not supported: only safetensors weights can be written");
  }
  if (format != "safetensors") {
    return absl::InvalidArgumentError(absl::StrCat("--format must be safetensors; was \"", format, "\""));
  }
  if (args.Has("vocab")) {
    ANOCLIP_ASSIGN_OR_RETURN(request.vocab, args.Required("vocab"));
  }
  return request;
}

absl::Status MakeTestModel(const MakeTestModelRequest& request) {
  model::OpenClipConfig config;
  if (!request.arch.empty()) {
    ANOCLIP_ASSIGN_OR_RETURN(config, model::BuiltinArchitecture(request.arch));
  } else {
    ANOCLIP_ASSIGN_OR_RETURN(config, model::ReadOpenClipConfig(request.config_path));
  }
  const std::string& out = request.out;
  std::error_code error;
  std::filesystem::create_directories(out, error);
  if (error) return absl::PermissionDeniedError(absl::StrCat("cannot create ", out, ": ", error.message()));

  io::StateDict weights;
  try {
    torch::manual_seed(request.seed);
    model::ClipModel model(config);
    for (const auto& item : model->named_parameters()) weights[item.key()] = item.value().detach();
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot build the model: ", e.what_without_backtrace()));
  }
  ANOCLIP_RETURN_IF_ERROR(io::WriteSafetensors(out + "/open_clip_model.safetensors", weights, {{"format", "pt"}}));
  std::ofstream config_file(out + "/open_clip_config.json", std::ios::trunc);
  config_file << model::OpenClipConfigToJson(config) << "\n";
  config_file.close();
  if (!config_file) return absl::DataLossError(absl::StrCat("cannot write ", out, "/open_clip_config.json"));
  if (!request.vocab.empty()) {
    std::filesystem::copy_file(request.vocab, out + "/bpe_simple_vocab_16e6.txt.gz",
                               std::filesystem::copy_options::overwrite_existing, error);
    if (error) return absl::NotFoundError(absl::StrCat("cannot copy vocabulary ", request.vocab, ": ", error.message()));
  }
  std::cout << "wrote random model (seed " << request.seed << ", " << weights.size() << " tensors) to " << out
            << "\nits scores are meaningless: it is for tests and benchmarks\n";
  return absl::OkStatus();
}

}  // namespace

int RunMakeTestModelCommand(const std::vector<std::string>& words) {
  int exit_code = kExitOk;
  auto args = ParseCommandLine("make-test-model", words, {"arch", "config", "seed", "out", "format", "vocab"}, {},
                               kUsage, &exit_code);
  if (!args) return exit_code;
  auto request = RequestFromArguments(*args);
  if (!request.ok()) return ReportError("make-test-model", request.status(), kExitUsageError);
  if (auto status = MakeTestModel(*request); !status.ok()) {
    return ReportError("make-test-model", status, kExitRuntimeError);
  }
  return kExitOk;
}

}  // namespace anoclip::cli
