// `anoclip calibrate`: score a handful of defect-free images of a class and record where their
// scores lie, so later detections get a calibrated [0,1] scale with the decision at 0.5.
#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "cli/command_support.h"
#include "cli/commands.h"
#include "cli/engine_setup.h"
#include "common/status_macros.h"
#include "inspection/calibration.h"
#include "inspection/render.h"

namespace anoclip::cli {
namespace {

constexpr char kUsage[] =
    "usage: anoclip calibrate --model DIR --class NAME [--kind object|texture] --normal-dir DIR\n"
    "         --out FILE.json [--views 1|22] [--mode anoclip|clip]\n"
    "         [--tta [--tta-steps N] [--tta-lr X] [--tta-sigma X] [--tta-init text|random] [--seed N]]\n"
    "         [--vocab FILE] [--device cpu|cuda:N] [--dtype float32|float16|bfloat16] [--threads N]\n"
    "         [--precision fp32|bf16|int8] [--gemm auto|blas|onednn]\n"
    "  DIR holds 5 to 50 defect-free images (png, jpg, jpeg, bmp, tif, tiff; other files are\n"
    "  ignored; more than 50 is an error). Use the scoring flags (--views, --mode, --tta...) that\n"
    "  detect will use with the calibration.\n";

// Images scored per vision forward.
constexpr size_t kBatch = 8;

struct CalibrateRequest {
  anomaly::PromptSpec spec;
  anomaly::DetectorOptions detector;
  anomaly::DetectOptions options;
  std::string normal_dir;
  std::string out;
};

absl::StatusOr<CalibrateRequest> CalibrateRequestFromArguments(const Arguments& args) {
  CalibrateRequest request;
  ANOCLIP_ASSIGN_OR_RETURN(request.detector, DetectorOptionsFromArguments(args));
  ANOCLIP_ASSIGN_OR_RETURN(request.spec, PromptSpecFromArguments(args));
  ANOCLIP_ASSIGN_OR_RETURN(request.options, DetectOptionsFromArguments(args));
  ANOCLIP_ASSIGN_OR_RETURN(request.normal_dir, args.Required("normal-dir"));
  ANOCLIP_ASSIGN_OR_RETURN(request.out, args.Required("out"));
  return request;
}

absl::StatusOr<std::vector<std::string>> ListImages(const std::string& dir) {
  std::error_code error;
  if (!std::filesystem::is_directory(dir, error)) return absl::NotFoundError(absl::StrCat("no directory ", dir));
  std::vector<std::string> paths;
  for (std::filesystem::directory_iterator it(dir, error), end; !error && it != end; it.increment(error)) {
    const std::string ext = absl::AsciiStrToLower(it->path().extension().string());
    if (it->is_regular_file(error) &&
        (ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp" || ext == ".tif" || ext == ".tiff")) {
      paths.push_back(it->path().string());
    }
  }
  if (error) return absl::PermissionDeniedError(absl::StrCat("cannot list ", dir, ": ", error.message()));
  std::sort(paths.begin(), paths.end());
  if (paths.size() < inspection::Calibration::kMinImages || paths.size() > inspection::Calibration::kMaxImages) {
    return absl::InvalidArgumentError(absl::StrCat(dir, " holds ", paths.size(), " images; calibration needs ",
                                                   inspection::Calibration::kMinImages, " to ",
                                                   inspection::Calibration::kMaxImages));
  }
  return paths;
}

absl::Status Calibrate(const CalibrateRequest& request) {
  ANOCLIP_ASSIGN_OR_RETURN(auto paths, ListImages(request.normal_dir));
  // Decode everything first: a bad file fails before the model loads.
  std::vector<cv::Mat> images;
  for (const auto& path : paths) {
    ANOCLIP_ASSIGN_OR_RETURN(cv::Mat rgb, ReadImageForDetector(path));
    images.push_back(std::move(rgb));
  }
  ANOCLIP_ASSIGN_OR_RETURN(auto detector, anomaly::Detector::Create(request.detector));
  ANOCLIP_ASSIGN_OR_RETURN(auto text, detector->EncodeText(request.spec));
  auto shared_text = std::make_shared<const anomaly::TextFeatures>(std::move(text));

  std::vector<float> image_scores;
  std::vector<cv::Mat> pixel_maps;
  for (size_t begin = 0; begin < images.size(); begin += kBatch) {
    const size_t end = std::min(images.size(), begin + kBatch);
    std::vector<at::Tensor> inputs;
    for (size_t i = begin; i < end; ++i) inputs.push_back(PreprocessForDetector(images[i], *detector));
    ANOCLIP_ASSIGN_OR_RETURN(
        auto detections,
        detector->Detect(at::stack(inputs), std::vector<std::shared_ptr<const anomaly::TextFeatures>>(
                                                end - begin, shared_text),
                         {request.options}));
    for (size_t i = begin; i < end; ++i) {
      const auto& d = detections[i - begin];
      auto map = d.anomaly_map.to(at::kFloat).contiguous();
      cv::Mat model_map(static_cast<int>(map.size(0)), static_cast<int>(map.size(1)), CV_32F, map.data_ptr<float>());
      // Pixel statistics at the image's own size, where detections are judged.
      pixel_maps.push_back(inspection::ResizeHeatmap(model_map, images[i].cols, images[i].rows));
      image_scores.push_back(d.image_score);
    }
  }
  ANOCLIP_ASSIGN_OR_RETURN(auto calibration, inspection::FitCalibration(image_scores, pixel_maps));
  calibration.class_name = request.spec.class_name;
  calibration.kind = request.spec.kind;
  calibration.model_id = detector->model_id();
  ANOCLIP_RETURN_IF_ERROR(inspection::SaveCalibration(request.out, calibration));
  std::cout << "calibrated " << request.spec.class_name << " (" << request.spec.kind << ") on " << paths.size()
            << " normal images: image threshold " << calibration.image.threshold << ", pixel threshold "
            << calibration.pixel.threshold << " -> " << request.out << "\n";
  return absl::OkStatus();
}

}  // namespace

int RunCalibrateCommand(const std::vector<std::string>& words) {
  auto value_flags = EngineValueFlags();
  value_flags.merge(ScoringValueFlags());
  value_flags.insert({"class", "kind", "normal-dir", "out"});
  int exit_code = kExitOk;
  auto args = ParseCommandLine("calibrate", words, value_flags, {"tta"}, kUsage, &exit_code);
  if (!args) return exit_code;
  auto request = CalibrateRequestFromArguments(*args);
  if (!request.ok()) return ReportError("calibrate", request.status(), kExitUsageError);
  if (auto status = Calibrate(*request); !status.ok()) return ReportError("calibrate", status, kExitRuntimeError);
  return kExitOk;
}

}  // namespace anoclip::cli
