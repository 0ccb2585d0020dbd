// Synthetic labelled datasets in the layouts of eval/dataset.h, for tests and timing: textured or
// object-like parts with drawn defects (scratch, spot, crack) and their exact masks (the mask is
// the set of pixels the defect painted). The same options give the same files. Torch-free.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "eval/dataset.h"

namespace anoclip::eval {

struct SyntheticOptions {
  Layout layout = Layout::kMvtec;
  std::string out;   // created; files already there with the same names are overwritten
  int classes = 2;   // the folder layout holds one
  int images = 8;    // test images per class: half defect-free (at least 1), the rest defective
  int size = 128;    // image width; VisA images are size x 3/4 size, like its landscape photos
  uint64_t seed = 0;
  // Whether a class (by folder name) is drawn as a texture rather than an object.
  std::function<bool(const std::string&)> is_texture = [](const std::string&) { return false; };
};

// Limits, checked before anything is written.
constexpr int kMaxSyntheticClasses = 64;
constexpr int kMaxSyntheticImages = 10000;
constexpr int kMinSyntheticSize = 16;
constexpr int kMaxSyntheticSize = 4096;

absl::Status ValidateSyntheticOptions(const SyntheticOptions& options);

// Writes the dataset; returns the first file that could not be written.
absl::Status MakeSyntheticDataset(const SyntheticOptions& options);

}  // namespace anoclip::eval
