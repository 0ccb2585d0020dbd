// Heatmap rendering: resize to the caller's size, grayscale PNG, JET colour overlay, PNG encode.
// Every image here is in RGB order; the BGR of OpenCV's colour maps and codecs stays inside.
// Stateless and thread-safe.
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

// JET colour map of `gray` (CV_8U; resized to `rgb` if its size differs) blended over `rgb`
// (CV_8UC3) as (1-alpha)*rgb + alpha*colour, and the given contours (image coordinates) drawn
// in white, 2 px. Returns RGB CV_8UC3 of rgb's size.
cv::Mat RenderOverlay(const cv::Mat& rgb, const cv::Mat& gray, double alpha,
                      const std::vector<std::vector<cv::Point>>& contours = {});

// PNG bytes of a CV_8U (gray) or CV_8UC3 (RGB order) image; InvalidArgument for anything else.
absl::StatusOr<std::string> EncodePng(const cv::Mat& image);
absl::Status WritePng(const std::string& path, const cv::Mat& image);

}  // namespace anoclip::image
