// anoclip-server in-process on a loopback port with the tiny reference model, driven over gRPC.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include <opencv2/imgcodecs.hpp>

#include "server_fixture.h"

namespace anoclip::server {
namespace {

TEST_F(ServerTest, UnaryDetectAnswersScoresHeatmapAndRegions) {
  StartServer(TinyConfig());
  auto request = Request(2, "metal nut", "r1");
  request.mutable_options()->set_heatmap_format(anoclip::v1::HEATMAP_FORMAT_PNG);
  request.mutable_options()->set_threshold(0.5f);
  DetectResponse response;
  auto status = Detect(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.request_id(), "r1");
  EXPECT_EQ(response.heatmap().width(), 200);
  EXPECT_EQ(response.heatmap().height(), 150);
  cv::Mat png = cv::imdecode(std::vector<uchar>(response.heatmap().data().begin(), response.heatmap().data().end()),
                             cv::IMREAD_UNCHANGED);
  EXPECT_EQ(png.cols, 200);
  EXPECT_TRUE(response.has_is_anomalous());
  EXPECT_EQ(response.class_name(), "metal nut");
  EXPECT_FALSE(response.model_id().empty());
  EXPECT_GT(response.timings().total_seconds(), 0);

  // Case 0 needs no resize: its score is the reference's.
  ASSERT_TRUE(Detect(Request(0, "bottle"), &response).ok());
  EXPECT_NEAR(response.image_score(), 0.4791589677, 1e-5);

  // float32 heatmap at model resolution.
  request.mutable_options()->set_heatmap_format(anoclip::v1::HEATMAP_FORMAT_FLOAT32);
  request.mutable_options()->set_heatmap_size(anoclip::v1::HEATMAP_SIZE_MODEL);
  ASSERT_TRUE(Detect(request, &response).ok());
  EXPECT_EQ(response.heatmap().data().size(), 80u * 80u * 4u);
}

// With oneDNN, the server packs the vision weights on its own thread once SERVING: requests sent
// at once, whose forwards meet the packing, score as the reference and as a request sent after it.
TEST_F(ServerTest, RequestsMeetingTheWeightPackingScoreAsAfterIt) {
  auto config = TinyConfig();
  config.gemm = "onednn";
  config.warm = {{"bottle", ""}};
  StartServer(config);
  std::vector<DetectResponse> early(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] { EXPECT_TRUE(Detect(Request(0, "bottle"), &early[i]).ok()); });
  }
  for (auto& thread : threads) thread.join();
  DetectResponse late;
  ASSERT_TRUE(Detect(Request(0, "bottle"), &late).ok());
  EXPECT_NEAR(late.image_score(), 0.4791589677, 1e-5);
  for (const auto& response : early) {
    EXPECT_NEAR(response.image_score(), late.image_score(), 1e-5);
    EXPECT_NEAR(response.max_pixel_score(), late.max_pixel_score(), 1e-5);
  }
}

TEST_F(ServerTest, AMixedClassBatchScoresLikeOneByOne) {
  auto config = TinyConfig();
  config.max_batch = 8;
  config.max_queue_delay_ms = 300;  // long enough for the three to meet in one batch
  StartServer(config);
  const std::vector<std::pair<int, std::string>> cases = {{0, "bottle"}, {1, "carpet"}, {2, "metal nut"}};
  std::vector<DetectResponse> single(3), batched(3);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Detect(Request(cases[i].first, cases[i].second), &single[i]).ok());
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] { EXPECT_TRUE(Detect(Request(cases[i].first, cases[i].second), &batched[i]).ok()); });
  }
  for (auto& t : threads) t.join();
  int max_batch_seen = 0;
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(batched[i].image_score(), single[i].image_score(), 1e-5) << i;
    EXPECT_NEAR(batched[i].max_pixel_score(), single[i].max_pixel_score(), 1e-5) << i;
    max_batch_seen = std::max(max_batch_seen, batched[i].timings().batch_size());
  }
  EXPECT_EQ(max_batch_seen, 3);
}

TEST_F(ServerTest, InspectStreamAnswersAHundredRequestsInFlight) {
  StartServer(TinyConfig());
  grpc::ClientContext context;
  auto stream = stub_->Inspect(&context);
  const std::vector<std::string> classes = {"bottle", "carpet", "metal nut"};
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(stream->Write(Inspect(Request(i % 3, classes[i % 3], "id-" + std::to_string(i)))));
  }
  stream->WritesDone();
  std::set<std::string> ids;
  anoclip::v1::InspectResponse response;
  while (stream->Read(&response)) {
    EXPECT_FALSE(response.has_error()) << response.error().message();
    EXPECT_TRUE(response.has_detection());
    ids.insert(response.request_id());
  }
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_EQ(ids.size(), 100u);
  EXPECT_EQ(ids.count("id-0"), 1u);
  EXPECT_EQ(ids.count("id-99"), 1u);
}

TEST_F(ServerTest, ConcurrentFirstRequestsBuildTheClassOnce) {
  StartServer(TinyConfig());
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&] {
      DetectResponse response;
      if (Detect(Request(0, "hazelnut"), &response).ok()) ++ok;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok, 16);
  const std::string metrics = Metrics();
  EXPECT_NE(metrics.find("anoclip_text_bank_builds_total 1\n"), std::string::npos) << metrics.substr(0, 2000);
  EXPECT_EQ(metrics.find("anoclip_text_bank_misses_total 0\n"), std::string::npos);
}

TEST_F(ServerTest, BadInputsAreInvalidArgumentAndTheServerKeepsServing) {
  StartServer(TinyConfig());
  const std::string png = CaseImage(0);
  std::string huge = png.substr(0, 33);
  const uint8_t size[8] = {0, 1, 0x86, 0xA0, 0, 1, 0x86, 0xA0};  // 100000 x 100000
  std::memcpy(huge.data() + 16, size, 8);
  std::string zero = png.substr(0, 33);
  std::memset(zero.data() + 16, 0, 8);
  struct Case {
    std::string name;
    std::function<void(DetectRequest&)> edit;
  };
  const std::vector<Case> cases = {
      {"empty bytes", [](DetectRequest& r) { r.set_image_bytes(""); }},
      {"random bytes", [](DetectRequest& r) { r.set_image_bytes("\x01\x02random garbage bytes"); }},
      {"truncated png", [&](DetectRequest& r) { r.set_image_bytes(png.substr(0, png.size() / 2)); }},
      {"0x0", [&](DetectRequest& r) { r.set_image_bytes(zero); }},
      {"100000x100000 header", [&](DetectRequest& r) { r.set_image_bytes(huge); }},
      {"unknown kind", [](DetectRequest& r) { r.mutable_class_spec()->set_kind(static_cast<anoclip::v1::Kind>(7)); }},
      {"empty class name", [](DetectRequest& r) { r.mutable_class_spec()->set_name(""); }},
      {"10 KB class name", [](DetectRequest& r) { r.mutable_class_spec()->set_name(std::string(10240, 'x')); }},
      {"raw tensor with a wrong shape", [](DetectRequest& r) {
         r.mutable_raw()->set_data(std::string(100, '\0'));
         r.mutable_raw()->add_shape(10);
         r.mutable_raw()->add_shape(10);
         r.mutable_raw()->add_shape(3);
       }},
      {"too many custom prompts", [](DetectRequest& r) {
         for (int i = 0; i < 100; ++i) r.mutable_class_spec()->add_normal_states("fine {}");
       }},
      {"threshold out of range", [](DetectRequest& r) { r.mutable_options()->set_threshold(2.f); }},
      {"views 5", [](DetectRequest& r) { r.mutable_options()->set_views(5); }},
  };
  for (const auto& c : cases) {
    auto request = Request(0, "bottle");
    c.edit(request);
    DetectResponse response;
    auto status = Detect(request, &response);
    EXPECT_EQ(status.error_code(), grpc::INVALID_ARGUMENT) << c.name << ": " << status.error_message();
  }
  DetectResponse response;
  EXPECT_TRUE(Detect(Request(0, "bottle"), &response).ok());
  // A raw tensor of the right shape works.
  auto raw = Request(0, "bottle");
  raw.mutable_raw()->set_data(std::string(32 * 24 * 3, '\x40'));
  for (int64_t d : {24, 32, 3}) raw.mutable_raw()->add_shape(d);
  EXPECT_TRUE(Detect(raw, &response).ok());
}

TEST_F(ServerTest, PastDeadlineIsDeadlineExceeded) {
  auto config = TinyConfig();
  config.max_queue_delay_ms = 1000;  // queued well past the caller's deadline
  StartServer(config);
  DetectResponse warm;
  ASSERT_TRUE(Detect(Request(0, "bottle"), &warm).ok());
  DetectResponse response;
  auto status = Detect(Request(0, "bottle"), &response, 200);
  EXPECT_EQ(status.error_code(), grpc::DEADLINE_EXCEEDED);
  DetectResponse after;
  EXPECT_TRUE(Detect(Request(0, "bottle"), &after).ok());
}

TEST_F(ServerTest, FullQueueIsResourceExhausted) {
  auto config = TinyConfig();
  config.max_batch = 1;
  config.queue_capacity = 1;
  config.max_queue_delay_ms = 0;
  StartServer(config);
  DetectResponse warm;
  ASSERT_TRUE(Detect(Request(0, "bottle"), &warm).ok());
  std::atomic<int> exhausted{0}, ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 24; ++i) {
    threads.emplace_back([&] {
      auto request = Request(2, "bottle");
      request.mutable_options()->set_views(22);  // slower batches so the queue fills
      DetectResponse response;
      auto status = Detect(request, &response);
      if (status.error_code() == grpc::RESOURCE_EXHAUSTED) ++exhausted;
      if (status.ok()) ++ok;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_GT(exhausted, 0);
  EXPECT_GT(ok, 0);
  EXPECT_EQ(exhausted + ok, 24);
}

TEST_F(ServerTest, ClassesCanBePreparedListedAndEvicted) {
  StartServer(TinyConfig());
  grpc::ClientContext prepare_context;
  anoclip::v1::PrepareClassRequest prepare;
  prepare.mutable_class_spec()->set_name("carpet");
  anoclip::v1::PrepareClassResponse prepared;
  ASSERT_TRUE(stub_->PrepareClass(&prepare_context, prepare, &prepared).ok());
  EXPECT_FALSE(prepared.cached());
  EXPECT_EQ(prepared.prompts_per_state(), 462);
  grpc::ClientContext list_context;
  anoclip::v1::ListClassesResponse list;
  ASSERT_TRUE(stub_->ListClasses(&list_context, {}, &list).ok());
  ASSERT_EQ(list.classes_size(), 1);
  EXPECT_EQ(list.classes(0).name(), "carpet");
  EXPECT_EQ(list.classes(0).kind(), anoclip::v1::KIND_TEXTURE);
  grpc::ClientContext evict_context;
  anoclip::v1::EvictClassRequest evict;
  evict.mutable_class_spec()->set_name("carpet");
  anoclip::v1::EvictClassResponse evicted;
  ASSERT_TRUE(stub_->EvictClass(&evict_context, evict, &evicted).ok());
  EXPECT_TRUE(evicted.evicted());
  grpc::ClientContext info_context;
  anoclip::v1::GetModelInfoResponse info;
  ASSERT_TRUE(stub_->GetModelInfo(&info_context, {}, &info).ok());
  EXPECT_EQ(info.image_size(), 80);
  EXPECT_EQ(info.embed_dim(), 32);
}

TEST_F(ServerTest, TextBankPersistsAcrossRestarts) {
  auto config = TinyConfig();
  config.cache_dir = ::testing::TempDir() + "/text_bank_cache";
  std::filesystem::remove_all(config.cache_dir);
  StartServer(config);
  DetectResponse first;
  ASSERT_TRUE(Detect(Request(0, "bottle"), &first).ok());
  server_->Drain(absl::Seconds(5));
  server_.reset();
  StartServer(config);
  DetectResponse second;
  ASSERT_TRUE(Detect(Request(0, "bottle"), &second).ok());
  EXPECT_FLOAT_EQ(first.image_score(), second.image_score());
  EXPECT_NE(Metrics().find("anoclip_text_bank_builds_total 0\n"), std::string::npos);
}

TEST_F(ServerTest, MetricsShowTheFamiliesAfterTraffic) {
  StartServer(TinyConfig());
  DetectResponse response;
  ASSERT_TRUE(Detect(Request(0, "bottle"), &response).ok());
  const std::string metrics = Metrics();
  for (const char* family :
       {"anoclip_requests_total{code=\"OK\",method=\"Detect\"} 1", "anoclip_request_duration_seconds_count",
        "anoclip_queue_duration_seconds_count", "anoclip_encode_duration_seconds_count",
        "anoclip_postprocess_duration_seconds_count", "anoclip_batch_size_count", "anoclip_queue_depth",
        "anoclip_in_flight_requests", "anoclip_text_bank_hits_total", "anoclip_text_bank_entries 1",
        "anoclip_image_score_count{class=\"bottle\"}", "anoclip_model_info", "anoclip_build_info",
        "anoclip_tta_duration_seconds"}) {
    EXPECT_NE(metrics.find(family), std::string::npos) << family;
  }
}

// A client's retry arrives marked with grpc-previous-rpc-attempts: such calls are counted, by
// method, and first attempts are not. The retries come from a channel whose retry policy (for
// this test only) retries INVALID_ARGUMENT, which a request without an image always gets.
TEST_F(ServerTest, RetriedCallsAreCounted) {
  StartServer(TinyConfig());
  DetectResponse response;
  ASSERT_TRUE(Detect(Request(0, "bottle"), &response).ok());
  EXPECT_EQ(Metrics().find("anoclip_retried_requests_total{"), std::string::npos);
  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(R"({"methodConfig": [{"name": [{"service": "anoclip.v1.AnomalyDetectionService"}],
      "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.01s", "backoffMultiplier": 1,
                      "retryableStatusCodes": ["INVALID_ARGUMENT"]}}]})");
  auto retrying = AnomalyDetectionService::NewStub(grpc::CreateCustomChannel(
      "127.0.0.1:" + std::to_string(server_->grpc_port()), grpc::InsecureChannelCredentials(), args));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  DetectRequest no_image;
  no_image.mutable_class_spec()->set_name("bottle");
  EXPECT_EQ(retrying->Detect(&context, no_image, &response).error_code(), grpc::INVALID_ARGUMENT);
  const std::string metrics = Metrics();
  EXPECT_NE(metrics.find("anoclip_requests_total{code=\"INVALID_ARGUMENT\",method=\"Detect\"} 3"), std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("anoclip_retried_requests_total{method=\"Detect\"} 2"), std::string::npos) << metrics;
}

TEST_F(ServerTest, HealthIsServingAndNotServingAfterDrain) {
  StartServer(TinyConfig());
  // Checked through the standard health service.
  grpc::ClientContext context;
  grpc::ByteBuffer request_buffer, response_buffer;
  // grpc.health.v1.HealthCheckRequest{service: ""} serialises to an empty message.
  grpc::Slice empty("");
  request_buffer = grpc::ByteBuffer(&empty, 1);
  grpc::GenericStub stub(channel_);
  grpc::CompletionQueue cq;
  auto call = stub.PrepareUnaryCall(&context, "/grpc.health.v1.Health/Check", request_buffer, &cq);
  call->StartCall();
  grpc::Status status;
  call->Finish(&response_buffer, &status, reinterpret_cast<void*>(1));
  void* tag;
  bool ok;
  ASSERT_TRUE(cq.Next(&tag, &ok));
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  response_buffer.Dump(&slices);
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));  // status: SERVING
  server_->Drain(absl::Seconds(5));
  DetectResponse response;
  EXPECT_FALSE(Detect(Request(0, "bottle"), &response, 2000).ok());
  cq.Shutdown();
}

TEST_F(ServerTest, DrainUnderLoadLosesNoAcceptedRequest) {
  auto config = TinyConfig();
  config.max_batch = 4;
  StartServer(config);
  DetectResponse warm;
  ASSERT_TRUE(Detect(Request(0, "bottle"), &warm).ok());
  std::atomic<int> ok{0}, refused{0}, other{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      for (int j = 0; j < 6; ++j) {
        DetectResponse response;
        auto status = Detect(Request(0, "bottle"), &response, 60000);
        if (status.ok()) {
          ++ok;
        } else if (status.error_code() == grpc::UNAVAILABLE) {
          ++refused;  // arrived after the drain began: never accepted
        } else {
          ++other;
          ADD_FAILURE() << "code " << status.error_code() << ": " << status.error_message();
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // Long enough for the accepted requests on a slow (sanitizer) build: the drain returns as soon
  // as they are answered and callers have gone quiet; only past its timeout would gRPC's shutdown
  // cancel what is still running, by design.
  server_->Drain(absl::Seconds(60));
  for (auto& t : threads) t.join();
  EXPECT_EQ(other, 0) << "an accepted request was lost";
  EXPECT_GT(ok, 0);
  EXPECT_EQ(ok + refused, 48);
}

}  // namespace
}  // namespace anoclip::server
