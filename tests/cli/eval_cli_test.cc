// `anoclip make-dataset` and `anoclip eval` end to end, as subprocesses, on small synthetic MVTec
// AD, VisA and folder datasets with the tiny reference model: the table, JSON, CSV, overlays and
// report.html (also rendered by headless Chromium when it is installed), --resume after a cut,
// calibration and threshold operating points, and every missing or unreadable file named.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include "eval/metrics.h"
#include "eval/results_store.h"
#include "test_util.h"

namespace anoclip {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

struct Result {
  int exit_code;
  std::string output, errors;
};

std::string Scratch() {
  static const ::anoclip::testing::ScopedTempDir dir;  // removed when the test program exits
  return dir.path().string();
}

Result Shell(const std::string& command) {
  static int counter = 0;
  const std::string err_path = Scratch() + "/stderr_" + std::to_string(counter++);
  Result result{-1, "", ""};
  FILE* pipe = popen((command + " 2>" + err_path).c_str(), "r");
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

Result Anoclip(const std::string& arguments) { return Shell(::anoclip::testing::BinDir() + "/anoclip " + arguments); }

std::string ModelFlags() {
  return "--model " + ::anoclip::testing::TinyModelDir() + " --vocab " + ::anoclip::testing::VocabPath();
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

nlohmann::json ReadJson(const std::string& path) { return nlohmann::json::parse(ReadText(path)); }

std::string MakeDataset(const std::string& layout, int classes, int images, int size, const std::string& name) {
  const std::string dir = Scratch() + "/" + name;
  const Result made = Anoclip("make-dataset --layout " + layout + " --out " + dir + " --classes " +
                              std::to_string(classes) + " --images " + std::to_string(images) + " --size " +
                              std::to_string(size) + " --seed 3");
  EXPECT_EQ(made.exit_code, 0) << made.errors;
  return dir;
}

size_t Count(const std::string& text, const std::string& needle) {
  size_t count = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++count;
  return count;
}

// Everything a finished run must hold, checked against its own per-image results.
void CheckReports(const std::string& out, const Result& run, const std::vector<std::string>& classes, int images,
                  int vis, bool pixel_metrics) {
  SCOPED_TRACE(out);
  // The table: the paper's columns, one row per class and the mean, also in metrics.md.
  EXPECT_THAT(run.output, HasSubstr("| class | pixel AUROC | pixel F1max | PRO | image AUROC | image F1max | "
                                    "image AUPR | images |"));
  EXPECT_EQ(ReadText(out + "/metrics.md"), run.output);
  const nlohmann::json json = ReadJson(out + "/metrics.json");
  ASSERT_EQ(json["classes"].size(), classes.size());
  const std::string csv = ReadText(out + "/metrics.csv");
  EXPECT_EQ(Count(csv, "\n"), classes.size() + 2);  // header, classes, mean
  EXPECT_EQ(csv.rfind("class,images,anomalous,pixel_auroc,pixel_f1max,pro,image_auroc,image_f1max,image_aupr,", 0), 0u);
  const std::string html = ReadText(out + "/report.html");
  double mean_image_auroc = 0;
  for (size_t c = 0; c < classes.size(); ++c) {
    const auto& entry = json["classes"][c];
    EXPECT_EQ(entry["class"], classes[c]);
    EXPECT_EQ(entry["images"], images);
    EXPECT_THAT(run.output, HasSubstr("| " + classes[c] + " | "));
    EXPECT_THAT(csv, HasSubstr("\n" + classes[c] + "," + std::to_string(images) + ","));
    EXPECT_THAT(html, HasSubstr("<h2>" + classes[c] + "</h2>"));
    // The stored per-image results give the same image AUROC as the report.
    auto results = eval::ReadResults(out + "/results/" + classes[c] + ".bin");
    ASSERT_TRUE(results.ok()) << results.status();
    ASSERT_EQ(results->size(), static_cast<size_t>(images));
    std::vector<float> scores;
    std::vector<uint8_t> labels;
    for (const auto& r : *results) scores.push_back(r.image_score), labels.push_back(r.anomalous);
    const auto recomputed = eval::ComputeBinaryMetrics(eval::RankScores(scores, labels));
    ASSERT_TRUE(recomputed.auroc.has_value());
    EXPECT_DOUBLE_EQ(entry["image_auroc"].get<double>(), *recomputed.auroc);
    mean_image_auroc += *recomputed.auroc / classes.size();
    for (const char* key : {"image_auroc", "image_f1max", "image_aupr", "image_ap"}) {
      EXPECT_GE(entry[key].get<double>(), 0.0) << key;
      EXPECT_LE(entry[key].get<double>(), 1.0) << key;
    }
    for (const char* key : {"pixel_auroc", "pixel_f1max", "pro", "pixel_ap"}) {
      if (pixel_metrics) {
        ASSERT_TRUE(entry[key].is_number()) << key;
        EXPECT_GE(entry[key].get<double>(), 0.0) << key;
        EXPECT_LE(entry[key].get<double>(), 1.0) << key;
      } else {
        EXPECT_TRUE(entry[key].is_null()) << key;
      }
    }
    size_t overlays = 0;
    for (const auto& file : fs::directory_iterator(out + "/vis/" + classes[c])) {
      EXPECT_EQ(file.path().extension(), ".png");
      ++overlays;
    }
    EXPECT_EQ(overlays, static_cast<size_t>(vis));
  }
  EXPECT_NEAR(json["mean"]["image_auroc"].get<double>(), mean_image_auroc, 1e-12);
  EXPECT_THAT(run.output, HasSubstr("| mean | "));
  EXPECT_EQ(json["settings"]["model"], "2ff71a3dcffeb53a");
  EXPECT_GT(json["timings_s"]["images_per_s"].get<double>(), 0.0);
  // report.html: self-contained, with curves, overlays and the settings.
  EXPECT_EQ(Count(html, "<svg"), 2 * classes.size());
  EXPECT_EQ(Count(html, "src=\"data:image/png;base64,"), classes.size() * vis);
  EXPECT_THAT(html, HasSubstr("2ff71a3dcffeb53a"));
  for (const char* remote : {"src=\"http", "href=\"http", "@import", "url(http"}) {
    EXPECT_THAT(html, ::testing::Not(HasSubstr(remote))) << remote;
  }
}

TEST(EvalCliTest, MvtecLayoutEndToEndAndTheSameScoresAsDetect) {
  const std::string data = MakeDataset("mvtec", 2, 6, 96, "mvtec");
  const std::string out = Scratch() + "/mvtec_out";
  const Result run = Anoclip("eval --data " + data + " --dataset mvtec " + ModelFlags() + " --out " + out +
                             " --vis 2 --batch 4");
  ASSERT_EQ(run.exit_code, 0) << run.errors;
  CheckReports(out, run, {"bottle", "carpet"}, 6, 2, true);
  // Plain progress lines (stderr is not a terminal), with a rate and a time left.
  EXPECT_THAT(run.errors, HasSubstr("images/s, ETA"));
  // The score of one image equals the one `anoclip detect` gives: the same engine call.
  auto results = eval::ReadResults(out + "/results/bottle.bin");
  ASSERT_TRUE(results.ok());
  const auto& first = results->front();
  const Result detect = Anoclip("detect " + ModelFlags() + " --class bottle --json --image " + first.image);
  ASSERT_EQ(detect.exit_code, 0) << detect.errors;
  EXPECT_NEAR(nlohmann::json::parse(detect.output)["image_score"].get<double>(), first.image_score, 1e-5);
  // The ground truth of a defect image at the model's size: 0/1 with some defect.
  for (const auto& r : *results) {
    EXPECT_EQ(r.map.rows, 80);
    double high = 0;
    cv::minMaxLoc(r.mask, nullptr, &high);
    EXPECT_EQ(high, r.anomalous ? 1.0 : 0.0) << r.image;
  }
  // A second run into the same folder without --resume refuses to mix results.
  const Result again = Anoclip("eval --data " + data + " --dataset mvtec " + ModelFlags() + " --out " + out);
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_THAT(again.errors, HasSubstr("--resume"));

  // Headless Chromium renders the report: a screenshot that is not blank.
  if (Shell("command -v chromium").exit_code != 0) {
    GTEST_SKIP() << "chromium is not installed (scripts/install-deps.sh installs it); report.html not rendered";
  }
  const std::string shot = Scratch() + "/report.png";
  const std::string profile = Scratch() + "/chromium-profile";
  const Result chromium = Shell(
      "timeout 180 chromium --headless --no-sandbox --disable-gpu --disable-background-networking "
      "--disable-component-update --disable-sync --no-first-run --user-data-dir=" + profile +
      " --screenshot=" + shot + " --window-size=1200,900 file://" + fs::absolute(out + "/report.html").string());
  ASSERT_EQ(chromium.exit_code, 0) << chromium.errors;
  const cv::Mat screenshot = cv::imread(shot, cv::IMREAD_COLOR);
  ASSERT_FALSE(screenshot.empty()) << chromium.errors;
  EXPECT_EQ(screenshot.size(), cv::Size(1200, 900));
  cv::Scalar mean, stddev;
  cv::meanStdDev(screenshot, mean, stddev);
  EXPECT_GT(stddev[0] + stddev[1] + stddev[2], 30.0) << "a blank page";
  // Text, table lines, curves and overlays: many distinct colours, not a flat page.
  std::set<int> colours;
  for (int y = 0; y < screenshot.rows; y += 2) {
    for (int x = 0; x < screenshot.cols; x += 2) {
      const auto& p = screenshot.at<cv::Vec3b>(y, x);
      colours.insert((p[0] << 16) | (p[1] << 8) | p[2]);
    }
  }
  EXPECT_GT(colours.size(), 100u);
}

TEST(EvalCliTest, VisaLayoutSkipsTrainingRowsAndMapsMacaroni) {
  const std::string data = MakeDataset("visa", 2, 4, 100, "visa");
  const std::string out = Scratch() + "/visa_out";
  const Result run = Anoclip("eval --data " + data + " --dataset visa " + ModelFlags() + " --out " + out +
                             " --vis 1 --threshold 0.5");
  ASSERT_EQ(run.exit_code, 0) << run.errors;
  CheckReports(out, run, {"macaroni1", "pcb1"}, 4, 1, true);
  const nlohmann::json json = ReadJson(out + "/metrics.json");
  EXPECT_EQ(json["classes"][0]["prompt_class"], "macaroni");
  // The operating point of --threshold: precision, recall and F1 with their counts.
  EXPECT_THAT(run.output, HasSubstr("Operating point (threshold 0.5 on raw scores)"));
  const auto& counts = json["classes"][1]["image_counts"];
  EXPECT_EQ(counts["tp"].get<int>() + counts["fp"].get<int>() + counts["fn"].get<int>() + counts["tn"].get<int>(), 4);
  EXPECT_EQ(counts["tp"].get<int>() + counts["fn"].get<int>(), 2);
  EXPECT_EQ(json["classes"][1]["pixel_counts"]["tp"].get<int64_t>() + json["classes"][1]["pixel_counts"]["fp"].get<int64_t>() +
                json["classes"][1]["pixel_counts"]["fn"].get<int64_t>() + json["classes"][1]["pixel_counts"]["tn"].get<int64_t>(),
            4 * 80 * 80);
}

TEST(EvalCliTest, FolderLayoutWithAndWithoutMasks) {
  const std::string data = MakeDataset("folder", 1, 6, 64, "part");
  const std::string out = Scratch() + "/folder_out";
  const Result run = Anoclip("eval --data " + data + " --dataset folder " + ModelFlags() + " --out " + out +
                             " --vis 3 --classes screw");
  ASSERT_EQ(run.exit_code, 0) << run.errors;
  CheckReports(out, run, {"screw"}, 6, 3, true);
  // Without masks/ only the image metrics exist.
  fs::remove_all(data + "/masks");
  const std::string bare = Scratch() + "/folder_bare_out";
  const Result image_only = Anoclip("eval --data " + data + " --dataset folder " + ModelFlags() + " --out " + bare +
                                    " --vis 1");
  ASSERT_EQ(image_only.exit_code, 0) << image_only.errors;
  CheckReports(bare, image_only, {"part"}, 6, 1, false);
  EXPECT_THAT(image_only.output, HasSubstr("| part | n/a | n/a | n/a | "));
}

TEST(EvalCliTest, ProgressBarOnATerminal) {
  if (Shell("command -v script").exit_code != 0) GTEST_SKIP() << "util-linux script (a pseudo-terminal) is absent";
  const std::string data = MakeDataset("folder", 1, 4, 64, "tty");
  // `script` gives the command a pseudo-terminal and copies what it shows to stdout.
  const Result run = Shell("script -qec '" + ::anoclip::testing::BinDir() + "/anoclip eval --data " + data +
                         " --dataset folder " + ModelFlags() + " --out " + Scratch() + "/tty_out --batch 1' /dev/null");
  ASSERT_EQ(run.exit_code, 0) << run.output << run.errors;
  EXPECT_THAT(run.output, HasSubstr("\r[##"));
  EXPECT_THAT(run.output, HasSubstr("4/4 images (100%)"));
  EXPECT_THAT(run.output, HasSubstr("images/s, ETA"));
}

TEST(EvalCliTest, ResumeAfterACutGivesTheSameMetrics) {
  const std::string data = MakeDataset("mvtec", 1, 6, 64, "resume");
  const std::string whole = Scratch() + "/resume_whole", cut = Scratch() + "/resume_cut";
  const std::string flags = " --dataset mvtec " + ModelFlags() + " --batch 2 --data " + data;
  const Result first = Anoclip("eval --out " + whole + flags);
  ASSERT_EQ(first.exit_code, 0) << first.errors;
  // The same run killed in the middle of writing its fifth record (batches of 2 as before, so
  // the images scored again are batched as they were the first time).
  fs::create_directories(cut + "/results");
  fs::copy_file(whole + "/run.json", cut + "/run.json");
  const std::string results = whole + "/results/bottle.bin";
  uint64_t four = 0;
  {
    auto all = eval::ReadResults(results);
    ASSERT_TRUE(all.ok());
    std::vector<eval::ImageResult> kept(all->begin(), all->begin() + 4);
    auto writer = eval::ResultsWriter::Open(cut + "/results/bottle.bin", 0);
    ASSERT_TRUE(writer.ok());
    for (const auto& r : kept) ASSERT_TRUE((*writer)->Append(r).ok());
  }
  four = fs::file_size(cut + "/results/bottle.bin");
  {
    std::ofstream partial(cut + "/results/bottle.bin", std::ios::binary | std::ios::app);
    partial << ReadText(results).substr(four, 100);
  }
  const Result resumed = Anoclip("eval --resume --out " + cut + flags);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.errors;
  EXPECT_THAT(resumed.errors, HasSubstr("4 images already scored"));
  EXPECT_EQ(ReadJson(cut + "/metrics.json")["classes"], ReadJson(whole + "/metrics.json")["classes"]);
  EXPECT_EQ(resumed.output, first.output);
  // Other settings cannot resume these results.
  const Result other = Anoclip("eval --resume --out " + cut + flags + " --views 22");
  EXPECT_EQ(other.exit_code, 1);
  EXPECT_THAT(other.errors, HasSubstr("views"));
}

TEST(EvalCliTest, CalibrationOperatingPoint) {
  const std::string data = MakeDataset("mvtec", 1, 4, 64, "calibrated");
  const std::string calibrations = Scratch() + "/calibrations";
  fs::create_directories(calibrations);
  const Result calibrate = Anoclip("calibrate " + ModelFlags() + " --class bottle --normal-dir " + data +
                                   "/bottle/train/good --out " + calibrations + "/bottle.json");
  ASSERT_EQ(calibrate.exit_code, 0) << calibrate.errors;
  const std::string out = Scratch() + "/calibrated_out";
  const Result run = Anoclip("eval --data " + data + " --dataset mvtec " + ModelFlags() + " --out " + out +
                             " --calibration-dir " + calibrations);
  ASSERT_EQ(run.exit_code, 0) << run.errors;
  EXPECT_THAT(run.output, HasSubstr("Operating point (calibration"));
  const nlohmann::json json = ReadJson(out + "/metrics.json");
  EXPECT_FALSE(json["classes"][0]["image_counts"].is_null());
  // A class without its calibration file fails before the model loads, naming the file.
  const Result missing = Anoclip("eval --data " + data + " --dataset mvtec " + ModelFlags() + " --out " + out +
                                 "_2 --calibration-dir " + Scratch());
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.errors, HasSubstr(Scratch() + "/bottle.json"));
}

TEST(EvalCliTest, MissingAndUnreadableFilesAreNamedNotSkipped) {
  const std::string data = MakeDataset("mvtec", 1, 6, 64, "broken");
  const std::string missing_mask = data + "/bottle/ground_truth/scratch/000_mask.png";
  ASSERT_TRUE(fs::remove(missing_mask));
  const std::string garbage = data + "/bottle/test/good/001.png";
  { std::ofstream(garbage, std::ios::trunc) << "not an image"; }
  const std::string out = Scratch() + "/broken_out";
  const Result run = Anoclip("eval --data " + data + " --dataset mvtec " + ModelFlags() + " --out " + out);
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.errors, HasSubstr(missing_mask));
  EXPECT_THAT(run.errors, HasSubstr(garbage));
  const nlohmann::json json = ReadJson(out + "/metrics.json");
  ASSERT_EQ(json["failures"].size(), 2u);
  std::set<std::string> named;
  for (const auto& f : json["failures"]) named.insert(f["file"].get<std::string>());
  EXPECT_EQ(named, (std::set<std::string>{missing_mask, garbage}));
  EXPECT_EQ(json["classes"][0]["images"], 4);  // the other four are still measured
  const std::string html = ReadText(out + "/report.html");
  EXPECT_THAT(html, HasSubstr(missing_mask));
  EXPECT_THAT(html, HasSubstr(garbage));
}

TEST(EvalCliTest, UsageErrors) {
  const std::string model = ModelFlags();
  for (const std::string& arguments : std::vector<std::string>{
           "eval --dataset mvtec " + model, "eval --data x --dataset coco " + model, "eval --data x --dataset mvtec",
        "eval --data x --dataset mvtec --threshold 0.5 --calibration-dir y " + model,
        "eval --data x --dataset mvtec --batch 0 " + model, "eval --data x --dataset mvtec --threshold 1.5 " + model,
        std::string("make-dataset --layout folder --out x --classes 2"), std::string("make-dataset --layout mvtec"),
        std::string("make-dataset --layout mvtec --out x --images 1")}) {
    SCOPED_TRACE(arguments);
    const Result result = Anoclip(arguments);
    EXPECT_EQ(result.exit_code, 2) << result.errors;
  }
  const Result no_data = Anoclip("eval --data " + Scratch() + "/absent --dataset mvtec " + model);
  EXPECT_EQ(no_data.exit_code, 1);
  EXPECT_THAT(no_data.errors, HasSubstr(Scratch() + "/absent"));
}

}  // namespace
}  // namespace anoclip
