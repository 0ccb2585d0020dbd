// What the engine-driving subcommands share: the Detector from common flags, and turning an
// image file into model input.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <set>
#include <string>

#include <opencv2/core/mat.hpp>

#include "absl/status/statusor.h"
#include "anomaly/detector.h"
#include "common/arguments.h"

namespace anoclip::cli {

// Flags every engine subcommand takes: model, vocab, device, dtype, threads.
std::set<std::string> EngineValueFlags();

absl::StatusOr<std::unique_ptr<anomaly::Detector>> DetectorFromArguments(const Arguments& args);

// --class and --kind (default by class name) as a prompt spec.
absl::StatusOr<anomaly::PromptSpec> PromptSpecFromArguments(const Arguments& args);

struct LoadedImage {
  cv::Mat rgb;       // as decoded, RGB
  at::Tensor input;  // [3,S,S] preprocessed
};
absl::StatusOr<LoadedImage> LoadImageForDetector(const std::string& path, const anomaly::Detector& detector);

}  // namespace anoclip::cli
