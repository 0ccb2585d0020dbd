#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "io/state_dict.h"

namespace anoclip::io {

absl::StatusOr<std::string> ModelWeightsPath(const std::string& model_dir) {
  const std::string safetensors = model_dir + "/open_clip_model.safetensors";
  const std::string checkpoint = model_dir + "/open_clip_pytorch_model.bin";
  std::error_code error;
  if (std::filesystem::exists(safetensors, error)) return safetensors;
  if (std::filesystem::exists(checkpoint, error)) return checkpoint;
  return absl::NotFoundError(absl::StrCat("no weights in ", model_dir, ": expected ", safetensors,
                                          " or ", checkpoint));
}

absl::StatusOr<StateDict> ReadModelWeights(const std::string& path) {
  return absl::EndsWith(path, ".safetensors") ? ReadSafetensors(path) : ReadTorchCheckpoint(path);
}

absl::StatusOr<StateDict> LoadModelWeights(const std::string& model_dir) {
  auto path = ModelWeightsPath(model_dir);
  if (!path.ok()) return path.status();
  return ReadModelWeights(*path);
}

}  // namespace anoclip::io
