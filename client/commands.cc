#include "client/commands.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include <grpcpp/generic/generic_stub.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "anoclip/v1/anoclip.grpc.pb.h"
#include "client/connection.h"
#include "client/requests.h"
#include "client/samples.h"
#include "common/status_macros.h"

namespace anoclip::client {
namespace {

using anoclip::v1::AnomalyDetection;

// Parses flags (connection flags included), runs `body`, and turns its status into an exit code.
int RunCommand(const char* name, const std::vector<std::string>& words, std::set<std::string> value_flags,
               std::set<std::string> bool_flags, const char* usage,
               const std::function<absl::Status(const Arguments&, const ConnectionOptions&)>& body) {
  auto connection_flags = ConnectionFlags();
  value_flags.insert(connection_flags.begin(), connection_flags.end());
  bool_flags.insert("help");
  auto args = Arguments::Parse(words, value_flags, bool_flags);
  if (!args.ok() || args->Flag("help")) {
    if (!args.ok()) std::cerr << "anoclip-client " << name << ": " << args.status().message() << "\n";
    std::cerr << "usage: anoclip-client " << name << " " << usage
              << "\n  connection: [--target HOST:PORT|ipv4:A:P1,A:P2|dns:///NAME:PORT] [--ca-cert PEM]"
                 " [--client-cert PEM --client-key PEM] [--server-name NAME] [--token T|--token-file F]"
                 " [--deadline-ms N] [--connect-timeout-ms N]\n";
    return args.ok() ? 0 : 2;
  }
  auto connection = ConnectionFromArguments(*args);
  absl::Status status = connection.ok() ? body(*args, *connection) : connection.status();
  if (!status.ok()) {
    std::cerr << "anoclip-client " << name << ": " << status.message() << "\n";
    return 1;
  }
  return 0;
}

absl::Status FromGrpc(const grpc::Status& status, const std::string& target) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(status.error_message(), " (", target, ")"));
}

absl::StatusOr<std::unique_ptr<AnomalyDetection::Stub>> Connect(const ConnectionOptions& options) {
  ANOCLIP_ASSIGN_OR_RETURN(auto channel, MakeChannel(options));
  ANOCLIP_RETURN_IF_ERROR(WaitConnected(*channel, options));
  return AnomalyDetection::NewStub(channel);
}

anoclip::v1::ClassSpec ClassSpecFromArguments(const Arguments& args) {
  anoclip::v1::ClassSpec spec;
  spec.set_name(args.String("class"));
  const std::string kind = args.String("kind");
  spec.set_kind(kind == "texture" ? anoclip::v1::KIND_TEXTURE
                                  : kind == "object" ? anoclip::v1::KIND_OBJECT : anoclip::v1::KIND_UNSPECIFIED);
  return spec;
}

std::vector<std::string> ImagesIn(const std::string& dir) {
  std::vector<std::string> paths;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    std::string ext = entry.path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
    if (entry.is_regular_file() && (ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp" ||
                                    ext == ".tif" || ext == ".tiff")) {
      paths.push_back(entry.path().string());
    }
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

std::string Stem(const std::string& path) { return std::filesystem::path(path).stem().string(); }

void PrintHuman(const std::string& image, const anoclip::v1::DetectResponse& r) {
  std::cout << image << ": image_score " << r.image_score() << "  max_pixel_score " << r.max_pixel_score();
  if (r.has_calibrated_image_score()) std::cout << "  calibrated " << r.calibrated_image_score();
  if (r.has_is_anomalous()) {
    std::cout << "  " << (r.is_anomalous() ? "ANOMALOUS" : "normal") << "  regions " << r.regions_size();
    for (const auto& region : r.regions()) {
      std::cout << " [" << region.x() << "," << region.y() << " " << region.width() << "x" << region.height()
                << " peak " << region.peak() << "]";
    }
  }
  std::cout << "  (" << static_cast<int>(r.timings().total_seconds() * 1e3) << " ms)\n";
}

}  // namespace

int RunHealth(const std::vector<std::string>& words) {
  return RunCommand("health", words, {"service"}, {}, "[--service NAME]", [](const Arguments& args, const ConnectionOptions& c) {
    ANOCLIP_ASSIGN_OR_RETURN(auto channel, MakeChannel(c));
    ANOCLIP_RETURN_IF_ERROR(WaitConnected(*channel, c));
    // grpc.health.v1.Health/Check with a hand-encoded HealthCheckRequest{service}.
    const std::string service = args.String("service");
    std::string request;
    if (!service.empty()) request = absl::StrCat("\x0a", std::string(1, static_cast<char>(service.size())), service);
    grpc::GenericStub stub(channel);
    grpc::ClientContext context;
    PrepareContext(context, c);
    grpc::Slice slice(request);
    grpc::ByteBuffer request_buffer(&slice, 1), response_buffer;
    grpc::CompletionQueue queue;
    auto call = stub.PrepareUnaryCall(&context, "/grpc.health.v1.Health/Check", request_buffer, &queue);
    call->StartCall();
    grpc::Status status;
    call->Finish(&response_buffer, &status, reinterpret_cast<void*>(1));
    void* tag;
    bool ok;
    queue.Next(&tag, &ok);
    queue.Shutdown();
    while (queue.Next(&tag, &ok)) {
    }
    ANOCLIP_RETURN_IF_ERROR(FromGrpc(status, c.target));
    std::vector<grpc::Slice> slices;
    response_buffer.Dump(&slices);
    std::string bytes;
    for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    const int value = bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : 0;
    const char* names[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
    std::cout << (value >= 0 && value <= 3 ? names[value] : "UNKNOWN") << "\n";
    return value == 1 ? absl::OkStatus() : absl::UnavailableError("the service is not serving");
  });
}

int RunInfo(const std::vector<std::string>& words) {
  return RunCommand("info", words, {}, {}, "", [](const Arguments&, const ConnectionOptions& c) {
    ANOCLIP_ASSIGN_OR_RETURN(auto stub, Connect(c));
    grpc::ClientContext context;
    PrepareContext(context, c);
    anoclip::v1::GetModelInfoResponse info;
    ANOCLIP_RETURN_IF_ERROR(FromGrpc(stub->GetModelInfo(&context, {}, &info), c.target));
    std::cout << "model_id " << info.model_id() << "\narchitecture " << info.architecture() << "\nimage_size "
              << info.image_size() << "\nembed_dim " << info.embed_dim() << "\ndevice " << info.device()
              << "\nmax_batch " << info.max_batch() << "\nversion " << info.version() << "\n";
    return absl::OkStatus();
  });
}

int RunClasses(const std::vector<std::string>& words) {
  return RunCommand("classes", words, {}, {}, "", [](const Arguments&, const ConnectionOptions& c) {
    ANOCLIP_ASSIGN_OR_RETURN(auto stub, Connect(c));
    grpc::ClientContext context;
    PrepareContext(context, c);
    anoclip::v1::ListClassesResponse list;
    ANOCLIP_RETURN_IF_ERROR(FromGrpc(stub->ListClasses(&context, {}, &list), c.target));
    for (const auto& entry : list.classes()) {
      std::cout << entry.name() << "\t" << (entry.kind() == anoclip::v1::KIND_TEXTURE ? "texture" : "object")
                << "\thits " << entry.hits() << "\n";
    }
    return absl::OkStatus();
  });
}

int RunPrepare(const std::vector<std::string>& words) {
  return RunCommand("prepare", words, {"class", "kind"}, {}, "--class NAME [--kind object|texture]",
                    [](const Arguments& args, const ConnectionOptions& c) {
                      ANOCLIP_RETURN_IF_ERROR(args.Required("class").status());
                      ANOCLIP_ASSIGN_OR_RETURN(auto stub, Connect(c));
                      grpc::ClientContext context;
                      PrepareContext(context, c);
                      anoclip::v1::PrepareClassRequest request;
                      *request.mutable_class_spec() = ClassSpecFromArguments(args);
                      anoclip::v1::PrepareClassResponse response;
                      ANOCLIP_RETURN_IF_ERROR(FromGrpc(stub->PrepareClass(&context, request, &response), c.target));
                      std::cout << "prepared " << args.String("class") << ": "
                                << (response.cached() ? "cached" : "built") << ", " << response.prompts_per_state()
                                << " prompts per state, " << response.build_seconds() << " s\n";
                      return absl::OkStatus();
                    });
}

int RunEvict(const std::vector<std::string>& words) {
  return RunCommand("evict", words, {"class", "kind"}, {}, "--class NAME [--kind object|texture]",
                    [](const Arguments& args, const ConnectionOptions& c) {
                      ANOCLIP_RETURN_IF_ERROR(args.Required("class").status());
                      ANOCLIP_ASSIGN_OR_RETURN(auto stub, Connect(c));
                      grpc::ClientContext context;
                      PrepareContext(context, c);
                      anoclip::v1::EvictClassRequest request;
                      *request.mutable_class_spec() = ClassSpecFromArguments(args);
                      anoclip::v1::EvictClassResponse response;
                      ANOCLIP_RETURN_IF_ERROR(FromGrpc(stub->EvictClass(&context, request, &response), c.target));
                      std::cout << (response.evicted() ? "evicted " : "not cached: ") << args.String("class") << "\n";
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
      "IMAGE... --class NAME [--kind K] [--tta] [--views 1|22] [--threshold X|--use-calibration] [--out DIR] [--json]",
      [](const Arguments& args, const ConnectionOptions& c) {
        if (args.positional().empty()) return absl::InvalidArgumentError("give at least one image");
        const bool out = args.Has("out");
        ANOCLIP_ASSIGN_OR_RETURN(auto request, RequestTemplate(args, out));
        ANOCLIP_ASSIGN_OR_RETURN(auto stub, Connect(c));
        for (const auto& path : args.positional()) {
          ANOCLIP_ASSIGN_OR_RETURN(auto bytes, ReadImageBytes(path));
          request.set_image_bytes(bytes);
          request.set_request_id(path);
          grpc::ClientContext context;
          PrepareContext(context, c);
          anoclip::v1::DetectResponse response;
          ANOCLIP_RETURN_IF_ERROR(FromGrpc(stub->Detect(&context, request, &response), c.target));
          if (args.Flag("json")) {
            auto json = ResponseToJson(response);
            json["image"] = path;
            std::cout << json.dump() << std::endl;  // one object per line
          } else {
            PrintHuman(path, response);
          }
          if (out) ANOCLIP_RETURN_IF_ERROR(WriteResponseImages(response, bytes, args.String("out"), Stem(path)));
        }
        return absl::OkStatus();
      });
}

int RunInspect(const std::vector<std::string>& words) {
  auto value_flags = DetectValueFlags();
  value_flags.insert({"out", "max-in-flight", "csv", "json"});
  return RunCommand(
      "inspect", words, value_flags, DetectBoolFlags(),
      "DIR --class NAME [--kind K] [--max-in-flight N] [--out DIR] [--csv FILE] [--json FILE] [...detect options]",
      [](const Arguments& args, const ConnectionOptions& c) {
        if (args.positional().size() != 1) return absl::InvalidArgumentError("give one folder of images");
        const auto paths = ImagesIn(args.positional()[0]);
        if (paths.empty()) return absl::NotFoundError(absl::StrCat("no images in ", args.positional()[0]));
        ANOCLIP_ASSIGN_OR_RETURN(int64_t max_in_flight, args.Int("max-in-flight", 16, 1, 1024));
        const bool out = args.Has("out");
        ANOCLIP_ASSIGN_OR_RETURN(auto request, RequestTemplate(args, out));
        ANOCLIP_ASSIGN_OR_RETURN(auto stub, Connect(c));
        grpc::ClientContext context;
        // The stream's deadline covers the whole folder.
        context.set_deadline(std::chrono::system_clock::now() +
                             std::chrono::milliseconds(static_cast<int64_t>(c.deadline_ms) * (1 + paths.size() / 8)));
        if (!c.token.empty()) context.AddMetadata("authorization", "Bearer " + c.token);
        auto stream = stub->Inspect(&context);

        absl::Mutex mutex;
        int64_t in_flight = 0;
        std::map<std::string, std::string> bytes_by_id;
        std::thread writer([&] {
          for (size_t i = 0; i < paths.size(); ++i) {
            auto bytes = ReadImageBytes(paths[i]);
            {
              absl::MutexLock lock(&mutex);
              auto has_room = [&] { return in_flight < max_in_flight; };
              mutex.Await(absl::Condition(&has_room));
              ++in_flight;
              if (out) bytes_by_id[paths[i]] = bytes.ok() ? *bytes : "";
            }
            request.set_request_id(paths[i]);
            request.set_image_bytes(bytes.ok() ? *bytes : "");
            if (!stream->Write(request)) break;
          }
          stream->WritesDone();
        });
        nlohmann::ordered_json results = nlohmann::ordered_json::array();
        std::ofstream csv;
        if (args.Has("csv")) {
          csv.open(args.String("csv"));
          csv << "image,image_score,max_pixel_score,is_anomalous,regions,total_ms,error\n";
        }
        anoclip::v1::DetectResponse response;
        size_t done = 0, failed = 0;
        absl::Status first_error;
        while (stream->Read(&response)) {
          {
            absl::MutexLock lock(&mutex);
            --in_flight;
          }
          ++done;
          const std::string& id = response.request_id();
          if (response.error_code() != 0) {
            ++failed;
            std::cout << id << ": error " << response.error_message() << "\n";
          } else {
            PrintHuman(id, response);
            if (out) {
              std::string bytes;
              {
                absl::MutexLock lock(&mutex);
                bytes = std::move(bytes_by_id[id]);
                bytes_by_id.erase(id);
              }
              auto written = WriteResponseImages(response, bytes, args.String("out"), Stem(id));
              if (!written.ok() && first_error.ok()) first_error = written;
            }
          }
          auto json = response.error_code() != 0 ? nlohmann::ordered_json{{"error", response.error_message()}}
                                                 : ResponseToJson(response);
          json["image"] = id;
          results.push_back(json);
          if (csv.is_open()) {
            csv << id << "," << response.image_score() << "," << response.max_pixel_score() << ","
                << (response.has_is_anomalous() ? (response.is_anomalous() ? "true" : "false") : "") << ","
                << response.regions_size() << "," << response.timings().total_seconds() * 1e3 << ","
                << response.error_message() << "\n";
          }
          // Progress on stderr, so stdout stays machine-readable.
          const int width = 30, filled = static_cast<int>(width * done / paths.size());
          std::cerr << "\r[" << std::string(filled, '#') << std::string(width - filled, ' ') << "] " << done << "/"
                    << paths.size() << std::flush;
        }
        std::cerr << "\n";
        writer.join();
        ANOCLIP_RETURN_IF_ERROR(FromGrpc(stream->Finish(), c.target));
        if (args.Has("json")) std::ofstream(args.String("json")) << results.dump(2) << "\n";
        std::cout << "inspected " << done << " images, " << failed << " failed\n";
        if (done != paths.size()) return absl::DataLossError(absl::StrCat("only ", done, " of ", paths.size(), " answered"));
        return first_error;
      });
}

int RunMakeSamples(const std::vector<std::string>& words) {
  auto args = Arguments::Parse(words, {"out", "size"}, {});
  if (!args.ok() || !args->Has("out")) {
    std::cerr << "usage: anoclip-client make-samples --out DIR [--size N]\n";
    return 2;
  }
  auto size = args->Int("size", 320, 32, 4096);
  if (!size.ok()) {
    std::cerr << "anoclip-client make-samples: " << size.status().message() << "\n";
    return 2;
  }
  auto status = WriteSamples(args->String("out"), GenerateSamples(static_cast<int>(*size)));
  if (!status.ok()) {
    std::cerr << "anoclip-client make-samples: " << status.message() << "\n";
    return 1;
  }
  std::cout << "wrote samples to " << args->String("out") << "\n";
  return 0;
}

}  // namespace anoclip::client
