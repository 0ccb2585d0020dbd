#include "client/latency_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace anoclip::client {

HistogramRange NonEmptyRange(const LatencySummary& summary) {
  HistogramRange range{summary.histogram.size(), 0, 0};
  for (size_t i = 0; i < summary.histogram.size(); ++i) {
    if (summary.histogram[i].second == 0) continue;
    range.first = std::min(range.first, i);
    range.last = i;
    range.peak = std::max(range.peak, summary.histogram[i].second);
  }
  return range;
}

const std::vector<double>& HistogramBounds() {
  static const std::vector<double> bounds = {0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10,
                                             std::numeric_limits<double>::infinity()};
  return bounds;
}

LatencySummary Summarize(std::vector<double> seconds) {
  LatencySummary summary;
  summary.count = seconds.size();
  for (double bound : HistogramBounds()) summary.histogram.emplace_back(bound, 0);
  if (seconds.empty()) return summary;
  std::sort(seconds.begin(), seconds.end());
  auto rank = [&](double q) {
    const size_t index = static_cast<size_t>(std::ceil(q * static_cast<double>(seconds.size())));
    return seconds[std::min(seconds.size() - 1, index == 0 ? 0 : index - 1)];
  };
  summary.min = seconds.front();
  summary.max = seconds.back();
  summary.mean = std::accumulate(seconds.begin(), seconds.end(), 0.0) / static_cast<double>(seconds.size());
  summary.p50 = rank(0.50);
  summary.p90 = rank(0.90);
  summary.p95 = rank(0.95);
  summary.p99 = rank(0.99);
  for (double s : seconds) {
    // The first bound at or above s (bounds are sorted, the last is +inf).
    auto it = std::lower_bound(summary.histogram.begin(), summary.histogram.end(), s,
                               [](const std::pair<double, size_t>& bucket, double v) { return bucket.first < v; });
    ++it->second;
  }
  return summary;
}

std::string StatusCodeName(int code) {
  static const char* names[] = {"OK",
                                "CANCELLED",
                                "UNKNOWN",
                                "INVALID_ARGUMENT",
                                "DEADLINE_EXCEEDED",
                                "NOT_FOUND",
                                "ALREADY_EXISTS",
                                "PERMISSION_DENIED",
                                "RESOURCE_EXHAUSTED",
                                "FAILED_PRECONDITION",
                                "ABORTED",
                                "OUT_OF_RANGE",
                                "UNIMPLEMENTED",
                                "INTERNAL",
                                "UNAVAILABLE",
                                "DATA_LOSS",
                                "UNAUTHENTICATED"};
  if (code >= 0 && code <= 16) return names[code];
  return absl::StrCat("CODE_", code);
}

void LoadRecorder::Record(int code, const std::string& message, double seconds) {
  absl::MutexLock lock(&mutex_);
  ++load_.requests;
  ++load_.codes[StatusCodeName(code)];
  if (code == 0) {
    ++load_.ok;
    load_.latencies.push_back(seconds);
  } else if (load_.errors.size() < kMaxErrorKinds || load_.errors.count(message) > 0) {
    ++load_.errors[message];
  } else {
    ++load_.errors["(other errors)"];
  }
}

RecordedLoad LoadRecorder::Take() {
  absl::MutexLock lock(&mutex_);
  RecordedLoad out = std::move(load_);
  load_ = RecordedLoad();
  return out;
}

}  // namespace anoclip::client
