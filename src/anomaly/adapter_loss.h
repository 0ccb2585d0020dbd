// The test-time adapter's loss (docs/algorithm.md §7) and its gradient with respect to the rows of
// 2·Φ(X), for one image's block of clean and noisy tokens: every term of the loss sees only its own
// row, so on the CPU both come from one pass over the rows. With the other element-wise passes of
// a step: back through the gate's tanh, and the noisy tokens. The loss and the noisy tokens also
// return the largest magnitude of what they wrote, the scale of its int8 copy under
// --precision int8. The adapter's products and AdamW are
// src/anomaly/test_time_adapter.cc's.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <cstring>

namespace anoclip::anomaly {

struct AdapterLoss {
  at::Tensor loss;       // scalar
  at::Tensor d_doubled;  // ∂loss/∂(2·Φ(X)) [R,D], float32
  float d_doubled_largest = 0;  // max |d_doubled|, the scale of its int8 copy
};

// doubled: 2·Φ(X) [R,D] float32, whose first `clean_rows` rows are the clean tokens and the rest
// the noisy ones; text_features [2,D] (t+, t−). On the CPU one pass over the rows (the libtorch
// version's two dozen ops over [R,2] and [R,D] tensors took a third of a float32 step,
// docs/performance.md); elsewhere AdapterLossGradientOps.
AdapterLoss AdapterLossGradient(const at::Tensor& doubled, const at::Tensor& text_features, int64_t clean_rows);

// The same with libtorch's ops, on any device.
AdapterLoss AdapterLossGradientOps(const at::Tensor& doubled, const at::Tensor& text_features, int64_t clean_rows);

// Back through the gate G = tanh(A) [R,2N]: ∂loss/∂A = ∂loss/∂G ⊙ (1 − G²) and its column sums
// (∂loss/∂b). ∂loss/∂A is written in bfloat16 where `d_preactivation_dtype` asks for it (for a
// bfloat16 product: no conversion pass), else in the inputs' dtype; ∂loss/∂b in the inputs'
// dtype. On the CPU one pass for float32 inputs (tanh_backward and sum were two); elsewhere
// libtorch's ops.
struct GateGradient {
  at::Tensor d_preactivation;  // [R,2N]
  at::Tensor d_bias;           // [2N] float32
};
GateGradient BackThroughGate(const at::Tensor& d_gate, const at::Tensor& gate,
                             at::ScalarType d_preactivation_dtype = at::kFloat);

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

}  // namespace anoclip::anomaly
