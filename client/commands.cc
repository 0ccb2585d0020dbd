#include "client/commands.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <iostream>
#include <map>
#include <thread>

#include <grpcpp/generic/generic_stub.h>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "anoclip/v1/anoclip.grpc.pb.h"
#include "client/connection.h"
#include "client/latency_stats.h"
#include "client/requests.h"
#include "client/samples.h"
#include "common/files.h"
#include "common/status_macros.h"

namespace anoclip::client {
namespace {

using anoclip::v1::AnomalyDetectionService;
using Clock = std::chrono::steady_clock;

// Marks statuses that carry what the service answered (as opposed to bad flags).
constexpr char kFromServicePayload[] = "anoclip.client/from-service";

absl::Status FromGrpc(const grpc::Status& status, const std::string& target) {
  if (status.ok()) return absl::OkStatus();
  absl::Status converted(static_cast<absl::StatusCode>(status.error_code()),
                         absl::StrCat(StatusCodeName(status.error_code()), ": ", status.error_message(), " (",
                                      target, ")"));
  converted.SetPayload(kFromServicePayload, absl::Cord("1"));
  return converted;
}

// Parses flags (connection flags included), runs `body`, and turns its status into an exit
// code: 0 success, 1 failure, 2 usage error.
int RunCommand(const char* name, const std::vector<std::string>& words, std::set<std::string> value_flags,
               std::set<std::string> bool_flags, const char* usage, bool takes_positional,
               const std::function<absl::Status(const Arguments&, const ConnectionOptions&)>& body) {
  auto connection_flags = ConnectionFlags();
  value_flags.insert(connection_flags.begin(), connection_flags.end());
  const auto connection_bool_flags = ConnectionBoolFlags();
  bool_flags.insert(connection_bool_flags.begin(), connection_bool_flags.end());
  bool_flags.insert("help");
  auto args = Arguments::Parse(words, value_flags, bool_flags);
  if (args.ok() && !takes_positional && !args->positional().empty()) {
    args = absl::InvalidArgumentError(absl::StrCat("unexpected argument ", args->positional().front()));
  }
  if (!args.ok() || args->Flag("help")) {
    if (!args.ok()) std::cerr << "anoclip-client " << name << ": " << args.status().message() << "\n";
    std::cerr << "usage: anoclip-client " << name << " " << usage << "\n" << kConnectionUsage;
    return args.ok() ? 0 : 2;
  }
  auto connection = ConnectionFromArguments(*args);
  if (!connection.ok()) {
    std::cerr << "anoclip-client " << name << ": " << connection.status().message() << "\n";
    return 2;
  }
  const absl::Status status = body(*args, *connection);
  if (!status.ok()) {
    std::cerr << "anoclip-client " << name << ": " << status.message() << "\n";
    // Bad flags found before any call are usage errors; what the service answered is not.
    const bool usage_error =
        status.code() == absl::StatusCode::kInvalidArgument && !status.GetPayload(kFromServicePayload).has_value();
    return usage_error ? 2 : 1;
  }
  return 0;
}

absl::StatusOr<std::unique_ptr<AnomalyDetectionService::Stub>> Connect(const ConnectionOptions& options) {
  ANOCLIP_ASSIGN_OR_RETURN(auto channel, MakeChannel(options));
  ANOCLIP_RETURN_IF_ERROR(WaitConnected(*channel, options));
  return AnomalyDetectionService::NewStub(channel);
}

std::string HumanLine(const std::string& image, const anoclip::v1::DetectResponse& r) {
  std::string line = absl::StrFormat("%s: image_score %.4f  max_pixel_score %.4f", image, r.image_score(),
                                     r.max_pixel_score());
  if (r.has_calibrated_image_score()) absl::StrAppendFormat(&line, "  calibrated %.3f", r.calibrated_image_score());
  if (r.has_is_anomalous()) {
    absl::StrAppend(&line, "  ", r.is_anomalous() ? "ANOMALOUS" : "normal", "  regions ", r.regions_size());
    for (const auto& region : r.regions()) {
      absl::StrAppendFormat(&line, " [%d,%d %dx%d peak %.3f]", region.x(), region.y(), region.width(),
                            region.height(), region.peak());
    }
  }
  absl::StrAppendFormat(&line, "  (%.1f ms)", r.timings().total_seconds() * 1e3);
  return line;
}

// "3 anomalous"; without a threshold there are no verdicts to count, only scores.
std::string VerdictSummary(bool decides, size_t anomalous, std::vector<float> scores) {
  if (decides) return absl::StrCat(anomalous, " anomalous");
  std::string text = "no threshold was set, so no verdicts";
  if (scores.empty()) return text;
  std::sort(scores.begin(), scores.end());
  return absl::StrCat(text, absl::StrFormat(" (image_score min %.4f, median %.4f, max %.4f)", scores.front(),
                                            scores[scores.size() / 2], scores.back()));
}

// A CSV field, quoted when it has to be.
std::string CsvField(const std::string& text) {
  if (text.find_first_of(",\"\n") == std::string::npos) return text;
  std::string quoted = "\"";
  for (char c : text) {
    if (c == '"') quoted += '"';
    quoted += c;
  }
  return quoted + "\"";
}

// grpc.health.v1.HealthCheckRequest{service} in protobuf wire format: field 1, length-delimited.
std::string EncodeHealthRequest(const std::string& service) {
  if (service.empty()) return "";
  std::string bytes = "\x0a";
  for (size_t n = service.size(); ; n >>= 7) {
    if (n < 0x80) {
      bytes.push_back(static_cast<char>(n));
      break;
    }
    bytes.push_back(static_cast<char>((n & 0x7f) | 0x80));
  }
  return bytes + service;
}

// HealthCheckResponse.status (field 1, varint); 0 (UNKNOWN) when absent or unreadable.
int DecodeHealthStatus(const std::string& bytes) {
  return bytes.size() == 2 && bytes[0] == 0x08 ? static_cast<unsigned char>(bytes[1]) : 0;
}

}  // namespace

int RunHealth(const std::vector<std::string>& words) {
  return RunCommand(
      "health", words, {"service"}, {}, "[--service NAME]   (grpc.health.v1 Check; exit 0 only when SERVING)", false,
      [](const Arguments& args, const ConnectionOptions& c) {
        ANOCLIP_ASSIGN_OR_RETURN(auto channel, MakeChannel(c));
        ANOCLIP_RETURN_IF_ERROR(WaitConnected(*channel, c));
        grpc::GenericStub stub(channel);
        grpc::ClientContext context;
        PrepareContext(context, c);
        grpc::Slice slice(EncodeHealthRequest(args.String("service")));
        grpc::ByteBuffer request(&slice, 1), response;
        grpc::CompletionQueue queue;
        auto call = stub.PrepareUnaryCall(&context, "/grpc.health.v1.Health/Check", request, &queue);
        call->StartCall();
        grpc::Status status;
        call->Finish(&response, &status, reinterpret_cast<void*>(1));
        void* tag = nullptr;
        bool ok = false;
        queue.Next(&tag, &ok);  // the deadline bounds this wait
        queue.Shutdown();
        while (queue.Next(&tag, &ok)) {
        }
        ANOCLIP_RETURN_IF_ERROR(FromGrpc(status, c.target));
        std::vector<grpc::Slice> slices;
        std::string bytes;
        if (response.Dump(&slices).ok()) {
          for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
        }
        const int value = DecodeHealthStatus(bytes);
        const char* names[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
        std::cout << (value >= 0 && value <= 3 ? names[value] : "UNKNOWN") << "\n";
        return value == 1 ? absl::OkStatus() : absl::UnavailableError("the service is not serving");
      });
}

int RunInfo(const std::vector<std::string>& words) {
  return RunCommand("info", words, {}, {"json"}, "[--json]", false, [](const Arguments& args, const ConnectionOptions& c) {
    ANOCLIP_ASSIGN_OR_RETURN(auto stub, Connect(c));
    grpc::ClientContext context;
    PrepareContext(context, c);
    anoclip::v1::GetModelInfoResponse info;
    ANOCLIP_RETURN_IF_ERROR(FromGrpc(stub->GetModelInfo(&context, {}, &info), c.target));
    nlohmann::ordered_json json{{"model_id", info.model_id()},   {"architecture", info.architecture()},
                                {"image_size", info.image_size()}, {"embed_dim", info.embed_dim()},
                                {"device", info.device()},       {"dtype", info.dtype()},
                                {"max_batch", info.max_batch()}, {"version", info.version()}};
    if (args.Flag("json")) {
      std::cout << json.dump(2) << "\n";
    } else {
      for (const auto& [key, value] : json.items()) {
        std::cout << absl::StrFormat("%-13s", key) << (value.is_string() ? value.get<std::string>() : value.dump())
                  << "\n";
      }
    }
    return absl::OkStatus();
  });
}

int RunClasses(const std::vector<std::string>& words) {
  return RunCommand("classes", words, {}, {"json"}, "[--json]", false, [](const Arguments& args, const ConnectionOptions& c) {
    ANOCLIP_ASSIGN_OR_RETURN(auto stub, Connect(c));
    grpc::ClientContext context;
    PrepareContext(context, c);
    anoclip::v1::ListClassesResponse list;
    ANOCLIP_RETURN_IF_ERROR(FromGrpc(stub->ListClasses(&context, {}, &list), c.target));
    nlohmann::ordered_json json = nlohmann::ordered_json::array();
    for (const auto& entry : list.classes()) {
      json.push_back({{"name", entry.name()}, {"kind", KindName(entry.kind())}, {"key", entry.key()},
                      {"hits", entry.hits()}});
    }
    if (args.Flag("json")) {
      std::cout << json.dump(2) << "\n";
      return absl::OkStatus();
    }
    if (list.classes().empty()) std::cout << "(no classes prepared)\n";
    for (const auto& entry : list.classes()) {
      std::cout << absl::StrFormat("%-20s %-8s hits %d\n", entry.name(), KindName(entry.kind()), entry.hits());
    }
    return absl::OkStatus();
  });
}

int RunPrepare(const std::vector<std::string>& words) {
  return RunCommand("prepare", words, {"class", "kind"}, {}, "--class NAME [--kind object|texture]", false,
                    [](const Arguments& args, const ConnectionOptions& c) {
                      anoclip::v1::PrepareClassRequest request;
                      ANOCLIP_ASSIGN_OR_RETURN(*request.mutable_class_spec(), ClassSpecFromArguments(args));
                      ANOCLIP_ASSIGN_OR_RETURN(auto stub, Connect(c));
                      grpc::ClientContext context;
                      PrepareContext(context, c);
                      anoclip::v1::PrepareClassResponse response;
                      ANOCLIP_RETURN_IF_ERROR(FromGrpc(stub->PrepareClass(&context, request, &response), c.target));
                      std::cout << absl::StrFormat("prepared %s: %s, %d prompts per state, %.3f s\n",
                                                   request.class_spec().name(),
                                                   response.cached() ? "cached" : "built",
                                                   response.prompts_per_state(), response.build_seconds());
                      return absl::OkStatus();
                    });
}

int RunEvict(const std::vector<std::string>& words) {
  return RunCommand("evict", words, {"class", "kind"}, {}, "--class NAME [--kind object|texture]", false,
                    [](const Arguments& args, const ConnectionOptions& c) {
                      anoclip::v1::EvictClassRequest request;
                      ANOCLIP_ASSIGN_OR_RETURN(*request.mutable_class_spec(), ClassSpecFromArguments(args));
                      ANOCLIP_ASSIGN_OR_RETURN(auto stub, Connect(c));
                      grpc::ClientContext context;
                      PrepareContext(context, c);
                      anoclip::v1::EvictClassResponse response;
                      ANOCLIP_RETURN_IF_ERROR(FromGrpc(stub->EvictClass(&context, request, &response), c.target));
                      std::cout << (response.evicted() ? "evicted " : "not cached: ") << request.class_spec().name()
                                << "\n";
                      return absl::OkStatus();
                    });
}

int RunDetect(const std::vector<std::string>& words) {
  auto value_flags = DetectValueFlags();
  value_flags.insert("out");
  auto bool_flags = DetectBoolFlags();
  bool_flags.insert("json");
  return RunCommand(
      "detect", words, value_flags, bool_flags,
      "IMAGE... --class NAME [--kind object|texture] [--tta [--seed N]] [--views 1|22]\n"
      "         [--threshold X | --use-calibration] [--min-region-area N] [--out DIR] [--json]\n"
      "  --json prints one object per image and line, with the keys of `anoclip detect --json`;\n"
      "  --out writes NAME_heatmap.png, NAME_overlay.png and (with a decision) NAME_mask.png,\n"
      "  NAME being the image's path below the folder that holds them all (a.png, x/a.png).",
      true, [](const Arguments& args, const ConnectionOptions& c) {
        if (args.positional().empty()) return absl::InvalidArgumentError("give at least one image");
        const bool out = args.Has("out");
        ANOCLIP_ASSIGN_OR_RETURN(auto request, RequestTemplate(args, out));
        ANOCLIP_ASSIGN_OR_RETURN(auto stub, Connect(c));
        const std::vector<std::string> names = OutputNames(args.positional());
        absl::Status first_error;
        for (size_t i = 0; i < args.positional().size(); ++i) {
          const std::string& path = args.positional()[i];
          absl::Status status = [&]() -> absl::Status {
            ANOCLIP_ASSIGN_OR_RETURN(auto bytes, ReadImageBytes(path));
            request.set_image_bytes(bytes);
            request.set_request_id(path);
            grpc::ClientContext context;
            const std::string sent_id = PrepareContext(context, c);
            anoclip::v1::DetectResponse response;
            const grpc::Status called = stub->Detect(&context, request, &response);
            // The server's copy of the id, which its log lines carry; ours if it sent none.
            std::string request_id = ServerRequestId(context);
            if (request_id.empty()) request_id = sent_id;
            ANOCLIP_RETURN_IF_ERROR(FromGrpc(called, absl::StrCat(c.target, ", request_id ", request_id)));
            if (args.Flag("json")) {
              auto json = ResponseToJson(response);
              json["image"] = path;
              json["request_id"] = request_id;
              std::cout << json.dump() << std::endl;
            } else {
              std::cout << HumanLine(path, response) << "  request_id " << request_id << std::endl;
            }
            if (out) ANOCLIP_RETURN_IF_ERROR(WriteResponseImages(response, bytes, args.String("out"), names[i]));
            return absl::OkStatus();
          }();
          if (!status.ok()) {
            // The other images still go; the exit code reports the first failure.
            std::cerr << "anoclip-client detect: " << path << ": " << status.message() << "\n";
            if (first_error.ok()) first_error = absl::UnknownError("some images failed");
            if (status.code() == absl::StatusCode::kUnavailable) return status;  // the server went away
          }
        }
        return first_error;
      });
}

int RunInspect(const std::vector<std::string>& words) {
  auto value_flags = DetectValueFlags();
  value_flags.insert({"out", "max-in-flight", "csv", "json"});
  return RunCommand(
      "inspect", words, value_flags, DetectBoolFlags(),
      "DIR --class NAME [--kind object|texture] [--max-in-flight N] [--out DIR] [--csv FILE] [--json FILE]\n"
      "         [--tta] [--views 1|22] [--threshold X | --use-calibration] [--min-region-area N]\n"
      "  Sends every image of DIR over one Inspect stream with at most --max-in-flight (default 8)\n"
      "  unanswered, prints each result as it arrives and a summary; --out also writes the images\n"
      "  (NAME_heatmap.png ..., NAME the image's file name) and summary.csv + summary.json there.\n"
      "  Without --threshold or --use-calibration there are scores but no verdicts.",
      true, [](const Arguments& args, const ConnectionOptions& c) {
        if (args.positional().size() != 1) return absl::InvalidArgumentError("give one folder of images");
        // Every flag is checked before the folder is read.
        ANOCLIP_ASSIGN_OR_RETURN(int64_t max_in_flight, args.Int("max-in-flight", 8, 1, 1024));
        const bool out = args.Has("out");
        const std::string out_dir = args.String("out");
        ANOCLIP_ASSIGN_OR_RETURN(auto request, RequestTemplate(args, out));
        ANOCLIP_ASSIGN_OR_RETURN(const auto paths, ImagesIn(args.positional()[0]));
        if (paths.empty()) return absl::NotFoundError(absl::StrCat("no images in ", args.positional()[0]));
        ANOCLIP_ASSIGN_OR_RETURN(auto stub, Connect(c));
        const bool decides = request.options().decision_case() != anoclip::v1::DetectOptions::DECISION_NOT_SET;
        std::map<std::string, std::string> name_of;  // request id (the path) -> output name
        const std::vector<std::string> names = OutputNames(paths);
        for (size_t i = 0; i < paths.size(); ++i) name_of[paths[i]] = names[i];
        grpc::ClientContext context;
        const std::string stream_id = PrepareContext(context, c);
        // One deadline per image: the stream as a whole gets the sum.
        context.set_deadline(std::chrono::system_clock::now() +
                             std::chrono::milliseconds(static_cast<int64_t>(c.deadline_ms) *
                                                       static_cast<int64_t>(1 + paths.size())));
        auto stream = stub->Inspect(&context);
        const auto start = Clock::now();

        absl::Mutex mutex;
        int64_t in_flight = 0;
        bool reading_done = false;
        std::map<std::string, std::string> bytes_by_id;  // for --out images
        std::vector<std::string> unreadable;             // answered locally
        std::thread writer([&] {
          for (const auto& path : paths) {
            auto bytes = ReadImageBytes(path);
            {
              absl::MutexLock lock(&mutex);
              if (!bytes.ok()) {
                unreadable.push_back(path);
                continue;
              }
              auto has_room = [&] { return in_flight < max_in_flight || reading_done; };
              mutex.Await(absl::Condition(&has_room));
              if (reading_done) break;  // the stream is gone
              ++in_flight;
              if (out) bytes_by_id[path] = *bytes;
            }
            anoclip::v1::InspectRequest next;
            *next.mutable_detect() = request;
            next.mutable_detect()->set_request_id(path);
            next.mutable_detect()->set_image_bytes(*std::move(bytes));
            if (!stream->Write(next)) break;
          }
          stream->WritesDone();
        });

        nlohmann::ordered_json results = nlohmann::ordered_json::array();
        std::string csv = "image,image_score,max_pixel_score,calibrated_image_score,is_anomalous,regions,total_ms,error\n";
        const bool bar = isatty(STDERR_FILENO) != 0;
        size_t answered = 0, failed = 0, anomalous = 0;
        std::vector<float> scores;
        absl::Status first_error;
        anoclip::v1::InspectResponse answer;
        while (stream->Read(&answer)) {
          const anoclip::v1::DetectResponse& response = answer.detection();
          const google::rpc::Status& error = answer.error();
          {
            absl::MutexLock lock(&mutex);
            --in_flight;
          }
          ++answered;
          const std::string id = answer.request_id();
          const bool ok = !answer.has_error();
          nlohmann::ordered_json json;
          if (!ok) {
            ++failed;
            std::cout << id << ": " << StatusCodeName(error.code()) << ": " << error.message() << "\n";
            json = {{"error", StatusCodeName(error.code())}, {"message", error.message()}};
          } else {
            if (response.has_is_anomalous() && response.is_anomalous()) ++anomalous;
            scores.push_back(response.image_score());
            std::cout << HumanLine(id, response) << "\n";
            json = ResponseToJson(response);
            if (out) {
              std::string bytes;
              {
                absl::MutexLock lock(&mutex);
                auto it = bytes_by_id.find(id);
                if (it != bytes_by_id.end()) {
                  bytes = std::move(it->second);
                  bytes_by_id.erase(it);
                }
              }
              auto written = WriteResponseImages(response, bytes, out_dir, name_of[id]);
              if (!written.ok() && first_error.ok()) first_error = written;
            }
          }
          json["image"] = id;
          results.push_back(json);
          csv += absl::StrCat(
              CsvField(id), ",", ok ? absl::StrFormat("%.6f", response.image_score()) : "", ",",
              ok ? absl::StrFormat("%.6f", response.max_pixel_score()) : "", ",",
              response.has_calibrated_image_score() ? absl::StrFormat("%.6f", response.calibrated_image_score()) : "",
              ",", response.has_is_anomalous() ? (response.is_anomalous() ? "true" : "false") : "", ",",
              ok ? absl::StrCat(response.regions_size()) : "", ",",
              ok ? absl::StrFormat("%.2f", response.timings().total_seconds() * 1e3) : "", ",",
              CsvField(ok ? "" : StatusCodeName(error.code()) + ": " + error.message()), "\n");
          if (bar) {
            const int width = 30, filled = static_cast<int>(width * answered / paths.size());
            std::cerr << "\r[" << std::string(filled, '#') << std::string(width - filled, '.') << "] " << answered
                      << "/" << paths.size() << std::flush;
          }
          std::cout << std::flush;
        }
        {
          absl::MutexLock lock(&mutex);
          reading_done = true;
        }
        writer.join();
        if (bar) std::cerr << "\n";
        const grpc::Status finish = stream->Finish();
        const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
        for (const auto& path : unreadable) {
          ++failed;
          std::cout << path << ": cannot read\n";
          results.push_back({{"error", "NOT_FOUND"}, {"message", "cannot read"}, {"image", path}});
          csv += absl::StrCat(CsvField(path), ",,,,,,,cannot read\n");
        }
        if (out && !args.Has("csv")) ANOCLIP_RETURN_IF_ERROR(WriteStringToFile(out_dir + "/summary.csv", csv));
        if (out && !args.Has("json")) ANOCLIP_RETURN_IF_ERROR(WriteStringToFile(out_dir + "/summary.json", results.dump(2) + "\n"));
        if (args.Has("csv")) ANOCLIP_RETURN_IF_ERROR(WriteStringToFile(args.String("csv"), csv));
        if (args.Has("json")) ANOCLIP_RETURN_IF_ERROR(WriteStringToFile(args.String("json"), results.dump(2) + "\n"));
        std::cout << absl::StrFormat("inspected %d of %d images in %.2f s (%.1f images/s): ", answered, paths.size(),
                                     seconds, seconds > 0 ? answered / seconds : 0.0)
                  << VerdictSummary(decides, anomalous, scores) << absl::StrFormat(", %d failed", failed);
        std::string request_id = ServerRequestId(context);
        if (request_id.empty()) request_id = stream_id;
        std::cout << "; stream request_id " << request_id << "\n";
        ANOCLIP_RETURN_IF_ERROR(FromGrpc(finish, absl::StrCat(c.target, ", request_id ", request_id)));
        if (answered + unreadable.size() != paths.size()) {
          return absl::DataLossError(absl::StrCat("only ", answered, " of ", paths.size(), " images were answered"));
        }
        if (failed > 0) return absl::UnknownError(absl::StrCat(failed, " images failed"));
        return first_error;
      });
}

int RunMakeSamples(const std::vector<std::string>& words) {
  auto args = Arguments::Parse(words, {"out", "size"}, {"help"});
  if (!args.ok() || args->Flag("help") || !args->Has("out") || !args->positional().empty()) {
    if (!args.ok()) std::cerr << "anoclip-client make-samples: " << args.status().message() << "\n";
    std::cerr << "usage: anoclip-client make-samples --out DIR [--size N]\n"
                 "  Writes a few generated part images, good ones and ones with drawn defects, as PNG.\n";
    return args.ok() && args->Flag("help") ? 0 : 2;
  }
  auto size = args->Int("size", 320, 64, 4096);
  if (!size.ok()) {
    std::cerr << "anoclip-client make-samples: " << size.status().message() << "\n";
    return 2;
  }
  const auto samples = GenerateSamples(static_cast<int>(*size));
  auto status = WriteSamples(args->String("out"), samples);
  if (!status.ok()) {
    std::cerr << "anoclip-client make-samples: " << status.message() << "\n";
    return 1;
  }
  for (const auto& sample : samples) std::cout << args->String("out") << "/" << sample.name << ".png\n";
  return 0;
}

}  // namespace anoclip::client
