// The client's pieces that need no server: latency summaries, the recorder, arrival schedules,
// TTA share, flag parsing, Prometheus text, the server split, report formats, response JSON,
// generated samples and connection options.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <thread>
#include <tuple>

#include <opencv2/imgcodecs.hpp>

#include "absl/strings/str_split.h"
#include "client/connection.h"
#include "client/latency_stats.h"
#include "client/load_report.h"
#include "client/load_report_html.h"
#include "client/loadtest.h"
#include "client/prometheus_text.h"
#include "client/requests.h"
#include "client/samples.h"
#include "common/arguments.h"
#include "common/files.h"
#include "image/decode.h"
#include "inspection/inspect.h"
#include "inspection/render.h"
#include "proto/inspection_proto.h"

namespace anoclip::client {
namespace {

std::string TempDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/client_" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// ---- latency summary and recorder

TEST(SummarizeTest, NearestRankPercentilesOfOneToHundredMilliseconds) {
  std::vector<double> seconds;
  for (int i = 100; i >= 1; --i) seconds.push_back(i * 1e-3);  // unsorted on purpose
  const LatencySummary s = Summarize(seconds);
  EXPECT_EQ(s.count, 100u);
  EXPECT_DOUBLE_EQ(s.min, 0.001);
  EXPECT_DOUBLE_EQ(s.max, 0.100);
  EXPECT_NEAR(s.mean, 0.0505, 1e-12);
  EXPECT_DOUBLE_EQ(s.p50, 0.050);
  EXPECT_DOUBLE_EQ(s.p90, 0.090);
  EXPECT_DOUBLE_EQ(s.p95, 0.095);
  EXPECT_DOUBLE_EQ(s.p99, 0.099);
}

TEST(SummarizeTest, HistogramBucketsCountEverySampleOnce) {
  // 0.5 ms, 1 ms (on the bound), 1.5 ms, 30 ms, 20 s (past the last finite bound).
  const LatencySummary s = Summarize({0.0005, 0.001, 0.0015, 0.030, 20.0});
  ASSERT_EQ(s.histogram.size(), HistogramBounds().size());
  EXPECT_TRUE(std::isinf(s.histogram.back().first));
  std::map<double, size_t> counts(s.histogram.begin(), s.histogram.end());
  EXPECT_EQ(counts[0.001], 2u);
  EXPECT_EQ(counts[0.002], 1u);
  EXPECT_EQ(counts[0.05], 1u);
  EXPECT_EQ(s.histogram.back().second, 1u);
  size_t total = 0;
  for (const auto& [bound, count] : s.histogram) total += count;
  EXPECT_EQ(total, 5u);
}

TEST(SummarizeTest, EmptyInputIsAllZeros) {
  const LatencySummary s = Summarize({});
  EXPECT_EQ(s.count, 0u);
  EXPECT_EQ(s.p99, 0);
  EXPECT_EQ(s.max, 0);
  for (const auto& [bound, count] : s.histogram) EXPECT_EQ(count, 0u);
}

TEST(SummarizeTest, OneSampleIsEveryPercentile) {
  const LatencySummary s = Summarize({0.25});
  EXPECT_DOUBLE_EQ(s.p50, 0.25);
  EXPECT_DOUBLE_EQ(s.p99, 0.25);
  EXPECT_DOUBLE_EQ(s.min, 0.25);
}

TEST(StatusCodeNameTest, NamesKnownCodesAndNumbersOthers) {
  EXPECT_EQ(StatusCodeName(0), "OK");
  EXPECT_EQ(StatusCodeName(4), "DEADLINE_EXCEEDED");
  EXPECT_EQ(StatusCodeName(14), "UNAVAILABLE");
  EXPECT_EQ(StatusCodeName(16), "UNAUTHENTICATED");
  EXPECT_EQ(StatusCodeName(42), "CODE_42");
  EXPECT_EQ(StatusCodeName(-1), "CODE_-1");
}

TEST(LoadRecorderTest, CountsCodesErrorsAndOnlySuccessfulLatencies) {
  LoadRecorder recorder;
  recorder.Record(0, "", 0.010);
  recorder.Record(0, "", 0.020);
  recorder.Record(8, "queue full", 0.001);
  recorder.Record(8, "queue full", 0.001);
  recorder.Record(3, "bad image", 0.002);
  RecordedLoad load = recorder.Take();
  EXPECT_EQ(load.requests, 5);
  EXPECT_EQ(load.ok, 2);
  EXPECT_EQ(load.codes["OK"], 2);
  EXPECT_EQ(load.codes["RESOURCE_EXHAUSTED"], 2);
  EXPECT_EQ(load.codes["INVALID_ARGUMENT"], 1);
  EXPECT_EQ(load.errors["queue full"], 2);
  EXPECT_EQ(load.errors["bad image"], 1);
  EXPECT_EQ(load.latencies, (std::vector<double>{0.010, 0.020}));
  EXPECT_EQ(recorder.Take().requests, 0);  // Take empties it
}

TEST(LoadRecorderTest, DistinctErrorMessagesAreBounded) {
  LoadRecorder recorder;
  for (int i = 0; i < 100; ++i) recorder.Record(2, "error " + std::to_string(i), 0);
  RecordedLoad load = recorder.Take();
  EXPECT_EQ(load.requests, 100);
  EXPECT_LE(load.errors.size(), LoadRecorder::kMaxErrorKinds + 1);
  int64_t total = 0;
  for (const auto& [message, count] : load.errors) total += count;
  EXPECT_EQ(total, 100);
  EXPECT_EQ(load.errors["(other errors)"], 100 - static_cast<int64_t>(LoadRecorder::kMaxErrorKinds));
}

TEST(LoadRecorderTest, IsSafeFromManyThreads) {
  LoadRecorder recorder;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) recorder.Record(i % 10 == 0 ? 14 : 0, "down", 0.001);
    });
  }
  for (auto& t : threads) t.join();
  RecordedLoad load = recorder.Take();
  EXPECT_EQ(load.requests, 8000);
  EXPECT_EQ(load.ok, 7200);
  EXPECT_EQ(load.codes["UNAVAILABLE"], 800);
  EXPECT_EQ(load.latencies.size(), 7200u);
}

// ---- arrival schedule, TTA share, flag parsing

TEST(ArrivalOffsetsTest, ConstantArrivalsAreEvenlySpaced) {
  const auto offsets = ArrivalOffsets(4.0, 9, false, 1);
  ASSERT_EQ(offsets.size(), 9u);
  for (size_t i = 0; i < offsets.size(); ++i) EXPECT_DOUBLE_EQ(offsets[i], i * 0.25);
}

TEST(ArrivalOffsetsTest, PoissonArrivalsHaveTheRateAndAreReproducible) {
  const auto offsets = ArrivalOffsets(100.0, 20000, true, 7);
  ASSERT_EQ(offsets.size(), 20000u);
  EXPECT_DOUBLE_EQ(offsets[0], 0);
  EXPECT_TRUE(std::is_sorted(offsets.begin(), offsets.end()));
  // Mean gap 1/rate within 3%; the gaps' coefficient of variation is 1 for exponential gaps.
  std::vector<double> gaps;
  for (size_t i = 1; i < offsets.size(); ++i) gaps.push_back(offsets[i] - offsets[i - 1]);
  const double mean = std::accumulate(gaps.begin(), gaps.end(), 0.0) / gaps.size();
  double var = 0;
  for (double g : gaps) var += (g - mean) * (g - mean);
  const double cv = std::sqrt(var / gaps.size()) / mean;
  EXPECT_NEAR(mean, 0.01, 0.0003);
  EXPECT_NEAR(cv, 1.0, 0.05);
  EXPECT_EQ(ArrivalOffsets(100.0, 50, true, 7), std::vector<double>(offsets.begin(), offsets.begin() + 50));
  EXPECT_NE(ArrivalOffsets(100.0, 50, true, 8), std::vector<double>(offsets.begin(), offsets.begin() + 50));
}

TEST(ArrivalOffsetsTest, NoRateOrNoCountIsEmpty) {
  EXPECT_TRUE(ArrivalOffsets(0, 10, false, 1).empty());
  EXPECT_TRUE(ArrivalOffsets(-1, 10, true, 1).empty());
  EXPECT_TRUE(ArrivalOffsets(5, 0, false, 1).empty());
}

TEST(ArrivalScheduleTest, HandsOutEachIndexOnceAcrossThreads) {
  ArrivalSchedule schedule(1000.0, false, 1);
  absl::Mutex mutex;
  std::map<int64_t, double> seen;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 500; ++i) {
        const auto arrival = schedule.Next();
        absl::MutexLock lock(&mutex);
        seen[arrival.index] = arrival.offset;
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(seen.size(), 2000u);
  EXPECT_EQ(seen.begin()->first, 0);
  EXPECT_EQ(seen.rbegin()->first, 1999);
  for (const auto& [index, offset] : seen) EXPECT_DOUBLE_EQ(offset, index / 1000.0);
}

TEST(TtaSelectedTest, SelectsExactlyTheShare) {
  for (double share : {0.0, 0.2, 0.25, 1.0 / 3, 0.5, 0.9, 1.0}) {
    SCOPED_TRACE(share);
    int selected = 0;
    for (int i = 0; i < 1000; ++i) selected += TtaSelected(i, share) ? 1 : 0;
    EXPECT_EQ(selected, static_cast<int>(std::floor(1000 * share + 1e-9)));
  }
  // Spread out: a fifth means one in every five consecutive requests.
  for (int start = 0; start < 100; start += 5) {
    int selected = 0;
    for (int i = start; i < start + 5; ++i) selected += TtaSelected(i, 0.2) ? 1 : 0;
    EXPECT_EQ(selected, 1);
  }
}

TEST(ParseConcurrencyRangeTest, StepsFromAToB) {
  EXPECT_EQ(*ParseConcurrencyRange("1:4"), (std::vector<int>{1, 2, 3, 4}));
  EXPECT_EQ(*ParseConcurrencyRange("2:10:4"), (std::vector<int>{2, 6, 10}));
  EXPECT_EQ(*ParseConcurrencyRange("3:3:1"), (std::vector<int>{3}));
}

TEST(ParseConcurrencyRangeTest, RejectsMalformedRanges) {
  for (const char* bad : {"", "4", "4:2", "0:3", "1:3:0", "1:2000", "a:b", "1:3:2:1", "1:-3", "1:3:x"}) {
    SCOPED_TRACE(bad);
    auto steps = ParseConcurrencyRange(bad);
    ASSERT_FALSE(steps.ok());
    EXPECT_EQ(steps.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(steps.status().message().find("--concurrency-range"), std::string::npos);
  }
}

TEST(ParseClassMixTest, NamesWithOptionalKinds) {
  auto classes = ParseClassMix("bottle,carpet:texture, pcb1:object");
  ASSERT_TRUE(classes.ok()) << classes.status();
  ASSERT_EQ(classes->size(), 3u);
  EXPECT_EQ((*classes)[0].name(), "bottle");
  EXPECT_EQ((*classes)[0].kind(), anoclip::v1::KIND_UNSPECIFIED);
  EXPECT_EQ((*classes)[1].name(), "carpet");
  EXPECT_EQ((*classes)[1].kind(), anoclip::v1::KIND_TEXTURE);
  EXPECT_EQ((*classes)[2].name(), " pcb1");  // names are sent as written
  EXPECT_EQ((*classes)[2].kind(), anoclip::v1::KIND_OBJECT);
}

TEST(ParseClassMixTest, RejectsBadKindsAndEmptyLists) {
  for (const char* bad : {"", ",", "carpet:fabric", ":texture", "a:object:x"}) {
    SCOPED_TRACE(bad);
    auto classes = ParseClassMix(bad);
    ASSERT_FALSE(classes.ok());
    EXPECT_EQ(classes.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

// ---- Prometheus text and the server split

constexpr char kScrapeBefore[] = R"(# HELP anoclip_requests_total RPCs answered
# TYPE anoclip_requests_total counter
anoclip_requests_total{code="OK",method="Detect"} 10
anoclip_requests_total{code="INVALID_ARGUMENT",method="Detect"} 2
anoclip_requests_total{code="OK",method="PrepareClass"} 1
# TYPE anoclip_queue_duration_seconds histogram
anoclip_queue_duration_seconds_bucket{le="0.01"} 10
anoclip_queue_duration_seconds_bucket{le="+Inf"} 10
anoclip_queue_duration_seconds_sum 0.05
anoclip_queue_duration_seconds_count 10
anoclip_encode_duration_seconds_sum 0.4
anoclip_encode_duration_seconds_count 5
anoclip_batch_size_sum 10
anoclip_batch_size_count 5
anoclip_postprocess_duration_seconds_sum 0.01
anoclip_postprocess_duration_seconds_count 10
)";

constexpr char kScrapeAfter[] = R"(# TYPE anoclip_requests_total counter
anoclip_requests_total{code="OK",method="Detect"} 40
anoclip_requests_total{code="INVALID_ARGUMENT",method="Detect"} 2
anoclip_requests_total{code="OK",method="Inspect"} 8
anoclip_requests_total{code="RESOURCE_EXHAUSTED",method="Inspect"} 2
anoclip_requests_total{code="OK",method="PrepareClass"} 3
anoclip_queue_duration_seconds_bucket{le="+Inf"} 48
anoclip_queue_duration_seconds_sum 0.43
anoclip_queue_duration_seconds_count 48
anoclip_encode_duration_seconds_sum 1.6
anoclip_encode_duration_seconds_count 17
anoclip_batch_size_sum 48
anoclip_batch_size_count 17
anoclip_tta_duration_seconds_sum 0.9
anoclip_tta_duration_seconds_count 6
anoclip_postprocess_duration_seconds_sum 0.086
anoclip_postprocess_duration_seconds_count 48
)";

TEST(PrometheusTextTest, ParsesNamesLabelsValuesAndSkipsTheRest) {
  const auto samples = ParsePrometheusText(
      "# HELP x help text\n"
      "# TYPE x counter\n"
      "\n"
      "x 3\n"
      "x_total{a=\"1\",b=\"two words\"} 4.5 1700000000000\n"
      "y{path=\"C:\\\\dir\",quote=\"say \\\"hi\\\"\",nl=\"a\\nb\"} +Inf\n"
      "z{le=\"0.5\",} -Inf\n"
      "  w 1e-3  \n"
      "nan_metric NaN\n"
      "broken{a=\"1\" 5\n"
      "novalue\n"
      "9bad 1\n"
      "bad_value xyz\n");
  ASSERT_EQ(samples.size(), 6u);
  EXPECT_EQ(samples[0].name, "x");
  EXPECT_EQ(samples[0].value, 3);
  EXPECT_TRUE(samples[0].labels.empty());
  EXPECT_EQ(samples[1].name, "x_total");
  EXPECT_EQ(samples[1].labels.at("b"), "two words");
  EXPECT_EQ(samples[1].value, 4.5);  // the timestamp is ignored
  EXPECT_EQ(samples[2].labels.at("path"), "C:\\dir");
  EXPECT_EQ(samples[2].labels.at("quote"), "say \"hi\"");
  EXPECT_EQ(samples[2].labels.at("nl"), "a\nb");
  EXPECT_TRUE(std::isinf(samples[2].value) && samples[2].value > 0);
  EXPECT_EQ(samples[3].labels.at("le"), "0.5");
  EXPECT_TRUE(std::isinf(samples[3].value) && samples[3].value < 0);
  EXPECT_EQ(samples[4].name, "w");
  EXPECT_DOUBLE_EQ(samples[4].value, 1e-3);
  EXPECT_TRUE(std::isnan(samples[5].value));
}

TEST(PrometheusTextTest, SumSeriesMatchesNameExactlyAndLabelsAsASubset) {
  const auto samples = ParsePrometheusText(kScrapeAfter);
  EXPECT_EQ(SumSeries(samples, "anoclip_requests_total"), 55);
  EXPECT_EQ(SumSeries(samples, "anoclip_requests_total", {{"method", "Detect"}}), 42);
  EXPECT_EQ(SumSeries(samples, "anoclip_requests_total", {{"method", "Inspect"}, {"code", "OK"}}), 8);
  EXPECT_EQ(SumSeries(samples, "anoclip_requests_total", {{"method", "Nope"}}), 0);
  EXPECT_EQ(SumSeries(samples, "anoclip_requests"), 0);  // no prefix matching
  EXPECT_EQ(SumSeries(samples, "anoclip_queue_duration_seconds_count"), 48);
}

TEST(ServerSplitTest, DeltasOfCountersAndHistogramMeans) {
  const ServerSplit split = ComputeSplit(kScrapeBefore, kScrapeAfter);
  EXPECT_DOUBLE_EQ(split.requests, 40);  // Detect 30 more, Inspect 10; PrepareClass does not count
  EXPECT_DOUBLE_EQ(split.ok, 38);
  EXPECT_DOUBLE_EQ(split.images, 38);
  EXPECT_DOUBLE_EQ(split.batches, 12);
  EXPECT_NEAR(split.mean_batch, 38.0 / 12, 1e-12);
  EXPECT_NEAR(split.queue_s, 0.38 / 38, 1e-12);
  EXPECT_NEAR(split.encode_batch_s, 1.2 / 12, 1e-12);
  EXPECT_NEAR(split.encode_s, 1.2 / 38, 1e-12);
  EXPECT_DOUBLE_EQ(split.tta_images, 6);
  EXPECT_NEAR(split.tta_s, 0.15, 1e-12);
  EXPECT_NEAR(split.postprocess_s, 0.076 / 38, 1e-12);
}

TEST(ServerSplitTest, NoTrafficIsAllZerosNotNaN) {
  const ServerSplit split = ComputeSplit(kScrapeAfter, kScrapeAfter);
  EXPECT_EQ(split.requests, 0);
  EXPECT_EQ(split.mean_batch, 0);
  EXPECT_EQ(split.queue_s, 0);
  EXPECT_EQ(split.encode_s, 0);
  EXPECT_EQ(split.tta_s, 0);
  const ServerSplit empty = ComputeSplit("", "");
  EXPECT_EQ(empty.requests, 0);
  EXPECT_FALSE(std::isnan(empty.postprocess_s));
}

TEST(ScrapeMetricsTest, MalformedAddressIsInvalidArgument) {
  for (const char* bad : {"localhost", ":9090", "host:port", "host:0", "host:70000"}) {
    SCOPED_TRACE(bad);
    auto scraped = ScrapeMetrics(bad);
    ASSERT_FALSE(scraped.ok());
    EXPECT_EQ(scraped.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(ScrapeMetricsTest, NothingListeningIsUnavailable) {
  auto scraped = ScrapeMetrics("127.0.0.1:1");
  ASSERT_FALSE(scraped.ok());
  EXPECT_EQ(scraped.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(scraped.status().message().find("127.0.0.1:1/metrics"), std::string::npos);
}

// ---- report formats

LoadResult SampleResult() {
  LoadResult r;
  std::vector<double> latencies;
  for (int i = 1; i <= 40; ++i) latencies.push_back(0.010 + i * 0.001);
  r.requests = 42;
  r.ok = 40;
  r.seconds = 2.0;
  r.codes = {{"OK", 40}, {"RESOURCE_EXHAUSTED", 2}};
  r.errors = {{"queue full", 2}};
  r.latency = Summarize(latencies);
  return r;
}

TEST(LoadReportTest, TextShowsCountsLatencyHistogramCodesAndServer) {
  const RunSetup setup{"127.0.0.1:5000", 4, 0, false, false, 1};
  const ServerSplit split = ComputeSplit(kScrapeBefore, kScrapeAfter);
  const std::string text = FormatRunText(setup, SampleResult(), split);
  EXPECT_NE(text.find("loadtest 127.0.0.1:5000: closed loop, 4 workers, unary Detect, 1 connection"),
            std::string::npos) << text;
  EXPECT_NE(text.find("requests   42 (ok 40) in 2.00 s: 20.00 req/s"), std::string::npos) << text;
  EXPECT_NE(text.find("p50 30.00"), std::string::npos) << text;
  EXPECT_NE(text.find("max 50.00"), std::string::npos) << text;
  EXPECT_NE(text.find("<=     20 ms"), std::string::npos) << text;
  EXPECT_NE(text.find("<=     50 ms"), std::string::npos) << text;
  EXPECT_EQ(text.find("<=      1 ms"), std::string::npos) << "empty buckets outside the range are left out";
  EXPECT_NE(text.find("status     OK 40, RESOURCE_EXHAUSTED 2"), std::string::npos) << text;
  EXPECT_NE(text.find("error x2: queue full"), std::string::npos) << text;
  EXPECT_NE(text.find("server     40 requests (ok 38); mean batch 3.17 over 12 forwards"), std::string::npos) << text;
  EXPECT_NE(text.find("tta 150.00 x6"), std::string::npos) << text;
  const std::string open = FormatRunText({"h:1", 64, 25, true, true, 2}, SampleResult(), std::nullopt);
  EXPECT_NE(open.find("open loop 25 rps poisson, at most 64 in flight, Inspect streams, 2 connections"),
            std::string::npos) << open;
  EXPECT_EQ(open.find("server"), std::string::npos);
}

TEST(LoadReportTest, JsonHasTheNumbersInMilliseconds) {
  const auto json = RunToJson({"t:1", 4, 0, false, false, 1}, SampleResult(), ComputeSplit(kScrapeBefore, kScrapeAfter));
  EXPECT_EQ(json["mode"], "closed");
  EXPECT_EQ(json["requests"], 42);
  EXPECT_EQ(json["ok"], 40);
  EXPECT_DOUBLE_EQ(json["throughput_rps"].get<double>(), 20.0);
  EXPECT_NEAR(json["latency_ms"]["p99"].get<double>(), 50.0, 1e-9);
  EXPECT_NEAR(json["latency_ms"]["min"].get<double>(), 11.0, 1e-9);
  EXPECT_EQ(json["codes"]["RESOURCE_EXHAUSTED"], 2);
  EXPECT_EQ(json["errors"]["queue full"], 2);
  EXPECT_EQ(json["histogram"].size(), HistogramBounds().size());
  EXPECT_EQ(json["histogram"].back()["le_ms"], "+Inf");
  EXPECT_EQ(json["server"]["requests"], 40);
  EXPECT_NEAR(json["server"]["tta_ms"].get<double>(), 150.0, 1e-9);
  EXPECT_FALSE(RunToJson({"t:1", 4, 0, false, false, 1}, SampleResult(), std::nullopt).contains("server"));
}

TEST(LoadReportTest, CsvRowsHaveTheHeadersColumns) {
  const std::vector<std::string> header = absl::StrSplit(CsvHeader(), ',');
  for (const auto& split : {std::optional<ServerSplit>(), std::optional<ServerSplit>(ComputeSplit(kScrapeBefore, kScrapeAfter))}) {
    const std::string row = CsvRow({"t:1", 4, 0, false, false, 1}, SampleResult(), split);
    ASSERT_EQ(row.back(), '\n');
    const std::vector<std::string> cells = absl::StrSplit(row.substr(0, row.size() - 1), ',');
    ASSERT_EQ(cells.size(), header.size()) << row;
    EXPECT_EQ(cells[0], "closed");
    EXPECT_EQ(cells[1], "4");
    EXPECT_EQ(cells[5], "42");
    EXPECT_EQ(cells[6], "40");
    EXPECT_EQ(cells[16], "2");  // errors
    EXPECT_EQ(cells[17], split ? "40" : "");
  }
}

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(LoadReportTest, HtmlIsOnePageWithTheHistogramAndTheSweepAsSvg) {
  LoadResult slower = SampleResult();
  slower.seconds = 4.0;
  std::vector<double> latencies(30, 0.15);
  slower.latency = Summarize(latencies);
  const std::vector<ReportedRun> runs = {{{"h<1>", 1, 0, false, false, 1}, SampleResult()},
                                         {{"h<1>", 2, 0, false, false, 1}, SampleResult()},
                                         {{"h<1>", 3, 0, false, false, 1}, slower}};
  const std::string html = ReportHtml("h<1>&", runs);
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_NE(html.find("</html>"), std::string::npos);
  EXPECT_NE(html.find("Load test of h&lt;1&gt;&amp;"), std::string::npos) << "the target is escaped";
  EXPECT_EQ(html.find("h<1>"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos) << "self-contained, nothing to run";
  EXPECT_EQ(html.find("src="), std::string::npos);
  // One histogram per run, with a bar per non-empty bucket in range: (10, 20] and (20, 50] ms.
  EXPECT_EQ(Count(html, "<svg class=\"histogram\""), 3u);
  EXPECT_EQ(Count(html, "<rect class=\"bar\""), 2u + 2u + 1u);
  EXPECT_NE(html.find("<title>&#8804;20 ms: "), std::string::npos);
  EXPECT_NE(html.find("<title>&#8804;50 ms: "), std::string::npos);
  EXPECT_NE(html.find("<title>&#8804;200 ms: 30</title>"), std::string::npos);
  // The sweep: throughput and latency against concurrency, a point per step and series.
  EXPECT_EQ(Count(html, "<svg class=\"sweep\""), 2u);
  EXPECT_EQ(Count(html, "<polyline class=\"line\""), 3u);
  EXPECT_NE(html.find("<title>throughput, rps at 3: 10</title>"), std::string::npos) << html;
  EXPECT_NE(html.find("<title>p99 latency, ms at 3: 150</title>"), std::string::npos);
  // The table: one row per run, and the errors.
  EXPECT_EQ(Count(html, "<tr><td>closed</td>"), 3u);
  EXPECT_NE(html.find("error x2: queue full"), std::string::npos);
  // A single run has no sweep; a run without successes says so instead of drawing.
  LoadResult failed;
  failed.requests = 3;
  failed.codes = {{"UNAVAILABLE", 3}};
  failed.latency = Summarize({});
  const std::string single = ReportHtml("t", {{{"t", 4, 0, false, false, 1}, failed}});
  EXPECT_EQ(single.find("<svg"), std::string::npos);
  EXPECT_NE(single.find("No successful requests"), std::string::npos);
}

// ---- requests and responses

TEST(ResponseToJsonTest, KeysInTheOrderOfAnoclipDetect) {
  anoclip::v1::DetectResponse r;
  r.set_image_score(0.75f);
  r.set_max_pixel_score(0.5f);
  r.set_class_name("bottle");
  r.set_kind(anoclip::v1::KIND_OBJECT);
  r.set_model_id("abc");
  r.mutable_timings()->set_total_seconds(0.02);
  auto json = ResponseToJson(r);
  std::vector<std::string> keys;
  for (const auto& [key, value] : json.items()) keys.push_back(key);
  EXPECT_EQ(keys, (std::vector<std::string>{"image_score", "max_pixel_score", "class", "kind", "model", "timings_ms"}));
  EXPECT_DOUBLE_EQ(json["image_score"].get<double>(), 0.75);
  EXPECT_NEAR(json["timings_ms"]["total"].get<double>(), 20.0, 1e-9);

  r.set_is_anomalous(true);
  r.set_calibrated_image_score(0.9f);
  auto* region = r.add_regions();
  region->set_x(3);
  region->set_y(4);
  region->set_width(5);
  region->set_height(6);
  region->set_area(20);
  region->set_peak(0.8f);
  region->set_mean(0.6f);
  json = ResponseToJson(r);
  keys.clear();
  for (const auto& [key, value] : json.items()) keys.push_back(key);
  EXPECT_EQ(keys.front(), "image_score");
  EXPECT_EQ(json["is_anomalous"], true);
  ASSERT_EQ(json["regions"].size(), 1u);
  EXPECT_EQ(json["regions"][0]["x"], 3);
  EXPECT_EQ(json["regions"][0]["area"], 20);
  EXPECT_EQ(json["kind"], "object");
}

TEST(RequestTemplateTest, FlagsBecomeOptions) {
  auto args = Arguments::Parse({"--class", "carpet", "--kind", "texture", "--tta", "--views", "22", "--threshold", "0.4",
                                "--min-region-area", "9"},
                               DetectValueFlags(), DetectBoolFlags());
  ASSERT_TRUE(args.ok()) << args.status();
  auto request = RequestTemplate(*args, true);
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->class_spec().name(), "carpet");
  EXPECT_EQ(request->class_spec().kind(), anoclip::v1::KIND_TEXTURE);
  EXPECT_TRUE(request->options().tta());
  EXPECT_EQ(request->options().views(), 22);
  EXPECT_FLOAT_EQ(request->options().threshold(), 0.4f);
  EXPECT_EQ(request->options().min_region_area(), 9);
  EXPECT_EQ(request->options().heatmap_format(), anoclip::v1::HEATMAP_FORMAT_PNG);
  EXPECT_EQ(request->options().heatmap_size(), anoclip::v1::HEATMAP_SIZE_ORIGINAL);
}

TEST(RequestTemplateTest, BadFlagsAreClearErrors) {
  const std::vector<std::vector<std::string>> bad = {
      {"--kind", "object"},                                     // no class
      {"--class", "a", "--kind", "fabric"},                     // bad kind
      {"--class", "a", "--views", "23"},                        // out of range
      {"--class", "a", "--threshold", "0.5", "--use-calibration"}};
  for (const auto& words : bad) {
    auto args = Arguments::Parse(words, DetectValueFlags(), DetectBoolFlags());
    ASSERT_TRUE(args.ok());
    auto request = RequestTemplate(*args, false);
    ASSERT_FALSE(request.ok()) << words.back();
    EXPECT_EQ(request.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(ImagesInTest, ListsImageFilesSortedAndRefusesMissingFolders) {
  const std::string dir = TempDir("images_in");
  for (const char* name : {"b.PNG", "a.jpg", "c.txt", "d.tiff"}) std::ofstream(dir + "/" + name) << "x";
  std::filesystem::create_directories(dir + "/sub.png");
  auto paths = ImagesIn(dir);
  ASSERT_TRUE(paths.ok());
  EXPECT_EQ(*paths, (std::vector<std::string>{dir + "/a.jpg", dir + "/b.PNG", dir + "/d.tiff"}));
  auto missing = ImagesIn(dir + "/nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

// A response as the service sends it for `inspection` at the image's size.
anoclip::v1::DetectResponse ResponseFor(const inspection::Inspection& inspection) {
  anoclip::v1::DetectResponse r;
  r.set_image_score(inspection.image_score);
  r.set_max_pixel_score(inspection.max_pixel_score);
  if (inspection.calibrated_image_score) r.set_calibrated_image_score(*inspection.calibrated_image_score);
  if (inspection.is_anomalous) r.set_is_anomalous(*inspection.is_anomalous);
  inspection::RegionsToProto(inspection.regions, r.mutable_regions());
  r.mutable_heatmap()->set_format(anoclip::v1::HEATMAP_FORMAT_PNG);
  r.mutable_heatmap()->set_width(inspection.heatmap.cols);
  r.mutable_heatmap()->set_height(inspection.heatmap.rows);
  r.mutable_heatmap()->set_data(*inspection::EncodePng(inspection.heatmap));
  return r;
}

TEST(WriteResponseImagesTest, WritesWhatTheInspectionStepWritesForTheSameDetection) {
  const std::string dir = TempDir("write_images");
  cv::Mat rgb(40, 60, CV_8UC3, cv::Scalar(100, 110, 120));
  std::vector<uchar> png;
  cv::imencode(".png", rgb, png);
  const std::string bytes(png.begin(), png.end());
  cv::Mat map(10, 15, CV_32F);
  for (int y = 0; y < map.rows; ++y) {
    for (int x = 0; x < map.cols; ++x) map.at<float>(y, x) = static_cast<float>(x) / 15.f;
  }
  inspection::InspectOptions options;
  options.threshold = 0.6;
  options.size = rgb.size();
  auto inspected = inspection::Inspect(0.4f, map, options);
  ASSERT_TRUE(inspected.ok()) << inspected.status();
  ASSERT_FALSE(inspected->regions.empty());
  // The images as the service and `anoclip detect` draw them over the decoded input.
  auto expected = inspection::EncodeImages(*image::DecodeImage(bytes), *inspected);
  ASSERT_TRUE(expected.ok());

  const auto r = ResponseFor(*inspected);
  auto from_response = InspectionFromResponse(r);
  ASSERT_TRUE(from_response.ok()) << from_response.status();
  EXPECT_EQ(inspection::Caption(*from_response), inspection::Caption(*inspected));
  ASSERT_EQ(from_response->regions.size(), inspected->regions.size());
  for (size_t i = 0; i < inspected->regions.size(); ++i) {
    const auto &a = from_response->regions[i], &b = inspected->regions[i];
    EXPECT_EQ(a.contour, b.contour);
    EXPECT_EQ(std::tie(a.x, a.y, a.width, a.height, a.area, a.peak, a.mean),
              std::tie(b.x, b.y, b.width, b.height, b.area, b.peak, b.mean));
  }
  ASSERT_TRUE(WriteResponseImages(r, bytes, dir, "sub/part.png").ok());
  EXPECT_EQ(*ReadFileToString(dir + "/sub/part.png_heatmap.png"), expected->heatmap_png);
  EXPECT_EQ(*ReadFileToString(dir + "/sub/part.png_overlay.png"), expected->overlay_png);
  EXPECT_EQ(*ReadFileToString(dir + "/sub/part.png_mask.png"), expected->mask_png);
  const cv::Mat mask = cv::imread(dir + "/sub/part.png_mask.png", cv::IMREAD_UNCHANGED);
  EXPECT_EQ(mask.at<uchar>(20, 55), 255);  // inside the region (the right of the map)
  EXPECT_EQ(mask.at<uchar>(20, 10), 0);

  // No decision: no mask.
  auto undecided = r;
  undecided.clear_is_anomalous();
  undecided.clear_regions();
  ASSERT_TRUE(WriteResponseImages(undecided, bytes, dir, "nodecision.png").ok());
  EXPECT_TRUE(std::filesystem::exists(dir + "/nodecision.png_overlay.png"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/nodecision.png_mask.png"));
  // No PNG heatmap, a broken one, one of the wrong size, or no image: clear errors.
  auto broken = r;
  broken.mutable_heatmap()->set_data("short");
  EXPECT_EQ(WriteResponseImages(broken, bytes, dir, "bad").code(), absl::StatusCode::kInvalidArgument);
  broken = r;
  broken.mutable_heatmap()->set_format(anoclip::v1::HEATMAP_FORMAT_FLOAT32);
  EXPECT_EQ(WriteResponseImages(broken, bytes, dir, "bad").code(), absl::StatusCode::kInvalidArgument);
  broken = r;
  broken.mutable_heatmap()->set_width(61);
  EXPECT_EQ(WriteResponseImages(broken, bytes, dir, "bad").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteResponseImages(r, "not an image", dir, "bad").code(), absl::StatusCode::kInvalidArgument);
}

TEST(OutputNamesTest, KeepExtensionsAndFoldersSoNamesNeverCollide) {
  EXPECT_EQ(OutputNames({"/data/a.png", "/data/a.jpg"}), (std::vector<std::string>{"a.png", "a.jpg"}));
  EXPECT_EQ(OutputNames({"/data/x/a.png", "/data/y/a.png", "/data/x/deep/b.png"}),
            (std::vector<std::string>{"x/a.png", "y/a.png", "x/deep/b.png"}));
  EXPECT_EQ(OutputNames({"/data/one.png"}), (std::vector<std::string>{"one.png"}));
  EXPECT_EQ(OutputNames({"/a/b.png", "/c/b.png"}), (std::vector<std::string>{"a/b.png", "c/b.png"}));
  // Relative paths are taken from the working folder, ".." resolved.
  const auto names = OutputNames({"x/../p.png", "q.png"});
  EXPECT_EQ(names, (std::vector<std::string>{"p.png", "q.png"}));
  EXPECT_TRUE(OutputNames({}).empty());
}

TEST(KindTest, NamesBothWaysAndUnknownKindsSaySo) {
  EXPECT_EQ(*KindFromName("object", "--kind"), anoclip::v1::KIND_OBJECT);
  EXPECT_EQ(*KindFromName("texture", "--kind"), anoclip::v1::KIND_TEXTURE);
  EXPECT_EQ(*KindFromName("", "--kind"), anoclip::v1::KIND_UNSPECIFIED);
  auto bad = KindFromName("fabric", "--kind");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "--kind must be object or texture; was \"fabric\"");
  EXPECT_EQ(KindName(anoclip::v1::KIND_TEXTURE), "texture");
  EXPECT_EQ(KindName(anoclip::v1::KIND_UNSPECIFIED), "unspecified");
  EXPECT_EQ(KindName(static_cast<anoclip::v1::Kind>(7)), "unknown kind 7");
  auto mix = ParseClassMix("carpet:fabric");
  ASSERT_FALSE(mix.ok());
  EXPECT_EQ(mix.status().message(), "the class kind in 'carpet:fabric' must be object or texture; was \"fabric\"");
}

TEST(NegativeSizeTest, NegativeCountsAndSizesSayTheyCannotBeNegative) {
  auto args = Arguments::Parse({"--class", "a", "--min-region-area", "-3"}, DetectValueFlags(), DetectBoolFlags());
  ASSERT_TRUE(args.ok());
  auto request = RequestTemplate(*args, false);
  ASSERT_FALSE(request.ok());
  EXPECT_EQ(request.status().message(), "--min-region-area must be an integer >= 0; was \"-3\" (it cannot be negative)");
  auto size = Arguments::Parse({"--size", "-5"}, {"size"}, {});
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(size->Int("size", 320, 64, 4096).status().message(),
            "--size must be an integer in 64..4096; was \"-5\" (it cannot be negative)");
}

TEST(ParseDurationFlagTest, UnitsOrBareSeconds) {
  EXPECT_EQ(*ParseDurationFlag("duration", "30s"), absl::Seconds(30));
  EXPECT_EQ(*ParseDurationFlag("duration", "2m"), absl::Minutes(2));
  EXPECT_EQ(*ParseDurationFlag("duration", "1m30s"), absl::Seconds(90));
  EXPECT_EQ(*ParseDurationFlag("duration", "500ms"), absl::Milliseconds(500));
  EXPECT_EQ(*ParseDurationFlag("duration", "2.5"), absl::Milliseconds(2500));
  for (const char* bad : {"", "soon", "30 s", "2x", "nan"}) {
    auto parsed = ParseDurationFlag("warmup", bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find("--warmup must be a duration such as 30s, 2m"), std::string::npos);
  }
}

// ---- samples and connection options

TEST(SamplesTest, GoodAndDefectiveImagesOfTheRequestedSize) {
  const auto samples = GenerateSamples(128);
  ASSERT_GE(samples.size(), 4u);
  int defects = 0;
  for (const auto& s : samples) {
    EXPECT_EQ(s.rgb.size(), cv::Size(128, 128)) << s.name;
    EXPECT_EQ(s.rgb.type(), CV_8UC3);
    if (s.name.rfind("defect_", 0) == 0) ++defects;
  }
  EXPECT_GE(defects, 2);
  // Deterministic: the same call draws the same pixels.
  const auto again = GenerateSamples(128);
  EXPECT_EQ(cv::norm(samples[2].rgb, again[2].rgb, cv::NORM_INF), 0);
  const std::string dir = TempDir("samples");
  ASSERT_TRUE(WriteSamples(dir, samples).ok());
  for (const auto& s : samples) EXPECT_TRUE(std::filesystem::exists(dir + "/" + s.name + ".png")) << s.name;
}

absl::StatusOr<ConnectionOptions> Connection(const std::vector<std::string>& words) {
  auto args = Arguments::Parse(words, ConnectionFlags(), {});
  if (!args.ok()) return args.status();
  return ConnectionFromArguments(*args);
}

TEST(ConnectionOptionsTest, ReadsFlagsAndTokenFile) {
  const std::string dir = TempDir("connection");
  std::ofstream(dir + "/token") << "  s3cret\n";
  auto c = Connection({"--target", "dns:///svc:50051", "--token-file", dir + "/token", "--deadline-ms", "250"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->target, "dns:///svc:50051");
  EXPECT_EQ(c->token, "s3cret");
  EXPECT_EQ(c->deadline_ms, 250);
  EXPECT_EQ(Connection({})->target, "127.0.0.1:50051");
}

TEST(ConnectionOptionsTest, InconsistentSecurityFlagsAreRefused) {
  const std::string dir = TempDir("connection_bad");
  std::ofstream(dir + "/empty");
  const std::vector<std::vector<std::string>> bad = {
      {"--client-cert", "c.pem"},                                          // key missing
      {"--client-cert", "c.pem", "--client-key", "k.pem"},                 // no CA
      {"--server-name", "x"},                                              // not TLS
      {"--token", "a", "--token-file", dir + "/empty"},                    // both
      {"--token-file", dir + "/empty"},                                    // empty token
      {"--token-file", dir + "/missing"},                                  // unreadable
      {"--deadline-ms", "0"},
      {"--target", ""}};
  for (const auto& words : bad) {
    auto c = Connection(words);
    EXPECT_FALSE(c.ok()) << words[0] << " " << words[1];
  }
}

TEST(ConnectionTest, MissingCaFileIsAnErrorNotACrash) {
  ConnectionOptions options;
  options.ca_cert = "/nonexistent/ca.pem";
  auto channel = MakeChannel(options);
  ASSERT_FALSE(channel.ok());
  EXPECT_EQ(channel.status().code(), absl::StatusCode::kNotFound);
}

TEST(ConnectionTest, ADeadTargetFailsFastWithItsName) {
  ConnectionOptions options;
  options.target = "127.0.0.1:1";
  options.connect_timeout_ms = 3000;
  auto channel = MakeChannel(options);
  ASSERT_TRUE(channel.ok());
  const auto start = std::chrono::steady_clock::now();
  const absl::Status status = WaitConnected(**channel, options);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(status.message().find("127.0.0.1:1"), std::string::npos);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(3500));
}

TEST(RunLoadTest, RefusesBadOptionsBeforeConnecting) {
  anoclip::v1::DetectRequest request;
  ConnectionOptions connection;
  connection.target = "127.0.0.1:1";
  LoadOptions options;
  EXPECT_EQ(RunLoad(connection, options, {}).status().code(), absl::StatusCode::kInvalidArgument);
  options.concurrency = 0;
  EXPECT_EQ(RunLoad(connection, options, {request}).status().code(), absl::StatusCode::kInvalidArgument);
  options = LoadOptions();
  options.duration = absl::ZeroDuration();
  EXPECT_EQ(RunLoad(connection, options, {request}).status().code(), absl::StatusCode::kInvalidArgument);
  options = LoadOptions();
  options.rps = -1;
  EXPECT_EQ(RunLoad(connection, options, {request}).status().code(), absl::StatusCode::kInvalidArgument);
  options = LoadOptions();
  EXPECT_EQ(RunLoad(connection, options, {request}).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace anoclip::client
