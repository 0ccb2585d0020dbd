// The test-time adapter's loss (docs/algorithm.md §7) and its gradient with respect to the rows of
// 2·Φ(X), for one image's block of clean and noisy tokens: every term of the loss sees only its own
// row, so on the CPU both come from one pass over the rows. The adapter's products and AdamW are
// src/anomaly/test_time_adapter.cc's.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace anoclip::anomaly {

struct AdapterLoss {
  at::Tensor loss;       // scalar
  at::Tensor d_doubled;  // ∂loss/∂(2·Φ(X)) [R,D], float32
};

// doubled: 2·Φ(X) [R,D] float32, whose first `clean_rows` rows are the clean tokens and the rest
// the noisy ones; text_features [2,D] (t+, t−). On the CPU one pass over the rows (the libtorch
// version's two dozen ops over [R,2] and [R,D] tensors took a third of a float32 step,
// docs/performance.md); elsewhere AdapterLossGradientOps.
AdapterLoss AdapterLossGradient(const at::Tensor& doubled, const at::Tensor& text_features, int64_t clean_rows);

// The same with libtorch's ops, on any device.
AdapterLoss AdapterLossGradientOps(const at::Tensor& doubled, const at::Tensor& text_features, int64_t clean_rows);

}  // namespace anoclip::anomaly
