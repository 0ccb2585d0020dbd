// The client's service config: round_robin always, and with --max-attempts a retry of
// UNAVAILABLE answers, checked against an in-process stand-in that refuses its first calls; and
// --wait-for-ready, checked with a call made before its server has started.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>

#include <nlohmann/json.hpp>

#include "anoclip/v1/anoclip.grpc.pb.h"
#include "client/connection.h"
#include "client_process.h"

namespace anoclip::client {
namespace {

// Answers the first `refusals` calls with `refusal`, then OK.
class RefusingService final : public anoclip::v1::AnomalyDetectionService::Service {
 public:
  RefusingService(int refusals, grpc::StatusCode refusal) : refusals_(refusals), refusal_(refusal) {}
  grpc::Status Detect(grpc::ServerContext*, const anoclip::v1::DetectRequest*,
                      anoclip::v1::DetectResponse* response) override {
    if (calls_++ < refusals_) return grpc::Status(refusal_, "refused on purpose");
    response->set_image_score(0.25f);
    return grpc::Status::OK;
  }
  int calls() const { return calls_; }

 private:
  const int refusals_;
  const grpc::StatusCode refusal_;
  std::atomic<int> calls_{0};
};

struct Outcome {
  grpc::StatusCode code;
  int calls;
};

Outcome DetectOnce(int refusals, grpc::StatusCode refusal, int max_attempts) {
  RefusingService service(refusals, refusal);
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  EXPECT_GT(port, 0);
  ConnectionOptions options;
  options.target = "127.0.0.1:" + std::to_string(port);
  options.deadline_ms = 10000;
  options.max_attempts = max_attempts;
  auto channel = MakeChannel(options);
  EXPECT_TRUE(channel.ok());
  auto stub = anoclip::v1::AnomalyDetectionService::NewStub(*channel);
  grpc::ClientContext context;
  PrepareContext(context, options);
  anoclip::v1::DetectRequest request;
  anoclip::v1::DetectResponse response;
  const grpc::Status status = stub->Detect(&context, request, &response);
  server->Shutdown();
  return {status.error_code(), service.calls()};
}

TEST(RetryPolicyTest, WithoutRetriesUnavailableReachesTheCaller) {
  const Outcome outcome = DetectOnce(1, grpc::StatusCode::UNAVAILABLE, 1);
  EXPECT_EQ(outcome.code, grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(outcome.calls, 1);
}

TEST(RetryPolicyTest, UnavailableIsRetriedUpToMaxAttempts) {
  Outcome outcome = DetectOnce(2, grpc::StatusCode::UNAVAILABLE, 3);
  EXPECT_EQ(outcome.code, grpc::StatusCode::OK);
  EXPECT_EQ(outcome.calls, 3);
  outcome = DetectOnce(3, grpc::StatusCode::UNAVAILABLE, 3);  // out of attempts
  EXPECT_EQ(outcome.code, grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(outcome.calls, 3);
}

TEST(RetryPolicyTest, OtherErrorsAreNotRetried) {
  for (auto code : {grpc::StatusCode::INVALID_ARGUMENT, grpc::StatusCode::RESOURCE_EXHAUSTED,
                    grpc::StatusCode::DEADLINE_EXCEEDED}) {
    const Outcome outcome = DetectOnce(1, code, 5);
    EXPECT_EQ(outcome.code, code);
    EXPECT_EQ(outcome.calls, 1);
  }
}

TEST(RetryPolicyTest, ServiceConfigNamesRoundRobinAndTheRetryPolicy) {
  auto config = nlohmann::json::parse(ServiceConfigJson(1));
  EXPECT_EQ(config["loadBalancingConfig"][0].count("round_robin"), 1u);
  EXPECT_FALSE(config.contains("methodConfig"));
  config = nlohmann::json::parse(ServiceConfigJson(4));
  const auto& policy = config["methodConfig"][0]["retryPolicy"];
  EXPECT_EQ(config["methodConfig"][0]["name"][0]["service"], "anoclip.v1.AnomalyDetectionService");
  EXPECT_EQ(policy["maxAttempts"], 4);
  EXPECT_EQ(policy["retryableStatusCodes"], nlohmann::json::array({"UNAVAILABLE"}));
}

TEST(RetryPolicyTest, MaxAttemptsFlagIsBounded) {
  for (const char* bad : {"0", "6", "x"}) {
    auto args = Arguments::Parse({"--max-attempts", bad}, ConnectionFlags(), {});
    ASSERT_TRUE(args.ok());
    EXPECT_FALSE(ConnectionFromArguments(*args).ok()) << bad;
  }
  auto args = Arguments::Parse({"--max-attempts", "3"}, ConnectionFlags(), {});
  ASSERT_TRUE(args.ok());
  auto options = ConnectionFromArguments(*args);
  ASSERT_TRUE(options.ok());
  EXPECT_EQ(options->max_attempts, 3);
}

TEST(RetryPolicyTest, WaitForReadyFlag) {
  auto args = Arguments::Parse({"--wait-for-ready"}, ConnectionFlags(), ConnectionBoolFlags());
  ASSERT_TRUE(args.ok());
  auto options = ConnectionFromArguments(*args);
  ASSERT_TRUE(options.ok());
  EXPECT_TRUE(options->wait_for_ready);
  args = Arguments::Parse({}, ConnectionFlags(), ConnectionBoolFlags());
  ASSERT_TRUE(args.ok());
  options = ConnectionFromArguments(*args);
  ASSERT_TRUE(options.ok());
  EXPECT_FALSE(options->wait_for_ready);
}

// A Detect call made while nothing listens on the target: it fails at once, unless it waits for
// ready, in which case a server started there afterwards answers it.
TEST(RetryPolicyTest, WaitForReadyCallWaitsForAServerThatStartsLater) {
  const int port = ::anoclip::testing::FreePortOutsideEphemeralRange();
  ASSERT_GT(port, 0);
  ConnectionOptions options;
  options.target = "127.0.0.1:" + std::to_string(port);
  options.deadline_ms = 60000;
  options.max_attempts = 3;

  // Without: UNAVAILABLE as soon as the connection is refused.
  {
    auto channel = MakeChannel(options);
    ASSERT_TRUE(channel.ok());
    auto stub = anoclip::v1::AnomalyDetectionService::NewStub(*channel);
    grpc::ClientContext context;
    PrepareContext(context, options);
    anoclip::v1::DetectRequest request;
    anoclip::v1::DetectResponse response;
    EXPECT_EQ(stub->Detect(&context, request, &response).error_code(), grpc::StatusCode::UNAVAILABLE);
  }

  // With: the call is made, the channel finds nothing there (TRANSIENT_FAILURE), and only then
  // the server starts; the call is answered once the channel reconnects.
  options.wait_for_ready = true;
  auto channel = MakeChannel(options, 1);
  ASSERT_TRUE(channel.ok());
  auto stub = anoclip::v1::AnomalyDetectionService::NewStub(*channel);
  grpc::ClientContext context;
  PrepareContext(context, options);
  anoclip::v1::DetectRequest request;
  anoclip::v1::DetectResponse response;
  std::promise<grpc::Status> done;
  auto answered = done.get_future();
  stub->async()->Detect(&context, &request, &response, [&done](grpc::Status status) { done.set_value(status); });
  struct CancelUnlessAnswered {  // a failed assertion must not leave the call running
    grpc::ClientContext& context;
    std::future<grpc::Status>& answered;
    ~CancelUnlessAnswered() {
      if (!answered.valid()) return;
      context.TryCancel();
      answered.wait();
    }
  } guard{context, answered};
  const auto limit = std::chrono::system_clock::now() + std::chrono::seconds(30);
  grpc_connectivity_state state = (*channel)->GetState(/*try_to_connect=*/true);
  while (state != GRPC_CHANNEL_TRANSIENT_FAILURE && (*channel)->WaitForStateChange(state, limit)) {
    state = (*channel)->GetState(true);
  }
  ASSERT_EQ(state, GRPC_CHANNEL_TRANSIENT_FAILURE);
  EXPECT_EQ(answered.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout)
      << "the call did not wait for a server";

  RefusingService service(0, grpc::StatusCode::OK);
  grpc::ServerBuilder builder;
  int bound = 0;
  builder.AddListeningPort(options.target, grpc::InsecureServerCredentials(), &bound);
  builder.RegisterService(&service);
  auto server = builder.BuildAndStart();
  ASSERT_EQ(bound, port);
  ASSERT_EQ(answered.wait_for(std::chrono::seconds(50)), std::future_status::ready);
  const grpc::Status status = answered.get();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.image_score(), 0.25f);
  EXPECT_EQ(service.calls(), 1);
  server->Shutdown();
}

}  // namespace
}  // namespace anoclip::client
