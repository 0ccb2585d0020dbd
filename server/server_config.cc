#include "server/server_config.h"

#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/arguments.h"
#include "common/files.h"
#include "common/status_macros.h"

namespace anoclip::server {
namespace {

const std::vector<std::string>& StringFlags() {
  static const auto* flags = new std::vector<std::string>{
      "listen", "metrics-listen", "model", "vocab", "device", "dtype", "cache-dir", "warm", "calibration-dir",
      "tls-cert", "tls-key", "tls-client-ca", "auth-token-file", "ready-file"};
  return *flags;
}

const std::vector<std::string>& IntFlags() {
  static const auto* flags = new std::vector<std::string>{
      "threads", "workers", "max-batch", "max-queue-delay-ms", "queue-capacity", "text-bank-capacity",
      "max-message-bytes", "max-image-pixels", "drain-timeout-s"};
  return *flags;
}

absl::Status ApplyString(ServerConfig& c, const std::string& name, const std::string& value) {
  static const std::map<std::string, std::string ServerConfig::*> fields = {
      {"listen", &ServerConfig::listen}, {"metrics-listen", &ServerConfig::metrics_listen},
      {"model", &ServerConfig::model_dir}, {"vocab", &ServerConfig::vocab}, {"device", &ServerConfig::device},
      {"dtype", &ServerConfig::dtype}, {"cache-dir", &ServerConfig::cache_dir},
      {"calibration-dir", &ServerConfig::calibration_dir}, {"tls-cert", &ServerConfig::tls_cert},
      {"tls-key", &ServerConfig::tls_key}, {"tls-client-ca", &ServerConfig::tls_client_ca},
      {"auth-token-file", &ServerConfig::auth_token_file}, {"ready-file", &ServerConfig::ready_file}};
  if (name == "warm") {
    c.warm.clear();
    for (absl::string_view entry : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
      std::vector<std::string> parts = absl::StrSplit(entry, ':');
      if (parts.size() > 2 || parts[0].empty()) {
        return absl::InvalidArgumentError(absl::StrCat("--warm entries are CLASS or CLASS:KIND; got ", entry));
      }
      c.warm.emplace_back(parts[0], parts.size() == 2 ? parts[1] : "");
    }
    return absl::OkStatus();
  }
  c.*(fields.at(name)) = value;
  return absl::OkStatus();
}

absl::Status ApplyInt(ServerConfig& c, const std::string& name, int64_t value) {
  if (name == "max-image-pixels") {
    c.max_image_pixels = value;
    return absl::OkStatus();
  }
  static const std::map<std::string, int ServerConfig::*> fields = {
      {"threads", &ServerConfig::threads}, {"workers", &ServerConfig::workers},
      {"max-batch", &ServerConfig::max_batch}, {"max-queue-delay-ms", &ServerConfig::max_queue_delay_ms},
      {"queue-capacity", &ServerConfig::queue_capacity}, {"text-bank-capacity", &ServerConfig::text_bank_capacity},
      {"max-message-bytes", &ServerConfig::max_message_bytes}, {"drain-timeout-s", &ServerConfig::drain_timeout_s}};
  c.*(fields.at(name)) = static_cast<int>(value);
  return absl::OkStatus();
}

absl::Status ApplyConfigFile(ServerConfig& config, const std::string& path) {
  auto text = ReadFileToString(path);
  if (!text.ok()) return absl::NotFoundError(absl::StrCat("cannot read config file ", path));
  const auto json = nlohmann::json::parse(*text, nullptr, false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  for (const auto& [key, value] : json.items()) {
    const std::string name = absl::StrReplaceAll(key, {{"_", "-"}});
    if (std::find(StringFlags().begin(), StringFlags().end(), name) != StringFlags().end()) {
      if (name == "warm" && value.is_array()) {
        std::vector<std::string> entries;
        for (const auto& entry : value) {
          if (!entry.is_string()) return absl::InvalidArgumentError(absl::StrCat(path, ": warm entries are strings"));
          entries.push_back(entry.get<std::string>());
        }
        ANOCLIP_RETURN_IF_ERROR(ApplyString(config, name, absl::StrJoin(entries, ",")));
      } else if (value.is_string()) {
        ANOCLIP_RETURN_IF_ERROR(ApplyString(config, name, value.get<std::string>()));
      } else {
        return absl::InvalidArgumentError(absl::StrCat(path, ": ", key, " must be a string"));
      }
    } else if (std::find(IntFlags().begin(), IntFlags().end(), name) != IntFlags().end()) {
      if (!value.is_number_integer()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", key, " must be an integer"));
      ANOCLIP_RETURN_IF_ERROR(ApplyInt(config, name, value.get<int64_t>()));
    } else {
      return absl::InvalidArgumentError(absl::StrCat(path, ": unknown setting ", key));
    }
  }
  return absl::OkStatus();
}

absl::Status Validate(const ServerConfig& c) {
  if (c.model_dir.empty()) return absl::InvalidArgumentError("--model is required");
  auto positive = [](const char* name, int64_t value) -> absl::Status {
    if (value > 0) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be positive; was ", value));
  };
  ANOCLIP_RETURN_IF_ERROR(positive("workers", c.workers));
  ANOCLIP_RETURN_IF_ERROR(positive("max-batch", c.max_batch));
  ANOCLIP_RETURN_IF_ERROR(positive("queue-capacity", c.queue_capacity));
  ANOCLIP_RETURN_IF_ERROR(positive("text-bank-capacity", c.text_bank_capacity));
  ANOCLIP_RETURN_IF_ERROR(positive("max-message-bytes", c.max_message_bytes));
  ANOCLIP_RETURN_IF_ERROR(positive("max-image-pixels", c.max_image_pixels));
  ANOCLIP_RETURN_IF_ERROR(positive("drain-timeout-s", c.drain_timeout_s));
  if (c.max_queue_delay_ms < 0) return absl::InvalidArgumentError("--max-queue-delay-ms must be >= 0");
  if (c.threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (!c.tls_client_ca.empty() && c.tls_cert.empty()) {
    return absl::InvalidArgumentError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key");
  }
  return absl::OkStatus();
}

}  // namespace

std::string ServerUsage() {
  return "usage: anoclip-server --model DIR [--config FILE.json] [--listen HOST:PORT]\n"
         "  [--metrics-listen HOST:PORT] [--vocab FILE] [--device cpu|cuda:N] [--dtype D] [--threads N]\n"
         "  [--workers N] [--max-batch N] [--max-queue-delay-ms N] [--queue-capacity N]\n"
         "  [--text-bank-capacity N] [--cache-dir DIR] [--warm CLASS[:KIND],...] [--calibration-dir DIR]\n"
         "  [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]] [--auth-token-file FILE]\n"
         "  [--max-message-bytes N] [--max-image-pixels N] [--drain-timeout-s N] [--ready-file PATH]\n";
}

absl::StatusOr<ServerConfig> ParseServerConfig(const std::vector<std::string>& words) {
  std::set<std::string> value_flags(StringFlags().begin(), StringFlags().end());
  value_flags.insert(IntFlags().begin(), IntFlags().end());
  value_flags.insert("config");
  ANOCLIP_ASSIGN_OR_RETURN(auto args, Arguments::Parse(words, value_flags, {}));
  if (!args.positional().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("unexpected argument ", args.positional().front()));
  }
  ServerConfig config;
  if (args.Has("config")) ANOCLIP_RETURN_IF_ERROR(ApplyConfigFile(config, args.String("config")));
  for (const auto& name : StringFlags()) {
    if (args.Has(name)) ANOCLIP_RETURN_IF_ERROR(ApplyString(config, name, args.String(name)));
  }
  for (const auto& name : IntFlags()) {
    if (args.Has(name)) {
      ANOCLIP_ASSIGN_OR_RETURN(int64_t value, args.Int(name, 0, -1, int64_t{1} << 40));
      ANOCLIP_RETURN_IF_ERROR(ApplyInt(config, name, value));
    }
  }
  ANOCLIP_RETURN_IF_ERROR(Validate(config));
  return config;
}

}  // namespace anoclip::server
