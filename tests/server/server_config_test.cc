// The flag table: ranges checked (no silent truncation), loopback defaults, the config file, and
// the README's flag reference generated from the same table.
#include "server/server_config.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "test_util.h"

namespace anoclip::server {
namespace {

absl::StatusOr<ServerConfig> Parse(std::vector<std::string> args) {
  args.insert(args.begin(), {"--model", "m"});
  return ParseServerConfig(args);
}

TEST(ServerConfigTest, DefaultsListenOnLoopbackAndNeverWaitForBatches) {
  auto config = Parse({});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen, "127.0.0.1:50051");
  EXPECT_EQ(config->metrics_listen, "127.0.0.1:9090");
  EXPECT_EQ(config->max_queue_delay_ms, 0);
}

TEST(ServerConfigTest, IntegersOutOfRangeAreRefusedNotTruncated) {
  for (const auto& [flag, value] : std::vector<std::pair<std::string, std::string>>{
           {"--max-message-bytes", "4294967296"}, {"--max-batch", "0"}, {"--workers", "-1"},
           {"--max-batch", "8x"}, {"--drain-timeout-s", "99999999999999999999"}, {"--threads", "1.5"}}) {
    auto config = Parse({flag, value});
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument) << flag << " " << value;
    EXPECT_NE(config.status().message().find(flag), std::string::npos) << config.status();
  }
  auto config = Parse({"--max-message-bytes=2147483647", "--max-image-pixels", "4294967296"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->max_message_bytes, 2147483647);
  EXPECT_EQ(config->max_image_pixels, int64_t{4294967296});
}

TEST(ServerConfigTest, LogFormatIsTextOrJson) {
  EXPECT_EQ(Parse({})->log_format, "text");
  EXPECT_EQ(Parse({"--log-format", "json"})->log_format, "json");
  auto config = Parse({"--log-format", "xml"});
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(config.status().message().find("--log-format"), std::string::npos) << config.status();
}

TEST(ServerConfigTest, PrecisionIsFp32Bf16OrInt8) {
  EXPECT_EQ(Parse({})->precision, "fp32");
  EXPECT_EQ(Parse({"--precision", "int8"})->precision, "int8");
  EXPECT_EQ(Parse({"--precision", "bf16"})->precision, "bf16");
  auto config = Parse({"--precision", "fp16"});
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(config.status().message().find("--precision"), std::string::npos) << config.status();
}

TEST(ServerConfigTest, GemmIsAutoBlasOrOneDnn) {
  EXPECT_EQ(Parse({})->gemm, "auto");
  EXPECT_EQ(Parse({"--gemm", "blas"})->gemm, "blas");
  EXPECT_EQ(Parse({"--gemm", "onednn"})->gemm, "onednn");
  auto config = Parse({"--gemm", "mkl"});
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(config.status().message().find("--gemm"), std::string::npos) << config.status();
}

TEST(ServerConfigTest, ConfigFileUsesTheSameTableAndFlagsWin) {
  const std::string path = ::testing::TempDir() + "/server_config.json";
  std::ofstream(path) << R"({"max_batch": 4, "warm": ["bottle", "carpet:texture"], "allowed_classes": "bottle,carpet",
                            "listen": "0.0.0.0:1234"})";
  auto config = Parse({"--config", path, "--max-batch", "2"});
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->max_batch, 2);
  EXPECT_EQ(config->listen, "0.0.0.0:1234");
  ASSERT_EQ(config->warm.size(), 2u);
  EXPECT_EQ(config->warm[1].second, "texture");
  EXPECT_EQ(config->allowed_classes, (std::vector<std::string>{"bottle", "carpet"}));
  std::ofstream(path) << R"({"max_batch": 4294967297})";
  EXPECT_EQ(Parse({"--config", path}).status().code(), absl::StatusCode::kInvalidArgument);
  std::ofstream(path) << R"({"no_such_setting": 1})";
  EXPECT_EQ(Parse({"--config", path}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ServerConfigTest, UsageNamesEveryFlagWithItsDefault) {
  const std::string usage = ServerUsage();
  for (const char* expected : {"--listen HOST:PORT", "default 127.0.0.1:50051", "--max-in-flight N", "default 512",
                               "--max-prompts-per-state N", "--allowed-classes", "--version"}) {
    EXPECT_NE(usage.find(expected), std::string::npos) << expected;
  }
}

TEST(ServerConfigTest, TheReadmeFlagReferenceIsTheFlagTable) {
  const std::string readme_path = std::string(ANOCLIP_SOURCE_DIR) + "/server/README.md";
  std::ifstream in(readme_path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string readme = buffer.str();
  const std::string begin = "<!-- flags:begin (generated from server/server_config.cc) -->\n";
  const std::string end = "<!-- flags:end -->";
  const size_t a = readme.find(begin), b = readme.find(end);
  ASSERT_NE(a, std::string::npos) << readme_path << " lacks the flag reference markers";
  ASSERT_NE(b, std::string::npos);
  EXPECT_EQ(readme.substr(a + begin.size(), b - a - begin.size()), ServerFlagsMarkdown())
      << "server/README.md's flag reference differs from the flag table; paste ServerFlagsMarkdown() "
         "(anoclip-server --help-markdown) between the markers";
}

}  // namespace
}  // namespace anoclip::server
