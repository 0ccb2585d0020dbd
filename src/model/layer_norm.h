// Layer normalisation over the last dimension, on the library that runs the products: oneDNN's
// layer normalization where oneDNN is selected (model/linear.h) and x is dense on the CPU outside
// autograd, float32 (2.4-2.7x faster than libtorch's on a ViT-B's rows) or bfloat16 where the CPU
// has bfloat16 instructions (27-43x: libtorch converts element by element; docs/performance.md);
// libtorch's everywhere else.
#pragma once

#include <ATen/core/Tensor.h>

namespace anoclip::model {

at::Tensor LayerNorm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps);

}  // namespace anoclip::model
