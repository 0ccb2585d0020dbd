// docs/algorithm.md §6: resize to S×S (bilinear, anti-aliased when shrinking, like PIL), /255,
// per-channel normalisation. Output: contiguous float32 [3,S,S] CPU tensor.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>

#include <opencv2/core/mat.hpp>

namespace anoclip::image {

struct NormalizeOptions {
  std::array<float, 3> mean = {0.48145466f, 0.4578275f, 0.40821073f};
  std::array<float, 3> std = {0.26862954f, 0.26130258f, 0.27577711f};
};

// `rgb` is CV_8UC3 in RGB order (what DecodeImage and ImageFromRawTensor return), image_size > 0.
// Other sizes are resized with PIL's BILINEAR arithmetic (image/pil_resize.h), anti-aliased when
// shrinking; S×S input is not resized. Stateless and thread-safe.
at::Tensor PreprocessImage(const cv::Mat& rgb, int image_size, const NormalizeOptions& options);

}  // namespace anoclip::image
