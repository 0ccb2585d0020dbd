#include "anomaly/adamw.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "anomaly/adapter_loss.h"
#include "common/vector_clones.h"

namespace anoclip::anomaly {
namespace {

struct Coefficients {
  float decay, beta1, beta2, keep1, keep2, sqrt_correction2, eps, step_size;
};

// One slice of the update; returns the largest magnitude of the updated slice. Built with
// -fno-math-errno (CMakeLists.txt), without which the sqrt keeps the loop scalar, and in vector
// clones: its sqrt and division per element took twice as long in the baseline's 4-wide vectors
// as in AVX-512's (docs/performance.md).
ANOCLIP_VECTOR_CLONES float UpdateSlice(int64_t n, const Coefficients c, float* __restrict param, const float* __restrict grad,
                  float* __restrict exp_avg, float* __restrict exp_avg_sq) {
  uint32_t largest = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i];
    const float m = exp_avg[i] * c.beta1 + c.keep1 * g;
    const float v = exp_avg_sq[i] * c.beta2 + c.keep2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    param[i] = param[i] * c.decay - c.step_size * (m / (std::sqrt(v) / c.sqrt_correction2 + c.eps));
    largest = std::max(largest, MagnitudeBits(param[i]));
  }
  return FromMagnitudeBits(largest);
}

}  // namespace

AdamW::AdamW(at::Tensor parameter, const AdamWSettings& settings)
    : parameter_(std::move(parameter)),
      exp_avg_(at::zeros_like(parameter_)),
      exp_avg_sq_(at::zeros_like(parameter_)),
      settings_(settings) {}

float AdamW::Step(const at::Tensor& gradient) {
  ++steps_;
  const AdamWSettings& s = settings_;
  const double correction1 = 1 - std::pow(s.beta1, steps_), correction2 = 1 - std::pow(s.beta2, steps_);
  if (parameter_.device().is_cpu() && parameter_.scalar_type() == at::kFloat && parameter_.is_contiguous()) {
    const auto grad = gradient.to(at::kFloat).contiguous();
    const Coefficients c{static_cast<float>(1 - s.lr * s.weight_decay),
                         static_cast<float>(s.beta1),
                         static_cast<float>(s.beta2),
                         static_cast<float>(1 - s.beta1),
                         static_cast<float>(1 - s.beta2),
                         static_cast<float>(std::sqrt(correction2)),
                         static_cast<float>(s.eps),
                         static_cast<float>(s.lr / correction1)};
    float* param = parameter_.data_ptr<float>();
    const float* g = grad.data_ptr<float>();
    float *m = exp_avg_.data_ptr<float>(), *v = exp_avg_sq_.data_ptr<float>();
    constexpr int64_t kSlice = 16384;
    const int64_t n = parameter_.numel();
    std::vector<float> slice_largest((n + kSlice - 1) / kSlice, 0.0f);
    at::parallel_for(0, static_cast<int64_t>(slice_largest.size()), 1, [&](int64_t first, int64_t last) {
      for (int64_t slice = first; slice < last; ++slice) {
        const int64_t begin = slice * kSlice;
        slice_largest[slice] = UpdateSlice(std::min(kSlice, n - begin), c, param + begin, g + begin, m + begin, v + begin);
      }
    });
    return slice_largest.empty() ? 0.0f : *std::max_element(slice_largest.begin(), slice_largest.end());
  }
  // Elsewhere (a CUDA device), libtorch's ops in torch.optim.AdamW's order.
  parameter_.mul_(1 - s.lr * s.weight_decay);
  exp_avg_.mul_(s.beta1).add_(gradient, 1 - s.beta1);
  exp_avg_sq_.mul_(s.beta2).addcmul_(gradient, gradient, 1 - s.beta2);
  parameter_.addcdiv_(exp_avg_, exp_avg_sq_.sqrt().div_(std::sqrt(correction2)).add_(s.eps), -s.lr / correction1);
  return LargestMagnitude(parameter_);
}

}  // namespace anoclip::anomaly
