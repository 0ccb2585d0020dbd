// The log's two formats, and the request id a call carries.
#include "server/log.h"

#include <gtest/gtest.h>

#include <grpc/support/log.h>

#include <c10/util/Exception.h>

#include <cstdio>
#include <string>
#include <vector>

#include "common/request_id.h"

namespace anoclip::server {
namespace {

// Runs `body` with the log sent to a temporary file in `format`; returns what it wrote.
template <typename Body>
std::string Capture(LogFormat format, Body body) {
  std::FILE* file = std::tmpfile();
  ConfigureLog(format, file);
  body();
  ConfigureLog(LogFormat::kText, stderr);
  std::fseek(file, 0, SEEK_SET);
  std::string text;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file)) > 0) text.append(buffer, n);
  std::fclose(file);
  return text;
}

// Each line of `text` parsed as JSON.
std::vector<nlohmann::json> JsonLines(const std::string& text) {
  std::vector<nlohmann::json> lines;
  size_t start = 0;
  for (size_t end; (end = text.find('\n', start)) != std::string::npos; start = end + 1) {
    lines.push_back(nlohmann::json::parse(text.substr(start, end - start)));
  }
  return lines;
}

TEST(LogTest, JsonLinesCarryTheCallAndItsFields) {
  const std::string text = Capture(LogFormat::kJson, [] {
    LogCall("Detect", "line7-0001", absl::OkStatus(), 0.0412345, {{"class", "bottle"}, {"image_score", 0.5}});
    LogCall("Inspect", "abc", absl::InvalidArgumentError("views must be 1 or 22; was 5"), 0.001);
    LogCall("Detect", "def", absl::InternalError("detection failed"), 0.002);
  });
  const std::vector<nlohmann::json> lines = JsonLines(text);
  ASSERT_EQ(lines.size(), 3u) << text;
  EXPECT_EQ(lines[0]["msg"], "call");
  EXPECT_EQ(lines[0]["level"], "info");
  EXPECT_EQ(lines[0]["method"], "Detect");
  EXPECT_EQ(lines[0]["request_id"], "line7-0001");
  EXPECT_EQ(lines[0]["code"], "OK");
  EXPECT_DOUBLE_EQ(lines[0]["duration_ms"].get<double>(), 41.235);
  EXPECT_EQ(lines[0]["class"], "bottle");
  EXPECT_EQ(lines[0]["time"].get<std::string>().size(), std::string("2026-01-02T03:04:05.678Z").size());
  EXPECT_EQ(lines[0].count("error"), 0u);
  EXPECT_EQ(lines[1]["level"], "warning");
  EXPECT_EQ(lines[1]["code"], "INVALID_ARGUMENT");
  EXPECT_EQ(lines[1]["error"], "views must be 1 or 22; was 5");
  EXPECT_EQ(lines[2]["level"], "error");
  EXPECT_EQ(lines[2]["code"], "INTERNAL");
}

TEST(LogTest, TextLinesQuoteOnlyWhatNeedsIt) {
  const std::string text = Capture(LogFormat::kText, [] {
    LogLine("info", "serving", {{"grpc_port", 50051}, {"note", "two words"}});
    LogLine("error", "a worker task threw", {{"what", "boom"}});
  });
  EXPECT_EQ(text,
            "anoclip-server: serving grpc_port=50051 note=\"two words\"\n"
            "anoclip-server: error: a worker task threw what=boom\n");
}

TEST(LogTest, BytesThatAreNotUtf8DoNotBreakAJsonLine) {
  const std::string text = Capture(LogFormat::kJson, [] { LogLine("info", "x", {{"class", std::string("\xff\xfe")}}); });
  EXPECT_FALSE(nlohmann::json::parse(text, nullptr, false).is_discarded()) << text;
}

// libtorch's warnings and gRPC's log lines arrive as JSON lines of their own, named.
TEST(LogTest, LibraryLogsBecomeLogLines) {
  c10::WarningHandler* previous = c10::Warning::get_warning_handler();
  RouteLibraryLogs();
  gpr_set_log_verbosity(GPR_LOG_SEVERITY_ERROR);  // grpc_init's default, and this process has none
  const std::string text = Capture(LogFormat::kJson, [] {
    TORCH_WARN("a libtorch warning");
    gpr_log(GPR_ERROR, "a grpc error %d", 7);
  });
  c10::Warning::set_warning_handler(previous);  // gRPC's stays routed: its default is not public
  const std::vector<nlohmann::json> lines = JsonLines(text);
  ASSERT_EQ(lines.size(), 2u) << text;
  EXPECT_EQ(lines[0]["level"], "warning");
  EXPECT_EQ(lines[0]["msg"], "a libtorch warning");
  EXPECT_EQ(lines[0]["library"], "libtorch");
  EXPECT_NE(lines[0]["source"].get<std::string>().find("log_test.cc:"), std::string::npos);
  EXPECT_EQ(lines[1]["level"], "error");
  EXPECT_EQ(lines[1]["msg"], "a grpc error 7");
  EXPECT_EQ(lines[1]["library"], "grpc");
}

TEST(RequestIdTest, UsableIdsArePrintableAndBounded) {
  EXPECT_TRUE(IsUsableRequestId("line7-000123"));
  EXPECT_FALSE(IsUsableRequestId(""));
  EXPECT_FALSE(IsUsableRequestId("two words"));
  EXPECT_FALSE(IsUsableRequestId("tab\there"));
  EXPECT_FALSE(IsUsableRequestId(std::string(129, 'a')));
  EXPECT_TRUE(IsUsableRequestId(std::string(128, 'a')));
  const std::string made = NewRequestId();
  EXPECT_EQ(made.size(), 32u);
  EXPECT_TRUE(IsUsableRequestId(made));
  EXPECT_NE(made, NewRequestId());
}

}  // namespace
}  // namespace anoclip::server
