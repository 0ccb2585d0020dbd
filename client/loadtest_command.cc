// `anoclip-client loadtest`: drive the service and report what the caller saw and what the
// server spent, as text, JSON and CSV.
#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/commands.h"
#include "client/loadtest.h"
#include "client/prometheus_text.h"
#include "client/requests.h"
#include "client/samples.h"
#include "common/status_macros.h"
#include "image/render.h"

namespace anoclip::client {
namespace {

constexpr char kUsage[] =
    "usage: anoclip-client loadtest [--concurrency N | --rps R [--arrivals constant|poisson]]\n"
    "         (--duration S | --requests N) [--warmup S] [--connections N] [--stream]\n"
    "         [--concurrency-range A:B:STEP [--latency-limit-ms MS]] [--images DIR]\n"
    "         [--classes bottle,carpet:texture] [--tta-share F] [--views 1|22]\n"
    "         [--metrics HOST:PORT] [--json FILE] [--csv FILE] [connection flags]\n";

constexpr double kMaxDurationSeconds = 3600;
constexpr int64_t kMaxRequests = 10'000'000;

absl::StatusOr<std::vector<anoclip::v1::DetectRequest>> BuildMix(const Arguments& args) {
  std::vector<std::string> images;
  if (args.Has("images")) {
    for (const auto& entry : std::filesystem::directory_iterator(args.String("images"))) {
      if (!entry.is_regular_file()) continue;
      ANOCLIP_ASSIGN_OR_RETURN(auto bytes, ReadImageBytes(entry.path().string()));
      images.push_back(std::move(bytes));
    }
    if (images.empty()) return absl::NotFoundError(absl::StrCat("no images in ", args.String("images")));
  } else {
    for (const auto& sample : GenerateSamples(240)) {
      ANOCLIP_ASSIGN_OR_RETURN(auto png, image::EncodePng(sample.rgb));
      images.push_back(std::move(png));
    }
  }
  std::vector<anoclip::v1::ClassSpec> classes;
  for (absl::string_view entry : absl::StrSplit(args.String("classes", "bottle"), ',', absl::SkipWhitespace())) {
    std::vector<std::string> parts = absl::StrSplit(entry, ':');
    anoclip::v1::ClassSpec spec;
    spec.set_name(parts[0]);
    if (parts.size() > 1) {
      if (parts[1] != "object" && parts[1] != "texture") {
        return absl::InvalidArgumentError(absl::StrCat("class kind must be object or texture; got ", entry));
      }
      spec.set_kind(parts[1] == "texture" ? anoclip::v1::KIND_TEXTURE : anoclip::v1::KIND_OBJECT);
    }
    classes.push_back(spec);
  }
  ANOCLIP_ASSIGN_OR_RETURN(int64_t views, args.Int("views", 1, 1, 22));
  std::vector<anoclip::v1::DetectRequest> mix;
  for (size_t i = 0; i < std::max(images.size(), classes.size()); ++i) {
    anoclip::v1::DetectRequest request;
    request.set_image_bytes(images[i % images.size()]);
    *request.mutable_class_spec() = classes[i % classes.size()];
    request.mutable_options()->set_views(static_cast<int>(views));
    mix.push_back(std::move(request));
  }
  return mix;
}

nlohmann::ordered_json ResultJson(const LoadOptions& options, const LoadResult& r, const ServerSplit* split) {
  const auto& l = r.latency;
  nlohmann::ordered_json json{{"concurrency", options.concurrency},
                              {"rps_target", options.rps},
                              {"requests", r.requests},
                              {"ok", r.ok},
                              {"seconds", r.seconds},
                              {"throughput_rps", r.throughput()},
                              {"latency_s", {{"min", l.min}, {"mean", l.mean}, {"p50", l.p50}, {"p90", l.p90},
                                             {"p95", l.p95}, {"p99", l.p99}, {"max", l.max}}},
                              {"codes", r.codes},
                              {"errors", r.errors}};
  nlohmann::ordered_json histogram = nlohmann::ordered_json::array();
  for (const auto& [bound, count] : l.histogram) {
    histogram.push_back({{"le", std::isinf(bound) ? std::string("+Inf") : absl::StrCat(bound)}, {"count", count}});
  }
  json["histogram"] = histogram;
  if (split != nullptr) {
    json["server"] = {{"requests", split->requests},          {"queue_s", split->queue_s},
                      {"encode_s", split->encode_s},          {"tta_s", split->tta_s},
                      {"postprocess_s", split->postprocess_s}, {"mean_batch", split->mean_batch}};
  }
  return json;
}

void PrintHuman(const LoadOptions& options, const LoadResult& r, const ServerSplit* split) {
  const auto& l = r.latency;
  std::cout << "concurrency " << options.concurrency;
  if (options.rps > 0) std::cout << "  target " << options.rps << " rps";
  std::cout << "\nrequests " << r.requests << " (ok " << r.ok << ") in " << r.seconds << " s: " << r.throughput()
            << " req/s\nlatency ms: min " << l.min * 1e3 << "  mean " << l.mean * 1e3 << "  p50 " << l.p50 * 1e3
            << "  p90 " << l.p90 * 1e3 << "  p95 " << l.p95 * 1e3 << "  p99 " << l.p99 * 1e3 << "  max "
            << l.max * 1e3 << "\n";
  std::cout << "histogram:";
  for (const auto& [bound, count] : l.histogram) {
    if (count > 0) std::cout << "  <=" << (std::isinf(bound) ? std::string("inf") : absl::StrCat(bound * 1e3, "ms")) << ": " << count;
  }
  std::cout << "\ncodes:";
  for (const auto& [code, count] : r.codes) std::cout << "  " << code << " " << count;
  std::cout << "\n";
  for (const auto& [message, count] : r.errors) std::cout << "  error x" << count << ": " << message << "\n";
  if (split != nullptr) {
    std::cout << "server: " << split->requests << " requests; per request ms: queue " << split->queue_s * 1e3
              << "  encode " << split->encode_s * 1e3 << "  tta " << split->tta_s * 1e3 << "  postprocess "
              << split->postprocess_s * 1e3 << "; mean batch " << split->mean_batch << "\n";
  }
}

absl::Status Loadtest(const Arguments& args, const ConnectionOptions& connection) {
  if (!args.Has("duration") && !args.Has("requests")) {
    return absl::InvalidArgumentError("give --duration or --requests (every run is bounded)");
  }
  LoadOptions options;
  ANOCLIP_ASSIGN_OR_RETURN(double duration, args.Double("duration", kMaxDurationSeconds));
  if (!(duration > 0) || duration > kMaxDurationSeconds) {
    return absl::InvalidArgumentError(absl::StrCat("--duration must be in (0, ", kMaxDurationSeconds, "]"));
  }
  options.duration = absl::Seconds(duration);
  ANOCLIP_ASSIGN_OR_RETURN(options.max_requests, args.Int("requests", 0, 1, kMaxRequests));
  ANOCLIP_ASSIGN_OR_RETURN(double warmup, args.Double("warmup", 0));
  if (warmup < 0 || warmup > kMaxDurationSeconds) return absl::InvalidArgumentError("--warmup out of range");
  options.warmup = absl::Seconds(warmup);
  ANOCLIP_ASSIGN_OR_RETURN(int64_t concurrency, args.Int("concurrency", 4, 1, 1024));
  options.concurrency = static_cast<int>(concurrency);
  ANOCLIP_ASSIGN_OR_RETURN(options.rps, args.Double("rps", 0));
  if (options.rps < 0 || options.rps > 100000) return absl::InvalidArgumentError("--rps must be in [0, 100000]");
  if (options.rps > 0 && !args.Has("concurrency")) options.concurrency = 64;
  const std::string arrivals = args.String("arrivals", "constant");
  if (arrivals != "constant" && arrivals != "poisson") {
    return absl::InvalidArgumentError("--arrivals must be constant or poisson");
  }
  options.poisson = arrivals == "poisson";
  ANOCLIP_ASSIGN_OR_RETURN(int64_t connections, args.Int("connections", 1, 1, 256));
  options.connections = static_cast<int>(connections);
  options.stream = args.Flag("stream");
  ANOCLIP_ASSIGN_OR_RETURN(options.tta_share, args.Double("tta-share", 0));
  if (options.tta_share < 0 || options.tta_share > 1) return absl::InvalidArgumentError("--tta-share must be in [0, 1]");
  ANOCLIP_ASSIGN_OR_RETURN(auto mix, BuildMix(args));

  std::vector<int> steps = {options.concurrency};
  if (args.Has("concurrency-range")) {
    std::vector<std::string> parts = absl::StrSplit(args.String("concurrency-range"), ':');
    int a = 0, b = 0, step = 1;
    if (parts.size() < 2 || parts.size() > 3 || !absl::SimpleAtoi(parts[0], &a) || !absl::SimpleAtoi(parts[1], &b) ||
        (parts.size() == 3 && !absl::SimpleAtoi(parts[2], &step)) || a < 1 || b < a || step < 1 || b > 1024) {
      return absl::InvalidArgumentError("--concurrency-range must be A:B[:STEP] with 1 <= A <= B <= 1024");
    }
    steps.clear();
    for (int c = a; c <= b; c += step) steps.push_back(c);
  }
  ANOCLIP_ASSIGN_OR_RETURN(double latency_limit_ms, args.Double("latency-limit-ms", 0));

  nlohmann::ordered_json report = nlohmann::ordered_json::array();
  std::ofstream csv;
  if (args.Has("csv")) {
    csv.open(args.String("csv"));
    if (!csv) return absl::PermissionDeniedError(absl::StrCat("cannot write ", args.String("csv")));
    csv << "concurrency,rps_target,requests,ok,seconds,throughput_rps,min_ms,mean_ms,p50_ms,p90_ms,p95_ms,p99_ms,"
           "max_ms,server_requests,server_queue_ms,server_encode_ms,server_tta_ms,server_postprocess_ms,"
           "server_mean_batch\n";
  }
  for (int concurrency : steps) {
    options.concurrency = concurrency;
    std::string before;
    if (args.Has("metrics")) {
      ANOCLIP_ASSIGN_OR_RETURN(before, ScrapeMetrics(args.String("metrics")));
    }
    ANOCLIP_ASSIGN_OR_RETURN(auto result, RunLoad(connection, options, mix));
    std::optional<ServerSplit> split;
    if (args.Has("metrics")) {
      ANOCLIP_ASSIGN_OR_RETURN(auto after, ScrapeMetrics(args.String("metrics")));
      split = ComputeSplit(before, after);
    }
    const ServerSplit* split_ptr = split ? &*split : nullptr;
    PrintHuman(options, result, split_ptr);
    report.push_back(ResultJson(options, result, split_ptr));
    if (csv.is_open()) {
      const auto& l = result.latency;
      csv << concurrency << "," << options.rps << "," << result.requests << "," << result.ok << "," << result.seconds
          << "," << result.throughput() << "," << l.min * 1e3 << "," << l.mean * 1e3 << "," << l.p50 * 1e3 << ","
          << l.p90 * 1e3 << "," << l.p95 * 1e3 << "," << l.p99 * 1e3 << "," << l.max * 1e3;
      if (split) {
        csv << "," << split->requests << "," << split->queue_s * 1e3 << "," << split->encode_s * 1e3 << ","
            << split->tta_s * 1e3 << "," << split->postprocess_s * 1e3 << "," << split->mean_batch;
      } else {
        csv << ",,,,,,";
      }
      csv << "\n";
    }
    if (latency_limit_ms > 0 && result.latency.p99 * 1e3 > latency_limit_ms) {
      std::cout << "p99 " << result.latency.p99 * 1e3 << " ms is over the " << latency_limit_ms
                << " ms limit: sweep stops\n";
      break;
    }
  }
  if (args.Has("json")) {
    std::ofstream out(args.String("json"));
    if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", args.String("json")));
    out << (steps.size() == 1 ? report[0].dump(2) : report.dump(2)) << "\n";
  }
  return absl::OkStatus();
}

}  // namespace

int RunLoadtest(const std::vector<std::string>& words) {
  auto value_flags = ConnectionFlags();
  value_flags.insert({"concurrency", "rps", "arrivals", "duration", "requests", "warmup", "connections",
                      "concurrency-range", "latency-limit-ms", "images", "classes", "tta-share", "views", "metrics",
                      "json", "csv"});
  auto args = Arguments::Parse(words, value_flags, {"stream", "help"});
  if (!args.ok() || args->Flag("help")) {
    if (!args.ok()) std::cerr << "anoclip-client loadtest: " << args.status().message() << "\n";
    std::cerr << kUsage;
    return args.ok() ? 0 : 2;
  }
  auto connection = ConnectionFromArguments(*args);
  auto status = connection.ok() ? Loadtest(*args, *connection) : connection.status();
  if (!status.ok()) {
    std::cerr << "anoclip-client loadtest: " << status.message() << "\n";
    return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}

}  // namespace anoclip::client
