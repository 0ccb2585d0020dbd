// From scores to a verdict (docs/algorithm.md §9): regions and is_anomalous, on the raw scale
// with a threshold or on the calibrated scale (decision at 0.5). One rule everywhere:
//   regions = connected pixels above the threshold (min-area filtered);
//   is_anomalous = image score above the threshold, or any region.
#pragma once

#include <optional>
#include <vector>

#include <opencv2/core/mat.hpp>

#include "absl/status/statusor.h"
#include "inspection/calibration.h"
#include "inspection/regions.h"

namespace anoclip::inspection {

struct Decision {
  cv::Mat map;                            // the heatmap on the decision's scale (calibrated or raw)
  std::optional<double> calibrated_image_score;
  std::optional<double> threshold;        // on `map`'s scale; unset: nothing to decide with
  std::vector<Region> regions;
  std::optional<bool> is_anomalous;
};

// `heatmap`: CV_32F raw pixel scores. Give at most one of `calibration` and `threshold`
// (validated with ValidateThreshold).
absl::StatusOr<Decision> Decide(float image_score, const cv::Mat& heatmap, const Calibration* calibration,
                                std::optional<double> threshold, int64_t min_region_area);

}  // namespace anoclip::inspection
