// Proto <-> core, in one place at the edge: a DetectRequest becomes validated native options
// (every number bounded, NaN and infinities refused, unknown enum values refused), and core
// results become response messages. Nothing here decodes images or runs the model.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "anoclip/v1/anoclip.pb.h"
#include "anomaly/prompt_ensemble.h"
#include "anomaly/test_time_adapter.h"
#include "grpcpp/support/status.h"

namespace anoclip::server {

// What a DetectRequest asks for, in native types. Engine options are kept torch-free here and
// turned into anomaly::DetectOptions by the pipeline.
struct DetectInput {
  anomaly::PromptSpec spec;
  int views = 1;
  bool tta = false;
  anomaly::TtaOptions tta_options;
  std::optional<double> threshold;
  bool use_calibration = false;
  int64_t min_region_area = 0;
  anoclip::v1::HeatmapFormat heatmap_format = anoclip::v1::HEATMAP_FORMAT_UNSPECIFIED;
  bool heatmap_at_input_size = true;
};

struct RequestLimits {
  anomaly::PromptLimits prompts;
  int64_t max_min_region_area = int64_t{1} << 40;
  std::set<std::string> allowed_classes;  // empty: any class
};

// The spec a ClassSpec names (KIND_UNSPECIFIED takes the class's default), validated.
absl::StatusOr<anomaly::PromptSpec> PromptSpecFromProto(const anoclip::v1::ClassSpec& proto,
                                                        const RequestLimits& limits);

// Validates every option of the request (not its image bytes).
absl::StatusOr<DetectInput> ParseDetectRequest(const anoclip::v1::DetectRequest& request, const RequestLimits& limits);

anoclip::v1::Kind KindToProto(const std::string& kind);

// absl -> gRPC status, once, at the edge.
grpc::Status ToGrpcStatus(const absl::Status& status);
// "OK", "INVALID_ARGUMENT", ...: the names gRPC and absl share.
std::string StatusCodeName(absl::StatusCode code);

}  // namespace anoclip::server
