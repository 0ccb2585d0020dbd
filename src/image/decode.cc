#include "image/decode.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <filesystem>
#include <system_error>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <webp/decode.h>

#include "absl/strings/str_cat.h"
#include "image/codec_probe.h"
#include "common/files.h"

namespace anoclip::image {
namespace {

uint32_t BigEndian32(const uint8_t* p) { return (uint32_t{p[0]} << 24) | (p[1] << 16) | (p[2] << 8) | p[3]; }
uint16_t BigEndian16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }

absl::Status Truncated(const char* format) {
  return absl::InvalidArgumentError(absl::StrCat(format, " header is truncated"));
}

absl::StatusOr<ImageHeader> PeekPng(const uint8_t* p, size_t n) {
  if (n < 24) return Truncated("PNG");
  // The first chunk must be IHDR: a 13-byte body that starts with width and height.
  if (BigEndian32(p + 8) != 13 || std::memcmp(p + 12, "IHDR", 4) != 0) {
    return absl::InvalidArgumentError("PNG does not start with an IHDR chunk");
  }
  return ImageHeader{"png", BigEndian32(p + 16), BigEndian32(p + 20)};
}

absl::StatusOr<ImageHeader> PeekJpeg(const uint8_t* p, size_t n) {
  size_t pos = 2;
  while (pos + 4 <= n) {
    if (p[pos] != 0xFF) return absl::InvalidArgumentError("JPEG marker expected");
    const uint8_t marker = p[pos + 1];
    if (marker == 0xFF) {  // fill byte
      ++pos;
      continue;
    }
    if (marker == 0xD8 || (marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) {
      pos += 2;
      continue;
    }
    // Scan data follows SOS and the image ends at EOI: a frame header must come before both.
    if (marker == 0xDA || marker == 0xD9) return absl::InvalidArgumentError("JPEG has no frame header");
    const uint16_t length = BigEndian16(p + pos + 2);
    if (length < 2) return absl::InvalidArgumentError("JPEG segment length is invalid");
    const bool start_of_frame = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (start_of_frame) {
      if (pos + 9 > n) return Truncated("JPEG");
      return ImageHeader{"jpeg", BigEndian16(p + pos + 7), BigEndian16(p + pos + 5)};
    }
    pos += 2 + length;
  }
  return Truncated("JPEG");
}

absl::StatusOr<ImageHeader> PeekBmp(const uint8_t* p, size_t n) {
  if (n < 26) return Truncated("BMP");
  const uint32_t info_size = p[14] | (p[15] << 8) | (p[16] << 16) | (uint32_t{p[17]} << 24);
  // BITMAPCOREHEADER (12), the OS/2 2.x header (16, 64) and BITMAPINFOHEADER with its
  // extensions (40, 52, 56, 108, 124).
  if (info_size != 12 && info_size != 16 && info_size != 40 && info_size != 52 && info_size != 56 &&
      info_size != 64 && info_size != 108 && info_size != 124) {
    return absl::InvalidArgumentError(absl::StrCat("BMP info header of ", info_size, " bytes is not supported"));
  }
  if (info_size == 12) {  // OS/2 BITMAPCOREHEADER
    return ImageHeader{"bmp", p[18] | (p[19] << 8), p[20] | (p[21] << 8)};
  }
  const int32_t width = static_cast<int32_t>(p[18] | (p[19] << 8) | (p[20] << 16) | (uint32_t{p[21]} << 24));
  const int32_t height = static_cast<int32_t>(p[22] | (p[23] << 8) | (p[24] << 16) | (uint32_t{p[25]} << 24));
  // A negative height marks a top-down bitmap.
  return ImageHeader{"bmp", width, height < 0 ? -static_cast<int64_t>(height) : height};
}

absl::StatusOr<ImageHeader> PeekTiff(const uint8_t* p, size_t n) {
  if (n < 8) return Truncated("TIFF");
  const bool little = p[0] == 'I';
  auto u16 = [&](size_t at) -> uint32_t { return little ? (p[at] | (p[at + 1] << 8)) : BigEndian16(p + at); };
  auto u32 = [&](size_t at) -> uint32_t {
    return little ? (p[at] | (p[at + 1] << 8) | (p[at + 2] << 16) | (uint32_t{p[at + 3]} << 24)) : BigEndian32(p + at);
  };
  const size_t ifd = u32(4);  // size_t: an offset near 2^32 must not wrap past the bounds check
  if (ifd < 8 || ifd + 2 > n) return Truncated("TIFF");
  const size_t entries = u16(ifd);
  if (ifd + 2 + 12 * entries > n) return Truncated("TIFF");
  int64_t width = 0, height = 0;
  for (size_t i = 0; i < entries; ++i) {
    const size_t entry = ifd + 2 + 12 * i;
    const uint32_t tag = u16(entry), type = u16(entry + 2);
    if (tag != 256 && tag != 257) continue;  // ImageWidth, ImageLength
    int64_t& size = tag == 256 ? width : height;
    if (size != 0) continue;  // libtiff ignores a repeated tag: the first occurrence counts
    if (type != 3 && type != 4) {  // SHORT or LONG, the value stored inline
      return absl::InvalidArgumentError(absl::StrCat("TIFF tag ", tag, " has type ", type));
    }
    size = type == 3 ? u16(entry + 8) : u32(entry + 8);
  }
  return ImageHeader{"tiff", width, height};
}

absl::StatusOr<ImageHeader> PeekWebp(const uint8_t* p, size_t n) {
  int width = 0, height = 0;
  // libwebp reads the RIFF, VP8X, VP8 or VP8L header only.
  if (!WebPGetInfo(p, n, &width, &height)) return absl::InvalidArgumentError("WebP header is truncated or invalid");
  return ImageHeader{"webp", width, height};
}

// A JPEG is whole when its markers, walked from SOI past every segment and entropy-coded scan,
// reach EOI. libjpeg decodes a cut-off scan as gray without an error, so this is checked first.
// Segments are skipped by their length, so an EOI inside an embedded thumbnail does not count.
absl::Status CheckJpegComplete(const uint8_t* p, size_t n) {
  const auto truncated = absl::InvalidArgumentError("JPEG is truncated: it ends before its end-of-image marker");
  size_t pos = 2;
  while (pos + 2 <= n) {
    if (p[pos] != 0xFF) return absl::InvalidArgumentError("JPEG marker expected");
    const uint8_t marker = p[pos + 1];
    if (marker == 0xFF) {  // fill byte
      ++pos;
      continue;
    }
    if (marker == 0xD9) return absl::OkStatus();
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {  // no length
      pos += 2;
      continue;
    }
    if (pos + 4 > n) return truncated;
    pos += 2 + BigEndian16(p + pos + 2);
    if (marker != 0xDA) continue;
    // Entropy-coded data: 0xFF is followed by 0x00 (a stuffed byte) or a restart marker inside a
    // scan; any other marker ends it.
    while (pos + 1 < n && !(p[pos] == 0xFF && p[pos + 1] != 0x00 && (p[pos + 1] < 0xD0 || p[pos + 1] > 0xD7))) {
      ++pos;
    }
  }
  return truncated;
}

// width*height <= max_pixels for positive sides, without forming the product (a header may claim
// 2^32-1 on both sides), and each side fits the int that cv::Mat takes.
bool WithinPixelLimit(int64_t width, int64_t height, const ImageLimits& limits) {
  constexpr int64_t kMaxSide = std::numeric_limits<int>::max();
  return width <= kMaxSide && height <= kMaxSide && height <= limits.max_pixels / width;
}

absl::Status OverLimit(const char* what, int64_t width, int64_t height, const ImageLimits& limits) {
  return absl::InvalidArgumentError(
      absl::StrCat(what, " is ", width, "x", height, "; the limit is ", limits.max_pixels, " pixels"));
}

// 8-bit RGB from what imdecode gives with IMREAD_UNCHANGED: BGR(A) or gray(+alpha), any depth.
absl::StatusOr<cv::Mat> ToRgb8(cv::Mat decoded) {
  if (decoded.depth() == CV_16U) {
    decoded.convertTo(decoded, CV_8U, 1.0 / 257.0);
  } else if (decoded.depth() != CV_8U) {  // e.g. float TIFF: no fixed range, so its own min..max
    cv::normalize(decoded, decoded, 0, 255, cv::NORM_MINMAX, CV_8U);
  }
  cv::Mat rgb;
  switch (decoded.channels()) {
    case 1: cv::cvtColor(decoded, rgb, cv::COLOR_GRAY2RGB); break;
    case 2: {  // gray + alpha
      cv::Mat gray;
      cv::extractChannel(decoded, gray, 0);
      cv::cvtColor(gray, rgb, cv::COLOR_GRAY2RGB);
      break;
    }
    case 3: cv::cvtColor(decoded, rgb, cv::COLOR_BGR2RGB); break;
    case 4: cv::cvtColor(decoded, rgb, cv::COLOR_BGRA2RGB); break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("images with ", decoded.channels(), " channels are not supported"));
  }
  return rgb;
}

}  // namespace

absl::StatusOr<ImageHeader> PeekImageHeader(std::string_view bytes) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  if (n == 0) return absl::InvalidArgumentError("image is empty");
  absl::StatusOr<ImageHeader> header = absl::InvalidArgumentError(
      "unknown image format; expected PNG, JPEG, BMP, TIFF or WebP");
  if (n >= 8 && std::memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0) {
    header = PeekPng(p, n);
  } else if (n >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF) {
    header = PeekJpeg(p, n);
  } else if (n >= 2 && p[0] == 'B' && p[1] == 'M') {
    header = PeekBmp(p, n);
  } else if (n >= 4 && (std::memcmp(p, "II*\0", 4) == 0 || std::memcmp(p, "MM\0*", 4) == 0)) {
    header = PeekTiff(p, n);
  } else if (n >= 12 && std::memcmp(p, "RIFF", 4) == 0 && std::memcmp(p + 8, "WEBP", 4) == 0) {
    header = PeekWebp(p, n);
  }
  if (header.ok() && (header->width <= 0 || header->height <= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(header->format, " image has size ", header->width, "x", header->height));
  }
  return header;
}

absl::StatusOr<cv::Mat> DecodeImage(std::string_view bytes, const ImageLimits& limits) {
  // OpenCV takes the buffer's length as an int.
  const int64_t max_bytes = std::min<int64_t>(limits.max_bytes, std::numeric_limits<int>::max());
  if (static_cast<int64_t>(bytes.size()) > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("image is ", bytes.size(), " bytes; the limit is ", max_bytes));
  }
  auto header = PeekImageHeader(bytes);
  if (!header.ok()) return header.status();
  // Checked before OpenCV allocates the pixel buffer: first the size our own reader sees, then,
  // before the codec is given more than the header, the sizes the codec itself will allocate.
  if (!WithinPixelLimit(header->width, header->height, limits)) {
    return OverLimit("image", header->width, header->height, limits);
  }
  if (header->format == "jpeg") {
    if (auto complete = CheckJpegComplete(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
        !complete.ok()) {
      return complete;
    }
  }
  auto geometry = ProbeWithCodec(header->format, bytes);
  if (geometry.ok()) {
    if (geometry->width <= 0 || geometry->height <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(header->format, " decoder reads the size ", geometry->width,
                                                     "x", geometry->height));
    }
    if (!WithinPixelLimit(geometry->width, geometry->height, limits)) {
      return OverLimit("image", geometry->width, geometry->height, limits);
    }
    if (geometry->scratch_width > 0 &&
        !WithinPixelLimit(geometry->scratch_width, geometry->scratch_height, limits)) {
      return OverLimit(absl::StrCat(header->format, " strip or tile").c_str(), geometry->scratch_width,
                       geometry->scratch_height, limits);
    }
  } else if (geometry.status().code() != absl::StatusCode::kUnimplemented) {
    return geometry.status();
  }
  try {
    const cv::Mat buffer(1, static_cast<int>(bytes.size()), CV_8U, const_cast<char*>(bytes.data()));
    cv::Mat decoded = cv::imdecode(buffer, cv::IMREAD_UNCHANGED);
    if (decoded.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot decode ", header->format, " image (corrupt or truncated)"));
    }
    return ToRgb8(decoded);
  } catch (const cv::Exception& error) {
    return absl::InvalidArgumentError(absl::StrCat("cannot decode ", header->format, ": ", error.what()));
  }
}

absl::StatusOr<cv::Mat> ReadImageFile(const std::string& path, const ImageLimits& limits) {
  // Refuse an oversized file before reading it into memory.
  std::error_code error;
  const auto size = std::filesystem::file_size(path, error);
  if (!error && size > static_cast<uintmax_t>(limits.max_bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": image is ", size, " bytes; the limit is ", limits.max_bytes));
  }
  auto bytes = ReadFileToString(path);
  if (!bytes.ok()) return absl::NotFoundError(absl::StrCat("cannot read image ", path));
  auto image = DecodeImage(*bytes, limits);
  if (!image.ok()) return absl::Status(image.status().code(), absl::StrCat(path, ": ", image.status().message()));
  return image;
}

absl::StatusOr<cv::Mat> ImageFromRawTensor(std::string_view data, const std::vector<int64_t>& shape,
                                           TensorLayout layout, const ImageLimits& limits) {
  if (shape.size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat("raw tensor must have 3 dimensions; has ", shape.size()));
  }
  const int64_t channels = layout == TensorLayout::kHWC ? shape[2] : shape[0];
  const int64_t height = layout == TensorLayout::kHWC ? shape[0] : shape[1];
  const int64_t width = layout == TensorLayout::kHWC ? shape[1] : shape[2];
  if (channels != 1 && channels != 3 && channels != 4) {
    return absl::InvalidArgumentError(absl::StrCat("raw tensor must have 1, 3 or 4 channels; has ", channels));
  }
  if (height <= 0 || width <= 0 || !WithinPixelLimit(width, height, limits)) {
    return OverLimit("raw tensor", width, height, limits);
  }
  if (static_cast<int64_t>(data.size()) != height * width * channels) {
    return absl::InvalidArgumentError(absl::StrCat("raw tensor holds ", data.size(), " bytes; shape needs ",
                                                   height * width * channels));
  }
  try {
    const int type = CV_8UC(static_cast<int>(channels));
    cv::Mat hwc;
    if (layout == TensorLayout::kHWC) {
      hwc = cv::Mat(static_cast<int>(height), static_cast<int>(width), type, const_cast<char*>(data.data())).clone();
    } else {
      std::vector<cv::Mat> planes;
      for (int64_t c = 0; c < channels; ++c) {
        planes.emplace_back(static_cast<int>(height), static_cast<int>(width), CV_8U,
                            const_cast<char*>(data.data() + c * height * width));
      }
      cv::merge(planes, hwc);
    }
    cv::Mat rgb;
    if (channels == 1) {
      cv::cvtColor(hwc, rgb, cv::COLOR_GRAY2RGB);
    } else if (channels == 4) {
      cv::cvtColor(hwc, rgb, cv::COLOR_RGBA2RGB);
    } else {
      rgb = hwc;
    }
    return rgb;
  } catch (const cv::Exception& error) {
    return absl::InternalError(absl::StrCat("cannot convert the raw tensor: ", error.what()));
  }
}

}  // namespace anoclip::image
