#include "cli/engine_setup.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "image/decode.h"
#include "image/preprocess.h"

namespace anoclip::cli {

std::set<std::string> EngineValueFlags() { return {"model", "vocab", "device", "dtype", "threads"}; }

absl::StatusOr<std::unique_ptr<anomaly::Detector>> DetectorFromArguments(const Arguments& args) {
  anomaly::DetectorOptions options;
  ANOCLIP_ASSIGN_OR_RETURN(options.model_dir, args.Required("model"));
  options.vocab_path = args.String("vocab");
  options.device = args.String("device", "cpu");
  options.dtype = args.String("dtype", "float32");
  ANOCLIP_ASSIGN_OR_RETURN(int64_t threads, args.Int("threads", 0, 0, 1024));
  options.threads = static_cast<int>(threads);
  return anomaly::Detector::Create(options);
}

absl::StatusOr<anomaly::PromptSpec> PromptSpecFromArguments(const Arguments& args) {
  anomaly::PromptSpec spec;
  ANOCLIP_ASSIGN_OR_RETURN(spec.class_name, args.Required("class"));
  spec.kind = args.String("kind", anomaly::DefaultKindForClass(spec.class_name));
  ANOCLIP_RETURN_IF_ERROR(anomaly::BuildPromptSet(spec).status());  // fail before the model loads
  return spec;
}

absl::StatusOr<LoadedImage> LoadImageForDetector(const std::string& path, const anomaly::Detector& detector) {
  LoadedImage loaded;
  ANOCLIP_ASSIGN_OR_RETURN(loaded.rgb, image::ReadImageFile(path));
  const auto& config = detector.config();
  image::NormalizeOptions normalize{config.preprocess.mean, config.preprocess.std};
  loaded.input = image::PreprocessImage(loaded.rgb, config.vision.image_size, normalize);
  return loaded;
}

}  // namespace anoclip::cli
