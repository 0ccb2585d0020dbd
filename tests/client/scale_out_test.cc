// Scale-out on one machine: three anoclip-server replicas on loopback ports, anoclip-client
// loadtest balancing over them round robin (ipv4:127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3), and
// one replica SIGKILLed once it has served a share of the run. Each replica's /metrics shows the
// load spread; with --max-attempts 3 the run answers every request except those in flight on the
// killed replica; with one attempt the failures are listed for contrast.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <thread>

#include "client/prometheus_text.h"
#include "client_process.h"

namespace anoclip::client {
namespace {

using ::anoclip::testing::CommandResult;
using ::anoclip::testing::FreshDir;
using ::anoclip::testing::ReadWholeFile;
using ::anoclip::testing::RunClient;
using ::anoclip::testing::ServerProcess;

constexpr int kRequests = 600;
constexpr int kConcurrency = 6;
constexpr int kKillAfter = 40;  // Detect calls the victim has answered before it is killed

// Detect calls a replica has answered (any code); -1 when its /metrics does not answer.
double DetectCalls(const ServerProcess& server) {
  const std::string address = server.metrics();
  httplib::Client http(address.substr(0, address.rfind(':')), std::stoi(address.substr(address.rfind(':') + 1)));
  http.set_connection_timeout(2);
  http.set_read_timeout(5);
  auto response = http.Get("/metrics");
  if (!response || response->status != 200) return -1;
  return SumSeries(ParsePrometheusText(response->body), "anoclip_requests_total", {{"method", "Detect"}});
}

class ScaleOutTest : public ::testing::TestWithParam<int> {};

TEST_P(ScaleOutTest, OneReplicaKilledMidRunLosesOnlyItsCallsInFlight) {
  const int max_attempts = GetParam();
  ServerProcess replicas[3];
  for (int i = 0; i < 3; ++i) {
    const std::string error = replicas[i].Start("scale_out_" + std::to_string(i));
    ASSERT_TRUE(error.empty()) << error;
  }
  const std::string target = "ipv4:" + replicas[0].target() + "," + replicas[1].target() + "," + replicas[2].target();
  const std::string report = FreshDir("scale_out_" + std::to_string(max_attempts)) + "/report.json";

  std::atomic<bool> finished{false};
  CommandResult run;
  std::thread load([&] {
    run = RunClient("loadtest --requests " + std::to_string(kRequests) + " --concurrency " +
                        std::to_string(kConcurrency) + " --max-attempts " + std::to_string(max_attempts) +
                        " --deadline-ms 20000 --target " + target + " --json " + report,
                    300);
    finished = true;
  });

  // The victim is the middle replica; it dies once it has answered kKillAfter calls (bounded wait).
  ServerProcess& victim = replicas[1];
  double victim_calls = 0;
  for (int i = 0; i < 6000 && !finished && victim_calls < kKillAfter; ++i) {
    victim_calls = DetectCalls(victim);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const double before[3] = {DetectCalls(replicas[0]), DetectCalls(victim), DetectCalls(replicas[2])};
  const bool killed_mid_run = !finished;
  victim.Kill();
  load.join();

  ASSERT_TRUE(killed_mid_run) << "the run ended before the victim had answered " << kKillAfter << " calls";
  ASSERT_EQ(run.exit_code == 0 || run.exit_code == 1, true) << run.err;
  const auto whole = nlohmann::json::parse(ReadWholeFile(report), nullptr, false);
  ASSERT_FALSE(whole.is_discarded()) << run.out << run.err;
  ASSERT_EQ(whole["runs"].size(), 1u);
  const auto& json = whole["runs"][0];

  // The load spread over all three before the kill.
  for (int i = 0; i < 3; ++i) EXPECT_GT(before[i], 0) << "replica " << i << " saw no traffic";
  EXPECT_GE(before[1], kKillAfter);
  // The survivors took the rest of the run.
  const double after[2] = {DetectCalls(replicas[0]), DetectCalls(replicas[2])};
  EXPECT_GT(after[0] + after[1], before[0] + before[2]);
  EXPECT_LE(after[0] + after[1] + before[1], kRequests * max_attempts);

  // Every failure is UNAVAILABLE (the connection went away), and the report lists them. With
  // retries, only a call whose answer had begun when the victim died can fail: at most one per
  // worker. Without, calls sent to the victim before the client noticed its death fail too.
  const int requests = json["requests"].get<int>();
  const int ok = json["ok"].get<int>();
  EXPECT_EQ(requests, kRequests);
  const int failed = requests - ok;
  if (max_attempts > 1) EXPECT_LE(failed, kConcurrency);
  int unavailable = 0;
  for (const auto& [code, count] : json["codes"].items()) {
    if (code == "OK") continue;
    EXPECT_EQ(code, "UNAVAILABLE") << json["codes"].dump();
    unavailable += count.get<int>();
  }
  EXPECT_EQ(unavailable, failed);
  std::cout << "max attempts " << max_attempts << ": " << requests << " requests, " << ok << " answered, "
            << failed << " failed on the killed replica; Detect calls per replica at the kill " << before[0]
            << " / " << before[1] << " / " << before[2] << ", survivors at the end " << after[0] << " / " << after[1]
            << "\n  codes " << json["codes"].dump() << "\n  errors " << json["errors"].dump() << std::endl;
}

INSTANTIATE_TEST_SUITE_P(MaxAttempts, ScaleOutTest, ::testing::Values(1, 3),
                         [](const auto& info) { return "max_attempts_" + std::to_string(info.param); });

}  // namespace
}  // namespace anoclip::client
