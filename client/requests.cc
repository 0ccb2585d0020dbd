#include "client/requests.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/files.h"
#include "image/decode.h"
#include "image/render.h"

namespace anoclip::client {

std::set<std::string> DetectValueFlags() { return {"class", "kind", "views", "threshold", "min-region-area", "seed"}; }
std::set<std::string> DetectBoolFlags() { return {"tta", "use-calibration"}; }

absl::StatusOr<anoclip::v1::DetectRequest> RequestTemplate(const Arguments& args, bool want_heatmap) {
  anoclip::v1::DetectRequest request;
  ANOCLIP_ASSIGN_OR_RETURN(const std::string class_name, args.Required("class"));
  request.mutable_class_spec()->set_name(class_name);
  const std::string kind = args.String("kind");
  if (kind == "object") {
    request.mutable_class_spec()->set_kind(anoclip::v1::KIND_OBJECT);
  } else if (kind == "texture") {
    request.mutable_class_spec()->set_kind(anoclip::v1::KIND_TEXTURE);
  } else if (!kind.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--kind must be object or texture; was ", kind));
  }
  auto* options = request.mutable_options();
  ANOCLIP_ASSIGN_OR_RETURN(int64_t views, args.Int("views", 1, 1, 22));
  options->set_views(static_cast<int>(views));
  options->set_tta(args.Flag("tta"));
  ANOCLIP_ASSIGN_OR_RETURN(int64_t seed, args.Int("seed", 0, 0, INT64_MAX));
  options->mutable_tta_options()->set_seed(static_cast<uint64_t>(seed));
  if (args.Has("threshold") && args.Flag("use-calibration")) {
    return absl::InvalidArgumentError("give --threshold or --use-calibration, not both");
  }
  if (args.Has("threshold")) {
    ANOCLIP_ASSIGN_OR_RETURN(double threshold, args.Double("threshold", 0.5));
    options->set_threshold(static_cast<float>(threshold));
  }
  if (args.Flag("use-calibration")) options->set_use_calibration(true);
  ANOCLIP_ASSIGN_OR_RETURN(int64_t min_area, args.Int("min-region-area", 1, 0, INT64_MAX));
  options->set_min_region_area(min_area);
  if (want_heatmap) {
    options->set_heatmap_format(anoclip::v1::HEATMAP_FLOAT32);
    options->set_heatmap_size(anoclip::v1::HEATMAP_SIZE_ORIGINAL);
  }
  return request;
}

absl::StatusOr<std::string> ReadImageBytes(const std::string& path) {
  auto bytes = ReadFileToString(path);
  if (!bytes.ok()) return absl::NotFoundError(absl::StrCat("cannot read image ", path));
  return bytes;
}

absl::StatusOr<std::vector<std::string>> ImagesIn(const std::string& dir) {
  std::vector<std::string> paths;
  std::error_code error;
  std::filesystem::directory_iterator it(dir, error);
  if (error) return absl::NotFoundError(absl::StrCat("cannot list ", dir, ": ", error.message()));
  for (const auto& entry : it) {
    std::string ext = entry.path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    if (entry.is_regular_file(error) && (ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp" ||
                                         ext == ".tif" || ext == ".tiff")) {
      paths.push_back(entry.path().string());
    }
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

nlohmann::ordered_json ResponseToJson(const anoclip::v1::DetectResponse& r) {
  nlohmann::ordered_json json;
  json["image_score"] = r.image_score();
  json["max_pixel_score"] = r.max_pixel_score();
  json["class"] = r.class_name();
  json["kind"] = r.kind() == anoclip::v1::KIND_TEXTURE ? "texture" : "object";
  json["model"] = r.model_id();
  const auto& t = r.timings();
  json["timings_ms"] = {{"decode", t.decode_seconds() * 1e3},     {"queue", t.queue_seconds() * 1e3},
                        {"encode", t.encode_seconds() * 1e3},     {"tta", t.tta_seconds() * 1e3},
                        {"postprocess", t.postprocess_seconds() * 1e3}, {"total", t.total_seconds() * 1e3},
                        {"batch_size", t.batch_size()}};
  if (r.has_calibrated_image_score()) json["calibrated_image_score"] = r.calibrated_image_score();
  if (r.has_is_anomalous()) {
    json["regions"] = nlohmann::ordered_json::array();
    for (const auto& region : r.regions()) {
      json["regions"].push_back({{"x", region.x()}, {"y", region.y()}, {"width", region.width()},
                                 {"height", region.height()}, {"area", region.area()}, {"peak", region.peak()},
                                 {"mean", region.mean()}});
    }
    json["is_anomalous"] = r.is_anomalous();
  }
  return json;
}

absl::Status WriteResponseImages(const anoclip::v1::DetectResponse& response, const std::string& image_bytes,
                                 const std::string& dir, const std::string& prefix) {
  const auto& heatmap = response.heatmap();
  if (heatmap.format() != anoclip::v1::HEATMAP_FLOAT32 ||
      heatmap.data().size() != static_cast<size_t>(heatmap.width()) * heatmap.height() * sizeof(float)) {
    return absl::InvalidArgumentError("the response carries no float32 heatmap");
  }
  ANOCLIP_ASSIGN_OR_RETURN(cv::Mat rgb, image::DecodeImage(image_bytes));
  cv::Mat map(heatmap.height(), heatmap.width(), CV_32F, const_cast<char*>(heatmap.data().data()));
  cv::Mat gray = image::HeatmapToGray(map, 0.f, 0.f);
  if (gray.size() != rgb.size()) return absl::InvalidArgumentError("the heatmap is not at the image's size");
  std::vector<std::vector<cv::Point>> contours;
  for (const auto& region : response.regions()) {
    std::vector<cv::Point> contour;
    for (int i = 0; i + 1 < region.contour_size(); i += 2) contour.emplace_back(region.contour(i), region.contour(i + 1));
    contours.push_back(contour);
  }
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) return absl::PermissionDeniedError(absl::StrCat("cannot create ", dir));
  const std::string base = dir + "/" + prefix;
  ANOCLIP_RETURN_IF_ERROR(image::WritePng(base + "_heatmap.png", gray));
  ANOCLIP_RETURN_IF_ERROR(image::WritePng(base + "_overlay.png", image::RenderOverlay(rgb, gray, 0.5, contours)));
  if (response.has_is_anomalous()) {
    cv::Mat mask(rgb.size(), CV_8U, cv::Scalar(0));
    cv::drawContours(mask, contours, -1, cv::Scalar(255), cv::FILLED);
    ANOCLIP_RETURN_IF_ERROR(image::WritePng(base + "_mask.png", mask));
  }
  return absl::OkStatus();
}

}  // namespace anoclip::client
