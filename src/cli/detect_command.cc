// `anoclip detect`: one image, one class -> scores, heatmap, regions, optional tensor dump.
#include <ATen/ATen.h>

#include <chrono>
#include <filesystem>
#include <iostream>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "anomaly/calibration.h"
#include "anomaly/decision.h"
#include "cli/commands.h"
#include "cli/engine_setup.h"
#include "common/status_macros.h"
#include "image/render.h"
#include "io/state_dict.h"

namespace anoclip::cli {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kUsage[] =
    "usage: anoclip detect --model DIR --image PATH --class NAME [--kind object|texture]\n"
    "         [--vocab FILE] [--views 1|22] [--mode anoclip|clip] [--device cpu|cuda:N]\n"
    "         [--dtype float32|float16|bfloat16] [--threads N] [--out DIR]\n"
    "         [--dump FILE.safetensors] [--json]\n"
    "         [--tta [--tta-steps N] [--tta-lr X] [--tta-sigma X] [--tta-init text|random]\n"
    "                [--seed N] [--tta-noise FILE.safetensors:KEY]]\n"
    "         [--calibration FILE.json | --threshold X] [--min-region-area N]\n";

double MillisecondsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

cv::Mat ToMat(const at::Tensor& map) {
  auto contiguous = map.to(at::kFloat).contiguous();
  return cv::Mat(static_cast<int>(contiguous.size(0)), static_cast<int>(contiguous.size(1)), CV_32F,
                 contiguous.data_ptr<float>())
      .clone();
}

absl::StatusOr<anomaly::DetectOptions> DetectOptionsFromArguments(const Arguments& args, int64_t tokens,
                                                                  int64_t embed_dim) {
  anomaly::DetectOptions options;
  ANOCLIP_ASSIGN_OR_RETURN(int64_t views, args.Int("views", 1, 1, 22));
  options.views = static_cast<int>(views);
  const std::string mode = args.String("mode", "anoclip");
  if (mode != "anoclip" && mode != "clip") {
    return absl::InvalidArgumentError(absl::StrCat("--mode must be anoclip or clip; was ", mode));
  }
  options.path = mode == "clip" ? anomaly::TokenPath::kPlainClip : anomaly::TokenPath::kLocalAware;
  options.keep_tokens = args.Has("dump");
  options.tta = args.Flag("tta");
  auto& tta = options.tta_options;
  ANOCLIP_ASSIGN_OR_RETURN(int64_t steps, args.Int("tta-steps", 5, 1, 100));
  tta.steps = static_cast<int>(steps);
  ANOCLIP_ASSIGN_OR_RETURN(tta.lr, args.Double("tta-lr", 1e-3));
  ANOCLIP_ASSIGN_OR_RETURN(tta.sigma, args.Double("tta-sigma", 0.05));
  ANOCLIP_ASSIGN_OR_RETURN(int64_t seed, args.Int("seed", 0, 0, INT64_MAX));
  tta.seed = static_cast<uint64_t>(seed);
  const std::string init = args.String("tta-init", "text");
  if (init != "text" && init != "random") {
    return absl::InvalidArgumentError(absl::StrCat("--tta-init must be text or random; was ", init));
  }
  tta.init = init == "random" ? anomaly::TtaInit::kRandom : anomaly::TtaInit::kText;
  if (args.Has("tta-noise")) {
    const std::string spec = args.String("tta-noise");
    const size_t colon = spec.rfind(':');
    if (colon == std::string::npos) {
      return absl::InvalidArgumentError("--tta-noise must be FILE.safetensors:KEY");
    }
    ANOCLIP_ASSIGN_OR_RETURN(auto tensors, io::ReadSafetensors(spec.substr(0, colon)));
    auto it = tensors.find(spec.substr(colon + 1));
    if (it == tensors.end()) {
      return absl::NotFoundError(absl::StrCat("no tensor ", spec.substr(colon + 1), " in ", spec.substr(0, colon)));
    }
    if (it->second.sizes() != at::IntArrayRef{tokens, embed_dim}) {
      return absl::InvalidArgumentError(absl::StrCat("--tta-noise tensor must be [", tokens, ",", embed_dim, "]"));
    }
    at::Tensor noise = it->second.to(at::kFloat).clone();
    tta.noise = [noise](int, int64_t, at::IntArrayRef) { return noise; };
  }
  if (options.tta) ANOCLIP_RETURN_IF_ERROR(anomaly::TestTimeAdapter::Create(tta).status());
  return options;
}

absl::Status RunDetect(const Arguments& args) {
  const auto total_start = Clock::now();
  ANOCLIP_ASSIGN_OR_RETURN(auto spec, PromptSpecFromArguments(args));
  ANOCLIP_ASSIGN_OR_RETURN(const std::string image_path, args.Required("image"));
  std::optional<anomaly::Calibration> calibration;
  std::optional<double> threshold;
  if (args.Has("calibration") && args.Has("threshold")) {
    return absl::InvalidArgumentError("give --calibration or --threshold, not both");
  }
  if (args.Has("calibration")) {
    ANOCLIP_ASSIGN_OR_RETURN(calibration, anomaly::LoadCalibration(args.String("calibration")));
  }
  if (args.Has("threshold")) {
    ANOCLIP_ASSIGN_OR_RETURN(double value, args.Double("threshold", 0.5));
    ANOCLIP_RETURN_IF_ERROR(anomaly::ValidateThreshold(value));
    threshold = value;
  }
  ANOCLIP_ASSIGN_OR_RETURN(int64_t min_area, args.Int("min-region-area", 1, 0, INT64_MAX));

  ANOCLIP_ASSIGN_OR_RETURN(auto detector, DetectorFromArguments(args));
  const auto& config = detector->config();
  const int64_t tokens = config.vision.grid() * config.vision.grid();
  ANOCLIP_ASSIGN_OR_RETURN(auto options, DetectOptionsFromArguments(args, tokens, config.embed_dim));
  if (calibration.has_value()) {
    if (calibration->class_name != spec.class_name || calibration->kind != spec.kind) {
      return absl::InvalidArgumentError(absl::StrCat("calibration is for ", calibration->class_name, "/",
                                                     calibration->kind, ", not ", spec.class_name, "/", spec.kind));
    }
    if (calibration->model_id != detector->model_id()) {
      return absl::InvalidArgumentError(absl::StrCat("calibration was made with model ", calibration->model_id,
                                                     ", not ", detector->model_id()));
    }
  }

  auto start = Clock::now();
  ANOCLIP_ASSIGN_OR_RETURN(auto image, LoadImageForDetector(image_path, *detector));
  const double decode_ms = MillisecondsSince(start);
  start = Clock::now();
  ANOCLIP_ASSIGN_OR_RETURN(auto text, detector->EncodeText(spec));
  const double text_ms = MillisecondsSince(start);
  auto shared_text = std::make_shared<const anomaly::TextFeatures>(text);
  ANOCLIP_ASSIGN_OR_RETURN(auto detections, detector->Detect(image.input.unsqueeze(0), {shared_text}, {options}));
  const auto& d = detections[0];

  start = Clock::now();
  const int width = image.rgb.cols, height = image.rgb.rows;
  cv::Mat heatmap = image::ResizeHeatmap(ToMat(d.anomaly_map), width, height);
  double max_pixel = 0;
  cv::minMaxLoc(heatmap, nullptr, &max_pixel);
  ANOCLIP_ASSIGN_OR_RETURN(auto decision, anomaly::Decide(d.image_score, heatmap,
                                                         calibration ? &*calibration : nullptr, threshold,
                                                         min_area));
  const auto& regions = decision.regions;
  const auto& calibrated_image = decision.calibrated_image_score;
  const auto& is_anomalous = decision.is_anomalous;
  const auto& region_threshold = decision.threshold;
  const cv::Mat& decision_map = decision.map;

  if (args.Has("out")) {
    const std::string out = args.String("out");
    std::error_code error;
    std::filesystem::create_directories(out, error);
    if (error) return absl::PermissionDeniedError(absl::StrCat("cannot create ", out, ": ", error.message()));
    // Calibrated maps render on their fixed [0,1] scale; raw maps on their own min..max.
    cv::Mat gray = calibration ? image::HeatmapToGray(decision_map, 0.f, 1.f) : image::HeatmapToGray(heatmap, 0.f, 0.f);
    std::vector<std::vector<cv::Point>> contours;
    for (const auto& region : regions) contours.push_back(region.contour);
    ANOCLIP_RETURN_IF_ERROR(image::WritePng(out + "/heatmap.png", gray));
    ANOCLIP_RETURN_IF_ERROR(image::WritePng(out + "/overlay.png", image::RenderOverlay(image.rgb, gray, 0.5, contours)));
    if (region_threshold) {
      cv::Mat mask = decision_map > *region_threshold;
      ANOCLIP_RETURN_IF_ERROR(image::WritePng(out + "/mask.png", mask));
    }
  }
  if (args.Has("dump")) {
    io::StateDict dump{{"input", image.input},
                       {"cls_embedding", d.cls_embedding},
                       {"vv_tokens", d.vv_tokens},
                       {"qkv_tokens", d.qkv_tokens},
                       {"patch_probs", d.zero_shot_patch_probs},
                       {"anomaly_map", d.zero_shot_anomaly_map},
                       {"text_features", text.features.cpu()},
                       {"prompts", text.prompts.cpu()}};
    if (options.tta) {
      dump["tta_patch_probs"] = d.patch_probs;
      dump["tta_anomaly_map"] = d.anomaly_map;
    }
    ANOCLIP_RETURN_IF_ERROR(io::WriteSafetensors(args.String("dump"), dump, {{"model", detector->model_id()}}));
  }
  const double postprocess_ms = MillisecondsSince(start);

  if (args.Flag("json")) {
    nlohmann::ordered_json json;
    json["image_score"] = d.image_score;
    json["max_pixel_score"] = max_pixel;
    json["class"] = spec.class_name;
    json["kind"] = spec.kind;
    json["model"] = detector->model_id();
    json["timings_ms"] = {{"decode", decode_ms},
                          {"text", text_ms},
                          {"encode", d.encode_seconds * 1e3},
                          {"tta", d.tta_seconds * 1e3},
                          {"postprocess", postprocess_ms},
                          {"total", MillisecondsSince(total_start)}};
    if (calibrated_image) json["calibrated_image_score"] = *calibrated_image;
    if (region_threshold) {
      json["regions"] = nlohmann::ordered_json::array();
      for (const auto& r : regions) {
        json["regions"].push_back({{"x", r.x}, {"y", r.y}, {"width", r.width}, {"height", r.height},
                                   {"area", r.area}, {"peak", r.peak}, {"mean", r.mean}});
      }
    }
    if (is_anomalous) json["is_anomalous"] = *is_anomalous;
    if (options.tta) json["tta_losses"] = d.tta_losses;
    std::cout << json.dump(2) << std::endl;
  } else {
    std::cout << "class " << spec.class_name << " (" << spec.kind << ")\n"
              << "image_score " << d.image_score << "\n"
              << "max_pixel_score " << max_pixel << "\n";
    if (calibrated_image) std::cout << "calibrated_image_score " << *calibrated_image << "\n";
    if (region_threshold) std::cout << "regions " << regions.size() << "\n";
    if (is_anomalous) std::cout << "is_anomalous " << (*is_anomalous ? "true" : "false") << "\n";
  }
  return absl::OkStatus();
}

}  // namespace

int RunDetectCommand(const std::vector<std::string>& words) {
  auto value_flags = EngineValueFlags();
  value_flags.insert({"image", "class", "kind", "views", "mode", "out", "dump", "tta-steps", "tta-lr",
                      "tta-sigma", "tta-init", "seed", "tta-noise", "calibration", "threshold",
                      "min-region-area"});
  auto args = Arguments::Parse(words, value_flags, {"json", "tta", "help"});
  if (!args.ok() || args->Flag("help")) {
    if (!args.ok()) std::cerr << "anoclip detect: " << args.status().message() << "\n";
    std::cerr << kUsage;
    return args.ok() ? 0 : 2;
  }
  auto status = RunDetect(*args);
  if (!status.ok()) {
    std::cerr << "anoclip detect: " << status.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace anoclip::cli
