// anoclip-server's settings: defaults, an optional JSON config file, then command-line flags
// (flags win). Every setting is declared once, in the flag table of server_config.cc, which
// yields parsing with range checks, --help and the flag reference in server/README.md.
// Validated as a whole, so a bad setting stops start-up with one clear line.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace anoclip::server {

struct ServerConfig {
  std::string listen = "127.0.0.1:50051";
  std::string metrics_listen = "127.0.0.1:9090";  // empty: no metrics endpoint
  std::string model_dir;
  std::string vocab;
  std::string device = "cpu";
  std::string dtype = "float32";
  int threads = 0;
  std::string precision = "fp32";  // CPU: fp32, bf16 or int8 for the vision tower (DetectorOptions)
  std::string gemm = "auto";        // CPU float32 products: auto, blas or onednn (DetectorOptions)
  int workers = 4;
  int max_batch = 8;
  int max_queue_delay_ms = 0;
  int queue_capacity = 256;
  int max_in_flight = 512;
  int max_stream_unwritten = 128;
  int text_bank_capacity = 64;
  int max_prompts_per_state = 2048;
  int max_class_builds_per_minute = 10;
  std::vector<std::string> allowed_classes;
  std::string cache_dir;
  std::vector<std::pair<std::string, std::string>> warm;  // (class, kind) built before SERVING
  std::string calibration_dir;
  std::string tls_cert, tls_key, tls_client_ca;
  std::string auth_token_file;
  int max_message_bytes = 32 << 20;
  int64_t max_image_pixels = 50'000'000;
  int drain_timeout_s = 30;
  std::string ready_file;
  std::string log_format = "text";  // or "json": one JSON object per line
};

// argv[1..]: flags as --name value / --name=value, and --config FILE.json whose keys are the
// flag names with underscores.
absl::StatusOr<ServerConfig> ParseServerConfig(const std::vector<std::string>& args);
// --help: every flag with its default and meaning.
std::string ServerUsage();
// The flag reference as a Markdown table, as server/README.md carries it.
std::string ServerFlagsMarkdown();

}  // namespace anoclip::server
