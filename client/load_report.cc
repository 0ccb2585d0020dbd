#include "client/load_report.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/prometheus_text.h"

namespace anoclip::client {
namespace {

std::string Ms(double seconds) { return absl::StrFormat("%.2f", seconds * 1e3); }

std::string BoundLabel(double bound) {
  return std::isinf(bound) ? std::string("+Inf") : absl::StrFormat("%g", bound * 1e3);
}

std::string Mode(const RunSetup& setup) {
  std::string mode = setup.rps > 0 ? absl::StrFormat("open loop %g rps %s, at most %d in flight", setup.rps,
                                                     setup.poisson ? "poisson" : "constant", setup.concurrency)
                                   : absl::StrFormat("closed loop, %d worker%s", setup.concurrency,
                                                     setup.concurrency == 1 ? "" : "s");
  absl::StrAppend(&mode, setup.stream ? ", Inspect streams" : ", unary Detect", ", ", setup.connections,
                  setup.connections == 1 ? " connection" : " connections");
  return mode;
}

}  // namespace

ServerSplit ComputeSplit(const std::string& before_text, const std::string& after_text) {
  const auto before = ParsePrometheusText(before_text), after = ParsePrometheusText(after_text);
  auto delta = [&](const std::string& name, const Labels& labels = {}) {
    return SumSeries(after, name, labels) - SumSeries(before, name, labels);
  };
  auto mean = [&](const std::string& family) {
    const double count = delta(family + "_count");
    return count > 0 ? delta(family + "_sum") / count : 0.0;
  };
  ServerSplit split;
  for (const char* method : {"Detect", "Inspect"}) {
    split.requests += delta("anoclip_requests_total", {{"method", method}});
    split.ok += delta("anoclip_requests_total", {{"method", method}, {"code", "OK"}});
  }
  split.images = delta("anoclip_batch_size_sum");
  split.batches = delta("anoclip_batch_size_count");
  split.mean_batch = split.batches > 0 ? split.images / split.batches : 0;
  split.queue_s = mean("anoclip_queue_duration_seconds");
  split.encode_batch_s = mean("anoclip_encode_duration_seconds");
  split.encode_s = split.images > 0 ? delta("anoclip_encode_duration_seconds_sum") / split.images : 0;
  split.tta_images = delta("anoclip_tta_duration_seconds_count");
  split.tta_s = mean("anoclip_tta_duration_seconds");
  split.postprocess_s = mean("anoclip_postprocess_duration_seconds");
  return split;
}

std::string FormatRunText(const RunSetup& setup, const LoadResult& r, const std::optional<ServerSplit>& split) {
  const auto& l = r.latency;
  std::string text = absl::StrCat("loadtest ", setup.target, ": ", Mode(setup), "\n");
  absl::StrAppendFormat(&text, "  requests   %d (ok %d) in %.2f s: %.2f req/s\n", r.requests, r.ok, r.seconds,
                        r.throughput());
  absl::StrAppend(&text, "  latency ms min ", Ms(l.min), "  mean ", Ms(l.mean), "  p50 ", Ms(l.p50), "  p90 ",
                  Ms(l.p90), "  p95 ", Ms(l.p95), "  p99 ", Ms(l.p99), "  max ", Ms(l.max), "\n");
  const auto [first, last, peak] = NonEmptyRange(l);
  if (peak > 0) {
    absl::StrAppend(&text, "  histogram\n");
    for (size_t i = first; i <= last; ++i) {
      const size_t count = l.histogram[i].second;
      const size_t bar = (count * 40 + peak - 1) / peak;
      absl::StrAppendFormat(&text, "    <= %6s ms %-40s %d\n", BoundLabel(l.histogram[i].first),
                            std::string(bar, '#'), count);
    }
  }
  std::vector<std::string> codes;
  for (const auto& [code, count] : r.codes) codes.push_back(absl::StrCat(code, " ", count));
  absl::StrAppend(&text, "  status     ", codes.empty() ? "(no answers)" : absl::StrJoin(codes, ", "), "\n");
  for (const auto& [message, count] : r.errors) absl::StrAppend(&text, "  error x", count, ": ", message, "\n");
  if (split) {
    absl::StrAppendFormat(&text, "  server     %.0f requests (ok %.0f); mean batch %.2f over %.0f forwards\n",
                          split->requests, split->ok, split->mean_batch, split->batches);
    absl::StrAppend(&text, "  server ms  queue ", Ms(split->queue_s), "  encode ", Ms(split->encode_s),
                    " per image (", Ms(split->encode_batch_s), " per batch)  tta ",
                    split->tta_images > 0 ? absl::StrCat(Ms(split->tta_s), " x", split->tta_images) : "-",
                    "  postprocess ", Ms(split->postprocess_s), "\n");
  }
  return text;
}

nlohmann::ordered_json RunToJson(const RunSetup& setup, const LoadResult& r, const std::optional<ServerSplit>& split) {
  const auto& l = r.latency;
  nlohmann::ordered_json json;
  json["target"] = setup.target;
  json["mode"] = setup.rps > 0 ? "open" : "closed";
  json["concurrency"] = setup.concurrency;
  json["rps_target"] = setup.rps;
  json["arrivals"] = setup.rps > 0 ? (setup.poisson ? "poisson" : "constant") : "";
  json["stream"] = setup.stream;
  json["connections"] = setup.connections;
  json["requests"] = r.requests;
  json["ok"] = r.ok;
  json["seconds"] = r.seconds;
  json["throughput_rps"] = r.throughput();
  json["latency_ms"] = {{"min", l.min * 1e3}, {"mean", l.mean * 1e3}, {"p50", l.p50 * 1e3}, {"p90", l.p90 * 1e3},
                        {"p95", l.p95 * 1e3}, {"p99", l.p99 * 1e3}, {"max", l.max * 1e3}};
  nlohmann::ordered_json histogram = nlohmann::ordered_json::array();
  for (const auto& [bound, count] : l.histogram) {
    nlohmann::ordered_json bucket;
    if (std::isinf(bound)) {
      bucket["le_ms"] = "+Inf";
    } else {
      bucket["le_ms"] = bound * 1e3;
    }
    bucket["count"] = count;
    histogram.push_back(bucket);
  }
  json["histogram"] = histogram;
  json["codes"] = r.codes;
  json["errors"] = r.errors;
  if (split) {
    json["server"] = {{"requests", split->requests},
                      {"ok", split->ok},
                      {"images", split->images},
                      {"batches", split->batches},
                      {"mean_batch", split->mean_batch},
                      {"queue_ms", split->queue_s * 1e3},
                      {"encode_ms", split->encode_s * 1e3},
                      {"encode_batch_ms", split->encode_batch_s * 1e3},
                      {"tta_images", split->tta_images},
                      {"tta_ms", split->tta_s * 1e3},
                      {"postprocess_ms", split->postprocess_s * 1e3}};
  }
  return json;
}

std::string CsvHeader() {
  return "mode,concurrency,rps_target,stream,connections,requests,ok,seconds,throughput_rps,min_ms,mean_ms,p50_ms,"
         "p90_ms,p95_ms,p99_ms,max_ms,errors,server_requests,server_mean_batch,server_queue_ms,server_encode_ms,"
         "server_tta_ms,server_postprocess_ms\n";
}

std::string CsvRow(const RunSetup& setup, const LoadResult& r, const std::optional<ServerSplit>& split) {
  const auto& l = r.latency;
  std::string row = absl::StrCat(setup.rps > 0 ? "open" : "closed", ",", setup.concurrency, ",", setup.rps, ",",
                                 setup.stream ? 1 : 0, ",", setup.connections, ",", r.requests, ",", r.ok, ",");
  absl::StrAppendFormat(&row, "%.3f,%.3f,", r.seconds, r.throughput());
  absl::StrAppend(&row, Ms(l.min), ",", Ms(l.mean), ",", Ms(l.p50), ",", Ms(l.p90), ",", Ms(l.p95), ",", Ms(l.p99),
                  ",", Ms(l.max), ",", r.requests - r.ok, ",");
  if (split) {
    absl::StrAppendFormat(&row, "%.0f,%.3f,", split->requests, split->mean_batch);
    absl::StrAppend(&row, Ms(split->queue_s), ",", Ms(split->encode_s), ",",
                    split->tta_images > 0 ? Ms(split->tta_s) : "", ",", Ms(split->postprocess_s));
  } else {
    absl::StrAppend(&row, ",,,,,");
  }
  return row + "\n";
}

}  // namespace anoclip::client
