// `anoclip make-dataset`: a synthetic labelled dataset in the MVTec AD, VisA or folder layout
// (eval/synthetic.h), for trying `anoclip eval` and for timing it.
#include <iostream>

#include "absl/strings/str_cat.h"
#include "anomaly/prompt_ensemble.h"
#include "cli/command_support.h"
#include "cli/commands.h"
#include "common/status_macros.h"
#include "eval/dataset.h"
#include "eval/synthetic.h"

namespace anoclip::cli {
namespace {

constexpr char kUsage[] =
    "usage: anoclip make-dataset --layout mvtec|visa|folder --out DIR [--classes N] [--images K]\n"
    "         [--size S] [--seed N]\n"
    "  K test images per class (default 8): half defect-free, the rest with a drawn scratch, spot\n"
    "  or crack and its exact mask. Class names are MVTec AD's or VisA's (then class<N>); the folder\n"
    "  layout holds one class. Images are S pixels wide (default 128; VisA's are 3/4 as high).\n";

absl::StatusOr<eval::SyntheticOptions> OptionsFromArguments(const Arguments& args) {
  eval::SyntheticOptions options;
  ANOCLIP_ASSIGN_OR_RETURN(const std::string layout, args.Required("layout"));
  ANOCLIP_ASSIGN_OR_RETURN(options.layout, eval::ParseLayout(layout));
  ANOCLIP_ASSIGN_OR_RETURN(options.out, args.Required("out"));
  ANOCLIP_ASSIGN_OR_RETURN(int64_t classes, args.Int("classes", options.layout == eval::Layout::kFolder ? 1 : 2, 1,
                                                     eval::kMaxSyntheticClasses));
  ANOCLIP_ASSIGN_OR_RETURN(int64_t images, args.Int("images", 8, 2, eval::kMaxSyntheticImages));
  ANOCLIP_ASSIGN_OR_RETURN(int64_t size, args.Int("size", 128, eval::kMinSyntheticSize, eval::kMaxSyntheticSize));
  ANOCLIP_ASSIGN_OR_RETURN(int64_t seed, args.Int("seed", 0, 0, INT64_MAX));
  options.classes = static_cast<int>(classes);
  options.images = static_cast<int>(images);
  options.size = static_cast<int>(size);
  options.seed = static_cast<uint64_t>(seed);
  options.is_texture = [](const std::string& name) {
    return anomaly::DefaultKindForClass(eval::PromptClassName(name)) == "texture";
  };
  ANOCLIP_RETURN_IF_ERROR(eval::ValidateSyntheticOptions(options));
  return options;
}

}  // namespace

int RunMakeDatasetCommand(const std::vector<std::string>& words) {
  int exit_code = kExitOk;
  auto args = ParseCommandLine("make-dataset", words, {"layout", "out", "classes", "images", "size", "seed"}, {},
                               kUsage, &exit_code);
  if (!args) return exit_code;
  auto options = OptionsFromArguments(*args);
  if (!options.ok()) return ReportError("make-dataset", options.status(), kExitUsageError);
  if (auto status = eval::MakeSyntheticDataset(*options); !status.ok()) {
    return ReportError("make-dataset", status, kExitRuntimeError);
  }
  std::cout << "wrote a synthetic " << eval::LayoutName(options->layout) << " dataset to " << options->out << ": "
            << options->classes << " classes, " << options->images << " test images each\n";
  return kExitOk;
}

}  // namespace anoclip::cli
