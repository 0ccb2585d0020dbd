#include "inspection/render.h"

#include <algorithm>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "common/files.h"

namespace anoclip::inspection {
namespace {

constexpr int kFont = cv::FONT_HERSHEY_SIMPLEX;

// Text this size or larger stays legible; smaller images get it anyway, clipped.
constexpr double kMinFontScale = 0.3;

// Margin and bar width grow with the image so the bar stays visible on large inputs.
int Margin(cv::Size size) { return std::max(2, std::min(size.width, size.height) / 64); }

double LabelScale(cv::Size size) { return std::max(kMinFontScale, std::min(1.0, size.height / 640.0)); }

// The widest bar label ("0.00") juts out left of the bar by this much at most.
int LabelOverhang(cv::Size size) {
  int baseline = 0;
  return cv::getTextSize("0.00", kFont, LabelScale(size), 1, &baseline).width;
}

}  // namespace

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

cv::Vec3b JetColour(int gray) {
  cv::Mat level(1, 1, CV_8U, cv::Scalar(std::clamp(gray, 0, 255))), bgr;
  cv::applyColorMap(level, bgr, cv::COLORMAP_JET);
  const cv::Vec3b c = bgr.at<cv::Vec3b>(0, 0);
  return {c[2], c[1], c[0]};
}

cv::Mat BlendHeatmap(const cv::Mat& rgb, const cv::Mat& gray, double alpha,
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

cv::Rect ColourBarRect(cv::Size size) {
  const int margin = Margin(size);
  const int width = std::max(4, size.width / 32);
  const int height = std::max(8, size.height / 2);
  // Room above and below for the labels.
  const int label = std::max(8, size.height / 16);
  return cv::Rect(size.width - margin - width, margin + label, width, height - 2 * label) & cv::Rect({}, size);
}

void DrawColourBar(cv::Mat& rgb, const std::string& low, const std::string& high) {
  const cv::Rect bar = ColourBarRect(rgb.size());
  if (bar.width < 2 || bar.height < 2) return;
  for (int y = 0; y < bar.height; ++y) {
    const int level = bar.height == 1 ? 255 : 255 - (255 * y) / (bar.height - 1);
    const cv::Vec3b c = JetColour(level);
    rgb(cv::Rect(bar.x, bar.y + y, bar.width, 1)).setTo(cv::Scalar(c[0], c[1], c[2]));
  }
  cv::rectangle(rgb, bar, cv::Scalar(0, 0, 0), 1);
  const double scale = LabelScale(rgb.size());
  for (const auto& [text, above] : {std::pair{high, true}, std::pair{low, false}}) {
    int baseline = 0;
    const cv::Size size = cv::getTextSize(text, kFont, scale, 1, &baseline);
    const int x = std::max(0, bar.x + bar.width - size.width);
    // Baselines clear of the bar by more than the outline's width.
    const int y = above ? bar.y - 3 - baseline : bar.y + bar.height + size.height + 3;
    cv::putText(rgb, text, {x, y}, kFont, scale, cv::Scalar(0, 0, 0), 3, cv::LINE_AA);
    cv::putText(rgb, text, {x, y}, kFont, scale, cv::Scalar(255, 255, 255), 1, cv::LINE_AA);
  }
}

cv::Rect DrawCaption(cv::Mat& rgb, const std::string& text) {
  const int margin = Margin(rgb.size());
  const int room = std::max(1, ColourBarRect(rgb.size()).x - LabelOverhang(rgb.size()) - 4 * margin);
  int baseline = 0;
  const cv::Size unit = cv::getTextSize(text, kFont, 1.0, 1, &baseline);
  const double scale = std::clamp(static_cast<double>(room) / std::max(1, unit.width), kMinFontScale, 1.0);
  const cv::Size size = cv::getTextSize(text, kFont, scale, 1, &baseline);
  const cv::Rect box = cv::Rect(margin, margin, size.width + 2 * margin, size.height + baseline + 2 * margin) &
                       cv::Rect({}, rgb.size());
  rgb(box).setTo(cv::Scalar(0, 0, 0));
  cv::putText(rgb, text, {2 * margin, 2 * margin + size.height}, kFont, scale, cv::Scalar(255, 255, 255), 1,
              cv::LINE_AA);
  return box;
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
  return WriteStringToFile(path, *bytes);
}

}  // namespace anoclip::inspection
