#include "client/samples.h"

#include <filesystem>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"

namespace anoclip::client {
namespace {

cv::Mat Part(int size, int seed) {
  cv::Mat image(size, size, CV_8UC3, cv::Scalar(200 - seed * 3, 205, 210));
  cv::RNG rng(seed);
  cv::Mat noise(size, size, CV_8UC3);
  rng.fill(noise, cv::RNG::NORMAL, 0, 4);
  image += noise;
  const cv::Point center(size / 2 + seed % 5, size / 2 - seed % 3);
  cv::circle(image, center, size * 3 / 8, cv::Scalar(70, 90, 120), cv::FILLED, cv::LINE_AA);
  cv::circle(image, center, size / 5, cv::Scalar(40, 55, 75), cv::FILLED, cv::LINE_AA);
  cv::circle(image, center, size * 3 / 8, cv::Scalar(30, 30, 30), 3, cv::LINE_AA);
  return image;
}

}  // namespace

std::vector<SampleImage> GenerateSamples(int size) {
  std::vector<SampleImage> samples;
  samples.push_back({"good_0", Part(size, 1)});
  samples.push_back({"good_1", Part(size, 2)});
  cv::Mat scratch = Part(size, 3);
  cv::line(scratch, {size / 3, size / 3}, {size * 2 / 3, size / 2}, cv::Scalar(235, 235, 235), 4, cv::LINE_AA);
  samples.push_back({"defect_scratch", scratch});
  cv::Mat spot = Part(size, 4);
  cv::ellipse(spot, {size * 5 / 8, size * 3 / 5}, {size / 14, size / 20}, 30, 0, 360, cv::Scalar(150, 60, 20),
              cv::FILLED, cv::LINE_AA);
  samples.push_back({"defect_spot", spot});
  cv::Mat crack = Part(size, 5);
  std::vector<cv::Point> polyline = {{size / 2, size / 4}, {size / 2 + 12, size / 3}, {size / 2 - 4, size * 2 / 5},
                                     {size / 2 + 10, size / 2}};
  cv::polylines(crack, polyline, false, cv::Scalar(15, 15, 15), 3, cv::LINE_AA);
  samples.push_back({"defect_crack", crack});
  return samples;
}

absl::Status WriteSamples(const std::string& dir, const std::vector<SampleImage>& samples) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) return absl::PermissionDeniedError(absl::StrCat("cannot create ", dir, ": ", error.message()));
  for (const auto& sample : samples) {
    cv::Mat bgr;
    cv::cvtColor(sample.rgb, bgr, cv::COLOR_RGB2BGR);
    if (!cv::imwrite(dir + "/" + sample.name + ".png", bgr)) {
      return absl::PermissionDeniedError(absl::StrCat("cannot write ", dir, "/", sample.name, ".png"));
    }
  }
  return absl::OkStatus();
}

}  // namespace anoclip::client
