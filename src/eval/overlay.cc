#include "eval/overlay.h"

#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include "inspection/render.h"

namespace anoclip::eval {

cv::Mat RenderEvaluationOverlay(const cv::Mat& rgb, const cv::Mat& gray, const cv::Mat& mask,
                                const std::vector<std::vector<cv::Point>>& regions) {
  cv::Mat overlay = inspection::BlendHeatmap(rgb, gray, 0.5, regions);
  if (!mask.empty() && cv::countNonZero(mask) > 0) {
    std::vector<std::vector<cv::Point>> truth;
    cv::findContours(mask != 0, truth, cv::RETR_EXTERNAL, cv::CHAIN_APPROX_NONE);
    cv::drawContours(overlay, truth, -1, cv::Scalar(0, 255, 0), 1, cv::LINE_8);  // RGB green
  }
  return overlay;
}

}  // namespace anoclip::eval
