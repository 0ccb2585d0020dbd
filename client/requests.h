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
#include "inspection/inspect.h"

namespace anoclip::client {

// "object" / "texture" -> the proto's kind, "" -> KIND_UNSPECIFIED (the service decides);
// anything else is InvalidArgument naming `what` ("--kind").
absl::StatusOr<anoclip::v1::Kind> KindFromName(const std::string& name, const std::string& what);
// "object", "texture", "unspecified", or "unknown kind N" for a value this client does not know.
std::string KindName(anoclip::v1::Kind kind);

// --class NAME (required) and --kind.
absl::StatusOr<anoclip::v1::ClassSpec> ClassSpecFromArguments(const Arguments& args);

// Flags: class, kind, tta, views, threshold, use-calibration, min-region-area.
std::set<std::string> DetectValueFlags();
std::set<std::string> DetectBoolFlags();

// Everything but the image; a gray PNG heatmap at the original size when `want_heatmap`.
absl::StatusOr<anoclip::v1::DetectRequest> RequestTemplate(const Arguments& args, bool want_heatmap);

absl::StatusOr<std::string> ReadImageBytes(const std::string& path);

// The image files (png, jpg, jpeg, bmp, tif, tiff; any case) directly in `dir`, sorted.
// NotFound when `dir` cannot be listed.
absl::StatusOr<std::vector<std::string>> ImagesIn(const std::string& dir);

// Where each image's output files go, relative to --out: the image's path relative to the
// deepest folder that holds all of `paths`, extension kept ("a.png", "a.jpg", "x/a.png"), so two
// images never share a name. One name per path, in order.
std::vector<std::string> OutputNames(const std::vector<std::string>& paths);

// Keys as `anoclip detect --json`: image_score first, then max_pixel_score, class, kind, model,
// timings_ms, and calibrated_image_score / regions / is_anomalous when known.
nlohmann::ordered_json ResponseToJson(const anoclip::v1::DetectResponse& response);

// The service's inspection as the images need it: scores, verdict, regions and the gray heatmap
// (a HEATMAP_FORMAT_PNG response; the service draws it on the fixed scale). InvalidArgument otherwise.
absl::StatusOr<inspection::Inspection> InspectionFromResponse(const anoclip::v1::DetectResponse& response);

// The images of inspection/inspect.h, NAME_heatmap.png, NAME_overlay.png and, when a decision was
// made, NAME_mask.png, under `dir` (NAME may hold folders; they are created). Needs a
// HEATMAP_FORMAT_PNG response at the original size.
absl::Status WriteResponseImages(const anoclip::v1::DetectResponse& response, const std::string& image_bytes,
                                 const std::string& dir, const std::string& name);

}  // namespace anoclip::client
