// Label-free calibration (docs/algorithm.md §9): from the scores of a few defect-free images of a
// class, a threshold and a calibrated [0,1] scale where 0.5 is the decision threshold. Torch-free.
//
// The rule, for image scores and pixel scores separately:
//   image threshold = max(normal image scores) + max(std(normal image scores), 1e-4)
//     (a defect-free image must not be flagged; the margin grows with the spread seen)
//   pixel threshold = 99.5th percentile of the normal pixel scores
//     (0.5% of normal pixels may exceed it; pixels are subsampled evenly to at most 2M values:
//     every k-th value of the maps in order, k = ceil(total / 2M), so the fit is deterministic)
//   std is the population standard deviation; the median and percentiles are nearest-rank: the
//   value at index round(q * (n - 1)) of the sorted scores.
//   calibrated(x) = clamp(0.5 + 0.5 * (x - threshold) / (threshold - median), 0, 1)
//     so the median normal score maps to 0, the threshold to 0.5, and threshold plus the same
//     distance to 1. Monotone; the scale is floored at 1e-6 so a flat set still maps.
//
// Thread model: the functions are stateless; a loaded Calibration is immutable and may be shared.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <opencv2/core/mat.hpp>

#include "absl/status/statusor.h"

namespace anoclip::inspection {

struct ScoreScale {
  double threshold = 0.5;
  double median = 0.0;    // of the normal scores
  double max = 0.0;       // of the normal scores
  int64_t samples = 0;    // scores the fit saw

  // Calibrated value in [0,1]; 0.5 exactly at the threshold.
  double Calibrate(double raw) const;
  // Element-wise Calibrate of a CV_32F map (a pixel exactly at the threshold gives exactly 0.5).
  cv::Mat CalibrateMap(const cv::Mat& raw) const;
};

struct Calibration {
  static constexpr int kFormatVersion = 1;
  static constexpr int kMinImages = 5;
  static constexpr int kMaxImages = 50;

  std::string class_name;
  std::string kind;
  std::string model_id;
  int num_images = 0;
  ScoreScale image;
  ScoreScale pixel;
};

// `pixel_maps` holds one CV_32F heatmap per image. InvalidArgument for fewer than 5 or more than
// 50 images, a count mismatch, empty maps or non-finite scores.
absl::StatusOr<Calibration> FitCalibration(const std::vector<float>& image_scores,
                                           const std::vector<cv::Mat>& pixel_maps);

// JSON: {"format_version": 1, "class", "kind", "model", "num_images",
//        "image": {"threshold", "median", "max", "samples"}, "pixel": {...}}.
absl::Status SaveCalibration(const std::string& path, const Calibration& calibration);
// NotFound when unreadable; InvalidArgument naming the field when malformed (missing, wrong type,
// non-finite, num_images outside 5..50, median above threshold, other format_version).
// "samples" may be absent.
absl::StatusOr<Calibration> LoadCalibration(const std::string& path);
absl::StatusOr<Calibration> ParseCalibration(const std::string& json_text);

// A per-request threshold on raw scores must be finite and inside (0, 1).
absl::Status ValidateThreshold(double threshold);

}  // namespace anoclip::inspection
