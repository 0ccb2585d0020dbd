// Load generation against the service.
//
// Closed loop: `concurrency` workers each send the next request as soon as the previous one is
// answered. Open loop: requests are due at a target rate (constant gaps or Poisson arrivals) and
// at most `concurrency` are in flight; latency is measured from the time a request was due, so
// a server that falls behind cannot hide its queue (no coordinated omission).
//
// Every run is bounded: it ends when `duration` has passed or `max_requests` were sent,
// whichever comes first, and each call carries the connection's deadline. A warm-up, when
// given, runs first with the same workers and is not recorded; it is drained before the
// measured phase starts, so what the client counts is what the server counts in between.
//
// Thread model: RunLoad blocks; it starts its own worker threads and joins them.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "anoclip/v1/anoclip.pb.h"
#include "client/connection.h"
#include "client/latency_stats.h"

namespace anoclip::client {

struct LoadOptions {
  int concurrency = 4;       // workers (closed loop) or the most requests in flight (open loop)
  double rps = 0;            // > 0: open loop at this rate
  bool poisson = false;      // open loop: exponential gaps instead of constant ones
  int64_t max_requests = 0;  // measured requests; 0: until the duration ends
  absl::Duration duration = absl::Seconds(10);
  absl::Duration warmup = absl::ZeroDuration();
  int connections = 1;       // channels (TCP connections); workers share them round robin
  bool stream = false;       // one Inspect stream per worker instead of unary Detect calls
  double tta_share = 0;      // fraction of requests sent with TTA switched on
  uint64_t seed = 1;         // Poisson arrivals
};

struct LoadResult {
  int64_t requests = 0;  // answered in the measured phase, any status
  int64_t ok = 0;
  double seconds = 0;    // wall time of the measured phase
  std::map<std::string, int64_t> codes;
  std::map<std::string, int64_t> errors;
  LatencySummary latency;  // successful requests
  double throughput() const { return seconds > 0 ? static_cast<double>(ok) / seconds : 0; }
};

// Due times of an open-loop run, made one at a time so a long run at a high rate needs no table:
// 0, 1/rate, 2/rate, ... or, with `poisson`, a Poisson process (exponential gaps) seeded by
// `seed`. Thread-safe: each caller gets the next request's index and due time.
class ArrivalSchedule {
 public:
  ArrivalSchedule(double rate, bool poisson, uint64_t seed);
  struct Arrival {
    int64_t index;
    double offset;  // seconds from the start
  };
  Arrival Next();

 private:
  const double rate_;
  const bool poisson_;
  absl::Mutex mutex_;
  int64_t count_ ABSL_GUARDED_BY(mutex_) = 0;
  double t_ ABSL_GUARDED_BY(mutex_) = 0;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mutex_);
  std::exponential_distribution<double> gap_ ABSL_GUARDED_BY(mutex_);
};

// The first `count` due times of ArrivalSchedule(rate, poisson, seed); empty unless rate > 0.
std::vector<double> ArrivalOffsets(double rate, int64_t count, bool poisson, uint64_t seed);

// Whether request `index` is one of the TTA share: spreads exactly floor(n * share) TTA
// requests evenly over any n consecutive-from-zero requests.
bool TtaSelected(int64_t index, double share);

// A duration flag's value: "30s", "2m", "1m30s", "500ms" (absl::ParseDuration) or bare seconds
// ("2.5"). InvalidArgument naming `flag` otherwise.
absl::StatusOr<absl::Duration> ParseDurationFlag(const std::string& flag, const std::string& text);

// "A:B" or "A:B:STEP" with 1 <= A <= B <= 1024, STEP >= 1 -> A, A+STEP, ..., <= B.
absl::StatusOr<std::vector<int>> ParseConcurrencyRange(const std::string& text);

// "bottle,carpet:texture,pcb1:object" -> class specs (kind unspecified when not given).
absl::StatusOr<std::vector<anoclip::v1::ClassSpec>> ParseClassMix(const std::string& text);

// `requests`: the mix, sent in turn (TTA switched on for the configured share).
// `on_measure_start`, when set, runs once after the warm-up has drained and before the first
// measured request (the caller scrapes the server's metrics there); its error ends the run.
absl::StatusOr<LoadResult> RunLoad(const ConnectionOptions& connection, const LoadOptions& options,
                                   const std::vector<anoclip::v1::DetectRequest>& requests,
                                   const std::function<absl::Status()>& on_measure_start = nullptr);

}  // namespace anoclip::client
