#include "client/load_report_html.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace anoclip::client {
namespace {

constexpr int kWidth = 640, kHeight = 240;
constexpr int kLeft = 60, kRight = 20, kTop = 20, kBottom = 50;  // room for the axes' labels

std::string Escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string Ms(double seconds) { return absl::StrFormat("%.2f", seconds * 1e3); }

std::string BucketLabel(double bound) {
  return std::isinf(bound) ? std::string("&gt;10 s") : absl::StrFormat("&#8804;%g", bound * 1e3);
}

std::string AxisText(double x, double y, const std::string& text, const char* anchor) {
  return absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"%s\">%s</text>", x, y, anchor, text);
}

// Bars over the non-empty range of the histogram, counts on the y axis.
std::string HistogramSvg(const LatencySummary& latency) {
  const auto [first, last, peak] = NonEmptyRange(latency);
  if (peak == 0) return "<p>No successful requests, so no latencies.</p>\n";
  const int plot_w = kWidth - kLeft - kRight, plot_h = kHeight - kTop - kBottom;
  const double slot = static_cast<double>(plot_w) / static_cast<double>(last - first + 1);
  std::string svg = absl::StrFormat(
      "<svg class=\"histogram\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
      "viewBox=\"0 0 %d %d\" font-size=\"11\">\n",
      kWidth, kHeight, kWidth, kHeight);
  absl::StrAppendFormat(&svg, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#333\"/>\n", kLeft,
                        kTop + plot_h, kLeft + plot_w, kTop + plot_h);
  absl::StrAppend(&svg, AxisText(kLeft - 6, kTop + 4, absl::StrCat(peak), "end"), "\n",
                  AxisText(kLeft - 6, kTop + plot_h, "0", "end"), "\n");
  for (size_t i = first; i <= last; ++i) {
    const auto& [bound, count] = latency.histogram[i];
    const double h = static_cast<double>(plot_h) * static_cast<double>(count) / static_cast<double>(peak);
    const double x = kLeft + slot * static_cast<double>(i - first);
    absl::StrAppendFormat(&svg,
                          "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#4878d0\">"
                          "<title>%s ms: %d</title></rect>\n",
                          x + 1, kTop + plot_h - h, std::max(1.0, slot - 2), h, BucketLabel(bound), count);
    absl::StrAppend(&svg, AxisText(x + slot / 2, kTop + plot_h + 14, BucketLabel(bound), "middle"), "\n");
  }
  absl::StrAppend(&svg, AxisText(kLeft + plot_w / 2.0, kHeight - 8, "latency, ms (bucket upper bound)", "middle"),
                  "\n</svg>\n");
  return svg;
}

struct Series {
  std::string name, colour;
  std::vector<double> values;
};

// Lines with points over the runs' concurrency; the y axis starts at 0.
std::string SweepSvg(const std::string& title, const std::vector<int>& concurrency, const std::vector<Series>& series) {
  double top = 0;
  for (const auto& s : series) {
    for (double v : s.values) top = std::max(top, v);
  }
  if (top <= 0) top = 1;
  const int low = concurrency.front(), high = std::max(concurrency.back(), low + 1);
  const int plot_w = kWidth - kLeft - kRight, plot_h = kHeight - kTop - kBottom;
  auto x_of = [&](int c) { return kLeft + plot_w * static_cast<double>(c - low) / (high - low); };
  auto y_of = [&](double v) { return kTop + plot_h * (1.0 - v / top); };
  std::string svg = absl::StrFormat(
      "<svg class=\"sweep\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
      "viewBox=\"0 0 %d %d\" font-size=\"11\">\n",
      kWidth, kHeight, kWidth, kHeight);
  absl::StrAppendFormat(&svg, "<polyline points=\"%d,%d %d,%d %d,%d\" fill=\"none\" stroke=\"#333\"/>\n", kLeft, kTop,
                        kLeft, kTop + plot_h, kLeft + plot_w, kTop + plot_h);
  absl::StrAppend(&svg, AxisText(kLeft - 6, kTop + 4, absl::StrFormat("%.4g", top), "end"), "\n",
                  AxisText(kLeft - 6, kTop + plot_h, "0", "end"), "\n");
  for (int c : concurrency) absl::StrAppend(&svg, AxisText(x_of(c), kTop + plot_h + 14, absl::StrCat(c), "middle"), "\n");
  absl::StrAppend(&svg, AxisText(kLeft + plot_w / 2.0, kHeight - 8, absl::StrCat(title, " against concurrency"), "middle"),
                  "\n");
  for (size_t s = 0; s < series.size(); ++s) {
    std::string points;
    for (size_t i = 0; i < concurrency.size(); ++i) {
      absl::StrAppendFormat(&points, "%s%.1f,%.1f", i ? " " : "", x_of(concurrency[i]), y_of(series[s].values[i]));
    }
    absl::StrAppendFormat(&svg, "<polyline class=\"line\" points=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\"/>\n",
                          points, series[s].colour);
    for (size_t i = 0; i < concurrency.size(); ++i) {
      absl::StrAppendFormat(&svg, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"><title>%s at %d: %.4g</title></circle>\n",
                            x_of(concurrency[i]), y_of(series[s].values[i]), series[s].colour, series[s].name,
                            concurrency[i], series[s].values[i]);
    }
    absl::StrAppend(&svg, absl::StrFormat("<text x=\"%d\" y=\"%d\" fill=\"%s\">%s</text>\n", kLeft + 10,
                                          kTop + 12 + 14 * static_cast<int>(s), series[s].colour, series[s].name));
  }
  return svg + "</svg>\n";
}

}  // namespace

std::string ReportHtml(const std::string& target, const std::vector<ReportedRun>& runs) {
  std::string html = absl::StrCat(
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>anoclip load test: ",
      Escape(target), "</title>\n<style>\nbody{font-family:sans-serif;margin:2em;color:#222}\n"
      "table{border-collapse:collapse}\ntd,th{border:1px solid #ccc;padding:4px 8px;text-align:right}\n"
      "th{background:#f0f0f0}\n</style>\n</head>\n<body>\n<h1>Load test of ", Escape(target), "</h1>\n");
  absl::StrAppend(&html, "<table>\n<tr><th>mode</th><th>concurrency</th><th>requests</th><th>ok</th>"
                         "<th>seconds</th><th>throughput rps</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th>"
                         "<th>max ms</th><th>status</th></tr>\n");
  for (const auto& [setup, r] : runs) {
    std::string codes;
    for (const auto& [code, count] : r.codes) absl::StrAppend(&codes, codes.empty() ? "" : ", ", code, " ", count);
    const std::string mode = setup.rps > 0 ? absl::StrFormat("open %g rps%s", setup.rps, setup.poisson ? " poisson" : "")
                                           : std::string("closed");
    absl::StrAppendFormat(&html,
                          "<tr><td>%s%s</td><td>%d</td><td>%d</td><td>%d</td><td>%.2f</td><td>%.2f</td><td>%s</td>"
                          "<td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>\n",
                          mode, setup.stream ? ", stream" : "", setup.concurrency, r.requests, r.ok, r.seconds,
                          r.throughput(), Ms(r.latency.p50), Ms(r.latency.p90), Ms(r.latency.p99), Ms(r.latency.max),
                          Escape(codes));
  }
  absl::StrAppend(&html, "</table>\n");
  if (runs.size() > 1) {
    std::vector<int> concurrency;
    Series throughput{"throughput, rps", "#4878d0", {}}, p50{"p50 latency, ms", "#6acc64", {}},
        p99{"p99 latency, ms", "#d65f5f", {}};
    for (const auto& [setup, r] : runs) {
      concurrency.push_back(setup.concurrency);
      throughput.values.push_back(r.throughput());
      p50.values.push_back(r.latency.p50 * 1e3);
      p99.values.push_back(r.latency.p99 * 1e3);
    }
    absl::StrAppend(&html, "<h2>Concurrency sweep</h2>\n", SweepSvg("throughput", concurrency, {throughput}),
                    SweepSvg("latency", concurrency, {p50, p99}));
  }
  for (const auto& [setup, r] : runs) {
    absl::StrAppendFormat(&html, "<h2>Latency at concurrency %d</h2>\n", setup.concurrency);
    absl::StrAppend(&html, HistogramSvg(r.latency));
    for (const auto& [message, count] : r.errors) {
      absl::StrAppend(&html, "<p class=\"error\">error x", count, ": ", Escape(message), "</p>\n");
    }
  }
  return html + "</body>\n</html>\n";
}

}  // namespace anoclip::client
