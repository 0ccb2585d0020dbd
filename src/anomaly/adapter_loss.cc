#include "anomaly/adapter_loss.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/vector_clones.h"
#include "common/vector_math.h"

namespace anoclip::anomaly {

namespace {


// One row y of 2·Φ(X) against (t+, t−): its length as F::normalize clamps it, and its two logits.
struct RowLogits {
  float length, logit0, logit1;
};
inline __attribute__((always_inline)) RowLogits LogitsOfRow(const float* y, const float* text, int64_t dim) {
  const float *normal_text = text, *abnormal_text = text + dim;
  // Sixteen partial sums per reduction, one AVX-512 register's worth, so the compiler keeps them
  // in vector registers (a single running float sum must be added in order) and the sums are the
  // same on every instruction set. With eight, GCC reduced them through the stack: the row took
  // three times as long.
  constexpr int kLanes = 16;
  float length2[kLanes] = {}, dot0[kLanes] = {}, dot1[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= dim; d += kLanes) {
    for (int lane = 0; lane < kLanes; ++lane) {
      const float value = y[d + lane];
      length2[lane] += value * value;
      dot0[lane] += value * normal_text[d + lane];
      dot1[lane] += value * abnormal_text[d + lane];
    }
  }
  for (; d < dim; ++d) {
    length2[0] += y[d] * y[d];
    dot0[0] += y[d] * normal_text[d];
    dot1[0] += y[d] * abnormal_text[d];
  }
  for (int lane = 1; lane < kLanes; ++lane) {
    length2[0] += length2[lane];
    dot0[0] += dot0[lane];
    dot1[0] += dot1[lane];
  }
  const float length = std::max(std::sqrt(length2[0]), 1e-12f);
  return {length, dot0[0] / length, dot1[0] / length};
}

// One row y's loss term and gradient (AdapterLossGradientOps's ops, written out per row), for a
// clean token or a noisy one; `tokens` divides every term.
ANOCLIP_VECTOR_CLONES void LossGradientRow(const float* y, const float* text, int64_t dim, bool clean, int64_t tokens,
                                           float* out, float* loss) {
  const float *normal_text = text, *abnormal_text = text + dim;
  const auto [length, logit0, logit1] = LogitsOfRow(y, text, dim);
  const float top = std::max(logit0, logit1);
  const float log_sum = top + std::log(std::exp(logit0 - top) + std::exp(logit1 - top));
  const float log_p0 = logit0 - log_sum, log_p1 = logit1 - log_sum;
  const float p0 = std::exp(log_p0), p1 = std::exp(log_p1);
  const float inverse_tokens = 1.0f / static_cast<float>(tokens);
  float d_p0, d_p1;
  if (clean) {  // −Σ_c p·log p − 0.5·log p_normal, over the token count
    *loss = (-(p0 * log_p0 + p1 * log_p1) - 0.5f * log_p0) * inverse_tokens;
    d_p0 = -(log_p0 + 1) * inverse_tokens - 0.5f * inverse_tokens / p0;
    d_p1 = -(log_p1 + 1) * inverse_tokens;
  } else {  // −0.5·log p_abnormal of the noisy token
    *loss = -0.5f * log_p1 * inverse_tokens;
    d_p0 = 0;
    d_p1 = -0.5f * inverse_tokens / p1;
  }
  const float weighted = p0 * d_p0 + p1 * d_p1;
  const float d_logit0 = p0 * (d_p0 - weighted), d_logit1 = p1 * (d_p1 - weighted);
  // d = (d_logits·t − unit·row_dot) / length, with unit = y / length.
  const float inverse = 1.0f / length, text0 = d_logit0 * inverse, text1 = d_logit1 * inverse;
  const float own = (d_logit0 * logit0 + d_logit1 * logit1) * inverse * inverse;
  for (int64_t d = 0; d < dim; ++d) out[d] = text0 * normal_text[d] + text1 * abnormal_text[d] - own * y[d];
}

// One row's probability of the abnormal state, softmax over its two logits.
ANOCLIP_VECTOR_CLONES float AbnormalProbabilityOfRow(const float* y, const float* text, int64_t dim) {
  const RowLogits r = LogitsOfRow(y, text, dim);
  return 1.0f / (1.0f + std::exp(r.logit0 - r.logit1));
}

// out = residual + scale·values, one row.
ANOCLIP_VECTOR_CLONES void AddScaledRow(const float* residual, const float* values, float scale, int64_t dim, float* out) {
  for (int64_t d = 0; d < dim; ++d) out[d] = residual[d] + scale * values[d];
}

// The largest of n magnitudes.
ANOCLIP_VECTOR_CLONES float LargestMagnitude(const float* values, int64_t n) {
  uint32_t largest = 0;
  for (int64_t i = 0; i < n; ++i) largest = std::max(largest, MagnitudeBits(values[i]));
  return FromMagnitudeBits(largest);
}

// One row of tanh's backward: out = upstream·scale ⊙ (1 − tanh²), added to the block's column sums.
// `Out` is float or c10::BFloat16 (rounded to nearest even, as oneDNN's reorder rounds), so the
// bfloat16 product that takes it needs no conversion pass. Inlined into each clone below.
template <typename Out>
inline __attribute__((always_inline)) void GateBackwardRowBody(const float* upstream, float scale, const float* tanh,
                                                               int64_t columns, Out* out, float* column_sums) {
  for (int64_t c = 0; c < columns; ++c) {
    const float d = upstream[c] * scale * (1 - tanh[c] * tanh[c]);
    out[c] = Out(d);
    column_sums[c] += d;
  }
}
ANOCLIP_VECTOR_CLONES void GateBackwardRow(const float* upstream, float scale, const float* tanh, int64_t columns,
                                           float* out, float* column_sums) {
  GateBackwardRowBody(upstream, scale, tanh, columns, out, column_sums);
}
ANOCLIP_VECTOR_CLONES void GateBackwardRowBfloat16(const float* upstream, float scale, const float* tanh,
                                                   int64_t columns, c10::BFloat16* out, float* column_sums) {
  GateBackwardRowBody(upstream, scale, tanh, columns, out, column_sums);
}

// One noisy token: y = a + b and its row normalised as F::normalize does, also in bfloat16 where
// unit_bfloat16 is given; returns the largest magnitude of the normalised row.
template <bool kBfloat16>
inline __attribute__((always_inline)) float NoisyRowBody(const float* a, const float* b, int64_t dim, float* y, float* unit,
                                                         c10::BFloat16* unit_bfloat16) {
  constexpr int kLanes = 16;  // as in LogitsOfRow
  float length2[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= dim; d += kLanes) {
    for (int lane = 0; lane < kLanes; ++lane) {
      y[d + lane] = a[d + lane] + b[d + lane];
      length2[lane] += y[d + lane] * y[d + lane];
    }
  }
  for (; d < dim; ++d) {
    y[d] = a[d] + b[d];
    length2[0] += y[d] * y[d];
  }
  float sum = 0;
  for (const float lane : length2) sum += lane;
  const float length = std::max(std::sqrt(sum), 1e-12f);
  uint32_t largest = 0;
  for (d = 0; d < dim; ++d) {
    unit[d] = y[d] / length;
    if constexpr (kBfloat16) unit_bfloat16[d] = c10::BFloat16(unit[d]);
    largest = std::max(largest, MagnitudeBits(unit[d]));
  }
  return FromMagnitudeBits(largest);
}
ANOCLIP_VECTOR_CLONES float NoisyRow(const float* a, const float* b, int64_t dim, float* y, float* unit) {
  return NoisyRowBody<false>(a, b, dim, y, unit, nullptr);
}
ANOCLIP_VECTOR_CLONES float NoisyRowBfloat16(const float* a, const float* b, int64_t dim, float* y, float* unit,
                                             c10::BFloat16* unit_bfloat16) {
  return NoisyRowBody<true>(a, b, dim, y, unit, unit_bfloat16);
}

// Runs row_pass(row) -> the largest magnitude it wrote, for rows 0..rows-1 in blocks of
// kRowsPerBlock spread over libtorch's threads, each block's rows in order on one thread; returns
// the largest of all, a NaN above all.
constexpr int64_t kRowsPerBlock = 16;
template <typename RowPass>
float ForEachRowBlock(int64_t rows, const RowPass& row_pass) {
  std::vector<float> block_largest((rows + kRowsPerBlock - 1) / kRowsPerBlock, 0.0f);
  at::parallel_for(0, static_cast<int64_t>(block_largest.size()), 1, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      for (int64_t row = block * kRowsPerBlock; row < std::min(rows, (block + 1) * kRowsPerBlock); ++row) {
        block_largest[block] = LargerMagnitude(block_largest[block], row_pass(row));
      }
    }
  });
  float largest = 0;
  for (const float block : block_largest) largest = LargerMagnitude(largest, block);
  return largest;
}

// The rows of an AdapterRows on the CPU, dense float32: each row as it is, or added up from
// residual and scaled sums into its block's buffer as it is read (ForEachRowBlock runs a block's
// rows in order on one thread).
class RowReader {
 public:
  explicit RowReader(const AdapterRows& rows)
      : values_(rows.values.contiguous()), residual_(rows.residual.defined() ? rows.residual.contiguous() : at::Tensor()),
        scale_(rows.scale), dim_(values_.size(1)) {
    TORCH_CHECK(!residual_.defined() || (residual_.sizes() == values_.sizes() && residual_.scalar_type() == at::kFloat),
                "the adapter's residual rows must be float32 of the sums' shape");
    if (residual_.defined()) buffers_.resize((values_.size(0) + kRowsPerBlock - 1) / kRowsPerBlock * dim_);
  }
  int64_t rows() const { return values_.size(0); }
  int64_t dim() const { return dim_; }
  const float* Row(int64_t row) {
    const float* values = values_.data_ptr<float>() + row * dim_;
    if (!residual_.defined()) return values;
    float* buffer = buffers_.data() + row / kRowsPerBlock * dim_;
    AddScaledRow(residual_.data_ptr<float>() + row * dim_, values, scale_, dim_, buffer);
    return buffer;
  }

 private:
  at::Tensor values_, residual_;
  float scale_;
  int64_t dim_;
  std::vector<float> buffers_;
};

// TanhGate's pass over one row: tanh(sums·scales + bias) in place; returns its largest magnitude.
ANOCLIP_VECTOR_CLONES float TanhGateRow(float* row, const float* scales, const float* bias, int64_t columns) {
  uint32_t largest = 0;
  for (int64_t c = 0; c < columns; ++c) {
    row[c] = Tanh(row[c] * scales[c] + bias[c]);
    largest = std::max(largest, MagnitudeBits(row[c]));
  }
  return FromMagnitudeBits(largest);
}

}  // namespace

at::Tensor AdapterRows::Rows() const { return residual.defined() ? at::add(residual, values, scale) : values; }

float LargestMagnitude(const at::Tensor& t) {
  if (t.numel() == 0) return 0.0f;
  if (t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous()) {
    // One pass over the threads (amax and amin are two).
    constexpr int64_t kSlice = 16384;
    const float* values = t.data_ptr<float>();
    const int64_t n = t.numel();
    std::vector<float> slice_largest((n + kSlice - 1) / kSlice, 0.0f);
    at::parallel_for(0, static_cast<int64_t>(slice_largest.size()), 1, [&](int64_t first, int64_t last) {
      for (int64_t slice = first; slice < last; ++slice) {
        slice_largest[slice] = LargestMagnitude(values + slice * kSlice, std::min(kSlice, n - slice * kSlice));
      }
    });
    float largest = 0;
    for (const float slice : slice_largest) largest = LargerMagnitude(largest, slice);  // a NaN kept
    return largest;
  }
  // amax and amin keep to memory speed on any layout; abs().max() was 100x slower on a transposed
  // view, linalg_vector_norm(t, inf) 20x on any.
  return std::max(at::amax(t).item<float>(), -at::amin(t).item<float>());
}

AdapterLoss AdapterLossGradientOps(const at::Tensor& doubled, const at::Tensor& text_features, int64_t clean_rows,
                                   int64_t first_row) {
  const double inverse_tokens = 1.0 / static_cast<double>(clean_rows);
  const int64_t rows = doubled.size(0);
  const int64_t clean = std::clamp<int64_t>(clean_rows - first_row, 0, rows), noisy = rows - clean;
  const auto norms = doubled.norm(2, -1, /*keepdim=*/true).clamp_min(1e-12);  // as F::normalize
  const auto unit = doubled / norms;
  const auto logits = at::matmul(unit, text_features.t());
  const auto probs = at::softmax(logits, -1);
  const auto p0 = probs.narrow(0, 0, clean), p1 = probs.narrow(0, clean, noisy);
  const auto log_p0 = p0.log(), log_p1_abnormal = p1.select(1, 1).log();
  AdapterLoss g;
  // loss = mean_i(−Σ_c p0·log p0) + 0.5·mean_i(−log p1_abnormal − log p0_normal), means over the
  // token count: these rows' terms summed and divided by it.
  g.loss = ((-(p0 * log_p0).sum(-1) - 0.5 * log_p0.select(1, 0)).sum() - 0.5 * log_p1_abnormal.sum()) * inverse_tokens;

  auto d_probs = at::zeros_like(probs);
  auto d_p0 = d_probs.narrow(0, 0, clean);
  d_p0.copy_((log_p0 + 1) * -inverse_tokens);
  d_p0.select(1, 0).sub_(0.5 * inverse_tokens / p0.select(1, 0));
  d_probs.narrow(0, clean, noisy).select(1, 1).copy_(-0.5 * inverse_tokens / p1.select(1, 1));
  const auto d_logits = probs * (d_probs - (probs * d_probs).sum(-1, true));  // softmax
  // Back through the row normalisation: (d_unit − unit·(unit·d_unit)) / norms, where
  // d_unit = d_logits·[t+, t−] and so unit·d_unit = Σ_c d_logits_c·logits_c.
  const auto row_dot = (d_logits * logits).sum(-1, true);
  g.d_doubled = at::addmm(unit * (-row_dot / norms), d_logits / norms, text_features);
  g.d_doubled_largest = LargestMagnitude(g.d_doubled);
  return g;
}

AdapterLoss AdapterLossGradient(const AdapterRows& doubled, const at::Tensor& text_features, int64_t clean_rows,
                                int64_t first_row) {
  if (!doubled.values.device().is_cpu() || doubled.values.scalar_type() != at::kFloat) {
    return AdapterLossGradientOps(doubled.Rows(), text_features, clean_rows, first_row);
  }
  RowReader y(doubled);
  const auto text = text_features.to(at::kFloat).contiguous();
  const int64_t rows = y.rows(), dim = y.dim();
  AdapterLoss g;
  g.d_doubled = at::empty({rows, dim}, doubled.values.options());
  auto row_losses = at::empty({rows}, doubled.values.options());
  const float* text_data = text.data_ptr<float>();
  float* d_data = g.d_doubled.data_ptr<float>();
  float* loss_data = row_losses.data_ptr<float>();
  g.d_doubled_largest = ForEachRowBlock(rows, [&](int64_t row) {
    LossGradientRow(y.Row(row), text_data, dim, row < clean_rows - first_row, clean_rows, d_data + row * dim,
                    loss_data + row);
    return LargestMagnitude(d_data + row * dim, dim);
  });
  g.loss = row_losses.sum();
  return g;
}

at::Tensor AbnormalProbabilities(const AdapterRows& doubled, const at::Tensor& text_features) {
  if (!doubled.values.device().is_cpu() || doubled.values.scalar_type() != at::kFloat) {
    const auto rows = doubled.Rows();
    const auto unit = rows / rows.norm(2, -1, /*keepdim=*/true).clamp_min(1e-12);  // as F::normalize
    return at::softmax(at::matmul(unit, text_features.t()), -1).select(1, 1);
  }
  RowReader y(doubled);
  const auto text = text_features.to(at::kFloat).contiguous();
  auto probabilities = at::empty({y.rows()}, doubled.values.options());
  const float* text_data = text.data_ptr<float>();
  float* out = probabilities.data_ptr<float>();
  ForEachRowBlock(y.rows(), [&](int64_t row) {
    out[row] = AbnormalProbabilityOfRow(y.Row(row), text_data, y.dim());
    return 0.0f;
  });
  return probabilities;
}

float TanhGate(const at::Tensor& sums, const at::Tensor& column_scales, const at::Tensor& bias) {
  const int64_t columns = sums.size(1);
  TORCH_CHECK(sums.dim() == 2 && sums.device().is_cpu() && sums.scalar_type() == at::kFloat && sums.is_contiguous() &&
                  column_scales.numel() == columns && bias.numel() == columns &&
                  column_scales.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat,
              "TanhGate takes dense float32 CPU sums [R,C] and float32 column scales and bias [C]");
  const auto scales = column_scales.contiguous(), b = bias.contiguous();
  float* values = sums.data_ptr<float>();
  const float *scale_data = scales.data_ptr<float>(), *bias_data = b.data_ptr<float>();
  return ForEachRowBlock(sums.size(0), [&](int64_t row) {
    return TanhGateRow(values + row * columns, scale_data, bias_data, columns);
  });
}

at::Tensor BackThroughGate(const at::Tensor& d_gate, const at::Tensor& gate, const at::Tensor& d_preactivation,
                           float d_gate_scale) {
  TORCH_CHECK(d_preactivation.sizes() == d_gate.sizes() &&
                  (d_preactivation.scalar_type() == at::kFloat || d_preactivation.scalar_type() == at::kBFloat16),
              "the gate's gradient is written into a float32 or bfloat16 tensor of its shape");
  at::Tensor out = d_preactivation;  // a handle on the output's storage
  if (!d_gate.device().is_cpu() || d_gate.scalar_type() != at::kFloat || gate.scalar_type() != at::kFloat ||
      !out.device().is_cpu() || !out.is_contiguous()) {
    const auto d = at::tanh_backward(d_gate_scale == 1.0f ? d_gate : d_gate * d_gate_scale, gate);
    out.copy_(d);
    return d.to(at::kFloat).sum(0);
  }
  const auto upstream = d_gate.contiguous(), tanh = gate.contiguous();
  const int64_t rows = upstream.size(0), columns = upstream.size(1);
  // Each block of rows sums its columns apart, then the blocks are added in order: the same
  // result on any thread count.
  auto block_sums = at::zeros({(rows + kRowsPerBlock - 1) / kRowsPerBlock, columns}, upstream.options());
  const float *d_data = upstream.data_ptr<float>(), *g_data = tanh.data_ptr<float>();
  float* sums = block_sums.data_ptr<float>();
  if (out.scalar_type() == at::kFloat) {
    float* written = out.data_ptr<float>();
    ForEachRowBlock(rows, [&](int64_t row) {
      GateBackwardRow(d_data + row * columns, d_gate_scale, g_data + row * columns, columns, written + row * columns,
                      sums + row / kRowsPerBlock * columns);
      return 0.0f;  // its magnitude is not needed: the weight gradient's product is not int8
    });
  } else {
    c10::BFloat16* written = out.data_ptr<c10::BFloat16>();
    ForEachRowBlock(rows, [&](int64_t row) {
      GateBackwardRowBfloat16(d_data + row * columns, d_gate_scale, g_data + row * columns, columns, written + row * columns,
                              sums + row / kRowsPerBlock * columns);
      return 0.0f;
    });
  }
  return block_sums.sum(0);
}

float AddNoiseAndNormalize(const at::Tensor& patches, const at::Tensor& noise, const at::Tensor& noisy,
                           const at::Tensor& noisy_normalized, const at::Tensor& noisy_normalized_bfloat16) {
  const bool with_bfloat16 = noisy_normalized_bfloat16.defined();
  TORCH_CHECK(!with_bfloat16 || (noisy_normalized_bfloat16.scalar_type() == at::kBFloat16 &&
                                 noisy_normalized_bfloat16.sizes() == noisy_normalized.sizes()),
              "the bfloat16 copy of the noisy rows must be bfloat16 and of their shape");
  const bool one_pass = patches.device().is_cpu() && noise.device().is_cpu() &&
                        patches.scalar_type() == at::kFloat && noise.scalar_type() == at::kFloat &&
                        noisy.scalar_type() == at::kFloat && noisy_normalized.scalar_type() == at::kFloat &&
                        noisy.is_contiguous() && noisy_normalized.is_contiguous() &&
                        (!with_bfloat16 || noisy_normalized_bfloat16.is_contiguous());
  if (!one_pass) {
    at::Tensor sum = noisy, unit = noisy_normalized;  // handles on the outputs' storage
    at::add_out(sum, patches, noise.to(patches.options()));
    at::div_out(unit, noisy, noisy.norm(2, -1, true).clamp_min(1e-12));
    if (with_bfloat16) at::Tensor(noisy_normalized_bfloat16).copy_(noisy_normalized);
    return LargestMagnitude(noisy_normalized);
  }
  const auto tokens = patches.contiguous(), delta = noise.contiguous();
  const int64_t rows = tokens.size(0), dim = tokens.size(1);
  const float *p = tokens.data_ptr<float>(), *n = delta.data_ptr<float>();
  float *out = noisy.data_ptr<float>(), *unit = noisy_normalized.data_ptr<float>();
  if (!with_bfloat16) {
    return ForEachRowBlock(rows, [&](int64_t row) { return NoisyRow(p + row * dim, n + row * dim, dim, out + row * dim, unit + row * dim); });
  }
  c10::BFloat16* unit_bfloat16 = noisy_normalized_bfloat16.data_ptr<c10::BFloat16>();
  return ForEachRowBlock(rows, [&](int64_t row) {
    return NoisyRowBfloat16(p + row * dim, n + row * dim, dim, out + row * dim, unit + row * dim, unit_bfloat16 + row * dim);
  });
}

}  // namespace anoclip::anomaly
