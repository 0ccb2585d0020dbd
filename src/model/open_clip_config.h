// OpenCLIP's `open_clip_config.json`: the model architecture and preprocessing constants.
#pragma once

#include <array>
#include <string>

#include "absl/status/statusor.h"

namespace anoclip::model {

struct VisionConfig {
  int image_size = 224;
  int patch_size = 16;
  int width = 768;
  int layers = 12;
  int head_width = 64;   // heads = width / head_width
  double mlp_ratio = 4.0;
  int heads() const { return width / head_width; }
  int grid() const { return image_size / patch_size; }
};

struct TextConfig {
  int context_length = 77;
  int vocab_size = 49408;
  int width = 512;
  int heads = 8;
  int layers = 12;
  double mlp_ratio = 4.0;
};

struct PreprocessConfig {
  std::array<float, 3> mean = {0.48145466f, 0.4578275f, 0.40821073f};
  std::array<float, 3> std = {0.26862954f, 0.26130258f, 0.27577711f};
};

struct OpenClipConfig {
  int embed_dim = 512;
  bool quick_gelu = false;
  VisionConfig vision;
  TextConfig text;
  PreprocessConfig preprocess;
};

// Parses and validates (positive sizes, width divisible by head_width, image divisible by patch).
absl::StatusOr<OpenClipConfig> ParseOpenClipConfig(const std::string& json_text);
absl::StatusOr<OpenClipConfig> ReadOpenClipConfig(const std::string& path);
// Serialises back to OpenCLIP's layout ({"model_cfg": ..., "preprocess_cfg": ...}).
std::string OpenClipConfigToJson(const OpenClipConfig& config);
// Built-in architectures by OpenCLIP name (e.g. "ViT-B-16-plus-240"), for make-test-model.
absl::StatusOr<OpenClipConfig> BuiltinArchitecture(const std::string& name);

}  // namespace anoclip::model
