// SIGKILL under load and a restart: one anoclip-server on a loopback port serves an
// `anoclip-client loadtest` run with retries (--max-attempts 5 --wait-for-ready); once it has
// answered kKillAfter calls it is SIGKILLed, as when its container dies, and a new server is started
// on the same port. The calls the dead server held fail their attempt and are retried, the calls
// made while nothing listens wait for the new server, and the run ends with every request answered.
//
// With --max-batch 1 the server runs one image at a time, so with kConcurrency workers it always
// holds calls it has not answered (queued behind the one being encoded): the kill cuts some of
// them off, and the new server sees their retries (anoclip_retried_requests_total).
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "client/prometheus_text.h"
#include "client_process.h"

namespace anoclip::client {
namespace {

using ::anoclip::testing::CommandResult;
using ::anoclip::testing::FreePortOutsideEphemeralRange;
using ::anoclip::testing::FreshDir;
using ::anoclip::testing::ReadWholeFile;
using ::anoclip::testing::RunClient;
using ::anoclip::testing::ServerProcess;

constexpr int kRequests = 300;
constexpr int kConcurrency = 8;
constexpr int kKillAfter = 40;  // Detect calls the first server has answered before it is killed

// The server's /metrics, parsed; empty when it does not answer.
std::vector<MetricSample> Scrape(const ServerProcess& server) {
  auto text = ScrapeMetrics(server.metrics());
  return text.ok() ? ParsePrometheusText(*text) : std::vector<MetricSample>{};
}

double DetectCalls(const std::vector<MetricSample>& metrics, const std::string& code = "") {
  Labels match = {{"method", "Detect"}};
  if (!code.empty()) match["code"] = code;
  return SumSeries(metrics, "anoclip_requests_total", match);
}

TEST(RestartTest, ServerKilledUnderLoadAndRestartedOnItsPortLosesNoRequest) {
  const int port = FreePortOutsideEphemeralRange();
  ASSERT_GT(port, 0) << "no free loopback port below the ephemeral range";
  const std::vector<std::string> flags = {"--max-batch", "1"};
  ServerProcess first(flags);
  std::string error = first.Start("restart_first", port);
  ASSERT_TRUE(error.empty()) << error;

  const std::string report = FreshDir("restart_report") + "/report.json";
  std::atomic<bool> finished{false};
  CommandResult run;
  // Bounded in requests and in time: --requests, --duration, each call's deadline (long enough for
  // a restart), and the command's own timeout.
  std::thread load([&] {
    run = RunClient("loadtest --requests " + std::to_string(kRequests) + " --duration 5m --concurrency " +
                        std::to_string(kConcurrency) +
                        " --max-attempts 5 --wait-for-ready --deadline-ms 120000 --target 127.0.0.1:" +
                        std::to_string(port) + " --json " + report,
                    480);
    finished = true;
  });

  // Killed once it has answered kKillAfter calls (polled, bounded).
  double answered_first = 0;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::minutes(4);
  while (!finished && answered_first < kKillAfter && std::chrono::steady_clock::now() < give_up) {
    answered_first = DetectCalls(Scrape(first));
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const bool killed_mid_run = !finished;
  first.Kill();

  ServerProcess second(flags);
  error = second.Start("restart_second", port);
  load.join();  // the run ends by itself: every call answered, or its deadline passed
  ASSERT_TRUE(error.empty()) << "the server did not come back on port " << port << ": " << error;
  ASSERT_TRUE(killed_mid_run) << "the run ended before the first server had answered " << kKillAfter << " calls";
  ASSERT_GE(answered_first, kKillAfter);

  ASSERT_EQ(run.exit_code, 0) << run.out << run.err;
  const auto whole = nlohmann::json::parse(ReadWholeFile(report), nullptr, false);
  ASSERT_FALSE(whole.is_discarded()) << run.out << run.err;
  ASSERT_EQ(whole["runs"].size(), 1u);
  const auto& json = whole["runs"][0];
  // Every request answered, none lost to the kill.
  EXPECT_EQ(json["requests"].get<int>(), kRequests);
  EXPECT_EQ(json["ok"].get<int>(), kRequests) << json["codes"].dump() << " " << json["errors"].dump();
  EXPECT_EQ(json["codes"], nlohmann::json({{"OK", kRequests}}));

  // The run crossed the kill: the restarted server answered the rest, and some of its calls were
  // retries of attempts the kill had cut off.
  const auto metrics = Scrape(second);
  ASSERT_FALSE(metrics.empty()) << "the restarted server's /metrics did not answer";
  const double answered_second = DetectCalls(metrics);
  const double retried = SumSeries(metrics, "anoclip_retried_requests_total", {{"method", "Detect"}});
  EXPECT_GT(answered_second, 0);
  EXPECT_EQ(DetectCalls(metrics, "OK"), answered_second);
  EXPECT_GE(retried, 1) << "no call reached the restarted server as a retry";
  EXPECT_LE(retried, answered_second);
  EXPECT_LE(answered_second, kRequests);
  // And it drains and exits cleanly (under the sanitizer builds, a report makes this non-zero).
  EXPECT_EQ(second.Stop(), 0) << second.log();
  std::cout << kRequests << " requests, " << json["ok"].get<int>() << " answered; first server killed after "
            << answered_first << " Detect calls, restarted on port " << port << "; the second answered "
            << answered_second << ", " << retried << " of them retries of calls the kill cut off\n  codes "
            << json["codes"].dump() << "\n  errors " << json["errors"].dump() << std::endl;
}

}  // namespace
}  // namespace anoclip::client
