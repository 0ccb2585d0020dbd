#include "server/request_conversion.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "inspection/calibration.h"
#include "common/status_macros.h"

namespace anoclip::server {
namespace {

using anoclip::v1::DetectOptions;
using anoclip::v1::DetectRequest;

template <typename Enum>
absl::Status CheckEnum(int value, bool (*is_valid)(int), const char* name) {
  if (is_valid(value)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("unknown ", name, " value ", value));
}

absl::Status CheckFinite(double value, const char* name) {
  if (std::isfinite(value)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(name, " must be a finite number; was ", value));
}

absl::Status ParseTta(const anoclip::v1::TtaOptions& proto, anomaly::TtaOptions& tta) {
  ANOCLIP_RETURN_IF_ERROR(CheckFinite(proto.lr(), "tta_options.lr"));
  ANOCLIP_RETURN_IF_ERROR(CheckFinite(proto.sigma(), "tta_options.sigma"));
  if (proto.steps() != 0) tta.steps = proto.steps();
  if (proto.lr() != 0) tta.lr = proto.lr();
  if (proto.sigma() != 0) tta.sigma = proto.sigma();
  tta.init = proto.random_init() ? anomaly::TtaInit::kRandom : anomaly::TtaInit::kText;
  tta.seed = proto.seed();
  return anomaly::TestTimeAdapter::Create(tta).status();
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

std::string StatusCodeName(absl::StatusCode code) { return absl::StatusCodeToString(code); }

anoclip::v1::Kind KindToProto(const std::string& kind) {
  return kind == "texture" ? anoclip::v1::KIND_TEXTURE : anoclip::v1::KIND_OBJECT;
}

absl::StatusOr<anomaly::PromptSpec> PromptSpecFromProto(const anoclip::v1::ClassSpec& proto,
                                                        const RequestLimits& limits) {
  anomaly::PromptSpec spec;
  spec.class_name = proto.name();
  switch (proto.kind()) {
    case anoclip::v1::KIND_OBJECT: spec.kind = "object"; break;
    case anoclip::v1::KIND_TEXTURE: spec.kind = "texture"; break;
    case anoclip::v1::KIND_UNSPECIFIED: spec.kind = anomaly::DefaultKindForClass(spec.class_name); break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown kind value ", static_cast<int>(proto.kind()), "; expected KIND_OBJECT or KIND_TEXTURE"));
  }
  spec.domains.assign(proto.domains().begin(), proto.domains().end());
  spec.normal_states.assign(proto.normal_states().begin(), proto.normal_states().end());
  spec.abnormal_states.assign(proto.abnormal_states().begin(), proto.abnormal_states().end());
  ANOCLIP_RETURN_IF_ERROR(anomaly::BuildPromptSet(spec, limits.prompts).status());
  if (!limits.allowed_classes.empty() && limits.allowed_classes.count(spec.class_name) == 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("class \"", spec.class_name, "\" is not in this server's allowed classes"));
  }
  return spec;
}

absl::StatusOr<DetectInput> ParseDetectRequest(const DetectRequest& request, const RequestLimits& limits) {
  DetectInput input;
  ANOCLIP_ASSIGN_OR_RETURN(input.spec, PromptSpecFromProto(request.class_spec(), limits));
  const DetectOptions& o = request.options();
  input.views = o.views() == 0 ? 1 : o.views();
  if (input.views != 1 && input.views != 22) {
    return absl::InvalidArgumentError(absl::StrCat("views must be 1 or 22; was ", o.views()));
  }
  input.tta = o.tta();
  if (input.tta || o.has_tta_options()) ANOCLIP_RETURN_IF_ERROR(ParseTta(o.tta_options(), input.tta_options));
  ANOCLIP_RETURN_IF_ERROR(CheckEnum<anoclip::v1::HeatmapFormat>(o.heatmap_format(), anoclip::v1::HeatmapFormat_IsValid,
                                                                "heatmap_format"));
  ANOCLIP_RETURN_IF_ERROR(
      CheckEnum<anoclip::v1::HeatmapSize>(o.heatmap_size(), anoclip::v1::HeatmapSize_IsValid, "heatmap_size"));
  input.heatmap_format = o.heatmap_format();
  input.heatmap_at_input_size = o.heatmap_size() != anoclip::v1::HEATMAP_SIZE_MODEL;
  if (o.min_region_area() < 0 || o.min_region_area() > limits.max_min_region_area) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_region_area must be in 0..", limits.max_min_region_area, "; was ", o.min_region_area()));
  }
  input.min_region_area = o.min_region_area();
  if (o.decision_case() == DetectOptions::kThreshold) {
    ANOCLIP_RETURN_IF_ERROR(inspection::ValidateThreshold(o.threshold()));
    input.threshold = o.threshold();
  } else if (o.decision_case() == DetectOptions::kUseCalibration) {
    input.use_calibration = o.use_calibration();
  }
  if (request.image_case() == DetectRequest::kRaw) {
    ANOCLIP_RETURN_IF_ERROR(CheckEnum<anoclip::v1::RawTensor::Layout>(
        request.raw().layout(), anoclip::v1::RawTensor::Layout_IsValid, "raw.layout"));
  } else if (request.image_case() != DetectRequest::kImageBytes) {
    return absl::InvalidArgumentError("the request carries no image (image_bytes or raw)");
  }
  return input;
}

}  // namespace anoclip::server
