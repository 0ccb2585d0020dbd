// Load generation against the service: closed loop (N workers back to back) or open loop
// (requests at a target rate, constant or Poisson arrivals, latency measured from the intended
// send time so a slow server cannot hide queueing). Every run is bounded by a request count and
// a duration, whichever comes first.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "anoclip/v1/anoclip.pb.h"
#include "client/connection.h"
#include "client/latency_stats.h"

namespace anoclip::client {

struct LoadOptions {
  int concurrency = 4;           // workers (closed loop) or at most this many in flight (open loop)
  double rps = 0;                // > 0: open loop at this rate
  bool poisson = false;          // open loop arrivals: exponential gaps instead of constant
  int64_t max_requests = 0;      // 0: until the duration ends
  absl::Duration duration = absl::Seconds(10);
  absl::Duration warmup = absl::ZeroDuration();
  int connections = 1;
  bool stream = false;           // one Inspect stream per worker instead of unary calls
  double tta_share = 0;          // fraction of requests with TTA
  uint64_t seed = 1;
};

struct LoadResult {
  int64_t requests = 0;
  int64_t ok = 0;
  double seconds = 0;
  std::map<std::string, int64_t> codes;    // gRPC code name -> count
  std::map<std::string, int64_t> errors;   // first error messages -> count (bounded)
  LatencySummary latency;                  // successful requests
  double throughput() const { return seconds > 0 ? ok / seconds : 0; }
};

// Arrival times (seconds from the start) of `count` requests at `rate` per second.
std::vector<double> ArrivalOffsets(double rate, int64_t count, bool poisson, uint64_t seed);

// `requests`: the request mix, sent round robin (TTA switched on for the configured share).
absl::StatusOr<LoadResult> RunLoad(const ConnectionOptions& connection, const LoadOptions& options,
                                   const std::vector<anoclip::v1::DetectRequest>& requests);

// The server's own view from two /metrics scrapes: mean seconds per request in each stage,
// mean batch size and the requests it counted in between.
struct ServerSplit {
  double requests = 0;
  double queue_s = 0, encode_s = 0, tta_s = 0, postprocess_s = 0;
  double mean_batch = 0;
};
ServerSplit ComputeSplit(const std::string& before, const std::string& after);

}  // namespace anoclip::client
