// The evaluation metrics of docs/algorithm.md §8, exact and torch-free.
//
// Scores are ranked over their distinct values, ties counted together (as scikit-learn does):
//   AUROC     trapezoid area under the ROC curve (ties give the diagonal);
//   AP        step-wise average precision, sum over thresholds of (R_i - R_{i-1}) P_i;
//   F1max     the largest 2PR/(P+R) over thresholds;
//   AUPR      trapezoid area under the precision-recall curve, ending at (R=0, P=1).
// With only one label present every one of them is undefined (nullopt): there is nothing to rank.
//
// PRO (per-region overlap): thresholds min + k(max-min)/200, k = 0..199, over all maps of a
// class; at each, the binary map a > th, the mean over every 8-connected ground-truth region of
// its covered share, and the FPR over all negative pixels. The FPRs below 0.3 are min-max
// normalised to [0,1] and the PRO curve's trapezoid area over them is the score. Undefined with
// no regions, or with fewer than two distinct FPRs below 0.3 (a constant map, a map with only two
// values): the normalisation would divide 0 by 0.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include <opencv2/core/mat.hpp>

namespace anoclip::eval {

// One point per distinct score, from the highest score down: counts of positives and negatives
// scoring at least that value.
struct RankedCounts {
  std::vector<float> thresholds;
  std::vector<int64_t> true_positives, false_positives;
  int64_t positives = 0, negatives = 0;
};

// `labels[i]` != 0 marks a positive. Sizes must match (std::invalid_argument otherwise).
RankedCounts RankScores(const std::vector<float>& scores, const std::vector<uint8_t>& labels);

struct BinaryMetrics {
  std::optional<double> auroc, ap, f1max, aupr;
  // Where F1max is reached (the lowest score counted as positive).
  std::optional<double> f1max_threshold;
};

BinaryMetrics ComputeBinaryMetrics(const RankedCounts& counts);

struct CurvePoint {
  double x, y;
};
// The ROC curve (FPR, TPR) and the PR curve (recall, precision) with at most `max_points` points
// each (evenly spaced along the ranking, first and last kept), for plotting. Empty when undefined.
std::vector<CurvePoint> RocCurve(const RankedCounts& counts, size_t max_points);
std::vector<CurvePoint> PrCurve(const RankedCounts& counts, size_t max_points);

// `maps` are CV_32F, `masks` CV_8U (nonzero = defect) of the same sizes, one per image.
std::optional<double> ComputePro(const std::vector<cv::Mat>& maps, const std::vector<cv::Mat>& masks);

// Precision, recall and F1 of a hard decision. Undefined parts (0/0) are nullopt.
struct OperatingPoint {
  int64_t true_positives = 0, false_positives = 0, false_negatives = 0, true_negatives = 0;
  std::optional<double> precision() const;
  std::optional<double> recall() const;
  std::optional<double> f1() const;
};

}  // namespace anoclip::eval
