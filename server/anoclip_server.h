// The whole anoclip-server: model, text bank, service, health, reflection, metrics endpoint.
// Start() returns once the gRPC port is bound and the server is SERVING, logging "serving"; tests
// run it in-process, the binary wraps it with signal handling.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/server_config.h"

namespace anoclip::server {

inline constexpr char kServerVersion[] = "0.2.0";
// Set on Start()'s error when the model could not be loaded (missing, corrupt, wrong shapes).
inline constexpr char kModelErrorPayload[] = "anoclip.dev/model-error";

class AnoclipServer {
 public:
  // Exit codes of the binary: 2 bad flags, 3 the model cannot be loaded, 1 any other start-up error.
  static absl::StatusOr<std::unique_ptr<AnoclipServer>> Start(const ServerConfig& config);
  ~AnoclipServer();

  int grpc_port() const;
  int metrics_port() const;  // 0 when metrics are off
  const char* gemm_library() const;  // "blas" or "onednn": what --gemm chose

  // Health NOT_SERVING, new calls refused, accepted ones finished (cancelled after `timeout`).
  void Drain(absl::Duration timeout);

 private:
  struct State;
  explicit AnoclipServer(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace anoclip::server
