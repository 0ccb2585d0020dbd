#include "client/prometheus_text.h"

#include <httplib.h>

#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace anoclip::client {

std::map<std::string, double> ParsePrometheusText(const std::string& text) {
  std::map<std::string, double> metrics;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    // The value follows the last space outside the label braces.
    const size_t close = line.rfind('}');
    const size_t space = line.find(' ', close == std::string::npos ? 0 : close);
    if (space == std::string::npos) continue;
    double value = 0;
    std::string value_text = line.substr(space + 1);
    if (const size_t next = value_text.find(' '); next != std::string::npos) value_text.resize(next);  // timestamp
    if (value_text == "+Inf") {
      value = std::numeric_limits<double>::infinity();
    } else if (!absl::SimpleAtod(value_text, &value)) {
      continue;
    }
    metrics[line.substr(0, space)] = value;
  }
  return metrics;
}

double SumSeries(const std::map<std::string, double>& metrics, const std::string& name,
                 const std::string& label_filter) {
  double sum = 0;
  for (const auto& [series, value] : metrics) {
    const bool same_name = series == name || series.rfind(name + "{", 0) == 0;
    if (same_name && series.find(label_filter) != std::string::npos) sum += value;
  }
  return sum;
}

absl::StatusOr<std::string> ScrapeMetrics(const std::string& address) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port)) {
    return absl::InvalidArgumentError(absl::StrCat("metrics address ", address, " must be HOST:PORT"));
  }
  httplib::Client http(address.substr(0, colon), port);
  http.set_connection_timeout(5);
  http.set_read_timeout(10);
  auto response = http.Get("/metrics");
  if (!response || response->status != 200) {
    return absl::UnavailableError(absl::StrCat("cannot scrape http://", address, "/metrics"));
  }
  return response->body;
}

}  // namespace anoclip::client
