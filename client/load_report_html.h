// A load test's report as one self-contained HTML page: a table of the runs, each run's latency
// histogram and, for a sweep, throughput and latency against concurrency, as inline SVG (no
// scripts, no outside files). Pure function, no I/O.
#pragma once

#include <string>
#include <vector>

#include "client/load_report.h"

namespace anoclip::client {

struct ReportedRun {
  RunSetup setup;
  LoadResult result;
};

std::string ReportHtml(const std::string& target, const std::vector<ReportedRun>& runs);

}  // namespace anoclip::client
