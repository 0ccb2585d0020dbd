// `anoclip detect`: one image, one class -> scores, heatmap, regions, optional tensor dump.
#include <ATen/ATen.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <optional>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include "absl/strings/str_cat.h"
#include "cli/command_support.h"
#include "cli/commands.h"
#include "cli/engine_setup.h"
#include "common/status_macros.h"
#include "inspection/calibration.h"
#include "inspection/inspect.h"
#include "io/state_dict.h"

namespace anoclip::cli {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kUsage[] =
    "usage: anoclip detect --model DIR --image PATH --class NAME [--kind object|texture]\n"
    "         [--vocab FILE] [--views 1|22] [--mode anoclip|clip] [--device cpu|cuda:N]\n"
    "         [--dtype float32|float16|bfloat16] [--precision fp32|bf16|int8] [--gemm auto|blas|onednn]\n"
    "         [--threads N] [--out DIR]\n"
    "         [--dump FILE.safetensors] [--json]\n"
    "         [--tta [--tta-steps N] [--tta-lr X] [--tta-sigma X] [--tta-init text|random]\n"
    "                [--seed N] [--tta-noise FILE.safetensors:KEY]]\n"
    "         [--calibration FILE.json | --threshold X] [--min-region-area N]\n"
    "         [--heatmap-scale fixed|stretched]\n"
    "  Prints the image score and the maximum pixel score (--json: one JSON object).\n"
    "  --out DIR writes heatmap.png, overlay.png and, with a threshold or calibration, mask.png\n"
    "  (the regions, filled), all at the input's size. The heatmap is drawn on the fixed [0,1]\n"
    "  scale (of calibrated scores with --calibration); --heatmap-scale stretched spreads each\n"
    "  map over its own min..max instead.\n"
    "  --threshold X (0 < X < 1) judges raw scores; --calibration judges calibrated ones at 0.5.\n";

// Everything the command line says, checked before any file is read.
struct DetectRequest {
  anomaly::PromptSpec spec;
  anomaly::DetectorOptions detector;
  anomaly::DetectOptions options;
  std::string image_path;
  std::string calibration_path;  // empty: none
  std::optional<double> threshold;
  int64_t min_region_area = 1;
  inspection::HeatmapScale heatmap_scale = inspection::HeatmapScale::kFixed;
  std::string noise_file, noise_key;  // --tta-noise; empty: Gaussian noise
  std::string out_dir;                // empty: no images
  std::string dump_path;              // empty: no dump
  bool json = false;
};

absl::StatusOr<std::string> OptionalPath(const Arguments& args, const std::string& flag) {
  if (!args.Has(flag)) return std::string();
  return args.Required(flag);  // present but empty is an error
}

absl::StatusOr<DetectRequest> DetectRequestFromArguments(const Arguments& args) {
  DetectRequest request;
  ANOCLIP_ASSIGN_OR_RETURN(request.detector, DetectorOptionsFromArguments(args));
  ANOCLIP_ASSIGN_OR_RETURN(request.image_path, args.Required("image"));
  ANOCLIP_ASSIGN_OR_RETURN(request.spec, PromptSpecFromArguments(args));
  ANOCLIP_ASSIGN_OR_RETURN(request.options, DetectOptionsFromArguments(args));
  request.options.keep_tokens = args.Has("dump");
  if (args.Has("calibration") && args.Has("threshold")) {
    return absl::InvalidArgumentError("give --calibration or --threshold, not both");
  }
  ANOCLIP_ASSIGN_OR_RETURN(request.calibration_path, OptionalPath(args, "calibration"));
  if (args.Has("threshold")) {
    ANOCLIP_ASSIGN_OR_RETURN(double threshold, args.Double("threshold", 0.5));
    ANOCLIP_RETURN_IF_ERROR(inspection::ValidateThreshold(threshold));
    request.threshold = threshold;
  }
  ANOCLIP_ASSIGN_OR_RETURN(request.min_region_area, args.Int("min-region-area", 1, 1, INT64_MAX));
  const std::string scale = args.String("heatmap-scale");
  if (scale == "stretched") {
    request.heatmap_scale = inspection::HeatmapScale::kStretched;
  } else if (!scale.empty() && scale != "fixed") {
    return absl::InvalidArgumentError(absl::StrCat("--heatmap-scale must be fixed or stretched; was \"", scale, "\""));
  }
  if (args.Has("tta-noise")) {
    const std::string spec = args.String("tta-noise");
    const size_t colon = spec.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == spec.size()) {
      return absl::InvalidArgumentError(absl::StrCat("--tta-noise must be FILE.safetensors:KEY; was \"", spec, "\""));
    }
    request.noise_file = spec.substr(0, colon);
    request.noise_key = spec.substr(colon + 1);
  }
  ANOCLIP_ASSIGN_OR_RETURN(request.out_dir, OptionalPath(args, "out"));
  ANOCLIP_ASSIGN_OR_RETURN(request.dump_path, OptionalPath(args, "dump"));
  request.json = args.Flag("json");
  return request;
}

double MillisecondsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

cv::Mat ToMat(const at::Tensor& map) {
  auto contiguous = map.to(at::kFloat).cpu().contiguous();
  return cv::Mat(static_cast<int>(contiguous.size(0)), static_cast<int>(contiguous.size(1)), CV_32F,
                 contiguous.data_ptr<float>())
      .clone();
}

// The fixed δ of --tta-noise, used at every step (how the reference data was made).
absl::Status InstallNoise(const DetectRequest& request, const model::OpenClipConfig& config,
                          anomaly::TtaOptions* tta) {
  ANOCLIP_ASSIGN_OR_RETURN(auto tensors, io::ReadSafetensors(request.noise_file));
  auto it = tensors.find(request.noise_key);
  if (it == tensors.end()) {
    return absl::NotFoundError(absl::StrCat("--tta-noise: no tensor ", request.noise_key, " in ", request.noise_file));
  }
  const int64_t tokens = static_cast<int64_t>(config.vision.grid()) * config.vision.grid();
  const std::vector<int64_t> expected = {tokens, config.embed_dim};
  if (it->second.sizes() != at::IntArrayRef(expected)) {
    return absl::InvalidArgumentError(absl::StrCat("--tta-noise: ", request.noise_key, " must be [", tokens, ",",
                                                   config.embed_dim, "] for this model"));
  }
  at::Tensor noise = it->second.to(at::kFloat).clone();
  tta->noise = [noise](int, int64_t, at::IntArrayRef) { return noise; };
  return absl::OkStatus();
}

absl::Status RunDetect(DetectRequest request) {
  const auto total_start = Clock::now();
  std::optional<inspection::Calibration> calibration;
  if (!request.calibration_path.empty()) {
    ANOCLIP_ASSIGN_OR_RETURN(calibration, inspection::LoadCalibration(request.calibration_path));
  }
  // The image before the model: a bad file fails fast.
  auto start = Clock::now();
  ANOCLIP_ASSIGN_OR_RETURN(const cv::Mat rgb, ReadImageForDetector(request.image_path));
  const double decode_ms = MillisecondsSince(start);

  ANOCLIP_ASSIGN_OR_RETURN(auto detector, anomaly::Detector::Create(request.detector));
  if (calibration.has_value()) {
    if (calibration->class_name != request.spec.class_name || calibration->kind != request.spec.kind) {
      return absl::InvalidArgumentError(absl::StrCat("calibration is for ", calibration->class_name, "/",
                                                     calibration->kind, ", not ", request.spec.class_name, "/",
                                                     request.spec.kind));
    }
    if (calibration->model_id != detector->model_id()) {
      return absl::InvalidArgumentError(absl::StrCat("calibration was made with model ", calibration->model_id,
                                                     ", not ", detector->model_id()));
    }
  }
  if (!request.noise_file.empty()) {
    ANOCLIP_RETURN_IF_ERROR(InstallNoise(request, detector->config(), &request.options.tta_options));
  }

  start = Clock::now();
  const at::Tensor input = PreprocessForDetector(rgb, *detector);
  const double preprocess_ms = MillisecondsSince(start);
  start = Clock::now();
  ANOCLIP_ASSIGN_OR_RETURN(auto text, detector->EncodeText(request.spec));
  const double text_ms = MillisecondsSince(start);
  auto shared_text = std::make_shared<const anomaly::TextFeatures>(text);
  ANOCLIP_ASSIGN_OR_RETURN(auto detections, detector->Detect(input.unsqueeze(0), {shared_text}, {request.options}));
  const anomaly::Detection& d = detections[0];

  // Pixel scores at the input's size; with --tta the adapted map.
  start = Clock::now();
  inspection::InspectOptions inspect_options;
  inspect_options.calibration = calibration ? &*calibration : nullptr;
  inspect_options.threshold = request.threshold;
  inspect_options.min_region_area = request.min_region_area;
  inspect_options.size = rgb.size();
  inspect_options.scale = request.heatmap_scale;
  ANOCLIP_ASSIGN_OR_RETURN(const inspection::Inspection inspection,
                           inspection::Inspect(d.image_score, ToMat(d.anomaly_map), inspect_options));
  if (!request.out_dir.empty()) {
    ANOCLIP_ASSIGN_OR_RETURN(auto images, inspection::EncodeImages(rgb, inspection));
    ANOCLIP_RETURN_IF_ERROR(inspection::WriteImages(images, request.out_dir, ""));
  }
  if (!request.dump_path.empty()) {
    auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat).cpu(); };
    io::StateDict dump{{"input", f32(input)},
                       {"cls_embedding", f32(d.cls_embedding)},
                       {"vv_tokens", f32(d.vv_tokens)},
                       {"qkv_tokens", f32(d.qkv_tokens)},
                       {"patch_probs", f32(d.zero_shot_patch_probs)},
                       {"anomaly_map", f32(d.zero_shot_anomaly_map)},
                       {"text_features", f32(text.features)},
                       {"prompts", f32(text.prompts)}};
    if (request.options.tta) {
      dump["tta_patch_probs"] = f32(d.patch_probs);
      dump["tta_anomaly_map"] = f32(d.anomaly_map);
    }
    ANOCLIP_RETURN_IF_ERROR(io::WriteSafetensors(request.dump_path, dump, {{"model", detector->model_id()}}));
  }
  const double postprocess_ms = MillisecondsSince(start);

  if (request.json) {
    nlohmann::ordered_json json;
    json["image_score"] = d.image_score;
    json["max_pixel_score"] = inspection.max_pixel_score;
    json["class"] = request.spec.class_name;
    json["kind"] = request.spec.kind;
    json["model"] = detector->model_id();
    json["timings_ms"] = {{"decode", decode_ms},
                          {"preprocess", preprocess_ms},
                          {"text", text_ms},
                          {"encode", d.encode_seconds * 1e3},
                          {"tta", d.tta_seconds * 1e3},
                          {"postprocess", postprocess_ms},
                          {"total", MillisecondsSince(total_start)}};
    if (inspection.calibrated_image_score) json["calibrated_image_score"] = *inspection.calibrated_image_score;
    if (inspection.is_anomalous) {
      json["regions"] = nlohmann::ordered_json::array();
      for (const auto& r : inspection.regions) {
        json["regions"].push_back({{"x", r.x}, {"y", r.y}, {"width", r.width}, {"height", r.height},
                                   {"area", r.area}, {"peak", r.peak}, {"mean", r.mean}});
      }
    }
    if (inspection.is_anomalous) json["is_anomalous"] = *inspection.is_anomalous;
    if (request.options.tta) json["tta_losses"] = d.tta_losses;
    std::cout << json.dump(2) << std::endl;
  } else {
    std::cout << "class " << request.spec.class_name << " (" << request.spec.kind << ")\n"
              << "image_score " << d.image_score << "\n"
              << "max_pixel_score " << inspection.max_pixel_score << "\n";
    if (inspection.calibrated_image_score) std::cout << "calibrated_image_score " << *inspection.calibrated_image_score << "\n";
    if (inspection.is_anomalous) {
      std::cout << "regions " << inspection.regions.size() << "\n"
                << "is_anomalous " << (*inspection.is_anomalous ? "true" : "false") << "\n";
    }
  }
  return absl::OkStatus();
}

}  // namespace

int RunDetectCommand(const std::vector<std::string>& words) {
  auto value_flags = EngineValueFlags();
  value_flags.merge(ScoringValueFlags());
  value_flags.insert({"image", "class", "kind", "out", "dump", "tta-noise", "calibration", "threshold",
                      "min-region-area", "heatmap-scale"});
  int exit_code = kExitOk;
  auto args = ParseCommandLine("detect", words, value_flags, {"json", "tta"}, kUsage, &exit_code);
  if (!args) return exit_code;
  auto request = DetectRequestFromArguments(*args);
  if (!request.ok()) return ReportError("detect", request.status(), kExitUsageError);
  if (auto status = RunDetect(std::move(request).value()); !status.ok()) {
    return ReportError("detect", status, kExitRuntimeError);
  }
  return kExitOk;
}

}  // namespace anoclip::cli
