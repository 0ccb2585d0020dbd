#include "client/prometheus_text.h"

#include <httplib.h>

#include <cmath>
#include <limits>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace anoclip::client {
namespace {

bool IsNameChar(char c, bool first) {
  return absl::ascii_isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':' ||
         (!first && absl::ascii_isdigit(static_cast<unsigned char>(c)));
}

bool ParseValue(absl::string_view text, double* value) {
  if (text == "+Inf" || text == "Inf") {
    *value = std::numeric_limits<double>::infinity();
  } else if (text == "-Inf") {
    *value = -std::numeric_limits<double>::infinity();
  } else if (text == "NaN") {
    *value = std::numeric_limits<double>::quiet_NaN();
  } else {
    return absl::SimpleAtod(text, value);
  }
  return true;
}

// name{label="value",...} value [timestamp]
bool ParseLine(absl::string_view line, MetricSample* sample) {
  size_t i = 0;
  while (i < line.size() && IsNameChar(line[i], i == 0)) ++i;
  if (i == 0) return false;
  sample->name = std::string(line.substr(0, i));
  if (i < line.size() && line[i] == '{') {
    ++i;
    while (true) {
      while (i < line.size() && (line[i] == ' ' || line[i] == ',')) ++i;
      if (i < line.size() && line[i] == '}') {
        ++i;
        break;
      }
      const size_t key_start = i;
      while (i < line.size() && IsNameChar(line[i], i == key_start)) ++i;
      if (i == key_start || i + 1 >= line.size() || line[i] != '=' || line[i + 1] != '"') return false;
      std::string key(line.substr(key_start, i - key_start));
      i += 2;
      std::string value;
      while (i < line.size() && line[i] != '"') {
        if (line[i] == '\\' && i + 1 < line.size()) {
          ++i;
          value.push_back(line[i] == 'n' ? '\n' : line[i]);
        } else {
          value.push_back(line[i]);
        }
        ++i;
      }
      if (i >= line.size()) return false;  // unterminated value
      ++i;
      sample->labels[std::move(key)] = std::move(value);
    }
  }
  while (i < line.size() && line[i] == ' ') ++i;
  const size_t end = line.find(' ', i);
  return ParseValue(line.substr(i, end == absl::string_view::npos ? absl::string_view::npos : end - i), &sample->value);
}

}  // namespace

std::vector<MetricSample> ParsePrometheusText(const std::string& text) {
  std::vector<MetricSample> samples;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    const absl::string_view trimmed = absl::StripAsciiWhitespace(line);
    if (trimmed.empty() || trimmed[0] == '#') continue;
    MetricSample sample;
    if (ParseLine(trimmed, &sample)) samples.push_back(std::move(sample));
  }
  return samples;
}

double SumSeries(const std::vector<MetricSample>& samples, const std::string& name, const Labels& match) {
  double sum = 0;
  for (const auto& sample : samples) {
    if (sample.name != name) continue;
    bool matches = true;
    for (const auto& [key, value] : match) {
      auto it = sample.labels.find(key);
      if (it == sample.labels.end() || it->second != value) {
        matches = false;
        break;
      }
    }
    if (matches) sum += sample.value;
  }
  return sum;
}

absl::StatusOr<std::string> ScrapeMetrics(const std::string& address) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 1 ||
      port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--metrics must be HOST:PORT; was '", address, "'"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  httplib::Client http(host, port);
  http.set_connection_timeout(3);
  http.set_read_timeout(10);
  auto response = http.Get("/metrics");
  if (!response) {
    return absl::UnavailableError(absl::StrCat("cannot scrape http://", address, "/metrics: ",
                                               httplib::to_string(response.error())));
  }
  if (response->status != 200) {
    return absl::UnavailableError(absl::StrCat("http://", address, "/metrics answered ", response->status));
  }
  return response->body;
}

}  // namespace anoclip::client
