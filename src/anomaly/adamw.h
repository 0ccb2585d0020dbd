// AdamW for one parameter tensor, as torch.optim.AdamW computes it (decoupled weight decay, then
// bias-corrected moments), with the test-time adapter's settings (docs/algorithm.md §7). On the
// CPU an update is one pass over parameter, gradient and moments instead of libtorch's nine
// element-wise ops.
#pragma once

#include <ATen/core/Tensor.h>

namespace anoclip::anomaly {

struct AdamWSettings {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
};

class AdamW {
 public:
  // Updates `parameter` in place; its moments start at zero. Where `initial` is given, the
  // parameter starts from its values instead (the first step reads them and writes the
  // parameter, which may be uninitialised until then): no copy of them beforehand.
  AdamW(at::Tensor parameter, const AdamWSettings& settings, at::Tensor initial = {});

  // One update from `gradient` (the parameter's shape). Returns the largest magnitude of the
  // updated parameter, the scale of its int8 copy (on the CPU from the update's own pass).
  float Step(const at::Tensor& gradient);

  // The same for a 2-D float32 parameter on the CPU, which the same pass also rounds to int8 row
  // by row, as an int8 product reads it (model::onednn::Int8Matrix with row scales): into
  // `rows_int8` ([R,C] int8, contiguous) at each row's largest magnitude / 127 (1 for a row of
  // zeros), written into `row_scales` ([R] float32). No second pass over the parameter.
  float Step(const at::Tensor& gradient, const at::Tensor& rows_int8, const at::Tensor& row_scales);

 private:
  at::Tensor parameter_, initial_, exp_avg_, exp_avg_sq_;  // the moments allocated by the first step
  AdamWSettings settings_;
  int steps_ = 0;
};

}  // namespace anoclip::anomaly
