// Decoding with limits, preprocessing against the reference, rendering.
#include <ATen/ATen.h>

#include <gtest/gtest.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "golden.h"
#include "image/decode.h"
#include "image/preprocess.h"
#include "image/render.h"

namespace anoclip::image {
namespace {

std::string Encode(const cv::Mat& image, const std::string& ext) {
  std::vector<uchar> bytes;
  EXPECT_TRUE(cv::imencode(ext, image, bytes));
  return std::string(bytes.begin(), bytes.end());
}

cv::Mat Gradient(int width, int height) {
  cv::Mat bgr(height, width, CV_8UC3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) bgr.at<cv::Vec3b>(y, x) = cv::Vec3b(x % 256, y % 256, 100);
  }
  return bgr;
}

TEST(DecodeTest, EveryFormatDecodesToRgbAtItsSize) {
  const cv::Mat bgr = Gradient(37, 21);
  for (const std::string ext : {".png", ".bmp", ".tiff", ".jpg"}) {
    SCOPED_TRACE(ext);
    const std::string bytes = Encode(bgr, ext);
    auto header = PeekImageHeader(bytes);
    ASSERT_TRUE(header.ok()) << header.status();
    EXPECT_EQ(header->width, 37);
    EXPECT_EQ(header->height, 21);
    auto rgb = DecodeImage(bytes);
    ASSERT_TRUE(rgb.ok()) << rgb.status();
    EXPECT_EQ(rgb->type(), CV_8UC3);
    EXPECT_EQ(rgb->size(), cv::Size(37, 21));
    if (ext != ".jpg") {  // lossless: the channels come back swapped to RGB
      EXPECT_EQ(rgb->at<cv::Vec3b>(3, 30), cv::Vec3b(100, 3, 30));
    }
  }
}

TEST(DecodeTest, GrayAlphaAndSixteenBitAreConverted) {
  cv::Mat gray(10, 12, CV_8U, cv::Scalar(77));
  auto from_gray = DecodeImage(Encode(gray, ".png"));
  ASSERT_TRUE(from_gray.ok());
  EXPECT_EQ(from_gray->at<cv::Vec3b>(5, 5), cv::Vec3b(77, 77, 77));

  cv::Mat bgra(10, 12, CV_8UC4, cv::Scalar(10, 20, 30, 0));
  auto from_alpha = DecodeImage(Encode(bgra, ".png"));
  ASSERT_TRUE(from_alpha.ok());
  EXPECT_EQ(from_alpha->at<cv::Vec3b>(0, 0), cv::Vec3b(30, 20, 10));

  cv::Mat deep(8, 8, CV_16UC3, cv::Scalar(65535, 257 * 128, 0));
  auto from_deep = DecodeImage(Encode(deep, ".png"));
  ASSERT_TRUE(from_deep.ok());
  EXPECT_EQ(from_deep->at<cv::Vec3b>(1, 1), cv::Vec3b(0, 128, 255));
}

TEST(DecodeTest, BadInputsAreInvalidArgument) {
  const std::string png = Encode(Gradient(40, 40), ".png");
  // A PNG signature and IHDR claiming 100000x100000: refused from the header alone.
  std::string huge = png.substr(0, 33);
  const uint8_t size[8] = {0, 1, 0x86, 0xA0, 0, 1, 0x86, 0xA0};
  std::memcpy(huge.data() + 16, size, 8);
  std::string zero = png.substr(0, 33);
  std::memset(zero.data() + 16, 0, 8);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"empty", ""},
      {"random", "\x13\x99\x01\x42 random bytes that are no image"},
      {"truncated png", png.substr(0, png.size() / 2)},
      {"png header only", png.substr(0, 20)},
      {"zero size", zero},
      {"huge header", huge},
      {"truncated jpeg", Encode(Gradient(40, 40), ".jpg").substr(0, 30)},
  };
  for (const auto& [name, bytes] : cases) {
    auto result = DecodeImage(bytes);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << name << ": " << result.status();
  }
  ImageLimits small;
  small.max_pixels = 100;
  EXPECT_EQ(DecodeImage(png, small).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadImageFile("/nonexistent.png").status().code(), absl::StatusCode::kNotFound);
}

TEST(DecodeTest, RawTensorsInBothLayouts) {
  std::string hwc(2 * 3 * 3, '\0');
  for (size_t i = 0; i < hwc.size(); ++i) hwc[i] = static_cast<char>(i);
  auto image = ImageFromRawTensor(hwc, {2, 3, 3}, TensorLayout::kHWC);
  ASSERT_TRUE(image.ok());
  EXPECT_EQ(image->at<cv::Vec3b>(1, 2), cv::Vec3b(15, 16, 17));
  auto chw = ImageFromRawTensor(hwc, {3, 2, 3}, TensorLayout::kCHW);
  ASSERT_TRUE(chw.ok());
  EXPECT_EQ(chw->at<cv::Vec3b>(0, 1), cv::Vec3b(1, 7, 13));
  EXPECT_FALSE(ImageFromRawTensor(hwc, {2, 3}, TensorLayout::kHWC).ok());
  EXPECT_FALSE(ImageFromRawTensor(hwc, {2, 3, 2}, TensorLayout::kHWC).ok());
  EXPECT_FALSE(ImageFromRawTensor(hwc, {3, 3, 3}, TensorLayout::kHWC).ok());
  EXPECT_FALSE(ImageFromRawTensor(hwc, {0, 3, 3}, TensorLayout::kHWC).ok());
}

TEST(PreprocessTest, MatchesTheReferenceInputOfEveryCase) {
  for (const auto& c : ::anoclip::testing::GoldenJson()["cases"]) {
    const std::string name = c["case"];
    SCOPED_TRACE(name);
    auto rgb = ReadImageFile(::anoclip::testing::TinyVitDir() + "/" + c["image"].get<std::string>());
    ASSERT_TRUE(rgb.ok()) << rgb.status();
    EXPECT_EQ(rgb->cols, c["width"].get<int>());
    auto input = PreprocessImage(*rgb, 80, NormalizeOptions{});
    auto expected = ::anoclip::testing::GoldenTensor(name + "/input");
    if (rgb->cols == 80 && rgb->rows == 80) {
      EXPECT_TRUE(::anoclip::testing::AllClose(input, expected, 1e-5));
    } else {
      // Resized: the README bounds the mean and max error (PIL's filter is not OpenCV's).
      auto error = (input - expected).abs();
      EXPECT_LE(error.mean().item<double>(), 0.02);
      EXPECT_LE(error.max().item<double>(), 0.3);
    }
  }
}

TEST(RenderTest, HeatmapsResizeRenderAndRoundTripAsPng) {
  cv::Mat heatmap(10, 10, CV_32F, cv::Scalar(0.25f));
  heatmap.at<float>(5, 5) = 0.75f;
  cv::Mat resized = ResizeHeatmap(heatmap, 40, 30);
  EXPECT_EQ(resized.size(), cv::Size(40, 30));
  cv::Mat gray = HeatmapToGray(resized, 0.f, 0.f);
  double min = 0, max = 0;
  cv::minMaxLoc(gray, &min, &max);
  EXPECT_EQ(min, 0);
  EXPECT_EQ(max, 255);
  cv::Mat fixed = HeatmapToGray(heatmap, 0.f, 1.f);
  EXPECT_EQ(fixed.at<uchar>(0, 0), 64);
  cv::Mat rgb(30, 40, CV_8UC3, cv::Scalar(0, 0, 0));
  cv::Mat overlay = RenderOverlay(rgb, gray, 0.5, {{{1, 1}, {10, 1}, {10, 10}}});
  EXPECT_EQ(overlay.type(), CV_8UC3);
  EXPECT_EQ(overlay.size(), rgb.size());
  auto png = EncodePng(gray);
  ASSERT_TRUE(png.ok());
  auto decoded = DecodeImage(*png);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->size(), gray.size());
  EXPECT_EQ(decoded->at<cv::Vec3b>(15, 20)[0], gray.at<uchar>(15, 20));
}

}  // namespace
}  // namespace anoclip::image
