// Building requests from flags and files, and turning responses into the JSON and images the
// `anoclip detect` command also produces.
#pragma once

#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "anoclip/v1/anoclip.pb.h"
#include "common/arguments.h"

namespace anoclip::client {

// Flags: class, kind, tta, views, threshold, use-calibration, min-region-area.
std::set<std::string> DetectValueFlags();
std::set<std::string> DetectBoolFlags();

// Everything but the image; HEATMAP_FLOAT32 at the original size when `want_heatmap`.
absl::StatusOr<anoclip::v1::DetectRequest> RequestTemplate(const Arguments& args, bool want_heatmap);

absl::StatusOr<std::string> ReadImageBytes(const std::string& path);

// The image files (png, jpg, jpeg, bmp, tif, tiff; any case) directly in `dir`, sorted.
// NotFound when `dir` cannot be listed.
absl::StatusOr<std::vector<std::string>> ImagesIn(const std::string& dir);

// Keys as `anoclip detect --json`: image_score first, then max_pixel_score, class, kind, model,
// timings_ms, and calibrated_image_score / regions / is_anomalous when known.
nlohmann::ordered_json ResponseToJson(const anoclip::v1::DetectResponse& response);

// heatmap.png, overlay.png (regions outlined) and, when a decision was made, mask.png (regions
// filled), named PREFIX_*.png in `dir`. Needs a HEATMAP_FLOAT32 response at the original size.
absl::Status WriteResponseImages(const anoclip::v1::DetectResponse& response, const std::string& image_bytes,
                                 const std::string& dir, const std::string& prefix);

}  // namespace anoclip::client
