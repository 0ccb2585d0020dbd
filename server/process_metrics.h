// The process metrics every Prometheus client library exports (process_cpu_seconds_total,
// process_resident_memory_bytes, process_virtual_memory_bytes, process_open_fds,
// process_max_fds, process_start_time_seconds), read from /proc at each scrape. prometheus-cpp
// has no process collector of its own.
#pragma once

#include <vector>

#include <prometheus/metric_family.h>

namespace anoclip::server {

// Families for the metrics /proc/self can tell; none where it cannot (not Linux).
std::vector<prometheus::MetricFamily> CollectProcessMetrics();

}  // namespace anoclip::server
