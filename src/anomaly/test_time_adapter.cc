#include "anomaly/test_time_adapter.h"

#include <ATen/ATen.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "anomaly/adamw.h"
#include "model/linear.h"

namespace anoclip::anomaly {
namespace {

// Each row's length as F::normalize divides by it (clamped at 1e-12), [R,1].
at::Tensor RowNorms(const at::Tensor& x) { return x.norm(2, -1, /*keepdim=*/true).clamp_min(1e-12); }

// x [R,in] · weightᵀ ([out,in]) + bias, then `activation`, in `compute` (float32 or bfloat16) and
// returned in float32: through the process's GEMM library (model/linear.h). Operands already in
// `compute` are used as they are.
at::Tensor Product(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                   model::Activation activation, at::ScalarType compute) {
  return model::Linear(x.to(compute), weight.to(compute), bias.defined() ? bias.to(compute) : bias, {activation, {}})
      .to(at::kFloat);
}

// What one image's adapter computes from its tokens and keeps for the backward pass.
struct Forward {
  at::Tensor normalized;  // norm(X) [R,D] in the products' dtype
  at::Tensor gate;        // tanh(norm(X)·Wᵀ + b) [R,2N]
  at::Tensor unit;        // Φ(X) scaled to unit rows [R,D]
  at::Tensor norms;       // |2·Φ(X)| per row [R,1]
  at::Tensor logits;      // unit·[t+, t−]ᵀ [R,2]
  at::Tensor probs;       // prob(X) [R,2]: normal, abnormal
};

// prob(X) of §7 for one image: X [R,D], W and T [2N,D] (T in `compute`), b [2N], t [2,D].
// 2·Φ(X) = X + gate·T is used in place of Φ(X): the probabilities only see it normalised.
Forward AdapterForward(const at::Tensor& x, const at::Tensor& normalized, const at::Tensor& weight,
                       const at::Tensor& bias, const at::Tensor& prompts, const at::Tensor& text_features,
                       at::ScalarType compute) {
  Forward f;
  f.normalized = normalized.to(compute);  // converted once for the forward and the backward products
  f.gate = Product(f.normalized, weight, bias, model::Activation::kTanh, compute);
  // gate·T as a linear layer whose weight is Tᵀ [D,2N], read in place through its strides.
  const auto doubled = x + Product(f.gate, prompts.t(), {}, model::Activation::kNone, compute);
  f.norms = RowNorms(doubled);
  f.unit = doubled / f.norms;
  f.logits = at::matmul(f.unit, text_features.t());
  f.probs = at::softmax(f.logits, -1);
  return f;
}

}  // namespace

absl::StatusOr<TestTimeAdapter> TestTimeAdapter::Create(const TtaOptions& options) {
  if (options.steps < 1 || options.steps > 100) {
    return absl::InvalidArgumentError(absl::StrCat("tta steps must be in 1..100; was ", options.steps));
  }
  // Past these bounds AdamW's updates overflow float32 within a step or the noise drowns the
  // tokens (their norms are O(1..10)): nothing useful is computed there.
  if (!(options.lr > 0 && options.lr <= kMaxTtaLr)) {
    return absl::InvalidArgumentError(absl::StrCat("tta lr must be in (0, ", kMaxTtaLr, "]; was ", options.lr));
  }
  if (options.compute_dtype != at::kFloat && options.compute_dtype != at::kBFloat16) {
    return absl::InvalidArgumentError("tta compute dtype must be float32 or bfloat16");
  }
  if (!(options.sigma >= 0 && options.sigma <= kMaxTtaSigma)) {
    return absl::InvalidArgumentError(absl::StrCat("tta sigma must be in [0, ", kMaxTtaSigma, "]; was ", options.sigma));
  }
  return TestTimeAdapter(options);
}

TtaResult TestTimeAdapter::Adapt(const at::Tensor& patches, const at::Tensor& prompts,
                                 const at::Tensor& text_features) const {
  at::NoGradGuard no_grad;  // the gradients below are written out, not traced
  const int64_t batch = patches.size(0);
  TtaResult result;
  result.losses.assign(batch, {});
  std::vector<at::Tensor> probs;
  for (int64_t i = 0; i < batch; ++i) {
    probs.push_back(AdaptImage(i, patches[i], prompts[i], text_features[i], result.losses[i]));
  }
  result.patch_probs = at::stack(probs);
  return result;
}

// One image's adaptation. Images adapt one at a time: each has its own W and b, AdamW is
// element-wise and the summed loss separates per image, so this equals adapting the batch at
// once, and one image's tensors stay in the cache.
at::Tensor TestTimeAdapter::AdaptImage(int64_t image, const at::Tensor& patches, const at::Tensor& prompts,
                                       const at::Tensor& text_features, std::vector<float>& losses) const {
  const int64_t tokens = patches.size(0), dim = patches.size(1), rows = prompts.size(0);
  const auto options = patches.options();
  // One generator per image, so an image's draws do not depend on its batch.
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(options_.seed);

  at::Tensor weight, bias;
  if (options_.init == TtaInit::kText) {
    weight = prompts.clone();
    bias = at::zeros({rows}, options);
  } else {
    // nn.Linear's default: kaiming_uniform(a=√5) and a bias of the same bound, both 1/√fan_in.
    const double bound = 1.0 / std::sqrt(static_cast<double>(dim));
    weight = at::empty({rows, dim}).uniform_(-bound, bound, generator).to(options);
    bias = at::empty({rows}).uniform_(-bound, bound, generator).to(options);
  }
  // The prompts in the products' dtype once, not at every product.
  const auto prompts_compute = prompts.to(options_.compute_dtype);
  AdamWSettings settings;
  settings.lr = options_.lr;
  AdamW weight_optimizer(weight, settings), bias_optimizer(bias, settings);

  // Clean and noisy tokens go through the adapter as one [2M,D] block (half the product calls):
  // the clean half and its normalised rows are written once, the noisy half at every step.
  const auto x = at::empty({2 * tokens, dim}, options), normalized = at::empty({2 * tokens, dim}, options);
  auto noisy = x.narrow(0, tokens, tokens), noisy_normalized = normalized.narrow(0, tokens, tokens);
  auto clean_normalized = normalized.narrow(0, 0, tokens);
  x.narrow(0, 0, tokens).copy_(patches);
  at::div_out(clean_normalized, patches, RowNorms(patches));
  const double inverse_tokens = 1.0 / static_cast<double>(tokens);
  for (int step = 0; step < options_.steps; ++step) {
    const auto delta = options_.noise ? options_.noise(step, image, {tokens, dim}).to(options)
                                      : (at::randn({tokens, dim}, generator) * options_.sigma).to(options);
    at::add_out(noisy, patches, delta);
    at::div_out(noisy_normalized, noisy, RowNorms(noisy));
    const Forward f =
        AdapterForward(x, normalized, weight, bias, prompts_compute, text_features, options_.compute_dtype);
    const auto p0 = f.probs.narrow(0, 0, tokens), p1 = f.probs.narrow(0, tokens, tokens);
    const auto log_p0 = p0.log(), log_p1_abnormal = p1.select(1, 1).log();

    // loss = mean_i(−Σ_c p0·log p0) + 0.5·mean_i(−log p1_abnormal − log p0_normal)
    const auto loss = -(p0 * log_p0).sum(-1).mean() + 0.5 * (-log_p1_abnormal - log_p0.select(1, 0)).mean();
    losses.push_back(loss.item<float>());

    // Its gradient, back through the adapter to W and b.
    auto d_probs = at::zeros_like(f.probs);
    auto d_p0 = d_probs.narrow(0, 0, tokens);
    d_p0.copy_((log_p0 + 1) * -inverse_tokens);
    d_p0.select(1, 0).sub_(0.5 * inverse_tokens / p0.select(1, 0));
    d_probs.narrow(0, tokens, tokens).select(1, 1).copy_(-0.5 * inverse_tokens / p1.select(1, 1));
    const auto d_logits = f.probs * (d_probs - (f.probs * d_probs).sum(-1, true));         // softmax
    // Back through the row normalisation: (d_unit − unit·(unit·d_unit)) / norms, where
    // d_unit = d_logits·[t+, t−] and so unit·d_unit = Σ_c d_logits_c·logits_c.
    const auto row_dot = (d_logits * f.logits).sum(-1, true);
    const auto d_doubled = at::addmm(f.unit * (-row_dot / f.norms), d_logits / f.norms, text_features);
    const auto d_gate = Product(d_doubled, prompts_compute, {}, model::Activation::kNone, options_.compute_dtype);
    const auto d_preactivation = at::tanh_backward(d_gate, f.gate);
    // dW = d_preactivationᵀ·norm(X): the transposes are views, read through their strides.
    const auto d_weight = Product(d_preactivation.t(), f.normalized.t(), {}, model::Activation::kNone,
                                  options_.compute_dtype);
    const auto d_bias = d_preactivation.sum(0);
    weight_optimizer.Step(d_weight);
    bias_optimizer.Step(d_bias);
  }
  return AdapterForward(patches, clean_normalized, weight, bias, prompts_compute, text_features,
                        options_.compute_dtype)
      .probs.select(1, 1);
}

}  // namespace anoclip::anomaly
