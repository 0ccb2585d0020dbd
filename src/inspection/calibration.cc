#include "inspection/calibration.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "common/status_macros.h"

namespace anoclip::inspection {
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
  // Element by element in double, as Calibrate: a pixel exactly at the threshold maps to exactly
  // 0.5, so the calibrated decision (> 0.5) agrees with the raw one (> threshold).
  cv::Mat out;
  raw.convertTo(out, CV_32F);
  for (int y = 0; y < out.rows; ++y) {
    float* row = out.ptr<float>(y);
    for (int x = 0; x < out.cols * out.channels(); ++x) row[x] = static_cast<float>(Calibrate(row[x]));
  }
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
  const nlohmann::ordered_json json{{"format_version", Calibration::kFormatVersion},
                                    {"class", c.class_name},
                                    {"kind", c.kind},
                                    {"model", c.model_id},
                                    {"num_images", c.num_images},
                                    {"image", scale(c.image)},
                                    {"pixel", scale(c.pixel)}};
  // Names come from users: bytes that are not UTF-8 are replaced rather than thrown on.
  const std::string text = json.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
  std::ofstream out(path, std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  out << text << "\n";
  out.close();
  return out ? absl::OkStatus() : absl::DataLossError(absl::StrCat("writing ", path, " failed"));
}

namespace {

using Json = nlohmann::json;

absl::Status FieldError(const std::string& name, const char* expected) {
  return absl::InvalidArgumentError(
      absl::StrCat("calibration field \"", name, "\" is missing or is not ", expected));
}

// The member `key` of `object`, checked with `ok`; `name` is its full path for the message.
absl::StatusOr<const Json*> Field(const Json& object, const std::string& key, const std::string& name,
                                  bool (*ok)(const Json&), const char* expected) {
  const auto it = object.find(key);
  if (it == object.end() || !ok(*it)) return FieldError(name, expected);
  return &*it;
}

bool IsString(const Json& j) { return j.is_string(); }
bool IsInteger(const Json& j) { return j.is_number_integer(); }
bool IsObject(const Json& j) { return j.is_object(); }
bool IsFinite(const Json& j) { return j.is_number() && std::isfinite(j.get<double>()); }
bool IsCount(const Json& j) { return j.is_number_integer() && j.get<int64_t>() >= 0; }  // 2^63 and up wrap negative

absl::StatusOr<ScoreScale> ParseScale(const Json& json, const std::string& name) {
  ANOCLIP_ASSIGN_OR_RETURN(const Json* object, Field(json, name, name, IsObject, "an object"));
  ScoreScale scale;
  for (auto [key, value] : {std::pair{"threshold", &scale.threshold}, std::pair{"median", &scale.median},
                            std::pair{"max", &scale.max}}) {
    ANOCLIP_ASSIGN_OR_RETURN(const Json* field,
                             Field(*object, key, absl::StrCat(name, ".", key), IsFinite, "a finite number"));
    *value = field->get<double>();
  }
  if (object->contains("samples")) {  // informative only; absent in hand-written files
    ANOCLIP_ASSIGN_OR_RETURN(const Json* samples,
                             Field(*object, "samples", name + ".samples", IsCount, "a non-negative integer"));
    scale.samples = samples->get<int64_t>();
  }
  if (scale.median > scale.threshold) {
    return absl::InvalidArgumentError(absl::StrCat("calibration field \"", name, ".median\" exceeds ", name,
                                                   ".threshold"));
  }
  return scale;
}

}  // namespace

absl::StatusOr<Calibration> ParseCalibration(const std::string& text) {
  const Json json = Json::parse(text, nullptr, false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError("calibration is not a JSON object");
  }
  ANOCLIP_ASSIGN_OR_RETURN(const Json* version,
                           Field(json, "format_version", "format_version", IsInteger, "an integer"));
  if (*version != Calibration::kFormatVersion) {
    return absl::InvalidArgumentError(absl::StrCat("calibration format_version ", version->dump(),
                                                   " is not supported (expected ", Calibration::kFormatVersion, ")"));
  }
  Calibration c;
  for (auto [key, value] : {std::pair{"class", &c.class_name}, std::pair{"kind", &c.kind},
                            std::pair{"model", &c.model_id}}) {
    ANOCLIP_ASSIGN_OR_RETURN(const Json* field, Field(json, key, key, IsString, "a string"));
    *value = field->get<std::string>();
  }
  ANOCLIP_ASSIGN_OR_RETURN(const Json* images, Field(json, "num_images", "num_images", IsInteger, "an integer"));
  if (*images < Calibration::kMinImages || *images > Calibration::kMaxImages) {
    return absl::InvalidArgumentError(absl::StrCat("calibration field \"num_images\" is ", images->dump(),
                                                   "; a fit uses ", Calibration::kMinImages, " to ",
                                                   Calibration::kMaxImages));
  }
  c.num_images = images->get<int>();
  ANOCLIP_ASSIGN_OR_RETURN(c.image, ParseScale(json, "image"));
  ANOCLIP_ASSIGN_OR_RETURN(c.pixel, ParseScale(json, "pixel"));
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

}  // namespace anoclip::inspection
