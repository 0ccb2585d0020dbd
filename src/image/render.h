// Heatmap rendering: resize to the caller's size, grayscale PNG, JET colour overlay, PNG encode.
#pragma once

#include <string>
#include <vector>

#include <opencv2/core/mat.hpp>

#include "absl/status/statusor.h"

namespace anoclip::image {

// Bilinear resize of a CV_32F heatmap to width×height.
cv::Mat ResizeHeatmap(const cv::Mat& heatmap, int width, int height);

// Maps values in [low, high] linearly to 0..255 (clamped). If low >= high, uses the map's own
// min..max (a flat map renders black).
cv::Mat HeatmapToGray(const cv::Mat& heatmap, float low, float high);

// JET colour map of `gray` (CV_8U) blended over `rgb` (CV_8UC3, same size) with `alpha`,
// and the given contours (image coordinates) drawn in white. Returns RGB CV_8UC3.
cv::Mat RenderOverlay(const cv::Mat& rgb, const cv::Mat& gray, double alpha,
                      const std::vector<std::vector<cv::Point>>& contours = {});

// PNG bytes of a CV_8U (gray) or CV_8UC3 (RGB order) image.
absl::StatusOr<std::string> EncodePng(const cv::Mat& image);
absl::Status WritePng(const std::string& path, const cv::Mat& image);

}  // namespace anoclip::image
