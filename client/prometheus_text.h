// Reads the Prometheus text format the server exposes, to report the server's own split.
#pragma once

#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace anoclip::client {

// series (name plus labels, as written) -> value. Comments and blank lines are skipped.
std::map<std::string, double> ParsePrometheusText(const std::string& text);

// Sum of every series of `name` (any labels) whose label text contains `label_filter`.
double SumSeries(const std::map<std::string, double>& metrics, const std::string& name,
                 const std::string& label_filter = "");

// GET http://host:port/metrics.
absl::StatusOr<std::string> ScrapeMetrics(const std::string& address);

}  // namespace anoclip::client
