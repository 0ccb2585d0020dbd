// Heatmap rendering: resize to the caller's size, grayscale on a chosen scale, JET colour blend,
// colour bar and caption, PNG encode. Every image here is in RGB order; the BGR of OpenCV's
// colour maps and codecs stays inside. Stateless and thread-safe.
#pragma once

#include <string>
#include <vector>

#include <opencv2/core/mat.hpp>

#include "absl/status/statusor.h"

namespace anoclip::inspection {

// Bilinear resize of a CV_32F heatmap to width×height.
cv::Mat ResizeHeatmap(const cv::Mat& heatmap, int width, int height);

// Maps values in [low, high] linearly to 0..255 (clamped). If low >= high, uses the map's own
// min..max (a flat map renders black).
cv::Mat HeatmapToGray(const cv::Mat& heatmap, float low, float high);

// JET colour of one gray level, RGB.
cv::Vec3b JetColour(int gray);

// JET colour map of `gray` (CV_8U; resized to `rgb` if its size differs) blended over `rgb`
// (CV_8UC3) as (1-alpha)*rgb + alpha*colour, and the given contours (image coordinates) drawn
// in white, 2 px. Returns RGB CV_8UC3 of rgb's size.
cv::Mat BlendHeatmap(const cv::Mat& rgb, const cv::Mat& gray, double alpha,
                     const std::vector<std::vector<cv::Point>>& contours = {});

// Where DrawColourBar puts the bar in an image of `size`: along the right edge, top half.
cv::Rect ColourBarRect(cv::Size size);

// Draws, in place on an RGB CV_8UC3 image, a vertical JET bar (gray 255 at the top, 0 at the
// bottom) in a black frame at ColourBarRect, labelled `high` above and `low` below it.
void DrawColourBar(cv::Mat& rgb, const std::string& low, const std::string& high);

// Draws `text` in white on a black box in the top-left corner, the font shrunk to fit beside
// the colour bar. Returns the box.
cv::Rect DrawCaption(cv::Mat& rgb, const std::string& text);

// PNG bytes of a CV_8U (gray) or CV_8UC3 (RGB order) image; InvalidArgument for anything else.
absl::StatusOr<std::string> EncodePng(const cv::Mat& image);
absl::Status WritePng(const std::string& path, const cv::Mat& image);

}  // namespace anoclip::inspection
