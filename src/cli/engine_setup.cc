#include "cli/engine_setup.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "anomaly/test_time_adapter.h"
#include "common/status_macros.h"
#include "image/decode.h"
#include "image/preprocess.h"

namespace anoclip::cli {

std::set<std::string> EngineValueFlags() { return {"model", "vocab", "device", "dtype", "threads", "precision", "gemm"}; }

absl::StatusOr<anomaly::DetectorOptions> DetectorOptionsFromArguments(const Arguments& args) {
  anomaly::DetectorOptions options;
  ANOCLIP_ASSIGN_OR_RETURN(options.model_dir, args.Required("model"));
  options.vocab_path = args.String("vocab");
  if (args.Has("vocab") && options.vocab_path.empty()) return absl::InvalidArgumentError("--vocab is empty");
  options.device = args.String("device", "cpu");
  // The spelling only; whether the device exists is the Detector's (runtime) check.
  int64_t index = 0;
  if (options.device != "cpu" && options.device != "cuda" &&
      !(absl::StartsWith(options.device, "cuda:") && absl::SimpleAtoi(options.device.substr(5), &index) && index >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat("--device must be cpu or cuda:N; was \"", options.device, "\""));
  }
  options.dtype = args.String("dtype", "float32");
  if (options.dtype != "float32" && options.dtype != "float16" && options.dtype != "bfloat16") {
    return absl::InvalidArgumentError(
        absl::StrCat("--dtype must be float32, float16 or bfloat16; was \"", options.dtype, "\""));
  }
  options.precision = args.String("precision", "fp32");
  if (options.precision != "fp32" && options.precision != "bf16" && options.precision != "int8") {
    return absl::InvalidArgumentError(
        absl::StrCat("--precision must be fp32, bf16 or int8; was \"", options.precision, "\""));
  }
  if (options.precision != "fp32" && options.device != "cpu") {
    return absl::InvalidArgumentError("--precision is for the CPU; on CUDA use --dtype");
  }
  options.gemm = args.String("gemm", "auto");
  if (options.gemm != "auto" && options.gemm != "blas" && options.gemm != "onednn") {
    return absl::InvalidArgumentError(absl::StrCat("--gemm must be auto, blas or onednn; was \"", options.gemm, "\""));
  }
  ANOCLIP_ASSIGN_OR_RETURN(int64_t threads, args.Int("threads", 0, 0, 1024));
  options.threads = static_cast<int>(threads);
  return options;
}

absl::StatusOr<std::unique_ptr<anomaly::Detector>> DetectorFromArguments(const Arguments& args) {
  ANOCLIP_ASSIGN_OR_RETURN(auto options, DetectorOptionsFromArguments(args));
  return anomaly::Detector::Create(options);
}

absl::StatusOr<anomaly::PromptSpec> PromptSpecFromArguments(const Arguments& args) {
  anomaly::PromptSpec spec;
  ANOCLIP_ASSIGN_OR_RETURN(spec.class_name, args.Required("class"));
  spec.kind = args.String("kind", anomaly::DefaultKindForClass(spec.class_name));
  ANOCLIP_RETURN_IF_ERROR(anomaly::BuildPromptSet(spec).status());  // fail before the model loads
  return spec;
}

std::set<std::string> ScoringValueFlags() {
  return {"views", "mode", "tta-steps", "tta-lr", "tta-sigma", "tta-init", "seed"};
}

absl::StatusOr<anomaly::DetectOptions> DetectOptionsFromArguments(const Arguments& args) {
  anomaly::DetectOptions options;
  ANOCLIP_ASSIGN_OR_RETURN(int64_t views, args.Int("views", 1, 1, 22));
  if (views != 1 && views != 22) {
    return absl::InvalidArgumentError(absl::StrCat("--views must be 1 or 22; was ", views));
  }
  options.views = static_cast<int>(views);
  const std::string mode = args.String("mode", "anoclip");
  if (mode != "anoclip" && mode != "clip") {
    return absl::InvalidArgumentError(absl::StrCat("--mode must be anoclip or clip; was \"", mode, "\""));
  }
  options.path = mode == "clip" ? anomaly::TokenPath::kPlainClip : anomaly::TokenPath::kLocalAware;
  options.tta = args.Flag("tta");
  for (const char* flag : {"tta-steps", "tta-lr", "tta-sigma", "tta-init", "seed", "tta-noise"}) {
    if (!options.tta && args.Has(flag)) return absl::InvalidArgumentError(absl::StrCat("--", flag, " needs --tta"));
  }
  auto& tta = options.tta_options;
  ANOCLIP_ASSIGN_OR_RETURN(int64_t steps, args.Int("tta-steps", tta.steps, 1, 100));
  tta.steps = static_cast<int>(steps);
  ANOCLIP_ASSIGN_OR_RETURN(tta.lr, args.Double("tta-lr", tta.lr));
  if (tta.lr <= 0) return absl::InvalidArgumentError(absl::StrCat("--tta-lr must be positive; was ", tta.lr));
  ANOCLIP_ASSIGN_OR_RETURN(tta.sigma, args.Double("tta-sigma", tta.sigma));
  if (tta.sigma < 0) return absl::InvalidArgumentError(absl::StrCat("--tta-sigma must be >= 0; was ", tta.sigma));
  ANOCLIP_ASSIGN_OR_RETURN(int64_t seed, args.Int("seed", 0, 0, INT64_MAX));
  tta.seed = static_cast<uint64_t>(seed);
  const std::string init = args.String("tta-init", "text");
  if (init != "text" && init != "random") {
    return absl::InvalidArgumentError(absl::StrCat("--tta-init must be text or random; was \"", init, "\""));
  }
  tta.init = init == "random" ? anomaly::TtaInit::kRandom : anomaly::TtaInit::kText;
  if (options.tta) ANOCLIP_RETURN_IF_ERROR(anomaly::TestTimeAdapter::Create(tta).status());
  return options;
}

absl::StatusOr<cv::Mat> ReadImageForDetector(const std::string& path) {
  auto rgb = image::ReadImageFile(path);
  if (!rgb.ok() && !absl::StrContains(rgb.status().message(), path)) {
    return absl::Status(rgb.status().code(), absl::StrCat(path, ": ", rgb.status().message()));
  }
  return rgb;
}

at::Tensor PreprocessForDetector(const cv::Mat& rgb, const anomaly::Detector& detector) {
  const auto& config = detector.config();
  image::NormalizeOptions normalize{config.preprocess.mean, config.preprocess.std};
  return image::PreprocessImage(rgb, config.vision.image_size, normalize);
}

}  // namespace anoclip::cli
