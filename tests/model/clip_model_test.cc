// The CLIP towers on the tiny reference weights: loading checks and the truncated text pass.
#include "model/clip_model.h"

#include <torch/torch.h>

#include <gtest/gtest.h>

#include "io/state_dict.h"
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
  auto images = torch::randn({2, 3, 80, 80});
  auto lean = model->EncodeImage(images, {true, false});
  auto full = model->EncodeImage(images, {true, true});
  EXPECT_TRUE(torch::allclose(lean.image_embedding, full.image_embedding, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(lean.local_aware_patches, full.local_aware_patches, 1e-5, 1e-6));
  EXPECT_FALSE(lean.plain_patches.defined());
  EXPECT_EQ(full.plain_patches.sizes(), (std::vector<int64_t>{2, 100, 32}));
}

// The inference path (per-head BLAS calls on both cores, in place) against the autograd path
// (batched matmuls), with a causal mask, several sets at once and more than one image.
TEST(AttentionTest, InferencePathEqualsAutogradPath) {
  torch::manual_seed(3);
  Attention attention(/*width=*/64, /*heads=*/4);
  auto y = torch::randn({3, 17, 64});
  auto mask = torch::full({17, 17}, -std::numeric_limits<float>::infinity()).triu(1);
  at::Tensor fast_plain, fast_masked, fast_sets, slow_plain, slow_masked, slow_sets;
  {
    torch::NoGradGuard no_grad;
    auto [q, k, v] = attention->Project(y);
    fast_plain = attention->Attend(q, k, v);
    fast_masked = attention->Attend(q, k, v, mask);
    fast_sets = attention->Attend({{q, k, v}, {v, v, v}});
  }
  {
    torch::AutoGradMode grad(true);
    auto [q, k, v] = attention->Project(y);
    slow_plain = attention->Attend(q, k, v).detach();
    slow_masked = attention->Attend(q, k, v, mask).detach();
    slow_sets = attention->Attend({{q, k, v}, {v, v, v}}).detach();
  }
  ASSERT_EQ(fast_sets.sizes(), (std::vector<int64_t>{6, 17, 64}));
  EXPECT_TRUE(torch::allclose(fast_plain, slow_plain, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(fast_masked, slow_masked, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(fast_sets, slow_sets, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(fast_sets.narrow(0, 0, 3), fast_plain, 1e-6, 1e-6));
  EXPECT_FALSE(torch::allclose(fast_masked, fast_plain, 1e-3, 1e-3));
}

}  // namespace
}  // namespace anoclip::model
