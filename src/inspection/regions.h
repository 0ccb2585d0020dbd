// Defect regions: connected components of a thresholded heatmap (OpenCV), with box, area,
// peak/mean score and outer contour. Pure OpenCV, no torch; stateless and thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include <opencv2/core/mat.hpp>
#include <opencv2/core/types.hpp>

#include "absl/status/statusor.h"

namespace anoclip::inspection {

struct Region {
  int x = 0, y = 0, width = 0, height = 0;  // bounding box, pixels
  int64_t area = 0;                          // pixels above the threshold in this component
  float peak = 0.f;                          // max heatmap value inside
  float mean = 0.f;                          // mean heatmap value inside
  std::vector<cv::Point> contour;            // outer contour polygon
};

struct RegionOptions {
  double threshold = 0.5;  // pixel belongs to a region if value > threshold
  int64_t min_area = 1;    // smaller components are dropped
  int connectivity = 8;
};

// `heatmap` is CV_32F single channel. Components of the pixels > threshold with the given
// connectivity; components with area < min_area are dropped; the contour is the largest outer
// contour (RETR_EXTERNAL) of the component, in heatmap coordinates. Sorted by peak, descending
// (ties in raster order of the components). InvalidArgument for an empty or non-float map, a
// non-finite threshold, connectivity other than 4 or 8, or negative min_area.
absl::StatusOr<std::vector<Region>> FindRegions(const cv::Mat& heatmap, const RegionOptions& options);

}  // namespace anoclip::inspection
