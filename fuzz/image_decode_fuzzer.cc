// Image decoding and validation on arbitrary bytes: header peek, codec probe, decode within the
// limits, and the raw-tensor path with a shape taken from the input. Every decoded image must be
// RGB, 8-bit and within the pixel limit.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

#include "image/decode.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  anoclip::image::ImageLimits limits;
  limits.max_pixels = 4'000'000;  // small enough to keep each run fast, large enough for every path
  (void)anoclip::image::PeekImageHeader(bytes);
  auto image = anoclip::image::DecodeImage(bytes, limits);
  if (image.ok() && (image->type() != CV_8UC3 || image->total() > static_cast<size_t>(limits.max_pixels))) {
    std::abort();
  }
  // Raw tensor: the first 12 bytes are the shape (3 x int32), then the layout bit, then the data.
  if (size >= 13) {
    int32_t dims[3];
    std::memcpy(dims, data, sizeof(dims));
    const std::vector<int64_t> shape = {dims[0], dims[1], dims[2]};
    const auto layout = (data[12] & 1) ? anoclip::image::TensorLayout::kCHW : anoclip::image::TensorLayout::kHWC;
    auto raw = anoclip::image::ImageFromRawTensor(bytes.substr(13), shape, layout, limits);
    if (raw.ok() && raw->type() != CV_8UC3) std::abort();
  }
  return 0;
}
