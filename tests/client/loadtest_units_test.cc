// The load tester's pieces that need no server.
#include <gtest/gtest.h>

#include <numeric>

#include "client/latency_stats.h"
#include "client/loadtest.h"
#include "client/prometheus_text.h"

namespace anoclip::client {
namespace {

TEST(LatencyStatsTest, PercentilesAreNearestRank) {
  std::vector<double> samples;
  for (int i = 100; i >= 1; --i) samples.push_back(i / 1000.0);  // 1..100 ms, unsorted
  auto s = Summarize(samples);
  EXPECT_EQ(s.count, 100u);
  EXPECT_DOUBLE_EQ(s.min, 0.001);
  EXPECT_DOUBLE_EQ(s.max, 0.100);
  EXPECT_DOUBLE_EQ(s.p50, 0.050);
  EXPECT_DOUBLE_EQ(s.p90, 0.090);
  EXPECT_DOUBLE_EQ(s.p99, 0.099);
  EXPECT_NEAR(s.mean, 0.0505, 1e-12);
  size_t total = 0;
  for (const auto& [bound, count] : s.histogram) total += count;
  EXPECT_EQ(total, 100u);
  EXPECT_EQ(Summarize({}).count, 0u);
}

TEST(LoadtestTest, ArrivalsAreEvenOrPoissonWithTheRate) {
  auto constant = ArrivalOffsets(10, 5, false, 1);
  EXPECT_EQ(constant, (std::vector<double>{0, 0.1, 0.2, 0.30000000000000004, 0.4}));
  auto poisson = ArrivalOffsets(100, 20000, true, 7);
  EXPECT_NEAR(poisson.back() / poisson.size(), 0.01, 0.0005);  // mean gap 1/rate
  EXPECT_EQ(poisson, ArrivalOffsets(100, 20000, true, 7));      // seeded
  EXPECT_TRUE(std::is_sorted(poisson.begin(), poisson.end()));
}

TEST(PrometheusTextTest, ParsesSeriesAndSumsByName) {
  const std::string text =
      "# HELP anoclip_requests_total x\n# TYPE anoclip_requests_total counter\n"
      "anoclip_requests_total{code=\"OK\",method=\"Detect\"} 12\n"
      "anoclip_requests_total{code=\"INVALID_ARGUMENT\",method=\"Detect\"} 3\n"
      "anoclip_requests_total{code=\"OK\",method=\"Inspect\"} 5\n"
      "anoclip_batch_size_sum 40\nanoclip_batch_size_count 10\n"
      "anoclip_batch_size_bucket{le=\"+Inf\"} 10\n";
  auto metrics = ParsePrometheusText(text);
  EXPECT_EQ(metrics.size(), 6u);
  EXPECT_DOUBLE_EQ(SumSeries(metrics, "anoclip_requests_total"), 20);
  EXPECT_DOUBLE_EQ(SumSeries(metrics, "anoclip_requests_total", "Detect"), 15);
  EXPECT_DOUBLE_EQ(SumSeries(metrics, "anoclip_batch_size_sum"), 40);
  EXPECT_DOUBLE_EQ(metrics.at("anoclip_batch_size_bucket{le=\"+Inf\"}"), 10);
}

TEST(PrometheusTextTest, SplitIsTheDeltaBetweenScrapes) {
  const std::string before =
      "anoclip_requests_total{code=\"OK\",method=\"Detect\"} 10\n"
      "anoclip_queue_duration_seconds_sum 1\nanoclip_queue_duration_seconds_count 10\n"
      "anoclip_encode_duration_seconds_sum 2\nanoclip_encode_duration_seconds_count 5\n"
      "anoclip_batch_size_sum 10\nanoclip_batch_size_count 5\n";
  const std::string after =
      "anoclip_requests_total{code=\"OK\",method=\"Detect\"} 30\n"
      "anoclip_queue_duration_seconds_sum 3\nanoclip_queue_duration_seconds_count 30\n"
      "anoclip_encode_duration_seconds_sum 6\nanoclip_encode_duration_seconds_count 10\n"
      "anoclip_batch_size_sum 30\nanoclip_batch_size_count 10\n";
  auto split = ComputeSplit(before, after);
  EXPECT_DOUBLE_EQ(split.requests, 20);
  EXPECT_DOUBLE_EQ(split.queue_s, 0.1);
  EXPECT_DOUBLE_EQ(split.mean_batch, 4);
  EXPECT_DOUBLE_EQ(split.encode_s, 0.8 / 4);  // per batch 0.8 s, 4 images a batch
}

}  // namespace
}  // namespace anoclip::client
