// Every numeric and enum option of a DetectRequest is bounded: NaN, infinities, out-of-range
// values and unknown enum numbers are INVALID_ARGUMENT before any work.
#include "server/request_conversion.h"

#include <gtest/gtest.h>

#include <limits>

namespace anoclip::server {
namespace {

using anoclip::v1::DetectRequest;

DetectRequest Valid() {
  DetectRequest request;
  request.set_image_bytes("x");
  request.mutable_class_spec()->set_name("bottle");
  return request;
}

absl::StatusCode Code(const DetectRequest& request, const RequestLimits& limits = {}) {
  return ParseDetectRequest(request, limits).status().code();
}

TEST(RequestConversionTest, AValidRequestParsesWithTheDefaults) {
  auto input = ParseDetectRequest(Valid(), {});
  ASSERT_TRUE(input.ok()) << input.status();
  EXPECT_EQ(input->spec.kind, "object");
  EXPECT_EQ(input->views, 1);
  EXPECT_FALSE(input->tta);
  EXPECT_EQ(input->tta_options.steps, 5);
  EXPECT_TRUE(input->heatmap_at_input_size);
}

TEST(RequestConversionTest, TtaOptionsAreBounded) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (float lr : {1e38f, 2.f, -1e-3f, nan, inf, -inf}) {
    auto request = Valid();
    request.mutable_options()->set_tta(true);
    request.mutable_options()->mutable_tta_options()->set_lr(lr);
    EXPECT_EQ(Code(request), absl::StatusCode::kInvalidArgument) << "lr " << lr;
  }
  for (float sigma : {-0.1f, 11.f, nan, inf}) {
    auto request = Valid();
    request.mutable_options()->set_tta(true);
    request.mutable_options()->mutable_tta_options()->set_sigma(sigma);
    EXPECT_EQ(Code(request), absl::StatusCode::kInvalidArgument) << "sigma " << sigma;
  }
  for (int steps : {-1, 101, 1 << 30}) {
    auto request = Valid();
    request.mutable_options()->set_tta(true);
    request.mutable_options()->mutable_tta_options()->set_steps(steps);
    EXPECT_EQ(Code(request), absl::StatusCode::kInvalidArgument) << "steps " << steps;
  }
  auto request = Valid();
  request.mutable_options()->set_tta(true);
  request.mutable_options()->mutable_tta_options()->set_lr(1.f);
  request.mutable_options()->mutable_tta_options()->set_steps(100);
  request.mutable_options()->mutable_tta_options()->set_seed(~uint64_t{0});
  EXPECT_TRUE(ParseDetectRequest(request, {}).ok()) << "the bounds themselves are allowed";
}

TEST(RequestConversionTest, ThresholdViewsAndAreasAreBounded) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (float threshold : {0.f, 1.f, -0.5f, 2.f, nan}) {
    auto request = Valid();
    request.mutable_options()->set_threshold(threshold);
    EXPECT_EQ(Code(request), absl::StatusCode::kInvalidArgument) << "threshold " << threshold;
  }
  for (int views : {2, 21, 23, -1}) {
    auto request = Valid();
    request.mutable_options()->set_views(views);
    EXPECT_EQ(Code(request), absl::StatusCode::kInvalidArgument) << "views " << views;
  }
  auto request = Valid();
  request.mutable_options()->set_min_region_area(-1);
  EXPECT_EQ(Code(request), absl::StatusCode::kInvalidArgument);
}

TEST(RequestConversionTest, UnknownEnumValuesAreRefused) {
  auto request = Valid();
  request.mutable_options()->set_heatmap_format(static_cast<anoclip::v1::HeatmapFormat>(7));
  EXPECT_EQ(Code(request), absl::StatusCode::kInvalidArgument);
  request = Valid();
  request.mutable_options()->set_heatmap_size(static_cast<anoclip::v1::HeatmapSize>(-3));
  EXPECT_EQ(Code(request), absl::StatusCode::kInvalidArgument);
  request = Valid();
  request.mutable_class_spec()->set_kind(static_cast<anoclip::v1::Kind>(9));
  EXPECT_EQ(Code(request), absl::StatusCode::kInvalidArgument);
  request = Valid();
  request.mutable_raw()->set_layout(static_cast<anoclip::v1::RawTensor::Layout>(5));
  EXPECT_EQ(Code(request), absl::StatusCode::kInvalidArgument);
}

TEST(RequestConversionTest, ClassNamesAndSpecsAreChecked) {
  auto request = Valid();
  request.mutable_class_spec()->set_name("bot\ntle");
  EXPECT_EQ(Code(request), absl::StatusCode::kInvalidArgument) << "control character";
  request = Valid();
  request.mutable_class_spec()->set_name("");
  EXPECT_EQ(Code(request), absl::StatusCode::kInvalidArgument);
  // 64 domains x 22 templates x 64 states = 90,112 prompts per state: over the limit.
  request = Valid();
  auto* spec = request.mutable_class_spec();
  for (int i = 0; i < 64; ++i) {
    spec->add_domains("photo " + std::to_string(i));
    spec->add_normal_states("good " + std::to_string(i) + " {}");
    spec->add_abnormal_states("bad " + std::to_string(i) + " {}");
  }
  auto status = ParseDetectRequest(request, {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("90112 prompts per state"), std::string::npos) << status;
  RequestLimits allow;
  allow.allowed_classes = {"bottle"};
  EXPECT_TRUE(ParseDetectRequest(Valid(), allow).ok());
  request = Valid();
  request.mutable_class_spec()->set_name("bottel");
  EXPECT_EQ(Code(request, allow), absl::StatusCode::kPermissionDenied);
}

TEST(RequestConversionTest, ARequestWithoutAnImageIsRefused) {
  DetectRequest request;
  request.mutable_class_spec()->set_name("bottle");
  EXPECT_EQ(Code(request), absl::StatusCode::kInvalidArgument);
}

TEST(RequestConversionTest, StatusCodeNamesAreTheGrpcNames) {
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kOk), "OK");
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kInvalidArgument), "INVALID_ARGUMENT");
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kResourceExhausted), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kDataLoss), "DATA_LOSS");
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kAborted), "ABORTED");
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kUnimplemented), "UNIMPLEMENTED");
}

}  // namespace
}  // namespace anoclip::server
