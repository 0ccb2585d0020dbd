#include "inspection/decision.h"

#include "common/status_macros.h"

namespace anoclip::inspection {

absl::StatusOr<Decision> Decide(float image_score, const cv::Mat& heatmap, const Calibration* calibration,
                                std::optional<double> threshold, int64_t min_region_area) {
  if (calibration != nullptr && threshold.has_value()) {
    return absl::InvalidArgumentError("give a calibration or a threshold, not both");
  }
  if (threshold) ANOCLIP_RETURN_IF_ERROR(ValidateThreshold(*threshold));
  Decision decision;
  double image_on_scale = image_score;
  if (calibration != nullptr) {
    decision.map = calibration->pixel.CalibrateMap(heatmap);
    decision.calibrated_image_score = calibration->image.Calibrate(image_score);
    image_on_scale = *decision.calibrated_image_score;
    decision.threshold = 0.5;
  } else {
    decision.map = heatmap;
    decision.threshold = threshold;
  }
  if (!decision.threshold) return decision;
  ANOCLIP_ASSIGN_OR_RETURN(decision.regions, FindRegions(decision.map, {*decision.threshold, min_region_area, 8}));
  // The calibrated image threshold sits at exactly 0.5 (inclusive); a raw threshold is strict.
  const bool image_flagged = calibration != nullptr ? image_on_scale >= 0.5 : image_on_scale > *decision.threshold;
  decision.is_anomalous = image_flagged || !decision.regions.empty();
  return decision;
}

}  // namespace anoclip::inspection
