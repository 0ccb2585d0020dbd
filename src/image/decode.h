// Image decoding with limits checked before any pixel buffer is allocated.
// PNG, JPEG, BMP, TIFF and WebP (via OpenCV); gray is replicated, alpha dropped, 16-bit scaled to
// 8-bit (v / 257), other depths (float TIFF) scaled from their own min..max. Other formats, and
// animated WebP, are refused. The size is read from the header by hand first, so a small file that
// claims 100000x100000 is refused without OpenCV allocating anything; then the codec library
// itself parses the header (codec_probe.h) and the sizes it will allocate (the image, and a TIFF's
// strip or tile buffer) are checked against the same limit, so a header that two parsers read
// differently cannot slip past. A JPEG that ends before its end-of-image marker is refused (libjpeg
// would fill the missing rows with gray). All functions are stateless and thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <opencv2/core/mat.hpp>

#include "absl/status/statusor.h"

namespace anoclip::image {

struct ImageLimits {
  int64_t max_pixels = 50'000'000;  // width*height, and a TIFF strip or tile, before decoding
  int64_t max_bytes = 64 << 20;     // encoded size
};

struct ImageHeader {
  std::string format;  // "png", "jpeg", "bmp", "tiff", "webp"
  int64_t width = 0;
  int64_t height = 0;
};

// Reads only the format's header (PNG IHDR, the first JPEG SOFn, BMP info header with
// negative height for top-down, the first TIFF IFD where a repeated tag's first occurrence counts
// as in libtiff, the WebP RIFF header): InvalidArgument for unknown formats, truncated headers,
// zero sizes.
absl::StatusOr<ImageHeader> PeekImageHeader(std::string_view bytes);

// Decodes to CV_8UC3 in RGB order. InvalidArgument on empty/corrupt/oversized input.
absl::StatusOr<cv::Mat> DecodeImage(std::string_view bytes, const ImageLimits& limits = {});

// Reads a file then DecodeImage. NotFound if it cannot be read; InvalidArgument, before reading,
// if it is larger than limits.max_bytes.
absl::StatusOr<cv::Mat> ReadImageFile(const std::string& path, const ImageLimits& limits = {});

enum class TensorLayout { kHWC, kCHW };

// A raw uint8 tensor with shape (H,W,C) or (C,H,W), C in {1,3,4} (gray, RGB, RGBA), to RGB
// CV_8UC3. Shape, pixel limit and byte count are checked before anything is allocated.
absl::StatusOr<cv::Mat> ImageFromRawTensor(std::string_view data, const std::vector<int64_t>& shape,
                                           TensorLayout layout, const ImageLimits& limits = {});

}  // namespace anoclip::image
