// Request validation from raw wire bytes: any DetectRequest a client can send is parsed into
// bounded native options or refused with INVALID_ARGUMENT (or PERMISSION_DENIED), never crashes.
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "server/request_conversion.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  anoclip::v1::DetectRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  anoclip::server::RequestLimits limits;
  auto input = anoclip::server::ParseDetectRequest(request, limits);
  if (input.ok()) {
    const auto& tta = input->tta_options;
    // Everything accepted is inside its documented bounds.
    if (!(tta.lr > 0 && tta.lr <= 1) || !(tta.sigma >= 0 && tta.sigma <= 10) || tta.steps < 1 || tta.steps > 100 ||
        (input->views != 1 && input->views != 22) || input->min_region_area < 0 ||
        (input->threshold && !(*input->threshold > 0 && *input->threshold < 1))) {
      std::abort();
    }
  } else if (input.status().code() != absl::StatusCode::kInvalidArgument &&
             input.status().code() != absl::StatusCode::kPermissionDenied) {
    std::abort();
  }
  return 0;
}
