#include "client/latency_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace anoclip::client {

LatencySummary Summarize(std::vector<double> seconds) {
  LatencySummary summary;
  summary.count = seconds.size();
  const std::vector<double> bounds = {0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10,
                                      std::numeric_limits<double>::infinity()};
  for (double bound : bounds) summary.histogram.emplace_back(bound, 0);
  if (seconds.empty()) return summary;
  std::sort(seconds.begin(), seconds.end());
  auto rank = [&](double q) {
    const size_t index = static_cast<size_t>(std::ceil(q * seconds.size()));
    return seconds[std::min(seconds.size() - 1, index == 0 ? 0 : index - 1)];
  };
  summary.min = seconds.front();
  summary.max = seconds.back();
  summary.mean = std::accumulate(seconds.begin(), seconds.end(), 0.0) / seconds.size();
  summary.p50 = rank(0.50);
  summary.p90 = rank(0.90);
  summary.p95 = rank(0.95);
  summary.p99 = rank(0.99);
  for (double s : seconds) {
    for (auto& [bound, count] : summary.histogram) {
      if (s <= bound) {
        ++count;
        break;
      }
    }
  }
  return summary;
}

}  // namespace anoclip::client
