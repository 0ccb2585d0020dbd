// The inspection step: decision, regions, heatmap on its scale, overlay, mask and file names.
#include <gtest/gtest.h>

#include <algorithm>

#include <filesystem>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "common/files.h"
#include "inspection/inspect.h"
#include "inspection/render.h"
#include "pixels.h"

namespace anoclip::inspection {
namespace {

// A model-resolution map: `base` everywhere, `spot` in a square at (12..19, 8..15).
cv::Mat Map(float base, float spot) {
  cv::Mat map(32, 32, CV_32F, cv::Scalar(base));
  // A little structure, as real maps have: good parts are not flat either.
  for (int y = 0; y < map.rows; ++y) {
    for (int x = 0; x < map.cols; ++x) map.at<float>(y, x) += 0.02f * static_cast<float>((x + 2 * y) % 5);
  }
  map(cv::Rect(12, 8, 8, 8)) = spot;
  return map;
}

const cv::Mat& Part() {
  static const cv::Mat part(240, 320, CV_8UC3, cv::Scalar(90, 110, 100));
  return part;
}

// Pixels the JET map's upper end makes red: red well above green and blue.
int RedPixels(const cv::Mat& rgb) {
  int red = 0;
  for (int y = 0; y < rgb.rows; ++y) {
    for (int x = 0; x < rgb.cols; ++x) {
      const cv::Vec3b p = rgb.at<cv::Vec3b>(y, x);
      red += p[0] > 100 && p[0] > p[1] + 40 && p[0] > p[2] + 40;
    }
  }
  return red;
}

// The part of an overlay below the caption and left of the colour bar.
cv::Mat Picture(const cv::Mat& overlay) {
  const cv::Rect bar = ColourBarRect(overlay.size());
  return overlay(cv::Rect(0, overlay.rows / 4, bar.x - 2, overlay.rows - overlay.rows / 4));
}

TEST(InspectTest, AThresholdGivesRegionsAVerdictAndAHeatmapOnTheFixedScale) {
  InspectOptions options;
  options.threshold = 0.5;
  options.size = Part().size();
  auto inspection = Inspect(0.7f, Map(0.2f, 0.9f), options);
  ASSERT_TRUE(inspection.ok()) << inspection.status();
  EXPECT_EQ(inspection->scores.size(), Part().size());
  EXPECT_EQ(inspection->heatmap.size(), Part().size());
  EXPECT_EQ(inspection->heatmap.type(), CV_8U);
  EXPECT_NEAR(inspection->max_pixel_score, 0.9f, 1e-5);
  ASSERT_EQ(inspection->regions.size(), 1u);
  EXPECT_NEAR(inspection->regions[0].peak, 0.9f, 1e-5);
  EXPECT_EQ(inspection->is_anomalous, true);
  EXPECT_FALSE(inspection->calibrated_image_score.has_value());
  // Fixed [0,1]: gray is 255 × score, whatever the map's own range.
  EXPECT_EQ(inspection->heatmap.at<uchar>(120, 160), cv::saturate_cast<uchar>(255 * inspection->scores.at<float>(120, 160)));
  EXPECT_EQ(inspection->heatmap.at<uchar>(5, 5), cv::saturate_cast<uchar>(255 * inspection->scores.at<float>(5, 5)));
  EXPECT_LT(inspection->heatmap.at<uchar>(5, 5), 80);
  EXPECT_EQ(inspection->scale.low, 0.0);
  EXPECT_EQ(inspection->scale.high, 1.0);
  EXPECT_EQ(Caption(*inspection), "score 0.700 ANOMALOUS");

  // No threshold: scores, no verdict, no regions.
  options.threshold.reset();
  inspection = Inspect(0.3f, Map(0.2f, 0.4f), options);
  ASSERT_TRUE(inspection.ok());
  EXPECT_FALSE(inspection->is_anomalous.has_value());
  EXPECT_TRUE(inspection->regions.empty());
  EXPECT_EQ(Caption(*inspection), "score 0.300 (no threshold)");
}

TEST(InspectTest, ACalibrationJudgesAndDrawsCalibratedScores) {
  Calibration calibration;
  calibration.image = ScoreScale{0.6, 0.4, 0.55, 10};
  calibration.pixel = ScoreScale{0.5, 0.3, 0.45, 1000};
  InspectOptions options;
  options.calibration = &calibration;
  auto inspection = Inspect(0.5f, Map(0.3f, 0.7f), options);
  ASSERT_TRUE(inspection.ok()) << inspection.status();
  ASSERT_TRUE(inspection->calibrated_image_score.has_value());
  EXPECT_NEAR(*inspection->calibrated_image_score, 0.25, 1e-9);
  EXPECT_TRUE(inspection->scale.calibrated);
  // The median pixel score draws black, the spot (at or above threshold + (threshold - median)) white.
  EXPECT_EQ(inspection->heatmap.at<uchar>(0, 0), 0);
  EXPECT_EQ(inspection->heatmap.at<uchar>(10, 14), 255);
  EXPECT_EQ(inspection->is_anomalous, true) << "the spot is a region";
  EXPECT_EQ(Caption(*inspection), "calibrated 0.250 ANOMALOUS");

  options.threshold = 0.5;
  EXPECT_EQ(Inspect(0.5f, Map(0.3f, 0.7f), options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(InspectTest, BadInputIsAClearError) {
  InspectOptions options;
  EXPECT_EQ(Inspect(0.5f, cv::Mat(), options).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Inspect(0.5f, cv::Mat(4, 4, CV_8U, cv::Scalar(1)), options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.min_region_area = -1;
  auto negative = Inspect(0.5f, Map(0.2f, 0.9f), options);
  EXPECT_EQ(negative.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(negative.status().message().find("min_region_area"), std::string::npos);
  options.min_region_area = 1;
  options.threshold = 1.5;
  EXPECT_EQ(Inspect(0.5f, Map(0.2f, 0.9f), options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(InspectTest, AGoodPartIsNotAsRedAsABadOneOnTheFixedScale) {
  InspectOptions options;
  options.size = Part().size();
  auto good = Inspect(0.2f, Map(0.15f, 0.25f), options);
  auto bad = Inspect(0.8f, Map(0.15f, 0.95f), options);
  ASSERT_TRUE(good.ok() && bad.ok());
  const int good_red = RedPixels(Picture(RenderOverlay(Part(), *good)));
  const int bad_red = RedPixels(Picture(RenderOverlay(Part(), *bad)));
  EXPECT_EQ(good_red, 0) << "nothing in a good part reaches the red end";
  EXPECT_GT(bad_red, 2000) << "the defect does";
  // Stretched per image (the old way, kept as an option) paints the good part's own maximum red.
  options.scale = HeatmapScale::kStretched;
  auto stretched = Inspect(0.2f, Map(0.15f, 0.25f), options);
  ASSERT_TRUE(stretched.ok());
  EXPECT_GT(RedPixels(Picture(RenderOverlay(Part(), *stretched))), 2000);
  double low = 0, high = 0;
  cv::minMaxLoc(stretched->heatmap, &low, &high);
  EXPECT_EQ(low, 0);
  EXPECT_EQ(high, 255);
  EXPECT_NEAR(stretched->scale.low, 0.15, 1e-6);
  EXPECT_NEAR(stretched->scale.high, 0.25, 1e-6);
}

TEST(InspectTest, TheOverlayCarriesTheColourBarAndTheCaption) {
  InspectOptions options;
  options.threshold = 0.5;
  options.size = Part().size();
  auto inspection = Inspect(0.8f, Map(0.15f, 0.95f), options);
  ASSERT_TRUE(inspection.ok());
  const cv::Mat overlay = RenderOverlay(Part(), *inspection);
  ASSERT_EQ(overlay.size(), Part().size());
  ASSERT_EQ(overlay.type(), CV_8UC3);
  const cv::Rect bar = ColourBarRect(overlay.size());
  const int x = bar.x + bar.width / 2;
  EXPECT_EQ(overlay.at<cv::Vec3b>(bar.y + 1, x), JetColour(255 - 255 / (bar.height - 1)));
  EXPECT_EQ(overlay.at<cv::Vec3b>(bar.br().y - 2, x), JetColour(255 - 255 * (bar.height - 2) / (bar.height - 1)));
  // The caption, drawn the same way on a copy of the blend, is what the overlay shows.
  cv::Mat blend = BlendHeatmap(Part(), inspection->heatmap, 0.5, {inspection->regions[0].contour});
  const cv::Rect box = DrawCaption(blend, "score 0.800 ANOMALOUS");
  EXPECT_EQ(cv::norm(overlay(box), blend(box), cv::NORM_INF), 0);
  EXPECT_GT(BrightPixels(overlay(box)), 30);
  // A different verdict, a different caption.
  inspection->is_anomalous = false;
  EXPECT_GT(cv::norm(RenderOverlay(Part(), *inspection)(box), overlay(box), cv::NORM_INF), 0);
}

TEST(InspectTest, TheMaskIsTheRegionsFilledAndOnlyWithADecision) {
  cv::Mat map(60, 60, CV_32F, cv::Scalar(0.1f));
  map(cv::Rect(10, 10, 30, 30)) = 0.9f;  // a ring: its hole is inside the region
  map(cv::Rect(14, 14, 22, 22)) = 0.1f;
  map(cv::Rect(50, 50, 2, 2)) = 0.9f;                                   // a speck under min area
  InspectOptions options;
  options.threshold = 0.5;
  options.min_region_area = 10;
  auto inspection = Inspect(0.3f, map, options);
  ASSERT_TRUE(inspection.ok());
  ASSERT_EQ(inspection->regions.size(), 1u);
  const cv::Mat mask = RenderMask(*inspection);
  EXPECT_EQ(mask.type(), CV_8U);
  EXPECT_EQ(mask.at<uchar>(25, 25), 255) << "filled to the outline";
  EXPECT_EQ(mask.at<uchar>(10, 10), 255);
  EXPECT_EQ(mask.at<uchar>(50, 50), 0) << "a dropped component is not in the mask";
  EXPECT_EQ(mask.at<uchar>(5, 5), 0);
  EXPECT_EQ(cv::countNonZero(mask), 30 * 30);

  auto images = EncodeImages(cv::Mat(60, 60, CV_8UC3, cv::Scalar(0, 0, 0)), *inspection);
  ASSERT_TRUE(images.ok()) << images.status();
  EXPECT_FALSE(images->mask_png.empty());
  const std::string dir = ::testing::TempDir() + "/inspect_images/sub";
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(WriteImages(*images, dir, "a.png_").ok());
  EXPECT_EQ(*ReadFileToString(dir + "/a.png_heatmap.png"), images->heatmap_png);
  EXPECT_EQ(*ReadFileToString(dir + "/a.png_overlay.png"), images->overlay_png);
  const cv::Mat read = cv::imread(dir + "/a.png_mask.png", cv::IMREAD_UNCHANGED);
  EXPECT_EQ(cv::norm(read, mask, cv::NORM_INF), 0);

  options.threshold.reset();
  inspection = Inspect(0.3f, map, options);
  ASSERT_TRUE(inspection.ok());
  images = EncodeImages(cv::Mat(60, 60, CV_8UC3, cv::Scalar(0, 0, 0)), *inspection);
  ASSERT_TRUE(images.ok());
  EXPECT_TRUE(images->mask_png.empty());
  ASSERT_TRUE(WriteImages(*images, dir, "b.png_").ok());
  EXPECT_TRUE(std::filesystem::exists(dir + "/b.png_overlay.png"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/b.png_mask.png"));
  EXPECT_EQ(WriteImages(*images, "/proc/no-such-dir", "x_").code(), absl::StatusCode::kPermissionDenied);
}

TEST(InspectTest, AnOverlayAtAnotherSizeIsFittedToTheHeatmap) {
  InspectOptions options;
  options.size = cv::Size(80, 80);
  auto inspection = Inspect(0.2f, Map(0.1f, 0.9f), options);
  ASSERT_TRUE(inspection.ok());
  EXPECT_EQ(RenderOverlay(Part(), *inspection).size(), cv::Size(80, 80));
}

}  // namespace
}  // namespace anoclip::inspection
