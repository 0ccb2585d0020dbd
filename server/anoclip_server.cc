#include "server/anoclip_server.h"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/grpcpp.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "anomaly/text_bank.h"
#include "common/files.h"
#include "common/status_macros.h"
#include "server/anomaly_service.h"
#include "server/metrics.h"

namespace anoclip::server {
namespace {

constexpr char kVersion[] = "0.1.0";
constexpr char kServiceName[] = "anoclip.v1.AnomalyDetection";

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const ServerConfig& config) {
  if (config.tls_cert.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  ANOCLIP_ASSIGN_OR_RETURN(pair.cert_chain, ReadFileToString(config.tls_cert));
  ANOCLIP_ASSIGN_OR_RETURN(pair.private_key, ReadFileToString(config.tls_key));
  options.pem_key_cert_pairs.push_back(pair);
  if (!config.tls_client_ca.empty()) {
    ANOCLIP_ASSIGN_OR_RETURN(options.pem_root_certs, ReadFileToString(config.tls_client_ca));
    options.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<std::map<std::string, inspection::Calibration>> LoadCalibrations(const std::string& dir,
                                                                                const std::string& model_id) {
  std::map<std::string, inspection::Calibration> calibrations;
  if (dir.empty()) return calibrations;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    if (entry.path().extension() != ".json") continue;
    ANOCLIP_ASSIGN_OR_RETURN(auto calibration, inspection::LoadCalibration(entry.path().string()));
    if (calibration.model_id != model_id) {
      return absl::InvalidArgumentError(absl::StrCat(entry.path().string(), " was made with model ",
                                                     calibration.model_id, ", not the loaded ", model_id));
    }
    calibrations[calibration.class_name] = std::move(calibration);
  }
  if (error) return absl::NotFoundError(absl::StrCat("cannot list calibration dir ", dir, ": ", error.message()));
  return calibrations;
}

}  // namespace

struct AnoclipServer::State {
  ServerConfig config;
  std::unique_ptr<anomaly::Detector> detector;
  std::unique_ptr<ServiceMetrics> metrics;
  std::unique_ptr<anomaly::TextBank> text_bank;
  std::unique_ptr<AnomalyService> service;
  std::unique_ptr<grpc::Server> grpc_server;
  std::unique_ptr<MetricsHttpServer> metrics_server;
  int grpc_port = 0;
  bool drained = false;

  void SetHealth(bool serving) {
    auto* health = grpc_server->GetHealthCheckService();
    if (health == nullptr) return;
    health->SetServingStatus(serving);
    health->SetServingStatus(kServiceName, serving);
  }
};

AnoclipServer::AnoclipServer(std::unique_ptr<State> state) : state_(std::move(state)) {}

AnoclipServer::~AnoclipServer() { Drain(absl::Seconds(state_->config.drain_timeout_s)); }

int AnoclipServer::grpc_port() const { return state_->grpc_port; }
int AnoclipServer::metrics_port() const { return state_->metrics_server ? state_->metrics_server->port() : 0; }

absl::StatusOr<std::unique_ptr<AnoclipServer>> AnoclipServer::Start(const ServerConfig& config) {
  auto state = std::make_unique<State>();
  state->config = config;

  anomaly::DetectorOptions detector_options{config.model_dir, config.vocab, config.device, config.dtype,
                                            config.threads};
  ANOCLIP_ASSIGN_OR_RETURN(state->detector, anomaly::Detector::Create(detector_options));
  const auto* detector = state->detector.get();
  state->metrics = std::make_unique<ServiceMetrics>(detector->model_id(), detector->device_name(), kVersion);
  auto* metrics = state->metrics.get();
  ANOCLIP_ASSIGN_OR_RETURN(
      state->text_bank,
      anomaly::TextBank::Create({static_cast<size_t>(config.text_bank_capacity), config.cache_dir, detector->model_id()},
                                [detector](const anomaly::PromptSpec& spec) { return detector->EncodeText(spec); },
                                [metrics](double seconds) { metrics->ObserveTextBuild(seconds); }));

  ServiceOptions options;
  options.batcher.max_batch = config.max_batch;
  options.batcher.max_queue_delay = absl::Milliseconds(config.max_queue_delay_ms);
  options.batcher.queue_capacity = static_cast<size_t>(config.queue_capacity);
  options.workers = config.workers;
  options.image_limits.max_pixels = config.max_image_pixels;
  options.image_limits.max_bytes = config.max_message_bytes;
  options.version = kVersion;
  if (!config.auth_token_file.empty()) {
    ANOCLIP_ASSIGN_OR_RETURN(auto token, ReadFileToString(config.auth_token_file));
    options.auth_token = std::string(absl::StripAsciiWhitespace(token));
    if (options.auth_token.empty()) return absl::InvalidArgumentError("the auth token file is empty");
  }
  ANOCLIP_ASSIGN_OR_RETURN(options.calibrations, LoadCalibrations(config.calibration_dir, detector->model_id()));
  ANOCLIP_ASSIGN_OR_RETURN(state->service,
                           AnomalyService::Create(detector, state->text_bank.get(), metrics, std::move(options)));

  // Warm classes before the port opens for traffic's sake: health says SERVING only after them.
  for (const auto& [name, kind] : config.warm) {
    anomaly::PromptSpec spec;
    spec.class_name = name;
    spec.kind = kind.empty() ? anomaly::DefaultKindForClass(name) : kind;
    ANOCLIP_RETURN_IF_ERROR(state->text_bank->Get(spec).status());
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  ANOCLIP_ASSIGN_OR_RETURN(auto credentials, Credentials(config));
  builder.AddListeningPort(config.listen, credentials, &state->grpc_port);
  builder.SetMaxReceiveMessageSize(config.max_message_bytes);
  builder.RegisterService(state->service.get());
  state->grpc_server = builder.BuildAndStart();
  if (state->grpc_server == nullptr || state->grpc_port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", config.listen));
  }
  if (!config.metrics_listen.empty()) {
    auto* bank = state->text_bank.get();
    ANOCLIP_ASSIGN_OR_RETURN(state->metrics_server, MetricsHttpServer::Start(config.metrics_listen, [metrics, bank] {
                               metrics->SyncTextBank(bank->stats());
                               return metrics->Serialize();
                             }));
  }
  state->SetHealth(true);
  auto server = std::unique_ptr<AnoclipServer>(new AnoclipServer(std::move(state)));
  if (!config.ready_file.empty()) {
    const std::string temp = config.ready_file + ".tmp";
    std::ofstream(temp, std::ios::trunc) << "{\"grpc_port\":" << server->grpc_port()
                                         << ",\"metrics_port\":" << server->metrics_port() << "}\n";
    std::filesystem::rename(temp, config.ready_file);
  }
  return server;
}

void AnoclipServer::Drain(absl::Duration timeout) {
  if (state_->drained) return;
  state_->drained = true;
  state_->SetHealth(false);
  state_->service->BeginDrain();
  // Shutdown waits for the calls in progress; past the deadline it cancels them.
  state_->grpc_server->Shutdown(std::chrono::system_clock::now() + absl::ToChronoSeconds(timeout));
  state_->service->Stop();
  state_->grpc_server->Wait();
  state_->metrics_server.reset();
}

}  // namespace anoclip::server
