#include "eval/evaluation.h"

#include <cmath>
#include <functional>

#include <opencv2/core.hpp>

#include "absl/strings/str_cat.h"
#include "inspection/decision.h"
#include "common/status_macros.h"

namespace anoclip::eval {

absl::StatusOr<ClassEvaluation> EvaluateClass(const std::string& name, const std::string& prompt_class,
                                              const std::vector<ImageResult>& results, const OperatingRule& rule) {
  if (results.empty()) return absl::InvalidArgumentError(absl::StrCat("class ", name, " has no scored images"));
  ClassEvaluation out;
  out.name = name;
  out.prompt_class = prompt_class;
  out.images = static_cast<int64_t>(results.size());
  out.has_masks = true;
  const cv::Size size = results.front().map.size();
  std::vector<float> image_scores;
  std::vector<uint8_t> image_labels;
  for (const auto& result : results) {
    if (result.map.size() != size || result.map.type() != CV_32F) {
      return absl::InvalidArgumentError(absl::StrCat(result.image, ": its map is not the class's size"));
    }
    if (!std::isfinite(result.image_score) || !cv::checkRange(result.map)) {
      return absl::InvalidArgumentError(absl::StrCat(result.image, ": non-finite score"));
    }
    out.has_masks = out.has_masks && !result.mask.empty();
    out.anomalous += result.anomalous ? 1 : 0;
    image_scores.push_back(result.image_score);
    image_labels.push_back(result.anomalous ? 1 : 0);
  }
  const RankedCounts image_counts = RankScores(image_scores, image_labels);
  out.image = ComputeBinaryMetrics(image_counts);
  out.image_roc = RocCurve(image_counts, kCurvePoints);
  out.image_pr = PrCurve(image_counts, kCurvePoints);

  out.pixel_low = INFINITY;
  out.pixel_high = -INFINITY;
  for (const auto& result : results) {
    double low, high;
    cv::minMaxLoc(result.map, &low, &high);
    out.pixel_low = std::min(out.pixel_low, low);
    out.pixel_high = std::max(out.pixel_high, high);
  }
  if (out.has_masks) {
    std::vector<float> pixel_scores;
    std::vector<uint8_t> pixel_labels;
    std::vector<cv::Mat> maps, masks;
    pixel_scores.reserve(results.size() * size.area());
    pixel_labels.reserve(results.size() * size.area());
    for (const auto& result : results) {
      const cv::Mat map = result.map.isContinuous() ? result.map : result.map.clone();
      const cv::Mat mask = result.mask.isContinuous() ? result.mask : result.mask.clone();
      pixel_scores.insert(pixel_scores.end(), map.ptr<float>(), map.ptr<float>() + map.total());
      pixel_labels.insert(pixel_labels.end(), mask.ptr<uint8_t>(), mask.ptr<uint8_t>() + mask.total());
      maps.push_back(map);
      masks.push_back(mask);
    }
    const RankedCounts pixel_counts = RankScores(pixel_scores, pixel_labels);
    out.pixel = ComputeBinaryMetrics(pixel_counts);
    out.pixel_roc = RocCurve(pixel_counts, kCurvePoints);
    out.pixel_pr = PrCurve(pixel_counts, kCurvePoints);
    out.pro = ComputePro(maps, masks);
  }

  if (rule.calibration != nullptr || rule.threshold) {
    OperatingPoint image_point, pixel_point;
    for (const auto& result : results) {
      ANOCLIP_ASSIGN_OR_RETURN(auto decision,
                               inspection::Decide(result.image_score, result.map, rule.calibration, rule.threshold, 1));
      const bool flagged = decision.is_anomalous.value_or(false);
      (flagged ? (result.anomalous ? image_point.true_positives : image_point.false_positives)
               : (result.anomalous ? image_point.false_negatives : image_point.true_negatives))++;
      if (out.has_masks) {
        const cv::Mat predicted = decision.map > *decision.threshold;
        const cv::Mat truth = result.mask != 0;
        const int64_t both = cv::countNonZero(predicted & truth), predicted_count = cv::countNonZero(predicted);
        const int64_t truth_count = cv::countNonZero(truth);
        pixel_point.true_positives += both;
        pixel_point.false_positives += predicted_count - both;
        pixel_point.false_negatives += truth_count - both;
        pixel_point.true_negatives += static_cast<int64_t>(truth.total()) - predicted_count - truth_count + both;
      }
    }
    out.image_point = image_point;
    if (out.has_masks) out.pixel_point = pixel_point;
  }
  return out;
}

MeanMetrics MeanOverClasses(const std::vector<ClassEvaluation>& classes) {
  using Getter = std::function<std::optional<double>(const ClassEvaluation&)>;
  auto mean = [&](const Getter& get) -> std::optional<double> {
    double sum = 0;
    int count = 0;
    for (const auto& c : classes) {
      if (auto value = get(c)) sum += *value, ++count;
    }
    if (count == 0) return std::nullopt;
    return sum / count;
  };
  auto point = [](const std::optional<OperatingPoint>& p, std::optional<double> (OperatingPoint::*f)() const) {
    return p ? ((*p).*f)() : std::nullopt;
  };
  MeanMetrics m;
  m.image_auroc = mean([](const ClassEvaluation& c) { return c.image.auroc; });
  m.image_ap = mean([](const ClassEvaluation& c) { return c.image.ap; });
  m.image_f1max = mean([](const ClassEvaluation& c) { return c.image.f1max; });
  m.image_aupr = mean([](const ClassEvaluation& c) { return c.image.aupr; });
  m.pixel_auroc = mean([](const ClassEvaluation& c) { return c.pixel.auroc; });
  m.pixel_ap = mean([](const ClassEvaluation& c) { return c.pixel.ap; });
  m.pixel_f1max = mean([](const ClassEvaluation& c) { return c.pixel.f1max; });
  m.pro = mean([](const ClassEvaluation& c) { return c.pro; });
  m.image_precision = mean([&](const ClassEvaluation& c) { return point(c.image_point, &OperatingPoint::precision); });
  m.image_recall = mean([&](const ClassEvaluation& c) { return point(c.image_point, &OperatingPoint::recall); });
  m.image_f1 = mean([&](const ClassEvaluation& c) { return point(c.image_point, &OperatingPoint::f1); });
  m.pixel_precision = mean([&](const ClassEvaluation& c) { return point(c.pixel_point, &OperatingPoint::precision); });
  m.pixel_recall = mean([&](const ClassEvaluation& c) { return point(c.pixel_point, &OperatingPoint::recall); });
  m.pixel_f1 = mean([&](const ClassEvaluation& c) { return point(c.pixel_point, &OperatingPoint::f1); });
  return m;
}

}  // namespace anoclip::eval
