// The README's main command, scripts/demo.sh (`make demo`), run end to end with DEMO_FAST=1
// (the tiny reference model) on the build directory the tests run from.
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdlib>
#include <filesystem>
#include <regex>

#include <opencv2/imgcodecs.hpp>

#include "client_process.h"

namespace anoclip::client {
namespace {

using ::anoclip::testing::FreshDir;
using ::anoclip::testing::RunShell;
using ::anoclip::testing::ShellQuote;

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

TEST(DemoTest, FastDemoServesScoresLoadTestsAndStops) {
  const std::string source = Env("ANOCLIP_SOURCE_DIR"), build = Env("ANOCLIP_BUILD_DIR");
  ASSERT_FALSE(source.empty()) << "ANOCLIP_SOURCE_DIR is set by ctest";
  const std::string out = FreshDir("demo_out");
  auto r = RunShell("cd " + ShellQuote(source) + " && DEMO_FAST=1 DEMO_OUT=" + ShellQuote(out) +
                        " DEMO_LOAD_SECONDS=2 BUILD_DIR=" + ShellQuote(build) + " ANOCLIP_REFERENCE_DIR=" +
                        ShellQuote(::anoclip::testing::ReferenceDir()) + " bash scripts/demo.sh",
                    1100);
  ASSERT_EQ(r.exit_code, 0) << r.out << "\n" << r.err;
  // The warning, scores for each sample, a JSON answer, the load test and the server's split.
  EXPECT_NE(r.out.find("MEANINGLESS"), std::string::npos) << "the tiny model's scores are flagged";
  EXPECT_NE(r.out.find("SERVING"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("samples/defect_scratch.png: image_score"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("samples/good_0.png: image_score"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("inspected 5 of 5 images"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("{\"image_score\":"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("loadtest 127.0.0.1:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("server ms  queue"), std::string::npos) << r.out;
  // Heatmaps, overlays and masks at the samples' size.
  for (const char* name : {"good_0", "defect_scratch", "defect_spot"}) {
    for (const char* kind : {"heatmap", "overlay", "mask"}) {
      const std::string path = out + "/results/" + name + ".png_" + kind + ".png";
      const cv::Mat image = cv::imread(path, cv::IMREAD_UNCHANGED);
      ASSERT_FALSE(image.empty()) << path;
      EXPECT_EQ(image.size(), cv::Size(320, 320)) << path;
    }
  }
  const auto report = nlohmann::json::parse(::anoclip::testing::ReadWholeFile(out + "/loadtest.json"));
  const auto& run = report["runs"][0];
  EXPECT_GT(run["ok"].get<int>(), 0);
  EXPECT_EQ(run["requests"], run["server"]["requests"]);
  // The server was stopped: its pid (printed by the demo) is gone.
  std::smatch match;
  ASSERT_TRUE(std::regex_search(r.out, match, std::regex("anoclip-server pid ([0-9]+)"))) << r.out;
  const pid_t pid = std::stoi(match[1]);
  EXPECT_NE(kill(pid, 0), 0) << "anoclip-server " << pid << " still runs";
  EXPECT_NE(r.out.find("server stopped"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace anoclip::client
