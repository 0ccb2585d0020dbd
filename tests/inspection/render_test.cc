// Rendering: resize, gray scales, the JET blend, colour bar and caption, PNG encoding.
#include <gtest/gtest.h>


#include <opencv2/imgproc.hpp>

#include "image/decode.h"
#include "inspection/render.h"
#include "pixels.h"

namespace anoclip::inspection {
namespace {

cv::Mat Gradient(int width, int height) {
  cv::Mat rgb(height, width, CV_8UC3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) rgb.at<cv::Vec3b>(y, x) = cv::Vec3b(x % 256, y % 256, 100);
  }
  return rgb;
}

TEST(RenderTest, ResizeAndGrayScale) {
  cv::Mat heatmap(10, 10, CV_32F, cv::Scalar(0.25f));
  heatmap.at<float>(5, 5) = 0.75f;
  const cv::Mat resized = ResizeHeatmap(heatmap, 40, 30);
  EXPECT_EQ(resized.size(), cv::Size(40, 30));
  EXPECT_EQ(resized.type(), CV_32F);
  cv::Mat same = ResizeHeatmap(heatmap, 10, 10);
  same.at<float>(0, 0) = 9.f;  // a copy, not a view
  EXPECT_FLOAT_EQ(heatmap.at<float>(0, 0), 0.25f);

  const cv::Mat own_range = HeatmapToGray(resized, 0.f, 0.f);
  EXPECT_EQ(own_range.type(), CV_8U);
  double min = 0, max = 0;
  cv::minMaxLoc(own_range, &min, &max);
  EXPECT_EQ(min, 0);
  EXPECT_EQ(max, 255);
  const cv::Mat fixed = HeatmapToGray(heatmap, 0.f, 1.f);
  EXPECT_EQ(fixed.at<uchar>(0, 0), 64);
  EXPECT_EQ(fixed.at<uchar>(5, 5), 191);
  const cv::Mat clamped = HeatmapToGray(heatmap, 0.3f, 0.5f);
  EXPECT_EQ(clamped.at<uchar>(0, 0), 0);
  EXPECT_EQ(clamped.at<uchar>(5, 5), 255);
  const cv::Mat flat = HeatmapToGray(cv::Mat(5, 5, CV_32F, cv::Scalar(0.7f)), 0.f, 0.f);
  EXPECT_EQ(cv::countNonZero(flat), 0);
}

TEST(RenderTest, BlendIsJetInRgbOrderWithWhiteContours) {
  const cv::Mat black(30, 40, CV_8UC3, cv::Scalar(0, 0, 0));
  cv::Mat gray(30, 40, CV_8U, cv::Scalar(0));
  gray(cv::Rect(20, 0, 20, 30)) = 255;
  const cv::Mat full = BlendHeatmap(black, gray, 1.0);
  ASSERT_EQ(full.type(), CV_8UC3);
  ASSERT_EQ(full.size(), black.size());
  const cv::Vec3b cold = full.at<cv::Vec3b>(15, 5), hot = full.at<cv::Vec3b>(15, 35);
  EXPECT_GT(cold[2], 100);  // low scores are blue...
  EXPECT_LT(cold[0], 10);
  EXPECT_GT(hot[0], 100);   // ...high scores red, in RGB order
  EXPECT_LT(hot[2], 10);

  const cv::Mat image(30, 40, CV_8UC3, cv::Scalar(10, 200, 30));
  EXPECT_EQ(cv::norm(BlendHeatmap(image, gray, 0.0), image, cv::NORM_INF), 0);  // alpha 0: the image
  const cv::Mat half = BlendHeatmap(image, gray, 0.5);
  EXPECT_NEAR(half.at<cv::Vec3b>(15, 35)[1], (200 + hot[1]) / 2.0, 1);

  const cv::Mat outlined = BlendHeatmap(black, gray, 0.5, {{{1, 1}, {10, 1}, {10, 10}, {1, 10}}});
  EXPECT_EQ(outlined.at<cv::Vec3b>(1, 5), cv::Vec3b(255, 255, 255));
  EXPECT_EQ(outlined.at<cv::Vec3b>(6, 10), cv::Vec3b(255, 255, 255));
  EXPECT_NE(outlined.at<cv::Vec3b>(5, 5), cv::Vec3b(255, 255, 255));

  // A heatmap at another size is fitted to the image.
  const cv::Mat small_gray(3, 4, CV_8U, cv::Scalar(255));
  const cv::Mat fitted = BlendHeatmap(black, small_gray, 1.0);
  EXPECT_EQ(fitted.size(), black.size());
  EXPECT_EQ(fitted.at<cv::Vec3b>(29, 39), hot);
}

TEST(RenderTest, PngRoundTripsAndBadImagesAreRefused) {
  cv::Mat heatmap(30, 40, CV_32F);
  cv::randu(heatmap, 0.f, 1.f);
  const cv::Mat gray = HeatmapToGray(heatmap, 0.f, 1.f);
  auto png = EncodePng(gray);
  ASSERT_TRUE(png.ok()) << png.status();
  auto header = image::PeekImageHeader(*png);
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->width, 40);
  EXPECT_EQ(header->height, 30);
  auto decoded = image::DecodeImage(*png);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  std::vector<cv::Mat> channels;
  cv::split(*decoded, channels);
  EXPECT_EQ(cv::norm(channels[0], gray, cv::NORM_INF), 0);

  cv::Mat rgb = Gradient(17, 9);  // any 3-channel content: it must come back in the same order
  const std::string path = ::testing::TempDir() + "/round_trip.png";
  ASSERT_TRUE(WritePng(path, rgb).ok());
  auto read = image::ReadImageFile(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(cv::norm(*read, rgb, cv::NORM_INF), 0);
  EXPECT_EQ(cv::norm(rgb, Gradient(17, 9), cv::NORM_INF), 0);  // encoding left the input alone

  EXPECT_FALSE(WritePng("/nonexistent-dir/x.png", rgb).ok());
  for (const cv::Mat& bad : {cv::Mat(), cv::Mat(4, 4, CV_32F, cv::Scalar(0.5)), cv::Mat(4, 4, CV_8UC4)}) {
    EXPECT_EQ(EncodePng(bad).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(RenderTest, ColourBarRunsFromRedAtTheTopToBlueAtTheBottomInAFrame) {
  cv::Mat image(200, 300, CV_8UC3, cv::Scalar(128, 128, 128));
  DrawColourBar(image, "0.00", "1.00");
  const cv::Rect bar = ColourBarRect(image.size());
  ASSERT_GT(bar.height, 20);
  ASSERT_GT(bar.width, 4);
  EXPECT_LE(bar.br().x, image.cols);
  const int x = bar.x + bar.width / 2;
  EXPECT_EQ(image.at<cv::Vec3b>(bar.y + 2, x), JetColour(255 - 255 * 2 / (bar.height - 1)));
  const cv::Vec3b top = image.at<cv::Vec3b>(bar.y + 2, x), bottom = image.at<cv::Vec3b>(bar.br().y - 3, x);
  EXPECT_GT(top[0], 100);  // red at the high end
  EXPECT_LT(top[2], 10);
  EXPECT_GT(bottom[2], 100);  // blue at the low end
  EXPECT_LT(bottom[0], 10);
  EXPECT_EQ(image.at<cv::Vec3b>(bar.y, x), cv::Vec3b(0, 0, 0)) << "framed in black";
  // The labels: white text above and below the bar.
  const cv::Mat above = image(cv::Rect(bar.x - 20, 0, bar.width + 20, bar.y));
  const cv::Mat below = image(cv::Rect(bar.x - 20, bar.br().y, bar.width + 20, image.rows / 4));
  EXPECT_GT(BrightPixels(above), 10);
  EXPECT_GT(BrightPixels(below), 10);
  // Elsewhere the image is untouched.
  EXPECT_EQ(image.at<cv::Vec3b>(150, 20), cv::Vec3b(128, 128, 128));
}

TEST(RenderTest, CaptionIsWhiteTextOnABlackBoxLeftOfTheBar) {
  cv::Mat image(120, 400, CV_8UC3, cv::Scalar(200, 200, 200));
  const cv::Rect box = DrawCaption(image, "score 0.734 ANOMALOUS");
  EXPECT_GT(box.x, 0);  // in the top-left corner, off the edge
  EXPECT_LT(box.x, 10);
  EXPECT_LT(box.y, 10);
  EXPECT_LT(box.br().x, ColourBarRect(image.size()).x) << "the caption leaves the bar free";
  const cv::Mat inside = image(box);
  int black = 0;
  for (int y = 0; y < inside.rows; ++y) {
    for (int x = 0; x < inside.cols; ++x) black += inside.at<cv::Vec3b>(y, x) == cv::Vec3b(0, 0, 0);
  }
  const int white = BrightPixels(inside);
  EXPECT_GT(white, 50);
  EXPECT_GT(black, white);
  EXPECT_EQ(image.at<cv::Vec3b>(box.br().y + 2, box.x + 2), cv::Vec3b(200, 200, 200));
  // A small image still gets its caption, shrunk.
  cv::Mat small(40, 60, CV_8UC3, cv::Scalar(200, 200, 200));
  const cv::Rect small_box = DrawCaption(small, "score 0.734 ANOMALOUS");
  EXPECT_FALSE(small_box.empty());
  EXPECT_LE(small_box.br().x, small.cols);
}

}  // namespace
}  // namespace anoclip::inspection
