// One inspection step, the same for the service, the `anoclip` command and the client: from a
// detection's scores to a verdict (threshold or calibration), regions, a heatmap at the caller's
// size on a fixed colour scale, and the images that show it. Torch-free; stateless and
// thread-safe (a Calibration is only read).
//
// The images, one meaning each (docs/algorithm.md §9):
//   heatmap.png  8-bit gray: the pixel scores on the colour scale (0 = low end, 255 = high end).
//   overlay.png  the input with the JET-coloured heatmap at 50%, the regions outlined in white,
//                a colour bar with the scale's ends, and a caption with the score and verdict.
//   mask.png     8-bit: 255 inside the reported regions (each filled to its outline), 0 elsewhere;
//                written only when a threshold or calibration made a decision.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <opencv2/core/mat.hpp>

#include "absl/status/statusor.h"
#include "inspection/calibration.h"
#include "inspection/regions.h"

namespace anoclip::inspection {

enum class HeatmapScale {
  kFixed,      // [0,1]: raw scores (probabilities), or calibrated ones (the calibration's range)
  kStretched,  // the map's own min..max: every image uses the full range, so good parts look red too
};

// The range that gray 0..255 stands for.
struct ColourScale {
  double low = 0.0, high = 1.0;
  bool calibrated = false;  // the values are calibrated scores (0.5 is the threshold)
};

// The fixed [0,1] scale of raw or calibrated scores.
ColourScale FixedScale(bool calibrated);

struct InspectOptions {
  const Calibration* calibration = nullptr;  // at most one of calibration and threshold
  std::optional<double> threshold;           // on raw scores, 0 < threshold < 1
  int64_t min_region_area = 1;
  cv::Size size;                             // of the output maps; empty: the input map's size
  HeatmapScale scale = HeatmapScale::kFixed;
};

struct Inspection {
  float image_score = 0.f;
  float max_pixel_score = 0.f;                  // of the raw map at the output size
  std::optional<double> calibrated_image_score;
  std::vector<Region> regions;                  // in output-map coordinates
  std::optional<bool> is_anomalous;             // set when a decision was made
  cv::Mat scores;                               // CV_32F raw pixel scores at the output size
  cv::Mat heatmap;                              // CV_8U: the scores (calibrated when calibrated) on `scale`
  ColourScale scale;
};

// `map`: CV_32F raw pixel scores at any resolution (the model's). InvalidArgument for an empty or
// non-float map, a bad threshold, both a threshold and a calibration, or a negative
// min_region_area.
absl::StatusOr<Inspection> Inspect(float image_score, const cv::Mat& map, const InspectOptions& options);

// "score 0.734 ANOMALOUS", "calibrated 0.210 normal", "score 0.402 (no threshold)".
std::string Caption(const Inspection& inspection);

// The overlay described above, at the heatmap's size (`rgb`, CV_8UC3, is resized to it with
// area averaging when its size differs).
cv::Mat RenderOverlay(const cv::Mat& rgb, const Inspection& inspection);

// 255 inside the regions, filled to their outlines; CV_8U at the heatmap's size.
cv::Mat RenderMask(const Inspection& inspection);

struct InspectionImages {
  std::string heatmap_png, overlay_png;
  std::string mask_png;  // empty when no decision was made
};
absl::StatusOr<InspectionImages> EncodeImages(const cv::Mat& rgb, const Inspection& inspection);

// Writes DIR/PREFIXheatmap.png, DIR/PREFIXoverlay.png and (when there is one) DIR/PREFIXmask.png,
// creating DIR.
absl::Status WriteImages(const InspectionImages& images, const std::string& dir, const std::string& prefix);

}  // namespace anoclip::inspection
