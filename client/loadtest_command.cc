// `anoclip-client loadtest`: drive the service and report what the caller saw and what the
// server spent, as text, JSON and CSV.
#include <filesystem>
#include <iostream>
#include <optional>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "client/commands.h"
#include "client/load_report.h"
#include "client/load_report_html.h"
#include "client/loadtest.h"
#include "client/prometheus_text.h"
#include "client/requests.h"
#include "client/samples.h"
#include "common/files.h"
#include "common/status_macros.h"
#include "inspection/render.h"

namespace anoclip::client {
namespace {

constexpr char kUsage[] =
    "usage: anoclip-client loadtest (--duration T | --requests N) [--concurrency N]\n"
    "         [--rps R [--arrivals constant|poisson]] [--warmup T] [--connections N] [--stream]\n"
    "         [--concurrency-range A:B[:STEP] [--latency-limit-ms MS]]\n"
    "         [--images DIR] [--classes bottle,carpet:texture] [--tta-share F] [--views 1|22]\n"
    "         [--metrics HOST:PORT] [--json FILE] [--csv FILE] [--html FILE] [--seed N]\n"
    "         [connection flags]\n"
    "  Closed loop with --concurrency workers (default 4), or open loop at --rps requests per\n"
    "  second with at most --concurrency in flight (default 64). Every run stops by itself:\n"
    "  --duration is at most 1h and --requests at most 10000000. Durations T are 30s, 2m, 1m30s,\n"
    "  500ms or bare seconds. --concurrency-range runs one step per concurrency and stops once\n"
    "  p99 exceeds --latency-limit-ms. --metrics scrapes the server's /metrics before and after\n"
    "  each step for its own split of the time. --html writes the report as one page with the\n"
    "  latency histogram and the concurrency sweep as charts.\n";

constexpr absl::Duration kMaxDuration = absl::Hours(1);
constexpr int64_t kMaxRequests = 10'000'000;

absl::StatusOr<std::vector<anoclip::v1::DetectRequest>> BuildMix(const Arguments& args) {
  std::vector<std::string> images;
  if (args.Has("images")) {
    ANOCLIP_ASSIGN_OR_RETURN(auto paths, ImagesIn(args.String("images")));
    for (const auto& path : paths) {
      ANOCLIP_ASSIGN_OR_RETURN(auto bytes, ReadImageBytes(path));
      images.push_back(std::move(bytes));
    }
    if (images.empty()) return absl::NotFoundError(absl::StrCat("no images in ", args.String("images")));
  } else {
    for (const auto& sample : GenerateSamples(240)) {
      ANOCLIP_ASSIGN_OR_RETURN(auto png, inspection::EncodePng(sample.rgb));
      images.push_back(std::move(png));
    }
  }
  ANOCLIP_ASSIGN_OR_RETURN(auto classes, ParseClassMix(args.String("classes", "bottle")));
  ANOCLIP_ASSIGN_OR_RETURN(int64_t views, args.Int("views", 1, 1, 22));
  // Every image meets every class, in an order that cycles through both.
  std::vector<anoclip::v1::DetectRequest> mix;
  for (size_t i = 0; i < images.size() * classes.size(); ++i) {
    anoclip::v1::DetectRequest request;
    request.set_image_bytes(images[i % images.size()]);
    *request.mutable_class_spec() = classes[(i / images.size() + i) % classes.size()];
    request.mutable_options()->set_views(static_cast<int>(views));
    mix.push_back(std::move(request));
  }
  return mix;
}

absl::Status Loadtest(const Arguments& args, const ConnectionOptions& connection) {
  if (!args.positional().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("unexpected argument ", args.positional().front()));
  }
  if (!args.Has("duration") && !args.Has("requests")) {
    return absl::InvalidArgumentError("give --duration or --requests (every run is bounded)");
  }
  LoadOptions options;
  options.duration = kMaxDuration;
  if (args.Has("duration")) {
    ANOCLIP_ASSIGN_OR_RETURN(options.duration, ParseDurationFlag("duration", args.String("duration")));
  }
  if (options.duration <= absl::ZeroDuration() || options.duration > kMaxDuration) {
    return absl::InvalidArgumentError(absl::StrCat("--duration must be in (0, ", absl::FormatDuration(kMaxDuration),
                                                   "]; was ", args.String("duration")));
  }
  ANOCLIP_ASSIGN_OR_RETURN(options.max_requests, args.Int("requests", 0, 1, kMaxRequests));
  if (args.Has("warmup")) {
    ANOCLIP_ASSIGN_OR_RETURN(options.warmup, ParseDurationFlag("warmup", args.String("warmup")));
  }
  if (options.warmup < absl::ZeroDuration() || options.warmup > kMaxDuration) {
    return absl::InvalidArgumentError(absl::StrCat("--warmup must be in [0, ", absl::FormatDuration(kMaxDuration),
                                                   "]; was ", args.String("warmup")));
  }
  ANOCLIP_ASSIGN_OR_RETURN(options.rps, args.Double("rps", 0));
  if (!(options.rps >= 0) || options.rps > 100000) return absl::InvalidArgumentError("--rps must be in [0, 100000]");
  ANOCLIP_ASSIGN_OR_RETURN(int64_t concurrency, args.Int("concurrency", options.rps > 0 ? 64 : 4, 1, 1024));
  options.concurrency = static_cast<int>(concurrency);
  const std::string arrivals = args.String("arrivals", "constant");
  if (arrivals != "constant" && arrivals != "poisson") {
    return absl::InvalidArgumentError("--arrivals must be constant or poisson");
  }
  if (args.Has("arrivals") && options.rps == 0) return absl::InvalidArgumentError("--arrivals needs --rps");
  options.poisson = arrivals == "poisson";
  ANOCLIP_ASSIGN_OR_RETURN(int64_t connections, args.Int("connections", 1, 1, 256));
  options.connections = static_cast<int>(connections);
  options.stream = args.Flag("stream");
  ANOCLIP_ASSIGN_OR_RETURN(options.tta_share, args.Double("tta-share", 0));
  if (!(options.tta_share >= 0) || options.tta_share > 1) {
    return absl::InvalidArgumentError("--tta-share must be in [0, 1]");
  }
  ANOCLIP_ASSIGN_OR_RETURN(int64_t seed, args.Int("seed", 1, 0, INT64_MAX));
  options.seed = static_cast<uint64_t>(seed);

  std::vector<int> steps = {options.concurrency};
  if (args.Has("concurrency-range")) {
    if (args.Has("concurrency")) return absl::InvalidArgumentError("give --concurrency or --concurrency-range");
    ANOCLIP_ASSIGN_OR_RETURN(steps, ParseConcurrencyRange(args.String("concurrency-range")));
  }
  ANOCLIP_ASSIGN_OR_RETURN(double latency_limit_ms, args.Double("latency-limit-ms", 0));
  if (!(latency_limit_ms >= 0)) return absl::InvalidArgumentError("--latency-limit-ms must be >= 0");
  if (args.Has("latency-limit-ms") && !args.Has("concurrency-range")) {
    return absl::InvalidArgumentError("--latency-limit-ms stops a --concurrency-range sweep; give one");
  }
  ANOCLIP_ASSIGN_OR_RETURN(auto mix, BuildMix(args));
  const bool scrape = args.Has("metrics");
  if (scrape) ANOCLIP_RETURN_IF_ERROR(ScrapeMetrics(args.String("metrics")).status());  // fail before the load

  nlohmann::ordered_json runs = nlohmann::ordered_json::array();
  std::string csv = CsvHeader();
  std::vector<ReportedRun> reported;
  absl::Status outcome = absl::OkStatus();
  for (int step : steps) {
    options.concurrency = step;
    std::string before;
    std::function<absl::Status()> on_start;
    if (scrape) {
      on_start = [&]() -> absl::Status {
        ANOCLIP_ASSIGN_OR_RETURN(before, ScrapeMetrics(args.String("metrics")));
        return absl::OkStatus();
      };
    }
    ANOCLIP_ASSIGN_OR_RETURN(auto result, RunLoad(connection, options, mix, on_start));
    std::optional<ServerSplit> split;
    if (scrape) {
      ANOCLIP_ASSIGN_OR_RETURN(auto after, ScrapeMetrics(args.String("metrics")));
      split = ComputeSplit(before, after);
    }
    const RunSetup setup{connection.target, step,          options.rps, options.poisson,
                         options.stream,    options.connections};
    std::cout << FormatRunText(setup, result, split) << std::flush;
    runs.push_back(RunToJson(setup, result, split));
    csv += CsvRow(setup, result, split);
    reported.push_back({setup, result});
    if (result.ok == 0) {
      outcome = absl::UnavailableError(absl::StrCat("no request succeeded at concurrency ", step));
      break;
    }
    if (latency_limit_ms > 0 && result.latency.p99 * 1e3 > latency_limit_ms) {
      std::cout << "p99 " << result.latency.p99 * 1e3 << " ms is over the " << latency_limit_ms
                << " ms limit: the sweep stops at concurrency " << step << "\n";
      break;
    }
  }
  if (args.Has("json")) {
    nlohmann::ordered_json report{{"target", connection.target}, {"runs", runs}};
    ANOCLIP_RETURN_IF_ERROR(WriteStringToFile(args.String("json"), report.dump(2) + "\n"));
  }
  if (args.Has("csv")) ANOCLIP_RETURN_IF_ERROR(WriteStringToFile(args.String("csv"), csv));
  if (args.Has("html")) ANOCLIP_RETURN_IF_ERROR(WriteStringToFile(args.String("html"), ReportHtml(connection.target, reported)));
  return outcome;
}

}  // namespace

int RunLoadtest(const std::vector<std::string>& words) {
  auto value_flags = ConnectionFlags();
  value_flags.insert({"concurrency", "rps", "arrivals", "duration", "requests", "warmup", "connections",
                      "concurrency-range", "latency-limit-ms", "images", "classes", "tta-share", "views", "metrics",
                      "json", "csv", "html", "seed"});
  auto bool_flags = ConnectionBoolFlags();
  bool_flags.insert({"stream", "help"});
  auto args = Arguments::Parse(words, value_flags, bool_flags);
  if (!args.ok() || args->Flag("help")) {
    if (!args.ok()) std::cerr << "anoclip-client loadtest: " << args.status().message() << "\n";
    std::cerr << kUsage << kConnectionUsage;
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
