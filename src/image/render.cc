#include "image/render.h"

#include <cstdio>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"

namespace anoclip::image {

cv::Mat ResizeHeatmap(const cv::Mat& heatmap, int width, int height) {
  if (heatmap.cols == width && heatmap.rows == height) return heatmap.clone();
  cv::Mat resized;
  cv::resize(heatmap, resized, cv::Size(width, height), 0, 0, cv::INTER_LINEAR);
  return resized;
}

cv::Mat HeatmapToGray(const cv::Mat& heatmap, float low, float high) {
  if (!(low < high)) {
    double min = 0, max = 0;
    cv::minMaxLoc(heatmap, &min, &max);
    low = static_cast<float>(min);
    high = static_cast<float>(max);
  }
  cv::Mat gray;
  const double scale = high > low ? 255.0 / (high - low) : 0.0;
  heatmap.convertTo(gray, CV_8U, scale, -low * scale);  // saturates outside [low, high]
  return gray;
}

cv::Mat RenderOverlay(const cv::Mat& rgb, const cv::Mat& gray, double alpha,
                      const std::vector<std::vector<cv::Point>>& contours) {
  cv::Mat fitted = gray;
  if (gray.size() != rgb.size()) cv::resize(gray, fitted, rgb.size(), 0, 0, cv::INTER_LINEAR);
  cv::Mat colored_bgr, colored;
  cv::applyColorMap(fitted, colored_bgr, cv::COLORMAP_JET);  // OpenCV colour maps are BGR
  cv::cvtColor(colored_bgr, colored, cv::COLOR_BGR2RGB);
  cv::Mat overlay;
  cv::addWeighted(rgb, 1.0 - alpha, colored, alpha, 0.0, overlay);
  if (!contours.empty()) cv::drawContours(overlay, contours, -1, cv::Scalar(255, 255, 255), 2);
  return overlay;
}

absl::StatusOr<std::string> EncodePng(const cv::Mat& image) {
  if (image.empty() || image.depth() != CV_8U || (image.channels() != 1 && image.channels() != 3)) {
    return absl::InvalidArgumentError("PNG encoding takes a non-empty 8-bit gray or RGB image");
  }
  // A fresh matrix: converting into a copy of `image`'s header would swap the caller's pixels.
  cv::Mat bgr;
  if (image.channels() == 3) {
    cv::cvtColor(image, bgr, cv::COLOR_RGB2BGR);
  } else {
    bgr = image;
  }
  std::vector<uchar> bytes;
  try {
    if (!cv::imencode(".png", bgr, bytes)) return absl::InternalError("PNG encoding failed");
  } catch (const cv::Exception& error) {
    return absl::InternalError(absl::StrCat("PNG encoding failed: ", error.what()));
  }
  return std::string(bytes.begin(), bytes.end());
}

absl::Status WritePng(const std::string& path, const cv::Mat& image) {
  auto bytes = EncodePng(image);
  if (!bytes.ok()) return bytes.status();
  FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  const size_t written = std::fwrite(bytes->data(), 1, bytes->size(), file);
  std::fclose(file);
  if (written != bytes->size()) return absl::DataLossError(absl::StrCat("writing ", path, " failed"));
  return absl::OkStatus();
}

}  // namespace anoclip::image
