// Latency summaries for load tests: min/mean/percentiles/max and a log-spaced histogram.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace anoclip::client {

struct LatencySummary {
  size_t count = 0;
  double min = 0, mean = 0, p50 = 0, p90 = 0, p95 = 0, p99 = 0, max = 0;  // seconds
  std::vector<std::pair<double, size_t>> histogram;  // (upper bound in seconds, count), last bound inf
};

// Nearest-rank percentiles over all samples.
LatencySummary Summarize(std::vector<double> seconds);

}  // namespace anoclip::client
