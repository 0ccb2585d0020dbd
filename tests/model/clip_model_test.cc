// The CLIP towers on the tiny reference weights: loading checks and the truncated text pass.
#include "model/clip_model.h"

#include <torch/torch.h>

#include <gtest/gtest.h>

#include "io/state_dict.h"
#include "model/layer_norm.h"
#include "model/linear.h"
#include "model/onednn_ops.h"
#include "model/tokenizer.h"
#include "model/transformer.h"
#include "test_util.h"

namespace anoclip::model {
namespace {

class ClipModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto config = ReadOpenClipConfig(::anoclip::testing::TinyModelDir() + "/open_clip_config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    auto weights = io::LoadModelWeights(::anoclip::testing::TinyModelDir());
    ASSERT_TRUE(weights.ok()) << weights.status();
    weights_ = std::move(weights).value();
  }
  OpenClipConfig config_;
  io::StateDict weights_;
};

// The reference tolerance for embeddings and tokens: 1e-4 of the tensor's largest magnitude.
// Paths that compute the same values with differently shaped products (or another GEMM
// library) sum in different orders.
void ExpectWithinReferenceTolerance(const at::Tensor& expected, const at::Tensor& actual, const char* what) {
  ASSERT_EQ(expected.sizes(), actual.sizes()) << what;
  const double error = (expected - actual).abs().max().item<double>(), scale = expected.abs().max().item<double>();
  EXPECT_LE(error, 1e-4 * scale) << what;
  EXPECT_GT(scale, 0) << what;
}

TEST_F(ClipModelTest, LoadsEveryParameterOfTheReferenceModel) {
  ClipModel model(config_);
  ASSERT_TRUE(LoadClipWeights(model, weights_).ok());
  EXPECT_TRUE(torch::equal(model->visual->conv1->weight, weights_.at("visual.conv1.weight")));
  EXPECT_TRUE(torch::equal(model->transformer->blocks[1]->attn->in_proj_weight,
                           weights_.at("transformer.resblocks.1.attn.in_proj_weight")));
}

TEST_F(ClipModelTest, TruncatedTextPassEqualsFullContext) {
  ClipModel model(config_);
  ASSERT_TRUE(LoadClipWeights(model, weights_).ok());
  auto tokenizer = BpeTokenizer::FromFile(::anoclip::testing::VocabPath());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  std::vector<int64_t> ids;
  for (const char* text : {"a photo of a bottle", "a blurry industrial photo of a damaged metal nut"}) {
    auto row = (*tokenizer)->EncodeForModel(text, 77);
    ids.insert(ids.end(), row.begin(), row.end());
  }
  torch::NoGradGuard no_grad;
  auto tokens = torch::tensor(ids, torch::kLong).view({2, 77});
  auto truncated = model->EncodeText(tokens);
  auto full = model->EncodeText(tokens, /*full_context=*/true);
  EXPECT_LT((truncated - full).abs().max().item<double>(), 1e-5 * full.abs().max().item<double>());
}

TEST(TextBucketsTest, SortsByLengthAndCutsAtLengthChangesOnceBigEnough) {
  // Rows 0..5 with lengths 5,3,5,9,3,4, at least 6 positions before a cut: the two 3s close at
  // the 4; the 4 alone is too small to close, so the 5s join it; the 9 would overflow 20.
  auto buckets = TextBuckets({5, 3, 5, 9, 3, 4}, /*min_tokens=*/6, /*max_tokens=*/20);
  ASSERT_EQ(buckets.size(), 3u);
  EXPECT_EQ(buckets[0].rows, (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(buckets[0].length, 3);
  EXPECT_EQ(buckets[1].rows, (std::vector<int64_t>{5, 0, 2}));
  EXPECT_EQ(buckets[1].length, 5);
  EXPECT_EQ(buckets[2].rows, (std::vector<int64_t>{3}));
  EXPECT_EQ(buckets[2].length, 9);
  // max_tokens bounds a bucket even among equal lengths.
  auto capped = TextBuckets({4, 4, 4, 4, 4}, 1, 8);
  ASSERT_EQ(capped.size(), 3u);
  EXPECT_EQ(capped[2].rows, (std::vector<int64_t>{4}));
  EXPECT_TRUE(TextBuckets({}, 1, 8).empty());
}

TEST_F(ClipModelTest, BucketedTextPassEqualsFullContextInTheRowsOrder) {
  ClipModel model(config_);
  ASSERT_TRUE(LoadClipWeights(model, weights_).ok());
  auto tokenizer = BpeTokenizer::FromFile(::anoclip::testing::VocabPath());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  // Enough prompts of mixed lengths for several buckets, in an order that is not sorted.
  std::vector<int64_t> ids, lengths;
  const int64_t count = 240;
  for (int64_t i = 0; i < count; ++i) {
    std::string text = "a photo of a";
    for (int64_t w = 0; w < (i * 7) % 40; ++w) text += " damaged";
    auto row = (*tokenizer)->EncodeForModel(text, 77);
    lengths.push_back(std::max_element(row.begin(), row.end()) - row.begin() + 1);
    ids.insert(ids.end(), row.begin(), row.end());
  }
  ASSERT_GT(TextBuckets(lengths, kTextBucketMinTokens, kTextBucketMaxTokens).size(), 1u);
  torch::NoGradGuard no_grad;
  auto tokens = torch::tensor(ids, torch::kLong).view({count, 77});
  auto bucketed = model->EncodeText(tokens);
  auto full = model->EncodeText(tokens, /*full_context=*/true);
  ASSERT_EQ(bucketed.sizes(), full.sizes());
  EXPECT_LT((bucketed - full).abs().max().item<double>(), 1e-5 * full.abs().max().item<double>());
}

TEST(TextPrefixTreeTest, SharedPositionsAreOneNodeAndEveryPromptKeepsItsPath) {
  // Context 6, end token = the largest id (9). Rows 0 and 2 share [1,2]; row 3 repeats row 0.
  const std::vector<int64_t> ids = {1, 2, 3, 9, 0, 0,   //
                                    4, 9, 0, 0, 0, 0,   //
                                    1, 2, 9, 0, 0, 0,   //
                                    1, 2, 3, 9, 0, 0};
  TextBucket bucket{{0, 1, 2, 3}, 4};
  const auto tree = BuildTextPrefixTree(ids.data(), 6, bucket);
  EXPECT_EQ(tree.tokens, (std::vector<int64_t>{1, 2, 3, 9, 4, 9, 9}));
  EXPECT_EQ(tree.positions, (std::vector<int64_t>{0, 1, 2, 3, 0, 1, 2}));
  EXPECT_EQ(tree.paths, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 5, 5, 0, 1, 6, 6, 0, 1, 2, 3}));
  EXPECT_EQ(tree.owners, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 10}));
  EXPECT_EQ(tree.ends, (std::vector<int64_t>{3, 5, 6, 3}));
}

TEST_F(ClipModelTest, RepeatedAndPrefixSharingPromptsEqualFullContext) {
  ClipModel model(config_);
  ASSERT_TRUE(LoadClipWeights(model, weights_).ok());
  auto tokenizer = BpeTokenizer::FromFile(::anoclip::testing::VocabPath());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  std::vector<int64_t> ids;
  int64_t count = 0;
  for (const char* text : {"a photo of a bottle", "a photo of a damaged bottle", "a photo of a bottle",
                           "a photo of the bottle", "a photo", "a photo of a bottle with a flaw"}) {
    auto row = (*tokenizer)->EncodeForModel(text, 77);
    ids.insert(ids.end(), row.begin(), row.end());
    ++count;
  }
  torch::NoGradGuard no_grad;
  auto tokens = torch::tensor(ids, torch::kLong).view({count, 77});
  auto shared = model->EncodeText(tokens);
  auto full = model->EncodeText(tokens, /*full_context=*/true);
  EXPECT_LT((shared - full).abs().max().item<double>(), 1e-5 * full.abs().max().item<double>());
  EXPECT_TRUE(torch::equal(shared[0], shared[2]));
}

TEST_F(ClipModelTest, NamesMissingMisshapedAndUnexpectedWeights) {
  ClipModel model(config_);
  auto weights = weights_;
  weights.erase("visual.ln_post.bias");
  weights["visual.proj"] = torch::zeros({3, 3});
  weights["visual.extra_head.weight"] = torch::zeros({1});
  auto status = LoadClipWeights(model, weights);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  const std::string message(status.message());
  EXPECT_NE(message.find("missing: visual.ln_post.bias"), std::string::npos) << message;
  EXPECT_NE(message.find("visual.proj (expected [64, 32]"), std::string::npos) << message;
  EXPECT_NE(message.find("unexpected: visual.extra_head.weight"), std::string::npos) << message;
}

TEST_F(ClipModelTest, LocalAwareOnlyForwardGivesTheSameTokensAsTheFullForward) {
  ClipModel model(config_);
  ASSERT_TRUE(LoadClipWeights(model, weights_).ok());
  torch::NoGradGuard no_grad;
  torch::manual_seed(11);
  auto images = torch::randn({2, 3, 80, 80});
  auto lean = model->EncodeImage(images, {true, false});
  auto full = model->EncodeImage(images, {true, true});
  // The lean pass projects the last block's values alone, the full one with the queries and keys.
  ExpectWithinReferenceTolerance(full.image_embedding, lean.image_embedding, "image embedding");
  ExpectWithinReferenceTolerance(full.local_aware_patches, lean.local_aware_patches, "local-aware patches");
  EXPECT_FALSE(lean.plain_patches.defined());
  EXPECT_EQ(full.plain_patches.sizes(), (std::vector<int64_t>{2, 100, 32}));
}

// Sets the process's GEMM library for one test and puts the previous one back.
class GemmLibraryScope {
 public:
  explicit GemmLibraryScope(GemmLibrary library) : previous_(CurrentGemmLibrary()) { SetGemmLibrary(library); }
  ~GemmLibraryScope() { SetGemmLibrary(previous_); }

 private:
  GemmLibrary previous_;
};

// The inference paths (per-head BLAS calls on both cores, or oneDNN's batched matmuls over all
// heads, both reading the projection in place) against the autograd path (libtorch's matmuls),
// with a causal mask, residuals, several sets at once and more than one image.
class AttentionTest : public ::testing::TestWithParam<GemmLibrary> {};

TEST_P(AttentionTest, InferencePathEqualsAutogradPath) {
  if (!ParseGemmLibrary(GemmLibraryName(GetParam())).ok()) GTEST_SKIP() << "this libtorch has no oneDNN";
  const GemmLibraryScope library(GetParam());
  torch::manual_seed(3);
  Attention attention(/*width=*/64, /*heads=*/4);
  auto y = torch::randn({3, 17, 64});
  auto residual = torch::randn({3, 17, 64});
  auto mask = torch::full({17, 17}, -std::numeric_limits<float>::infinity()).triu(1);
  at::Tensor fast_plain, fast_masked, slow_plain, slow_masked;
  std::vector<at::Tensor> fast_sets, slow_sets;
  {
    torch::NoGradGuard no_grad;
    auto [q, k, v] = attention->Project(y);
    fast_plain = attention->Attend(q, k, v);
    fast_masked = attention->Attend(q, k, v, mask);
    fast_sets = attention->Attend({{q, k, v}, {v, v, v, residual}});
  }
  {
    torch::AutoGradMode grad(true);
    auto [q, k, v] = attention->Project(y);
    slow_plain = attention->Attend(q, k, v).detach();
    slow_masked = attention->Attend(q, k, v, mask).detach();
    slow_sets = attention->Attend({{q, k, v}, {v, v, v, residual}});
  }
  ASSERT_EQ(fast_sets.size(), 2u);
  EXPECT_EQ(fast_sets[1].sizes(), (std::vector<int64_t>{3, 17, 64}));
  EXPECT_TRUE(torch::allclose(fast_plain, slow_plain, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(fast_masked, slow_masked, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(fast_sets[0], slow_sets[0].detach(), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(fast_sets[1], slow_sets[1].detach(), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(fast_sets[0], fast_plain, 1e-6, 1e-6));
  EXPECT_FALSE(torch::allclose(fast_masked, fast_plain, 1e-3, 1e-3));
  // The residual is added to the value-value set alone.
  EXPECT_FALSE(torch::allclose(fast_sets[1] - residual, fast_sets[0], 1e-3, 1e-3));
}

INSTANTIATE_TEST_SUITE_P(BothLibraries, AttentionTest, ::testing::Values(GemmLibrary::kBlas, GemmLibrary::kOneDnn),
                         [](const ::testing::TestParamInfo<GemmLibrary>& info) {
                           return std::string(GemmLibraryName(info.param));
                         });

TEST(LinearTest, OneDnnAndBlasAgreeOnBatchedRowsWithAndWithoutBias) {
  if (!ParseGemmLibrary("onednn").ok()) GTEST_SKIP() << "this libtorch has no oneDNN";
  torch::manual_seed(5);
  torch::NoGradGuard no_grad;
  auto x = torch::randn({3, 17, 40});
  auto weight = torch::randn({24, 40}), bias = torch::randn({24});
  const auto expected = at::linear(x, weight, bias), expected_no_bias = at::linear(x, weight);
  for (const GemmLibrary library : {GemmLibrary::kBlas, GemmLibrary::kOneDnn}) {
    GemmLibraryScope scope(library);
    auto y = Linear(x, weight, bias);
    ASSERT_EQ(y.sizes(), (std::vector<int64_t>{3, 17, 24})) << GemmLibraryName(library);
    EXPECT_TRUE(torch::allclose(y, expected, 1e-5, 1e-5)) << GemmLibraryName(library);
    EXPECT_TRUE(torch::allclose(Linear(x, weight, {}), expected_no_bias, 1e-5, 1e-5)) << GemmLibraryName(library);
    // A view with strides of its own (a column slice of a wider tensor) reads the same.
    auto wide = torch::randn({3, 17, 80});
    wide.narrow(2, 10, 40).copy_(x);
    EXPECT_TRUE(torch::allclose(Linear(wide.narrow(2, 10, 40), weight, bias), expected, 1e-5, 1e-5));
  }
}

// The activation and residual that oneDNN applies while writing the output, against libtorch's
// own ops after its linear.
TEST(LinearTest, EpiloguesMatchLibtorchsOps) {
  if (!ParseGemmLibrary("onednn").ok()) GTEST_SKIP() << "this libtorch has no oneDNN";
  torch::manual_seed(6);
  torch::NoGradGuard no_grad;
  // 18 rows run on oneDNN's matmul primitive, 2·(kInnerProductMinRows/2 + 1) on its inner product.
  for (const int64_t tokens : {int64_t{9}, onednn::kInnerProductMinRows / 2 + 1}) {
    auto x = torch::randn({2, tokens, 32}), weight = torch::randn({48, 32}) * 0.2, bias = torch::randn({48});
    auto residual = torch::randn({2, tokens, 48});
    const auto product = at::linear(x, weight, bias);
    const std::pair<Activation, at::Tensor> expected[] = {
        {Activation::kGelu, torch::gelu(product)},
        {Activation::kQuickGelu, product * torch::sigmoid(1.702 * product)},
        {Activation::kTanh, torch::tanh(product)},
        {Activation::kNone, product + residual}};
    for (const GemmLibrary library : {GemmLibrary::kBlas, GemmLibrary::kOneDnn}) {
      GemmLibraryScope scope(library);
      for (const auto& [activation, want] : expected) {
        const Epilogue epilogue{activation, activation == Activation::kNone ? residual : at::Tensor()};
        EXPECT_TRUE(torch::allclose(Linear(x, weight, bias, epilogue), want, 1e-5, 1e-5))
            << GemmLibraryName(library) << " activation " << static_cast<int>(activation) << " rows " << 2 * tokens;
      }
      EXPECT_TRUE(torch::allclose(Linear(x, weight, {}), at::linear(x, weight), 1e-5, 1e-5));
      // A residual that is a strided view (every other row of a longer sequence) is read in place.
      auto longer = torch::randn({2, 2 * tokens, 48});
      longer.slice(1, 0, 2 * tokens, 2).copy_(residual);
      EXPECT_TRUE(torch::allclose(Linear(x, weight, bias, {Activation::kNone, longer.slice(1, 0, 2 * tokens, 2)}),
                                  product + residual, 1e-5, 1e-5))
          << GemmLibraryName(library);
      // So is an input that is a column slice of a wider tensor (the matmul primitive at any size).
      auto wide = torch::randn({2, tokens, 80});
      wide.narrow(2, 10, 32).copy_(x);
      EXPECT_TRUE(torch::allclose(Linear(wide.narrow(2, 10, 32), weight, bias), product, 1e-5, 1e-5));
    }
  }
}

// oneDNN's layer normalization (dense float32 rows with oneDNN selected, bfloat16 where the CPU has
// bfloat16 instructions) gives libtorch's; the rest (strided rows, BLAS selected, autograd) stays
// on libtorch's.
TEST(LayerNormTest, FollowsLibtorchsOnEveryPath) {
  if (!ParseGemmLibrary("onednn").ok()) GTEST_SKIP() << "this libtorch has no oneDNN";
  torch::manual_seed(13);
  const auto weight = torch::randn({40}), bias = torch::randn({40});
  const auto x = torch::randn({3, 17, 40}) * 3 + 1;
  const auto want = at::layer_norm(x, {40}, weight, bias, 1e-5);
  for (const GemmLibrary library : {GemmLibrary::kBlas, GemmLibrary::kOneDnn}) {
    GemmLibraryScope scope(library);
    torch::NoGradGuard no_grad;
    const auto got = LayerNorm(x, weight, bias, 1e-5);
    ASSERT_EQ(got.sizes(), x.sizes());
    EXPECT_LT((got - want).abs().max().item<float>(), 1e-5) << GemmLibraryName(library);
    // Every other token: strided rows.
    const auto strided = x.slice(1, 0, 17, 2);
    EXPECT_LT((LayerNorm(strided, weight, bias, 1e-5) - want.slice(1, 0, 17, 2)).abs().max().item<float>(), 1e-5);
    // bfloat16 rows: through oneDNN, the float32 result of the same bfloat16 inputs, rounded
    // (within one of bfloat16's steps, 2⁻⁷ of the magnitude); libtorch's rounds its intermediate
    // values too, and lands within 0.1.
    const auto x_half = x.to(torch::kBFloat16), weight_half = weight.to(torch::kBFloat16),
               bias_half = bias.to(torch::kBFloat16);
    const auto half = LayerNorm(x_half, weight_half, bias_half, 1e-5);
    EXPECT_EQ(half.scalar_type(), torch::kBFloat16);
    const auto half_want = at::layer_norm(x_half.to(torch::kFloat), {40}, weight_half.to(torch::kFloat),
                                          bias_half.to(torch::kFloat), 1e-5);
    const auto half_error = (half.to(torch::kFloat) - half_want).abs();
    if (library == GemmLibrary::kOneDnn && onednn::HasNativeBfloat16()) {
      EXPECT_TRUE((half_error <= half_want.abs() / 128 + 1e-6).all().item<bool>())
          << "largest difference " << half_error.max().item<float>();
    } else {
      EXPECT_LT(half_error.max().item<float>(), 0.1) << GemmLibraryName(library);
    }
    EXPECT_EQ(LayerNorm(torch::empty({0, 40}), weight, bias, 1e-5).sizes(), (std::vector<int64_t>{0, 40}));
    // Another epsilon is another result: the primitive takes it.
    EXPECT_LT((LayerNorm(x, weight, bias, 0.5) - at::layer_norm(x, {40}, weight, bias, 0.5)).abs().max().item<float>(),
              1e-5);
  }
  GemmLibraryScope scope(GemmLibrary::kOneDnn);
  const auto leaf = x.clone().requires_grad_(true);
  const auto traced = LayerNorm(leaf, weight, bias, 1e-5);
  ASSERT_TRUE(traced.requires_grad());  // oneDNN's result would have no gradient
  EXPECT_LT((traced.detach() - want).abs().max().item<float>(), 1e-5);
}

TEST(LinearTest, AutogradStaysOnLibtorchsPathAndBfloat16FollowsFloat32) {
  if (!ParseGemmLibrary("onednn").ok()) GTEST_SKIP() << "this libtorch has no oneDNN";
  GemmLibraryScope scope(GemmLibrary::kOneDnn);
  torch::manual_seed(4);
  auto x = torch::randn({4, 8}), weight = torch::randn({6, 8}, torch::requires_grad()), bias = torch::randn({6});
  auto y = Linear(x, weight, bias);
  ASSERT_TRUE(y.requires_grad());  // a oneDNN product would have no gradient
  y.sum().backward();
  EXPECT_TRUE(torch::allclose(weight.grad(), x.sum(0).expand({6, 8})));
  torch::NoGradGuard no_grad;
  // bfloat16 operands (8 bits of mantissa), GELU fused: within bfloat16's rounding of float32, on
  // the matmul primitive (4 rows) and on the inner product (kInnerProductMinRows rows).
  for (const auto& rows : {x, torch::randn({onednn::kInnerProductMinRows, 8})}) {
    const auto expected = torch::gelu(at::linear(rows, weight, bias));
    auto half = Linear(rows.to(torch::kBFloat16), weight.detach().to(torch::kBFloat16), bias.to(torch::kBFloat16),
                       {Activation::kGelu, {}});
    EXPECT_EQ(half.scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(torch::allclose(half.to(torch::kFloat32), expected, 5e-2, 5e-2)) << rows.size(0) << " rows";
    // A float32 residual added to the bfloat16 product is read as float32.
    const auto residual = torch::randn({rows.size(0), 6});
    auto with_residual = Linear(rows.to(torch::kBFloat16), weight.detach().to(torch::kBFloat16),
                                bias.to(torch::kBFloat16), {Activation::kNone, residual});
    EXPECT_TRUE(torch::allclose(with_residual.to(torch::kFloat32), at::linear(rows, weight, bias) + residual, 5e-2, 5e-2))
        << rows.size(0) << " rows";
  }
}

// A bfloat16 product written as float32 (the adapter's products) and a transposed input read
// through its strides, on both libraries, against libtorch's float32 product.
TEST(LinearTest, Bfloat16WrittenAsFloat32AndTransposedInputsReadInPlace) {
  if (!ParseGemmLibrary("onednn").ok()) GTEST_SKIP() << "this libtorch has no oneDNN";
  torch::manual_seed(8);
  torch::NoGradGuard no_grad;
  const auto columns = torch::randn({40, 30});  // x = columnsᵀ [30,40], a transposed view
  const auto x = columns.t(), weight = torch::randn({24, 40}), bias = torch::randn({24});
  ASSERT_FALSE(x.is_contiguous());
  const auto want = at::linear(x.contiguous(), weight, bias);
  for (const GemmLibrary library : {GemmLibrary::kBlas, GemmLibrary::kOneDnn}) {
    GemmLibraryScope scope(library);
    EXPECT_TRUE(torch::allclose(Linear(x, weight, bias), want, 1e-5, 1e-5)) << GemmLibraryName(library);
    const auto half = Linear(ConvertForProduct(x, torch::kBFloat16), ConvertForProduct(weight, torch::kBFloat16),
                             ConvertForProduct(bias, torch::kBFloat16), {Activation::kTanh, {}, torch::kFloat});
    EXPECT_EQ(half.scalar_type(), torch::kFloat) << GemmLibraryName(library);
    EXPECT_LT((half - torch::tanh(want)).abs().max().item<float>(), 5e-2) << GemmLibraryName(library);
  }
}

// oneDNN's reorder converts as libtorch does (round to nearest even), keeps a dense view's layout
// and reads a strided one.
TEST(LinearTest, ConvertForProductEqualsLibtorchsConversion) {
  if (!ParseGemmLibrary("onednn").ok()) GTEST_SKIP() << "this libtorch has no oneDNN";
  GemmLibraryScope scope(GemmLibrary::kOneDnn);
  torch::manual_seed(9);
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({70, 33}) * 100;
  const auto half = ConvertForProduct(x, torch::kBFloat16);
  ASSERT_EQ(half.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(half, x.to(torch::kBFloat16)));
  EXPECT_TRUE(torch::equal(ConvertForProduct(half, torch::kFloat), half.to(torch::kFloat)));
  const auto transposed = ConvertForProduct(x.t(), torch::kBFloat16);
  EXPECT_EQ(transposed.strides(), x.t().strides());
  EXPECT_TRUE(torch::equal(transposed, x.t().to(torch::kBFloat16)));
  const auto every_other_row = x.slice(0, 0, 70, 2);
  EXPECT_TRUE(torch::equal(ConvertForProduct(every_other_row, torch::kBFloat16), every_other_row.to(torch::kBFloat16)));
  EXPECT_TRUE(ConvertForProduct(x, torch::kFloat).is_same(x));  // already in the dtype: itself
}

// The attention in bfloat16 through oneDNN follows float32's.
TEST(AttentionBfloat16Test, FollowsFloat32) {
  if (!ParseGemmLibrary("onednn").ok()) GTEST_SKIP() << "this libtorch has no oneDNN";
  const GemmLibraryScope library(GemmLibrary::kOneDnn);
  torch::manual_seed(12);
  Attention attention(/*width=*/64, /*heads=*/4);
  torch::NoGradGuard no_grad;
  auto y = torch::randn({2, 17, 64});
  auto mask = torch::full({17, 17}, -std::numeric_limits<float>::infinity()).triu(1);
  auto [q, k, v] = attention->Project(y);
  const auto expected = attention->Attend(q, k, v, mask);
  attention->to(torch::kBFloat16);
  auto [hq, hk, hv] = attention->Project(y.to(torch::kBFloat16));
  const auto half = attention->Attend(hq, hk, hv, mask);
  EXPECT_EQ(half.scalar_type(), torch::kBFloat16);
  EXPECT_LT((half.to(torch::kFloat32) - expected).abs().max().item<float>(), 0.05f * expected.abs().max().item<float>());
}

// A weight packed into oneDNN's blocks gives the plain weight's product, epilogues included, at
// every row count (the inner product's too, which a packed weight leaves for the matmul).
TEST(LinearTest, PackedWeightGivesThePlainProductAtEveryRowCount) {
  if (!ParseGemmLibrary("onednn").ok()) GTEST_SKIP() << "this libtorch has no oneDNN";
  torch::manual_seed(10);
  torch::NoGradGuard no_grad;
  const auto weight = torch::randn({128, 64}) * 0.2, bias = torch::randn({128});
  {
    GemmLibraryScope blas(GemmLibrary::kBlas);
    EXPECT_FALSE(PackWeight(weight).packed());  // only oneDNN reads blocks
  }
  GemmLibraryScope scope(GemmLibrary::kOneDnn);
  const PackedWeight packed = PackWeight(weight);
  if (!packed.packed()) GTEST_SKIP() << "oneDNN's matmul reads this weight plain on this CPU";
  for (const int64_t rows : {int64_t{1}, int64_t{9}, onednn::kInnerProductMinRows + 3}) {
    const auto x = torch::randn({rows, 64}), residual = torch::randn({rows, 128});
    const auto product = at::linear(x, weight, bias);
    EXPECT_TRUE(torch::allclose(Linear(x, weight, bias, {}, packed), product, 1e-5, 1e-5)) << rows << " rows";
    EXPECT_TRUE(torch::allclose(Linear(x, weight, bias, {Activation::kGelu, {}}, packed), torch::gelu(product), 1e-5,
                                1e-5))
        << rows << " rows";
    EXPECT_TRUE(torch::allclose(Linear(x, weight, bias, {Activation::kNone, residual}, packed), product + residual,
                                1e-5, 1e-5))
        << rows << " rows";
  }
  // bfloat16 packs too; a packed weight of another shape is refused.
  const auto half = PackWeight(weight.to(torch::kBFloat16));
  const auto x = torch::randn({9, 64});
  const auto half_product = Linear(x.to(torch::kBFloat16), weight.to(torch::kBFloat16), bias.to(torch::kBFloat16),
                                   {Activation::kNone, {}, torch::kFloat}, half);
  EXPECT_LT((half_product - at::linear(x, weight, bias)).abs().max().item<float>(), 5e-2);
  EXPECT_THROW(Linear(x, weight.narrow(0, 0, 64), bias.narrow(0, 0, 64), {}, packed), c10::Error);
}

// int8: the rounding is oneDNN's reorder by the largest magnitude, and the product is the exact
// product of the rounded matrices (integer sums, in float32); a transposed view is read in place.
TEST(LinearTest, Int8ProductIsTheExactProductOfTheRoundedMatrices) {
  torch::manual_seed(13);
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({37, 64}), weight = torch::randn({48, 64}) * 0.1;
  const onednn::Int8Matrix qx = onednn::QuantizeInt8(x), qw = onednn::QuantizeInt8(weight.t().contiguous().t());
  ASSERT_EQ(qx.values.scalar_type(), torch::kInt8);
  EXPECT_FLOAT_EQ(qx.scale, x.abs().max().item<float>() / 127);
  EXPECT_TRUE(torch::equal(qx.values, (x * (1 / qx.scale)).round().to(torch::kInt8)));
  EXPECT_EQ(qx.values.abs().max().item<int>(), 127);
  EXPECT_EQ(qw.values.strides(), weight.t().contiguous().t().strides());  // the transposed layout kept
  EXPECT_TRUE(torch::equal(qw.values, (weight * (1 / qw.scale)).round().to(torch::kInt8)));
  // A caller's largest magnitude is taken as it is; an all-zero matrix gets scale 1; a NaN makes
  // the scale NaN, which the pass applying it then shows.
  EXPECT_FLOAT_EQ(onednn::QuantizeInt8(x, 2.54f).scale, 0.02f);
  const auto zero = onednn::QuantizeInt8(torch::zeros({3, 5}));
  EXPECT_EQ(zero.scale, 1.0f);
  EXPECT_EQ(zero.values.abs().max().item<int>(), 0);
  auto with_nan = x.clone();
  with_nan[3][7] = NAN;
  EXPECT_TRUE(std::isnan(onednn::QuantizeInt8(with_nan).scale));

  const auto exact_sums = at::linear(qx.values.to(torch::kDouble), qw.values.to(torch::kDouble)).to(torch::kFloat);
  const auto sums = onednn::MultiplyInt8(qx.values, qw.values);
  ASSERT_EQ(sums.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(sums, exact_sums));
  // xᵀ's transpose, read through its strides, is x.
  const auto qxt = onednn::QuantizeInt8(x.t().contiguous());
  EXPECT_TRUE(torch::equal(onednn::MultiplyInt8(qxt.t().values, qw.values), exact_sums));
  // Scaled, within int8's rounding of the float32 product: each operand is off by at most half a
  // step, 64 terms.
  const float bound = 0.5f * 64 * (qx.scale * weight.abs().max().item<float>() +
                                   qw.scale * x.abs().max().item<float>() + qx.scale * qw.scale);
  EXPECT_LT((sums * (qx.scale * qw.scale) - at::linear(x, weight)).abs().max().item<float>(), bound);
  // Exact up to 1040 terms of ±127·127, the most float32 holds.
  const auto extreme = torch::full({2, 1040}, 127, torch::kInt8), negative = -extreme;
  EXPECT_EQ(onednn::MultiplyInt8(extreme, extreme)[0][0].item<float>(), 1040.0f * 127 * 127);
  EXPECT_EQ(onednn::MultiplyInt8(extreme, negative)[1][1].item<float>(), -1040.0f * 127 * 127);
  EXPECT_THROW(onednn::MultiplyInt8(qx.values, qw.values.t()), c10::Error);  // 64 columns against 48
  EXPECT_THROW(onednn::MultiplyInt8(x, qw.values), c10::Error);  // float32, not int8
}

TEST(LinearTest, ParsesLibraryNames) {
  EXPECT_EQ(ParseGemmLibrary("blas").value(), GemmLibrary::kBlas);
  EXPECT_EQ(ParseGemmLibrary("mkl").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_STREQ(GemmLibraryName(GemmLibrary::kOneDnn), "onednn");
}

TEST_F(ClipModelTest, BothTowersAgreeThroughBlasAndOneDnn) {
  if (!ParseGemmLibrary("onednn").ok()) GTEST_SKIP() << "this libtorch has no oneDNN";
  torch::manual_seed(7);
  ClipModel model(config_);
  ASSERT_TRUE(LoadClipWeights(model, weights_).ok());
  torch::NoGradGuard no_grad;
  auto images = torch::randn({2, 3, 80, 80});
  auto tokens = torch::randint(1, 400, {3, config_.text.context_length}, torch::kLong);
  VisionOutput vision[2], local_aware[2], plain[2];
  at::Tensor text[2];
  for (const GemmLibrary library : {GemmLibrary::kBlas, GemmLibrary::kOneDnn}) {
    GemmLibraryScope scope(library);
    vision[static_cast<int>(library)] = model->EncodeImage(images, {true, true});
    text[static_cast<int>(library)] = model->EncodeText(tokens);
    // Each path alone: the local-aware one skips the last block's queries and keys.
    local_aware[static_cast<int>(library)] = model->EncodeImage(images, {true, false});
    plain[static_cast<int>(library)] = model->EncodeImage(images, {false, true});
  }
  ExpectWithinReferenceTolerance(vision[0].image_embedding, vision[1].image_embedding, "image embedding");
  ExpectWithinReferenceTolerance(vision[0].local_aware_patches, vision[1].local_aware_patches, "local-aware patches");
  ExpectWithinReferenceTolerance(vision[0].plain_patches, vision[1].plain_patches, "plain patches");
  ExpectWithinReferenceTolerance(text[0], text[1], "text features");
  for (const VisionOutput& alone : {local_aware[0], local_aware[1]}) {
    ExpectWithinReferenceTolerance(vision[0].image_embedding, alone.image_embedding, "image embedding, local-aware");
    ExpectWithinReferenceTolerance(vision[0].local_aware_patches, alone.local_aware_patches, "local-aware patches alone");
  }
  for (const VisionOutput& alone : {plain[0], plain[1]}) {
    ExpectWithinReferenceTolerance(vision[0].image_embedding, alone.image_embedding, "image embedding, plain");
    ExpectWithinReferenceTolerance(vision[0].plain_patches, alone.plain_patches, "plain patches alone");
  }
}

// The vision tower with its weights packed on first use (the server's float32 oneDNN path) gives
// the plain tower's outputs; the weights it packed read back the same from the file afterwards.
TEST_F(ClipModelTest, PackedVisionTowerGivesThePlainTowersOutputs) {
  if (!ParseGemmLibrary("onednn").ok()) GTEST_SKIP() << "this libtorch has no oneDNN";
  GemmLibraryScope scope(GemmLibrary::kOneDnn);
  torch::manual_seed(11);
  ClipModel plain(config_), packed(config_);
  ASSERT_TRUE(LoadClipWeights(plain, weights_).ok());
  ASSERT_TRUE(LoadClipWeights(packed, weights_).ok());
  const auto c_fc = packed->visual->transformer->blocks[0]->mlp->c_fc->weight.clone();
  packed->visual->transformer->PackWeightsOnFirstUse();
  torch::NoGradGuard no_grad;
  const auto images = torch::randn({2, 3, 80, 80});
  const VisionOutput want = plain->EncodeImage(images, {true, true});
  for (int run = 0; run < 2; ++run) {  // the first run packs
    const VisionOutput got = packed->EncodeImage(images, {true, true});
    ExpectWithinReferenceTolerance(want.image_embedding, got.image_embedding, "image embedding");
    ExpectWithinReferenceTolerance(want.local_aware_patches, got.local_aware_patches, "local-aware patches");
    ExpectWithinReferenceTolerance(want.plain_patches, got.plain_patches, "plain patches");
  }
  EXPECT_TRUE(packed->visual->transformer->blocks[0]->mlp->c_fc_packed.packed());
  EXPECT_TRUE(at::equal(packed->visual->transformer->blocks[0]->mlp->c_fc->weight, c_fc));

  // Packed ahead of the first run where asked (the server, once SERVING); nothing where not.
  EXPECT_FALSE(plain->visual->transformer->PackDeferredWeights());
  EXPECT_FALSE(plain->visual->transformer->blocks[0]->attn->in_proj_packed.packed());
  ClipModel ahead(config_);
  ASSERT_TRUE(LoadClipWeights(ahead, weights_).ok());
  ahead->visual->transformer->PackWeightsOnFirstUse();
  EXPECT_TRUE(ahead->visual->transformer->PackDeferredWeights());
  for (const auto& block : ahead->visual->transformer->blocks) {
    EXPECT_TRUE(block->attn->in_proj_packed.packed() && block->attn->out_proj_packed.packed() &&
                block->mlp->c_fc_packed.packed() && block->mlp->c_proj_packed.packed());
  }
  ExpectWithinReferenceTolerance(want.local_aware_patches, ahead->EncodeImage(images, {true, true}).local_aware_patches,
                                 "local-aware patches packed ahead");

  // Weights on the heap (here the random initialisation; a torch checkpoint's alike) stay plain:
  // packing would hold a second copy.
  ClipModel heap(config_);
  heap->visual->transformer->PackWeightsOnFirstUse();
  EXPECT_TRUE(heap->visual->transformer->PackDeferredWeights());
  EXPECT_FALSE(heap->visual->transformer->blocks[0]->mlp->c_fc_packed.packed());
}

}  // namespace
}  // namespace anoclip::model
