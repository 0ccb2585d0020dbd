#include "anomaly/scorer.h"

#include <torch/torch.h>

#include <cmath>
#include <vector>

namespace anoclip::anomaly {
namespace F = torch::nn::functional;

at::Tensor StateProbabilities(const at::Tensor& x, const at::Tensor& text_features) {
  auto normalized = F::normalize(x, F::NormalizeFuncOptions().dim(-1));
  at::Tensor logits;
  if (text_features.dim() == 2) {
    logits = at::matmul(normalized, text_features.t());
  } else {
    // [B,...,D] x [B,2,D]: flatten the middle axes for a batched matmul.
    auto flat = normalized.reshape({normalized.size(0), -1, normalized.size(-1)});
    logits = at::bmm(flat, text_features.transpose(1, 2));
    auto shape = normalized.sizes().vec();
    shape.back() = 2;
    logits = logits.view(shape);
  }
  return logits.softmax(-1);
}

at::Tensor AnomalyMap(const at::Tensor& patch_probs, int64_t grid, int64_t image_size) {
  auto map = patch_probs.reshape({-1, 1, grid, grid});
  map = F::pad(map, F::PadFuncOptions({1, 1, 1, 1}).mode(torch::kReplicate));
  map = F::avg_pool2d(map, F::AvgPool2dFuncOptions(3).stride(1));
  map = F::interpolate(map, F::InterpolateFuncOptions()
                                .size(std::vector<int64_t>{image_size, image_size})
                                .mode(torch::kBilinear)
                                .align_corners(true));
  return map.squeeze(1);
}

at::Tensor DetectionViews(const at::Tensor& images) {
  std::vector<at::Tensor> views;
  views.reserve(kDetectionViews);
  views.push_back(images);

  auto affine = [&](double angle, double tx, double ty) {
    const double c = std::cos(angle), s = std::sin(angle);
    auto theta = torch::tensor({c, -s, tx, s, c, ty}, images.options()).view({1, 2, 3})
                     .expand({images.size(0), 2, 3});
    auto grid = F::affine_grid(theta, images.sizes(), /*align_corners=*/true);
    return F::grid_sample(images, grid, F::GridSampleFuncOptions()
                                            .mode(torch::kBilinear)
                                            .padding_mode(torch::kReflection)
                                            .align_corners(true));
  };
  for (double angle : {M_PI / 4, 3 * M_PI / 16, M_PI / 8, M_PI / 16}) {
    views.push_back(affine(angle, 0, 0));
    views.push_back(affine(-angle, 0, 0));
  }
  for (double t : {0.2, 0.1}) {
    for (double sx : {1.0, -1.0}) {
      for (double sy : {1.0, -1.0}) views.push_back(affine(0, sx * t, sy * t));
    }
  }
  views.push_back(images.flip({-1}));
  auto gray = images.select(1, 0) * 0.299 + images.select(1, 1) * 0.587 + images.select(1, 2) * 0.114;
  views.push_back(gray.unsqueeze(1).expand_as(images).contiguous());
  for (int64_t k = 1; k <= 3; ++k) views.push_back(torch::rot90(images, k, {2, 3}));
  return torch::stack(views);
}

}  // namespace anoclip::anomaly
