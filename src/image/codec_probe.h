// Asks the codec library that will decode an image (libpng, libjpeg, libtiff, libwebp: the ones
// OpenCV's decoders call) for the sizes it will allocate, by parsing the header with that library
// and stopping before any pixel data is read. Decoding then trusts no hand-written header reader
// alone: a file whose header two parsers read differently is checked as its decoder reads it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace anoclip::image {

struct CodecGeometry {
  int64_t width = 0;
  int64_t height = 0;
  // The largest block, in pixels, the decoder buffers at once besides the image itself: a TIFF
  // tile or strip (OpenCV reads one whole tile or strip into a scratch buffer). 0 for formats
  // that decode row by row into the image.
  int64_t scratch_width = 0;
  int64_t scratch_height = 0;
};

// format is ImageHeader::format ("png", "jpeg", "tiff", "webp"). InvalidArgument when the codec
// cannot parse the header; Unimplemented for a format without a probe ("bmp": OpenCV decodes it
// itself from the fields PeekImageHeader reads). Thread-safe; writes nothing to stderr.
absl::StatusOr<CodecGeometry> ProbeWithCodec(const std::string& format, std::string_view bytes);

}  // namespace anoclip::image
