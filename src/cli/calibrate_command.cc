// `anoclip calibrate`: score a handful of defect-free images of a class and record where their
// scores lie, so later detections get a calibrated [0,1] scale with the decision at 0.5.
#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "anomaly/calibration.h"
#include "cli/commands.h"
#include "cli/engine_setup.h"
#include "common/status_macros.h"
#include "image/render.h"

namespace anoclip::cli {
namespace {

constexpr char kUsage[] =
    "usage: anoclip calibrate --model DIR --class NAME [--kind K] --normal-dir DIR [--tta]\n"
    "         [--views 1|22] [--vocab FILE] [--device D] --out FILE.json\n"
    "       DIR holds 5..50 defect-free images (png, jpg, jpeg, bmp, tif, tiff)\n";

absl::StatusOr<std::vector<std::string>> ListImages(const std::string& dir) {
  std::error_code error;
  if (!std::filesystem::is_directory(dir, error)) return absl::NotFoundError(absl::StrCat("no directory ", dir));
  std::vector<std::string> paths;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    std::string ext = entry.path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
    if (entry.is_regular_file() &&
        (ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp" || ext == ".tif" || ext == ".tiff")) {
      paths.push_back(entry.path().string());
    }
  }
  std::sort(paths.begin(), paths.end());
  if (paths.size() < anomaly::Calibration::kMinImages || paths.size() > anomaly::Calibration::kMaxImages) {
    return absl::InvalidArgumentError(absl::StrCat(dir, " holds ", paths.size(), " images; calibration needs ",
                                                   anomaly::Calibration::kMinImages, " to ",
                                                   anomaly::Calibration::kMaxImages));
  }
  return paths;
}

absl::Status Calibrate(const Arguments& args) {
  ANOCLIP_ASSIGN_OR_RETURN(auto spec, PromptSpecFromArguments(args));
  ANOCLIP_ASSIGN_OR_RETURN(const std::string out, args.Required("out"));
  ANOCLIP_ASSIGN_OR_RETURN(const std::string normal_dir, args.Required("normal-dir"));
  ANOCLIP_ASSIGN_OR_RETURN(auto paths, ListImages(normal_dir));
  ANOCLIP_ASSIGN_OR_RETURN(int64_t views, args.Int("views", 1, 1, 22));
  ANOCLIP_ASSIGN_OR_RETURN(auto detector, DetectorFromArguments(args));
  ANOCLIP_ASSIGN_OR_RETURN(auto text, detector->EncodeText(spec));
  auto shared_text = std::make_shared<const anomaly::TextFeatures>(std::move(text));
  anomaly::DetectOptions options;
  options.views = static_cast<int>(views);
  options.tta = args.Flag("tta");

  std::vector<float> image_scores;
  std::vector<cv::Mat> pixel_maps;
  for (const auto& path : paths) {
    ANOCLIP_ASSIGN_OR_RETURN(auto image, LoadImageForDetector(path, *detector));
    ANOCLIP_ASSIGN_OR_RETURN(auto detections, detector->Detect(image.input.unsqueeze(0), {shared_text}, {options}));
    auto map = detections[0].anomaly_map.contiguous();
    cv::Mat model_map(static_cast<int>(map.size(0)), static_cast<int>(map.size(1)), CV_32F, map.data_ptr<float>());
    // Pixel statistics at the image's own size, where detections are judged.
    pixel_maps.push_back(image::ResizeHeatmap(model_map, image.rgb.cols, image.rgb.rows));
    image_scores.push_back(detections[0].image_score);
  }
  ANOCLIP_ASSIGN_OR_RETURN(auto calibration, anomaly::FitCalibration(image_scores, pixel_maps));
  calibration.class_name = spec.class_name;
  calibration.kind = spec.kind;
  calibration.model_id = detector->model_id();
  ANOCLIP_RETURN_IF_ERROR(anomaly::SaveCalibration(out, calibration));
  std::cout << "calibrated " << spec.class_name << " (" << spec.kind << ") on " << paths.size()
            << " normal images: image threshold " << calibration.image.threshold << ", pixel threshold "
            << calibration.pixel.threshold << " -> " << out << "\n";
  return absl::OkStatus();
}

}  // namespace

int RunCalibrateCommand(const std::vector<std::string>& words) {
  auto value_flags = EngineValueFlags();
  value_flags.insert({"class", "kind", "normal-dir", "views", "out"});
  auto args = Arguments::Parse(words, value_flags, {"tta", "help"});
  if (!args.ok() || args->Flag("help")) {
    if (!args.ok()) std::cerr << "anoclip calibrate: " << args.status().message() << "\n";
    std::cerr << kUsage;
    return args.ok() ? 0 : 2;
  }
  if (auto status = Calibrate(*args); !status.ok()) {
    std::cerr << "anoclip calibrate: " << status.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace anoclip::cli
