#include "server/process_metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace anoclip::server {
namespace {

prometheus::MetricFamily Family(const char* name, const char* help, prometheus::MetricType type, double value) {
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  return {name, help, type, {metric}};
}

// Seconds since the epoch at which the machine booted (/proc/stat btime).
double BootTime() {
  std::ifstream in("/proc/stat");
  std::string key;
  double value = 0;
  while (in >> key) {
    if (key == "btime" && in >> value) return value;
    in.ignore(1 << 20, '\n');
  }
  return 0;
}

}  // namespace

std::vector<prometheus::MetricFamily> CollectProcessMetrics() {
  std::vector<prometheus::MetricFamily> families;
  std::ifstream stat_file("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(stat_file)), std::istreambuf_iterator<char>());
  // Fields after the command name, which is in parentheses and may hold spaces (proc(5)).
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return families;
  std::istringstream fields(stat.substr(close + 2));
  std::string field[50];
  int count = 0;
  while (count < 50 && fields >> field[count]) ++count;
  if (count < 22) return families;
  // proc(5) numbers fields from 1 with the state as field 3, index 0 here.
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  const double cpu = (std::stod(field[11]) + std::stod(field[12])) / ticks;  // utime + stime
  const double start = BootTime() + std::stod(field[19]) / ticks;             // starttime
  const double virtual_bytes = std::stod(field[20]);                           // vsize
  const double resident_bytes = std::stod(field[21]) * page;                   // rss
  using prometheus::MetricType;
  families.push_back(Family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                            MetricType::Counter, cpu));
  families.push_back(Family("process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::Gauge,
                            resident_bytes));
  families.push_back(Family("process_virtual_memory_bytes", "Virtual memory size in bytes.", MetricType::Gauge,
                            virtual_bytes));
  families.push_back(Family("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                            MetricType::Gauge, start));
  std::error_code error;
  double open_fds = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", error);
       !error && it != std::filesystem::directory_iterator(); it.increment(error)) {
    ++open_fds;
  }
  if (!error) {
    families.push_back(Family("process_open_fds", "Number of open file descriptors.", MetricType::Gauge, open_fds));
  }
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    families.push_back(Family("process_max_fds", "Maximum number of open file descriptors.", MetricType::Gauge,
                              limit.rlim_cur == RLIM_INFINITY ? -1 : static_cast<double>(limit.rlim_cur)));
  }
  return families;
}

}  // namespace anoclip::server
