// What the engine-driving subcommands (detect, calibrate, bench) share: the Detector and the
// scoring options from their common flags, and image files turned into model input.
//
// The *FromArguments functions only look at the command line (no file is read), so their errors
// are usage errors; loading the model and reading images are runtime steps.
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

// Flags every engine subcommand takes: model, vocab, device, dtype, threads, precision.
std::set<std::string> EngineValueFlags();

// --model (required), --vocab, --device (cpu|cuda|cuda:N), --dtype (float32|float16|bfloat16),
// --threads (0..1024), --precision fp32|bf16|int8 (CPU only).
absl::StatusOr<anomaly::DetectorOptions> DetectorOptionsFromArguments(const Arguments& args);

// DetectorOptionsFromArguments, then loads the model.
absl::StatusOr<std::unique_ptr<anomaly::Detector>> DetectorFromArguments(const Arguments& args);

// --class (required) and --kind (default: DefaultKindForClass), validated as a prompt spec.
absl::StatusOr<anomaly::PromptSpec> PromptSpecFromArguments(const Arguments& args);

// Flags that shape a detection, shared by detect and calibrate so that a calibration can be made
// with the same settings it is later used with: views, mode, and the TTA flags.
std::set<std::string> ScoringValueFlags();

// --views 1|22, --mode anoclip|clip, --tta with --tta-steps (1..100), --tta-lr (> 0),
// --tta-sigma (>= 0), --tta-init text|random, --seed. The TTA noise hook is left unset.
absl::StatusOr<anomaly::DetectOptions> DetectOptionsFromArguments(const Arguments& args);

// Reads and decodes an image file to RGB; errors name the file.
absl::StatusOr<cv::Mat> ReadImageForDetector(const std::string& path);

// The [3,S,S] model input for an RGB image (the model's size and normalisation).
at::Tensor PreprocessForDetector(const cv::Mat& rgb, const anomaly::Detector& detector);

}  // namespace anoclip::cli
