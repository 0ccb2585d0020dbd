#include "client/requests.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <opencv2/imgcodecs.hpp>

#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "common/status_macros.h"
#include "image/decode.h"
#include "proto/inspection_proto.h"

namespace anoclip::client {

absl::StatusOr<anoclip::v1::Kind> KindFromName(const std::string& name, const std::string& what) {
  if (name.empty()) return anoclip::v1::KIND_UNSPECIFIED;
  if (name == "object") return anoclip::v1::KIND_OBJECT;
  if (name == "texture") return anoclip::v1::KIND_TEXTURE;
  return absl::InvalidArgumentError(absl::StrCat(what, " must be object or texture; was \"", name, "\""));
}

std::string KindName(anoclip::v1::Kind kind) {
  switch (kind) {
    case anoclip::v1::KIND_OBJECT: return "object";
    case anoclip::v1::KIND_TEXTURE: return "texture";
    case anoclip::v1::KIND_UNSPECIFIED: return "unspecified";
    default: return absl::StrCat("unknown kind ", static_cast<int>(kind));
  }
}

absl::StatusOr<anoclip::v1::ClassSpec> ClassSpecFromArguments(const Arguments& args) {
  anoclip::v1::ClassSpec spec;
  ANOCLIP_ASSIGN_OR_RETURN(const std::string name, args.Required("class"));
  spec.set_name(name);
  ANOCLIP_ASSIGN_OR_RETURN(const anoclip::v1::Kind kind, KindFromName(args.String("kind"), "--kind"));
  spec.set_kind(kind);
  return spec;
}

std::set<std::string> DetectValueFlags() { return {"class", "kind", "views", "threshold", "min-region-area", "seed"}; }
std::set<std::string> DetectBoolFlags() { return {"tta", "use-calibration"}; }

absl::StatusOr<anoclip::v1::DetectRequest> RequestTemplate(const Arguments& args, bool want_heatmap) {
  anoclip::v1::DetectRequest request;
  ANOCLIP_ASSIGN_OR_RETURN(*request.mutable_class_spec(), ClassSpecFromArguments(args));
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
    options->set_heatmap_format(anoclip::v1::HEATMAP_FORMAT_PNG);
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

std::vector<std::string> OutputNames(const std::vector<std::string>& paths) {
  namespace fs = std::filesystem;
  std::vector<fs::path> absolute;
  for (const auto& path : paths) absolute.push_back(fs::absolute(path).lexically_normal());
  if (absolute.empty()) return {};
  fs::path common = absolute.front().parent_path();
  for (const auto& path : absolute) {
    // Shorten `common` until it is a prefix of this image's folder.
    while (true) {
      const fs::path relative = path.parent_path().lexically_relative(common);
      if (!relative.empty() && *relative.begin() != "..") break;
      common = common.parent_path();
    }
  }
  std::vector<std::string> names;
  for (const auto& path : absolute) names.push_back(path.lexically_relative(common).string());
  return names;
}

nlohmann::ordered_json ResponseToJson(const anoclip::v1::DetectResponse& r) {
  nlohmann::ordered_json json;
  json["image_score"] = r.image_score();
  json["max_pixel_score"] = r.max_pixel_score();
  json["class"] = r.class_name();
  json["kind"] = KindName(r.kind());
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

absl::StatusOr<inspection::Inspection> InspectionFromResponse(const anoclip::v1::DetectResponse& response) {
  const auto& heatmap = response.heatmap();
  if (heatmap.format() != anoclip::v1::HEATMAP_FORMAT_PNG) return absl::InvalidArgumentError("the response carries no PNG heatmap");
  inspection::Inspection inspection;
  try {
    const std::vector<uchar> png(heatmap.data().begin(), heatmap.data().end());
    inspection.heatmap = cv::imdecode(png, cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception&) {
    inspection.heatmap = cv::Mat();
  }
  if (inspection.heatmap.empty() || inspection.heatmap.type() != CV_8UC1 ||
      inspection.heatmap.cols != heatmap.width() || inspection.heatmap.rows != heatmap.height()) {
    return absl::InvalidArgumentError("the response's heatmap is not an 8-bit gray PNG of its stated size");
  }
  inspection.image_score = response.image_score();
  inspection.max_pixel_score = response.max_pixel_score();
  if (response.has_calibrated_image_score()) inspection.calibrated_image_score = response.calibrated_image_score();
  if (response.has_is_anomalous()) inspection.is_anomalous = response.is_anomalous();
  // The service draws on the fixed scale, of calibrated scores when it calibrated.
  inspection.scale = inspection::FixedScale(response.has_calibrated_image_score());
  inspection.regions = inspection::RegionsFromProto(response.regions());
  return inspection;
}

absl::Status WriteResponseImages(const anoclip::v1::DetectResponse& response, const std::string& image_bytes,
                                 const std::string& dir, const std::string& name) {
  ANOCLIP_ASSIGN_OR_RETURN(const inspection::Inspection inspection, InspectionFromResponse(response));
  ANOCLIP_ASSIGN_OR_RETURN(cv::Mat rgb, image::DecodeImage(image_bytes));
  if (inspection.heatmap.size() != rgb.size()) return absl::InvalidArgumentError("the heatmap is not at the image's size");
  ANOCLIP_ASSIGN_OR_RETURN(auto images, inspection::EncodeImages(rgb, inspection));
  const std::filesystem::path path = std::filesystem::path(dir) / name;
  return inspection::WriteImages(images, path.parent_path().string(), path.filename().string() + "_");
}

}  // namespace anoclip::client
