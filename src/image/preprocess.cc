#include "image/preprocess.h"

#include <ATen/ATen.h>

#include "image/pil_resize.h"

namespace anoclip::image {

at::Tensor PreprocessImage(const cv::Mat& rgb, int image_size, const NormalizeOptions& options) {
  // The reference resizes with PIL's BILINEAR; this is the same arithmetic, not an approximation.
  cv::Mat resized = rgb.cols == image_size && rgb.rows == image_size
                        ? rgb
                        : ResizeBilinearLikePil(rgb, image_size, image_size);
  if (!resized.isContinuous()) resized = resized.clone();
  auto hwc = at::from_blob(resized.data, {image_size, image_size, 3}, at::kByte);
  auto chw = hwc.permute({2, 0, 1}).to(at::kFloat).div_(255.0);
  auto mean = at::tensor({options.mean[0], options.mean[1], options.mean[2]}).view({3, 1, 1});
  auto std = at::tensor({options.std[0], options.std[1], options.std[2]}).view({3, 1, 1});
  return ((chw - mean) / std).contiguous();
}

}  // namespace anoclip::image
