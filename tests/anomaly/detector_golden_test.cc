// The engine against the reference implementation's outputs on the tiny seeded model.
#include <torch/torch.h>

#include <gtest/gtest.h>

#include "anomaly/detector.h"
#include "anomaly/scorer.h"
#include "model/linear.h"
#include "golden.h"

namespace anoclip::anomaly {
namespace {

using ::anoclip::testing::AllClose;
using ::anoclip::testing::CloseRelativeToMax;
using ::anoclip::testing::GoldenJson;
using ::anoclip::testing::GoldenTensor;

class DetectorGoldenTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    DetectorOptions options;
    options.model_dir = ::anoclip::testing::TinyModelDir();
    options.vocab_path = ::anoclip::testing::VocabPath();
    auto detector = Detector::Create(options);
    ASSERT_TRUE(detector.ok()) << detector.status();
    detector_ = std::move(detector).value().release();
  }
  static void TearDownTestSuite() {
    delete detector_;
    detector_ = nullptr;
  }

  static std::shared_ptr<const TextFeatures> Text(const std::string& class_name, const std::string& kind) {
    PromptSpec spec;
    spec.class_name = class_name;
    spec.kind = kind;
    auto text = detector_->EncodeText(spec);
    EXPECT_TRUE(text.ok()) << text.status();
    return std::make_shared<const TextFeatures>(std::move(text).value());
  }

  static Detection DetectCase(const nlohmann::json& c, DetectOptions options) {
    const std::string name = c["case"];
    auto input = GoldenTensor(name + "/input").unsqueeze(0);
    auto result = detector_->Detect(input, {Text(c["class"], c["kind"])}, {options});
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? result.value()[0] : Detection{};
  }

  // Golden case 0 with TTA and its tokens, on a detector loaded with --precision `precision`.
  static Detection DetectCase0WithPrecision(const std::string& precision) {
    DetectorOptions options;
    options.model_dir = ::anoclip::testing::TinyModelDir();
    options.vocab_path = ::anoclip::testing::VocabPath();
    options.precision = precision;
    // Reduced precision's products are oneDNN's. `auto` would time the libraries at load, and the
    // library chosen (for the whole process, the float32 detector's products included) then
    // depended on the machine's load: so did the adapted maps compared below.
    if (model::ParseGemmLibrary("onednn").ok()) options.gemm = "onednn";
    auto reduced = Detector::Create(options);
    EXPECT_TRUE(reduced.ok()) << reduced.status();
    if (!reduced.ok()) return {};
    const auto& c = GoldenJson()["cases"][0];
    DetectOptions detect;
    detect.keep_tokens = true;
    detect.tta = true;
    auto result = (*reduced)->Detect(GoldenTensor(std::string(c["case"]) + "/input").unsqueeze(0),
                                     {Text(c["class"], c["kind"])}, {detect});
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? result.value()[0] : Detection{};
  }

  static Detector* detector_;
};

Detector* DetectorGoldenTest::detector_ = nullptr;

TEST_F(DetectorGoldenTest, TextFeaturesAndPromptRowsMatchForEveryClass) {
  for (const auto& c : GoldenJson()["classes"]) {
    const std::string prefix = "text/" + c["class"].get<std::string>() + "/" + c["kind"].get<std::string>();
    auto text = Text(c["class"], c["kind"]);
    SCOPED_TRACE(prefix);
    EXPECT_EQ(text->prompts.size(0), 2 * c["prompts_per_state"].get<int64_t>());
    EXPECT_TRUE(CloseRelativeToMax(text->features, GoldenTensor(prefix + "/features")));
    EXPECT_TRUE(CloseRelativeToMax(text->prompts, GoldenTensor(prefix + "/prompts")));
  }
}

TEST_F(DetectorGoldenTest, TokensScoresAndHeatmapsMatchFedTheGoldenInput) {
  for (const auto& c : GoldenJson()["cases"]) {
    const std::string name = c["case"];
    SCOPED_TRACE(name);
    DetectOptions options;
    options.keep_tokens = true;
    auto d = DetectCase(c, options);
    EXPECT_TRUE(CloseRelativeToMax(d.cls_embedding, GoldenTensor(name + "/cls_embedding")));
    EXPECT_TRUE(CloseRelativeToMax(d.vv_tokens, GoldenTensor(name + "/vv_tokens")));
    EXPECT_TRUE(CloseRelativeToMax(d.qkv_tokens, GoldenTensor(name + "/qkv_tokens")));
    EXPECT_TRUE(AllClose(d.patch_probs, GoldenTensor(name + "/patch_probs"), 1e-5));
    EXPECT_TRUE(AllClose(d.anomaly_map, GoldenTensor(name + "/anomaly_map"), 1e-5));
    EXPECT_NEAR(d.image_score, c["image_score_views1"].get<double>(), 1e-5);
  }
}

TEST_F(DetectorGoldenTest, PlainClipBaselineMatchesQkvPatchProbs) {
  for (const auto& c : GoldenJson()["cases"]) {
    const std::string name = c["case"];
    SCOPED_TRACE(name);
    DetectOptions options;
    options.path = TokenPath::kPlainClip;
    auto d = DetectCase(c, options);
    EXPECT_TRUE(AllClose(d.patch_probs, GoldenTensor(name + "/qkv_patch_probs"), 1e-5));
    EXPECT_NEAR(d.image_score, c["image_score_views1"].get<double>(), 1e-5);
  }
}

TEST_F(DetectorGoldenTest, TwentyTwoViewImageScoreMatches) {
  for (const auto& c : GoldenJson()["cases"]) {
    SCOPED_TRACE(c["case"].get<std::string>());
    DetectOptions options;
    options.views = 22;
    auto d = DetectCase(c, options);
    EXPECT_NEAR(d.image_score, c["image_score_views22"].get<double>(), 1e-5);
  }
}

TEST_F(DetectorGoldenTest, TestTimeAdaptationMatchesWithGoldenNoise) {
  for (const auto& c : GoldenJson()["cases"]) {
    const std::string name = c["case"];
    SCOPED_TRACE(name);
    const auto noise = GoldenTensor(name + "/tta_noise");
    DetectOptions options;
    options.tta = true;
    options.tta_options.noise = [noise](int, int64_t, at::IntArrayRef) { return noise; };
    auto d = DetectCase(c, options);
    EXPECT_TRUE(AllClose(d.patch_probs, GoldenTensor(name + "/tta_patch_probs"), 2e-5));
    EXPECT_TRUE(AllClose(d.anomaly_map, GoldenTensor(name + "/tta_anomaly_map"), 2e-5));
    EXPECT_TRUE(AllClose(d.zero_shot_patch_probs, GoldenTensor(name + "/patch_probs"), 1e-5));
    const auto& losses = c["tta_losses"];
    ASSERT_EQ(d.tta_losses.size(), losses.size());
    for (size_t step = 0; step < losses.size(); ++step) {
      EXPECT_NEAR(d.tta_losses[step], losses[step].get<double>(), 2e-6) << "step " << step;
    }
    EXPECT_NEAR(d.image_score, c["image_score_views1"].get<double>(), 1e-5) << "TTA leaves the image score";
  }
}

TEST_F(DetectorGoldenTest, BatchedTtaEqualsOneImageAtATime) {
  // 8 images of mixed classes with random noise: batched and single results must agree.
  std::vector<at::Tensor> inputs;
  std::vector<std::shared_ptr<const TextFeatures>> texts;
  const auto& cases = GoldenJson()["cases"];
  for (int i = 0; i < 8; ++i) {
    const auto& c = cases[i % cases.size()];
    auto input = GoldenTensor(c["case"].get<std::string>() + "/input");
    inputs.push_back(i < 3 ? input : input.flip({-1 - (i % 2)}));
    texts.push_back(Text(c["class"], c["kind"]));
  }
  DetectOptions options;
  options.tta = true;
  options.tta_options.seed = 7;
  auto batched = detector_->Detect(torch::stack(inputs), texts, {options});
  ASSERT_TRUE(batched.ok()) << batched.status();
  for (int i = 0; i < 8; ++i) {
    auto single = detector_->Detect(inputs[i].unsqueeze(0), {texts[i]}, {options});
    ASSERT_TRUE(single.ok()) << single.status();
    EXPECT_TRUE(AllClose(batched.value()[i].patch_probs, single.value()[0].patch_probs, 1e-5)) << i;
    EXPECT_TRUE(AllClose(batched.value()[i].anomaly_map, single.value()[0].anomaly_map, 1e-5)) << i;
    EXPECT_NEAR(batched.value()[i].image_score, single.value()[0].image_score, 1e-5) << i;
  }
  // Same seed, same result; the adaptation changed something.
  auto again = detector_->Detect(inputs[0].unsqueeze(0), {texts[0]}, {options});
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(AllClose(again.value()[0].patch_probs, batched.value()[0].patch_probs, 1e-6));
  EXPECT_FALSE(AllClose(batched.value()[0].patch_probs, batched.value()[0].zero_shot_patch_probs, 0.0));
}

TEST_F(DetectorGoldenTest, RandomInitTtaIsDeterministicPerSeed) {
  const auto& c = GoldenJson()["cases"][0];
  DetectOptions options;
  options.tta = true;
  options.tta_options.init = TtaInit::kRandom;
  options.tta_options.seed = 3;
  auto a = DetectCase(c, options);
  auto b = DetectCase(c, options);
  EXPECT_TRUE(AllClose(a.patch_probs, b.patch_probs, 0.0));
  options.tta_options.seed = 4;
  auto other = DetectCase(c, options);
  EXPECT_FALSE(AllClose(a.patch_probs, other.patch_probs, 0.0));
}

TEST_F(DetectorGoldenTest, MixedClassBatchEqualsOneByOne) {
  std::vector<at::Tensor> inputs;
  std::vector<std::shared_ptr<const TextFeatures>> texts;
  for (const auto& c : GoldenJson()["cases"]) {
    inputs.push_back(GoldenTensor(c["case"].get<std::string>() + "/input"));
    texts.push_back(Text(c["class"], c["kind"]));
  }
  auto batched = detector_->Detect(torch::stack(inputs), texts, {DetectOptions{}});
  ASSERT_TRUE(batched.ok());
  for (size_t i = 0; i < inputs.size(); ++i) {
    auto single = detector_->Detect(inputs[i].unsqueeze(0), {texts[i]}, {DetectOptions{}});
    ASSERT_TRUE(single.ok());
    EXPECT_NEAR(batched.value()[i].image_score, single.value()[0].image_score, 1e-5);
    EXPECT_TRUE(AllClose(batched.value()[i].anomaly_map, single.value()[0].anomaly_map, 1e-5));
  }
}

double Correlation(const at::Tensor& a, const at::Tensor& b) {
  auto x = a.flatten().to(torch::kDouble) - a.mean().item<double>(), y = b.flatten().to(torch::kDouble) - b.mean().item<double>();
  return ((x * y).sum() / (x.norm() * y.norm())).item<double>();
}

TEST_F(DetectorGoldenTest, Bf16PrecisionFollowsFloat32) {
  const Detection d = DetectCase0WithPrecision("bf16");
  ASSERT_TRUE(d.anomaly_map.defined());
  const std::string name = GoldenJson()["cases"][0]["case"];
  // bfloat16 keeps 8 significant bits: tokens follow float32 to about 1% of their scale.
  EXPECT_GT(Correlation(d.vv_tokens, GoldenTensor(name + "/vv_tokens")), 0.999);
  EXPECT_GT(Correlation(d.cls_embedding, GoldenTensor(name + "/cls_embedding")), 0.999);
  const auto golden_vv = GoldenTensor(name + "/vv_tokens");
  EXPECT_TRUE(AllClose(d.vv_tokens, golden_vv, 5e-2 * golden_vv.abs().max().item<double>()));
  EXPECT_EQ(d.anomaly_map.sizes(), GoldenTensor(name + "/anomaly_map").sizes());
  EXPECT_TRUE(torch::isfinite(d.anomaly_map).all().item<bool>());

  DetectorOptions options;
  options.model_dir = ::anoclip::testing::TinyModelDir();
  options.vocab_path = ::anoclip::testing::VocabPath();
  options.precision = "int4";
  EXPECT_EQ(Detector::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(DetectorGoldenTest, Int8PrecisionFollowsFloat32) {
  const Detection d = DetectCase0WithPrecision("int8");
  ASSERT_TRUE(d.anomaly_map.defined());
  const std::string name = GoldenJson()["cases"][0]["case"];
  // int8 products keep about 1% of each row's scale per layer: tokens follow float32 closely
  // in direction, and the maps keep their shape.
  EXPECT_GT(Correlation(d.vv_tokens, GoldenTensor(name + "/vv_tokens")), 0.99);
  EXPECT_GT(Correlation(d.cls_embedding, GoldenTensor(name + "/cls_embedding")), 0.99);
  EXPECT_GT(Correlation(d.zero_shot_anomaly_map, GoldenTensor(name + "/anomaly_map")), 0.9);
  EXPECT_EQ(d.anomaly_map.sizes(), GoldenTensor(name + "/anomaly_map").sizes());
  EXPECT_TRUE(torch::isfinite(d.anomaly_map).all().item<bool>());
  // The int8 path really ran: its tokens are not float32's to the golden tolerance.
  EXPECT_FALSE(AllClose(d.vv_tokens, GoldenTensor(name + "/vv_tokens"), 1e-5));
  // The adapted map (its adapter mostly int8 where the CPU has int8 dot products) follows
  // float32's: the tiny model's 32-wide tokens round coarser than a ViT-B-16-plus-240's 640-wide
  // ones (bench: 0.9994).
  const auto& c = GoldenJson()["cases"][0];
  DetectOptions with_tta;
  with_tta.tta = true;
  auto fp32 = detector_->Detect(GoldenTensor(name + "/input").unsqueeze(0), {Text(c["class"], c["kind"])}, {with_tta});
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  EXPECT_GT(Correlation(d.anomaly_map, fp32.value()[0].anomaly_map), 0.98);  // 0.992 on a 2-core EPYC
}

TEST_F(DetectorGoldenTest, RejectsBadArguments) {
  auto text = Text("bottle", "object");
  auto wrong_size = detector_->Detect(torch::zeros({1, 3, 64, 64}), {text}, {DetectOptions{}});
  EXPECT_EQ(wrong_size.status().code(), absl::StatusCode::kInvalidArgument);
  auto missing_text = detector_->Detect(torch::zeros({2, 3, 80, 80}), {text}, {DetectOptions{}});
  EXPECT_EQ(missing_text.status().code(), absl::StatusCode::kInvalidArgument);
  DetectOptions views;
  views.views = 5;
  EXPECT_EQ(detector_->Detect(torch::zeros({1, 3, 80, 80}), {text}, {views}).status().code(),
            absl::StatusCode::kInvalidArgument);
  DetectOptions tta;
  tta.tta = true;
  tta.tta_options.steps = 0;
  EXPECT_EQ(detector_->Detect(torch::zeros({1, 3, 80, 80}), {text}, {tta}).status().code(),
            absl::StatusCode::kInvalidArgument);
  PromptSpec unknown_kind;
  unknown_kind.class_name = "bottle";
  unknown_kind.kind = "liquid";
  EXPECT_EQ(detector_->EncodeText(unknown_kind).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace anoclip::anomaly
