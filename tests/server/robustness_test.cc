// Requests that once hurt the server, each answered now with a clear status while the server
// keeps serving: numeric options past their bounds, oversized prompt specs, a stream that is
// never read, calls during a drain, a second server on a busy port, made-up class names.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include <opencv2/imgcodecs.hpp>

#include "server_fixture.h"

namespace anoclip::server {
namespace {

class RobustnessTest : public ServerTest {
 protected:
  void ExpectServing() {
    DetectResponse response;
    auto status = Detect(Request(0, "bottle"), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_NEAR(response.image_score(), 0.4791589677, 1e-5);
  }
};

// Reads a counter's value from /metrics text, 0 when absent.
double MetricValue(const std::string& metrics, const std::string& series) {
  const size_t at = metrics.find("\n" + series + " ");
  return at == std::string::npos ? 0 : std::stod(metrics.substr(at + series.size() + 2));
}

TEST_F(RobustnessTest, TtaWithAHugeLearningRateIsRefusedAndTheServerLives) {
  StartServer(TinyConfig());
  auto request = Request(0, "bottle");
  request.mutable_options()->set_tta(true);
  request.mutable_options()->mutable_tta_options()->set_lr(1e38f);
  DetectResponse response;
  auto status = Detect(request, &response);
  EXPECT_EQ(status.error_code(), grpc::INVALID_ARGUMENT) << status.error_message();
  EXPECT_NE(status.error_message().find("tta lr"), std::string::npos) << status.error_message();
  ExpectServing();
  // The largest allowed learning rate runs to the end.
  request.mutable_options()->mutable_tta_options()->set_lr(1.f);
  status = Detect(request, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(RobustnessTest, AnOversizedCustomSpecIsRefusedBeforeAnyTextBuild) {
  StartServer(TinyConfig());
  auto request = Request(0, "bottle");
  auto* spec = request.mutable_class_spec();
  for (int i = 0; i < 64; ++i) {
    spec->add_domains("photo " + std::to_string(i));
    spec->add_normal_states("good " + std::to_string(i) + " {}");
    spec->add_abnormal_states("bad " + std::to_string(i) + " {}");
  }
  DetectResponse response;
  auto status = Detect(request, &response);
  EXPECT_EQ(status.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("prompts per state"), std::string::npos) << status.error_message();
  EXPECT_EQ(MetricValue(Metrics(), "anoclip_text_bank_builds_total"), 0);
  ExpectServing();
}

TEST_F(RobustnessTest, AStreamThatIsNeverReadStopsBeingRead) {
  auto config = TinyConfig();
  config.max_stream_unwritten = 4;
  StartServer(config);
  ExpectServing();  // builds the class, so the stream's requests are quick
  // A smooth 700x700 image compresses to a small request, and its float32 heatmap at input size
  // is 1.96 MB: a few of them fill what the transport buffers, so unread responses stay unwritten.
  cv::Mat rgb(700, 700, CV_8UC3);
  for (int y = 0; y < rgb.rows; ++y) {
    for (int x = 0; x < rgb.cols; ++x) rgb.at<cv::Vec3b>(y, x) = cv::Vec3b(x % 256, y % 256, 128);
  }
  std::vector<uchar> png;
  ASSERT_TRUE(cv::imencode(".png", rgb, png));
  auto request = Request(0, "bottle");
  request.set_image_bytes(std::string(png.begin(), png.end()));
  request.mutable_options()->set_heatmap_format(anoclip::v1::HEATMAP_FORMAT_FLOAT32);
  grpc::ClientContext context;
  auto stream = stub_->Inspect(&context);
  constexpr int kSent = 40;
  std::thread writer([&] {
    for (int i = 0; i < kSent; ++i) {
      if (!stream->Write(Inspect(request))) break;  // blocks once the server stops reading
    }
  });
  const std::string answered = "anoclip_requests_total{code=\"OK\",method=\"Inspect\"}";
  // Wait (bounded) until the server has answered up to its bound, then check it stops there.
  double seen = 0;
  for (int i = 0; i < 200 && seen < config.max_stream_unwritten; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    seen = MetricValue(Metrics(), answered);
  }
  std::this_thread::sleep_for(std::chrono::seconds(1));
  seen = MetricValue(Metrics(), answered);
  EXPECT_GE(seen, 1);
  std::cerr << "requests answered on the unread stream: " << seen << " of " << kSent << " sent\n";
  // Some responses reach the transport's buffers (its flow-control windows grow to a few MB);
  // the rest must not be read, let alone held.
  EXPECT_LE(seen, config.max_stream_unwritten + 8) << "the server kept reading a stream nobody reads";
  context.TryCancel();
  writer.join();
  ExpectServing();
}

TEST_F(RobustnessTest, ACallDuringADrainIsUnavailable) {
  auto config = TinyConfig();
  config.drain_timeout_s = 10;
  StartServer(config);
  ExpectServing();
  // An open stream keeps the drain waiting for it.
  grpc::ClientContext stream_context;
  auto stream = stub_->Inspect(&stream_context);
  ASSERT_TRUE(stream->Write(Inspect(Request(0, "bottle", "held"))));
  anoclip::v1::InspectResponse held;
  ASSERT_TRUE(stream->Read(&held));
  std::thread drain([&] { server_->Drain(absl::Seconds(10)); });
  // Calls are refused once the drain has begun (bounded wait for it to begin).
  grpc::Status status;
  for (int i = 0; i < 500; ++i) {
    DetectResponse response;
    status = Detect(Request(0, "bottle"), &response);
    if (!status.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(status.error_code(), grpc::UNAVAILABLE) << status.error_message();
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  drain.join();
}

TEST_F(RobustnessTest, ABusyPortOrABadPortStopsStartUp) {
  StartServer(TinyConfig());
  auto config = TinyConfig();
  config.listen = "127.0.0.1:" + std::to_string(server_->grpc_port());
  auto second = AnoclipServer::Start(config);
  EXPECT_FALSE(second.ok()) << "a second server shares the gRPC port";
  config = TinyConfig();
  config.metrics_listen = "127.0.0.1:" + std::to_string(server_->metrics_port());
  second = AnoclipServer::Start(config);
  EXPECT_FALSE(second.ok()) << "a second server shares the metrics port";
  for (const char* address : {":99999", "127.0.0.1:99999", "127.0.0.1", ":50051"}) {
    config = TinyConfig();
    config.listen = address;
    second = AnoclipServer::Start(config);
    EXPECT_EQ(second.status().code(), absl::StatusCode::kInvalidArgument) << address;
  }
  ExpectServing();
}

TEST_F(RobustnessTest, MadeUpClassNamesAreLimited) {
  auto config = TinyConfig();
  config.max_class_builds_per_minute = 2;
  config.warm = {{"bottle", ""}};  // warming is never limited
  StartServer(config);
  std::vector<grpc::StatusCode> codes;
  for (const char* name : {"bottel", "botle", "bottl", "bottle"}) {
    DetectResponse response;
    codes.push_back(Detect(Request(0, name), &response).error_code());
  }
  EXPECT_EQ(codes, (std::vector<grpc::StatusCode>{grpc::OK, grpc::OK, grpc::RESOURCE_EXHAUSTED, grpc::OK}));
  EXPECT_EQ(MetricValue(Metrics(), "anoclip_text_bank_builds_refused_total"), 1);
  ExpectServing();
}

TEST_F(RobustnessTest, AnAllowListRefusesOtherClasses) {
  auto config = TinyConfig();
  config.allowed_classes = {"bottle"};
  StartServer(config);
  DetectResponse response;
  EXPECT_EQ(Detect(Request(0, "bottel"), &response).error_code(), grpc::PERMISSION_DENIED);
  ExpectServing();
}

TEST_F(RobustnessTest, EvictingAnEmptyNameIsInvalidArgument) {
  StartServer(TinyConfig());
  grpc::ClientContext context;
  anoclip::v1::EvictClassResponse evicted;
  EXPECT_EQ(stub_->EvictClass(&context, {}, &evicted).error_code(), grpc::INVALID_ARGUMENT);
}

// The binary's exit codes: 2 for flags, 3 for a model that cannot be loaded (missing or corrupt).
TEST(ServerExitCodeTest, AModelThatCannotBeLoadedHasItsOwnExitCode) {
  const std::string dir = ::testing::TempDir() + "/corrupt_model";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/open_clip_config.json") << "{not json";
  const std::string server = ::anoclip::testing::BinDir() + "/anoclip-server";
  const std::string common = " --listen 127.0.0.1:0 --metrics-listen '' >" + dir + "/out.log 2>&1";
  auto exit_code = [](const std::string& command) {
    const int status = std::system(command.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  EXPECT_EQ(exit_code(server + " --model " + dir + "/missing" + common), 3);
  EXPECT_EQ(exit_code(server + " --model " + dir + common), 3);
  std::ifstream log(dir + "/out.log");
  const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("cannot load the model from " + dir), std::string::npos) << text;
  EXPECT_EQ(exit_code(server + " --model " + dir + " --max-batch 0" + common), 2);
}

}  // namespace
}  // namespace anoclip::server
