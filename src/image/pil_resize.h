// PIL's BILINEAR resize of 8-bit images, bit for bit (Pillow's libImaging/Resample.c): separable,
// horizontal pass first into an 8-bit intermediate, then vertical; a triangle filter whose
// support is widened by the scale factor when shrinking (anti-aliasing); weights normalised per
// output pixel, converted to 22-bit fixed point, sums rounded half up and clamped to 0..255.
// The reference preprocessing resizes this way, so model inputs and evaluation masks match it.
// Stateless and thread-safe.
#pragma once

#include <opencv2/core/mat.hpp>

namespace anoclip::image {

// `image` is CV_8UC1 or CV_8UC3 (any channel order; channels are independent), width and height
// > 0. Returns a new continuous image of the same type; the same size returns a copy.
cv::Mat ResizeBilinearLikePil(const cv::Mat& image, int width, int height);

}  // namespace anoclip::image
