#include "server/anoclip_server.h"

#include <malloc.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/grpcpp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "anomaly/text_bank.h"
#include "inspection/calibration.h"
#include "common/files.h"
#include "common/status_macros.h"
#include "server/anomaly_service.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/openmp_threads.h"
#include "server/reflection_v1.h"
#include "server/worker_pool.h"

namespace anoclip::server {
namespace {

constexpr const char* kVersion = kServerVersion;
constexpr char kServiceName[] = "anoclip.v1.AnomalyDetectionService";

// gRPC only says "cannot listen" when the key and certificate disagree: check them first, with
// OpenSSL, to say which file is wrong.
absl::Status CheckKeyMatchesCertificate(const std::string& cert_pem, const std::string& key_pem,
                                        const ServerConfig& config) {
  BIO* cert_bio = BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size()));
  X509* cert = PEM_read_bio_X509(cert_bio, nullptr, nullptr, nullptr);
  BIO_free(cert_bio);
  BIO* key_bio = BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(key_bio, nullptr, nullptr, nullptr);
  BIO_free(key_bio);
  absl::Status status;
  if (cert == nullptr) {
    status = absl::InvalidArgumentError(absl::StrCat("--tls-cert ", config.tls_cert, " holds no PEM certificate"));
  } else if (key == nullptr) {
    status = absl::InvalidArgumentError(absl::StrCat("--tls-key ", config.tls_key, " holds no PEM private key"));
  } else if (X509_check_private_key(cert, key) != 1) {
    status = absl::InvalidArgumentError(absl::StrCat("the TLS key ", config.tls_key,
                                                     " does not match the certificate ", config.tls_cert));
  }
  X509_free(cert);
  EVP_PKEY_free(key);
  return status;
}

// HOST:PORT with a port in 0..65535 (0 picks one); gRPC would otherwise read ":99999" its own way.
absl::Status CheckListenAddress(const std::string& flag, const std::string& address) {
  auto host_port = SplitHostPort(address);
  if (!host_port.ok()) return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", host_port.status().message()));
  if (host_port->first.empty() || address.front() == ':') {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, " ", address,
                                                   " needs a host: 127.0.0.1:PORT, or 0.0.0.0:PORT to serve other hosts"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const ServerConfig& config) {
  if (config.tls_cert.empty()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  ANOCLIP_ASSIGN_OR_RETURN(pair.cert_chain, ReadFileToString(config.tls_cert));
  ANOCLIP_ASSIGN_OR_RETURN(pair.private_key, ReadFileToString(config.tls_key));
  ANOCLIP_RETURN_IF_ERROR(CheckKeyMatchesCertificate(pair.cert_chain, pair.private_key, config));
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
  std::unique_ptr<WorkerPool> text_builds;  // the text bank's executor: one build at a time
  std::unique_ptr<anomaly::TextBank> text_bank;
  std::unique_ptr<AnomalyService> service;
  std::unique_ptr<ReflectionV1Service> reflection;
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
const char* AnoclipServer::gemm_library() const { return state_->detector->gemm_library(); }

absl::StatusOr<std::unique_ptr<AnoclipServer>> AnoclipServer::Start(const ServerConfig& config) {
  ANOCLIP_RETURN_IF_ERROR(CheckListenAddress("listen", config.listen));
  if (!config.metrics_listen.empty()) ANOCLIP_RETURN_IF_ERROR(CheckListenAddress("metrics-listen", config.metrics_listen));
  auto state = std::make_unique<State>();
  state->config = config;

  anomaly::DetectorOptions detector_options{config.model_dir, config.vocab, config.device, config.dtype,
                                            config.threads};
  detector_options.precision = config.precision;
  detector_options.gemm = config.gemm;
  detector_options.memo_dir = config.cache_dir;
  auto detector_or = anomaly::Detector::Create(detector_options);
  if (!detector_or.ok()) {
    absl::Status status(detector_or.status().code(),
                        absl::StrCat("cannot load the model from ", config.model_dir, ": ", detector_or.status().message()));
    status.SetPayload(kModelErrorPayload, absl::Cord("model"));
    return status;
  }
  state->detector = std::move(detector_or).value();
  const auto* detector = state->detector.get();
  state->metrics = std::make_unique<ServiceMetrics>(detector->model_id(), detector->device_name(), kVersion);
  auto* metrics = state->metrics.get();

  ServiceOptions options;
  auto& pipeline = options.pipeline;
  pipeline.batcher.max_batch = config.max_batch;
  pipeline.batcher.max_queue_delay = absl::Milliseconds(config.max_queue_delay_ms);
  pipeline.batcher.queue_capacity = static_cast<size_t>(config.queue_capacity);
  // Between bursts, what the forwards kept for reuse (common/allocator.h) goes back to the system.
  pipeline.batcher.on_idle = [] { malloc_trim(0); };
  pipeline.workers = config.workers;
  pipeline.image_limits.max_pixels = config.max_image_pixels;
  pipeline.image_limits.max_bytes = config.max_message_bytes;
  pipeline.request_limits.prompts.max_prompts_per_state = static_cast<size_t>(config.max_prompts_per_state);
  pipeline.request_limits.allowed_classes.insert(config.allowed_classes.begin(), config.allowed_classes.end());
  options.admission.max_in_flight = config.max_in_flight;
  options.stream.max_unwritten = config.max_stream_unwritten;
  options.version = kVersion;
  if (!config.auth_token_file.empty()) {
    ANOCLIP_ASSIGN_OR_RETURN(auto token, ReadFileToString(config.auth_token_file));
    options.admission.auth_token = std::string(absl::StripAsciiWhitespace(token));
    if (options.admission.auth_token.empty()) return absl::InvalidArgumentError("the auth token file is empty");
  }
  ANOCLIP_ASSIGN_OR_RETURN(pipeline.calibrations, LoadCalibrations(config.calibration_dir, detector->model_id()));

  // A build uses every core, then hands its OpenMP team back (server/openmp_threads.h).
  state->text_builds = std::make_unique<WorkerPool>(1, WorkerPool::Hooks{{}, ReleaseOpenMpTeam});
  const auto limits = pipeline.request_limits.prompts;
  ANOCLIP_ASSIGN_OR_RETURN(
      state->text_bank,
      anomaly::TextBank::Create(
          {static_cast<size_t>(config.text_bank_capacity), config.cache_dir, detector->model_id(),
           config.max_class_builds_per_minute},
          [detector, limits](const anomaly::PromptSpec& spec, const std::function<absl::Status()>& check) {
            anomaly::Detector::TextBuildControl control;
            control.limits = limits;
            control.check = check;
            auto features = detector->EncodeText(spec, control);
            // The build's activations are free now but would stay in glibc's arenas, part of
            // the resident set until the next build: hand them back.
            malloc_trim(0);
            return features;
          },
          [pool = state->text_builds.get()](std::function<void()> build) { pool->Post(std::move(build)); },
          [metrics](double seconds) { metrics->ObserveTextBuild(seconds); }));
  ANOCLIP_ASSIGN_OR_RETURN(state->service,
                           AnomalyService::Create(detector, state->text_bank.get(), metrics, std::move(options)));

  // Warm classes before the port opens for traffic's sake: health says SERVING only after them.
  for (const auto& [name, kind] : config.warm) {
    anomaly::PromptSpec spec;
    spec.class_name = name;
    spec.kind = kind.empty() ? anomaly::DefaultKindForClass(name) : kind;
    ANOCLIP_RETURN_IF_ERROR(anomaly::BuildPromptSet(spec, limits).status());
    ANOCLIP_RETURN_IF_ERROR(state->text_bank->Get(spec).status());
  }

  malloc_trim(0);  // what loading and warming left free, before serving
  ReleaseOpenMpTeam();  // loading and warming ran on this thread; the engine's runs on the batcher's
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  state->reflection = std::make_unique<ReflectionV1Service>();
  state->reflection->RegisterWith(builder);
  ANOCLIP_ASSIGN_OR_RETURN(auto credentials, Credentials(config));
  builder.AddListeningPort(config.listen, credentials, &state->grpc_port);
  // Without this, a second server on the same port starts too and the kernel splits the traffic.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(config.max_message_bytes);
  builder.RegisterService(state->service.get());
  state->grpc_server = builder.BuildAndStart();
  if (state->grpc_server == nullptr || state->grpc_port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", config.listen, " (in use, or not an address of this host)"));
  }
  state->reflection->Attach(state->grpc_server.get());
  if (!config.metrics_listen.empty()) {
    auto* bank = state->text_bank.get();
    ANOCLIP_ASSIGN_OR_RETURN(state->metrics_server, MetricsHttpServer::Start(config.metrics_listen, [metrics, bank] {
                               metrics->SyncTextBank(bank->stats());
                               return metrics->Serialize();
                             }));
  }
  state->SetHealth(true);
  auto* text_builds = state->text_builds.get();
  auto server = std::unique_ptr<AnoclipServer>(new AnoclipServer(std::move(state)));
  if (!config.ready_file.empty()) {
    const std::string temp = config.ready_file + ".tmp";
    std::ofstream(temp, std::ios::trunc) << "{\"grpc_port\":" << server->grpc_port()
                                         << ",\"metrics_port\":" << server->metrics_port() << "}\n";
    std::filesystem::rename(temp, config.ready_file);
  }
  LogLine("info", "serving", {{"grpc_port", server->grpc_port()},
                              {"metrics_port", server->metrics_port()},
                              {"gemm", server->gemm_library()}});
  // The vision tower's packing, deferred by the engine, on the text builds' thread (after the line
  // above, so the log tells them in order): a request that comes meanwhile waits only for the
  // blocks still being packed.
  text_builds->Post([detector] {
    const absl::Time start = absl::Now();
    if (detector->PackDeferredVisionWeights()) {
      LogLine("info", "vision weights packed", {{"seconds", absl::ToDoubleSeconds(absl::Now() - start)}});
    }
  });
  return server;
}

void AnoclipServer::Drain(absl::Duration timeout) {
  if (state_->drained) return;
  state_->drained = true;
  state_->SetHealth(false);
  // New calls get UNAVAILABLE from admission while the accepted ones finish and callers move
  // away (a quiet spell with no new call); only then does gRPC shut down, which would answer a
  // new call CANCELLED.
  state_->service->BeginDrain();
  const absl::Time deadline = absl::Now() + timeout;
  state_->service->WaitForQuiet(std::min(absl::Milliseconds(500), timeout), timeout);
  state_->grpc_server->Shutdown(absl::ToChronoTime(std::max(deadline, absl::Now() + absl::Seconds(1))));
  state_->service->Stop();
  state_->grpc_server->Wait();
  state_->text_builds.reset();
  state_->metrics_server.reset();
}

}  // namespace anoclip::server
