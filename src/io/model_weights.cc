#include <filesystem>

#include "absl/strings/str_cat.h"
#include "io/state_dict.h"

namespace anoclip::io {

absl::StatusOr<StateDict> LoadModelWeights(const std::string& model_dir) {
  const std::string safetensors = model_dir + "/open_clip_model.safetensors";
  const std::string checkpoint = model_dir + "/open_clip_pytorch_model.bin";
  std::error_code error;
  if (std::filesystem::exists(safetensors, error)) return ReadSafetensors(safetensors);
  if (std::filesystem::exists(checkpoint, error)) return ReadTorchCheckpoint(checkpoint);
  return absl::NotFoundError(absl::StrCat("no weights in ", model_dir, ": expected ", safetensors,
                                          " or ", checkpoint));
}

}  // namespace anoclip::io
