// anoclip-server's settings: defaults, an optional JSON config file, then command-line flags
// (flags win). Validated as a whole, so a bad setting stops start-up with one clear line.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace anoclip::server {

struct ServerConfig {
  std::string listen = "0.0.0.0:50051";
  std::string metrics_listen = "0.0.0.0:9090";  // empty: no metrics endpoint
  std::string model_dir;
  std::string vocab;
  std::string device = "cpu";
  std::string dtype = "float32";
  int threads = 0;                  // libtorch intra-op threads; 0 = all cores
  int workers = 4;                  // decode / post-process pool
  int max_batch = 8;
  int max_queue_delay_ms = 5;
  int queue_capacity = 256;
  int text_bank_capacity = 64;
  std::string cache_dir;            // text-bank persistence; empty = memory only
  std::vector<std::pair<std::string, std::string>> warm;  // (class, kind) built before SERVING
  std::string calibration_dir;      // <class>.json files for use_calibration
  std::string tls_cert, tls_key, tls_client_ca;
  std::string auth_token_file;
  int max_message_bytes = 32 << 20;
  int64_t max_image_pixels = 50'000'000;
  int drain_timeout_s = 30;
  std::string ready_file;           // JSON {"grpc_port":N,"metrics_port":M} once SERVING
};

// argv[1..]: flags as --name value / --name=value, and --config FILE.json whose keys are the
// flag names with underscores.
absl::StatusOr<ServerConfig> ParseServerConfig(const std::vector<std::string>& args);
std::string ServerUsage();

}  // namespace anoclip::server
