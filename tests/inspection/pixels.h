// Pixel counts the rendering tests share.
#pragma once

#include <algorithm>

#include <opencv2/core/mat.hpp>

namespace anoclip::inspection {

// Near-white pixels of an RGB image: text drawn anti-aliased in white.
inline int BrightPixels(const cv::Mat& rgb) {
  int bright = 0;
  for (int y = 0; y < rgb.rows; ++y) {
    for (int x = 0; x < rgb.cols; ++x) {
      const cv::Vec3b p = rgb.at<cv::Vec3b>(y, x);
      bright += std::min({p[0], p[1], p[2]}) > 180;
    }
  }
  return bright;
}

}  // namespace anoclip::inspection
