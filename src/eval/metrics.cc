#include "eval/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

namespace anoclip::eval {
namespace {

// A key whose unsigned order is the float's order (negative floats flipped whole, positive ones
// with the sign bit set).
uint32_t OrderedKey(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

float FromOrderedKey(uint32_t key) {
  const uint32_t bits = (key & 0x80000000u) ? key & 0x7FFFFFFFu : ~key;
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// LSD radix sort, 3 passes of 11 bits: linear time, which matters for millions of pixels.
void RadixSort(std::vector<uint32_t>& keys) {
  std::vector<uint32_t> buffer(keys.size());
  for (int shift = 0; shift < 32; shift += 11) {
    std::vector<size_t> offsets((1u << 11) + 1, 0);
    for (uint32_t key : keys) ++offsets[((key >> shift) & 0x7FFu) + 1];
    for (size_t i = 1; i < offsets.size(); ++i) offsets[i] += offsets[i - 1];
    for (uint32_t key : keys) buffer[offsets[(key >> shift) & 0x7FFu]++] = key;
    keys.swap(buffer);
  }
}

// Trapezoid area of points given in order (x monotone); the sign of the x direction ignored.
double Trapezoid(const std::vector<double>& x, const std::vector<double>& y) {
  double area = 0;
  for (size_t i = 1; i < x.size(); ++i) area += (x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2;
  return std::fabs(area);
}

std::optional<double> Ratio(int64_t numerator, int64_t denominator) {
  if (denominator == 0) return std::nullopt;
  return static_cast<double>(numerator) / static_cast<double>(denominator);
}

std::vector<size_t> SampleIndices(size_t count, size_t max_points) {
  std::vector<size_t> indices;
  if (count == 0) return indices;
  if (max_points < 2 || count <= max_points) {
    for (size_t i = 0; i < count; ++i) indices.push_back(i);
    return indices;
  }
  for (size_t k = 0; k < max_points; ++k) indices.push_back(k * (count - 1) / (max_points - 1));
  return indices;
}

}  // namespace

RankedCounts RankScores(const std::vector<float>& scores, const std::vector<uint8_t>& labels) {
  if (scores.size() != labels.size()) throw std::invalid_argument("RankScores: scores and labels differ in count");
  std::vector<uint32_t> positive, negative;
  const size_t positive_count = static_cast<size_t>(std::count_if(labels.begin(), labels.end(), [](uint8_t l) { return l != 0; }));
  positive.reserve(positive_count);
  negative.reserve(scores.size() - positive_count);
  for (size_t i = 0; i < scores.size(); ++i) {
    if (std::isnan(scores[i])) throw std::invalid_argument("RankScores: a score is NaN");
    (labels[i] ? positive : negative).push_back(OrderedKey(scores[i]));
  }
  RadixSort(positive);
  RadixSort(negative);
  RankedCounts counts;
  counts.positives = static_cast<int64_t>(positive.size());
  counts.negatives = static_cast<int64_t>(negative.size());
  // Merge from the highest key down, one point per distinct key.
  counts.thresholds.reserve(scores.size());
  counts.true_positives.reserve(scores.size());
  counts.false_positives.reserve(scores.size());
  auto p = positive.rbegin(), n = negative.rbegin();
  int64_t tp = 0, fp = 0;
  while (p != positive.rend() || n != negative.rend()) {
    uint32_t key = 0;
    if (p != positive.rend()) key = *p;
    if (n != negative.rend()) key = std::max(key, *n);
    while (p != positive.rend() && *p == key) ++tp, ++p;
    while (n != negative.rend() && *n == key) ++fp, ++n;
    counts.thresholds.push_back(FromOrderedKey(key));
    counts.true_positives.push_back(tp);
    counts.false_positives.push_back(fp);
  }
  return counts;
}

BinaryMetrics ComputeBinaryMetrics(const RankedCounts& counts) {
  BinaryMetrics metrics;
  const int64_t P = counts.positives, N = counts.negatives;
  if (P == 0 || N == 0) return metrics;
  // AUROC exactly: twice the area in units of one positive by one negative fits in 64 bits.
  uint64_t twice_area = 0;
  int64_t previous_tp = 0, previous_fp = 0;
  double ap = 0, best_f1 = 0, best_threshold = counts.thresholds.front();
  std::vector<double> recall = {}, precision = {};
  for (size_t i = 0; i < counts.thresholds.size(); ++i) {
    const int64_t tp = counts.true_positives[i], fp = counts.false_positives[i];
    twice_area += static_cast<uint64_t>(fp - previous_fp) * static_cast<uint64_t>(tp + previous_tp);
    const double p = static_cast<double>(tp) / static_cast<double>(tp + fp);
    const double r = static_cast<double>(tp) / static_cast<double>(P);
    ap += (r - static_cast<double>(previous_tp) / static_cast<double>(P)) * p;
    if (p + r > 0) {
      const double f1 = 2 * p * r / (p + r);
      if (f1 > best_f1) best_f1 = f1, best_threshold = counts.thresholds[i];
    }
    recall.push_back(r);
    precision.push_back(p);
    previous_tp = tp;
    previous_fp = fp;
  }
  metrics.auroc = static_cast<double>(twice_area) / (2.0 * static_cast<double>(P) * static_cast<double>(N));
  metrics.ap = ap;
  metrics.f1max = best_f1;
  metrics.f1max_threshold = best_threshold;
  // The PR curve ends at recall 0 with precision 1, as scikit-learn's precision_recall_curve.
  recall.insert(recall.begin(), 0.0);
  precision.insert(precision.begin(), 1.0);
  metrics.aupr = Trapezoid(recall, precision);
  return metrics;
}

std::vector<CurvePoint> RocCurve(const RankedCounts& counts, size_t max_points) {
  std::vector<CurvePoint> curve;
  if (counts.positives == 0 || counts.negatives == 0) return curve;
  curve.push_back({0, 0});
  for (size_t i : SampleIndices(counts.thresholds.size(), max_points)) {
    curve.push_back({static_cast<double>(counts.false_positives[i]) / counts.negatives,
                     static_cast<double>(counts.true_positives[i]) / counts.positives});
  }
  return curve;
}

std::vector<CurvePoint> PrCurve(const RankedCounts& counts, size_t max_points) {
  std::vector<CurvePoint> curve;
  if (counts.positives == 0 || counts.negatives == 0) return curve;
  curve.push_back({0, 1});
  for (size_t i : SampleIndices(counts.thresholds.size(), max_points)) {
    const int64_t tp = counts.true_positives[i], fp = counts.false_positives[i];
    curve.push_back({static_cast<double>(tp) / counts.positives, static_cast<double>(tp) / (tp + fp)});
  }
  return curve;
}

std::optional<double> ComputePro(const std::vector<cv::Mat>& maps, const std::vector<cv::Mat>& masks) {
  constexpr int kSteps = 200;
  constexpr double kMaxFpr = 0.3;
  if (maps.size() != masks.size()) throw std::invalid_argument("ComputePro: maps and masks differ in count");
  double low = INFINITY, high = -INFINITY;
  for (size_t i = 0; i < maps.size(); ++i) {
    if (maps[i].type() != CV_32F || masks[i].type() != CV_8U || maps[i].size() != masks[i].size()) {
      throw std::invalid_argument("ComputePro: maps must be CV_32F and masks CV_8U of the same size");
    }
    double a, b;
    cv::minMaxLoc(maps[i], &a, &b);
    low = std::min(low, a);
    high = std::max(high, b);
  }
  const double step = (high - low) / kSteps;
  // For each pixel, how many thresholds it exceeds (a > th_k for k < that count): one pass over
  // the pixels, then per-threshold counts are suffix sums.
  auto exceeded = [&](float value) {
    if (!(step > 0) || std::isnan(value)) return 0;
    int k = static_cast<int>(std::floor((value - low) / step));
    k = std::clamp(k, 0, kSteps);
    while (k > 0 && !(value > low + (k - 1) * step)) --k;
    while (k < kSteps && value > low + k * step) ++k;
    return k;  // thresholds 0..k-1 are below the value
  };
  std::vector<int64_t> negative_hist(kSteps + 1, 0);
  std::vector<std::vector<int64_t>> region_hists;  // per region, pixels exceeding exactly k thresholds
  std::vector<int64_t> region_areas;
  int64_t negatives = 0;
  for (size_t i = 0; i < maps.size(); ++i) {
    cv::Mat binary = masks[i] != 0, labels;
    const int regions = cv::connectedComponents(binary, labels, 8, CV_32S);
    const size_t base = region_hists.size();
    region_hists.resize(base + regions - 1, std::vector<int64_t>(kSteps + 1, 0));
    region_areas.resize(base + regions - 1, 0);
    for (int y = 0; y < maps[i].rows; ++y) {
      const float* a = maps[i].ptr<float>(y);
      const int* label = labels.ptr<int>(y);
      for (int x = 0; x < maps[i].cols; ++x) {
        const int k = exceeded(a[x]);
        if (label[x] == 0) {
          ++negative_hist[k];
          ++negatives;
        } else {
          ++region_hists[base + label[x] - 1][k];
          ++region_areas[base + label[x] - 1];
        }
      }
    }
  }
  if (region_hists.empty()) return std::nullopt;
  // Pixels above threshold k: those exceeding more than k thresholds (suffix sums).
  auto to_suffix_sums = [](std::vector<int64_t>& hist) {
    for (int j = kSteps - 1; j >= 0; --j) hist[j] += hist[j + 1];
  };
  to_suffix_sums(negative_hist);
  for (auto& hist : region_hists) to_suffix_sums(hist);
  auto above = [](const std::vector<int64_t>& suffix, int k) { return suffix[k + 1]; };
  std::vector<double> fprs, pros;
  for (int k = 0; k < kSteps; ++k) {
    const double fpr = negatives > 0 ? static_cast<double>(above(negative_hist, k)) / negatives : 0.0;
    if (!(fpr < kMaxFpr)) continue;
    double overlap = 0;
    for (size_t r = 0; r < region_hists.size(); ++r) {
      overlap += static_cast<double>(above(region_hists[r], k)) / region_areas[r];
    }
    fprs.push_back(fpr);
    pros.push_back(overlap / region_hists.size());
  }
  if (fprs.empty()) return std::nullopt;
  const auto [fpr_low, fpr_high] = std::minmax_element(fprs.begin(), fprs.end());
  const double range = *fpr_high - *fpr_low;
  if (!(range > 0)) return std::nullopt;  // the reference's normalisation divides 0 by 0
  const double offset = *fpr_low;
  for (double& fpr : fprs) fpr = (fpr - offset) / range;
  return Trapezoid(fprs, pros);
}

std::optional<double> OperatingPoint::precision() const {
  return Ratio(true_positives, true_positives + false_positives);
}
std::optional<double> OperatingPoint::recall() const { return Ratio(true_positives, true_positives + false_negatives); }
std::optional<double> OperatingPoint::f1() const {
  const auto p = precision(), r = recall();
  if (!p || !r) return std::nullopt;
  return *p + *r > 0 ? 2 * *p * *r / (*p + *r) : 0.0;
}

}  // namespace anoclip::eval
