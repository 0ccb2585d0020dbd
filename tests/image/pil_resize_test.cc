// ResizeBilinearLikePil against PIL itself: random images are written as PNG, resized by Debian's
// python3-pil (tests/image/pil_resize.py) at test time, and compared pixel by pixel.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include "image/pil_resize.h"

namespace anoclip::image {
namespace {

struct SizePair {
  cv::Size from, to;
};

// Shrinking, enlarging, both at once, non-square, tiny and large factors.
const std::vector<SizePair> kPairs = {
    {{200, 150}, {80, 80}},   {{80, 80}, {200, 200}},  {{33, 17}, {80, 80}},    {{1024, 1024}, {240, 240}},
    {{700, 300}, {240, 240}}, {{50, 120}, {80, 80}},   {{81, 79}, {80, 80}},    {{7, 7}, {80, 80}},
    {{240, 240}, {224, 224}}, {{640, 480}, {100, 37}}, {{1, 1}, {5, 5}},        {{300, 301}, {299, 300}},
    {{80, 80}, {80, 40}},     {{45, 80}, {80, 80}},
};

// Noise over a gradient: every rounding step of the filter shows.
cv::Mat RandomImage(cv::Size size, int channels, uint64_t seed) {
  cv::RNG rng(seed);
  cv::Mat image(size, CV_8UC(channels));
  rng.fill(image, cv::RNG::UNIFORM, 0, 256);
  for (int y = 0; y < size.height; y += 2) {
    for (int x = 0; x < image.cols * channels; ++x) image.ptr<uint8_t>(y)[x] = static_cast<uint8_t>((x * 7 + y) % 256);
  }
  return image;
}

std::string TempDir() {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("anoclip_pil_resize_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir.string();
}

TEST(PilResizeTest, EqualsPilBilinearWithinOneGreyLevel) {
  if (std::system("/usr/bin/python3 -c 'import PIL' 2>/dev/null") != 0) {
    FAIL() << "Debian's python3-pil is not installed (scripts/install-deps.sh installs it)";
  }
  const std::string dir = TempDir();
  const std::string script = std::string(ANOCLIP_SOURCE_DIR) + "/tests/image/pil_resize.py";
  std::string command = "/usr/bin/python3 " + script;
  std::vector<cv::Mat> inputs;
  for (size_t i = 0; i < kPairs.size(); ++i) {
    for (int channels : {1, 3}) {
      const cv::Mat image = RandomImage(kPairs[i].from, channels, 17 * i + channels);
      const std::string stem = dir + "/" + std::to_string(i) + "_" + std::to_string(channels);
      // Gray stays gray; RGB is written as BGR so that PIL reads the channels we hold.
      ASSERT_TRUE(cv::imwrite(stem + "_in.png", image));
      command += " " + stem + "_in.png " + stem + "_pil.png " + std::to_string(kPairs[i].to.width) + " " +
                 std::to_string(kPairs[i].to.height);
      inputs.push_back(image);
    }
  }
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  size_t index = 0;
  for (size_t i = 0; i < kPairs.size(); ++i) {
    for (int channels : {1, 3}) {
      SCOPED_TRACE(::testing::Message() << kPairs[i].from << " -> " << kPairs[i].to << ", " << channels << " ch");
      const std::string stem = dir + "/" + std::to_string(i) + "_" + std::to_string(channels);
      const cv::Mat expected = cv::imread(stem + "_pil.png", channels == 1 ? cv::IMREAD_GRAYSCALE : cv::IMREAD_COLOR);
      ASSERT_FALSE(expected.empty());
      const cv::Mat actual = ResizeBilinearLikePil(inputs[index++], kPairs[i].to.width, kPairs[i].to.height);
      ASSERT_EQ(actual.size(), expected.size());
      ASSERT_EQ(actual.type(), expected.type());
      cv::Mat difference;
      cv::absdiff(actual, expected, difference);
      double max_difference = 0;
      cv::minMaxLoc(difference.reshape(1), nullptr, &max_difference);
      EXPECT_LE(max_difference, 1.0);
      // Not just close: the same arithmetic gives the same bytes.
      EXPECT_EQ(cv::countNonZero(difference.reshape(1)), 0) << "max difference " << max_difference;
    }
  }
  std::filesystem::remove_all(dir);
}

TEST(PilResizeTest, RefusesWhatItCannotResize) {
  EXPECT_THROW(ResizeBilinearLikePil(cv::Mat(4, 4, CV_32F), 2, 2), std::invalid_argument);
  EXPECT_THROW(ResizeBilinearLikePil(cv::Mat(4, 4, CV_8UC1), 0, 2), std::invalid_argument);
  const cv::Mat same(4, 4, CV_8UC1, cv::Scalar(9));
  EXPECT_EQ(cv::countNonZero(ResizeBilinearLikePil(same, 4, 4) != same), 0);
}

}  // namespace
}  // namespace anoclip::image
