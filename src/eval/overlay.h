// The overlay the evaluation report shows for one image: the anomaly map in JET colours over the
// model's input, the ground-truth defect outlined in green and the regions the operating point
// found in white. Torch-free.
#pragma once

#include <vector>

#include <opencv2/core/mat.hpp>

namespace anoclip::eval {

// `rgb` CV_8UC3 at the map's size; `gray` the map as CV_8U (inspection::HeatmapToGray); `mask` CV_8U
// (nonzero = defect) of the same size or empty; `regions` contours in the map's coordinates.
cv::Mat RenderEvaluationOverlay(const cv::Mat& rgb, const cv::Mat& gray, const cv::Mat& mask,
                                const std::vector<std::vector<cv::Point>>& regions);

}  // namespace anoclip::eval
