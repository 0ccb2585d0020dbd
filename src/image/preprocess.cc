#include "image/preprocess.h"

#include <ATen/ATen.h>

#include <opencv2/imgproc.hpp>

namespace anoclip::image {

at::Tensor PreprocessImage(const cv::Mat& rgb, int image_size, const NormalizeOptions& options) {
  cv::Mat resized;
  if (rgb.cols == image_size && rgb.rows == image_size) {
    resized = rgb;
  } else {
    // PIL's BILINEAR widens its kernel when shrinking (anti-aliasing); INTER_AREA is the OpenCV
    // filter closest to it there, INTER_LINEAR matches it when enlarging.
    const bool shrinking = rgb.cols > image_size || rgb.rows > image_size;
    cv::resize(rgb, resized, cv::Size(image_size, image_size), 0, 0,
               shrinking ? cv::INTER_AREA : cv::INTER_LINEAR);
  }
  if (!resized.isContinuous()) resized = resized.clone();
  auto hwc = at::from_blob(resized.data, {image_size, image_size, 3}, at::kByte);
  auto chw = hwc.permute({2, 0, 1}).to(at::kFloat).div_(255.0);
  auto mean = at::tensor({options.mean[0], options.mean[1], options.mean[2]}).view({3, 1, 1});
  auto std = at::tensor({options.std[0], options.std[1], options.std[2]}).view({3, 1, 1});
  return ((chw - mean) / std).contiguous();
}

}  // namespace anoclip::image
