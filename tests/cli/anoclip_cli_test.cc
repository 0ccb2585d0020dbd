// The `anoclip` command end to end: golden dumps, JSON, images, calibration and bad input.
#include <ATen/ATen.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "golden.h"
#include "io/state_dict.h"

namespace anoclip {
namespace {

using ::anoclip::testing::AllClose;
using ::anoclip::testing::CloseRelativeToMax;
using ::anoclip::testing::GoldenTensor;

struct Result {
  int exit_code;
  std::string output;  // stdout
  std::string errors;  // stderr
};

Result RunAnoclip(const std::string& arguments) {
  static int counter = 0;
  const std::string err_path = ::testing::TempDir() + "/stderr_" + std::to_string(counter++);
  const std::string command = ::anoclip::testing::BinDir() + "/anoclip " + arguments + " 2>" + err_path;
  FILE* pipe = popen(command.c_str(), "r");
  Result result{-1, "", ""};
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream err(err_path);
  result.errors.assign(std::istreambuf_iterator<char>(err), std::istreambuf_iterator<char>());
  return result;
}

std::string Model() { return " --model " + ::anoclip::testing::TinyModelDir(); }
std::string Vocab() { return " --vocab " + ::anoclip::testing::VocabPath(); }
std::string Image(int k) { return ::anoclip::testing::TinyVitDir() + "/images/case" + std::to_string(k) + ".png"; }
std::string Quote(const std::string& s) { return "'" + s + "'"; }

std::string TempDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/cli_" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

TEST(AnoclipCliTest, DumpMatchesTheReferenceOnCasesZeroAndOne) {
  const auto& cases = ::anoclip::testing::GoldenJson()["cases"];
  for (int k : {0, 1}) {
    const auto& c = cases[k];
    const std::string name = c["case"];
    SCOPED_TRACE(name);
    const std::string dir = TempDir("dump" + std::to_string(k));
    const std::string golden = ::anoclip::testing::TinyVitDir() + "/golden.safetensors";
    auto result = RunAnoclip("detect" + Model() + Vocab() + " --image " + Image(k) + " --class " +
                      Quote(c["class"]) + " --kind " + c["kind"].get<std::string>() + " --dump " + dir +
                      "/dump.safetensors --tta --tta-noise " + golden + ":" + name + "/tta_noise");
    ASSERT_EQ(result.exit_code, 0) << result.errors;
    auto dump = io::ReadSafetensors(dir + "/dump.safetensors");
    ASSERT_TRUE(dump.ok()) << dump.status();
    const std::string text = "text/" + c["class"].get<std::string>() + "/" + c["kind"].get<std::string>();
    EXPECT_TRUE(AllClose(dump->at("input"), GoldenTensor(name + "/input"), 1e-5));
    EXPECT_TRUE(CloseRelativeToMax(dump->at("cls_embedding"), GoldenTensor(name + "/cls_embedding")));
    EXPECT_TRUE(CloseRelativeToMax(dump->at("vv_tokens"), GoldenTensor(name + "/vv_tokens")));
    EXPECT_TRUE(CloseRelativeToMax(dump->at("qkv_tokens"), GoldenTensor(name + "/qkv_tokens")));
    EXPECT_TRUE(AllClose(dump->at("patch_probs"), GoldenTensor(name + "/patch_probs"), 1e-5));
    EXPECT_TRUE(AllClose(dump->at("anomaly_map"), GoldenTensor(name + "/anomaly_map"), 1e-5));
    EXPECT_TRUE(CloseRelativeToMax(dump->at("text_features"), GoldenTensor(text + "/features")));
    EXPECT_TRUE(CloseRelativeToMax(dump->at("prompts"), GoldenTensor(text + "/prompts")));
    EXPECT_TRUE(AllClose(dump->at("tta_patch_probs"), GoldenTensor(name + "/tta_patch_probs"), 2e-5));
    EXPECT_TRUE(AllClose(dump->at("tta_anomaly_map"), GoldenTensor(name + "/tta_anomaly_map"), 2e-5));
  }
}

TEST(AnoclipCliTest, JsonHasTheKeysInOrderAndImagesAreAtTheInputSize) {
  const auto& c = ::anoclip::testing::GoldenJson()["cases"][2];
  const std::string dir = TempDir("json");
  auto result = RunAnoclip("detect" + Model() + Vocab() + " --image " + Image(2) + " --class " + Quote(c["class"]) +
                    " --views 22 --threshold 0.5 --json --out " + dir);
  ASSERT_EQ(result.exit_code, 0) << result.errors;
  auto json = nlohmann::ordered_json::parse(result.output);
  std::vector<std::string> keys;
  for (const auto& item : json.items()) keys.push_back(item.key());
  ASSERT_GE(keys.size(), 6u);
  EXPECT_EQ(std::vector<std::string>(keys.begin(), keys.begin() + 6),
            (std::vector<std::string>{"image_score", "max_pixel_score", "class", "kind", "model", "timings_ms"}));
  EXPECT_NEAR(json["image_score"].get<double>(), c["image_score_views22"].get<double>(), 1e-3);
  EXPECT_TRUE(json.contains("regions"));
  EXPECT_TRUE(json.contains("is_anomalous"));
  for (const char* file : {"heatmap.png", "overlay.png", "mask.png"}) {
    cv::Mat image = cv::imread(dir + "/" + file, cv::IMREAD_UNCHANGED);
    ASSERT_FALSE(image.empty()) << file;
    EXPECT_EQ(image.cols, 200) << file;
    EXPECT_EQ(image.rows, 150) << file;
  }
}

TEST(AnoclipCliTest, MakeTestModelThenDetectAndCalibrate) {
  const std::string dir = TempDir("made");
  std::ofstream(dir + "/config.json") << R"({"model_cfg": {"embed_dim": 16, "quick_gelu": true,
      "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
      "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}})";
  auto made = RunAnoclip("make-test-model --config " + dir + "/config.json --seed 3 --out " + dir + "/model" + Vocab());
  ASSERT_EQ(made.exit_code, 0) << made.errors;
  auto detected = RunAnoclip("detect --model " + dir + "/model --image " + Image(0) + " --class bottle --json");
  ASSERT_EQ(detected.exit_code, 0) << detected.errors;
  auto json = nlohmann::json::parse(detected.output);
  EXPECT_GT(json["image_score"].get<double>(), 0.0);
  EXPECT_LT(json["image_score"].get<double>(), 1.0);

  // Calibrate on generated "normal" images, then detect with the calibration.
  const std::string normal = dir + "/normal";
  std::filesystem::create_directories(normal);
  for (int i = 0; i < 6; ++i) {
    cv::Mat image(48, 48, CV_8UC3, cv::Scalar(90 + i * 5, 120, 140));
    cv::imwrite(normal + "/n" + std::to_string(i) + ".png", image);
  }
  auto calibrated = RunAnoclip("calibrate --model " + dir + "/model --class bottle --normal-dir " + normal +
                        " --out " + dir + "/bottle.json");
  ASSERT_EQ(calibrated.exit_code, 0) << calibrated.errors;
  auto with_calibration = RunAnoclip("detect --model " + dir + "/model --image " + Image(0) +
                              " --class bottle --json --calibration " + dir + "/bottle.json");
  ASSERT_EQ(with_calibration.exit_code, 0) << with_calibration.errors;
  auto calibrated_json = nlohmann::json::parse(with_calibration.output);
  EXPECT_TRUE(calibrated_json.contains("calibrated_image_score"));
  EXPECT_TRUE(calibrated_json.contains("is_anomalous"));
  EXPECT_TRUE(calibrated_json.contains("regions"));
  // A calibration from another class is refused.
  auto other = RunAnoclip("detect --model " + dir + "/model --image " + Image(0) + " --class carpet --calibration " +
                   dir + "/bottle.json");
  EXPECT_EQ(other.exit_code, 1);
  EXPECT_NE(other.errors.find("calibration is for bottle"), std::string::npos) << other.errors;
  // Too few normal images.
  std::filesystem::remove(normal + "/n0.png");
  std::filesystem::remove(normal + "/n1.png");
  auto few = RunAnoclip("calibrate --model " + dir + "/model --class bottle --normal-dir " + normal + " --out " + dir + "/x.json");
  EXPECT_EQ(few.exit_code, 1);
  EXPECT_NE(few.errors.find("calibration needs 5 to 50"), std::string::npos) << few.errors;
}

// A model directory with one file replaced or broken.
std::string BrokenModel(const std::string& name, const std::function<void(const std::string&)>& breaker) {
  const std::string dir = TempDir(name);
  for (const char* file : {"open_clip_config.json", "open_clip_model.safetensors"}) {
    std::filesystem::copy_file(::anoclip::testing::TinyModelDir() + "/" + file, dir + "/" + file);
  }
  breaker(dir);
  return dir;
}

TEST(AnoclipCliTest, BadInputGetsAClearErrorAndANonZeroExit) {
  const std::string empty_dir = TempDir("empty_normal");
  const std::string zero_image = ::testing::TempDir() + "/zero.png";
  std::ofstream(zero_image).close();
  const std::string corrupt_calibration = ::testing::TempDir() + "/corrupt_calibration.json";
  std::ofstream(corrupt_calibration) << "{\"format_version\": 1, \"class\": ";
  const std::string truncated = BrokenModel("truncated", [](const std::string& dir) {
    std::filesystem::resize_file(dir + "/open_clip_model.safetensors", 4000);
  });
  const std::string corrupt_config = BrokenModel("config", [](const std::string& dir) {
    std::ofstream(dir + "/open_clip_config.json", std::ios::trunc) << "{\"model_cfg\": [";
  });
  auto with_weights = [](const std::string& name, const std::function<void(io::StateDict&)>& edit) {
    return BrokenModel(name, [edit](const std::string& dir) {
      auto weights = io::ReadSafetensors(::anoclip::testing::TinyModelDir() + "/open_clip_model.safetensors");
      io::StateDict copy;
      for (const auto& [key, tensor] : *weights) copy[key] = tensor.clone();
      edit(copy);
      ASSERT_TRUE(io::WriteSafetensors(dir + "/open_clip_model.safetensors", copy).ok());
    });
  };
  const std::string missing_key = with_weights("missing_key", [](io::StateDict& w) { w.erase("visual.proj"); });
  const std::string wrong_shape = with_weights("wrong_shape", [](io::StateDict& w) { w["ln_final.weight"] = at::ones({7}); });

  const std::string detect = "detect" + Vocab() + " --class bottle --image " + Image(0);
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      {"truncated weights", "detect --model " + truncated + Vocab() + " --class bottle --image " + Image(0), "does not fit"},
      {"corrupt config", "detect --model " + corrupt_config + Vocab() + " --class bottle --image " + Image(0), "not a JSON object"},
      {"missing key", "detect --model " + missing_key + Vocab() + " --class bottle --image " + Image(0), "missing: visual.proj"},
      {"wrong shape", "detect --model " + wrong_shape + Vocab() + " --class bottle --image " + Image(0), "wrong shape: ln_final.weight"},
      {"missing vocabulary", "detect" + Model() + " --vocab /nonexistent/vocab.txt.gz --class bottle --image " + Image(0), "vocabulary"},
      {"unreadable image", detect + Model() + " --image /nonexistent.png", "cannot read image"},
      {"zero-size image", "detect" + Model() + Vocab() + " --class bottle --image " + zero_image, "image is empty"},
      {"unknown kind", detect + Model() + " --kind liquid", "unknown kind"},
      {"threshold out of range", detect + Model() + " --threshold 1.5", "threshold must be inside"},
      {"corrupt calibration", detect + Model() + " --calibration " + corrupt_calibration, "not a JSON object"},
      {"empty normal dir", "calibrate" + Model() + Vocab() + " --class bottle --normal-dir " + empty_dir + " --out /tmp/x.json", "holds 0 images"},
  };
  for (const auto& [name, arguments, message] : cases) {
    auto result = RunAnoclip(arguments);
    EXPECT_EQ(result.exit_code, 1) << name << ": " << result.errors;
    EXPECT_NE(result.errors.find(message), std::string::npos) << name << ": " << result.errors;
  }
  auto usage = RunAnoclip("detect --no-such-flag");
  EXPECT_EQ(usage.exit_code, 2);
  EXPECT_NE(usage.errors.find("unknown flag --no-such-flag"), std::string::npos);
  EXPECT_EQ(RunAnoclip("frobnicate").exit_code, 2);
}

}  // namespace
}  // namespace anoclip
