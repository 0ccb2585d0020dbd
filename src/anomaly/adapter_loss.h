// The test-time adapter's loss (docs/algorithm.md §7) and its gradient with respect to the rows of
// 2·Φ(X), for one image's block of clean and noisy tokens: every term of the loss sees only its own
// row, so on the CPU both come from one pass over the rows. With the other element-wise passes of
// a step: back through the gate's tanh, and the noisy tokens. The loss and the noisy tokens also
// return the largest magnitude of what they wrote, the scale of its int8 copy under
// --precision int8. The adapter's products and AdamW are
// src/anomaly/test_time_adapter.cc's.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace anoclip::anomaly {

// Rows of 2·Φ(X) [R,D] float32 as the adapter's last product leaves them: the rows themselves
// (float32 and bfloat16 products add X as they write them), or under int8 `residual + scale·values`
// with values the product's integer sums and residual X, added up by the pass that reads them
// (model::onednn::MultiplyInt8 leaves scales and residuals to the passes).
struct AdapterRows {
  AdapterRows(at::Tensor rows) : values(std::move(rows)) {}  // NOLINT(google-explicit-constructor): the rows as they are
  AdapterRows(at::Tensor sums, float sums_scale, at::Tensor added) : values(std::move(sums)), scale(sums_scale), residual(std::move(added)) {}
  at::Tensor values;
  float scale = 1;
  at::Tensor residual;  // undefined where `values` are the rows
  at::Tensor Rows() const;  // residual + scale·values, or values
};

struct AdapterLoss {
  at::Tensor loss;       // scalar
  at::Tensor d_doubled;  // ∂loss/∂(2·Φ(X)) [R,D], float32
  float d_doubled_largest = 0;  // max |d_doubled|, the scale of its int8 copy
};

// doubled: rows first_row.. of 2·Φ(X) [R,D] for the image's whole block of 2·clean_rows
// rows, whose first `clean_rows` are the clean tokens and the rest the noisy ones (the whole
// block, or either half of it: the terms are per row, over the token count); text_features [2,D]
// (t+, t−). The loss returned is these rows' share of it. On the CPU one pass over the rows (the
// libtorch version's two dozen ops over [R,2] and [R,D] tensors took a third of a float32 step,
// docs/performance.md); elsewhere AdapterLossGradientOps.
AdapterLoss AdapterLossGradient(const AdapterRows& doubled, const at::Tensor& text_features, int64_t clean_rows,
                                int64_t first_row = 0);

// The same with libtorch's ops, on any device.
AdapterLoss AdapterLossGradientOps(const at::Tensor& doubled, const at::Tensor& text_features, int64_t clean_rows,
                                   int64_t first_row = 0);

// prob(X)'s abnormal column [R] from the rows of 2·Φ(X) [R,D] and text_features [2,D]: softmax
// over each normalised row's two logits. On the CPU one pass over the rows, with the loss's
// reductions; elsewhere libtorch's ops.
at::Tensor AbnormalProbabilities(const AdapterRows& doubled, const at::Tensor& text_features);

// The gate G = tanh(A) [R,2N] from the int8 product's sums: A = sums·column_scales + bias (both
// [2N] float32), the product's scales and the bias applied here (model::onednn::MultiplyInt8),
// written over the sums; returns max |G|, the scale of its int8 copy. One pass over the rows
// (CPU, dense float32).
float TanhGate(const at::Tensor& sums, const at::Tensor& column_scales, const at::Tensor& bias);

// Back through the gate G = tanh(A) [R,2N]: writes ∂loss/∂A = ∂loss/∂G ⊙ (1 − G²) into
// `d_preactivation` ([R,2N], float32, or bfloat16 for a bfloat16 product: no conversion pass) and
// returns its column sums ∂loss/∂b, summed in float32. On the CPU one pass for float32 inputs and
// a dense output (tanh_backward and sum were two); elsewhere libtorch's ops.
// ∂loss/∂G is d_gate·d_gate_scale (an int8 product's sums and their scale; 1 otherwise).
at::Tensor BackThroughGate(const at::Tensor& d_gate, const at::Tensor& gate, const at::Tensor& d_preactivation,
                           float d_gate_scale = 1.0f);

// The noisy tokens of a step: noisy = patches + noise, and its rows normalised as F::normalize
// does (lengths clamped at 1e-12), written into the two [M,D] outputs, and the normalised rows
// also in bfloat16 into `noisy_normalized_bfloat16` where it is given (for the bfloat16 products;
// rounded to nearest even, as oneDNN's reorder rounds); returns the largest magnitude of the
// normalised rows. On the CPU one pass over the rows; elsewhere libtorch's ops.
float AddNoiseAndNormalize(const at::Tensor& patches, const at::Tensor& noise, const at::Tensor& noisy,
                           const at::Tensor& noisy_normalized, const at::Tensor& noisy_normalized_bfloat16 = {});

// max |t|: one pass over the threads for a dense float32 CPU tensor, else libtorch's reductions
// (0 for an empty t).
float LargestMagnitude(const at::Tensor& t);

// |x|'s bits as an unsigned integer, which orders as |x| does (a NaN above infinity): the passes
// above keep their largest magnitude as the largest of these, since an integer maximum
// vectorises and a float one (which must honour NaN) kept the loops around it scalar.
inline uint32_t MagnitudeBits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits & 0x7fffffffu;
}
inline float FromMagnitudeBits(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}
// The larger of two magnitudes, a NaN above all.
inline float LargerMagnitude(float a, float b) { return FromMagnitudeBits(std::max(MagnitudeBits(a), MagnitudeBits(b))); }

}  // namespace anoclip::anomaly
