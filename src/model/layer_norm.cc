#include "model/layer_norm.h"

#include <ATen/ATen.h>

#include "model/linear.h"
#include "model/onednn_ops.h"

namespace anoclip::model {

at::Tensor LayerNorm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  const auto dense_float = [](const at::Tensor& t) {
    return t.defined() && t.scalar_type() == at::kFloat && t.is_contiguous();
  };
  if (OnOneDnn(x) && dense_float(x) && dense_float(weight) && dense_float(bias) && x.dim() >= 1 &&
      weight.numel() == x.size(-1) && bias.numel() == x.size(-1)) {
    return onednn::LayerNorm(x, weight, bias, eps);
  }
  return at::layer_norm(x, {x.size(-1)}, weight, bias, eps);
}

}  // namespace anoclip::model
