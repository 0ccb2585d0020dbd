// One attention head at a time (model/head_attention.h): the softmax pass against libtorch's, and
// a head's output against libtorch's ops, through both GEMM libraries.
#include "model/head_attention.h"

#include <torch/torch.h>

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace anoclip::model {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

at::Tensor Softmaxed(at::Tensor rows) {
  rows = rows.clone();
  SoftmaxRows(rows.data_ptr<float>(), rows.size(0), rows.size(1), rows.stride(0));
  return rows;
}

// Row lengths around the sixteen lanes and a ViT's 226 tokens, values as large as attention
// scores get: within float's rounding of libtorch's softmax.
TEST(SoftmaxRowsTest, EqualsLibtorchsSoftmaxAtEveryRowLength) {
  torch::manual_seed(1);
  for (const int64_t columns : {1, 2, 15, 16, 17, 33, 77, 226}) {
    const auto rows = torch::randn({5, columns}) * 20;
    const auto got = Softmaxed(rows);
    const auto want = torch::softmax(rows, -1);
    EXPECT_LE((got - want).abs().max().item<float>(), 2e-7f) << columns << " columns";
    EXPECT_LE((got.sum(-1) - 1).abs().max().item<float>(), 1e-6f) << columns << " columns";
  }
}

// The exponential at every scale a softmax meets, against libm's: within two units in the last place.
TEST(SoftmaxRowsTest, ExponentialFollowsLibmAcrossFloatsRange) {
  // A row [0, x]: its second probability is e^x / (1 + e^x), and for x < -20 that is e^x itself.
  for (float x = -87.0f; x <= -20.0f; x += 0.37f) {
    float row[2] = {0.0f, x};
    SoftmaxRows(row, 1, 2, 2);
    const float want = std::exp(x);
    EXPECT_NEAR(row[1], want, 2.5e-7f * want) << "x = " << x;
    EXPECT_EQ(row[0], 1.0f);
  }
}

// -inf (a causal mask) gives exactly 0; a NaN, +inf or a row of only -inf give NaN, as libtorch does.
TEST(SoftmaxRowsTest, InfinitiesAndNaNsAsLibtorch) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto rows = torch::tensor({0.5f, -kInf, 2.0f, -kInf,   //
                             1.0f, nan, 0.0f, 3.0f,      //
                             -kInf, -kInf, -kInf, -kInf,  //
                             1.0f, kInf, 0.0f, 2.0f})
                  .view({4, 4});
  const auto got = Softmaxed(rows);
  const auto want = torch::softmax(rows, -1);
  EXPECT_EQ(got[0][1].item<float>(), 0.0f);
  EXPECT_EQ(got[0][3].item<float>(), 0.0f);
  EXPECT_NEAR(got[0][0].item<float>(), want[0][0].item<float>(), 1e-7);
  for (int row = 1; row < 4; ++row) {
    EXPECT_TRUE(got[row].isnan().all().item<bool>()) << "row " << row;
    EXPECT_TRUE(want[row].isnan().all().item<bool>()) << "row " << row;
  }
}

// A row's stride leaves the values between rows alone.
TEST(SoftmaxRowsTest, LeavesTheGapBetweenRowsAlone) {
  auto wide = torch::randn({3, 40});
  const auto before = wide.clone();
  SoftmaxRows(wide.data_ptr<float>(), 3, 24, 40);
  EXPECT_TRUE(torch::equal(wide.narrow(1, 24, 16), before.narrow(1, 24, 16)));
  EXPECT_TRUE(torch::allclose(wide.narrow(1, 0, 24), torch::softmax(before.narrow(1, 0, 24), -1), 1e-6, 1e-7));
}

class AttendHeadTest : public ::testing::TestWithParam<GemmLibrary> {};

// One head read in place from a wider projection output (rows 3·width apart), with and without a
// causal mask, written into its columns of a wider output: libtorch's ops on the same rows.
TEST_P(AttendHeadTest, EqualsLibtorchsOpsOnStridedRows) {
  if (!HeadProducts::Available(GetParam())) GTEST_SKIP() << "no " << GemmLibraryName(GetParam()) << " here";
  torch::manual_seed(2);
  const int64_t queries = 19, depth = 8, width = 24;
  const auto qkv = torch::randn({queries, 3 * width});
  const auto q = qkv.narrow(1, depth, depth), k = qkv.narrow(1, width + depth, depth),
             v = qkv.narrow(1, 2 * width + depth, depth);
  const float scale = 0.35f;
  const auto mask = torch::full({queries, queries}, -kInf).triu(1);
  const HeadProducts products(GetParam());
  std::vector<float> scores(queries * queries);
  for (const bool masked : {false, true}) {
    auto out = torch::full({queries, width}, 7.0f);
    AttendHead(products, {q.data_ptr<float>(), q.stride(0)}, {k.data_ptr<float>(), k.stride(0)},
               {v.data_ptr<float>(), v.stride(0)}, queries, queries, depth, scale,
               masked ? mask.data_ptr<float>() : nullptr, scores.data(), out.data_ptr<float>() + depth, width);
    auto logits = at::matmul(q, k.t()) * scale;
    if (masked) logits = logits + mask;
    const auto want = at::matmul(logits.softmax(-1), v);
    EXPECT_TRUE(torch::allclose(out.narrow(1, depth, depth), want, 1e-5, 1e-5)) << (masked ? "masked" : "plain");
    EXPECT_TRUE((out.narrow(1, 0, depth) == 7.0f).all().item<bool>());
    EXPECT_TRUE((out.narrow(1, 2 * depth, width - 2 * depth) == 7.0f).all().item<bool>());
  }
}

INSTANTIATE_TEST_SUITE_P(BothLibraries, AttendHeadTest, ::testing::Values(GemmLibrary::kBlas, GemmLibrary::kOneDnn),
                         [](const ::testing::TestParamInfo<GemmLibrary>& info) {
                           return std::string(GemmLibraryName(info.param));
                         });

}  // namespace
}  // namespace anoclip::model
