// Zero-shot scores and heatmaps (docs/algorithm.md §5): raw cosine similarities, no temperature.
#pragma once

#include <ATen/core/Tensor.h>

namespace anoclip::anomaly {

// softmax over [⟨norm x, t+⟩, ⟨norm x, t-⟩]; x: [...,D], text_features: [2,D] or, batched,
// x: [B,...,D] with text_features [B,2,D]. Returns [...,2].
at::Tensor StateProbabilities(const at::Tensor& x, const at::Tensor& text_features);

// Abnormal patch probabilities [B,M] -> heatmaps [B,S,S]: g×g grid, replicate pad 1, 3×3 mean,
// bilinear (align_corners) to image_size.
at::Tensor AnomalyMap(const at::Tensor& patch_probs, int64_t grid, int64_t image_size);

// The 22 views of the reference ensemble for a batch [B,3,S,S] -> [22,B,3,S,S] (view 0 is the
// identity).
at::Tensor DetectionViews(const at::Tensor& images);
constexpr int kDetectionViews = 22;

}  // namespace anoclip::anomaly
