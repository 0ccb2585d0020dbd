// anoclip-client against a real anoclip-server on loopback (tiny reference model).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "client/prometheus_text.h"
#include "test_util.h"

namespace anoclip::client {
namespace {

struct Result {
  int exit_code;
  std::string output;
};

Result Shell(const std::string& command) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  Result result{-1, ""};
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::string Bin(const std::string& name) { return ::anoclip::testing::BinDir() + "/" + name; }

// One server for the suite: started from the built binary on port 0, stopped with SIGTERM.
class ClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(::testing::TempDir() + "/client_test");
    std::filesystem::remove_all(*dir_);
    std::filesystem::create_directories(*dir_);
    const std::string ready = *dir_ + "/ready.json";
    pid_ = fork();
    if (pid_ == 0) {
      const std::string log = *dir_ + "/server.log";
      freopen(log.c_str(), "w", stderr);
      execl(Bin("anoclip-server").c_str(), "anoclip-server", "--model", ::anoclip::testing::TinyModelDir().c_str(),
            "--vocab", ::anoclip::testing::VocabPath().c_str(), "--listen", "127.0.0.1:0", "--metrics-listen",
            "127.0.0.1:0", "--threads", "2", "--ready-file", ready.c_str(), nullptr);
      _exit(127);
    }
    for (int i = 0; i < 600 && !std::filesystem::exists(ready); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::ifstream in(ready);
    ASSERT_TRUE(in) << "the server did not start";
    auto json = nlohmann::json::parse(in);
    target_ = new std::string(" --target 127.0.0.1:" + std::to_string(json["grpc_port"].get<int>()));
    metrics_ = new std::string("127.0.0.1:" + std::to_string(json["metrics_port"].get<int>()));
    samples_ = new std::string(*dir_ + "/samples");
    ASSERT_EQ(Shell(Bin("anoclip-client") + " make-samples --out " + *samples_).exit_code, 0);
  }
  static void TearDownTestSuite() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int status = 0;
      waitpid(pid_, &status, 0);
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the server did not drain cleanly";
    }
  }
  static Result Client(const std::string& args) { return Shell(Bin("anoclip-client") + " " + args + *target_); }
  static double RequestsCounted() {
    auto text = ScrapeMetrics(*metrics_);
    EXPECT_TRUE(text.ok());
    return SumSeries(ParsePrometheusText(text.ok() ? *text : ""), "anoclip_requests_total", "Detect");
  }

  static inline pid_t pid_ = -1;
  static inline std::string* dir_ = nullptr;
  static inline std::string* target_ = nullptr;
  static inline std::string* metrics_ = nullptr;
  static inline std::string* samples_ = nullptr;
};

TEST_F(ClientTest, AdministrativeSubcommands) {
  auto health = Client("health");
  EXPECT_EQ(health.exit_code, 0) << health.output;
  EXPECT_EQ(health.output, "SERVING\n");
  auto info = Client("info");
  EXPECT_EQ(info.exit_code, 0);
  EXPECT_NE(info.output.find("image_size 80"), std::string::npos) << info.output;
  auto prepared = Client("prepare --class carpet --kind texture");
  EXPECT_EQ(prepared.exit_code, 0) << prepared.output;
  EXPECT_NE(prepared.output.find("462 prompts per state"), std::string::npos) << prepared.output;
  auto classes = Client("classes");
  EXPECT_NE(classes.output.find("carpet\ttexture"), std::string::npos) << classes.output;
  auto evicted = Client("evict --class carpet --kind texture");
  EXPECT_NE(evicted.output.find("evicted carpet"), std::string::npos) << evicted.output;
  EXPECT_EQ(Client("classes").output.find("carpet"), std::string::npos);
}

TEST_F(ClientTest, DetectPrintsJsonPerImageAndWritesImages) {
  const std::string out = *dir_ + "/detect_out";
  auto result = Client("detect " + *samples_ + "/defect_spot.png " + *samples_ +
                       "/good_0.png --class bottle --threshold 0.5 --json --out " + out);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  std::istringstream lines(result.output);
  std::string line;
  int objects = 0;
  while (std::getline(lines, line)) {
    auto json = nlohmann::ordered_json::parse(line);
    EXPECT_EQ(json.begin().key(), "image_score");
    EXPECT_TRUE(json.contains("max_pixel_score"));
    EXPECT_EQ(json["class"], "bottle");
    EXPECT_TRUE(json.contains("regions"));
    EXPECT_TRUE(json.contains("is_anomalous"));
    ++objects;
  }
  EXPECT_EQ(objects, 2);
  for (const char* file : {"defect_spot_heatmap.png", "defect_spot_overlay.png", "defect_spot_mask.png"}) {
    EXPECT_TRUE(std::filesystem::exists(out + "/" + file)) << file;
  }
}

TEST_F(ClientTest, InspectStreamsAFolderAndWritesASummary) {
  const std::string csv = *dir_ + "/inspect.csv";
  auto result = Client("inspect " + *samples_ + " --class bottle --max-in-flight 2 --csv " + csv);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("inspected 5 images, 0 failed"), std::string::npos) << result.output;
  std::ifstream in(csv);
  int rows = 0;
  for (std::string line; std::getline(in, line);) ++rows;
  EXPECT_EQ(rows, 6);  // header + 5 images
}

TEST_F(ClientTest, LoadtestCountsWhatTheServerCounted) {
  const double before = RequestsCounted();
  const std::string json_path = *dir_ + "/load.json";
  auto result = Client("loadtest --concurrency 4 --duration 3 --classes bottle,carpet:texture --metrics " + *metrics_ +
                       " --json " + json_path);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  const double after = RequestsCounted();
  std::ifstream in(json_path);
  auto json = nlohmann::json::parse(in);
  EXPECT_GT(json["requests"].get<int64_t>(), 0);
  EXPECT_EQ(json["requests"].get<double>(), after - before) << result.output;
  EXPECT_EQ(json["server"]["requests"].get<double>(), after - before);
  EXPECT_EQ(json["ok"], json["requests"]);
  EXPECT_TRUE(json["latency_s"].contains("p99"));
}

TEST_F(ClientTest, SweepGivesOneRowPerStep) {
  const std::string csv = *dir_ + "/sweep.csv";
  auto result = Client("loadtest --concurrency-range 1:3:1 --duration 1 --stream --csv " + csv);
  ASSERT_EQ(result.exit_code, 0) << result.output;
  std::ifstream in(csv);
  std::vector<std::string> rows;
  for (std::string line; std::getline(in, line);) rows.push_back(line);
  ASSERT_EQ(rows.size(), 4u);  // header + 3 steps
  EXPECT_EQ(rows[1].substr(0, 2), "1,");
  EXPECT_EQ(rows[3].substr(0, 2), "3,");
}

TEST(ClientErrorsTest, ADeadTargetFailsFastWithAClearError) {
  const auto start = std::chrono::steady_clock::now();
  auto result = Shell(Bin("anoclip-client") + " info --target 127.0.0.1:1 --connect-timeout-ms 1000");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_NE(result.output.find("cannot reach 127.0.0.1:1"), std::string::npos) << result.output;
  EXPECT_LT(seconds, 30);
  auto unbounded = Shell(Bin("anoclip-client") + " loadtest --target 127.0.0.1:1");
  EXPECT_EQ(unbounded.exit_code, 2);
  EXPECT_NE(unbounded.output.find("bounded"), std::string::npos) << unbounded.output;
}

TEST(DemoTest, TheReadmeDemoRunsOnTheTinyModel) {
  const std::string out = ::testing::TempDir() + "/demo_out";
  const std::string build = std::filesystem::path(::anoclip::testing::BinDir()).parent_path().string();
  auto result = Shell("cd " + std::string(ANOCLIP_SOURCE_DIR) + " && DEMO_FAST=1 DEMO_LOAD_SECONDS=2 DEMO_OUT=" + out +
                      " BUILD_DIR=" + build + " bash scripts/demo.sh");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_NE(result.output.find("MEANINGLESS"), std::string::npos);
  EXPECT_NE(result.output.find("inspected 5 images, 0 failed"), std::string::npos) << result.output;
  EXPECT_TRUE(std::filesystem::exists(out + "/results/defect_spot_overlay.png"));
  EXPECT_TRUE(std::filesystem::exists(out + "/loadtest.json"));
}

}  // namespace
}  // namespace anoclip::client
