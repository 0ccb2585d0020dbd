#include "inspection/inspect.h"

#include <filesystem>

#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/files.h"
#include "common/status_macros.h"
#include "inspection/decision.h"
#include "inspection/render.h"

namespace anoclip::inspection {

ColourScale FixedScale(bool calibrated) { return ColourScale{0.0, 1.0, calibrated}; }

absl::StatusOr<Inspection> Inspect(float image_score, const cv::Mat& map, const InspectOptions& options) {
  if (map.empty() || map.type() != CV_32FC1) {
    return absl::InvalidArgumentError("the score map must be a non-empty single-channel float32 map");
  }
  if (options.min_region_area < 0) {
    return absl::InvalidArgumentError(absl::StrCat("min_region_area must be >= 0; was ", options.min_region_area));
  }
  const cv::Size size = options.size.empty() ? map.size() : options.size;
  Inspection inspection;
  inspection.image_score = image_score;
  inspection.scores = ResizeHeatmap(map, size.width, size.height);
  double max_pixel = 0;
  cv::minMaxLoc(inspection.scores, nullptr, &max_pixel);
  inspection.max_pixel_score = static_cast<float>(max_pixel);
  ANOCLIP_ASSIGN_OR_RETURN(Decision decision, Decide(image_score, inspection.scores, options.calibration,
                                                     options.threshold, options.min_region_area));
  inspection.calibrated_image_score = decision.calibrated_image_score;
  inspection.regions = std::move(decision.regions);
  inspection.is_anomalous = decision.is_anomalous;
  // The heatmap shows what was judged: calibrated scores when calibrated, raw ones otherwise.
  inspection.scale = FixedScale(options.calibration != nullptr);
  if (options.scale == HeatmapScale::kStretched) {
    double low = 0, high = 0;
    cv::minMaxLoc(decision.map, &low, &high);
    inspection.scale.low = low;
    inspection.scale.high = high;
  }
  inspection.heatmap = HeatmapToGray(decision.map, static_cast<float>(inspection.scale.low),
                                     static_cast<float>(inspection.scale.high));
  return inspection;
}

std::string Caption(const Inspection& inspection) {
  std::string text = inspection.calibrated_image_score
                         ? absl::StrFormat("calibrated %.3f", *inspection.calibrated_image_score)
                         : absl::StrFormat("score %.3f", inspection.image_score);
  if (!inspection.is_anomalous) return text + " (no threshold)";
  return absl::StrCat(text, *inspection.is_anomalous ? " ANOMALOUS" : " normal");
}

cv::Mat RenderOverlay(const cv::Mat& rgb, const Inspection& inspection) {
  cv::Mat base = rgb;
  if (rgb.size() != inspection.heatmap.size()) cv::resize(rgb, base, inspection.heatmap.size(), 0, 0, cv::INTER_AREA);
  std::vector<std::vector<cv::Point>> contours;
  for (const auto& region : inspection.regions) contours.push_back(region.contour);
  cv::Mat overlay = BlendHeatmap(base, inspection.heatmap, 0.5, contours);
  DrawColourBar(overlay, absl::StrFormat("%.2f", inspection.scale.low), absl::StrFormat("%.2f", inspection.scale.high));
  DrawCaption(overlay, Caption(inspection));
  return overlay;
}

cv::Mat RenderMask(const Inspection& inspection) {
  cv::Mat mask(inspection.heatmap.size(), CV_8U, cv::Scalar(0));
  std::vector<std::vector<cv::Point>> contours;
  for (const auto& region : inspection.regions) contours.push_back(region.contour);
  cv::drawContours(mask, contours, -1, cv::Scalar(255), cv::FILLED);
  return mask;
}

absl::StatusOr<InspectionImages> EncodeImages(const cv::Mat& rgb, const Inspection& inspection) {
  InspectionImages images;
  ANOCLIP_ASSIGN_OR_RETURN(images.heatmap_png, EncodePng(inspection.heatmap));
  ANOCLIP_ASSIGN_OR_RETURN(images.overlay_png, EncodePng(RenderOverlay(rgb, inspection)));
  if (inspection.is_anomalous) {
    ANOCLIP_ASSIGN_OR_RETURN(images.mask_png, EncodePng(RenderMask(inspection)));
  }
  return images;
}

absl::Status WriteImages(const InspectionImages& images, const std::string& dir, const std::string& prefix) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) return absl::PermissionDeniedError(absl::StrCat("cannot create ", dir, ": ", error.message()));
  const std::string base = absl::StrCat(dir, "/", prefix);
  ANOCLIP_RETURN_IF_ERROR(WriteStringToFile(base + "heatmap.png", images.heatmap_png));
  ANOCLIP_RETURN_IF_ERROR(WriteStringToFile(base + "overlay.png", images.overlay_png));
  if (!images.mask_png.empty()) ANOCLIP_RETURN_IF_ERROR(WriteStringToFile(base + "mask.png", images.mask_png));
  return absl::OkStatus();
}

}  // namespace anoclip::inspection
