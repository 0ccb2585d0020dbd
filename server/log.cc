#include "server/log.h"

#include <grpc/support/log.h>

#include <c10/util/Exception.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/request_id.h"
#include "server/request_conversion.h"

namespace anoclip::server {
namespace {

struct LogState {
  absl::Mutex mutex;
  LogFormat format = LogFormat::kText;
  std::FILE* sink = stderr;
};

LogState& State() {
  static auto* state = new LogState;
  return *state;
}

std::string TextValue(const nlohmann::ordered_json& value) {
  if (value.is_string()) {
    const auto& text = value.get_ref<const std::string&>();
    // Quoted only when it would not read back as one word.
    if (!text.empty() && text.find_first_of(" \t\n\"=") == std::string::npos) return text;
  }
  return value.dump();
}

class LibtorchWarnings : public c10::WarningHandler {
 public:
  void process(const c10::SourceLocation& source, const std::string& message, bool /*verbatim*/) override {
    LogLine("warning", message, {{"library", "libtorch"}, {"source", absl::StrCat(source.file, ":", source.line)}});
  }
};

void LogGrpc(gpr_log_func_args* args) {
  const char* level = args->severity == GPR_LOG_SEVERITY_ERROR  ? "error"
                      : args->severity == GPR_LOG_SEVERITY_INFO ? "info"
                                                                : "debug";
  LogLine(level, args->message != nullptr ? args->message : "",
          {{"library", "grpc"}, {"source", absl::StrCat(args->file != nullptr ? args->file : "", ":", args->line)}});
}

}  // namespace

void RouteLibraryLogs() {
  static auto* warnings = new LibtorchWarnings;  // kept to the process's end, as libtorch needs
  c10::Warning::set_warning_handler(warnings);
  gpr_set_log_function(LogGrpc);
}

void ConfigureLog(LogFormat format, std::FILE* sink) {
  LogState& state = State();
  absl::MutexLock lock(&state.mutex);
  state.format = format;
  state.sink = sink;
}

void LogLine(absl::string_view level, absl::string_view message, const nlohmann::ordered_json& fields) {
  LogState& state = State();
  absl::MutexLock lock(&state.mutex);
  std::string line;
  if (state.format == LogFormat::kJson) {
    nlohmann::ordered_json json = {
        {"time", absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone())},
        {"level", std::string(level)},
        {"msg", std::string(message)}};
    if (fields.is_object()) {
      for (const auto& [key, value] : fields.items()) json[key] = value;
    }
    // Replacement characters instead of an exception for bytes that are not UTF-8.
    line = json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    line = absl::StrCat("anoclip-server: ", level == "info" ? "" : absl::StrCat(level, ": "), message);
    if (fields.is_object()) {
      for (const auto& [key, value] : fields.items()) absl::StrAppend(&line, " ", key, "=", TextValue(value));
    }
  }
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), state.sink);
  std::fflush(state.sink);
}

void LogCall(absl::string_view method, absl::string_view request_id, const absl::Status& status, double seconds,
             nlohmann::ordered_json fields) {
  nlohmann::ordered_json line = {{"method", std::string(method)},
                                 {"request_id", std::string(request_id)},
                                 {"code", StatusCodeName(status.code())},
                                 {"duration_ms", std::round(seconds * 1e6) / 1e3}};
  if (fields.is_object()) {
    for (const auto& [key, value] : fields.items()) line[key] = value;
  }
  if (!status.ok()) line["error"] = std::string(status.message());
  const bool server_fault = status.code() == absl::StatusCode::kInternal ||
                            status.code() == absl::StatusCode::kUnknown ||
                            status.code() == absl::StatusCode::kDataLoss;
  LogLine(status.ok() ? "info" : server_fault ? "error" : "warning", "call", line);
}

std::string TakeRequestId(grpc::CallbackServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("x-request-id");
  std::string id;
  if (it != metadata.end()) id.assign(it->second.data(), it->second.size());
  if (!IsUsableRequestId(id)) id = NewRequestId();
  context.AddTrailingMetadata("x-request-id", id);
  return id;
}

}  // namespace anoclip::server
