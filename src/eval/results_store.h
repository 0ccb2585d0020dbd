// Per-image evaluation results, appended to one file per class as they are scored, so that an
// interrupted run continues where it stopped (--resume) and the metrics can be recomputed.
//
// A record: "AEV1", u32 little-endian length of a JSON header {image, defect, anomalous, score,
// rows, cols, has_mask}, the header, rows*cols float32 (the anomaly map at model resolution),
// then rows*cols bytes of the binary ground-truth mask (0/1) when has_mask. A record cut short
// by an interruption is dropped on reading and overwritten on the next append. Torch-free.
#pragma once

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <opencv2/core/mat.hpp>

#include "absl/status/statusor.h"

namespace anoclip::eval {

struct ImageResult {
  std::string image;  // the image's path, as listed
  std::string defect;
  bool anomalous = false;
  float image_score = 0.f;
  cv::Mat map;   // CV_32F, rows x cols
  cv::Mat mask;  // CV_8U 0/1 of the map's size; empty when the class has no masks
};

// The complete records of `path` (none when the file does not exist) and, in `*valid_bytes`,
// where the last complete one ends. A malformed record before the end is an error naming the file.
absl::StatusOr<std::vector<ImageResult>> ReadResults(const std::string& path, uint64_t* valid_bytes = nullptr);

class ResultsWriter {
 public:
  // Opens `path` for appending after its first `keep_bytes` bytes (0: a new file).
  static absl::StatusOr<std::unique_ptr<ResultsWriter>> Open(const std::string& path, uint64_t keep_bytes);
  ~ResultsWriter();
  // Written and flushed before returning, so a kill loses at most the record being written.
  absl::Status Append(const ImageResult& result);

 private:
  ResultsWriter(std::string path, std::FILE* file) : path_(std::move(path)), file_(file) {}
  std::string path_;
  std::FILE* file_;
};

}  // namespace anoclip::eval
