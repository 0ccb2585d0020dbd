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

// One slice of the update, at the first step from the initial values in `source` (the parameter
// itself, or AdamW's `initial`); returns the largest magnitude of the updated slice. The
// first step's moments are zero, so it writes them without reading them. Built with
// -fno-math-errno (CMakeLists.txt), without which the sqrt keeps the loop scalar, and in vector
// clones: its sqrt and division per element took twice as long in the baseline's 4-wide vectors
// as in AVX-512's (docs/performance.md).
template <bool kFirst>
inline __attribute__((always_inline)) float UpdateSliceBody(int64_t n, const Coefficients& c, const float* source,
                                                           float* param, const float* __restrict grad,
                                                           float* __restrict exp_avg, float* __restrict exp_avg_sq) {
  uint32_t largest = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i];
    const float m = kFirst ? c.keep1 * g : exp_avg[i] * c.beta1 + c.keep1 * g;
    const float v = kFirst ? c.keep2 * g * g : exp_avg_sq[i] * c.beta2 + c.keep2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    const float previous = kFirst ? source[i] : param[i];
    param[i] = previous * c.decay - c.step_size * (m / (std::sqrt(v) / c.sqrt_correction2 + c.eps));
    largest = std::max(largest, MagnitudeBits(param[i]));
  }
  return FromMagnitudeBits(largest);
}
ANOCLIP_VECTOR_CLONES float UpdateSlice(int64_t n, const Coefficients c, float* __restrict param, const float* grad,
                                        float* exp_avg, float* exp_avg_sq) {
  return UpdateSliceBody<false>(n, c, nullptr, param, grad, exp_avg, exp_avg_sq);
}
ANOCLIP_VECTOR_CLONES float FirstUpdateSlice(int64_t n, const Coefficients c, const float* source, float* param,
                                             const float* grad, float* exp_avg, float* exp_avg_sq) {
  return UpdateSliceBody<true>(n, c, source, param, grad, exp_avg, exp_avg_sq);
}

}  // namespace

AdamW::AdamW(at::Tensor parameter, const AdamWSettings& settings, at::Tensor initial)
    : parameter_(std::move(parameter)), initial_(std::move(initial)), settings_(settings) {
  TORCH_CHECK(!initial_.defined() || initial_.sizes() == parameter_.sizes(),
              "AdamW's initial values must have the parameter's shape");
}

float AdamW::Step(const at::Tensor& gradient) {
  const bool first = steps_++ == 0;
  const AdamWSettings& s = settings_;
  const double correction1 = 1 - std::pow(s.beta1, steps_), correction2 = 1 - std::pow(s.beta2, steps_);
  if (parameter_.device().is_cpu() && parameter_.scalar_type() == at::kFloat && parameter_.is_contiguous()) {
    const auto grad = gradient.to(at::kFloat).contiguous();
    at::Tensor source;  // the first step's initial values
    if (first) {
      exp_avg_ = at::empty_like(parameter_);
      exp_avg_sq_ = at::empty_like(parameter_);
      source = initial_.defined() ? initial_.to(parameter_.options()).contiguous() : parameter_;
    }
    const Coefficients c{static_cast<float>(1 - s.lr * s.weight_decay),
                         static_cast<float>(s.beta1),
                         static_cast<float>(s.beta2),
                         static_cast<float>(1 - s.beta1),
                         static_cast<float>(1 - s.beta2),
                         static_cast<float>(std::sqrt(correction2)),
                         static_cast<float>(s.eps),
                         static_cast<float>(s.lr / correction1)};
    float* param = parameter_.data_ptr<float>();
    const float* from = first ? source.data_ptr<float>() : nullptr;
    const float* g = grad.data_ptr<float>();
    float *m = exp_avg_.data_ptr<float>(), *v = exp_avg_sq_.data_ptr<float>();
    constexpr int64_t kSlice = 16384;
    const int64_t n = parameter_.numel();
    std::vector<float> slice_largest((n + kSlice - 1) / kSlice, 0.0f);
    at::parallel_for(0, static_cast<int64_t>(slice_largest.size()), 1, [&](int64_t first_slice, int64_t last_slice) {
      for (int64_t slice = first_slice; slice < last_slice; ++slice) {
        const int64_t begin = slice * kSlice, count = std::min(kSlice, n - begin);
        slice_largest[slice] =
            first ? FirstUpdateSlice(count, c, from + begin, param + begin, g + begin, m + begin, v + begin)
                  : UpdateSlice(count, c, param + begin, g + begin, m + begin, v + begin);
      }
    });
    initial_.reset();
    return slice_largest.empty() ? 0.0f : *std::max_element(slice_largest.begin(), slice_largest.end());
  }
  if (first) {
    exp_avg_ = at::zeros_like(parameter_);
    exp_avg_sq_ = at::zeros_like(parameter_);
    if (initial_.defined()) parameter_.copy_(initial_);
    initial_.reset();
  }
  // Elsewhere (a CUDA device), libtorch's ops in torch.optim.AdamW's order.
  parameter_.mul_(1 - s.lr * s.weight_decay);
  exp_avg_.mul_(s.beta1).add_(gradient, 1 - s.beta1);
  exp_avg_sq_.mul_(s.beta2).addcmul_(gradient, gradient, 1 - s.beta2);
  parameter_.addcdiv_(exp_avg_, exp_avg_sq_.sqrt().div_(std::sqrt(correction2)).add_(s.eps), -s.lr / correction1);
  return LargestMagnitude(parameter_);
}

}  // namespace anoclip::anomaly
