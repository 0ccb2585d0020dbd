// The client's service config: round_robin always, and with --max-attempts a retry of
// UNAVAILABLE answers, checked against an in-process stand-in that refuses its first calls.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>

#include <nlohmann/json.hpp>

#include "anoclip/v1/anoclip.grpc.pb.h"
#include "client/connection.h"

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

}  // namespace
}  // namespace anoclip::client
