// One class's metrics from its per-image results (eval/results_store.h): image AUROC, AP, F1max,
// AUPR; pixel AUROC, AP, F1max and PRO when the class has masks (docs/algorithm.md §8); the curves for
// the report; and, given a calibration or a raw threshold, the operating point the service would
// decide with (inspection/decision.h): image verdicts and pixels above the threshold, counted
// against the labels. The mean over classes averages each metric over the classes that define it.
// Torch-free.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "inspection/calibration.h"
#include "eval/metrics.h"
#include "eval/results_store.h"

namespace anoclip::eval {

struct ClassEvaluation {
  std::string name;          // folder name
  std::string prompt_class;  // what the prompts called it
  int64_t images = 0, anomalous = 0;
  bool has_masks = false;
  BinaryMetrics image, pixel;
  std::optional<double> pro;
  std::vector<CurvePoint> image_roc, image_pr, pixel_roc, pixel_pr;  // at most kCurvePoints each
  std::optional<OperatingPoint> image_point, pixel_point;
  double pixel_low = 0, pixel_high = 0;  // the range of the class's maps
};

constexpr size_t kCurvePoints = 200;

// The decision rule of the operating point; both unset: no operating point.
struct OperatingRule {
  const inspection::Calibration* calibration = nullptr;
  std::optional<double> threshold;
};

// `results` all of one class; pixel metrics when every result has a mask. InvalidArgument for
// no results, maps of different sizes or non-finite scores.
absl::StatusOr<ClassEvaluation> EvaluateClass(const std::string& name, const std::string& prompt_class,
                                              const std::vector<ImageResult>& results, const OperatingRule& rule);

// The mean row: per metric, the mean over the classes where it is defined (nullopt if none).
struct MeanMetrics {
  std::optional<double> image_auroc, image_ap, image_f1max, image_aupr;
  std::optional<double> pixel_auroc, pixel_ap, pixel_f1max, pro;
  std::optional<double> image_precision, image_recall, image_f1, pixel_precision, pixel_recall, pixel_f1;
};
MeanMetrics MeanOverClasses(const std::vector<ClassEvaluation>& classes);

}  // namespace anoclip::eval
