// What a load test measured: a thread-safe recorder that workers report each answered request
// into, and the summary it reduces to (count, min/mean/percentiles/max, a histogram, status
// codes and the distinct error messages).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace anoclip::client {

struct LatencySummary {
  size_t count = 0;
  double min = 0, mean = 0, p50 = 0, p90 = 0, p95 = 0, p99 = 0, max = 0;  // seconds
  // (upper bound in seconds, count) on fixed bounds 1 ms .. 10 s; the last bound is +inf.
  std::vector<std::pair<double, size_t>> histogram;
};

// Nearest-rank percentiles over all samples (no interpolation, so p99 is a latency that was
// actually seen). Empty input gives zeros and an all-zero histogram.
LatencySummary Summarize(std::vector<double> seconds);

// The buckets from the first to the last non-empty one, and the largest count (0: no samples).
struct HistogramRange {
  size_t first = 0, last = 0, peak = 0;
};
HistogramRange NonEmptyRange(const LatencySummary& summary);

// The upper bounds Summarize uses.
const std::vector<double>& HistogramBounds();

// "OK", "UNAVAILABLE", ... for a gRPC / google.rpc status code; "CODE_<n>" outside 0..16.
std::string StatusCodeName(int code);

struct RecordedLoad {
  int64_t requests = 0;
  int64_t ok = 0;
  std::map<std::string, int64_t> codes;   // code name -> count
  std::map<std::string, int64_t> errors;  // error message -> count (at most kMaxErrorKinds kinds)
  std::vector<double> latencies;          // seconds, successful requests only
};

// Shared by all workers of one run. Thread-safe.
class LoadRecorder {
 public:
  // Distinct messages kept; the rest are counted under "(other errors)".
  static constexpr size_t kMaxErrorKinds = 20;

  void Record(int code, const std::string& message, double seconds);
  RecordedLoad Take();

 private:
  absl::Mutex mutex_;
  RecordedLoad load_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace anoclip::client
