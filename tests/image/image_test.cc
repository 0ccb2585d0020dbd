// Decoding with limits, preprocessing against the reference. Every encoded image is
// made here with cv::imencode (or by hand for headers OpenCV does not write).
#include <ATen/ATen.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "golden.h"
#include "image/decode.h"
#include "image/preprocess.h"

namespace anoclip::image {
namespace {

using ::testing::HasSubstr;

std::string Encode(const cv::Mat& image, const std::string& ext, const std::vector<int>& params = {}) {
  std::vector<uchar> bytes;
  EXPECT_TRUE(cv::imencode(ext, image, bytes, params)) << ext;
  return std::string(bytes.begin(), bytes.end());
}

// BGR, as OpenCV writes it: blue = x, green = y, red = 100.
cv::Mat Gradient(int width, int height) {
  cv::Mat bgr(height, width, CV_8UC3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) bgr.at<cv::Vec3b>(y, x) = cv::Vec3b(x % 256, y % 256, 100);
  }
  return bgr;
}

uint32_t Le32(const std::string& bytes, size_t at) {
  uint32_t value;
  std::memcpy(&value, bytes.data() + at, 4);
  return value;  // the test machine is little-endian, as the formats that use this
}

void PutBe32(std::string& bytes, size_t at, uint32_t value) {
  for (int i = 0; i < 4; ++i) bytes[at + i] = static_cast<char>(value >> (24 - 8 * i));
}

// PNG signature and an IHDR chunk (CRC left zero: only the header is read before the limits).
std::string PngHeader(uint32_t width, uint32_t height) {
  std::string png("\x89PNG\r\n\x1a\n", 8);
  png += std::string("\0\0\0\x0dIHDR", 8);
  png += std::string(8, '\0');
  PutBe32(png, 16, width);
  PutBe32(png, 20, height);
  png += std::string("\x08\x02\0\0\0", 5);  // 8-bit RGB
  png += std::string(4, '\0');
  return png;
}

// A TIFF header with one IFD of ImageWidth/ImageLength entries; `big` writes "MM" byte order.
std::string TiffHeader(bool big, uint16_t width_type, uint32_t width, uint16_t height_type, uint32_t height) {
  std::string tiff;
  auto u16 = [&](uint16_t v) {
    const char b[2] = {static_cast<char>(big ? v >> 8 : v & 0xFF), static_cast<char>(big ? v & 0xFF : v >> 8)};
    tiff.append(b, 2);
  };
  auto u32 = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) tiff += static_cast<char>(v >> (big ? 24 - 8 * i : 8 * i));
  };
  auto entry = [&](uint16_t tag, uint16_t type, uint32_t value) {
    u16(tag);
    u16(type);
    u32(1);
    if (type == 3) {  // a SHORT sits in the first two bytes of the value field
      u16(static_cast<uint16_t>(value));
      u16(0);
    } else {
      u32(value);
    }
  };
  tiff += big ? "MM" : "II";
  u16(42);
  u32(8);
  u16(3);
  entry(254, 4, 0);  // NewSubfileType, skipped
  entry(256, width_type, width);
  entry(257, height_type, height);
  u32(0);
  return tiff;
}

struct TiffEntry {
  uint16_t tag;
  uint16_t type;  // 3 SHORT, 4 LONG
  uint32_t value;
};
constexpr uint32_t kPixelDataOffset = 0xFFFFFFFF;  // a value filled in with where the pixels start

// A little-endian TIFF with its entries written in the order given (repeats allowed) and `pixels`
// after the IFD; entries whose value is kPixelDataOffset point at the pixels.
std::string TiffFile(const std::vector<TiffEntry>& entries, const std::string& pixels) {
  std::string tiff("II*\0\x08\0\0\0", 8);
  auto u16 = [&](uint32_t v) { tiff += static_cast<char>(v & 0xFF), tiff += static_cast<char>(v >> 8 & 0xFF); };
  auto u32 = [&](uint32_t v) { u16(v & 0xFFFF), u16(v >> 16); };
  const uint32_t data_offset = static_cast<uint32_t>(8 + 2 + 12 * entries.size() + 4);
  u16(static_cast<uint32_t>(entries.size()));
  for (const TiffEntry& entry : entries) {
    const uint32_t value = entry.value == kPixelDataOffset ? data_offset : entry.value;
    u16(entry.tag);
    u16(entry.type);
    u32(1);
    if (entry.type == 3) {
      u16(value);
      u16(0);
    } else {
      u32(value);
    }
  }
  u32(0);
  return tiff + pixels;
}

// An uncompressed 8-bit gray TIFF holding 16x16 pixels in one strip, its size tags written first as
// `first_width` x `first_height` and then repeated as `then_width` x `then_height`.
std::string GrayTiffWithRepeatedSize(uint32_t first_width, uint32_t first_height, uint32_t then_width,
                                     uint32_t then_height) {
  return TiffFile({{256, 4, first_width}, {257, 4, first_height}, {256, 4, then_width}, {257, 4, then_height},
                   {258, 3, 8}, {259, 3, 1}, {262, 3, 1}, {273, 4, kPixelDataOffset}, {277, 3, 1},
                   {278, 4, 16}, {279, 4, 256}},
                  std::string(256, '\x40'));
}

// An uncompressed 8-bit gray 16x16 TIFF stored as one tile of tile x tile pixels.
std::string GrayTiledTiff(uint32_t tile) {
  return TiffFile({{256, 4, 16}, {257, 4, 16}, {258, 3, 8}, {259, 3, 1}, {262, 3, 1}, {277, 3, 1},
                   {322, 4, tile}, {323, 4, tile}, {324, 4, kPixelDataOffset}, {325, 4, tile * tile}},
                  std::string(tile * tile, '\x40'));
}

// Records the largest pixel buffer OpenCV allocates while it is installed as the default.
class LargestAllocation : public cv::MatAllocator {
 public:
  LargestAllocation() : previous_(cv::Mat::getDefaultAllocator()) { cv::Mat::setDefaultAllocator(this); }
  ~LargestAllocation() override { cv::Mat::setDefaultAllocator(previous_); }
  size_t bytes() const { return largest_; }

  cv::UMatData* allocate(int dims, const int* sizes, int type, void* data, size_t* step, cv::AccessFlag flags,
                         cv::UMatUsageFlags usage) const override {
    size_t total = CV_ELEM_SIZE(type);
    for (int i = 0; i < dims; ++i) total *= static_cast<size_t>(sizes[i]);
    largest_ = std::max(largest_, total);
    return cv::Mat::getStdAllocator()->allocate(dims, sizes, type, data, step, flags, usage);
  }
  bool allocate(cv::UMatData* data, cv::AccessFlag flags, cv::UMatUsageFlags usage) const override {
    return cv::Mat::getStdAllocator()->allocate(data, flags, usage);
  }
  void deallocate(cv::UMatData* data) const override { cv::Mat::getStdAllocator()->deallocate(data); }

 private:
  cv::MatAllocator* previous_;
  mutable size_t largest_ = 0;
};

TEST(PeekImageHeaderTest, ReadsEveryFormatsSize) {
  const cv::Mat bgr = Gradient(37, 21);
  const std::vector<std::pair<std::string, std::string>> encoded = {
      {"png", Encode(bgr, ".png")},
      {"jpeg", Encode(bgr, ".jpg")},
      {"jpeg", Encode(bgr, ".jpg", {cv::IMWRITE_JPEG_PROGRESSIVE, 1})},  // SOF2
      {"bmp", Encode(bgr, ".bmp")},
      {"tiff", Encode(bgr, ".tiff")},
  };
  for (const auto& [format, bytes] : encoded) {
    auto header = PeekImageHeader(bytes);
    ASSERT_TRUE(header.ok()) << format << ": " << header.status();
    EXPECT_EQ(header->format, format);
    EXPECT_EQ(header->width, 37) << format;
    EXPECT_EQ(header->height, 21) << format;
  }
}

TEST(PeekImageHeaderTest, TiffInBothByteOrdersWithShortAndLongSizes) {
  for (bool big : {false, true}) {
    SCOPED_TRACE(big ? "MM" : "II");
    auto header = PeekImageHeader(TiffHeader(big, 3, 291, 4, 65536));
    ASSERT_TRUE(header.ok()) << header.status();
    EXPECT_EQ(header->format, "tiff");
    EXPECT_EQ(header->width, 291);
    EXPECT_EQ(header->height, 65536);
    EXPECT_THAT(PeekImageHeader(TiffHeader(big, 2, 291, 4, 10)).status().message(), HasSubstr("type 2"));
  }
}

TEST(PeekImageHeaderTest, HugeAndHostileHeaders) {
  auto huge = PeekImageHeader(PngHeader(100000, 100000));
  ASSERT_TRUE(huge.ok()) << huge.status();
  EXPECT_EQ(huge->width, 100000);
  EXPECT_EQ(huge->height, 100000);

  std::string tiff_far_ifd = TiffHeader(false, 3, 10, 3, 10);
  std::memcpy(tiff_far_ifd.data() + 4, "\xff\xff\xff\xff", 4);  // must not wrap past the bounds check
  std::string tiff_many_entries = TiffHeader(false, 3, 10, 3, 10);
  tiff_many_entries[8] = '\xff';
  const std::string jpeg = Encode(Gradient(16, 16), ".jpg");
  std::string jpeg_long_segment = jpeg;
  jpeg_long_segment[4] = '\xff';  // APP0 length runs past the end
  jpeg_long_segment[5] = '\xff';
  std::string jpeg_scan_first = jpeg.substr(0, 2) + std::string("\xff\xda\x00\x02", 4) + jpeg.substr(2);
  std::string bmp_odd_info = Encode(Gradient(4, 4), ".bmp");
  bmp_odd_info[14] = 7;
  std::string png_not_ihdr = PngHeader(10, 10);
  std::memcpy(png_not_ihdr.data() + 12, "IDAT", 4);

  const std::vector<std::pair<std::string, std::string>> cases = {
      {"empty", ""},
      {"random", "\x13\x99\x01\x42 random bytes that are no image"},
      {"gif", "GIF89a\x10\x00\x10\x00"},
      {"png signature only", PngHeader(10, 10).substr(0, 8)},
      {"png cut in IHDR", PngHeader(10, 10).substr(0, 20)},
      {"png 0x0", PngHeader(0, 0)},
      {"png 0 wide", PngHeader(0, 10)},
      {"png without IHDR", png_not_ihdr},
      {"jpeg SOI only", "\xff\xd8\xff"},
      {"jpeg cut", jpeg.substr(0, 30)},
      {"jpeg segment past the end", jpeg_long_segment},
      {"jpeg scan before frame", jpeg_scan_first},
      {"jpeg garbage marker", std::string("\xff\xd8\xff\xe0\x00\x04\x00\x00\x12\x34\x56\x78", 12)},
      {"bmp cut", Encode(Gradient(4, 4), ".bmp").substr(0, 20)},
      {"bmp unknown info header", bmp_odd_info},
      {"tiff magic only", std::string("II*\0", 4)},
      {"tiff far IFD", tiff_far_ifd},
      {"tiff entries past the end", tiff_many_entries},
      {"tiff without sizes", TiffHeader(false, 3, 0, 3, 0)},
  };
  for (const auto& [name, bytes] : cases) {
    EXPECT_EQ(PeekImageHeader(bytes).status().code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_EQ(DecodeImage(bytes).status().code(), absl::StatusCode::kInvalidArgument) << name;
  }
}

TEST(DecodeTest, EveryFormatDecodesToRgbAtItsSize) {
  const cv::Mat bgr = Gradient(37, 21);
  for (const std::string ext : {".png", ".bmp", ".tiff", ".jpg"}) {
    SCOPED_TRACE(ext);
    auto rgb = DecodeImage(Encode(bgr, ext));
    ASSERT_TRUE(rgb.ok()) << rgb.status();
    EXPECT_EQ(rgb->type(), CV_8UC3);
    EXPECT_EQ(rgb->size(), cv::Size(37, 21));
    if (ext == ".jpg") {  // lossy: close, in RGB order
      const cv::Vec3b pixel = rgb->at<cv::Vec3b>(3, 30);
      EXPECT_NEAR(pixel[0], 100, 12);
      EXPECT_NEAR(pixel[1], 3, 12);
      EXPECT_NEAR(pixel[2], 30, 12);
    } else {  // lossless: every pixel back, channels swapped to RGB
      cv::Mat expected;
      cv::cvtColor(bgr, expected, cv::COLOR_BGR2RGB);
      EXPECT_EQ(cv::norm(*rgb, expected, cv::NORM_INF), 0);
    }
  }
}

TEST(DecodeTest, GrayAlphaAndSixteenBitAreConverted) {
  const cv::Mat gray(10, 12, CV_8U, cv::Scalar(77));
  for (const std::string ext : {".png", ".bmp", ".tiff", ".jpg"}) {
    auto from_gray = DecodeImage(Encode(gray, ext));
    ASSERT_TRUE(from_gray.ok()) << ext << ": " << from_gray.status();
    EXPECT_EQ(from_gray->type(), CV_8UC3) << ext;
    const cv::Vec3b pixel = from_gray->at<cv::Vec3b>(5, 5);
    EXPECT_EQ(pixel[0], pixel[1]) << ext;
    EXPECT_EQ(pixel[0], pixel[2]) << ext;
    EXPECT_NEAR(pixel[0], 77, ext == ".jpg" ? 2 : 0) << ext;
  }

  const cv::Mat bgra(10, 12, CV_8UC4, cv::Scalar(10, 20, 30, 0));  // fully transparent: alpha dropped
  for (const std::string ext : {".png", ".tiff"}) {
    auto from_alpha = DecodeImage(Encode(bgra, ext));
    ASSERT_TRUE(from_alpha.ok()) << ext << ": " << from_alpha.status();
    EXPECT_EQ(from_alpha->type(), CV_8UC3);
    EXPECT_EQ(from_alpha->at<cv::Vec3b>(0, 0), cv::Vec3b(30, 20, 10)) << ext;
  }

  // 16-bit: v / 257, so 65535 -> 255, 257*128 -> 128.
  const cv::Mat deep(8, 8, CV_16UC3, cv::Scalar(65535, 257 * 128, 0));
  for (const std::string ext : {".png", ".tiff"}) {
    auto from_deep = DecodeImage(Encode(deep, ext));
    ASSERT_TRUE(from_deep.ok()) << ext << ": " << from_deep.status();
    EXPECT_EQ(from_deep->type(), CV_8UC3);
    EXPECT_EQ(from_deep->at<cv::Vec3b>(1, 1), cv::Vec3b(0, 128, 255)) << ext;
  }
  const cv::Mat deep_gray(8, 8, CV_16U, cv::Scalar(257 * 200));
  auto from_deep_gray = DecodeImage(Encode(deep_gray, ".png"));
  ASSERT_TRUE(from_deep_gray.ok());
  EXPECT_EQ(from_deep_gray->at<cv::Vec3b>(7, 7), cv::Vec3b(200, 200, 200));
}

TEST(DecodeTest, TopDownBmpHasPositiveHeightAndItsRowsInOrder) {
  const cv::Mat bgr = Gradient(7, 5);
  std::string bmp = Encode(bgr, ".bmp");
  ASSERT_EQ(Le32(bmp, 14), 40u);  // BITMAPINFOHEADER
  ASSERT_EQ(static_cast<int32_t>(Le32(bmp, 22)), 5);
  // Flip the stored rows (bottom-up -> top-down) and negate the height.
  const size_t offset = Le32(bmp, 10), row = (7 * 3 + 3) / 4 * 4;
  std::string flipped = bmp;
  for (size_t y = 0; y < 5; ++y) {
    std::memcpy(flipped.data() + offset + y * row, bmp.data() + offset + (4 - y) * row, row);
  }
  const int32_t negative = -5;
  std::memcpy(flipped.data() + 22, &negative, 4);

  auto header = PeekImageHeader(flipped);
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->height, 5);
  auto rgb = DecodeImage(flipped);
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  cv::Mat expected;
  cv::cvtColor(bgr, expected, cv::COLOR_BGR2RGB);
  EXPECT_EQ(cv::norm(*rgb, expected, cv::NORM_INF), 0);
}

TEST(DecodeTest, LimitsAreCheckedFromTheHeaderBeforeDecoding) {
  // 100000x100000 in a 33-byte file: refused for its size, not for being undecodable.
  auto huge = DecodeImage(PngHeader(100000, 100000));
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(huge.status().message(), HasSubstr("100000x100000; the limit is 50000000 pixels"));
  // 2^32-1 on both sides: the product overflows int64 if formed naively.
  auto widest = DecodeImage(PngHeader(0xFFFFFFFF, 0xFFFFFFFF));
  EXPECT_THAT(widest.status().message(), HasSubstr("the limit is"));
  auto tall = DecodeImage(TiffHeader(true, 4, 1, 4, 0xFFFFFFFF));
  EXPECT_THAT(tall.status().message(), HasSubstr("the limit is"));

  const std::string png = Encode(Gradient(40, 40), ".png");
  ImageLimits pixels;
  pixels.max_pixels = 40 * 40 - 1;
  EXPECT_THAT(DecodeImage(png, pixels).status().message(), HasSubstr("40x40; the limit is 1599 pixels"));
  pixels.max_pixels = 40 * 40;
  EXPECT_TRUE(DecodeImage(png, pixels).ok());
  ImageLimits bytes;
  bytes.max_bytes = static_cast<int64_t>(png.size()) - 1;
  EXPECT_THAT(DecodeImage(png, bytes).status().message(), HasSubstr("bytes; the limit is"));
}

TEST(DecodeTest, RepeatedTiffSizeTagsCountAsLibtiffReadsThemFirstOccurrenceWins) {
  // libtiff decodes the first ImageWidth/ImageLength of a directory and ignores repeats.
  const std::string huge_first = GrayTiffWithRepeatedSize(12000, 12000, 16, 16);
  auto header = PeekImageHeader(huge_first);
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->width, 12000);
  EXPECT_EQ(header->height, 12000);
  auto refused = DecodeImage(huge_first);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("12000x12000; the limit is 50000000 pixels"));

  ImageLimits small;
  small.max_pixels = 1000;
  EXPECT_THAT(DecodeImage(GrayTiffWithRepeatedSize(100, 100, 16, 16), small).status().message(),
              HasSubstr("100x100; the limit is 1000 pixels"));

  // The other way round the small size counts, and the image decodes at that size.
  auto small_first = DecodeImage(GrayTiffWithRepeatedSize(16, 16, 12000, 12000));
  ASSERT_TRUE(small_first.ok()) << small_first.status();
  EXPECT_EQ(small_first->size(), cv::Size(16, 16));
  EXPECT_EQ(small_first->at<cv::Vec3b>(15, 15), cv::Vec3b(0x40, 0x40, 0x40));
}

TEST(DecodeTest, TiffTileAndStripBuffersCountAgainstThePixelLimit) {
  // OpenCV allocates a scratch buffer for a whole tile or strip before reading it: a 16x16 image
  // in one 64x64 tile costs 64x64 pixels (and then fails to read, after the allocation).
  ImageLimits small;
  small.max_pixels = 1000;
  auto refused = DecodeImage(GrayTiledTiff(64), small);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("tiff strip or tile is 64x64; the limit is 1000 pixels"));
  // A tile the size of the image is within the limit (OpenCV cannot read this hand-made tile, so
  // only the absence of a size refusal is checked).
  EXPECT_THAT(std::string(DecodeImage(GrayTiledTiff(16), small).status().message()),
              ::testing::Not(HasSubstr("the limit is")));

  // 16 wide, 100 rows per strip, 16 rows of image.
  const std::string tall_strip = TiffFile({{256, 4, 16}, {257, 4, 16}, {258, 3, 8}, {259, 3, 1}, {262, 3, 1},
                                           {273, 4, kPixelDataOffset}, {277, 3, 1}, {278, 4, 100}, {279, 4, 256}},
                                          std::string(256, '\x40'));
  EXPECT_TRUE(DecodeImage(tall_strip).ok());
  EXPECT_THAT(DecodeImage(tall_strip, small).status().message(),
              HasSubstr("tiff strip or tile is 16x100; the limit is 1000 pixels"));

  // More strips than the file has bytes for offsets: refused before libtiff sizes its tables.
  const std::string many_strips = TiffFile({{256, 4, 1}, {257, 4, 40'000'000}, {258, 3, 8}, {259, 3, 1},
                                            {262, 3, 1}, {273, 4, kPixelDataOffset}, {277, 3, 1},
                                            {278, 4, 1}, {279, 4, 1}},
                                           std::string(16, '\0'));
  EXPECT_THAT(DecodeImage(many_strips).status().message(), HasSubstr("40000000 strips or tiles"));
}

TEST(DecodeTest, WebPDecodesAndAnimatedOrCorruptWebPIsRefused) {
  const cv::Mat bgr = Gradient(37, 21);
  const std::string webp = Encode(bgr, ".webp", {cv::IMWRITE_WEBP_QUALITY, 101});  // > 100: lossless
  auto header = PeekImageHeader(webp);
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->format, "webp");
  EXPECT_EQ(header->width, 37);
  EXPECT_EQ(header->height, 21);
  auto rgb = DecodeImage(webp);
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  cv::Mat expected;
  cv::cvtColor(bgr, expected, cv::COLOR_BGR2RGB);
  EXPECT_EQ(cv::norm(*rgb, expected, cv::NORM_INF), 0);

  EXPECT_EQ(DecodeImage(webp.substr(0, webp.size() / 2)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeImage(webp.substr(0, 20)).status().code(), absl::StatusCode::kInvalidArgument);
  std::string wrong_chunk = webp;
  std::memcpy(wrong_chunk.data() + 12, "XXXX", 4);
  EXPECT_EQ(DecodeImage(wrong_chunk).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DecodeTest, TruncatedJpegIsRefused) {
  const std::string jpeg = Encode(Gradient(64, 48), ".jpg");
  ASSERT_TRUE(DecodeImage(jpeg).ok());
  ASSERT_EQ(jpeg.substr(jpeg.size() - 2), "\xff\xd9");
  for (size_t length : {jpeg.size() * 6 / 10, jpeg.size() * 9 / 10, jpeg.size() - 2, jpeg.size() - 1}) {
    auto cut = DecodeImage(jpeg.substr(0, length));
    EXPECT_EQ(cut.status().code(), absl::StatusCode::kInvalidArgument) << "cut at " << length << " of " << jpeg.size();
    EXPECT_THAT(cut.status().message(), HasSubstr("truncated")) << length;
  }
  const std::string progressive = Encode(Gradient(64, 48), ".jpg", {cv::IMWRITE_JPEG_PROGRESSIVE, 1});
  ASSERT_TRUE(DecodeImage(progressive).ok());
  EXPECT_THAT(DecodeImage(progressive.substr(0, progressive.size() * 7 / 10)).status().message(),
              HasSubstr("truncated"));
  // Bytes after the end-of-image marker are not a truncation, and restart markers are not the end.
  EXPECT_TRUE(DecodeImage(jpeg + "trailing bytes").ok());
  const std::string restarts = Encode(Gradient(64, 48), ".jpg", {cv::IMWRITE_JPEG_RST_INTERVAL, 1});
  ASSERT_TRUE(DecodeImage(restarts).ok());
  EXPECT_THAT(DecodeImage(restarts.substr(0, restarts.size() / 2)).status().message(), HasSubstr("truncated"));
}

TEST(DecodeTest, DecompressionBombsAreRefusedBeforeTheirPixelsAreAllocated) {
  // 2000x2000 of one colour compresses to a few kilobytes in every format.
  const cv::Mat flat(2000, 2000, CV_8UC3, cv::Scalar(20, 40, 60));
  ImageLimits limits;
  limits.max_pixels = 1'000'000;
  for (const auto& [ext, params] : std::vector<std::pair<std::string, std::vector<int>>>{
           {".png", {}}, {".jpg", {}}, {".tiff", {}}, {".webp", {cv::IMWRITE_WEBP_QUALITY, 101}}}) {
    SCOPED_TRACE(ext);
    const std::string bomb = Encode(flat, ext, params);
    EXPECT_LT(bomb.size(), flat.total() * 3 / 20) << "not a bomb: it compresses less than 20:1";
    LargestAllocation allocations;
    auto refused = DecodeImage(bomb, limits);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(refused.status().message(), HasSubstr("2000x2000; the limit is 1000000 pixels"));
    EXPECT_LT(allocations.bytes(), 1000u) << "a pixel buffer was allocated";
  }
}

TEST(DecodeTest, TruncatedAndCorruptInputIsInvalidArgumentNeverACrash) {
  const cv::Mat bgr = Gradient(23, 17);
  for (const std::string ext : {".png", ".bmp", ".tiff", ".jpg"}) {
    const std::string bytes = Encode(bgr, ext);
    for (size_t length = 0; length < bytes.size(); length += 1 + bytes.size() / 150) {
      auto result = DecodeImage(bytes.substr(0, length));
      EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << ext << " cut at " << length;
    }
    // Random bytes after each valid header.
    std::mt19937 random(7);
    for (int trial = 0; trial < 40; ++trial) {
      std::string corrupt = bytes;
      const size_t keep = 8 + random() % 40;
      for (size_t i = keep; i < corrupt.size(); ++i) corrupt[i] = static_cast<char>(random());
      auto result = DecodeImage(corrupt);
      if (result.ok()) {
        EXPECT_EQ(result->type(), CV_8UC3);
      } else {
        EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << ext << ": " << result.status();
      }
    }
  }
  // A PNG whose first half is all there: the data stream ends early.
  const std::string png = Encode(bgr, ".png");
  EXPECT_THAT(DecodeImage(png.substr(0, png.size() / 2)).status().message(), HasSubstr("corrupt or truncated"));
}

TEST(DecodeTest, ReadImageFile) {
  const std::string path = ::testing::TempDir() + "/read_image_file.png";
  const std::string png = Encode(Gradient(9, 4), ".png");
  std::ofstream(path, std::ios::binary) << png;
  auto rgb = ReadImageFile(path);
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  EXPECT_EQ(rgb->size(), cv::Size(9, 4));
  ImageLimits limits;
  limits.max_bytes = 10;
  auto too_big = ReadImageFile(path, limits);
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(too_big.status().message(), HasSubstr(path));
  EXPECT_EQ(ReadImageFile("/nonexistent.png").status().code(), absl::StatusCode::kNotFound);
  const std::string bad = ::testing::TempDir() + "/not_an_image.png";
  std::ofstream(bad) << "hello";
  auto not_image = ReadImageFile(bad);
  EXPECT_EQ(not_image.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(not_image.status().message(), HasSubstr(bad));
}

TEST(RawTensorTest, EveryLayoutAndChannelCount) {
  std::string data(2 * 3 * 4, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i);

  auto rgb = ImageFromRawTensor(data.substr(0, 18), {2, 3, 3}, TensorLayout::kHWC);
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  EXPECT_EQ(rgb->size(), cv::Size(3, 2));
  EXPECT_EQ(rgb->at<cv::Vec3b>(1, 2), cv::Vec3b(15, 16, 17));
  auto chw = ImageFromRawTensor(data.substr(0, 18), {3, 2, 3}, TensorLayout::kCHW);
  ASSERT_TRUE(chw.ok()) << chw.status();
  EXPECT_EQ(chw->at<cv::Vec3b>(0, 1), cv::Vec3b(1, 7, 13));

  auto rgba = ImageFromRawTensor(data, {2, 3, 4}, TensorLayout::kHWC);  // alpha dropped
  ASSERT_TRUE(rgba.ok()) << rgba.status();
  EXPECT_EQ(rgba->type(), CV_8UC3);
  EXPECT_EQ(rgba->at<cv::Vec3b>(1, 0), cv::Vec3b(12, 13, 14));
  auto rgba_chw = ImageFromRawTensor(data, {4, 2, 3}, TensorLayout::kCHW);
  ASSERT_TRUE(rgba_chw.ok()) << rgba_chw.status();
  EXPECT_EQ(rgba_chw->at<cv::Vec3b>(1, 2), cv::Vec3b(5, 11, 17));

  auto gray = ImageFromRawTensor(data.substr(0, 6), {2, 3, 1}, TensorLayout::kHWC);
  ASSERT_TRUE(gray.ok()) << gray.status();
  EXPECT_EQ(gray->type(), CV_8UC3);
  EXPECT_EQ(gray->at<cv::Vec3b>(1, 1), cv::Vec3b(4, 4, 4));
  auto gray_chw = ImageFromRawTensor(data.substr(0, 6), {1, 2, 3}, TensorLayout::kCHW);
  ASSERT_TRUE(gray_chw.ok());
  EXPECT_EQ(gray_chw->at<cv::Vec3b>(0, 2), cv::Vec3b(2, 2, 2));
}

TEST(RawTensorTest, BadShapesAreRefusedBeforeAllocating) {
  const std::string data(18, '\x10');
  const std::vector<std::pair<std::string, std::vector<int64_t>>> cases = {
      {"rank 2", {2, 9}},
      {"rank 4", {1, 2, 3, 3}},
      {"rank 0", {}},
      {"2 channels", {3, 3, 2}},
      {"5 channels", {2, 2, 5}},
      {"zero height", {0, 3, 3}},
      {"negative width", {2, -3, 3}},
      {"size mismatch", {3, 3, 3}},
      {"past the pixel limit", {10000, 10000, 3}},
      {"overflowing", {int64_t{1} << 40, int64_t{1} << 40, 3}},
  };
  for (const auto& [name, shape] : cases) {
    auto result = ImageFromRawTensor(data, shape, TensorLayout::kHWC);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << name;
  }
  EXPECT_THAT(ImageFromRawTensor(data, {10000, 10000, 3}, TensorLayout::kHWC).status().message(),
              HasSubstr("the limit is"));
  EXPECT_THAT(ImageFromRawTensor(data, {3, 3, 3}, TensorLayout::kHWC).status().message(),
              HasSubstr("holds 18 bytes; shape needs 27"));
  EXPECT_EQ(ImageFromRawTensor(data, {3, 2, 4}, TensorLayout::kCHW).status().code(),
            absl::StatusCode::kInvalidArgument);  // C=3 but 3*2*4 != 18
}

TEST(PreprocessTest, MatchesTheReferenceInputOfEveryCase) {
  const auto& cases = ::anoclip::testing::GoldenJson()["cases"];
  ASSERT_EQ(cases.size(), 3u);
  for (const auto& c : cases) {
    const std::string name = c["case"];
    SCOPED_TRACE(name);
    auto rgb = ReadImageFile(::anoclip::testing::TinyVitDir() + "/" + c["image"].get<std::string>());
    ASSERT_TRUE(rgb.ok()) << rgb.status();
    EXPECT_EQ(rgb->cols, c["width"].get<int>());
    EXPECT_EQ(rgb->rows, c["height"].get<int>());
    const at::Tensor input = PreprocessImage(*rgb, 80, NormalizeOptions{});
    const at::Tensor expected = ::anoclip::testing::GoldenTensor(name + "/input");
    ASSERT_EQ(input.sizes(), expected.sizes());
    EXPECT_EQ(input.scalar_type(), at::kFloat);
    EXPECT_TRUE(input.is_contiguous());
    if (rgb->cols == 80 && rgb->rows == 80) {
      EXPECT_TRUE(::anoclip::testing::AllClose(input, expected, 1e-5));
    } else {
      // Resized (case 2): within the README's bound for resized inputs...
      const at::Tensor error = (input - expected).abs();
      EXPECT_LE(error.mean().item<double>(), 0.02);
      EXPECT_LE(error.max().item<double>(), 0.3);
      // ...and, with PIL's own arithmetic, as close as the inputs that are not resized.
      EXPECT_TRUE(::anoclip::testing::AllClose(input, expected, 1e-5));
    }
  }
}

TEST(PreprocessTest, NormalisesInChannelOrderWithoutResizingAtTheModelSize) {
  cv::Mat rgb(4, 4, CV_8UC3, cv::Scalar(0, 0, 0));
  rgb.at<cv::Vec3b>(1, 2) = cv::Vec3b(255, 128, 7);
  NormalizeOptions options;
  options.mean = {0.5f, 0.25f, 0.f};
  options.std = {0.5f, 0.25f, 2.f};
  const at::Tensor input = PreprocessImage(rgb, 4, options);
  ASSERT_EQ(input.sizes(), (at::IntArrayRef{3, 4, 4}));
  EXPECT_FLOAT_EQ(input[0][1][2].item<float>(), (1.f - 0.5f) / 0.5f);
  EXPECT_FLOAT_EQ(input[1][1][2].item<float>(), (128 / 255.f - 0.25f) / 0.25f);
  EXPECT_FLOAT_EQ(input[2][1][2].item<float>(), (7 / 255.f) / 2.f);
  EXPECT_FLOAT_EQ(input[0][0][0].item<float>(), -1.f);
}

TEST(PreprocessTest, ShrinkingAndEnlargingKeepAFlatImageFlat) {
  NormalizeOptions options;
  options.mean = {0.f, 0.f, 0.f};
  options.std = {1.f, 1.f, 1.f};
  for (const cv::Size size : {cv::Size(200, 150), cv::Size(30, 20), cv::Size(200, 10)}) {
    const cv::Mat rgb(size, CV_8UC3, cv::Scalar(51, 102, 204));
    const at::Tensor input = PreprocessImage(rgb, 80, options);
    ASSERT_EQ(input.sizes(), (at::IntArrayRef{3, 80, 80}));
    EXPECT_NEAR(input[0].min().item<float>(), 0.2f, 1e-6);
    EXPECT_NEAR(input[1].max().item<float>(), 0.4f, 1e-6);
    EXPECT_NEAR(input[2].mean().item<float>(), 0.8f, 1e-6);
  }
  // A sub-image (not continuous) is read correctly.
  cv::Mat big(100, 100, CV_8UC3, cv::Scalar(0, 0, 0));
  big(cv::Rect(10, 10, 80, 80)) = cv::Scalar(255, 255, 255);
  const at::Tensor roi = PreprocessImage(big(cv::Rect(10, 10, 80, 80)), 80, options);
  EXPECT_FLOAT_EQ(roi.min().item<float>(), 1.f);
}

}  // namespace
}  // namespace anoclip::image
