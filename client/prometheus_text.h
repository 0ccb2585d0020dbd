// Reading the Prometheus text exposition format (version 0.0.4) that anoclip-server serves on
// /metrics, so a load test can report the server's own split of the time.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace anoclip::client {

using Labels = std::map<std::string, std::string>;

struct MetricSample {
  std::string name;  // e.g. anoclip_queue_duration_seconds_sum
  Labels labels;     // unescaped values
  double value = 0;  // +Inf, -Inf and NaN as written
};

// Every sample line; comments (# HELP / # TYPE), blank lines and malformed lines are skipped,
// so a scrape that gains new families never breaks the reader. Timestamps are ignored.
std::vector<MetricSample> ParsePrometheusText(const std::string& text);

// Sum of the samples named `name` whose labels include every pair of `match` (other labels
// are free, so {method=Detect} sums over all codes).
double SumSeries(const std::vector<MetricSample>& samples, const std::string& name, const Labels& match = {});

// GET http://HOST:PORT/metrics with short timeouts. InvalidArgument for a malformed address,
// Unavailable when nothing answers or the status is not 200.
absl::StatusOr<std::string> ScrapeMetrics(const std::string& address);

}  // namespace anoclip::client
