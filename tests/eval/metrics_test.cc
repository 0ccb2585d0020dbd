// The metrics against the reference's values on its three synthetic sets
// (tiny-vit/metrics_golden.*; README tolerances: 1e-6, PRO 1e-3), and the degenerate cases.
#include <ATen/ATen.h>

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "eval/metrics.h"
#include "io/state_dict.h"
#include "test_util.h"

namespace anoclip::eval {
namespace {

constexpr double kMetricTolerance = 1e-6;
constexpr double kProTolerance = 1e-3;

struct GoldenSet {
  std::vector<float> image_scores;
  std::vector<uint8_t> image_labels;
  std::vector<cv::Mat> maps, masks;
};

const io::StateDict& Tensors() {
  static const io::StateDict* tensors = [] {
    auto loaded = io::ReadSafetensors(::anoclip::testing::TinyVitDir() + "/metrics_golden.safetensors");
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    return new io::StateDict(loaded.ok() ? std::move(loaded).value() : io::StateDict());
  }();
  return *tensors;
}

nlohmann::json Expected() {
  std::ifstream in(::anoclip::testing::TinyVitDir() + "/metrics_golden.json");
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

GoldenSet LoadSet(int index) {
  const std::string prefix = "m" + std::to_string(index) + "/";
  GoldenSet set;
  const at::Tensor gt_image = Tensors().at(prefix + "gt_image").to(at::kLong).contiguous();
  const at::Tensor score_image = Tensors().at(prefix + "score_image").to(at::kFloat).contiguous();
  const at::Tensor gt_masks = Tensors().at(prefix + "gt_masks").to(at::kByte).contiguous();
  const at::Tensor maps = Tensors().at(prefix + "anomaly_maps").to(at::kFloat).contiguous();
  for (int64_t i = 0; i < gt_image.numel(); ++i) {
    set.image_labels.push_back(static_cast<uint8_t>(gt_image[i].item<int64_t>()));
    set.image_scores.push_back(score_image[i].item<float>());
  }
  const int rows = static_cast<int>(maps.size(1)), cols = static_cast<int>(maps.size(2));
  for (int64_t i = 0; i < maps.size(0); ++i) {
    set.maps.push_back(cv::Mat(rows, cols, CV_32F, maps[i].data_ptr<float>()).clone());
    set.masks.push_back(cv::Mat(rows, cols, CV_8U, gt_masks[i].data_ptr<uint8_t>()).clone());
  }
  return set;
}

RankedCounts RankPixels(const GoldenSet& set) {
  std::vector<float> scores;
  std::vector<uint8_t> labels;
  for (size_t i = 0; i < set.maps.size(); ++i) {
    scores.insert(scores.end(), set.maps[i].begin<float>(), set.maps[i].end<float>());
    labels.insert(labels.end(), set.masks[i].begin<uint8_t>(), set.masks[i].end<uint8_t>());
  }
  return RankScores(scores, labels);
}

TEST(MetricsTest, MatchTheReferenceOnItsThreeSets) {
  const nlohmann::json expected = Expected();
  ASSERT_EQ(expected["cases"].size(), 3u);
  for (const auto& golden : expected["cases"]) {
    const int index = golden["case"];
    SCOPED_TRACE(index);
    const GoldenSet set = LoadSet(index);
    const BinaryMetrics image = ComputeBinaryMetrics(RankScores(set.image_scores, set.image_labels));
    ASSERT_TRUE(image.auroc && image.ap && image.f1max && image.aupr);
    EXPECT_NEAR(*image.auroc, golden["image_auroc"].get<double>(), kMetricTolerance);
    EXPECT_NEAR(*image.ap, golden["image_ap"].get<double>(), kMetricTolerance);
    EXPECT_NEAR(*image.f1max, golden["image_f1max"].get<double>(), kMetricTolerance);
    EXPECT_NEAR(*image.aupr, golden["image_aupr_trapezoid"].get<double>(), kMetricTolerance);
    const BinaryMetrics pixel = ComputeBinaryMetrics(RankPixels(set));
    ASSERT_TRUE(pixel.auroc && pixel.ap && pixel.f1max);
    EXPECT_NEAR(*pixel.auroc, golden["pixel_auroc"].get<double>(), kMetricTolerance);
    EXPECT_NEAR(*pixel.ap, golden["pixel_ap"].get<double>(), kMetricTolerance);
    EXPECT_NEAR(*pixel.f1max, golden["pixel_f1max"].get<double>(), kMetricTolerance);
    const auto pro = ComputePro(set.maps, set.masks);
    ASSERT_TRUE(pro.has_value());
    EXPECT_NEAR(*pro, golden["pro_reference_200_steps_fpr0.3"].get<double>(), kProTolerance);
  }
}

TEST(MetricsTest, OneLabelOnlyLeavesEveryRankingMetricUndefined) {
  for (uint8_t label : {0, 1}) {
    const RankedCounts counts = RankScores({0.1f, 0.7f, 0.3f}, {label, label, label});
    const BinaryMetrics metrics = ComputeBinaryMetrics(counts);
    EXPECT_FALSE(metrics.auroc || metrics.ap || metrics.f1max || metrics.aupr);
    EXPECT_TRUE(RocCurve(counts, 100).empty());
  }
}

TEST(MetricsTest, ConstantScoresRankNothing) {
  const BinaryMetrics metrics = ComputeBinaryMetrics(RankScores({0.5f, 0.5f, 0.5f, 0.5f}, {1, 0, 0, 0}));
  EXPECT_DOUBLE_EQ(*metrics.auroc, 0.5);
  EXPECT_DOUBLE_EQ(*metrics.ap, 0.25);  // the positive rate
  EXPECT_DOUBLE_EQ(*metrics.f1max, 2 * 0.25 / 1.25);
  EXPECT_DOUBLE_EQ(*metrics.aupr, (1 + 0.25) / 2);  // from (0,1) straight to (1,0.25)
  // A constant map exceeds no threshold: every FPR is 0, and the curve has no width.
  std::vector<cv::Mat> maps = {cv::Mat(8, 8, CV_32F, cv::Scalar(0.5f))};
  std::vector<cv::Mat> masks = {cv::Mat::zeros(8, 8, CV_8U)};
  masks[0](cv::Rect(2, 2, 3, 3)) = 255;
  EXPECT_FALSE(ComputePro(maps, masks).has_value());
}

TEST(MetricsTest, PerfectAndInvertedRankings) {
  const BinaryMetrics perfect = ComputeBinaryMetrics(RankScores({0.9f, 0.8f, 0.2f, 0.1f}, {1, 1, 0, 0}));
  EXPECT_DOUBLE_EQ(*perfect.auroc, 1.0);
  EXPECT_DOUBLE_EQ(*perfect.ap, 1.0);
  EXPECT_DOUBLE_EQ(*perfect.f1max, 1.0);
  EXPECT_DOUBLE_EQ(*perfect.aupr, 1.0);
  EXPECT_FLOAT_EQ(static_cast<float>(*perfect.f1max_threshold), 0.8f);
  const BinaryMetrics inverted = ComputeBinaryMetrics(RankScores({0.9f, 0.8f, 0.2f, 0.1f}, {0, 0, 1, 1}));
  EXPECT_DOUBLE_EQ(*inverted.auroc, 0.0);
  // Negative scores rank below positive ones (the sortable key flips their bits).
  const BinaryMetrics signs = ComputeBinaryMetrics(RankScores({-2.f, -0.5f, 0.f, 3.f}, {0, 0, 1, 1}));
  EXPECT_DOUBLE_EQ(*signs.auroc, 1.0);
}

TEST(MetricsTest, ProOfASeparatingMapIsOneAndNoRegionsIsUndefined) {
  std::vector<cv::Mat> masks = {cv::Mat::zeros(16, 16, CV_8U), cv::Mat::zeros(16, 16, CV_8U)};
  masks[0](cv::Rect(1, 1, 4, 4)) = 1;
  masks[0](cv::Rect(10, 10, 3, 2)) = 1;
  // Defect pixels in [0.5, 1), the rest spread over [0, 0.5): every region is covered while the
  // FPR falls from 1 to 0.
  std::vector<cv::Mat> maps;
  for (size_t i = 0; i < masks.size(); ++i) {
    cv::Mat map(16, 16, CV_32F);
    for (int y = 0; y < 16; ++y) {
      for (int x = 0; x < 16; ++x) {
        const float spread = ((y * 16 + x + 97 * static_cast<int>(i)) % 256) / 512.f;
        map.at<float>(y, x) = masks[i].at<uint8_t>(y, x) ? 0.5f + spread : spread;
      }
    }
    maps.push_back(map);
  }
  EXPECT_NEAR(*ComputePro(maps, masks), 1.0, 1e-12);
  // Two regions, one half covered: PRO 0.75 at every low FPR.
  cv::Mat half = maps[0].clone();
  half(cv::Rect(10, 10, 3, 2)).setTo(0.f);
  half.at<float>(10, 10) = half.at<float>(10, 11) = half.at<float>(10, 12) = 0.9f;
  EXPECT_NEAR(*ComputePro({half, maps[1]}, masks), 0.75, 0.01);
  const std::vector<cv::Mat> no_regions = {cv::Mat::zeros(16, 16, CV_8U)};
  EXPECT_FALSE(ComputePro({maps[1]}, no_regions).has_value());
  EXPECT_THROW(ComputePro({maps[0]}, {cv::Mat::zeros(15, 16, CV_8U)}), std::invalid_argument);
}

TEST(MetricsTest, OperatingPointCounts) {
  OperatingPoint point;
  point.true_positives = 3;
  point.false_positives = 1;
  point.false_negatives = 1;
  point.true_negatives = 5;
  EXPECT_DOUBLE_EQ(*point.precision(), 0.75);
  EXPECT_DOUBLE_EQ(*point.recall(), 0.75);
  EXPECT_DOUBLE_EQ(*point.f1(), 0.75);
  EXPECT_FALSE(OperatingPoint{}.precision().has_value());
}

}  // namespace
}  // namespace anoclip::eval
