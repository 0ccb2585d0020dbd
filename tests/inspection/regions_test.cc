// Regions on synthetic maps whose blobs, boxes, areas and scores are known exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "inspection/regions.h"

namespace anoclip::inspection {
namespace {

std::vector<cv::Point> Sorted(std::vector<cv::Point> points) {
  std::sort(points.begin(), points.end(), [](const cv::Point& a, const cv::Point& b) {
    return a.y != b.y ? a.y < b.y : a.x < b.x;
  });
  return points;
}

// Corners of a w×h rectangle at (x, y), as CHAIN_APPROX_SIMPLE gives them.
std::vector<cv::Point> Corners(int x, int y, int w, int h) {
  return Sorted({{x, y}, {x + w - 1, y}, {x, y + h - 1}, {x + w - 1, y + h - 1}});
}

cv::Mat ThreeBlobs() {
  cv::Mat map(64, 80, CV_32F, cv::Scalar(0.1f));
  map(cv::Rect(5, 6, 10, 4)) = 0.8f;   // 40 px
  map(cv::Rect(40, 30, 3, 3)) = 0.6f;  // 9 px, with a peak inside
  map.at<float>(31, 41) = 0.95f;
  map.at<float>(63, 79) = 0.7f;  // 1 px in the corner
  return map;
}

TEST(RegionsTest, KnownBlobsGiveExactBoxesAreasScoresAndContours) {
  auto regions = FindRegions(ThreeBlobs(), {0.5, 1, 8});
  ASSERT_TRUE(regions.ok()) << regions.status();
  ASSERT_EQ(regions->size(), 3u);

  const Region& peaked = (*regions)[0];  // highest peak first
  EXPECT_EQ(peaked.x, 40);
  EXPECT_EQ(peaked.y, 30);
  EXPECT_EQ(peaked.width, 3);
  EXPECT_EQ(peaked.height, 3);
  EXPECT_EQ(peaked.area, 9);
  EXPECT_FLOAT_EQ(peaked.peak, 0.95f);
  EXPECT_NEAR(peaked.mean, (8 * 0.6 + 0.95) / 9, 1e-6);
  EXPECT_EQ(Sorted(peaked.contour), Corners(40, 30, 3, 3));

  const Region& big = (*regions)[1];
  EXPECT_EQ(big.x, 5);
  EXPECT_EQ(big.y, 6);
  EXPECT_EQ(big.width, 10);
  EXPECT_EQ(big.height, 4);
  EXPECT_EQ(big.area, 40);
  EXPECT_FLOAT_EQ(big.peak, 0.8f);
  EXPECT_FLOAT_EQ(big.mean, 0.8f);
  EXPECT_EQ(Sorted(big.contour), Corners(5, 6, 10, 4));

  const Region& corner = (*regions)[2];
  EXPECT_EQ(corner.x, 79);
  EXPECT_EQ(corner.y, 63);
  EXPECT_EQ(corner.area, 1);
  EXPECT_FLOAT_EQ(corner.peak, 0.7f);
  EXPECT_EQ(corner.contour, std::vector<cv::Point>{cv::Point(79, 63)});
}

TEST(RegionsTest, MinAreaKeepsComponentsOfExactlyThatArea) {
  const cv::Mat map = ThreeBlobs();
  EXPECT_EQ(FindRegions(map, {0.5, 0, 8})->size(), 3u);
  EXPECT_EQ(FindRegions(map, {0.5, 2, 8})->size(), 2u);
  EXPECT_EQ(FindRegions(map, {0.5, 9, 8})->size(), 2u);
  auto large = FindRegions(map, {0.5, 10, 8});
  ASSERT_TRUE(large.ok());
  ASSERT_EQ(large->size(), 1u);
  EXPECT_EQ((*large)[0].area, 40);
  EXPECT_TRUE(FindRegions(map, {0.5, 41, 8})->empty());
}

TEST(RegionsTest, ThresholdIsStrict) {
  const cv::Mat map = ThreeBlobs();
  EXPECT_EQ(FindRegions(map, {0.6, 1, 8})->size(), 3u);  // the 0.6 pixels drop out, 0.95 stays
  auto at_peak = FindRegions(map, {0.6, 1, 8});
  EXPECT_EQ((*at_peak)[0].area, 1);
  EXPECT_TRUE(FindRegions(map, {0.95, 1, 8})->empty());
  EXPECT_EQ(FindRegions(map, {-1.0, 1, 8})->size(), 1u);  // everything: one region, the whole map
  EXPECT_EQ((*FindRegions(map, {-1.0, 1, 8}))[0].area, 64 * 80);
}

TEST(RegionsTest, ConnectivityDecidesWhetherDiagonalsJoin) {
  cv::Mat map(10, 10, CV_32F, cv::Scalar(0.f));
  map.at<float>(2, 2) = 1.f;
  map.at<float>(3, 3) = 1.f;
  auto eight = FindRegions(map, {0.5, 1, 8});
  ASSERT_EQ(eight->size(), 1u);
  EXPECT_EQ((*eight)[0].area, 2);
  EXPECT_EQ((*eight)[0].width, 2);
  auto four = FindRegions(map, {0.5, 1, 4});
  ASSERT_EQ(four->size(), 2u);
  // Equal peaks: raster order.
  EXPECT_EQ((*four)[0].y, 2);
  EXPECT_EQ((*four)[1].y, 3);
}

TEST(RegionsTest, RingAndLShapeHaveTheirOwnAreaAndOuterContour) {
  cv::Mat map(20, 20, CV_32F, cv::Scalar(0.f));
  map(cv::Rect(2, 2, 7, 7)) = 1.f;
  map(cv::Rect(4, 4, 3, 3)) = 0.f;  // hole: area 49 - 9, contour is the outside
  map(cv::Rect(12, 10, 2, 8)) = 0.7f;  // L: 16 + 8 px
  map(cv::Rect(14, 16, 4, 2)) = 0.7f;
  auto regions = FindRegions(map, {0.5, 1, 8});
  ASSERT_TRUE(regions.ok());
  ASSERT_EQ(regions->size(), 2u);
  const Region& ring = (*regions)[0];
  EXPECT_EQ(ring.area, 40);
  EXPECT_EQ(ring.width, 7);
  EXPECT_EQ(Sorted(ring.contour), Corners(2, 2, 7, 7));
  const Region& ell = (*regions)[1];
  EXPECT_EQ(ell.area, 24);
  EXPECT_EQ(ell.x, 12);
  EXPECT_EQ(ell.y, 10);
  EXPECT_EQ(ell.width, 6);
  EXPECT_EQ(ell.height, 8);
  // The corners of the L; the inner elbow is cut diagonally, as an 8-connected border runs.
  EXPECT_EQ(Sorted(ell.contour),
            Sorted({{12, 10}, {13, 10}, {13, 15}, {14, 16}, {17, 16}, {12, 17}, {17, 17}}));
}

TEST(RegionsTest, NanPixelsAreNeverAboveAndSubMapsWork) {
  cv::Mat map(8, 8, CV_32F, cv::Scalar(0.f));
  map.at<float>(1, 1) = std::numeric_limits<float>::quiet_NaN();
  map.at<float>(5, 5) = 0.9f;
  auto regions = FindRegions(map, {0.5, 1, 8});
  ASSERT_TRUE(regions.ok());
  ASSERT_EQ(regions->size(), 1u);
  EXPECT_EQ((*regions)[0].x, 5);

  // A view into a larger map: coordinates are the view's.
  auto view = FindRegions(map(cv::Rect(4, 4, 4, 4)), {0.5, 1, 8});
  ASSERT_TRUE(view.ok());
  ASSERT_EQ(view->size(), 1u);
  EXPECT_EQ((*view)[0].x, 1);
  EXPECT_EQ((*view)[0].y, 1);
}

TEST(RegionsTest, BadInputIsInvalidArgument) {
  const cv::Mat map(4, 4, CV_32F, cv::Scalar(0.f));
  const std::vector<std::pair<const char*, absl::Status>> cases = {
      {"empty", FindRegions(cv::Mat(), {}).status()},
      {"uint8", FindRegions(cv::Mat(4, 4, CV_8U, cv::Scalar(0)), {}).status()},
      {"float64", FindRegions(cv::Mat(4, 4, CV_64F, cv::Scalar(0)), {}).status()},
      {"two channels", FindRegions(cv::Mat(4, 4, CV_32FC2, cv::Scalar(0)), {}).status()},
      {"NaN threshold", FindRegions(map, {std::nan(""), 1, 8}).status()},
      {"infinite threshold", FindRegions(map, {INFINITY, 1, 8}).status()},
      {"connectivity 6", FindRegions(map, {0.5, 1, 6}).status()},
      {"connectivity 0", FindRegions(map, {0.5, 1, 0}).status()},
      {"negative min_area", FindRegions(map, {0.5, -1, 8}).status()},
  };
  for (const auto& [name, status] : cases) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << name << ": " << status;
  }
  EXPECT_NE(std::string(FindRegions(map, {0.5, 1, 6}).status().message()).find("4 or 8"), std::string::npos);
}

}  // namespace
}  // namespace anoclip::inspection
