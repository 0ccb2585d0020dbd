// RunLoad against an in-process stand-in for the service that answers at once (or after a set
// delay), so the load generator's counting, bounds, rates, streams and warm-up are checked
// without a model.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <set>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "anoclip/v1/anoclip.grpc.pb.h"
#include "client/loadtest.h"

namespace anoclip::client {
namespace {

using anoclip::v1::DetectRequest;
using anoclip::v1::DetectResponse;
using Clock = std::chrono::steady_clock;

class FakeService final : public anoclip::v1::AnomalyDetectionService::Service {
 public:
  std::atomic<int> delay_ms{0};
  std::atomic<int> fail_every{0};  // every n-th request (1-based) is RESOURCE_EXHAUSTED
  // Inspect answers nothing until this many streams are open (bounded by kHoldLimit), so that no
  // worker can take every request before the others have opened theirs.
  std::atomic<int> hold_answers_until_streams{0};
  static constexpr absl::Duration kHoldLimit = absl::Seconds(20);
  std::string required_token;

  grpc::Status Detect(grpc::ServerContext* context, const DetectRequest* request, DetectResponse* response) override {
    if (!Authorized(*context)) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "no token");
    const int n = Begin(*request, context->peer(), "Detect");
    Work();
    End();
    if (fail_every > 0 && n % fail_every == 0) return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "queue full");
    response->set_request_id(request->request_id());
    response->set_image_score(0.5f);
    return grpc::Status::OK;
  }

  grpc::Status Inspect(grpc::ServerContext* context,
                       grpc::ServerReaderWriter<anoclip::v1::InspectResponse, anoclip::v1::InspectRequest>* stream) override {
    if (!Authorized(*context)) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "no token");
    {
      absl::MutexLock lock(&mutex_);
      ++streams_;
    }
    anoclip::v1::InspectRequest inspect;
    while (stream->Read(&inspect)) {
      const DetectRequest& request = inspect.detect();
      if (const int hold = hold_answers_until_streams.load(); hold > 0) {
        absl::MutexLock lock(&mutex_);
        auto opened = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) { return streams_ >= hold; };
        mutex_.AwaitWithTimeout(absl::Condition(&opened), kHoldLimit);  // past the limit: answer, and the test sees too few streams
      }
      const int n = Begin(request, context->peer(), "Inspect");
      Work();
      End();
      anoclip::v1::InspectResponse response;
      response.set_request_id(request.request_id());
      if (fail_every > 0 && n % fail_every == 0) {
        response.mutable_error()->set_code(grpc::StatusCode::RESOURCE_EXHAUSTED);
        response.mutable_error()->set_message("queue full");
      } else {
        response.mutable_detection()->set_request_id(request.request_id());
      }
      stream->Write(response);
    }
    return grpc::Status::OK;
  }

  int calls() {
    absl::MutexLock lock(&mutex_);
    return calls_;
  }
  int in_flight() {
    absl::MutexLock lock(&mutex_);
    return in_flight_;
  }
  int tta_calls() {
    absl::MutexLock lock(&mutex_);
    return tta_;
  }
  int streams() {
    absl::MutexLock lock(&mutex_);
    return streams_;
  }
  std::set<std::string> peers() {
    absl::MutexLock lock(&mutex_);
    return peers_;
  }
  std::set<std::string> ids() {
    absl::MutexLock lock(&mutex_);
    return ids_;
  }
  std::map<std::string, int> classes() {
    absl::MutexLock lock(&mutex_);
    return classes_;
  }
  std::map<std::string, int> methods() {
    absl::MutexLock lock(&mutex_);
    return methods_;
  }

 private:
  bool Authorized(const grpc::ServerContext& context) {
    if (required_token.empty()) return true;
    auto it = context.client_metadata().find("authorization");
    return it != context.client_metadata().end() &&
           std::string(it->second.data(), it->second.size()) == "Bearer " + required_token;
  }
  int Begin(const DetectRequest& request, const std::string& peer, const std::string& method) {
    absl::MutexLock lock(&mutex_);
    ++in_flight_;
    if (request.options().tta()) ++tta_;
    peers_.insert(peer);
    ids_.insert(request.request_id());
    ++classes_[request.class_spec().name()];
    ++methods_[method];
    return ++calls_;
  }
  void Work() {
    if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms.load()));
  }
  void End() {
    absl::MutexLock lock(&mutex_);
    --in_flight_;
  }

  absl::Mutex mutex_;
  int calls_ ABSL_GUARDED_BY(mutex_) = 0;
  int in_flight_ ABSL_GUARDED_BY(mutex_) = 0;
  int tta_ ABSL_GUARDED_BY(mutex_) = 0;
  int streams_ ABSL_GUARDED_BY(mutex_) = 0;
  std::set<std::string> peers_ ABSL_GUARDED_BY(mutex_);
  std::set<std::string> ids_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, int> classes_ ABSL_GUARDED_BY(mutex_);
  std::map<std::string, int> methods_ ABSL_GUARDED_BY(mutex_);
};

class RunLoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    connection_.target = "127.0.0.1:" + std::to_string(port_);
    connection_.deadline_ms = 5000;
  }
  void TearDown() override { server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2)); }

  std::vector<DetectRequest> Mix(const std::vector<std::string>& classes = {"bottle"}) {
    std::vector<DetectRequest> mix;
    for (const auto& name : classes) {
      DetectRequest request;
      request.set_image_bytes("image");
      request.mutable_class_spec()->set_name(name);
      mix.push_back(request);
    }
    return mix;
  }

  FakeService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  ConnectionOptions connection_;
};

TEST_F(RunLoadTest, ClosedLoopCountsWhatTheServerAnswered) {
  service_.delay_ms = 5;
  LoadOptions options;
  options.concurrency = 4;
  options.duration = absl::Milliseconds(800);
  const auto start = Clock::now();
  auto result = RunLoad(connection_, options, Mix());
  ASSERT_TRUE(result.ok()) << result.status();
  // Bounded by its duration (the limit only catches a hang; no rate is asserted, since another
  // process may hold the cores).
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(30));
  EXPECT_EQ(result->requests, service_.calls());
  EXPECT_EQ(result->ok, result->requests);
  EXPECT_EQ(result->codes.at("OK"), result->requests);
  EXPECT_GE(result->requests, 1);
  EXPECT_GE(result->latency.min, 0.005);
  EXPECT_GE(result->seconds, 0.8);
  EXPECT_NEAR(result->throughput(), result->ok / result->seconds, 1e-9);
  EXPECT_EQ(static_cast<int>(service_.ids().size()), service_.calls()) << "request ids are unique";
}

TEST_F(RunLoadTest, RequestCountBoundsTheRun) {
  LoadOptions options;
  options.concurrency = 3;
  options.max_requests = 37;
  options.duration = absl::Seconds(600);
  const auto start = Clock::now();
  auto result = RunLoad(connection_, options, Mix());
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(60));  // a hang, not a rate
  EXPECT_EQ(result->requests, 37);
  EXPECT_EQ(service_.calls(), 37);
}

TEST_F(RunLoadTest, OpenLoopSendsAtTheConstantRate) {
  LoadOptions options;
  options.rps = 40;
  options.concurrency = 8;
  options.duration = absl::Seconds(1);
  const auto start = Clock::now();
  auto result = RunLoad(connection_, options, Mix());
  ASSERT_TRUE(result.ok()) << result.status();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  EXPECT_EQ(result->requests, 40);  // due at 0, 25 ms, ..., 975 ms
  EXPECT_EQ(service_.calls(), 40);
  EXPECT_GT(elapsed, 0.9);
  EXPECT_LT(elapsed, 3.0);
}

TEST_F(RunLoadTest, OpenLoopPoissonStaysNearTheRateAndInsideTheDuration) {
  LoadOptions options;
  options.rps = 100;
  options.poisson = true;
  options.concurrency = 8;
  options.duration = absl::Seconds(1);
  options.seed = 3;
  auto result = RunLoad(connection_, options, Mix());
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->requests, service_.calls());
  EXPECT_GT(result->requests, 60);
  EXPECT_LT(result->requests, 140);
  EXPECT_LT(result->seconds, 2.0);
}

TEST_F(RunLoadTest, OpenLoopMeasuresFromTheDueTimeWhenTheServerFallsBehind) {
  // One slot in flight, 50 ms per answer, 100 due per second: later requests wait for their
  // slot and that wait is in their latency.
  service_.delay_ms = 50;
  LoadOptions options;
  options.rps = 100;
  options.concurrency = 1;
  options.max_requests = 10;
  auto result = RunLoad(connection_, options, Mix());
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->requests, 10);
  EXPECT_GT(result->latency.max, 0.35);  // the 10th was due at 90 ms and answered after ~500 ms
  EXPECT_LT(result->latency.min, 0.1);
}

TEST_F(RunLoadTest, StreamModeSendsOverOneInspectStreamPerWorker) {
  // Each worker opens its stream with its first request and waits for each answer before taking
  // the next, so while the first answer is held every worker takes a request and opens a stream.
  service_.hold_answers_until_streams = 3;
  LoadOptions options;
  options.stream = true;
  options.concurrency = 3;
  options.max_requests = 60;
  auto result = RunLoad(connection_, options, Mix());
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->requests, 60);
  EXPECT_EQ(result->ok, 60);
  EXPECT_EQ(service_.methods()["Inspect"], 60);
  EXPECT_EQ(service_.methods()["Detect"], 0);
  EXPECT_EQ(service_.streams(), 3);
}

TEST_F(RunLoadTest, ErrorsAreCountedByCodeAndMessage) {
  service_.fail_every = 4;
  for (bool stream : {false, true}) {
    SCOPED_TRACE(stream);
    const int before = service_.calls();
    LoadOptions options;
    options.stream = stream;
    options.concurrency = 1;  // one at a time, so exactly every 4th fails
    options.max_requests = 40;
    auto result = RunLoad(connection_, options, Mix());
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(before % 4, 0);
    EXPECT_EQ(result->requests, 40);
    EXPECT_EQ(result->ok, 30);
    EXPECT_EQ(result->codes.at("RESOURCE_EXHAUSTED"), 10);
    EXPECT_EQ(result->errors.at("queue full"), 10);
    EXPECT_EQ(result->latency.count, 30u);
  }
}

TEST_F(RunLoadTest, WarmupIsDrainedBeforeTheMeasuredPhaseAndNotRecorded) {
  service_.delay_ms = 10;
  LoadOptions options;
  options.concurrency = 4;
  options.warmup = absl::Milliseconds(300);
  options.duration = absl::Milliseconds(400);
  int calls_at_start = -1, in_flight_at_start = -1;
  auto result = RunLoad(connection_, options, Mix(), [&] {
    calls_at_start = service_.calls();
    in_flight_at_start = service_.in_flight();
    return absl::OkStatus();
  });
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_GT(calls_at_start, 0);
  EXPECT_EQ(in_flight_at_start, 0);
  EXPECT_EQ(result->requests, service_.calls() - calls_at_start);
}

TEST_F(RunLoadTest, AFailingStartHookEndsTheRun) {
  LoadOptions options;
  options.max_requests = 5;
  auto result = RunLoad(connection_, options, Mix(), [] { return absl::UnavailableError("no metrics"); });
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(service_.calls(), 0);
}

TEST_F(RunLoadTest, TtaShareAndClassMixAreApplied) {
  LoadOptions options;
  options.concurrency = 2;
  options.max_requests = 100;
  options.tta_share = 0.2;
  auto result = RunLoad(connection_, options, Mix({"bottle", "carpet"}));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(service_.tta_calls(), 20);
  EXPECT_EQ(service_.classes()["bottle"], 50);
  EXPECT_EQ(service_.classes()["carpet"], 50);
}

TEST_F(RunLoadTest, ConnectionsAreSeparateChannels) {
  LoadOptions options;
  options.concurrency = 6;
  options.connections = 3;
  options.max_requests = 60;
  auto result = RunLoad(connection_, options, Mix());
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(service_.peers().size(), 3u);
}

TEST_F(RunLoadTest, TheTokenIsSentAndAMissingOneIsCounted) {
  service_.required_token = "s3cret";
  LoadOptions options;
  options.max_requests = 8;
  auto refused = RunLoad(connection_, options, Mix());
  ASSERT_TRUE(refused.ok()) << refused.status();
  EXPECT_EQ(refused->ok, 0);
  EXPECT_EQ(refused->codes.at("UNAUTHENTICATED"), 8);
  connection_.token = "s3cret";
  auto accepted = RunLoad(connection_, options, Mix());
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  EXPECT_EQ(accepted->ok, 8);
  options.stream = true;
  accepted = RunLoad(connection_, options, Mix());
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  EXPECT_EQ(accepted->ok, 8);
}

TEST_F(RunLoadTest, TheDeadlineBoundsEachCall) {
  service_.delay_ms = 400;
  connection_.deadline_ms = 50;
  LoadOptions options;
  options.concurrency = 2;
  options.max_requests = 4;
  const auto start = Clock::now();
  auto result = RunLoad(connection_, options, Mix());
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(30));  // a hang; the codes show the deadline
  EXPECT_EQ(result->requests, 4);
  EXPECT_EQ(result->codes.at("DEADLINE_EXCEEDED"), 4);
  EXPECT_EQ(result->ok, 0);
}

TEST_F(RunLoadTest, ABrokenStreamEndsOnlyItsWorker) {
  // The deadline ends each stream after its first slow answer; the run still stops by itself.
  service_.delay_ms = 200;
  connection_.deadline_ms = 50;
  LoadOptions options;
  options.stream = true;
  options.concurrency = 2;
  options.duration = absl::Milliseconds(100);
  const auto start = Clock::now();
  auto result = RunLoad(connection_, options, Mix());
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(30));  // a hang, not a rate
  EXPECT_EQ(result->ok, 0);
  EXPECT_GE(result->requests, 1);
  EXPECT_LE(result->requests, 2);
}

}  // namespace
}  // namespace anoclip::client
