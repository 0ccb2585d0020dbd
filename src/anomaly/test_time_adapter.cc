#include "anomaly/test_time_adapter.h"

#include <torch/torch.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "anomaly/scorer.h"
#include "model/linear.h"

namespace anoclip::anomaly {
namespace F = torch::nn::functional;
namespace {

at::Tensor Normalize(const at::Tensor& x) { return F::normalize(x, F::NormalizeFuncOptions().dim(-1)); }

// prob(X) of §7 for a batch: X [B,M,D], W/T [B,2N,D], b [B,2N], t [B,2,D] -> [B,M,2]. The two
// products run in `compute`, everything else in float32.
at::Tensor AdaptedProbabilities(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                const at::Tensor& prompts, const at::Tensor& text_features,
                                at::ScalarType compute) {
  // a [B,M,K] times the transpose of b [B,N,K], per image.
  auto product = [compute](const at::Tensor& a, const at::Tensor& b) {
    if (compute != a.scalar_type()) return at::bmm(a.to(compute), b.transpose(1, 2).to(compute)).to(a.scalar_type());
    // In float32 each image's product goes through the process's GEMM library (model/linear.h).
    std::vector<at::Tensor> images;
    for (int64_t i = 0; i < a.size(0); ++i) images.push_back(model::TrainableLinear(a[i], b[i]));
    return torch::stack(images);
  };
  auto gate = torch::tanh(product(Normalize(x), weight) + bias.unsqueeze(1));
  auto adapted = 0.5 * x + 0.5 * product(gate, prompts.transpose(1, 2));
  return StateProbabilities(adapted, text_features);
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
  torch::AutoGradMode enable_grad(true);
  const int64_t batch = patches.size(0), tokens = patches.size(1), dim = patches.size(2);
  const int64_t rows = prompts.size(1);
  const auto options = patches.options();

  // One generator per image, so an image's draws do not depend on its batch.
  std::vector<at::Generator> generators;
  for (int64_t i = 0; i < batch; ++i) {
    generators.push_back(at::make_generator<at::CPUGeneratorImpl>(options_.seed));
  }

  at::Tensor weight, bias;
  if (options_.init == TtaInit::kText) {
    weight = prompts.detach().clone();
    bias = torch::zeros({batch, rows}, options);
  } else {
    // nn.Linear's default: kaiming_uniform(a=√5) and a bias of the same bound, both 1/√fan_in.
    const double bound = 1.0 / std::sqrt(static_cast<double>(dim));
    std::vector<at::Tensor> ws, bs;
    for (int64_t i = 0; i < batch; ++i) {
      ws.push_back(at::empty({rows, dim}).uniform_(-bound, bound, generators[i]));
      bs.push_back(at::empty({rows}).uniform_(-bound, bound, generators[i]));
    }
    weight = torch::stack(ws).to(options);
    bias = torch::stack(bs).to(options);
  }
  weight.set_requires_grad(true);
  bias.set_requires_grad(true);

  torch::optim::AdamW optimizer(
      {weight, bias}, torch::optim::AdamWOptions(options_.lr).betas({0.9, 0.999}).eps(1e-8).weight_decay(0.01));

  const auto x = patches.detach();
  const auto t = prompts.detach();
  const auto features = text_features.detach();
  TtaResult result;
  result.losses.assign(batch, {});
  for (int step = 0; step < options_.steps; ++step) {
    std::vector<at::Tensor> deltas;
    for (int64_t i = 0; i < batch; ++i) {
      deltas.push_back(options_.noise ? options_.noise(step, i, {tokens, dim}).to(torch::kFloat32).cpu()
                                      : at::randn({tokens, dim}, generators[i]) * options_.sigma);
    }
    const auto noisy = x + torch::stack(deltas).to(options);

    // Clean and noisy tokens go through the adapter as one [B,2M,D] batch: half the matmul calls.
    auto both = AdaptedProbabilities(torch::cat({x, noisy}, 1), weight, bias, t, features, options_.compute_dtype);
    auto p0 = both.narrow(1, 0, tokens);
    auto p1 = both.narrow(1, tokens, tokens);
    auto entropy = -(p0 * p0.log()).sum(-1).mean(-1);
    auto consistency = (-p1.select(-1, 1).log() - p0.select(-1, 0).log()).mean(-1);
    auto loss = entropy + 0.5 * consistency;  // [B]

    auto loss_cpu = loss.detach().cpu();
    for (int64_t i = 0; i < batch; ++i) result.losses[i].push_back(loss_cpu[i].item<float>());
    optimizer.zero_grad();
    loss.sum().backward();
    optimizer.step();
  }

  torch::NoGradGuard no_grad;
  result.patch_probs = AdaptedProbabilities(x, weight, bias, t, features, options_.compute_dtype).select(-1, 1);
  return result;
}

}  // namespace anoclip::anomaly
