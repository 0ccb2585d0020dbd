#include "inspection/regions.h"

#include <algorithm>
#include <cmath>

#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"

namespace anoclip::inspection {
namespace {

std::vector<Region> Components(const cv::Mat& heatmap, const RegionOptions& options) {
  const cv::Mat mask = heatmap > options.threshold;  // NaN pixels are never above
  cv::Mat labels, stats, centroids;
  const int count = cv::connectedComponentsWithStats(mask, labels, stats, centroids, options.connectivity, CV_32S);
  std::vector<Region> regions;
  for (int label = 1; label < count; ++label) {
    const int64_t area = stats.at<int>(label, cv::CC_STAT_AREA);
    if (area < options.min_area) continue;
    Region region;
    region.x = stats.at<int>(label, cv::CC_STAT_LEFT);
    region.y = stats.at<int>(label, cv::CC_STAT_TOP);
    region.width = stats.at<int>(label, cv::CC_STAT_WIDTH);
    region.height = stats.at<int>(label, cv::CC_STAT_HEIGHT);
    region.area = area;
    // Statistics and contour on the component's box only: the other components' pixels in it
    // are masked out by label.
    const cv::Rect box(region.x, region.y, region.width, region.height);
    const cv::Mat component = labels(box) == label;
    double peak = 0;
    cv::minMaxLoc(heatmap(box), nullptr, &peak, nullptr, nullptr, component);
    region.peak = static_cast<float>(peak);
    region.mean = static_cast<float>(cv::mean(heatmap(box), component)[0]);
    std::vector<std::vector<cv::Point>> contours;
    cv::findContours(component, contours, cv::RETR_EXTERNAL, cv::CHAIN_APPROX_SIMPLE, box.tl());
    if (!contours.empty()) {
      region.contour = *std::max_element(contours.begin(), contours.end(), [](const auto& a, const auto& b) {
        return cv::contourArea(a) < cv::contourArea(b);
      });
    }
    regions.push_back(std::move(region));
  }
  // Stable: equal peaks keep the labels' raster order, so the output is the same run to run.
  std::stable_sort(regions.begin(), regions.end(), [](const Region& a, const Region& b) { return a.peak > b.peak; });
  return regions;
}

}  // namespace

absl::StatusOr<std::vector<Region>> FindRegions(const cv::Mat& heatmap, const RegionOptions& options) {
  if (heatmap.empty() || heatmap.type() != CV_32FC1) {
    return absl::InvalidArgumentError("heatmap must be a non-empty single-channel float32 map");
  }
  if (!std::isfinite(options.threshold)) return absl::InvalidArgumentError("region threshold must be finite");
  if (options.connectivity != 4 && options.connectivity != 8) {
    return absl::InvalidArgumentError(absl::StrCat("connectivity must be 4 or 8; was ", options.connectivity));
  }
  if (options.min_area < 0) {
    return absl::InvalidArgumentError(absl::StrCat("min_area must be >= 0; was ", options.min_area));
  }
  try {
    return Components(heatmap, options);
  } catch (const cv::Exception& error) {
    return absl::InternalError(absl::StrCat("finding regions failed: ", error.what()));
  }
}

}  // namespace anoclip::inspection
