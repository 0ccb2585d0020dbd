#include "model/open_clip_config.h"

#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/files.h"

namespace anoclip::model {
namespace {

using Json = nlohmann::json;

// Reads an optional positive integer field; InvalidArgument names the field.
absl::Status ReadInt(const Json& object, const char* section, const char* key, bool required, int* out) {
  if (!object.contains(key)) {
    if (required) return absl::InvalidArgumentError(absl::StrCat(section, ".", key, " is missing"));
    return absl::OkStatus();
  }
  const Json& value = object[key];
  if (!value.is_number_integer() || value.get<int64_t>() <= 0 || value.get<int64_t>() > (1 << 20)) {
    return absl::InvalidArgumentError(
        absl::StrCat(section, ".", key, " must be a positive integer; was ", value.dump()));
  }
  *out = value.get<int>();
  return absl::OkStatus();
}

absl::Status ReadPositive(const Json& object, const char* section, const char* key, double* out) {
  if (!object.contains(key)) return absl::OkStatus();
  const Json& value = object[key];
  if (!value.is_number() || !(value.get<double>() > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(section, ".", key, " must be a positive number"));
  }
  *out = value.get<double>();
  return absl::OkStatus();
}

absl::Status ReadTriple(const Json& object, const char* key, std::array<float, 3>* out) {
  if (!object.contains(key)) return absl::OkStatus();
  const Json& value = object[key];
  if (!value.is_array() || value.size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat("preprocess_cfg.", key, " must be 3 numbers"));
  }
  for (size_t i = 0; i < 3; ++i) {
    if (!value[i].is_number()) {
      return absl::InvalidArgumentError(absl::StrCat("preprocess_cfg.", key, " must be 3 numbers"));
    }
    (*out)[i] = value[i].get<float>();
  }
  return absl::OkStatus();
}

// Options that turn the plain ViT/text transformer into something else this engine does not run.
absl::Status RejectUnsupported(const Json& object, const char* section, const std::set<std::string>& known) {
  for (const auto& [key, value] : object.items()) {
    if (known.count(key) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(section, ".", key, " is not supported (only plain OpenCLIP ViT towers are)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<OpenClipConfig> ParseOpenClipConfig(const std::string& json_text) {
  Json root = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError("open_clip_config.json is not a JSON object");
  }
  // Both the hub layout ({"model_cfg":..., "preprocess_cfg":...}) and a bare model config.
  const Json model_cfg = root.contains("model_cfg") ? root["model_cfg"] : root;
  if (!model_cfg.is_object()) return absl::InvalidArgumentError("model_cfg must be an object");
  OpenClipConfig config;
  if (auto s = ReadInt(model_cfg, "model_cfg", "embed_dim", true, &config.embed_dim); !s.ok()) return s;
  if (model_cfg.contains("quick_gelu")) {
    if (!model_cfg["quick_gelu"].is_boolean()) {
      return absl::InvalidArgumentError("model_cfg.quick_gelu must be true or false");
    }
    config.quick_gelu = model_cfg["quick_gelu"].get<bool>();
  }
  for (const char* section : {"vision_cfg", "text_cfg"}) {
    if (!model_cfg.contains(section) || !model_cfg[section].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("model_cfg.", section, " is missing"));
    }
  }
  const Json& vision = model_cfg["vision_cfg"];
  auto& v = config.vision;
  if (auto s = RejectUnsupported(vision, "vision_cfg",
                                 {"image_size", "layers", "width", "patch_size", "head_width",
                                  "mlp_ratio", "ls_init_value", "patch_dropout"});
      !s.ok()) {
    return s;
  }
  if (vision.contains("ls_init_value") && !vision["ls_init_value"].is_null()) {
    return absl::InvalidArgumentError("vision_cfg.ls_init_value (layer scale) is not supported");
  }
  for (auto [key, field] : {std::pair{"image_size", &v.image_size}, {"layers", &v.layers},
                            {"width", &v.width}, {"patch_size", &v.patch_size}}) {
    if (auto s = ReadInt(vision, "vision_cfg", key, true, field); !s.ok()) return s;
  }
  if (auto s = ReadInt(vision, "vision_cfg", "head_width", false, &v.head_width); !s.ok()) return s;
  if (auto s = ReadPositive(vision, "vision_cfg", "mlp_ratio", &v.mlp_ratio); !s.ok()) return s;

  const Json& text = model_cfg["text_cfg"];
  auto& t = config.text;
  if (auto s = RejectUnsupported(text, "text_cfg",
                                 {"context_length", "vocab_size", "width", "heads", "layers",
                                  "mlp_ratio", "ls_init_value"});
      !s.ok()) {
    return s;
  }
  for (auto [key, field] : {std::pair{"context_length", &t.context_length}, {"vocab_size", &t.vocab_size},
                            {"width", &t.width}, {"heads", &t.heads}, {"layers", &t.layers}}) {
    if (auto s = ReadInt(text, "text_cfg", key, true, field); !s.ok()) return s;
  }
  if (auto s = ReadPositive(text, "text_cfg", "mlp_ratio", &t.mlp_ratio); !s.ok()) return s;

  if (v.width % v.head_width != 0) {
    return absl::InvalidArgumentError(absl::StrCat("vision_cfg.width (", v.width,
                                                   ") must be divisible by head_width (", v.head_width, ")"));
  }
  if (v.image_size % v.patch_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("vision_cfg.image_size (", v.image_size,
                                                   ") must be divisible by patch_size (", v.patch_size, ")"));
  }
  if (t.width % t.heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("text_cfg.width (", t.width, ") must be divisible by heads (", t.heads, ")"));
  }
  if (t.vocab_size < 49408) {
    return absl::InvalidArgumentError(
        absl::StrCat("text_cfg.vocab_size must be at least 49408 for the CLIP tokenizer; was ", t.vocab_size));
  }

  if (root.contains("preprocess_cfg")) {
    const Json& pre = root["preprocess_cfg"];
    if (!pre.is_object()) return absl::InvalidArgumentError("preprocess_cfg must be an object");
    if (auto s = ReadTriple(pre, "mean", &config.preprocess.mean); !s.ok()) return s;
    if (auto s = ReadTriple(pre, "std", &config.preprocess.std); !s.ok()) return s;
    for (float s : config.preprocess.std) {
      if (!(s > 0)) return absl::InvalidArgumentError("preprocess_cfg.std must be positive");
    }
  }
  return config;
}

absl::StatusOr<OpenClipConfig> ReadOpenClipConfig(const std::string& path) {
  auto text = ReadFileToString(path);
  if (!text.ok()) return absl::NotFoundError(absl::StrCat("cannot read model config ", path));
  auto config = ParseOpenClipConfig(*text);
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

std::string OpenClipConfigToJson(const OpenClipConfig& config) {
  nlohmann::ordered_json root;
  auto& model = root["model_cfg"];
  model["embed_dim"] = config.embed_dim;
  if (config.quick_gelu) model["quick_gelu"] = true;
  model["vision_cfg"] = {{"image_size", config.vision.image_size}, {"layers", config.vision.layers},
                         {"width", config.vision.width}, {"patch_size", config.vision.patch_size},
                         {"head_width", config.vision.head_width}, {"mlp_ratio", config.vision.mlp_ratio}};
  model["text_cfg"] = {{"context_length", config.text.context_length}, {"vocab_size", config.text.vocab_size},
                       {"width", config.text.width}, {"heads", config.text.heads},
                       {"layers", config.text.layers}, {"mlp_ratio", config.text.mlp_ratio}};
  root["preprocess_cfg"] = {{"mean", config.preprocess.mean}, {"std", config.preprocess.std}};
  return root.dump(2);
}

absl::StatusOr<OpenClipConfig> BuiltinArchitecture(const std::string& name) {
  OpenClipConfig config;
  if (name == "ViT-B-16-plus-240") {
    config.embed_dim = 640;
    config.vision = {240, 16, 896, 12, 64, 4.0};
    config.text = {77, 49408, 640, 10, 12, 4.0};
  } else if (name == "ViT-B-16") {
    config.embed_dim = 512;
    config.vision = {224, 16, 768, 12, 64, 4.0};
    config.text = {77, 49408, 512, 8, 12, 4.0};
  } else if (name == "ViT-B-32") {
    config.embed_dim = 512;
    config.vision = {224, 32, 768, 12, 64, 4.0};
    config.text = {77, 49408, 512, 8, 12, 4.0};
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown architecture \"", name, "\"; known: ViT-B-16-plus-240, ViT-B-16, ViT-B-32"));
  }
  return config;
}

}  // namespace anoclip::model
