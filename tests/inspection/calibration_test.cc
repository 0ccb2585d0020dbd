// Calibration on synthetic score sets whose thresholds follow from the documented rule by hand.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <tuple>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include "inspection/calibration.h"

namespace anoclip::inspection {
namespace {

using ::testing::HasSubstr;

// n maps of 20×10 holding base + k/1000 for k = 0..199 in raster order.
std::vector<cv::Mat> Maps(int n, float base) {
  std::vector<cv::Mat> maps;
  for (int i = 0; i < n; ++i) {
    cv::Mat map(20, 10, CV_32F);
    for (int k = 0; k < 200; ++k) map.at<float>(k / 10, k % 10) = base + k / 1000.f;
    maps.push_back(map);
  }
  return maps;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

Calibration Fitted() {
  auto calibration = FitCalibration({0.40f, 0.42f, 0.44f, 0.46f, 0.48f}, Maps(5, 0.3f));
  EXPECT_TRUE(calibration.ok()) << calibration.status();
  calibration->class_name = "bottle";
  calibration->kind = "object";
  calibration->model_id = "ViT-B-16-plus-240/laion400m_e32";
  return *calibration;
}

TEST(CalibrationTest, FitsTheDocumentedThresholds) {
  const Calibration c = Fitted();
  EXPECT_EQ(c.num_images, 5);
  // image: max + population std; std of {.40,.42,.44,.46,.48} = sqrt((2*.04² + 2*.02²)/5).
  const double std = std::sqrt((2 * 0.04 * 0.04 + 2 * 0.02 * 0.02) / 5);
  EXPECT_NEAR(c.image.threshold, 0.48 + std, 1e-6);
  EXPECT_NEAR(c.image.median, 0.44, 1e-6);
  EXPECT_NEAR(c.image.max, 0.48, 1e-6);
  EXPECT_EQ(c.image.samples, 5);
  // pixel: 1000 values, each of 0.3 + k/1000 five times; nearest rank round(0.995 * 999) = 994,
  // which is k = 198; the median round(0.5 * 999) = 500 (rounded half up) is k = 100.
  EXPECT_NEAR(c.pixel.threshold, 0.3 + 0.198, 1e-6);
  EXPECT_NEAR(c.pixel.median, 0.3 + 0.100, 1e-6);
  EXPECT_NEAR(c.pixel.max, 0.3 + 0.199, 1e-6);
  EXPECT_EQ(c.pixel.samples, 1000);
  // No defect-free image of the fit is flagged.
  EXPECT_LT(c.image.Calibrate(c.image.max), 0.5);
}

TEST(CalibrationTest, IdenticalImageScoresGetTheMinimumMargin) {
  auto c = FitCalibration(std::vector<float>(7, 0.6f), Maps(7, 0.2f));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_NEAR(c->image.threshold, 0.6 + 1e-4, 1e-7);
  EXPECT_DOUBLE_EQ(c->image.Calibrate(c->image.threshold), 0.5);
  EXPECT_DOUBLE_EQ(c->image.Calibrate(0.6f), 0.0);  // the median: 0
  // A flat pixel set: threshold == median, the scale's floor keeps the mapping a step at 0.5.
  std::vector<cv::Mat> flat(5, cv::Mat(4, 4, CV_32F, cv::Scalar(0.3f)));
  auto f = FitCalibration(std::vector<float>(5, 0.5f), flat);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_DOUBLE_EQ(f->pixel.threshold, f->pixel.median);
  EXPECT_DOUBLE_EQ(f->pixel.Calibrate(f->pixel.threshold), 0.5);
  EXPECT_DOUBLE_EQ(f->pixel.Calibrate(0.31), 1.0);
  EXPECT_DOUBLE_EQ(f->pixel.Calibrate(0.29), 0.0);
}

TEST(CalibrationTest, LargePixelSetsAreSubsampledDeterministically) {
  // 5 maps of 1000×1000 = 5M values: every 3rd (ceil(5M / 2M)) is kept.
  std::vector<cv::Mat> maps;
  for (int i = 0; i < 5; ++i) {
    cv::Mat map(1000, 1000, CV_32F);
    cv::randu(map, 0.f, 1.f);
    maps.push_back(map);
  }
  const std::vector<float> scores = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f};
  auto first = FitCalibration(scores, maps);
  auto second = FitCalibration(scores, maps);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(first->pixel.samples, (5'000'000 + 2) / 3);
  EXPECT_EQ(first->pixel.threshold, second->pixel.threshold);
  EXPECT_NEAR(first->pixel.threshold, 0.995, 2e-3);  // uniform scores: the quantile is q
  EXPECT_NEAR(first->pixel.median, 0.5, 2e-3);
}

TEST(CalibrationTest, MappingIsMonotoneClampedWithOneHalfAtTheThreshold) {
  const ScoreScale scale{0.6, 0.5, 0.58, 10};
  EXPECT_DOUBLE_EQ(scale.Calibrate(0.6), 0.5);
  EXPECT_DOUBLE_EQ(scale.Calibrate(0.5), 0.0);
  EXPECT_NEAR(scale.Calibrate(0.55), 0.25, 1e-12);
  EXPECT_NEAR(scale.Calibrate(0.65), 0.75, 1e-12);
  EXPECT_DOUBLE_EQ(scale.Calibrate(0.7), 1.0);
  EXPECT_DOUBLE_EQ(scale.Calibrate(-5.0), 0.0);
  EXPECT_DOUBLE_EQ(scale.Calibrate(5.0), 1.0);
  double previous = -1;
  for (double x = 0.3; x < 0.9; x += 0.001) {
    const double y = scale.Calibrate(x);
    EXPECT_GE(y, previous) << x;
    EXPECT_GE(y, 0.0);
    EXPECT_LE(y, 1.0);
    EXPECT_EQ(y > 0.5, x > 0.6) << x;  // the calibrated decision is the raw one
    previous = y;
  }
}

TEST(CalibrationTest, MapsCalibrateElementWiseLikeScores) {
  const Calibration c = Fitted();
  cv::Mat raw(3, 4, CV_32F);
  const float values[] = {-1.f, 0.2f, 0.35f, 0.4f, 0.45f, 0.48f, 0.49f, 0.5f, 0.6f, 2.f, 0.3f, 0.41f};
  std::copy(std::begin(values), std::end(values), raw.ptr<float>());
  raw.at<float>(2, 3) = static_cast<float>(c.pixel.threshold);  // exactly the threshold
  const cv::Mat calibrated = c.pixel.CalibrateMap(raw);
  ASSERT_EQ(calibrated.type(), CV_32F);
  ASSERT_EQ(calibrated.size(), raw.size());
  for (int i = 0; i < 12; ++i) {
    const float x = raw.ptr<float>()[i];
    EXPECT_FLOAT_EQ(calibrated.ptr<float>()[i], static_cast<float>(c.pixel.Calibrate(x))) << x;
  }
  EXPECT_EQ(calibrated.at<float>(2, 3), 0.5f);
  EXPECT_EQ(calibrated.at<float>(0, 0), 0.f);
  EXPECT_EQ(calibrated.at<float>(2, 1), 1.f);
  // A view into a larger map.
  const cv::Mat view = c.pixel.CalibrateMap(raw(cv::Rect(1, 1, 2, 2)));
  EXPECT_FLOAT_EQ(view.at<float>(0, 0), calibrated.at<float>(1, 1));
}

TEST(CalibrationTest, SavesAndLoadsEveryField) {
  const Calibration c = Fitted();
  const std::string path = ::testing::TempDir() + "/calibration.json";
  ASSERT_TRUE(SaveCalibration(path, c).ok());
  const auto json = nlohmann::json::parse(ReadText(path));
  EXPECT_EQ(json["format_version"], Calibration::kFormatVersion);
  EXPECT_EQ(json["class"], "bottle");
  auto loaded = LoadCalibration(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->class_name, c.class_name);
  EXPECT_EQ(loaded->kind, c.kind);
  EXPECT_EQ(loaded->model_id, c.model_id);
  EXPECT_EQ(loaded->num_images, c.num_images);
  for (auto [name, a, b] : {std::tuple{"image", &loaded->image, &c.image}, std::tuple{"pixel", &loaded->pixel, &c.pixel}}) {
    EXPECT_EQ(a->threshold, b->threshold) << name;  // exact: the JSON keeps every bit of a double
    EXPECT_EQ(a->median, b->median) << name;
    EXPECT_EQ(a->max, b->max) << name;
    EXPECT_EQ(a->samples, b->samples) << name;
  }

  // A name that is not UTF-8 is written (replaced), not thrown on.
  Calibration odd = c;
  odd.class_name = "bad\xff";
  ASSERT_TRUE(SaveCalibration(path, odd).ok());
  auto reloaded = LoadCalibration(path);
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_THAT(reloaded->class_name, HasSubstr("bad"));

  EXPECT_FALSE(SaveCalibration("/nonexistent-dir/c.json", c).ok());
}

TEST(CalibrationTest, FitRefusesBadScoreSets) {
  auto message = [](const absl::StatusOr<Calibration>& result) {
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(result.status().message());
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(message(FitCalibration({0.4f, 0.5f, 0.5f, 0.5f}, Maps(4, 0.1f))), HasSubstr("5 to 50"));
  EXPECT_THAT(message(FitCalibration({}, {})), HasSubstr("got 0"));
  EXPECT_THAT(message(FitCalibration(std::vector<float>(51, 0.5f), Maps(51, 0.1f))), HasSubstr("got 51"));
  EXPECT_THAT(message(FitCalibration({0.4f, 0.5f, 0.5f, 0.5f, 0.5f}, Maps(4, 0.1f))), HasSubstr("one pixel map"));
  EXPECT_THAT(message(FitCalibration({0.4f, 0.5f, 0.5f, 0.5f, nan}, Maps(5, 0.1f))), HasSubstr("image scores"));
  EXPECT_THAT(message(FitCalibration({0.4f, 0.5f, 0.5f, 0.5f, INFINITY}, Maps(5, 0.1f))), HasSubstr("image scores"));
  auto with_nan = Maps(5, 0.1f);
  with_nan[3].at<float>(2, 2) = nan;
  EXPECT_THAT(message(FitCalibration(std::vector<float>(5, 0.5f), with_nan)), HasSubstr("pixel scores"));
  auto with_empty = Maps(5, 0.1f);
  with_empty[1] = cv::Mat();
  EXPECT_THAT(message(FitCalibration(std::vector<float>(5, 0.5f), with_empty)), HasSubstr("pixel maps"));
  auto with_double = Maps(5, 0.1f);
  with_double[0].convertTo(with_double[0], CV_64F);
  EXPECT_THAT(message(FitCalibration(std::vector<float>(5, 0.5f), with_double)), HasSubstr("pixel maps"));
}

TEST(CalibrationTest, MalformedFilesNameTheField) {
  const std::string path = ::testing::TempDir() + "/valid_calibration.json";
  ASSERT_TRUE(SaveCalibration(path, Fitted()).ok());
  const nlohmann::json valid = nlohmann::json::parse(ReadText(path));
  ASSERT_TRUE(ParseCalibration(valid.dump()).ok());

  auto error = [](const nlohmann::json& json) {
    auto result = ParseCalibration(json.dump());
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << json.dump();
    return std::string(result.status().message());
  };
  // Every required field, missing and with a wrong type.
  for (const char* field : {"format_version", "class", "kind", "model", "num_images", "image", "pixel"}) {
    nlohmann::json missing = valid;
    missing.erase(field);
    EXPECT_THAT(error(missing), HasSubstr(std::string("\"") + field + "\"")) << field;
    nlohmann::json wrong = valid;
    const bool text = field == std::string("class") || field == std::string("kind") || field == std::string("model");
    wrong[field] = text ? nlohmann::json(3) : nlohmann::json("x");
    EXPECT_THAT(error(wrong), HasSubstr(std::string("\"") + field + "\"")) << field;
  }
  for (const char* scale : {"image", "pixel"}) {
    for (const char* field : {"threshold", "median", "max"}) {
      const std::string name = std::string(scale) + "." + field;
      nlohmann::json missing = valid;
      missing[scale].erase(field);
      EXPECT_THAT(error(missing), HasSubstr("\"" + name + "\"")) << name;
      nlohmann::json text = valid;
      text[scale][field] = "0.5";
      EXPECT_THAT(error(text), HasSubstr("\"" + name + "\"")) << name;
      nlohmann::json null = valid;
      null[scale][field] = nullptr;  // what a NaN becomes in JSON
      EXPECT_THAT(error(null), HasSubstr("\"" + name + "\"")) << name;
    }
    nlohmann::json samples = valid;
    samples[scale]["samples"] = -3;
    EXPECT_THAT(error(samples), HasSubstr(std::string("\"") + scale + ".samples\""));
    samples[scale]["samples"] = "many";
    EXPECT_THAT(error(samples), HasSubstr(std::string("\"") + scale + ".samples\""));
    nlohmann::json no_samples = valid;
    no_samples[scale].erase("samples");
    EXPECT_TRUE(ParseCalibration(no_samples.dump()).ok());  // optional
    nlohmann::json inverted = valid;
    inverted[scale]["median"] = inverted[scale]["threshold"].get<double>() + 1;
    EXPECT_THAT(error(inverted), HasSubstr(std::string("\"") + scale + ".median\" exceeds"));
  }
  nlohmann::json version = valid;
  version["format_version"] = 2;
  EXPECT_THAT(error(version), HasSubstr("format_version 2 is not supported"));
  for (int images : {4, 51, -1}) {
    nlohmann::json count = valid;
    count["num_images"] = images;
    EXPECT_THAT(error(count), HasSubstr("\"num_images\""));
  }
  for (const char* text : {"", "{not json", "[1, 2]", "null", "42", "{\"format_version\": 1"}) {
    EXPECT_EQ(ParseCalibration(text).status().code(), absl::StatusCode::kInvalidArgument) << text;
  }

  // Through a file: the path is in the message; a missing file is NotFound.
  const std::string corrupt = ::testing::TempDir() + "/corrupt_calibration.json";
  std::ofstream(corrupt) << valid.dump().substr(0, 40);
  auto loaded = LoadCalibration(corrupt);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(loaded.status().message(), HasSubstr(corrupt));
  EXPECT_EQ(LoadCalibration("/nonexistent.json").status().code(), absl::StatusCode::kNotFound);
}

TEST(CalibrationTest, RequestThresholdsMustBeInsideTheOpenUnitInterval) {
  constexpr double kInfinity = std::numeric_limits<double>::infinity();
  for (double good : {0.5, 1e-9, 0.999999}) EXPECT_TRUE(ValidateThreshold(good).ok()) << good;
  for (double bad : {0.0, 1.0, -0.2, 1.5, std::nan(""), kInfinity, -kInfinity}) {
    const absl::Status status = ValidateThreshold(bad);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(status.message(), HasSubstr("(0, 1)"));
  }
}

}  // namespace
}  // namespace anoclip::inspection
