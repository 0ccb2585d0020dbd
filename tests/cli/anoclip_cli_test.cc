// The `anoclip` command end to end, run as a subprocess: golden dumps, JSON, images,
// make-test-model, calibration, and bad input (clear one-line errors, exit 1 or 2).
#include <ATen/ATen.h>

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <tuple>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include "golden.h"
#include "io/state_dict.h"

namespace anoclip {
namespace {

using ::anoclip::testing::AllClose;
using ::anoclip::testing::CloseRelativeToMax;
using ::anoclip::testing::GoldenJson;
using ::anoclip::testing::GoldenTensor;

struct Result {
  int exit_code;
  std::string output;  // stdout
  std::string errors;  // stderr
};

// A directory of this test process (other build trees may run this test at the same time).
std::string Scratch() {
  static const ::anoclip::testing::ScopedTempDir dir;  // removed when the test program exits
  return dir.path().string();
}

std::string TempDir(const std::string& name) {
  const std::string dir = Scratch() + "/" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// Runs `anoclip ARGUMENTS` through the shell; `environment` is prefixed (e.g. "env -u X").
Result RunAnoclip(const std::string& arguments, const std::string& environment = "") {
  static int counter = 0;
  const std::string err_path = Scratch() + "/stderr_" + std::to_string(counter++);
  const std::string command =
      environment + " " + ::anoclip::testing::BinDir() + "/anoclip " + arguments + " 2>" + err_path;
  Result result{-1, "", ""};
  FILE* pipe = popen(command.c_str(), "r");
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

// stderr without the start-up BLAS line.
std::vector<std::string> ErrorLines(const Result& result) {
  std::vector<std::string> lines;
  std::istringstream in(result.errors);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("anoclip: BLAS", 0) != 0) lines.push_back(line);
  }
  return lines;
}

std::string Quote(const std::string& s) { return "'" + s + "'"; }
std::string Model() { return " --model " + ::anoclip::testing::TinyModelDir(); }
std::string Vocab() { return " --vocab " + ::anoclip::testing::VocabPath(); }
std::string Image(int k) { return ::anoclip::testing::TinyVitDir() + "/images/case" + std::to_string(k) + ".png"; }
std::string Golden() { return ::anoclip::testing::TinyVitDir() + "/golden.safetensors"; }
std::string TinyDetect() { return "detect" + Model() + Vocab(); }

std::vector<std::string> Keys(const nlohmann::ordered_json& json) {
  std::vector<std::string> keys;
  for (const auto& item : json.items()) keys.push_back(item.key());
  return keys;
}

std::set<std::string> Keys(const io::StateDict& dict) {
  std::set<std::string> keys;
  for (const auto& [key, tensor] : dict) keys.insert(key);
  return keys;
}

// A small random model (grid 4×4, D 16) with the vocabulary copied in.
std::string MakeSmallModel(const std::string& name, int seed) {
  const std::string dir = TempDir(name);
  std::ofstream(dir + "/config.json") << R"({"model_cfg": {"embed_dim": 16, "quick_gelu": true,
      "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
      "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}})";
  auto made = RunAnoclip("make-test-model --config " + dir + "/config.json --seed " + std::to_string(seed) +
                         " --out " + dir + "/model" + Vocab());
  EXPECT_EQ(made.exit_code, 0) << made.errors;
  return dir + "/model";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST(AnoclipCliTest, HelpAndUnknownCommands) {
  auto help = RunAnoclip("--help");
  EXPECT_EQ(help.exit_code, 0);
  for (const char* command : {"detect", "calibrate", "make-test-model", "bench"}) {
    EXPECT_NE(help.output.find(command), std::string::npos) << command;
  }
  auto bare = RunAnoclip("");
  EXPECT_EQ(bare.exit_code, 2);
  EXPECT_NE(bare.errors.find("usage: anoclip <command>"), std::string::npos);
  for (const char* command : {"detect", "calibrate", "make-test-model"}) {
    auto usage = RunAnoclip(std::string(command) + " --help");
    EXPECT_EQ(usage.exit_code, 0) << command;
    EXPECT_NE(usage.output.find(std::string("usage: anoclip ") + command), std::string::npos) << usage.output;
  }
  auto unknown = RunAnoclip("frobnicate");
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_NE(unknown.errors.find("unknown command \"frobnicate\""), std::string::npos) << unknown.errors;
}

// Cases 0 and 1 through `detect --dump --tta --json`: every dumped tensor, the image score, the
// TTA losses and the maximum pixel score against the reference.
TEST(AnoclipCliTest, DumpMatchesTheReferenceOnCasesZeroAndOne) {
  const auto& cases = GoldenJson()["cases"];
  for (int k : {0, 1}) {
    const auto& c = cases[k];
    const std::string name = c["case"];
    const std::string class_name = c["class"], kind = c["kind"];
    SCOPED_TRACE(name);
    const std::string dump_path = TempDir("dump" + std::to_string(k)) + "/dump.safetensors";
    auto result = RunAnoclip(TinyDetect() + " --image " + Image(k) + " --class " + Quote(class_name) + " --kind " +
                             kind + " --dump " + dump_path + " --json --tta --tta-noise " + Golden() + ":" + name +
                             "/tta_noise");
    ASSERT_EQ(result.exit_code, 0) << result.errors;
    auto dump = io::ReadSafetensors(dump_path);
    ASSERT_TRUE(dump.ok()) << dump.status();
    EXPECT_EQ(Keys(*dump), (std::set<std::string>{"input", "cls_embedding", "vv_tokens", "qkv_tokens", "patch_probs",
                                                  "anomaly_map", "text_features", "prompts", "tta_patch_probs",
                                                  "tta_anomaly_map"}));
    for (const auto& [key, tensor] : *dump) EXPECT_EQ(tensor.scalar_type(), at::kFloat) << key;
    const std::string text = "text/" + class_name + "/" + kind;
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

    auto json = nlohmann::ordered_json::parse(result.output);
    EXPECT_NEAR(json["image_score"].get<double>(), c["image_score_views1"].get<double>(), 1e-5);
    // The input is at model resolution, so the pixel map is the adapted map itself.
    EXPECT_NEAR(json["max_pixel_score"].get<double>(), GoldenTensor(name + "/tta_anomaly_map").max().item<double>(),
                2e-5);
    EXPECT_EQ(json["class"], class_name);
    EXPECT_EQ(json["kind"], kind);
    const auto& losses = c["tta_losses"];
    ASSERT_EQ(json["tta_losses"].size(), losses.size());
    for (size_t step = 0; step < losses.size(); ++step) {
      EXPECT_NEAR(json["tta_losses"][step].get<double>(), losses[step].get<double>(), 2e-6) << "step " << step;
    }
    EXPECT_FALSE(json.contains("regions")) << "no threshold, no regions";
    EXPECT_FALSE(json.contains("is_anomalous"));
  }
}

// Plain CLIP tokens (--mode clip) and the 22-view image score, with the kind from the class.
TEST(AnoclipCliTest, ClipModeAndTwentyTwoViews) {
  const auto& c = GoldenJson()["cases"][0];
  ASSERT_EQ(c["kind"], "object");
  const std::string dump_path = TempDir("clip") + "/dump.safetensors";
  auto result = RunAnoclip(TinyDetect() + " --image " + Image(0) + " --class " + Quote(c["class"]) +
                           " --mode clip --views 22 --json --dump " + dump_path);
  ASSERT_EQ(result.exit_code, 0) << result.errors;
  auto json = nlohmann::ordered_json::parse(result.output);
  EXPECT_EQ(json["kind"], "object");
  EXPECT_NEAR(json["image_score"].get<double>(), c["image_score_views22"].get<double>(), 1e-5);
  EXPECT_FALSE(json.contains("tta_losses"));
  auto dump = io::ReadSafetensors(dump_path);
  ASSERT_TRUE(dump.ok()) << dump.status();
  EXPECT_TRUE(AllClose(dump->at("patch_probs"), GoldenTensor("case0/qkv_patch_probs"), 1e-5));
  EXPECT_EQ(dump->count("tta_patch_probs"), 0u);
}

TEST(AnoclipCliTest, JsonHasTheKeysInOrderAndImagesAreAtTheInputSize) {
  const auto& c = GoldenJson()["cases"][2];
  const std::string dir = TempDir("json");
  auto result = RunAnoclip(TinyDetect() + " --image " + Image(2) + " --class " + Quote(c["class"]) +
                           " --threshold 0.5 --json --out " + dir + "/out");
  ASSERT_EQ(result.exit_code, 0) << result.errors;
  auto json = nlohmann::ordered_json::parse(result.output);
  EXPECT_EQ(Keys(json), (std::vector<std::string>{"image_score", "max_pixel_score", "class", "kind", "model",
                                                  "timings_ms", "regions", "is_anomalous"}));
  EXPECT_EQ(Keys(json["timings_ms"]), (std::vector<std::string>{"decode", "preprocess", "text", "encode", "tta",
                                                                "postprocess", "total"}));
  for (const auto& [key, value] : json["timings_ms"].items()) EXPECT_GE(value.get<double>(), 0.0) << key;
  // case2 is resized (INTER_AREA here, PIL in the reference), so the reference holds its input
  // only loosely and its scores not at all; cases 0 and 1 check the numbers.
  EXPECT_GT(json["image_score"].get<double>(), 0.0);
  EXPECT_LT(json["image_score"].get<double>(), 1.0);
  EXPECT_GE(json["max_pixel_score"].get<double>(), 0.0);
  EXPECT_LE(json["max_pixel_score"].get<double>(), 1.0);
  EXPECT_EQ(json["model"].get<std::string>().size(), 16u);

  int64_t region_area = 0;
  for (const auto& region : json["regions"]) {
    EXPECT_EQ(Keys(region), (std::vector<std::string>{"x", "y", "width", "height", "area", "peak", "mean"}));
    EXPECT_GT(region["peak"].get<double>(), 0.5);
    EXPECT_GT(region["mean"].get<double>(), 0.5);
    EXPECT_LE(region["x"].get<int>() + region["width"].get<int>(), 200);
    EXPECT_LE(region["y"].get<int>() + region["height"].get<int>(), 150);
    region_area += region["area"].get<int64_t>();
  }
  EXPECT_EQ(json["is_anomalous"].get<bool>(),
            json["image_score"].get<double>() > 0.5 || !json["regions"].empty());

  const std::map<std::string, int> channels = {{"heatmap.png", 1}, {"overlay.png", 3}, {"mask.png", 1}};
  for (const auto& [file, expected_channels] : channels) {
    cv::Mat image = cv::imread(dir + "/out/" + file, cv::IMREAD_UNCHANGED);
    ASSERT_FALSE(image.empty()) << file;
    EXPECT_EQ(image.cols, 200) << file;
    EXPECT_EQ(image.rows, 150) << file;
    EXPECT_EQ(image.channels(), expected_channels) << file;
  }
  // Uncalibrated heatmaps are raw scores on the fixed [0,1] scale: the brightest pixel is the max
  // pixel score times 255.
  cv::Mat heatmap = cv::imread(dir + "/out/heatmap.png", cv::IMREAD_UNCHANGED);
  double low = 0, high = 0;
  cv::minMaxLoc(heatmap, &low, &high);
  EXPECT_NEAR(high, 255 * json["max_pixel_score"].get<double>(), 0.5);
  EXPECT_GT(low, 0) << "raw scores near 0.5 do not reach the low end";
  // The mask is the regions, each filled to its outline: every region pixel, and nothing outside
  // the regions' boxes.
  cv::Mat mask = cv::imread(dir + "/out/mask.png", cv::IMREAD_UNCHANGED);
  EXPECT_GE(cv::countNonZero(mask), region_area);
  cv::Mat boxes(mask.size(), CV_8U, cv::Scalar(0));
  for (const auto& region : json["regions"]) {
    boxes(cv::Rect(region["x"].get<int>(), region["y"].get<int>(), region["width"].get<int>(),
                   region["height"].get<int>())) = 255;
  }
  EXPECT_EQ(cv::countNonZero(mask & ~boxes), 0);
  EXPECT_EQ(cv::countNonZero(mask == 255) + cv::countNonZero(mask == 0), 200 * 150) << "mask is 0/255";

  // --heatmap-scale stretched: each map over its own min..max (the old rendering, kept as an option).
  result = RunAnoclip(TinyDetect() + " --image " + Image(2) + " --class " + Quote(c["class"]) +
                      " --heatmap-scale stretched --out " + dir + "/stretched");
  ASSERT_EQ(result.exit_code, 0) << result.errors;
  heatmap = cv::imread(dir + "/stretched/heatmap.png", cv::IMREAD_UNCHANGED);
  cv::minMaxLoc(heatmap, &low, &high);
  EXPECT_EQ(low, 0);
  EXPECT_EQ(high, 255);
}

TEST(AnoclipCliTest, VocabularyComesFromTheEnvironmentWhenNotGiven) {
  auto found = RunAnoclip("detect" + Model() + " --image " + Image(0) + " --class bottle",
                          "env ANOCLIP_VOCAB=" + ::anoclip::testing::VocabPath());
  EXPECT_EQ(found.exit_code, 0) << found.errors;
  EXPECT_NE(found.output.find("image_score 0.479"), std::string::npos) << found.output;
  auto missing = RunAnoclip("detect" + Model() + " --image " + Image(0) + " --class bottle", "env -u ANOCLIP_VOCAB");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.errors.find("vocabulary bpe_simple_vocab_16e6.txt.gz not found"), std::string::npos)
      << missing.errors;
}

TEST(AnoclipCliTest, MakeTestModelIsSeededAndLoadsThroughDetect) {
  const std::string model = MakeSmallModel("made", 3);
  const std::string again = MakeSmallModel("made_again", 3);
  const std::string other = MakeSmallModel("made_other", 4);
  EXPECT_EQ(ReadFile(model + "/open_clip_model.safetensors"), ReadFile(again + "/open_clip_model.safetensors"));
  EXPECT_NE(ReadFile(model + "/open_clip_model.safetensors"), ReadFile(other + "/open_clip_model.safetensors"));
  auto config = nlohmann::json::parse(ReadFile(model + "/open_clip_config.json"));
  EXPECT_EQ(config["model_cfg"]["vision_cfg"]["image_size"], 32);
  EXPECT_TRUE(std::filesystem::exists(model + "/bpe_simple_vocab_16e6.txt.gz"));

  // No --vocab: the copy in the model directory is used.
  const std::string dump_path = Scratch() + "/made_dump.safetensors";
  auto detected = RunAnoclip("detect --model " + model + " --image " + Image(2) + " --class carpet --json --dump " +
                                 dump_path + " --out " + Scratch() + "/made_out",
                             "env -u ANOCLIP_VOCAB");
  ASSERT_EQ(detected.exit_code, 0) << detected.errors;
  auto json = nlohmann::json::parse(detected.output);
  EXPECT_EQ(json["kind"], "texture") << "carpet defaults to texture";
  EXPECT_GT(json["image_score"].get<double>(), 0.0);
  EXPECT_LT(json["image_score"].get<double>(), 1.0);
  auto dump = io::ReadSafetensors(dump_path);
  ASSERT_TRUE(dump.ok()) << dump.status();
  EXPECT_EQ(Keys(*dump), (std::set<std::string>{"input", "cls_embedding", "vv_tokens", "qkv_tokens", "patch_probs",
                                                "anomaly_map", "text_features", "prompts"}));
  EXPECT_EQ(dump->at("input").sizes(), at::IntArrayRef({3, 32, 32}));
  EXPECT_EQ(dump->at("cls_embedding").sizes(), at::IntArrayRef({16}));
  EXPECT_EQ(dump->at("vv_tokens").sizes(), at::IntArrayRef({16, 16}));
  EXPECT_EQ(dump->at("qkv_tokens").sizes(), at::IntArrayRef({16, 16}));
  EXPECT_EQ(dump->at("patch_probs").sizes(), at::IntArrayRef({16}));
  EXPECT_EQ(dump->at("anomaly_map").sizes(), at::IntArrayRef({32, 32}));
  EXPECT_EQ(dump->at("text_features").sizes(), at::IntArrayRef({2, 16}));
  EXPECT_EQ(dump->at("prompts").size(1), 16);
  cv::Mat overlay = cv::imread(Scratch() + "/made_out/overlay.png", cv::IMREAD_UNCHANGED);
  EXPECT_EQ(overlay.cols, 200);
  EXPECT_EQ(overlay.rows, 150);
  EXPECT_FALSE(std::filesystem::exists(Scratch() + "/made_out/mask.png")) << "no threshold, no mask";
}

// Writes `count` defect-free-looking images (smooth colour, slight noise) into `dir`.
void WriteNormalImages(const std::string& dir, int count) {
  std::filesystem::create_directories(dir);
  cv::RNG rng(7);
  for (int i = 0; i < count; ++i) {
    cv::Mat image(48, 64, CV_8UC3, cv::Scalar(90 + i * 3, 120, 140));
    cv::Mat noise(image.size(), CV_8UC3);
    rng.fill(noise, cv::RNG::UNIFORM, 0, 8);
    image += noise;
    char name[32];
    std::snprintf(name, sizeof(name), "/n%02d.png", i);
    ASSERT_TRUE(cv::imwrite(dir + name, image));
  }
}

// `bench --parts batches`: the forward per image at each batch size, and the fastest named.
TEST(AnoclipCliTest, BenchTimesEachBatchSizeAndNamesTheFastest) {
  auto result = RunAnoclip("bench" + Model() + Vocab() + " --runs 3 --parts batches --json");
  ASSERT_EQ(result.exit_code, 0) << result.errors;
  const auto json = nlohmann::ordered_json::parse(result.output);
  double fastest_seconds = 1e30;
  int64_t fastest = 0;
  for (const int64_t batch : {1, 2, 4, 8, 12, 16}) {
    const std::string key = "batches.anoclip.b" + std::to_string(batch);
    ASSERT_TRUE(json.contains(key)) << key;
    const double seconds = json[key].get<double>();
    EXPECT_GT(seconds, 0.0) << key;
    if (seconds < fastest_seconds) fastest_seconds = seconds, fastest = batch;
  }
  EXPECT_EQ(json["batches.fastest"].get<int64_t>(), fastest);
  EXPECT_FALSE(json.contains("vision.anoclip.b1"));  // only the parts asked for
}

// `bench --parts vision`: both towers' modes at batch 1 and 8 with the GEMM rate beside them, and
// the efficiency and batch ratios computed from those same figures.
TEST(AnoclipCliTest, BenchVisionReportsRatesAndRatiosOfOneRun) {
  auto result = RunAnoclip("bench" + Model() + Vocab() + " --runs 3 --parts vision --json");
  ASSERT_EQ(result.exit_code, 0) << result.errors;
  const auto json = nlohmann::ordered_json::parse(result.output);
  for (const std::string b : {".b1", ".b8"}) {
    const double clip = json["vision.clip" + b].get<double>(), anoclip = json["vision.anoclip" + b].get<double>();
    EXPECT_GT(clip, 0.0) << b;
    EXPECT_GT(anoclip, 0.0) << b;
    EXPECT_NEAR(json["ratio.anoclip_over_clip" + b].get<double>(), anoclip / clip, 1e-9) << b;
    const double gflops = json["vision.anoclip.gflop_per_image"].get<double>() / anoclip;
    EXPECT_NEAR(json["vision.anoclip.gflops" + b].get<double>(), gflops, 1e-6 * gflops) << b;
    // The best product rate is the largest of the libraries' and names its library.
    const std::string library = json["sgemm_library" + b].get<std::string>();
    const double best = json["sgemm_gflops" + b].get<double>();
    EXPECT_GT(best, 0.0) << b;
    EXPECT_EQ(json["sgemm_gflops." + library + b].get<double>(), best) << b;
    int libraries = 0;
    for (const auto& [key, value] : json.items()) {
      const bool library_rate = key.rfind("sgemm_gflops.", 0) == 0 && key != "sgemm_gflops" + b &&
                                key.size() > b.size() && key.compare(key.size() - b.size(), b.size(), b) == 0;
      if (!library_rate) continue;
      ++libraries;
      EXPECT_LE(value.get<double>(), best) << key;
    }
    EXPECT_EQ(libraries, 3) << b;  // the BLAS, oneDNN's sgemm and the engine's primitive
    EXPECT_NEAR(json["ratio.anoclip_over_sgemm" + b].get<double>(), gflops / best, 1e-6 * gflops / best) << b;
  }
  EXPECT_NEAR(json["ratio.anoclip_b8_over_b1"].get<double>(),
              json["vision.anoclip.b8"].get<double>() / json["vision.anoclip.b1"].get<double>(), 1e-9);
  // The largest product's shape: its rows grow with the batch, its depth and width do not.
  const auto shape = [&](const std::string& key) {
    int64_t m = 0, k = 0, n = 0;
    EXPECT_EQ(std::sscanf(json[key].get<std::string>().c_str(), "%ldx%ldx%ld", &m, &k, &n), 3) << key;
    return std::make_tuple(m, k, n);
  };
  const auto [m1, k1, n1] = shape("sgemm_shape.b1");
  const auto [m8, k8, n8] = shape("sgemm_shape.b8");
  EXPECT_EQ(m8, 8 * m1);
  EXPECT_EQ(k8, k1);
  EXPECT_EQ(n8, n1);
  EXPECT_FALSE(json.contains("tta.b1"));  // only the parts asked for
}

TEST(AnoclipCliTest, CalibrateThenDetectWithTheCalibration) {
  const std::string model = MakeSmallModel("calib", 5);
  const std::string dir = TempDir("calibration");
  const std::string normal = dir + "/normal";
  WriteNormalImages(normal, 6);
  std::ofstream(normal + "/notes.txt") << "not an image, ignored";
  const std::string calibration_path = dir + "/bottle.json";
  auto calibrated = RunAnoclip("calibrate --model " + model + " --class bottle --normal-dir " + normal + " --out " +
                               calibration_path);
  ASSERT_EQ(calibrated.exit_code, 0) << calibrated.errors;
  EXPECT_NE(calibrated.output.find("on 6 normal images"), std::string::npos) << calibrated.output;
  auto saved = nlohmann::json::parse(ReadFile(calibration_path));
  EXPECT_EQ(saved["class"], "bottle");

  // A normal image scores below the decision point; the heatmap is drawn on [0,1].
  auto normal_result = RunAnoclip("detect --model " + model + " --image " + normal + "/n02.png --class bottle --json" +
                                  " --calibration " + calibration_path + " --out " + dir + "/out");
  ASSERT_EQ(normal_result.exit_code, 0) << normal_result.errors;
  auto json = nlohmann::ordered_json::parse(normal_result.output);
  EXPECT_EQ(Keys(json), (std::vector<std::string>{"image_score", "max_pixel_score", "class", "kind", "model",
                                                  "timings_ms", "calibrated_image_score", "regions",
                                                  "is_anomalous"}));
  EXPECT_LT(json["calibrated_image_score"].get<double>(), 0.5);
  EXPECT_GE(json["calibrated_image_score"].get<double>(), 0.0);
  EXPECT_EQ(json["is_anomalous"].get<bool>(), !json["regions"].empty());
  for (const auto& region : json["regions"]) EXPECT_GT(region["peak"].get<double>(), 0.5);
  for (const char* file : {"heatmap.png", "overlay.png", "mask.png"}) {
    cv::Mat image = cv::imread(dir + "/out/" + file, cv::IMREAD_UNCHANGED);
    EXPECT_EQ(image.cols, 64) << file;
    EXPECT_EQ(image.rows, 48) << file;
  }

  // An unrelated image: still a valid calibrated score.
  auto other_image = RunAnoclip("detect --model " + model + " --image " + Image(0) +
                                " --class bottle --json --calibration " + calibration_path);
  ASSERT_EQ(other_image.exit_code, 0) << other_image.errors;
  auto other_json = nlohmann::json::parse(other_image.output);
  EXPECT_GE(other_json["calibrated_image_score"].get<double>(), 0.0);
  EXPECT_LE(other_json["calibrated_image_score"].get<double>(), 1.0);

  // A calibration belongs to one class and one model.
  auto other_class = RunAnoclip("detect --model " + model + " --image " + Image(0) + " --class carpet --calibration " +
                                calibration_path);
  EXPECT_EQ(other_class.exit_code, 1);
  EXPECT_NE(other_class.errors.find("calibration is for bottle/object, not carpet/texture"), std::string::npos)
      << other_class.errors;
  auto other_model = RunAnoclip(TinyDetect() + " --image " + Image(0) + " --class bottle --calibration " +
                                calibration_path);
  EXPECT_EQ(other_model.exit_code, 1);
  EXPECT_NE(other_model.errors.find("calibration was made with model"), std::string::npos) << other_model.errors;

  // With TTA (random noise, seeded) and 22 views the calibration also runs.
  auto with_tta = RunAnoclip("calibrate --model " + model + " --class bottle --normal-dir " + normal +
                             " --tta --tta-steps 2 --seed 1 --views 22 --out " + dir + "/tta.json");
  EXPECT_EQ(with_tta.exit_code, 0) << with_tta.errors;
}

TEST(AnoclipCliTest, CalibrateRefusesBadNormalDirectories) {
  const std::string model = MakeSmallModel("calib_bad", 5);
  const std::string dir = TempDir("calibration_bad");
  auto calibrate = [&](const std::string& normal) {
    return RunAnoclip("calibrate --model " + model + " --class bottle --normal-dir " + normal + " --out " + dir +
                      "/x.json");
  };
  std::filesystem::create_directories(dir + "/empty");
  WriteNormalImages(dir + "/four", 4);
  WriteNormalImages(dir + "/many", 51);
  WriteNormalImages(dir + "/corrupt", 5);
  std::ofstream(dir + "/corrupt/n03.png", std::ios::trunc) << "\x89PNG\r\n\x1a\n garbage";
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      {"empty", dir + "/empty", "holds 0 images; calibration needs 5 to 50"},
      {"too few", dir + "/four", "holds 4 images; calibration needs 5 to 50"},
      {"too many", dir + "/many", "holds 51 images; calibration needs 5 to 50"},
      {"missing", dir + "/nonexistent", "no directory"},
      {"unreadable image", dir + "/corrupt", "corrupt/n03.png: "},
  };
  for (const auto& [name, normal, message] : cases) {
    auto result = calibrate(normal);
    EXPECT_EQ(result.exit_code, 1) << name << ": " << result.errors;
    auto lines = ErrorLines(result);
    ASSERT_EQ(lines.size(), 1u) << name << ": " << result.errors;
    EXPECT_NE(lines[0].find(message), std::string::npos) << name << ": " << lines[0];
  }
  EXPECT_FALSE(std::filesystem::exists(dir + "/x.json"));
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

// Runtime failures: exit 1, one line naming the problem.
TEST(AnoclipCliTest, BadFilesGetAClearErrorAndExitOne) {
  const std::string zero_image = Scratch() + "/zero.png";
  std::ofstream(zero_image).close();
  const std::string garbage_image = Scratch() + "/garbage.png";
  std::ofstream(garbage_image) << "this is not an image";
  const std::string corrupt_calibration = Scratch() + "/corrupt_calibration.json";
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
      ASSERT_TRUE(weights.ok()) << weights.status();
      io::StateDict copy;
      for (const auto& [key, tensor] : *weights) copy[key] = tensor.clone();
      edit(copy);
      ASSERT_TRUE(io::WriteSafetensors(dir + "/open_clip_model.safetensors", copy).ok());
    });
  };
  const std::string missing_key = with_weights("missing_key", [](io::StateDict& w) { w.erase("visual.proj"); });
  const std::string wrong_shape =
      with_weights("wrong_shape", [](io::StateDict& w) { w["ln_final.weight"] = at::ones({7}); });
  const std::string wrong_noise = Scratch() + "/wrong_noise.safetensors";
  ASSERT_TRUE(io::WriteSafetensors(wrong_noise, {{"delta", at::zeros({3, 32})}}).ok());

  auto detect_with = [](const std::string& model) {
    return "detect --model " + model + Vocab() + " --class bottle --image " + Image(0);
  };
  const std::string detect = TinyDetect() + " --class bottle";
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      {"truncated weights", detect_with(truncated), "does not fit"},
      {"corrupt config", detect_with(corrupt_config), "not a JSON object"},
      {"missing key", detect_with(missing_key), "missing: visual.proj"},
      {"wrong shape", detect_with(wrong_shape), "wrong shape: ln_final.weight"},
      {"missing model dir", detect_with(Scratch() + "/no_model"), "no_model"},
      {"missing vocabulary", "detect" + Model() + " --vocab /nonexistent/vocab.txt.gz --class bottle --image " + Image(0),
       "vocabulary"},
      {"unreadable image", detect + " --image /nonexistent.png", "cannot read image /nonexistent.png"},
      {"zero-size image", detect + " --image " + zero_image, "zero.png: image is empty"},
      {"garbage image", detect + " --image " + garbage_image, "garbage.png: "},
      {"corrupt calibration", detect + " --image " + Image(0) + " --calibration " + corrupt_calibration,
       "not a JSON object"},
      {"missing calibration", detect + " --image " + Image(0) + " --calibration /nonexistent.json", "nonexistent.json"},
      {"missing noise key", detect + " --image " + Image(0) + " --tta --tta-noise " + Golden() + ":case9/tta_noise",
       "no tensor case9/tta_noise"},
      {"wrong noise shape", detect + " --image " + Image(0) + " --tta --tta-noise " + wrong_noise + ":delta",
       "must be [100,32]"},
      {"absent device", detect + " --image " + Image(0) + " --device cuda:7", "cuda:7"},
      {"unwritable out", detect + " --image " + Image(0) + " --out /proc/anoclip_out", "cannot create /proc/anoclip_out"},
      {"make-test-model corrupt config", "make-test-model --seed 1 --out " + Scratch() + "/m --config " +
                                             corrupt_config + "/open_clip_config.json",
       "not a JSON object"},
  };
  for (const auto& [name, arguments, message] : cases) {
    auto result = RunAnoclip(arguments);
    EXPECT_EQ(result.exit_code, 1) << name << ": " << result.errors;
    auto lines = ErrorLines(result);
    ASSERT_EQ(lines.size(), 1u) << name << ": " << result.errors;
    EXPECT_EQ(lines[0].rfind("anoclip ", 0), 0u) << name << ": " << lines[0];
    EXPECT_NE(lines[0].find(message), std::string::npos) << name << ": " << lines[0];
    EXPECT_TRUE(result.output.empty()) << name << ": " << result.output;
  }
}

// Mistakes on the command line: exit 2, one line, before any file is read (the model path
// here does not exist, so reaching it would be a runtime error instead).
TEST(AnoclipCliTest, UsageErrorsExitTwo) {
  const std::string detect = "detect --model /nonexistent --image /nonexistent.png --class bottle";
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      {"unknown flag", detect + " --no-such-flag", "unknown flag --no-such-flag"},
      {"flag without value", detect + " --views", "--views needs a value"},
      {"stray word", detect + " extra", "unexpected argument \"extra\""},
      {"missing class", "detect --model /nonexistent --image x.png", "--class is required"},
      {"missing image", "detect --model /nonexistent --class bottle", "--image is required"},
      {"missing model", "detect --image x.png --class bottle", "--model is required"},
      {"unknown kind", detect + " --kind liquid", "unknown kind"},
      {"threshold out of range", detect + " --threshold 1.5", "threshold must be inside"},
      {"threshold not a number", detect + " --threshold high", "--threshold must be a number"},
      {"threshold and calibration", detect + " --threshold 0.5 --calibration c.json", "not both"},
      {"views", detect + " --views 7", "--views must be 1 or 22"},
      {"mode", detect + " --mode vit", "--mode must be anoclip or clip"},
      {"device", detect + " --device tpu", "--device must be cpu or cuda:N"},
      {"dtype", detect + " --dtype int8", "--dtype must be float32, float16 or bfloat16"},
      {"threads", detect + " --threads -1", "--threads must be an integer in 0..1024"},
      {"tta steps", detect + " --tta --tta-steps 0", "--tta-steps must be an integer in 1..100"},
      {"tta lr", detect + " --tta --tta-lr -1", "--tta-lr must be positive"},
      {"tta init", detect + " --tta --tta-init zeros", "--tta-init must be text or random"},
      {"tta flag without tta", detect + " --tta-steps 3", "--tta-steps needs --tta"},
      {"tta noise format", detect + " --tta --tta-noise file.safetensors", "--tta-noise must be FILE.safetensors:KEY"},
      {"min region area", detect + " --min-region-area 0", "--min-region-area must be an integer >= 1"},
      {"heatmap scale", detect + " --heatmap-scale log", "--heatmap-scale must be fixed or stretched"},
      {"calibrate without out", "calibrate --model /nonexistent --class bottle --normal-dir /tmp", "--out is required"},
      {"make-test-model without seed", "make-test-model --arch ViT-B-32 --out /nonexistent/m", "--seed is required"},
      {"make-test-model both sources", "make-test-model --arch ViT-B-32 --config c.json --seed 1 --out /x",
       "give one of --arch or --config"},
      {"make-test-model unknown arch", "make-test-model --arch ViT-Z-99 --seed 1 --out /nonexistent/m", "ViT-Z-99"},
      {"make-test-model bin format", "make-test-model --arch ViT-B-32 --seed 1 --out /nonexistent/m --format bin",
       "only safetensors"},
  };
  for (const auto& [name, arguments, message] : cases) {
    auto result = RunAnoclip(arguments);
    EXPECT_EQ(result.exit_code, 2) << name << ": " << result.errors;
    auto lines = ErrorLines(result);
    ASSERT_EQ(lines.size(), 1u) << name << ": " << result.errors;
    EXPECT_NE(lines[0].find(message), std::string::npos) << name << ": " << lines[0];
  }
}

}  // namespace
}  // namespace anoclip
