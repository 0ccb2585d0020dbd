#include "client/connection.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "common/request_id.h"
#include "common/status_macros.h"

namespace anoclip::client {
std::set<std::string> ConnectionFlags() {
  return {"target", "ca-cert", "client-cert", "client-key", "server-name", "token", "token-file", "deadline-ms",
          "connect-timeout-ms", "max-attempts", "request-id"};
}
std::set<std::string> ConnectionBoolFlags() { return {"wait-for-ready"}; }

const char kConnectionUsage[] =
    "  connection: [--target HOST:PORT | ipv4:A:P1,A:P2 | dns:///NAME:PORT] (default 127.0.0.1:50051)\n"
    "              [--ca-cert PEM [--client-cert PEM --client-key PEM] [--server-name NAME]]\n"
    "              [--token T | --token-file FILE] [--deadline-ms N] [--connect-timeout-ms N]\n"
    "              [--max-attempts N] (1-5, default 1: retry UNAVAILABLE calls on another replica)\n"
    "              [--request-id ID] (x-request-id of every call; default a new random id per call)\n"
    "              [--wait-for-ready] (while nothing accepts a connection, calls wait for one within\n"
    "              their deadline instead of failing: with --max-attempts, a restart is ridden out)\n";

absl::StatusOr<ConnectionOptions> ConnectionFromArguments(const Arguments& args) {
  ConnectionOptions options;
  options.target = args.String("target", options.target);
  options.ca_cert = args.String("ca-cert");
  options.client_cert = args.String("client-cert");
  options.client_key = args.String("client-key");
  options.server_name = args.String("server-name");
  options.token = args.String("token");
  if (args.Has("token") && args.Has("token-file")) {
    return absl::InvalidArgumentError("give --token or --token-file, not both");
  }
  if (args.Has("token-file")) {
    ANOCLIP_ASSIGN_OR_RETURN(auto token, ReadFileToString(args.String("token-file")));
    options.token = std::string(absl::StripAsciiWhitespace(token));
    if (options.token.empty()) return absl::InvalidArgumentError(absl::StrCat(args.String("token-file"), " is empty"));
  }
  ANOCLIP_ASSIGN_OR_RETURN(int64_t deadline, args.Int("deadline-ms", 30000, 1, 3600000));
  ANOCLIP_ASSIGN_OR_RETURN(int64_t connect, args.Int("connect-timeout-ms", 5000, 1, 600000));
  options.deadline_ms = static_cast<int>(deadline);
  options.connect_timeout_ms = static_cast<int>(connect);
  // gRPC caps a retry policy at 5 attempts.
  ANOCLIP_ASSIGN_OR_RETURN(int64_t attempts, args.Int("max-attempts", 1, 1, 5));
  options.max_attempts = static_cast<int>(attempts);
  options.request_id = args.String("request-id");
  if (args.Has("request-id") && !IsUsableRequestId(options.request_id)) {
    return absl::InvalidArgumentError("--request-id takes 1 to 128 printable characters without spaces");
  }
  options.wait_for_ready = args.Flag("wait-for-ready");
  if (options.client_cert.empty() != options.client_key.empty()) {
    return absl::InvalidArgumentError("--client-cert and --client-key go together");
  }
  if (!options.client_cert.empty() && options.ca_cert.empty()) {
    return absl::InvalidArgumentError("mutual TLS needs --ca-cert too");
  }
  if (!options.server_name.empty() && options.ca_cert.empty()) {
    return absl::InvalidArgumentError("--server-name is for TLS; give --ca-cert too");
  }
  if (options.target.empty()) return absl::InvalidArgumentError("--target is empty");
  return options;
}

std::string ServiceConfigJson(int max_attempts) {
  nlohmann::json config = {{"loadBalancingConfig", {{{"round_robin", nlohmann::json::object()}}}}};
  if (max_attempts > 1) {
    // Every method is safe to repeat: Detect has no side effect beyond the text-bank cache. A
    // call is retried only while no answer has begun, so a replica killed mid-call costs a retry.
    config["methodConfig"] = {{{"name", {{{"service", "anoclip.v1.AnomalyDetectionService"}}}},
                               {"retryPolicy",
                                {{"maxAttempts", max_attempts},
                                 {"initialBackoff", "0.05s"},
                                 {"maxBackoff", "1s"},
                                 {"backoffMultiplier", 2},
                                 {"retryableStatusCodes", {"UNAVAILABLE"}}}}}};
  }
  return config.dump();
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ConnectionOptions& options, int index) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!options.ca_cert.empty()) {
    grpc::SslCredentialsOptions ssl;
    ANOCLIP_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadFileToString(options.ca_cert));
    if (!options.client_cert.empty()) {
      ANOCLIP_ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadFileToString(options.client_cert));
      ANOCLIP_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadFileToString(options.client_key));
    }
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(ServiceConfigJson(options.max_attempts));
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetInt("anoclip.channel_index", index);  // distinct args: separate connections
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (!options.server_name.empty()) args.SetSslTargetNameOverride(options.server_name);
  return grpc::CreateCustomChannel(options.target, credentials, args);
}

absl::Status WaitConnected(grpc::Channel& channel, const ConnectionOptions& options) {
  const auto deadline = std::chrono::system_clock::now() + std::chrono::milliseconds(options.connect_timeout_ms);
  grpc_connectivity_state state = channel.GetState(/*try_to_connect=*/true);
  while (state != GRPC_CHANNEL_READY) {
    // A refused connection or a name that does not resolve: nothing to wait for. (With several
    // addresses the channel reports this only when every one of them failed.)
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE || state == GRPC_CHANNEL_SHUTDOWN) {
      return absl::UnavailableError(absl::StrCat("cannot connect to ", options.target,
                                                 " (nothing answers there, or the name does not resolve)"));
    }
    if (!channel.WaitForStateChange(state, deadline)) {
      return absl::UnavailableError(absl::StrCat("cannot reach ", options.target, " within ",
                                                 options.connect_timeout_ms, " ms"));
    }
    state = channel.GetState(/*try_to_connect=*/true);
  }
  return absl::OkStatus();
}

std::string PrepareContext(grpc::ClientContext& context, const ConnectionOptions& options) {
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(options.deadline_ms));
  if (!options.token.empty()) context.AddMetadata("authorization", "Bearer " + options.token);
  context.set_wait_for_ready(options.wait_for_ready);
  const std::string id = options.request_id.empty() ? NewRequestId() : options.request_id;
  context.AddMetadata("x-request-id", id);
  return id;
}

std::string ServerRequestId(const grpc::ClientContext& context) {
  const auto& trailers = context.GetServerTrailingMetadata();
  auto it = trailers.find("x-request-id");
  return it == trailers.end() ? "" : std::string(it->second.data(), it->second.size());
}

}  // namespace anoclip::client
