// How the client reaches the service: target (host:port, ipv4:a:p1,a:p2 or dns:///name:port,
// load balanced round robin over the addresses), TLS / mutual TLS, bearer token, per-call
// deadline, retries of UNAVAILABLE calls (a replica that went away), optionally a wait for a
// connection on every call (a server restarting), and a bounded wait for the first connection so
// a dead target fails fast.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "common/arguments.h"

namespace anoclip::client {

struct ConnectionOptions {
  std::string target = "127.0.0.1:50051";
  std::string ca_cert;      // PEM file: use TLS, trusting this CA
  std::string client_cert;  // PEM files for mutual TLS
  std::string client_key;
  std::string server_name;  // TLS name override
  std::string token;        // sent as "authorization: Bearer <token>" on every call
  int deadline_ms = 30000;  // per call
  int connect_timeout_ms = 5000;
  int max_attempts = 1;     // per call; above 1, UNAVAILABLE answers are retried on another pick
  std::string request_id;   // x-request-id of every call; empty: a new random id per call
  // Calls (and retries) made while no address accepts a connection wait for one, within their
  // deadline, instead of failing at once: a run rides out a server restarting on its address.
  bool wait_for_ready = false;
};

// The flags every subcommand takes (with a value; without one), and their usage lines.
std::set<std::string> ConnectionFlags();
std::set<std::string> ConnectionBoolFlags();
extern const char kConnectionUsage[];
absl::StatusOr<ConnectionOptions> ConnectionFromArguments(const Arguments& args);

// The channel's service config: round_robin, and with max_attempts > 1 a retry policy for
// UNAVAILABLE on every method of anoclip.v1.AnomalyDetectionService.
std::string ServiceConfigJson(int max_attempts);

// `index` distinguishes channels so they do not share one connection.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ConnectionOptions& options, int index = 0);

// Waits for the channel to connect; UNAVAILABLE with the target named when it does not.
absl::Status WaitConnected(grpc::Channel& channel, const ConnectionOptions& options);

// Deadline, token and x-request-id on a call; returns the request id sent.
std::string PrepareContext(grpc::ClientContext& context, const ConnectionOptions& options);

// The x-request-id the server returned in its trailing metadata (empty if none); read it after
// the call has finished.
std::string ServerRequestId(const grpc::ClientContext& context);

}  // namespace anoclip::client
