// Generated inspection images (a round part on a plain background, some with drawn defects),
// so the demo and load tests run without a dataset.
#pragma once

#include <string>
#include <vector>

#include <opencv2/core/mat.hpp>

#include "absl/status/status.h"

namespace anoclip::client {

struct SampleImage {
  std::string name;  // e.g. "good_0", "defect_scratch"
  cv::Mat rgb;
};

std::vector<SampleImage> GenerateSamples(int size = 320);

// Writes each sample as NAME.png into `dir`.
absl::Status WriteSamples(const std::string& dir, const std::vector<SampleImage>& samples);

}  // namespace anoclip::client
