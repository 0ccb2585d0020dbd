#include "anomaly/adamw.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>

namespace anoclip::anomaly {
namespace {

struct Coefficients {
  float decay, beta1, beta2, keep1, keep2, sqrt_correction2, eps, step_size;
};

// One slice of the update. Built with -fno-math-errno (CMakeLists.txt): without it the sqrt
// keeps the loop scalar.
void UpdateSlice(int64_t n, const Coefficients c, float* __restrict param, const float* __restrict grad,
                 float* __restrict exp_avg, float* __restrict exp_avg_sq) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i];
    const float m = exp_avg[i] * c.beta1 + c.keep1 * g;
    const float v = exp_avg_sq[i] * c.beta2 + c.keep2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    param[i] = param[i] * c.decay - c.step_size * (m / (std::sqrt(v) / c.sqrt_correction2 + c.eps));
  }
}

}  // namespace

AdamW::AdamW(at::Tensor parameter, const AdamWSettings& settings)
    : parameter_(std::move(parameter)),
      exp_avg_(at::zeros_like(parameter_)),
      exp_avg_sq_(at::zeros_like(parameter_)),
      settings_(settings) {}

void AdamW::Step(const at::Tensor& gradient) {
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
    at::parallel_for(0, parameter_.numel(), 16384, [&](int64_t begin, int64_t end) {
      UpdateSlice(end - begin, c, param + begin, g + begin, m + begin, v + begin);
    });
    return;
  }
  // Elsewhere (a CUDA device), libtorch's ops in torch.optim.AdamW's order.
  parameter_.mul_(1 - s.lr * s.weight_decay);
  exp_avg_.mul_(s.beta1).add_(gradient, 1 - s.beta1);
  exp_avg_sq_.mul_(s.beta2).addcmul_(gradient, gradient, 1 - s.beta2);
  parameter_.addcdiv_(exp_avg_, exp_avg_sq_.sqrt().div_(std::sqrt(correction2)).add_(s.eps), -s.lr / correction1);
}

}  // namespace anoclip::anomaly
