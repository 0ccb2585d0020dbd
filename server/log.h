// The server's log: one line per event on stderr, as plain text or as JSON lines
// (--log-format json) for log collectors. Every answered call gets an access line with its
// method, request id (the client's x-request-id, or one made here), status code and duration.
// Thread-safe; lines never interleave.
#pragma once

#include <cstdio>
#include <string>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace anoclip::server {

enum class LogFormat { kText, kJson };

// Before any thread logs. `sink` defaults to stderr; tests pass a file.
void ConfigureLog(LogFormat format, std::FILE* sink = stderr);

// Sends what libtorch warns (TORCH_WARN) and what gRPC logs (gpr_log) through LogLine, with the
// fields library ("libtorch", "grpc") and source (file:line), so that a JSON log holds them too.
// Once, before other threads start.
void RouteLibraryLogs();

// One line: text "anoclip-server: MESSAGE key=value ..." or
// {"time":"2026-01-02T03:04:05.678Z","level":"info","msg":MESSAGE,"key":value,...}.
void LogLine(absl::string_view level, absl::string_view message, const nlohmann::ordered_json& fields = {});

// The access line of one answered call (or one message of an Inspect stream).
void LogCall(absl::string_view method, absl::string_view request_id, const absl::Status& status, double seconds,
             nlohmann::ordered_json fields = {});

// The call's request id: the client's x-request-id metadata when it is 1..128 printable ASCII
// characters, else a new random one. Also set as the call's x-request-id trailing metadata, so
// the client can quote it. Call once per call, before it finishes.
std::string TakeRequestId(grpc::CallbackServerContext& context);

}  // namespace anoclip::server
