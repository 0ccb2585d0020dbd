#include "anomaly/calibration.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include <functional>

#include <nlohmann/json.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "common/files.h"

namespace anoclip::anomaly {
namespace {

constexpr size_t kMaxPixelSamples = 2'000'000;
constexpr double kMinScale = 1e-6;

double Quantile(std::vector<float> values, double q) {
  const size_t index = static_cast<size_t>(std::floor(q * (values.size() - 1) + 0.5));
  std::nth_element(values.begin(), values.begin() + index, values.end());
  return values[index];
}

}  // namespace

double ScoreScale::Calibrate(double raw) const {
  const double scale = std::max(threshold - median, kMinScale);
  return std::clamp(0.5 + 0.5 * (raw - threshold) / scale, 0.0, 1.0);
}

cv::Mat ScoreScale::CalibrateMap(const cv::Mat& raw) const {
  const double scale = 0.5 / std::max(threshold - median, kMinScale);
  cv::Mat out;
  raw.convertTo(out, CV_32F, scale, 0.5 - threshold * scale);
  cv::threshold(out, out, 1.0, 1.0, cv::THRESH_TRUNC);
  cv::threshold(out, out, 0.0, 0.0, cv::THRESH_TOZERO);
  return out;
}

absl::StatusOr<Calibration> FitCalibration(const std::vector<float>& image_scores,
                                           const std::vector<cv::Mat>& pixel_maps) {
  const int n = static_cast<int>(image_scores.size());
  if (n < Calibration::kMinImages || n > Calibration::kMaxImages) {
    return absl::InvalidArgumentError(absl::StrCat("calibration needs ", Calibration::kMinImages, " to ",
                                                   Calibration::kMaxImages, " normal images; got ", n));
  }
  if (pixel_maps.size() != image_scores.size()) {
    return absl::InvalidArgumentError("calibration needs one pixel map per image score");
  }
  for (float s : image_scores) {
    if (!std::isfinite(s)) return absl::InvalidArgumentError("image scores must be finite");
  }
  size_t total = 0;
  for (const auto& map : pixel_maps) {
    if (map.empty() || map.type() != CV_32FC1) {
      return absl::InvalidArgumentError("pixel maps must be non-empty float32 maps");
    }
    total += map.total();
  }
  // An even stride keeps memory bounded and the fit deterministic.
  const size_t stride = std::max<size_t>(1, (total + kMaxPixelSamples - 1) / kMaxPixelSamples);
  std::vector<float> pixels;
  pixels.reserve(total / stride + 1);
  size_t position = 0;
  for (const auto& map : pixel_maps) {
    cv::Mat continuous = map.isContinuous() ? map : map.clone();
    const float* values = continuous.ptr<float>();
    for (size_t i = 0; i < continuous.total(); ++i, ++position) {
      if (!std::isfinite(values[i])) return absl::InvalidArgumentError("pixel scores must be finite");
      if (position % stride == 0) pixels.push_back(values[i]);
    }
  }

  Calibration calibration;
  calibration.num_images = n;
  double mean = 0;
  for (float s : image_scores) mean += s;
  mean /= n;
  double variance = 0;
  for (float s : image_scores) variance += (s - mean) * (s - mean);
  const double std = std::sqrt(variance / n);
  calibration.image.max = *std::max_element(image_scores.begin(), image_scores.end());
  calibration.image.median = Quantile(image_scores, 0.5);
  calibration.image.threshold = calibration.image.max + std::max(std, 1e-4);
  calibration.image.samples = n;
  calibration.pixel.max = *std::max_element(pixels.begin(), pixels.end());
  calibration.pixel.median = Quantile(pixels, 0.5);
  calibration.pixel.threshold = Quantile(pixels, 0.995);
  calibration.pixel.samples = static_cast<int64_t>(pixels.size());
  return calibration;
}

absl::Status SaveCalibration(const std::string& path, const Calibration& c) {
  auto scale = [](const ScoreScale& s) {
    return nlohmann::ordered_json{{"threshold", s.threshold}, {"median", s.median}, {"max", s.max},
                                  {"samples", s.samples}};
  };
  nlohmann::ordered_json json{{"format_version", Calibration::kFormatVersion},
                              {"class", c.class_name},
                              {"kind", c.kind},
                              {"model", c.model_id},
                              {"num_images", c.num_images},
                              {"image", scale(c.image)},
                              {"pixel", scale(c.pixel)}};
  std::ofstream out(path, std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  out << json.dump(2) << "\n";
  return out ? absl::OkStatus() : absl::DataLossError(absl::StrCat("writing ", path, " failed"));
}

absl::StatusOr<Calibration> ParseCalibration(const std::string& text) {
  const auto json = nlohmann::json::parse(text, nullptr, false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError("calibration is not a JSON object");
  }
  auto field = [&](const nlohmann::json& object, const std::string& name, auto check) -> absl::Status {
    if (!object.contains(name) || !check(object[name])) {
      return absl::InvalidArgumentError(absl::StrCat("calibration field \"", name, "\" is missing or has the wrong type"));
    }
    return absl::OkStatus();
  };
  auto is_string = [](const nlohmann::json& j) { return j.is_string(); };
  auto is_int = [](const nlohmann::json& j) { return j.is_number_integer(); };
  auto is_object = [](const nlohmann::json& j) { return j.is_object(); };
  auto is_number = [](const nlohmann::json& j) { return j.is_number() && std::isfinite(j.get<double>()); };
  for (const auto& [name, check] : std::vector<std::pair<std::string, std::function<bool(const nlohmann::json&)>>>{
           {"format_version", is_int}, {"class", is_string}, {"kind", is_string}, {"model", is_string},
           {"num_images", is_int}, {"image", is_object}, {"pixel", is_object}}) {
    if (auto s = field(json, name, check); !s.ok()) return s;
  }
  if (json["format_version"].get<int>() != Calibration::kFormatVersion) {
    return absl::InvalidArgumentError(absl::StrCat("calibration format_version ", json["format_version"].dump(),
                                                   " is not supported (expected ", Calibration::kFormatVersion, ")"));
  }
  Calibration c;
  c.class_name = json["class"];
  c.kind = json["kind"];
  c.model_id = json["model"];
  c.num_images = json["num_images"];
  for (auto [name, scale] : {std::pair{"image", &c.image}, std::pair{"pixel", &c.pixel}}) {
    const auto& object = json[name];
    for (const char* key : {"threshold", "median", "max"}) {
      if (auto s = field(object, key, is_number); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(name, ".", s.message()));
      }
    }
    scale->threshold = object["threshold"];
    scale->median = object["median"];
    scale->max = object["max"];
    scale->samples = object.value("samples", int64_t{0});
    if (scale->median > scale->threshold) {
      return absl::InvalidArgumentError(absl::StrCat("calibration ", name, ".median exceeds its threshold"));
    }
  }
  return c;
}

absl::StatusOr<Calibration> LoadCalibration(const std::string& path) {
  auto text = ReadFileToString(path);
  if (!text.ok()) return absl::NotFoundError(absl::StrCat("cannot read calibration ", path));
  auto calibration = ParseCalibration(*text);
  if (!calibration.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", calibration.status().message()));
  }
  return calibration;
}

absl::Status ValidateThreshold(double threshold) {
  if (!std::isfinite(threshold) || threshold <= 0.0 || threshold >= 1.0) {
    return absl::InvalidArgumentError(absl::StrCat("threshold must be inside (0, 1); was ", threshold));
  }
  return absl::OkStatus();
}

}  // namespace anoclip::anomaly
