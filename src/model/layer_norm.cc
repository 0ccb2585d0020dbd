#include "model/layer_norm.h"

#include <ATen/ATen.h>

#include "model/linear.h"
#include "model/onednn_ops.h"

namespace anoclip::model {

at::Tensor LayerNorm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  // bfloat16 rows where the CPU has bfloat16 instructions (where --precision bf16 pays).
  const bool rows_type = x.scalar_type() == at::kFloat ||
                         (x.scalar_type() == at::kBFloat16 && onednn::HasNativeBfloat16());
  const auto channels = [&x](const at::Tensor& t) {
    return t.defined() && t.dim() == 1 && t.numel() == x.size(-1) &&
           (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16);
  };
  if (OnOneDnn(x) && rows_type && x.is_contiguous() && x.dim() >= 1 && channels(weight) && channels(bias)) {
    return onednn::LayerNorm(x, weight, bias, eps);
  }
  return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
}

}  // namespace anoclip::model
