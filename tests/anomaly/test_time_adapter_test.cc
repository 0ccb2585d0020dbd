#include "anomaly/test_time_adapter.h"

#include <torch/torch.h>

#include <gtest/gtest.h>

#include <cmath>
#include <tuple>

#include "anomaly/adamw.h"
#include "anomaly/adapter_loss.h"
#include "anomaly/detector.h"
#include "model/linear.h"
#include "test_util.h"

namespace anoclip::anomaly {
namespace {

namespace F = torch::nn::functional;
using model::GemmLibrary;

at::Tensor Normalize(const at::Tensor& x) { return F::normalize(x, F::NormalizeFuncOptions().dim(-1)); }

// docs/algorithm.md §7 as written, one image: autograd traces the loss and torch::optim::AdamW
// updates W and b; the random init is drawn from a generator seeded with `seed`, each step's noise
// is DrawTtaNoise's.
std::pair<at::Tensor, std::vector<float>> TracedAdaptation(const at::Tensor& patches, const at::Tensor& prompts,
                                                           const at::Tensor& text, const TtaOptions& options) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  at::Tensor weight, bias;
  if (options.init == TtaInit::kText) {
    weight = prompts.clone();
    bias = torch::zeros({prompts.size(0)});
  } else {
    const double bound = 1.0 / std::sqrt(static_cast<double>(patches.size(1)));
    weight = at::empty(prompts.sizes()).uniform_(-bound, bound, generator);
    bias = at::empty({prompts.size(0)}).uniform_(-bound, bound, generator);
  }
  weight.set_requires_grad(true);
  bias.set_requires_grad(true);
  torch::optim::AdamW optimizer({weight, bias},
                                torch::optim::AdamWOptions(options.lr).betas({0.9, 0.999}).eps(1e-8).weight_decay(0.01));
  auto probabilities = [&](const at::Tensor& x) {
    auto adapted = 0.5 * x + 0.5 * at::matmul(torch::tanh(at::matmul(Normalize(x), weight.t()) + bias), prompts);
    return at::softmax(at::matmul(Normalize(adapted), text.t()), -1);
  };
  std::vector<float> losses;
  for (int step = 0; step < options.steps; ++step) {
    auto p0 = probabilities(patches);
    auto p1 = probabilities(patches + DrawTtaNoise(options.seed, step, options.sigma, patches.sizes()));
    auto loss = -(p0 * p0.log()).sum(-1).mean() + 0.5 * (-p1.select(1, 1).log() - p0.select(1, 0).log()).mean();
    losses.push_back(loss.item<float>());
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
  }
  torch::NoGradGuard no_grad;
  return {probabilities(patches).select(1, 1), losses};
}

class TestTimeAdapterTest : public ::testing::TestWithParam<std::tuple<GemmLibrary, TtaInit>> {};

// Images of a batch adapt one per thread in whole rounds and the rest one at a time on all
// threads (a batch of three on two threads takes both ways): each image's result is what it gets
// alone.
TEST(TestTimeAdapterBatchTest, EveryImageOfABatchAdaptsAsAlone) {
  torch::manual_seed(24);
  auto patches = torch::randn({3, 30, 24}) * 3, prompts = Normalize(torch::randn({3, 14, 24}));
  auto text = Normalize(torch::randn({3, 2, 24}));
  TtaOptions options;
  options.lr = 0.05;
  auto adapter = TestTimeAdapter::Create(options);
  ASSERT_TRUE(adapter.ok());
  const int threads = at::get_num_threads();
  at::set_num_threads(testing::ParallelTestThreads());
  const TtaResult batched = adapter->Adapt(patches, prompts, text);
  for (int64_t image = 0; image < 3; ++image) {
    const TtaResult alone = adapter->Adapt(patches.narrow(0, image, 1), prompts.narrow(0, image, 1),
                                           text.narrow(0, image, 1));
    EXPECT_LT((batched.patch_probs[image] - alone.patch_probs[0]).abs().max().item<float>(), 1e-6) << image;
    ASSERT_EQ(batched.losses[image].size(), alone.losses[0].size());
    for (size_t step = 0; step < alone.losses[0].size(); ++step) {
      EXPECT_NEAR(batched.losses[image][step], alone.losses[0][step], 1e-6) << image << " step " << step;
    }
  }
  at::set_num_threads(threads);
}

// The one-pass loss on the CPU against libtorch's ops (the path other devices take), on rows of
// many scales.
TEST(AdapterLossTest, OnePassOverTheRowsEqualsLibtorchsOps) {
  torch::manual_seed(25);
  const int64_t clean = 37, dim = 45;  // a dimension that is no multiple of the eight lanes
  auto doubled = torch::randn({2 * clean, dim}) * torch::rand({2 * clean, 1}) * 10;
  const auto text = Normalize(torch::randn({2, dim}));
  const AdapterLoss fused = AdapterLossGradient(doubled, text, clean);
  const AdapterLoss ops = AdapterLossGradientOps(doubled, text, clean);
  EXPECT_NEAR(fused.loss.item<float>(), ops.loss.item<float>(), 1e-6);
  ASSERT_EQ(fused.d_doubled.sizes(), doubled.sizes());
  EXPECT_TRUE(torch::allclose(fused.d_doubled, ops.d_doubled, 1e-5, 1e-7))
      << (fused.d_doubled - ops.d_doubled).abs().max().item<float>();
  EXPECT_GT(ops.d_doubled.abs().max().item<float>(), 1e-4);  // a gradient worth comparing
  EXPECT_EQ(fused.d_doubled_largest, fused.d_doubled.abs().max().item<float>());
  EXPECT_EQ(ops.d_doubled_largest, ops.d_doubled.abs().max().item<float>());
  // Each half on its own (first_row): its rows of the whole block's gradient, the two losses
  // adding up to the whole's; both paths. A block cut inside the clean rows too.
  for (const int64_t first : {int64_t{0}, clean, int64_t{20}}) {
    const int64_t count = first == 20 ? 30 : clean;
    const auto rows = doubled.narrow(0, first, count);
    const AdapterLoss part = AdapterLossGradient(rows, text, clean, first);
    const AdapterLoss part_ops = AdapterLossGradientOps(rows, text, clean, first);
    EXPECT_TRUE(torch::allclose(part.d_doubled, fused.d_doubled.narrow(0, first, count), 1e-6, 1e-8)) << first;
    EXPECT_TRUE(torch::allclose(part_ops.d_doubled, fused.d_doubled.narrow(0, first, count), 1e-5, 1e-7)) << first;
    EXPECT_NEAR(part.loss.item<float>(), part_ops.loss.item<float>(), 1e-6) << first;
  }
  const float halves = AdapterLossGradient(doubled.narrow(0, 0, clean), text, clean, 0).loss.item<float>() +
                       AdapterLossGradient(doubled.narrow(0, clean, clean), text, clean, clean).loss.item<float>();
  EXPECT_NEAR(halves, fused.loss.item<float>(), 1e-5);
}

// The abnormal probabilities of the rows of 2·Φ(X) in one pass against libtorch's softmax, and
// through the ops path (a CPU tensor the pass does not take: bfloat16).
TEST(AdapterLossTest, AbnormalProbabilitiesEqualLibtorchsSoftmax) {
  torch::manual_seed(27);
  const int64_t rows = 37, dim = 45;
  const auto doubled = torch::randn({rows, dim}) * torch::rand({rows, 1}) * 10;
  const auto text = Normalize(torch::randn({2, dim})) * 20;  // logits large enough to saturate some rows
  const auto want = torch::softmax(torch::matmul(Normalize(doubled), text.t()), -1).select(1, 1);
  const auto probabilities = AbnormalProbabilities(doubled, text);
  ASSERT_EQ(probabilities.sizes(), (std::vector<int64_t>{rows}));
  EXPECT_TRUE(torch::allclose(probabilities, want, 1e-5, 1e-7)) << (probabilities - want).abs().max().item<float>();
  EXPECT_GT((want - 0.5).abs().max().item<float>(), 0.4);  // both states well apart in some rows
  const auto low = doubled.to(torch::kBFloat16).to(torch::kFloat);
  EXPECT_TRUE(torch::allclose(AbnormalProbabilities(low.to(torch::kBFloat16), text.to(torch::kBFloat16)).to(torch::kFloat),
                              AbnormalProbabilities(low, text), 2e-2, 1e-3));
}

// Under int8 the rows of 2·Φ(X) come as X + scale·sums: the loss, its gradient and the
// probabilities from them equal those from the rows added up beforehand, on both paths.
TEST(AdapterLossTest, RowsAddedUpAsReadEqualTheRowsThemselves) {
  torch::manual_seed(28);
  const int64_t clean = 37, dim = 45;
  const auto sums = torch::randint(-5000, 5000, {2 * clean, dim}).to(torch::kFloat), x = torch::randn({2 * clean, dim}) * 3;
  const float scale = 1.7e-3f;
  const auto text = Normalize(torch::randn({2, dim}));
  const AdapterRows parts(sums, scale, x);
  const auto rows = x + sums * scale;
  EXPECT_TRUE(torch::allclose(parts.Rows(), rows, 1e-6, 1e-6));
  const AdapterLoss from_parts = AdapterLossGradient(parts, text, clean), whole = AdapterLossGradient(rows, text, clean);
  EXPECT_NEAR(from_parts.loss.item<float>(), whole.loss.item<float>(), 1e-6);
  EXPECT_TRUE(torch::allclose(from_parts.d_doubled, whole.d_doubled, 1e-5, 1e-7));
  EXPECT_EQ(from_parts.d_doubled_largest, from_parts.d_doubled.abs().max().item<float>());
  // The noisy half alone, rows of a larger block (strided sums are made dense first).
  const AdapterRows noisy_half(sums.narrow(0, clean, clean), scale, x.narrow(0, clean, clean));
  EXPECT_TRUE(torch::allclose(AdapterLossGradient(noisy_half, text, clean, clean).d_doubled,
                              whole.d_doubled.narrow(0, clean, clean), 1e-5, 1e-7));
  EXPECT_TRUE(torch::allclose(AbnormalProbabilities(parts, text), AbnormalProbabilities(rows, text), 1e-6, 1e-7));
  const AdapterRows wide(sums.t().contiguous().t(), scale, x);
  EXPECT_TRUE(torch::allclose(AbnormalProbabilities(wide, text), AbnormalProbabilities(rows, text), 1e-6, 1e-7));
  EXPECT_THROW(AdapterLossGradient(AdapterRows(sums, scale, x.narrow(1, 0, 44)), text, clean), c10::Error);
}

// The gate from an int8 product's sums: its scales per column and the bias applied, then tanh, in
// place; the largest magnitude returned for the gate's own int8 copy, a NaN kept.
TEST(AdapterLossTest, TanhGateAppliesScalesBiasAndTanh) {
  torch::manual_seed(29);
  const int64_t rows = 37, columns = 45;
  const auto sums = torch::randint(-20000, 20000, {rows, columns}).to(torch::kFloat);
  const auto scales = torch::rand({columns}) * 1e-4, bias = torch::randn({columns}) * 0.3;
  auto gate = sums.clone();
  const float largest = TanhGate(gate, scales, bias);
  const auto want = torch::tanh(sums * scales + bias);
  EXPECT_TRUE(torch::allclose(gate, want, 1e-6, 1e-7)) << (gate - want).abs().max().item<float>();
  EXPECT_EQ(largest, gate.abs().max().item<float>());
  EXPECT_GT(largest, 0.9f);  // saturating columns among them
  gate[20][3] = NAN;
  EXPECT_TRUE(std::isnan(TanhGate(gate, scales, bias)));
  EXPECT_THROW(TanhGate(gate, scales.narrow(0, 0, 44), bias), c10::Error);
  auto strided = sums.t().contiguous().t();
  EXPECT_THROW(TanhGate(strided, scales, bias), c10::Error);
}

// The gate's backward pass and the noisy rows in one pass on the CPU against libtorch's ops; their
// ops paths reached through CPU tensors the passes do not take (bfloat16, a strided output).
TEST(AdapterLossTest, GateBackwardAndNoisyRowsEqualLibtorchsOps) {
  torch::manual_seed(26);
  const int64_t rows = 37, columns = 45;  // 37 rows: three blocks, the last one short
  const auto gate = torch::tanh(torch::randn({rows, columns})), d_gate = torch::randn({rows, columns});
  auto d_preactivation = torch::empty({rows, columns});
  const auto d_bias = BackThroughGate(d_gate, gate, d_preactivation);
  const auto want = at::tanh_backward(d_gate, gate);
  EXPECT_TRUE(torch::allclose(d_preactivation, want, 1e-6, 1e-7));
  EXPECT_TRUE(torch::allclose(d_bias, want.sum(0), 1e-5, 1e-6));
  // An int8 product's sums with their scale as ∂/∂G.
  auto from_sums = torch::empty({rows, columns});
  const auto sums_d_bias = BackThroughGate(d_gate * 1000, gate, from_sums, 1e-3f);
  EXPECT_TRUE(torch::allclose(from_sums, want, 1e-6, 1e-7));
  EXPECT_TRUE(torch::allclose(sums_d_bias, d_bias, 1e-5, 1e-6));
  // Written in bfloat16 for a bfloat16 product: the float32 values rounded to nearest even, as a
  // conversion rounds them, ∂/∂b still summed in float32.
  auto low = torch::empty({rows, columns}, torch::kBFloat16);
  const auto low_d_bias = BackThroughGate(d_gate, gate, low);
  EXPECT_TRUE(torch::equal(low, d_preactivation.to(torch::kBFloat16)));
  EXPECT_TRUE(torch::allclose(low_d_bias, d_bias, 1e-6, 1e-7));  // the same sums, up to contraction
  // Into rows of a larger tensor (a half of the adapter's block), and through libtorch's ops for
  // bfloat16 inputs and a strided output.
  auto block = torch::zeros({2 * rows, columns});
  BackThroughGate(d_gate, gate, block.narrow(0, rows, rows));
  EXPECT_TRUE(torch::equal(block.narrow(0, rows, rows), d_preactivation));
  EXPECT_EQ(block.narrow(0, 0, rows).abs().max().item<float>(), 0.0f);
  const auto half_gate = gate.to(torch::kBFloat16), half_d_gate = d_gate.to(torch::kBFloat16);
  auto ops = torch::empty({rows, columns}, torch::kBFloat16);
  const auto ops_d_bias = BackThroughGate(half_d_gate, half_gate, ops);
  EXPECT_TRUE(torch::equal(ops, at::tanh_backward(half_d_gate, half_gate)));
  EXPECT_TRUE(torch::allclose(ops_d_bias, ops.to(torch::kFloat).sum(0), 1e-6, 1e-6));
  auto strided_out = torch::empty({columns, rows}).t();
  BackThroughGate(d_gate, gate, strided_out);
  EXPECT_TRUE(torch::allclose(strided_out, want, 1e-6, 1e-7));
  auto wrong = torch::empty({rows, columns}, torch::kChar);
  EXPECT_THROW(BackThroughGate(d_gate, gate, wrong), c10::Error);

  const auto patches = torch::randn({rows, columns}) * 3, noise = torch::randn({rows, columns}) * 0.05;
  const auto expected = patches + noise;
  const auto expected_unit = Normalize(expected);
  auto noisy = torch::empty({rows, columns}), unit = torch::empty({rows, columns});
  const float largest = AddNoiseAndNormalize(patches, noise, noisy, unit);
  EXPECT_TRUE(torch::equal(noisy, expected));
  EXPECT_TRUE(torch::allclose(unit, expected_unit, 1e-6, 1e-7));
  EXPECT_EQ(largest, unit.abs().max().item<float>());
  auto strided = torch::empty({columns, rows}).t();  // a layout the one pass does not take
  const float strided_largest = AddNoiseAndNormalize(patches, noise, noisy, strided);
  EXPECT_TRUE(torch::allclose(strided, expected_unit, 1e-6, 1e-7));
  EXPECT_EQ(strided_largest, strided.abs().max().item<float>());
  // With the normalised rows also in bfloat16: the float32 rows rounded as a conversion rounds.
  auto unit_low = torch::empty({rows, columns}, torch::kBFloat16);
  EXPECT_EQ(AddNoiseAndNormalize(patches, noise, noisy, unit, unit_low), largest);
  EXPECT_TRUE(torch::equal(unit_low, unit.to(torch::kBFloat16)));
  auto strided_low = torch::empty({columns, rows}, torch::kBFloat16).t();  // through the ops
  AddNoiseAndNormalize(patches, noise, noisy, strided, strided_low);
  EXPECT_TRUE(torch::equal(strided_low, strided.to(torch::kBFloat16)));
  auto wrong_low = torch::empty({rows, columns});  // float32, not bfloat16
  EXPECT_THROW(AddNoiseAndNormalize(patches, noise, noisy, unit, wrong_low), c10::Error);
  // A NaN ranks above every magnitude, so it reaches the int8 scale rather than hiding.
  EXPECT_TRUE(std::isnan(LargestMagnitude(torch::tensor({1.0f, NAN, -3.0f}))));
  EXPECT_EQ(LargestMagnitude(torch::tensor({1.0f, -3.0f, 2.0f})), 3.0f);
  // Over several slices of the one pass, the largest in the last one; and a transposed view,
  // which goes through libtorch's reductions.
  auto many = torch::rand({300, 200}) - 0.5;
  many[299][199] = -7.0f;
  EXPECT_EQ(LargestMagnitude(many), 7.0f);
  EXPECT_EQ(LargestMagnitude(many.t()), 7.0f);
  EXPECT_EQ(LargestMagnitude(torch::empty({0, 3})), 0.0f);
}

// The written-out gradients and the fused AdamW against autograd and libtorch's AdamW, through
// either GEMM library, with both initialisations, a batch of two images with their own prompts.
TEST_P(TestTimeAdapterTest, MatchesTracedGradientsAndLibtorchsAdamW) {
  const auto [library, init] = GetParam();
  if (!model::ParseGemmLibrary(model::GemmLibraryName(library)).ok()) GTEST_SKIP() << "this libtorch has no oneDNN";
  const GemmLibrary previous = model::CurrentGemmLibrary();
  model::SetGemmLibrary(library);
  torch::manual_seed(21);
  const int64_t tokens = 30, dim = 24, rows = 14;
  auto patches = torch::randn({2, tokens, dim}) * 3, prompts = Normalize(torch::randn({2, rows, dim}));
  auto text = Normalize(torch::randn({2, 2, dim}));
  TtaOptions options;
  options.lr = 0.05;  // large enough that five steps move W and b well away from where they start
  options.sigma = 0.3;
  options.init = init;
  options.seed = 9;
  auto adapter = TestTimeAdapter::Create(options);
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  const TtaResult result = adapter->Adapt(patches, prompts, text);
  model::SetGemmLibrary(previous);

  ASSERT_EQ(result.patch_probs.sizes(), (std::vector<int64_t>{2, tokens}));
  for (int64_t image = 0; image < 2; ++image) {
    const auto [want, want_losses] = TracedAdaptation(patches[image], prompts[image], text[image], options);
    ASSERT_EQ(result.losses[image].size(), want_losses.size());
    for (size_t step = 0; step < want_losses.size(); ++step) {
      EXPECT_NEAR(result.losses[image][step], want_losses[step], 1e-5) << "image " << image << " step " << step;
    }
    EXPECT_LT((result.patch_probs[image] - want).abs().max().item<float>(), 1e-5) << "image " << image;
    // The adaptation did move the probabilities (else the comparison above would prove little).
    TtaOptions one_step = options;
    one_step.steps = 1;
    const auto start = TracedAdaptation(patches[image], prompts[image], text[image], one_step).first;
    EXPECT_GT((want - start).abs().max().item<float>(), 1e-3) << "image " << image;
  }
}

INSTANTIATE_TEST_SUITE_P(LibrariesAndInits, TestTimeAdapterTest,
                         ::testing::Combine(::testing::Values(GemmLibrary::kBlas, GemmLibrary::kOneDnn),
                                            ::testing::Values(TtaInit::kText, TtaInit::kRandom)),
                         [](const auto& info) {
                           return std::string(model::GemmLibraryName(std::get<0>(info.param))) +
                                  (std::get<1>(info.param) == TtaInit::kText ? "_text" : "_random");
                         });

// The fused pass (contiguous float32 on the CPU) and libtorch's ops (any other tensor: here a
// transposed view) against torch::optim::AdamW, over several steps.
TEST(AdamWTest, BothPathsMatchLibtorch) {
  torch::manual_seed(23);
  const auto start = torch::randn({37, 29});
  std::vector<at::Tensor> gradients;
  for (int step = 0; step < 6; ++step) gradients.push_back(torch::randn({37, 29}) * (step + 1));
  AdamWSettings settings;
  settings.lr = 0.03;

  auto want = start.clone().set_requires_grad(true);
  torch::optim::AdamW reference({want}, torch::optim::AdamWOptions(settings.lr)
                                            .betas({settings.beta1, settings.beta2})
                                            .eps(settings.eps)
                                            .weight_decay(settings.weight_decay));
  auto fused = start.clone();
  auto strided = start.t().contiguous().t();  // same values, column-major
  ASSERT_FALSE(strided.is_contiguous());
  // Starting from values held elsewhere: the parameter's own are never read (NaN here), nor are
  // the initial values written.
  auto from_initial = torch::full({37, 29}, NAN), strided_from_initial = torch::full({29, 37}, NAN).t();
  const auto initial = start.clone();
  AdamW fused_optimizer(fused, settings), strided_optimizer(strided, settings);
  AdamW initial_optimizer(from_initial, settings, initial), strided_initial_optimizer(strided_from_initial, settings, initial);
  for (const auto& gradient : gradients) {
    want.mutable_grad() = gradient.clone();
    reference.step();
    // Each returns the updated parameter's largest magnitude.
    const float fused_largest = fused_optimizer.Step(gradient), strided_largest = strided_optimizer.Step(gradient);
    EXPECT_EQ(fused_largest, fused.abs().max().item<float>());
    EXPECT_EQ(strided_largest, strided.abs().max().item<float>());
    EXPECT_EQ(initial_optimizer.Step(gradient), fused_largest);
    strided_initial_optimizer.Step(gradient);
    EXPECT_TRUE(torch::equal(from_initial, fused));
    EXPECT_TRUE(torch::equal(strided_from_initial, strided));
  }
  EXPECT_TRUE(torch::equal(initial, start));
  EXPECT_GT((want.detach() - start).abs().max().item<float>(), 0.1);  // the steps moved it
  EXPECT_LT((fused - want.detach()).abs().max().item<float>(), 1e-6);
  EXPECT_LT((strided - want.detach()).abs().max().item<float>(), 1e-6);
  EXPECT_THROW(AdamW(torch::empty({3, 4}), settings, torch::zeros({4, 3})), c10::Error);

  // Rounded to int8 row by row by the same pass: each row at its largest magnitude / 127, to
  // nearest even; a row of zeros (no gradient, no weight) at scale 1. Rows of 3000 elements, so
  // that slices of whole rows cover the parameter in several.
  auto wide = torch::randn({11, 3000}), wide_reference = wide.clone();
  wide[4].zero_();
  wide_reference[4].zero_();
  AdamW wide_optimizer(wide, settings), wide_reference_optimizer(wide_reference, settings);
  auto rows_int8 = torch::empty({11, 3000}, torch::kInt8), row_scales = torch::empty({11});
  for (int step = 0; step < 3; ++step) {
    auto gradient = torch::randn({11, 3000});
    gradient[4].zero_();
    const float largest = wide_optimizer.Step(gradient, rows_int8, row_scales);
    wide_reference_optimizer.Step(gradient);
    // The same update, but for the last bit where a vector loop's remainder falls elsewhere.
    EXPECT_TRUE(torch::allclose(wide, wide_reference, 1e-6, 1e-7));
    EXPECT_EQ(largest, wide.abs().max().item<float>());
    const auto row_largest = wide.abs().amax(1);
    EXPECT_TRUE(torch::allclose(row_scales, torch::where(row_largest > 0, row_largest / 127, torch::ones({11})), 1e-7, 0));
    EXPECT_TRUE(torch::equal(rows_int8, (wide * (127 / row_largest.clamp_min(1e-30)).unsqueeze(1)).round().to(torch::kInt8)));
    EXPECT_EQ(rows_int8.abs().amax(1)[0].item<int>(), 127);
    EXPECT_EQ(rows_int8[4].abs().max().item<int>(), 0);
  }
  // A NaN in a row makes that row's scale NaN, which an int8 product then shows.
  auto with_nan = torch::zeros({11, 3000});
  with_nan[6][17] = NAN;
  EXPECT_TRUE(std::isnan(wide_optimizer.Step(with_nan, rows_int8, row_scales)));
  EXPECT_TRUE(std::isnan(row_scales[6].item<float>()));
  EXPECT_FALSE(std::isnan(row_scales[5].item<float>()));
  EXPECT_EQ(rows_int8[6].abs().max().item<int>(), 0);
  auto column_major = torch::empty({3000, 11}).t();
  EXPECT_THROW(AdamW(column_major, settings).Step(torch::zeros({11, 3000}), rows_int8, row_scales), c10::Error);
  EXPECT_THROW(wide_optimizer.Step(torch::zeros({11, 3000}), rows_int8.narrow(0, 0, 10), row_scales), c10::Error);
}

// The noise: N(0, σ²), the same draws on one thread as on two, fresh for every step, seed and
// chunk (a repeated chunk or step would be a far weaker perturbation than §7's i.i.d. δ).
TEST(TtaNoiseTest, GaussianIndependentAndTheSameOnAnyThreadCount) {
  const std::vector<int64_t> shape{225, 640};  // a ViT-B-16-plus-240 image: nine chunks
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const auto one_thread = DrawTtaNoise(7, 2, 0.05, shape);
  at::set_num_threads(testing::ParallelTestThreads());
  const auto two_threads = DrawTtaNoise(7, 2, 0.05, shape);
  at::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(one_thread, two_threads));
  ASSERT_EQ(one_thread.sizes(), at::IntArrayRef(shape));
  EXPECT_NEAR(one_thread.mean().item<double>(), 0.0, 0.05 * 5 / std::sqrt(225.0 * 640));
  EXPECT_NEAR(one_thread.std().item<double>(), 0.05, 0.05 * 0.01);
  EXPECT_TRUE(torch::equal(DrawTtaNoise(7, 2, 0.0, shape), torch::zeros(shape)));  // sigma 0 is allowed
  EXPECT_EQ(DrawTtaNoise(7, 2, 0.05, {0, 640}).numel(), 0);

  const auto flat = one_thread.view(-1);
  const auto first = flat.narrow(0, 0, kTtaNoiseChunk), second = flat.narrow(0, kTtaNoiseChunk, kTtaNoiseChunk);
  auto correlation = [](const at::Tensor& a, const at::Tensor& b) {
    return ((a - a.mean()) * (b - b.mean())).mean().item<double>() / (a.std().item<double>() * b.std().item<double>());
  };
  // Independent draws of 16384 values correlate within a few times 1/√16384 ≈ 0.008.
  EXPECT_LT(std::abs(correlation(first, second)), 0.04);
  for (const auto& other : {DrawTtaNoise(7, 3, 0.05, shape), DrawTtaNoise(8, 2, 0.05, shape)}) {
    EXPECT_LT(std::abs(correlation(flat, other.view(-1))), 0.02);
  }
}

// The cache hands back exactly what a fresh draw gives, for the key asked, and stays within its
// bound while more distinct draws than it holds go through it.
TEST(TtaNoiseTest, CachedNoiseIsTheDrawOfItsKeyWithinTheBound) {
  const std::vector<int64_t> shape{225, 640};
  const size_t draw_bytes = 225 * 640 * sizeof(float);
  const int draws = static_cast<int>(kTtaNoiseCacheBytes / draw_bytes) + 5;  // more than it holds
  for (int seed = 0; seed < draws; ++seed) {
    const auto cached = CachedTtaNoise(100 + seed, seed % 5, 0.05, shape);
    ASSERT_TRUE(torch::equal(cached, DrawTtaNoise(100 + seed, seed % 5, 0.05, shape))) << "seed " << seed;
    EXPECT_LE(TtaNoiseCacheBytes(), kTtaNoiseCacheBytes);
  }
  EXPECT_GE(TtaNoiseCacheBytes(), kTtaNoiseCacheBytes - draw_bytes);  // it did keep draws
  // The most recent draw comes back from the cache (the same tensor); an evicted one is drawn again.
  const auto again = CachedTtaNoise(100 + draws - 1, (draws - 1) % 5, 0.05, shape);
  EXPECT_TRUE(again.is_same(CachedTtaNoise(100 + draws - 1, (draws - 1) % 5, 0.05, shape)));
  EXPECT_TRUE(torch::equal(CachedTtaNoise(100, 0, 0.05, shape), DrawTtaNoise(100, 0, 0.05, shape)));
  // Each argument is part of the key.
  const auto base = CachedTtaNoise(1, 1, 0.05, shape);
  EXPECT_FALSE(torch::equal(base, CachedTtaNoise(2, 1, 0.05, shape)));
  EXPECT_FALSE(torch::equal(base, CachedTtaNoise(1, 2, 0.05, shape)));
  EXPECT_TRUE(torch::allclose(CachedTtaNoise(1, 1, 0.1, shape), base * 2, 1e-6, 1e-6));
  EXPECT_EQ(CachedTtaNoise(1, 1, 0.05, {640, 225}).sizes(), (std::vector<int64_t>{640, 225}));
}

// The patch probabilities that adapting with `options` gives.
at::Tensor Adapted(const TtaOptions& options, const at::Tensor& patches, const at::Tensor& prompts,
                   const at::Tensor& text) {
  auto adapter = TestTimeAdapter::Create(options);
  EXPECT_TRUE(adapter.ok()) << adapter.status();
  return adapter.ok() ? adapter->Adapt(patches, prompts, text).patch_probs : at::Tensor();
}

// bfloat16 products follow float32's within bfloat16's rounding.
TEST(TestTimeAdapterBfloat16Test, FollowsFloat32) {
  torch::manual_seed(22);
  auto patches = torch::randn({1, 40, 32}) * 3, prompts = Normalize(torch::randn({1, 20, 32}));
  auto text = Normalize(torch::randn({1, 2, 32}));
  TtaOptions options;
  const auto want = Adapted(options, patches, prompts, text);
  options.compute_dtype = at::kBFloat16;
  const auto got = Adapted(options, patches, prompts, text);
  EXPECT_LT((got - want).abs().max().item<float>(), 2e-2);
}

// int8 adaptation as the engine runs it: with oneDNN selected, the weight gradient's product in
// bfloat16 where the CPU multiplies it natively; two images' tokens, prompts and text rows.
class TestTimeAdapterInt8Test : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!model::ParseGemmLibrary("onednn").ok()) GTEST_SKIP() << "this libtorch has no oneDNN";
    model::SetGemmLibrary(GemmLibrary::kOneDnn);
    torch::manual_seed(27);
    patches = torch::randn({2, 40, 32}) * 3;
    prompts = Normalize(torch::randn({2, 20, 32}));
    text = Normalize(torch::randn({2, 2, 32}));
  }
  void TearDown() override { model::SetGemmLibrary(previous_); }

  at::Tensor patches, prompts, text;

 private:
  const GemmLibrary previous_ = model::CurrentGemmLibrary();
};

// int8 products (three of the four per step, each operand rounded to 255 levels by its largest
// magnitude) follow float32's closely, and a batch's images still adapt as alone.
TEST_F(TestTimeAdapterInt8Test, FollowsFloat32) {
  TtaOptions options;
  options.lr = 0.05;  // steps that move the probabilities well away from the start
  const auto want = Adapted(options, patches, prompts, text);
  options.compute_dtype = at::kChar;
  const auto got = Adapted(options, patches, prompts, text);
  // Against what adapting changes: the same adapter with a learning rate too small to move it.
  TtaOptions unmoved_options;
  unmoved_options.lr = 1e-9;
  const auto unmoved = Adapted(unmoved_options, patches, prompts, text);
  const float moved = (want - unmoved).abs().max().item<float>(), drift = (got - want).abs().max().item<float>();
  EXPECT_GT(moved, 0.02);
  // The drift from float32 stays well under what adapting moves: int8 in the weight gradient's
  // product too had drifted by 45% of it here (docs/performance.md).
  EXPECT_LT(drift, 0.3 * moved);
  const auto alone = Adapted(options, patches.narrow(0, 1, 1), prompts.narrow(0, 1, 1), text.narrow(0, 1, 1));
  EXPECT_LT((got[1] - alone[0]).abs().max().item<float>(), 1e-6);
}

// Under int8 a class keeps its prompts rounded (TextFeatures::PromptsInt8) and the adapter reads
// that copy instead of rounding them for every image: the same adaptation.
TEST_F(TestTimeAdapterInt8Test, PromptsRoundedOnceAdaptAsRoundedPerImage) {
  TtaOptions options;
  options.lr = 0.05;
  options.compute_dtype = at::kChar;
  auto adapter = TestTimeAdapter::Create(options);
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  const TtaResult per_image = adapter->Adapt(patches, prompts, text);

  const TextFeatures first{text[0], prompts[0]}, second{text[1], prompts[1]};
  const std::vector<AdapterPrompts> kept = {{prompts[0], first.PromptsInt8()}, {prompts[1], second.PromptsInt8()}};
  const TtaResult once = adapter->Adapt(patches, kept, text);
  EXPECT_TRUE(torch::equal(once.patch_probs, per_image.patch_probs));
  EXPECT_EQ(once.losses, per_image.losses);

  // Rounded by the first call only, and shared by copies of the features.
  EXPECT_TRUE(torch::equal(first.PromptsInt8().values, RoundPromptsToInt8(prompts[0]).values));
  EXPECT_EQ(first.PromptsInt8().scale, RoundPromptsToInt8(prompts[0]).scale);
  EXPECT_EQ(first.PromptsInt8().values.data_ptr(), first.PromptsInt8().values.data_ptr());
  const TextFeatures copy = first;
  EXPECT_EQ(copy.PromptsInt8().values.data_ptr(), first.PromptsInt8().values.data_ptr());

  // The copy given is the one read: another scale adapts differently.
  const std::vector<AdapterPrompts> rescaled = {{prompts[0], {kept[0].int8.values, kept[0].int8.scale * 2}}, kept[1]};
  const TtaResult other = adapter->Adapt(patches, rescaled, text);
  EXPECT_FALSE(torch::equal(other.patch_probs[0], per_image.patch_probs[0]));
  EXPECT_TRUE(torch::equal(other.patch_probs[1], per_image.patch_probs[1]));

  // A copy of other rows' shape, or a set of prompts short of the batch, is refused.
  const std::vector<AdapterPrompts> misshapen = {{prompts[0], RoundPromptsToInt8(prompts[0].narrow(0, 0, 10))}, kept[1]};
  EXPECT_THROW(adapter->Adapt(patches, misshapen, text), c10::Error);
  EXPECT_THROW(adapter->Adapt(patches, std::vector<AdapterPrompts>{kept[0]}, text), c10::Error);
}

}  // namespace
}  // namespace anoclip::anomaly
