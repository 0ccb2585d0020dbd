#include "server/server_config.h"

#include <functional>
#include <map>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/arguments.h"
#include "common/files.h"
#include "common/status_macros.h"

namespace anoclip::server {
namespace {

// One setting: its flag, what it takes, its default (read from a default ServerConfig) and how
// it is stored.
struct Flag {
  std::string name;
  std::string value;  // the metavariable in --help
  std::string help;
  std::function<std::string(const ServerConfig&)> show;
  std::function<absl::Status(ServerConfig&, const std::string&)> set;
};

Flag StringFlag(std::string name, std::string value, std::string help, std::string ServerConfig::*field) {
  return {std::move(name), std::move(value), std::move(help),
          [field](const ServerConfig& c) { return c.*field; },
          [field](ServerConfig& c, const std::string& v) {
            c.*field = v;
            return absl::OkStatus();
          }};
}

template <typename Int>
Flag IntFlag(std::string name, std::string help, Int ServerConfig::*field, int64_t min, int64_t max) {
  return {name, "N", absl::StrCat(help, " (", min, "..", max, ")"),
          [field](const ServerConfig& c) { return absl::StrCat(c.*field); },
          [field, name, min, max](ServerConfig& c, const std::string& v) -> absl::Status {
            int64_t parsed = 0;
            if (!absl::SimpleAtoi(v, &parsed) || parsed < min || parsed > max) {
              return absl::InvalidArgumentError(
                  absl::StrCat("--", name, " takes an integer in ", min, "..", max, "; got \"", v, "\""));
            }
            c.*field = static_cast<Int>(parsed);
            return absl::OkStatus();
          }};
}

absl::Status SetWarm(ServerConfig& c, const std::string& value) {
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

std::string ShowWarm(const ServerConfig& c) {
  std::vector<std::string> entries;
  for (const auto& [name, kind] : c.warm) entries.push_back(kind.empty() ? name : absl::StrCat(name, ":", kind));
  return absl::StrJoin(entries, ",");
}

constexpr int64_t kIntMax = 2147483647;

const std::vector<Flag>& Flags() {
  static const auto* flags = new std::vector<Flag>{
      StringFlag("model", "DIR", "OpenCLIP model directory (open_clip_config.json and weights); required",
                 &ServerConfig::model_dir),
      StringFlag("listen", "HOST:PORT",
                 "gRPC address; loopback by default, 0.0.0.0:PORT or [::]:PORT to serve other hosts; port 0 picks one",
                 &ServerConfig::listen),
      StringFlag("metrics-listen", "HOST:PORT", "Prometheus /metrics address; empty turns it off",
                 &ServerConfig::metrics_listen),
      StringFlag("vocab", "FILE", "BPE vocabulary; default MODEL/bpe_simple_vocab_16e6.txt.gz, then $ANOCLIP_VOCAB",
                 &ServerConfig::vocab),
      StringFlag("device", "DEV", "cpu or cuda:N", &ServerConfig::device),
      StringFlag("dtype", "D", "float32; float16 or bfloat16 on CUDA", &ServerConfig::dtype),
      IntFlag("threads", "libtorch intra-op threads; 0 = $OMP_NUM_THREADS if set, else all cores", &ServerConfig::threads, 0, 1024),
      StringFlag("precision", "P",
                 "vision tower on the CPU: fp32, bf16 (AVX512-BF16/AMX) or int8 (VNNI/AMX); text stays fp32",
                 &ServerConfig::precision),
      StringFlag("gemm", "LIB",
                 "CPU float32 products: auto (the faster of blas and onednn, timed at load and remembered under --cache-dir), blas or onednn",
                 &ServerConfig::gemm),
      IntFlag("workers", "decode and post-processing threads", &ServerConfig::workers, 1, 256),
      IntFlag("max-batch", "images per vision forward", &ServerConfig::max_batch, 1, 256),
      IntFlag("max-queue-delay-ms",
              "longest a request waits for a batch to fill; 0 = never wait (batches form while the engine is busy)",
              &ServerConfig::max_queue_delay_ms, 0, 60000),
      IntFlag("queue-capacity", "requests waiting for the engine", &ServerConfig::queue_capacity, 1, 1 << 20),
      IntFlag("max-in-flight", "image requests held at once (decoding, queued, running); more are RESOURCE_EXHAUSTED",
              &ServerConfig::max_in_flight, 1, 1 << 20),
      IntFlag("max-stream-unwritten", "per Inspect stream: requests read and not yet written; reading pauses there",
              &ServerConfig::max_stream_unwritten, 1, 1 << 16),
      IntFlag("text-bank-capacity", "classes kept in memory", &ServerConfig::text_bank_capacity, 1, 1 << 20),
      IntFlag("max-prompts-per-state", "prompts one class spec may expand to (domains x 22 x states)",
              &ServerConfig::max_prompts_per_state, 1, 1 << 20),
      IntFlag("max-class-builds-per-minute", "text builds of classes in neither memory nor cache; 0 = no limit",
              &ServerConfig::max_class_builds_per_minute, 0, 1 << 20),
      Flag{"allowed-classes", "A,B,...", "only these class names are served; empty = any",
           [](const ServerConfig& c) { return absl::StrJoin(c.allowed_classes, ","); },
           [](ServerConfig& c, const std::string& v) {
             c.allowed_classes = absl::StrSplit(v, ',', absl::SkipWhitespace());
             return absl::OkStatus();
           }},
      StringFlag("cache-dir", "DIR", "text features persisted here (checksummed), with the model id and the GEMM choice remembered; empty = memory only",
                 &ServerConfig::cache_dir),
      Flag{"warm", "CLASS[:KIND],...", "classes built before the server reports SERVING", ShowWarm, SetWarm},
      StringFlag("calibration-dir", "DIR", "CLASS.json calibrations for use_calibration", &ServerConfig::calibration_dir),
      StringFlag("tls-cert", "PEM", "server certificate chain (with --tls-key)", &ServerConfig::tls_cert),
      StringFlag("tls-key", "PEM", "server private key", &ServerConfig::tls_key),
      StringFlag("tls-client-ca", "PEM", "require client certificates signed by this CA (mutual TLS)",
                 &ServerConfig::tls_client_ca),
      StringFlag("auth-token-file", "FILE", "require \"authorization: Bearer TOKEN\" with this file's token",
                 &ServerConfig::auth_token_file),
      IntFlag("max-message-bytes", "largest request message", &ServerConfig::max_message_bytes, 1024, kIntMax),
      IntFlag("max-image-pixels", "largest decoded image, width x height", &ServerConfig::max_image_pixels, 1,
              int64_t{1} << 32),
      IntFlag("drain-timeout-s", "on SIGTERM, how long accepted calls may take to finish",
              &ServerConfig::drain_timeout_s, 1, 3600),
      StringFlag("ready-file", "PATH", "written with {\"grpc_port\":N,\"metrics_port\":M} once SERVING",
                 &ServerConfig::ready_file),
      StringFlag("log-format", "FORMAT", "stderr log lines, one per event and per answered call: text or json",
                 &ServerConfig::log_format),
  };
  return *flags;
}

const Flag* FindFlag(const std::string& name) {
  for (const auto& flag : Flags()) {
    if (flag.name == name) return &flag;
  }
  return nullptr;
}

absl::Status ApplyConfigFile(ServerConfig& config, const std::string& path) {
  auto text = ReadFileToString(path);
  if (!text.ok()) return absl::NotFoundError(absl::StrCat("cannot read config file ", path));
  const auto json = nlohmann::json::parse(*text, nullptr, false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  for (const auto& [key, value] : json.items()) {
    const Flag* flag = FindFlag(absl::StrReplaceAll(key, {{"_", "-"}}));
    if (flag == nullptr) return absl::InvalidArgumentError(absl::StrCat(path, ": unknown setting ", key));
    std::string text_value;
    if (value.is_string()) {
      text_value = value.get<std::string>();
    } else if (value.is_number_integer()) {
      text_value = value.dump();
    } else if (value.is_array()) {
      std::vector<std::string> entries;
      for (const auto& entry : value) {
        if (!entry.is_string()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", key, " entries are strings"));
        entries.push_back(entry.get<std::string>());
      }
      text_value = absl::StrJoin(entries, ",");
    } else {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", key, " must be a string, integer or list"));
    }
    if (auto status = flag->set(config, text_value); !status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", status.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status Validate(const ServerConfig& c) {
  if (c.model_dir.empty()) return absl::InvalidArgumentError("--model is required");
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (c.gemm != "auto" && c.gemm != "blas" && c.gemm != "onednn") {
    return absl::InvalidArgumentError(absl::StrCat("--gemm is auto, blas or onednn; got \"", c.gemm, "\""));
  }
  if (c.precision != "fp32" && c.precision != "bf16" && c.precision != "int8") {
    return absl::InvalidArgumentError(absl::StrCat("--precision is fp32, bf16 or int8; got \"", c.precision, "\""));
  }
  if (c.log_format != "text" && c.log_format != "json") {
    return absl::InvalidArgumentError(absl::StrCat("--log-format is text or json; got \"", c.log_format, "\""));
  }
  if (!c.tls_client_ca.empty() && c.tls_cert.empty()) {
    return absl::InvalidArgumentError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key");
  }
  return absl::OkStatus();
}

}  // namespace

std::string ServerUsage() {
  const ServerConfig defaults;
  std::string usage =
      "usage: anoclip-server --model DIR [--config FILE.json] [flags]\n"
      "Serves anoclip.v1.AnomalyDetectionService, grpc.health.v1.Health and reflection; /metrics on its own port.\n"
      "--config FILE.json takes the same settings with underscores; flags override it.\n\n";
  for (const auto& flag : Flags()) {
    const std::string shown = flag.show(defaults);
    absl::StrAppend(&usage, "  --", flag.name, " ", flag.value, "\n      ", flag.help,
                    shown.empty() ? "" : absl::StrCat("; default ", shown), "\n");
  }
  absl::StrAppend(&usage, "  --help\n      this text\n  --version\n      the version\n");
  return usage;
}

std::string ServerFlagsMarkdown() {
  const ServerConfig defaults;
  std::string table = "| flag | default | meaning |\n| --- | --- | --- |\n";
  for (const auto& flag : Flags()) {
    const std::string shown = flag.show(defaults);
    absl::StrAppend(&table, "| `--", flag.name, " ", flag.value, "` | ",
                    shown.empty() ? "" : absl::StrCat("`", shown, "`"), " | ",
                    absl::StrReplaceAll(flag.help, {{"|", "\\|"}}), " |\n");
  }
  return table;
}

absl::StatusOr<ServerConfig> ParseServerConfig(const std::vector<std::string>& words) {
  std::set<std::string> value_flags = {"config"};
  for (const auto& flag : Flags()) value_flags.insert(flag.name);
  ANOCLIP_ASSIGN_OR_RETURN(auto args, Arguments::Parse(words, value_flags, {}));
  if (!args.positional().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("unexpected argument ", args.positional().front()));
  }
  ServerConfig config;
  if (args.Has("config")) ANOCLIP_RETURN_IF_ERROR(ApplyConfigFile(config, args.String("config")));
  for (const auto& flag : Flags()) {
    if (args.Has(flag.name)) ANOCLIP_RETURN_IF_ERROR(flag.set(config, args.String(flag.name)));
  }
  ANOCLIP_RETURN_IF_ERROR(Validate(config));
  return config;
}

}  // namespace anoclip::server
