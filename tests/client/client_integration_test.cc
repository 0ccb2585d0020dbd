// anoclip-client against the real anoclip-server (a child process on loopback with the tiny
// reference model): every subcommand's output, load-test counts against the server's own
// /metrics, sweeps, security options, usage errors and dead targets.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <fstream>
#include <map>

#include <grpcpp/grpcpp.h>

#include <opencv2/imgcodecs.hpp>

#include "absl/strings/str_split.h"
#include "anoclip/v1/anoclip.grpc.pb.h"
#include "client/prometheus_text.h"
#include "client_process.h"

namespace anoclip::client {
namespace {

using ::anoclip::testing::CommandResult;
using ::anoclip::testing::FreshDir;
using ::anoclip::testing::ReadWholeFile;
using ::anoclip::testing::RunClient;
using ::anoclip::testing::RunShell;
using ::anoclip::testing::ServerProcess;
using ::anoclip::testing::ShellQuote;

std::vector<std::string> Lines(const std::string& text) {
  return absl::StrSplit(text, '\n', absl::SkipEmpty());
}

double ServerRequests(const std::string& metrics, const std::string& method) {
  httplib::Client http(metrics.substr(0, metrics.rfind(':')), std::stoi(metrics.substr(metrics.rfind(':') + 1)));
  auto response = http.Get("/metrics");
  if (!response || response->status != 200) return -1;
  return SumSeries(ParsePrometheusText(response->body), "anoclip_requests_total", {{"method", method}});
}

class ClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess({"--log-format", "json"});
    start_error_ = new std::string(server_->Start("client_test"));
    samples_ = new std::string(FreshDir("client_samples"));
    RunClient("make-samples --size 160 --out " + *samples_);
  }
  static void TearDownTestSuite() {
    delete server_;
    delete start_error_;
    delete samples_;
  }
  void SetUp() override { ASSERT_TRUE(start_error_->empty()) << *start_error_; }

  static std::string T() { return " --target " + server_->target() + " "; }

  static ServerProcess* server_;
  static std::string* start_error_;
  static std::string* samples_;
};
ServerProcess* ClientTest::server_ = nullptr;
std::string* ClientTest::start_error_ = nullptr;
std::string* ClientTest::samples_ = nullptr;

TEST_F(ClientTest, MakeSamplesWritesGoodAndDefectiveImages) {
  const auto dir = FreshDir("make_samples");
  auto r = RunClient("make-samples --out " + dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto lines = Lines(r.out);
  ASSERT_GE(lines.size(), 4u);
  int defects = 0;
  for (const auto& path : lines) {
    const cv::Mat image = cv::imread(path);
    EXPECT_EQ(image.size(), cv::Size(320, 320)) << path;
    if (path.find("defect_") != std::string::npos) ++defects;
  }
  EXPECT_GE(defects, 2);
  EXPECT_EQ(RunClient("make-samples").exit_code, 2);
  EXPECT_EQ(RunClient("make-samples --out " + dir + " --size 5").exit_code, 2);
}

TEST_F(ClientTest, HealthSaysServing) {
  auto r = RunClient("health" + T());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "SERVING\n");
  r = RunClient("health" + T() + "--service anoclip.v1.AnomalyDetectionService");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "SERVING\n");
}

TEST_F(ClientTest, InfoDescribesTheTinyModel) {
  auto r = RunClient("info" + T());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("image_size   80\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("embed_dim    32\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("device       cpu\n"), std::string::npos) << r.out;
  r = RunClient("info --json" + T());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto json = nlohmann::json::parse(r.out);
  EXPECT_EQ(json["image_size"], 80);
  EXPECT_EQ(json["embed_dim"], 32);
  EXPECT_FALSE(json["model_id"].get<std::string>().empty());
}

TEST_F(ClientTest, PrepareListAndEvictAClass) {
  auto r = RunClient("prepare --class 'metal nut' --kind object" + T());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("prepared metal nut: built,"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("prompts per state"), std::string::npos) << r.out;
  r = RunClient("prepare --class 'metal nut' --kind object" + T());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("prepared metal nut: cached,"), std::string::npos) << r.out;
  r = RunClient("classes" + T());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("metal nut            object"), std::string::npos) << r.out;
  r = RunClient("classes --json" + T());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  bool listed = false;
  for (const auto& entry : nlohmann::json::parse(r.out)) listed |= entry["name"] == "metal nut";
  EXPECT_TRUE(listed) << r.out;
  r = RunClient("evict --class 'metal nut' --kind object" + T());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "evicted metal nut\n");
  r = RunClient("evict --class 'metal nut' --kind object" + T());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "not cached: metal nut\n");
  r = RunClient("classes" + T());
  EXPECT_EQ(r.out.find("metal nut"), std::string::npos) << r.out;
}

TEST_F(ClientTest, DetectPrintsScoresAndWritesHeatmapOverlayAndMask) {
  const auto out = FreshDir("detect_out");
  const std::string images = *samples_ + "/good_0.png " + *samples_ + "/defect_scratch.png";
  auto r = RunClient("detect " + images + " --class bottle --threshold 0.5 --out " + out + T());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto lines = Lines(r.out);
  ASSERT_EQ(lines.size(), 2u) << r.out;
  EXPECT_EQ(lines[0].rfind(*samples_ + "/good_0.png: image_score ", 0), 0u) << lines[0];
  EXPECT_NE(lines[1].find("max_pixel_score"), std::string::npos);
  EXPECT_TRUE(lines[1].find("ANOMALOUS") != std::string::npos || lines[1].find("normal") != std::string::npos);
  for (const char* stem : {"good_0", "defect_scratch"}) {
    for (const char* kind : {"heatmap", "overlay", "mask"}) {
      const cv::Mat image = cv::imread(out + "/" + stem + ".png_" + kind + ".png", cv::IMREAD_UNCHANGED);
      ASSERT_FALSE(image.empty()) << stem << " " << kind;
      EXPECT_EQ(image.size(), cv::Size(160, 160)) << stem << " " << kind;
    }
  }
  // Without a decision there is no mask.
  const auto plain = FreshDir("detect_plain");
  r = RunClient("detect " + *samples_ + "/good_1.png --class bottle --out " + plain + T());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(std::filesystem::exists(plain + "/good_1.png_heatmap.png"));
  EXPECT_TRUE(std::filesystem::exists(plain + "/good_1.png_overlay.png"));
  EXPECT_FALSE(std::filesystem::exists(plain + "/good_1.png_mask.png"));
}

TEST_F(ClientTest, DetectJsonHasTheKeysAndScoresOfAnoclipDetect) {
  const std::string image = ::anoclip::testing::TinyVitDir() + "/images/case0.png";
  auto client = RunClient("detect " + image + " --class bottle --threshold 0.5 --json" + T());
  ASSERT_EQ(client.exit_code, 0) << client.err;
  ASSERT_EQ(Lines(client.out).size(), 1u) << "one object per image and line";
  auto from_client = nlohmann::ordered_json::parse(client.out);
  auto engine = RunShell(ShellQuote(::anoclip::testing::BinDir() + "/anoclip") + " detect --model " +
                         ::anoclip::testing::TinyModelDir() + " --vocab " + ::anoclip::testing::VocabPath() +
                         " --image " + image + " --class bottle --threshold 0.5 --json --threads 1");
  ASSERT_EQ(engine.exit_code, 0) << engine.err;
  auto from_engine = nlohmann::ordered_json::parse(engine.out);
  std::vector<std::string> client_keys, engine_keys;
  for (const auto& [key, value] : from_client.items()) client_keys.push_back(key);
  for (const auto& [key, value] : from_engine.items()) engine_keys.push_back(key);
  ASSERT_GE(client_keys.size(), 2u);
  EXPECT_EQ(client_keys.back(), "request_id");
  client_keys.pop_back();
  EXPECT_EQ(client_keys.back(), "image");
  client_keys.pop_back();
  EXPECT_EQ(client_keys, engine_keys);
  EXPECT_EQ(client_keys.front(), "image_score");
  EXPECT_NEAR(from_client["image_score"].get<double>(), from_engine["image_score"].get<double>(), 1e-4);
  EXPECT_NEAR(from_client["max_pixel_score"].get<double>(), from_engine["max_pixel_score"].get<double>(), 1e-4);
  EXPECT_EQ(from_client["class"], from_engine["class"]);
  EXPECT_EQ(from_client["kind"], from_engine["kind"]);
  EXPECT_EQ(from_client["model"], from_engine["model"]);
  EXPECT_EQ(from_client["is_anomalous"], from_engine["is_anomalous"]);
  EXPECT_EQ(from_client["regions"].size(), from_engine["regions"].size());
  EXPECT_EQ(from_client["image"], image);
}

// The server's JSON log lines for one request id.
std::vector<nlohmann::json> LoggedCalls(const std::string& log, const std::string& request_id) {
  std::vector<nlohmann::json> calls;
  for (const auto& line : Lines(log)) {
    auto json = nlohmann::json::parse(line, nullptr, false);
    if (json.is_discarded()) continue;
    if (json.value("msg", "") == "call" && json.value("request_id", "") == request_id) calls.push_back(json);
  }
  return calls;
}

TEST_F(ClientTest, TheRequestIdTheClientSendsIsLoggedAndReturned) {
  const std::string image = ::anoclip::testing::TinyVitDir() + "/images/case1.png";
  auto r = RunClient("detect " + image + " --class bottle --json --request-id line7-000123" + T());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["request_id"], "line7-000123") << r.out;
  // The access line may follow the answer by a moment (bounded wait).
  std::vector<nlohmann::json> calls;
  for (int i = 0; i < 100 && calls.empty(); ++i) {
    calls = LoggedCalls(server_->log(), "line7-000123");
    if (calls.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(calls.size(), 1u) << server_->log();
  EXPECT_EQ(calls[0]["method"], "Detect");
  EXPECT_EQ(calls[0]["code"], "OK");
  EXPECT_EQ(calls[0]["level"], "info");
  EXPECT_EQ(calls[0]["item_id"], image);
  EXPECT_EQ(calls[0]["class"], "bottle");
  EXPECT_GT(calls[0]["duration_ms"].get<double>(), 0);
  EXPECT_TRUE(calls[0]["time"].is_string());

  // Without --request-id each call gets a fresh id, which the human output quotes.
  r = RunClient("detect " + image + " --class bottle" + T());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const size_t at = r.out.find("request_id ");
  ASSERT_NE(at, std::string::npos) << r.out;
  const std::string made = r.out.substr(at + 11, 32);
  EXPECT_EQ(made.find_first_not_of("0123456789abcdef"), std::string::npos) << made;
  for (int i = 0; i < 100 && LoggedCalls(server_->log(), made).empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(LoggedCalls(server_->log(), made).size(), 1u) << server_->log();

  // A refused call is logged as a warning with its reason.
  r = RunClient("detect " + image + " --class bottle --threshold 1.5 --request-id bad-threshold-1" + T());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("request_id bad-threshold-1"), std::string::npos) << r.err;
  for (int i = 0; i < 100 && LoggedCalls(server_->log(), "bad-threshold-1").empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  calls = LoggedCalls(server_->log(), "bad-threshold-1");
  ASSERT_EQ(calls.size(), 1u) << server_->log();
  EXPECT_EQ(calls[0]["code"], "INVALID_ARGUMENT");
  EXPECT_EQ(calls[0]["level"], "warning");
  EXPECT_TRUE(calls[0]["error"].is_string());
}

TEST_F(ClientTest, MetricsHaveMethodLabelsAndProcessMetrics) {
  ASSERT_EQ(RunClient("info" + T()).exit_code, 0);
  const std::string metrics = server_->metrics();
  httplib::Client http(metrics.substr(0, metrics.rfind(':')), std::stoi(metrics.substr(metrics.rfind(':') + 1)));
  auto response = http.Get("/metrics");
  ASSERT_TRUE(response && response->status == 200);
  const auto series = ParsePrometheusText(response->body);
  EXPECT_GE(SumSeries(series, "anoclip_request_duration_seconds_count", {{"method", "GetModelInfo"}}), 1);
  const double resident = SumSeries(series, "process_resident_memory_bytes", {});
  EXPECT_GT(resident, 1 << 20);
  EXPECT_LT(resident, 64.0 * (1 << 30));
  EXPECT_GT(SumSeries(series, "process_virtual_memory_bytes", {}), resident);
  EXPECT_GT(SumSeries(series, "process_cpu_seconds_total", {}), 0);
  const double open_fds = SumSeries(series, "process_open_fds", {});
  EXPECT_GE(open_fds, 3);
  EXPECT_LE(open_fds, SumSeries(series, "process_max_fds", {}));
  // Started within the last day, not in the future.
  const double start = SumSeries(series, "process_start_time_seconds", {});
  const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_LE(start, now + 1);
  EXPECT_GT(start, now - 86400);
}

TEST_F(ClientTest, DetectReportsBadImagesAndGoesOn) {
  const auto dir = FreshDir("detect_bad");
  std::ofstream(dir + "/junk.png") << "not a png";
  auto r = RunClient("detect " + dir + "/junk.png " + dir + "/missing.png " + *samples_ +
                     "/good_0.png --class bottle" + T());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("junk.png: INVALID_ARGUMENT"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("missing.png: cannot read"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("good_0.png: image_score"), std::string::npos) << r.out;
}

TEST_F(ClientTest, InspectStreamsAFolderAndWritesSummaries) {
  const auto out = FreshDir("inspect_out");
  const auto lines_before = ServerRequests(server_->metrics(), "Inspect");
  auto r = RunClient("inspect " + *samples_ + " --class bottle --threshold 0.5 --max-in-flight 2 --out " + out +
                     " --csv " + out + "/results.csv --json " + out + "/results.json" + T());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const size_t images = std::distance(std::filesystem::directory_iterator(*samples_), {});
  const auto lines = Lines(r.out);
  ASSERT_EQ(lines.size(), images + 1) << r.out;
  EXPECT_EQ(lines.back().rfind("inspected " + std::to_string(images) + " of " + std::to_string(images) + " images", 0),
            0u) << lines.back();
  EXPECT_NE(lines.back().find(", 0 failed"), std::string::npos);
  EXPECT_EQ(ServerRequests(server_->metrics(), "Inspect") - lines_before, images);
  const auto csv = Lines(ReadWholeFile(out + "/results.csv"));
  ASSERT_EQ(csv.size(), images + 1);
  EXPECT_EQ(csv[0], "image,image_score,max_pixel_score,calibrated_image_score,is_anomalous,regions,total_ms,error");
  const auto json = nlohmann::json::parse(ReadWholeFile(out + "/results.json"));
  ASSERT_EQ(json.size(), images);
  for (const auto& entry : json) {
    EXPECT_TRUE(entry.contains("image_score")) << entry;
    EXPECT_TRUE(entry.contains("is_anomalous")) << entry;
    const std::string name = std::filesystem::path(entry["image"].get<std::string>()).filename().string();
    EXPECT_TRUE(std::filesystem::exists(out + "/" + name + "_overlay.png")) << name;
  }
  EXPECT_NE(lines.back().find(" anomalous, 0 failed"), std::string::npos) << lines.back();
  // --out without --csv / --json writes summary.csv and summary.json there. Without a threshold
  // there are scores and no verdicts, and the summary says so.
  const auto out2 = FreshDir("inspect_out2");
  r = RunClient("inspect " + *samples_ + " --class bottle --out " + out2 + T());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto plain_lines = Lines(r.out);
  EXPECT_EQ(plain_lines.back().find("anomalous"), std::string::npos) << plain_lines.back();
  EXPECT_NE(plain_lines.back().find(": no threshold was set, so no verdicts (image_score min "), std::string::npos)
      << plain_lines.back();
  for (size_t i = 0; i + 1 < plain_lines.size(); ++i) {
    EXPECT_NE(plain_lines[i].find(": image_score "), std::string::npos) << plain_lines[i];
  }
  EXPECT_EQ(Lines(ReadWholeFile(out2 + "/summary.csv")).size(), images + 1);
  EXPECT_EQ(nlohmann::json::parse(ReadWholeFile(out2 + "/summary.json")).size(), images);
}

TEST_F(ClientTest, OutputNamesKeepTheExtensionAndTheFolder) {
  // a.png and a.jpg in one folder, and two a.png in different folders: no file overwrites another.
  const auto dir = FreshDir("names_in");
  std::filesystem::copy_file(*samples_ + "/good_0.png", dir + "/a.png");
  cv::imwrite(dir + "/a.jpg", cv::imread(*samples_ + "/defect_spot.png"));
  const auto out = FreshDir("names_out");
  auto r = RunClient("inspect " + dir + " --class bottle --threshold 0.5 --out " + out + T());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* name : {"a.png", "a.jpg"}) {
    for (const char* kind : {"heatmap", "overlay", "mask"}) {
      EXPECT_TRUE(std::filesystem::exists(out + "/" + name + "_" + kind + ".png")) << name << " " << kind;
    }
  }
  EXPECT_NE(ReadWholeFile(out + "/a.png_heatmap.png"), ReadWholeFile(out + "/a.jpg_heatmap.png"));

  std::filesystem::create_directories(dir + "/x");
  std::filesystem::create_directories(dir + "/y");
  std::filesystem::copy_file(*samples_ + "/good_0.png", dir + "/x/p.png");
  std::filesystem::copy_file(*samples_ + "/defect_crack.png", dir + "/y/p.png");
  const auto out2 = FreshDir("names_out2");
  r = RunClient("detect " + dir + "/x/p.png " + dir + "/y/p.png --class bottle --out " + out2 + T());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(std::filesystem::exists(out2 + "/x/p.png_overlay.png"));
  EXPECT_TRUE(std::filesystem::exists(out2 + "/y/p.png_overlay.png"));
  EXPECT_NE(ReadWholeFile(out2 + "/x/p.png_heatmap.png"), ReadWholeFile(out2 + "/y/p.png_heatmap.png"));
}

// One detection, three writers: the service's own PNGs, `anoclip detect --out` and
// `anoclip-client detect --out` must be the same bytes (one thread each, so the same numbers).
TEST_F(ClientTest, ServerCliAndClientWriteTheSameImages) {
  const std::string image = *samples_ + "/defect_scratch.png";
  const std::string client_out = FreshDir("same_client"), cli_out = FreshDir("same_cli");
  auto client = RunClient("detect " + image + " --class bottle --threshold 0.5 --json --out " + client_out + T());
  ASSERT_EQ(client.exit_code, 0) << client.err;
  auto cli = RunShell(ShellQuote(::anoclip::testing::BinDir() + "/anoclip") + " detect --model " +
                      ::anoclip::testing::TinyModelDir() + " --vocab " + ::anoclip::testing::VocabPath() +
                      " --image " + image + " --class bottle --threshold 0.5 --json --threads 1 --out " + cli_out);
  ASSERT_EQ(cli.exit_code, 0) << cli.err;
  const auto from_client = nlohmann::json::parse(client.out);
  const auto from_cli = nlohmann::json::parse(cli.out);
  ASSERT_EQ(from_client["image_score"].get<double>(), from_cli["image_score"].get<double>()) << "the same detection";
  ASSERT_FALSE(from_cli["regions"].empty()) << "the case needs regions to compare masks";

  // The service's own rendering of the same request.
  auto channel = grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials());
  auto stub = anoclip::v1::AnomalyDetectionService::NewStub(channel);
  anoclip::v1::DetectRequest request;
  request.set_image_bytes(ReadWholeFile(image));
  request.mutable_class_spec()->set_name("bottle");
  request.mutable_options()->set_threshold(0.5f);
  request.mutable_options()->set_min_region_area(1);
  std::map<anoclip::v1::HeatmapFormat, std::string> served;
  for (auto format : {anoclip::v1::HEATMAP_FORMAT_PNG, anoclip::v1::HEATMAP_FORMAT_OVERLAY_PNG}) {
    request.mutable_options()->set_heatmap_format(format);
    grpc::ClientContext context;
    anoclip::v1::DetectResponse response;
    ASSERT_TRUE(stub->Detect(&context, request, &response).ok());
    served[format] = response.heatmap().data();
  }

  const std::string client_prefix = client_out + "/defect_scratch.png_";
  EXPECT_EQ(ReadWholeFile(cli_out + "/heatmap.png"), served[anoclip::v1::HEATMAP_FORMAT_PNG]);
  EXPECT_EQ(ReadWholeFile(client_prefix + "heatmap.png"), served[anoclip::v1::HEATMAP_FORMAT_PNG]);
  EXPECT_EQ(ReadWholeFile(cli_out + "/overlay.png"), served[anoclip::v1::HEATMAP_FORMAT_OVERLAY_PNG]);
  EXPECT_EQ(ReadWholeFile(client_prefix + "overlay.png"), served[anoclip::v1::HEATMAP_FORMAT_OVERLAY_PNG]);
  const std::string mask = ReadWholeFile(cli_out + "/mask.png");
  EXPECT_FALSE(mask.empty());
  EXPECT_EQ(ReadWholeFile(client_prefix + "mask.png"), mask);
  // The overlay carries the verdict the JSON reports.
  const cv::Mat overlay = cv::imread(cli_out + "/overlay.png");
  ASSERT_EQ(overlay.size(), cv::Size(160, 160));
}

TEST_F(ClientTest, InspectCountsFailedImagesAndExitsNonZero) {
  const auto dir = FreshDir("inspect_bad");
  std::filesystem::copy_file(*samples_ + "/good_0.png", dir + "/a.png");
  std::ofstream(dir + "/b.png") << "garbage";
  auto r = RunClient("inspect " + dir + " --class bottle" + T());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("b.png: INVALID_ARGUMENT"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("inspected 2 of 2 images"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1 failed"), std::string::npos) << r.out;
  r = RunClient("inspect " + FreshDir("inspect_empty") + " --class bottle" + T());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no images in"), std::string::npos) << r.err;
}

TEST_F(ClientTest, LoadtestCountsWhatTheServersMetricsCount) {
  const auto dir = FreshDir("loadtest");
  const double before = ServerRequests(server_->metrics(), "Detect");
  ASSERT_GE(before, 0);
  auto r = RunClient("loadtest --duration 3 --concurrency 4 --metrics " + server_->metrics() + " --json " + dir +
                     "/report.json --csv " + dir + "/report.csv --classes bottle,carpet:texture" + T());
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  const double after = ServerRequests(server_->metrics(), "Detect");
  const auto report = nlohmann::json::parse(ReadWholeFile(dir + "/report.json"));
  ASSERT_EQ(report["runs"].size(), 1u);
  const auto& run = report["runs"][0];
  const int64_t requests = run["requests"];
  EXPECT_GT(requests, 0);
  EXPECT_EQ(requests, static_cast<int64_t>(after - before)) << "the test's own scrape";
  EXPECT_EQ(requests, run["server"]["requests"].get<int64_t>()) << "the client's scrape";
  EXPECT_EQ(run["ok"], requests);
  EXPECT_EQ(run["codes"]["OK"], requests);
  EXPECT_GE(run["seconds"].get<double>(), 3.0);
  EXPECT_GT(run["throughput_rps"].get<double>(), 0);
  EXPECT_GT(run["latency_ms"]["p50"].get<double>(), 0);
  EXPECT_LE(run["latency_ms"]["p50"].get<double>(), run["latency_ms"]["p99"].get<double>());
  EXPECT_GE(run["server"]["mean_batch"].get<double>(), 1.0);
  EXPECT_GT(run["server"]["encode_ms"].get<double>(), 0);
  // The human summary says the same.
  EXPECT_NE(r.out.find("requests   " + std::to_string(requests) + " (ok " + std::to_string(requests) + ")"),
            std::string::npos) << r.out;
  EXPECT_NE(r.out.find("server     " + std::to_string(requests) + " requests"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("latency ms min"), std::string::npos);
  EXPECT_NE(r.out.find("histogram"), std::string::npos);
  EXPECT_NE(r.out.find("status     OK " + std::to_string(requests)), std::string::npos);
  const auto csv = Lines(ReadWholeFile(dir + "/report.csv"));
  ASSERT_EQ(csv.size(), 2u);
  EXPECT_EQ(csv[1].rfind("closed,4,0,0,1," + std::to_string(requests) + ",", 0), 0u) << csv[1];
}

TEST_F(ClientTest, LoadtestStreamOpenLoopTtaAndWarmup) {
  const auto dir = FreshDir("loadtest_stream");
  const double before = ServerRequests(server_->metrics(), "Inspect");
  auto r = RunClient("loadtest --stream --rps 20 --arrivals poisson --requests 12 --duration 20 --warmup 0.5"
                     " --tta-share 0.25 --images " + *samples_ + " --metrics " + server_->metrics() + " --json " +
                     dir + "/r.json" + T());
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  const auto run = nlohmann::json::parse(ReadWholeFile(dir + "/r.json"))["runs"][0];
  EXPECT_EQ(run["requests"], 12);
  EXPECT_EQ(run["ok"], 12);
  EXPECT_EQ(run["mode"], "open");
  EXPECT_EQ(run["stream"], true);
  EXPECT_EQ(run["server"]["requests"], 12) << "the warm-up is drained before the first scrape";
  EXPECT_EQ(run["server"]["tta_images"], 3);
  EXPECT_GT(run["server"]["tta_ms"].get<double>(), 0);
  EXPECT_GT(ServerRequests(server_->metrics(), "Inspect") - before, 12) << "the warm-up sent requests too";
  EXPECT_NE(r.out.find("open loop 20 rps poisson"), std::string::npos) << r.out;
}

TEST_F(ClientTest, ASweepGivesOneRowPerStep) {
  const auto dir = FreshDir("sweep");
  auto r = RunClient("loadtest --concurrency-range 1:3:1 --duration 1s --metrics " + server_->metrics() + " --csv " +
                     dir + "/sweep.csv --json " + dir + "/sweep.json --html " + dir + "/sweep.html" + T());
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  const auto csv = Lines(ReadWholeFile(dir + "/sweep.csv"));
  ASSERT_EQ(csv.size(), 4u) << ReadWholeFile(dir + "/sweep.csv");
  for (int step = 1; step <= 3; ++step) {
    EXPECT_EQ(csv[step].rfind("closed," + std::to_string(step) + ",", 0), 0u) << csv[step];
  }
  const auto json = nlohmann::json::parse(ReadWholeFile(dir + "/sweep.json"));
  ASSERT_EQ(json["runs"].size(), 3u);
  for (const auto& run : json["runs"]) {
    EXPECT_EQ(run["requests"], run["server"]["requests"]);
    EXPECT_GE(run["seconds"].get<double>(), 1.0) << "--duration 1s";
  }
  // The same sweep as one page: a histogram per step and the sweep charts, inline.
  const std::string html = ReadWholeFile(dir + "/sweep.html");
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  size_t histograms = 0;
  for (size_t at = html.find("<svg class=\"histogram\""); at != std::string::npos;
       at = html.find("<svg class=\"histogram\"", at + 1)) {
    ++histograms;
  }
  EXPECT_EQ(histograms, 3u);
  EXPECT_NE(html.find("<svg class=\"sweep\""), std::string::npos);
  // A latency limit nobody can meet stops the sweep after its first step.
  r = RunClient("loadtest --concurrency-range 1:4 --duration 0.5 --latency-limit-ms 0.01 --csv " + dir +
                "/limited.csv" + T());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Lines(ReadWholeFile(dir + "/limited.csv")).size(), 2u);
  EXPECT_NE(r.out.find("the sweep stops at concurrency 1"), std::string::npos) << r.out;
}

TEST_F(ClientTest, LoadtestReportsServerErrorsByCode) {
  auto r = RunClient("loadtest --requests 5 --views 5" + T());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("status     INVALID_ARGUMENT 5"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("error x5: views must be 1 or 22"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("no request succeeded"), std::string::npos) << r.err;
}

TEST_F(ClientTest, MultiAddressAndDnsTargetsReachTheServer) {
  const std::string port = std::to_string(server_->grpc_port());
  auto r = RunClient("health --target ipv4:127.0.0.1:1,127.0.0.1:" + port);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  r = RunClient("loadtest --requests 6 --concurrency 2 --target ipv4:127.0.0.1:" + port + ",127.0.0.1:" + port);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("requests   6 (ok 6)"), std::string::npos) << r.out;
  r = RunClient("info --target dns:///localhost:" + port);
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST_F(ClientTest, UsageErrorsExitTwoAndSayWhy) {
  struct Case {
    std::string args, message;
  };
  const std::vector<Case> cases = {
      {"", "usage: anoclip-client"},
      {"frobnicate", "unknown command"},
      {"detect --class bottle" + T(), "give at least one image"},
      {"detect x.png" + T(), "--class"},
      {"detect x.png --class a --kind fabric" + T(), "--kind must be object or texture; was \"fabric\""},
      {"prepare --class a --kind fabric" + T(), "--kind must be object or texture; was \"fabric\""},
      {"info --bogus" + T(), "bogus"},
      {"prepare" + T(), "--class"},
      {"loadtest" + T(), "give --duration or --requests"},
      {"loadtest --duration 0" + T(), "--duration must be in"},
      {"loadtest --duration 0s" + T(), "--duration must be in"},
      {"loadtest --duration 2h" + T(), "--duration must be in (0, 1h]"},
      {"loadtest --duration soon" + T(), "--duration must be a duration such as 30s, 2m"},
      {"loadtest --requests 5 --warmup -1s" + T(), "--warmup must be in [0, 1h]"},
      {"detect x.png --class a --min-region-area -1" + T(), "--min-region-area must be an integer >= 0; was \"-1\" (it cannot be negative)"},
      {"inspect . --class a --max-in-flight -2" + T(), "(it cannot be negative)"},
      {"make-samples --out x --size -5", "--size must be an integer in 64..4096; was \"-5\" (it cannot be negative)"},
      {"loadtest --duration 99999" + T(), "--duration must be in"},
      {"loadtest --requests 0" + T(), "requests"},
      {"loadtest --duration 1 --concurrency-range 5:1" + T(), "--concurrency-range"},
      {"loadtest --duration 1 --classes carpet:fabric" + T(), "class kind in 'carpet:fabric' must be object or texture"},
      {"loadtest --duration 1 --tta-share 2" + T(), "--tta-share"},
      {"loadtest --duration 1 --arrivals poisson" + T(), "--arrivals needs --rps"},
      {"loadtest --duration 1 --latency-limit-ms 5" + T(), "--concurrency-range"},
      {"health --client-cert c.pem" + T(), "--client-cert and --client-key go together"},
      {"health --token a --token-file b" + T(), "not both"},
  };
  for (const auto& c : cases) {
    auto r = RunClient(c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << "\n" << r.err;
  }
  auto help = RunClient("loadtest --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.err.find("--concurrency-range"), std::string::npos);
}

TEST(ClientDeadTargetTest, EverySubcommandFailsFastWithAClearError) {
  // A port nothing listens on: the connection is refused at once.
  const auto dir = FreshDir("dead_target");
  std::ofstream(dir + "/x.png") << "x";
  for (const std::string& command : std::vector<std::string>{
           "health", "info", "classes", "prepare --class bottle", "evict --class bottle",
        "detect " + dir + "/x.png --class bottle", "inspect " + dir + " --class bottle",
        "loadtest --duration 30 --concurrency 4", "loadtest --rps 10 --duration 30 --stream"}) {
    auto r = RunClient(command + " --target 127.0.0.1:1", 60);
    EXPECT_EQ(r.exit_code, 1) << command << "\n" << r.err;
    EXPECT_NE(r.err.find("cannot connect to 127.0.0.1:1"), std::string::npos) << command << "\n" << r.err;
    EXPECT_LT(r.seconds, 5.0) << command;
  }
}

TEST(ClientDeadTargetTest, APeerThatNeverSpeaksGrpcTimesOut) {
  // A socket that listens but never answers: the connect timeout ends the wait.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(listen(fd, 16), 0);
  socklen_t length = sizeof(address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  const std::string target = "127.0.0.1:" + std::to_string(ntohs(address.sin_port));
  for (const std::string& command : std::vector<std::string>{"health", "loadtest --duration 30"}) {
    auto r = RunClient(command + " --connect-timeout-ms 1000 --target " + target, 60);
    EXPECT_EQ(r.exit_code, 1) << command << "\n" << r.err;
    EXPECT_TRUE(r.err.find("cannot reach " + target + " within 1000 ms") != std::string::npos ||
                r.err.find("cannot connect to " + target) != std::string::npos)
        << command << "\n" << r.err;
    EXPECT_LT(r.seconds, 5.0) << command;
  }
  close(fd);
}

TEST(ClientSecurityTest, TokenAndMutualTls) {
  const auto dir = FreshDir("client_security");
  const std::string script =
      "cd " + dir + " && exec >openssl.log 2>&1 && set -e\n"
      "ca() { openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=$1 -keyout $1.key -out $1.pem; }\n"
      "leaf() { openssl req -newkey rsa:2048 -nodes -subj /CN=$2 -keyout $2.key -out $2.csr;\n"
      "  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > $2.ext;\n"
      "  openssl x509 -req -in $2.csr -CA $1.pem -CAkey $1.key -CAcreateserial -days 1 -extfile $2.ext -out $2.pem; }\n"
      "ca ca; leaf ca server; leaf ca client\n"
      "printf 's3cret\\n' > token\n";
  ASSERT_EQ(std::system(script.c_str()), 0) << ReadWholeFile(dir + "/openssl.log");
  ServerProcess server({"--tls-cert", dir + "/server.pem", "--tls-key", dir + "/server.key", "--tls-client-ca",
                        dir + "/ca.pem", "--auth-token-file", dir + "/token"});
  const std::string error = server.Start("client_security");
  ASSERT_TRUE(error.empty()) << error;
  const std::string tls = " --target " + server.target() + " --ca-cert " + dir + "/ca.pem --client-cert " + dir +
                          "/client.pem --client-key " + dir + "/client.key --server-name localhost";
  auto r = RunClient("info" + tls + " --token-file " + dir + "/token");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("image_size   80"), std::string::npos) << r.out;
  r = RunClient("loadtest --requests 4" + tls + " --token s3cret");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("requests   4 (ok 4)"), std::string::npos) << r.out;
  // No token: refused by the service, and said so.
  r = RunClient("info" + tls);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("UNAUTHENTICATED"), std::string::npos) << r.err;
  r = RunClient("loadtest --requests 3" + tls);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("UNAUTHENTICATED 3"), std::string::npos) << r.out;
  // Plaintext against a TLS port, or TLS without the client certificate: no connection.
  r = RunClient("info --connect-timeout-ms 2000 --target " + server.target() + " --token s3cret", 30);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_LT(r.seconds, 5.0);
  r = RunClient("info --connect-timeout-ms 2000 --target " + server.target() + " --ca-cert " + dir +
                    "/ca.pem --server-name localhost --token s3cret",
                30);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_LT(r.seconds, 5.0);
  EXPECT_EQ(server.Stop(), 0) << server.log();
}

}  // namespace
}  // namespace anoclip::client
