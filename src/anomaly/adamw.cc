#include "anomaly/adamw.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
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

// One row rounded to int8 at `inverse` = 127 / its largest magnitude, to nearest even as oneDNN's
// reorder rounds.
ANOCLIP_VECTOR_CLONES void RoundRow(const float* values, int64_t n, float inverse, int8_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<int8_t>(std::nearbyint(values[i] * inverse));
}

}  // namespace

AdamW::AdamW(at::Tensor parameter, const AdamWSettings& settings, at::Tensor initial)
    : parameter_(std::move(parameter)), initial_(std::move(initial)), settings_(settings) {
  TORCH_CHECK(!initial_.defined() || initial_.sizes() == parameter_.sizes(),
              "AdamW's initial values must have the parameter's shape");
}

float AdamW::Step(const at::Tensor& gradient) { return Step(gradient, {}, {}); }

float AdamW::Step(const at::Tensor& gradient, const at::Tensor& rows_int8, const at::Tensor& row_scales) {
  const bool with_int8 = rows_int8.defined();
  TORCH_CHECK(!with_int8 || (parameter_.dim() == 2 && parameter_.device().is_cpu() &&
                             parameter_.scalar_type() == at::kFloat && parameter_.is_contiguous() &&
                             rows_int8.sizes() == parameter_.sizes() && rows_int8.scalar_type() == at::kChar &&
                             rows_int8.is_contiguous() && row_scales.numel() == parameter_.size(0) &&
                             row_scales.scalar_type() == at::kFloat && row_scales.is_contiguous()),
              "AdamW rounds a contiguous 2-D float32 CPU parameter into contiguous int8 rows and float32 scales");
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
    // Slices of about 16384 elements, whole rows where the rows are rounded to int8.
    const int64_t n = parameter_.numel();
    const int64_t row_length = with_int8 ? std::max<int64_t>(parameter_.size(1), 1) : 1;
    const int64_t slice_elements = std::max<int64_t>(16384 / row_length, 1) * row_length;
    std::vector<float> slice_largest((n + slice_elements - 1) / slice_elements, 0.0f);
    int8_t* int8_data = with_int8 ? rows_int8.data_ptr<int8_t>() : nullptr;
    float* scale_data = with_int8 ? row_scales.data_ptr<float>() : nullptr;
    at::parallel_for(0, static_cast<int64_t>(slice_largest.size()), 1, [&](int64_t first_slice, int64_t last_slice) {
      for (int64_t slice = first_slice; slice < last_slice; ++slice) {
        const int64_t slice_begin = slice * slice_elements, slice_end = std::min(n, slice_begin + slice_elements);
        // One row at a time where they are rounded (the row is still in the cache for it), else
        // the slice at once.
        for (int64_t begin = slice_begin; begin < slice_end; begin += with_int8 ? row_length : slice_elements) {
          const int64_t count = std::min(with_int8 ? row_length : slice_elements, slice_end - begin);
          const float largest =
              first ? FirstUpdateSlice(count, c, from + begin, param + begin, g + begin, m + begin, v + begin)
                    : UpdateSlice(count, c, param + begin, g + begin, m + begin, v + begin);
          slice_largest[slice] = LargerMagnitude(slice_largest[slice], largest);
          if (with_int8) {
            // As model::onednn::QuantizeInt8: a row of zeros gets scale 1, a NaN or infinity a
            // NaN or infinite one, which the product then shows (its values, zeros here, do not
            // matter then).
            const int64_t row = begin / row_length;
            if (largest > 0 && std::isfinite(largest)) {
              scale_data[row] = largest / 127;
              RoundRow(param + begin, count, 127 / largest, int8_data + begin);
            } else {
              scale_data[row] = largest == 0 ? 1.0f : largest / 127;
              std::memset(int8_data + begin, 0, count);
            }
          }
        }
      }
    });
    initial_.reset();
    float largest = 0;
    for (const float slice : slice_largest) largest = LargerMagnitude(largest, slice);
    return largest;
  }
  if (first) {
    exp_avg_ = at::zeros_like(parameter_);
    exp_avg_sq_ = at::zeros_like(parameter_);
    if (initial_.defined()) parameter_.copy_(initial_);
    initial_.reset();
  }
  TORCH_CHECK(!with_int8, "AdamW rounds to int8 only a contiguous float32 CPU parameter");
  // Elsewhere (a CUDA device), libtorch's ops in torch.optim.AdamW's order.
  parameter_.mul_(1 - s.lr * s.weight_decay);
  exp_avg_.mul_(s.beta1).add_(gradient, 1 - s.beta1);
  exp_avg_sq_.mul_(s.beta2).addcmul_(gradient, gradient, 1 - s.beta2);
  parameter_.addcdiv_(exp_avg_, exp_avg_sq_.sqrt().div_(std::sqrt(correction2)).add_(s.eps), -s.lr / correction1);
  return LargestMagnitude(parameter_);
}

}  // namespace anoclip::anomaly
