// How a load test is reported: the server's own split of the time (from two /metrics scrapes),
// and one run as human text, a JSON object and a CSV row. Pure functions, no I/O.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "client/loadtest.h"

namespace anoclip::client {

// What the server counted between two scrapes of its Prometheus text.
struct ServerSplit {
  double requests = 0;          // Detect + Inspect answers, any status (anoclip_requests_total)
  double ok = 0;                // of which code="OK"
  double images = 0;            // images through the vision tower (anoclip_batch_size _sum)
  double batches = 0;           // vision forwards (anoclip_batch_size _count)
  double mean_batch = 0;        // images per forward
  double queue_s = 0;           // mean wait in the batch queue, per image
  double encode_batch_s = 0;    // mean vision forward, per batch
  double encode_s = 0;          // the same spread over its images
  double tta_images = 0;        // images adapted at test time
  double tta_s = 0;             // mean per adapted image
  double postprocess_s = 0;     // mean per image
};

// Deltas of the counters and of the histograms' _sum/_count between `before` and `after`.
ServerSplit ComputeSplit(const std::string& before, const std::string& after);

// Describes the run's set-up for the report.
struct RunSetup {
  std::string target;
  int concurrency = 0;
  double rps = 0;         // 0: closed loop
  bool poisson = false;
  bool stream = false;
  int connections = 1;
};

// A few lines: set-up, counts and throughput, latency, a histogram of the non-empty range,
// status codes and errors, and the server split when there is one.
std::string FormatRunText(const RunSetup& setup, const LoadResult& result, const std::optional<ServerSplit>& split);

// Times in milliseconds; "server" only with a split.
nlohmann::ordered_json RunToJson(const RunSetup& setup, const LoadResult& result,
                                 const std::optional<ServerSplit>& split);

// One header and one row per run (a sweep gives one row per step); server columns empty
// without a split.
std::string CsvHeader();
std::string CsvRow(const RunSetup& setup, const LoadResult& result, const std::optional<ServerSplit>& split);

}  // namespace anoclip::client
