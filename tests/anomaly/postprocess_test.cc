// Regions on synthetic maps with known blobs; calibration on synthetic score sets.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <opencv2/imgproc.hpp>

#include "anomaly/calibration.h"
#include "anomaly/regions.h"

namespace anoclip::anomaly {
namespace {

TEST(RegionsTest, FindsKnownBlobsWithExactBoxesAndAreas) {
  cv::Mat map(64, 80, CV_32F, cv::Scalar(0.1f));
  map(cv::Rect(5, 6, 10, 4)) = 0.8f;     // 40 px
  map(cv::Rect(40, 30, 3, 3)) = 0.6f;    // 9 px
  map.at<float>(31, 41) = 0.95f;         // peak inside the second blob
  map(cv::Rect(70, 60, 1, 1)) = 0.7f;    // 1 px
  auto regions = FindRegions(map, {0.5, 1, 8});
  ASSERT_TRUE(regions.ok());
  ASSERT_EQ(regions->size(), 3u);
  const Region& first = (*regions)[0];  // highest peak first
  EXPECT_EQ(first.x, 40);
  EXPECT_EQ(first.y, 30);
  EXPECT_EQ(first.width, 3);
  EXPECT_EQ(first.height, 3);
  EXPECT_EQ(first.area, 9);
  EXPECT_FLOAT_EQ(first.peak, 0.95f);
  EXPECT_NEAR(first.mean, (8 * 0.6 + 0.95) / 9, 1e-6);
  const Region& big = (*regions)[1];
  EXPECT_EQ(big.x, 5);
  EXPECT_EQ(big.y, 6);
  EXPECT_EQ(big.width, 10);
  EXPECT_EQ(big.height, 4);
  EXPECT_EQ(big.area, 40);
  EXPECT_GE(big.contour.size(), 4u);
  auto filtered = FindRegions(map, {0.5, 5, 8});
  ASSERT_TRUE(filtered.ok());
  EXPECT_EQ(filtered->size(), 2u);
  auto none = FindRegions(map, {0.99, 1, 8});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST(RegionsTest, ConnectivityDecidesWhetherDiagonalsJoin) {
  cv::Mat map(10, 10, CV_32F, cv::Scalar(0.f));
  map.at<float>(2, 2) = 1.f;
  map.at<float>(3, 3) = 1.f;
  EXPECT_EQ(FindRegions(map, {0.5, 1, 8})->size(), 1u);
  EXPECT_EQ(FindRegions(map, {0.5, 1, 4})->size(), 2u);
}

TEST(RegionsTest, RejectsBadInput) {
  cv::Mat map(4, 4, CV_32F, cv::Scalar(0.f));
  EXPECT_FALSE(FindRegions(cv::Mat(), {}).ok());
  EXPECT_FALSE(FindRegions(cv::Mat(4, 4, CV_8U), {}).ok());
  EXPECT_FALSE(FindRegions(map, {NAN, 1, 8}).ok());
  EXPECT_FALSE(FindRegions(map, {0.5, 1, 6}).ok());
  EXPECT_FALSE(FindRegions(map, {0.5, -1, 8}).ok());
}

std::vector<cv::Mat> Maps(int n, float base) {
  std::vector<cv::Mat> maps;
  for (int i = 0; i < n; ++i) {
    cv::Mat map(20, 10, CV_32F);  // 200 values: base + k/1000 for k in 0..199
    for (int k = 0; k < 200; ++k) map.at<float>(k / 10, k % 10) = base + k / 1000.f;
    maps.push_back(map);
  }
  return maps;
}

TEST(CalibrationTest, FitsTheDocumentedThresholds) {
  const std::vector<float> scores = {0.40f, 0.42f, 0.44f, 0.46f, 0.48f};
  auto calibration = FitCalibration(scores, Maps(5, 0.3f));
  ASSERT_TRUE(calibration.ok()) << calibration.status();
  const double std = std::sqrt((0.04 * 0.04 * 2 + 0.02 * 0.02 * 2) / 5);
  EXPECT_NEAR(calibration->image.threshold, 0.48 + std, 1e-6);
  EXPECT_NEAR(calibration->image.median, 0.44, 1e-6);
  // 99.5th percentile of 0.3 + {0..199}/1000 (each 5 times): index round(0.995*999) = 994 -> k = 198.
  EXPECT_NEAR(calibration->pixel.threshold, 0.3 + 0.198, 1e-6);
  EXPECT_NEAR(calibration->pixel.median, 0.3 + 0.1, 1e-3);
}

TEST(CalibrationTest, MappingIsMonotoneWithOneHalfAtTheThreshold) {
  ScoreScale scale{0.6, 0.5, 0.58, 10};
  EXPECT_DOUBLE_EQ(scale.Calibrate(0.6), 0.5);
  EXPECT_DOUBLE_EQ(scale.Calibrate(0.5), 0.0);
  EXPECT_DOUBLE_EQ(scale.Calibrate(0.7), 1.0);
  EXPECT_DOUBLE_EQ(scale.Calibrate(0.1), 0.0);
  double previous = -1;
  for (double x = 0.4; x < 0.8; x += 0.01) {
    EXPECT_GE(scale.Calibrate(x), previous);
    previous = scale.Calibrate(x);
  }
  cv::Mat raw(1, 3, CV_32F);
  raw.at<float>(0) = 0.5f;
  raw.at<float>(1) = 0.6f;
  raw.at<float>(2) = 0.9f;
  cv::Mat calibrated = scale.CalibrateMap(raw);
  EXPECT_NEAR(calibrated.at<float>(0), 0.0, 1e-6);
  EXPECT_NEAR(calibrated.at<float>(1), 0.5, 1e-6);
  EXPECT_NEAR(calibrated.at<float>(2), 1.0, 1e-6);
}

TEST(CalibrationTest, SavesAndLoads) {
  auto calibration = FitCalibration({0.4f, 0.41f, 0.43f, 0.45f, 0.47f, 0.5f}, Maps(6, 0.2f));
  ASSERT_TRUE(calibration.ok());
  calibration->class_name = "bottle";
  calibration->kind = "object";
  calibration->model_id = "abc";
  const std::string path = ::testing::TempDir() + "/calibration.json";
  ASSERT_TRUE(SaveCalibration(path, *calibration).ok());
  auto loaded = LoadCalibration(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->class_name, "bottle");
  EXPECT_EQ(loaded->num_images, 6);
  EXPECT_DOUBLE_EQ(loaded->image.threshold, calibration->image.threshold);
  EXPECT_DOUBLE_EQ(loaded->pixel.threshold, calibration->pixel.threshold);
}

TEST(CalibrationTest, BadInputsAreRejected) {
  EXPECT_EQ(FitCalibration({0.4f, 0.5f}, Maps(2, 0.1f)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(FitCalibration({0.4f, 0.5f, 0.5f, 0.5f, NAN}, Maps(5, 0.1f)).ok());
  EXPECT_FALSE(FitCalibration({0.4f, 0.5f, 0.5f, 0.5f, 0.5f}, Maps(4, 0.1f)).ok());
  EXPECT_EQ(LoadCalibration("/nonexistent.json").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(ParseCalibration("{not json").ok());
  auto missing = ParseCalibration(R"({"format_version":1,"class":"b","kind":"object","model":"m","num_images":5,"image":{"threshold":0.5,"median":0.4,"max":0.45}})");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find("\"pixel\""), std::string::npos) << missing.status();
  auto wrong_type = ParseCalibration(R"({"format_version":1,"class":"b","kind":"object","model":"m","num_images":5,"image":{"threshold":"x","median":0.4,"max":0.45},"pixel":{"threshold":0.5,"median":0.4,"max":0.45}})");
  ASSERT_FALSE(wrong_type.ok());
  EXPECT_NE(std::string(wrong_type.status().message()).find("image."), std::string::npos) << wrong_type.status();
  for (double bad : {0.0, 1.0, -0.2, 1.5, static_cast<double>(NAN)}) {
    EXPECT_EQ(ValidateThreshold(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE(ValidateThreshold(0.5).ok());
}

}  // namespace
}  // namespace anoclip::anomaly
