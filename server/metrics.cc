#include "server/metrics.h"

#include <httplib.h>
#include <prometheus/text_serializer.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/process_metrics.h"

namespace anoclip::server {
namespace {

prometheus::Histogram::BucketBoundaries SecondsBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
}

prometheus::Histogram* Histogram(prometheus::Registry& registry, const std::string& name, const std::string& help,
                                 prometheus::Histogram::BucketBoundaries buckets) {
  return &prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add({}, std::move(buckets));
}

}  // namespace

ServiceMetrics::ServiceMetrics(const std::string& model_id, const std::string& device, const std::string& version) {
  auto& r = *registry_;
  requests_ = &prometheus::BuildCounter().Name("anoclip_requests_total")
                   .Help("RPCs answered, by method and gRPC status code").Register(r);
  retried_ = &prometheus::BuildCounter().Name("anoclip_retried_requests_total")
                  .Help("RPCs received as a client's retry of a failed attempt (grpc-previous-rpc-attempts), by method")
                  .Register(r);
  request_duration_ = &prometheus::BuildHistogram().Name("anoclip_request_duration_seconds")
                           .Help("Time from receipt to answer, by method").Register(r);
  queue_ = Histogram(r, "anoclip_queue_duration_seconds", "Time waiting in the batch queue", SecondsBuckets());
  encode_ = Histogram(r, "anoclip_encode_duration_seconds", "Vision forward time per batch", SecondsBuckets());
  tta_ = Histogram(r, "anoclip_tta_duration_seconds", "Test-time adaptation time per image", SecondsBuckets());
  postprocess_ = Histogram(r, "anoclip_postprocess_duration_seconds", "Heatmap, regions and encoding per image",
                           SecondsBuckets());
  batch_size_ = Histogram(r, "anoclip_batch_size", "Images per vision forward", {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64});
  text_build_ = Histogram(r, "anoclip_text_bank_build_duration_seconds", "Text feature builds", SecondsBuckets());
  queue_depth_ = &prometheus::BuildGauge().Name("anoclip_queue_depth").Help("Requests waiting for a batch")
                      .Register(r).Add({});
  in_flight_ = &prometheus::BuildGauge().Name("anoclip_in_flight_requests").Help("Requests being served")
                    .Register(r).Add({});
  text_entries_ = &prometheus::BuildGauge().Name("anoclip_text_bank_entries").Help("Classes held in memory")
                       .Register(r).Add({});
  text_hits_ = &prometheus::BuildCounter().Name("anoclip_text_bank_hits_total").Help("Text bank hits")
                    .Register(r).Add({});
  text_misses_ = &prometheus::BuildCounter().Name("anoclip_text_bank_misses_total").Help("Text bank misses")
                      .Register(r).Add({});
  text_builds_ = &prometheus::BuildCounter().Name("anoclip_text_bank_builds_total")
                      .Help("Text encoder runs (a miss answered from disk is not a build)").Register(r).Add({});
  auto counter = [&r](const char* name, const char* help) {
    return &prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
  };
  text_build_failures_ = counter("anoclip_text_bank_build_failures_total", "Text builds that failed or were stopped");
  text_builds_refused_ = counter("anoclip_text_bank_builds_refused_total",
                                 "Text builds refused by --max-class-builds-per-minute");
  text_cache_corrupt_ = counter("anoclip_text_bank_cache_corrupt_total",
                                "Cache files that failed verification and were rebuilt");
  text_cache_write_errors_ = counter("anoclip_text_bank_cache_write_errors_total", "Cache files that could not be written");
  image_score_ = &prometheus::BuildHistogram().Name("anoclip_image_score").Help("Raw image scores by class")
                      .Register(r);
  anomalies_ = &prometheus::BuildCounter().Name("anoclip_anomalies_total")
                    .Help("Images flagged anomalous, by class").Register(r);
  prometheus::BuildGauge().Name("anoclip_model_info").Help("The loaded model").Register(r)
      .Add({{"model_id", model_id}, {"device", device}}).Set(1);
  prometheus::BuildGauge().Name("anoclip_build_info").Help("This build").Register(r)
      .Add({{"version", version}}).Set(1);
}

void ServiceMetrics::ObserveRequest(const std::string& method, const std::string& code, double seconds) {
  requests_->Add({{"method", method}, {"code", code}}).Increment();
  request_duration_->Add({{"method", method}}, SecondsBuckets()).Observe(seconds);
}

std::string ServiceMetrics::ClassLabel(const std::string& class_name) {
  if (class_labels_.count(class_name) > 0) return class_name;
  if (class_labels_.size() < kMaxClassLabels) {
    class_labels_.insert(class_name);
    return class_name;
  }
  return "other";
}

void ServiceMetrics::ObserveScore(const std::string& class_name, double score, bool flagged) {
  std::string label;
  {
    absl::MutexLock lock(&mutex_);
    label = ClassLabel(class_name);
  }
  static const prometheus::Histogram::BucketBoundaries kScoreBuckets = {0.1, 0.2, 0.3, 0.4, 0.45, 0.48, 0.49, 0.5,
                                                                        0.51, 0.52, 0.55, 0.6, 0.7, 0.8, 0.9};
  image_score_->Add({{"class", label}}, kScoreBuckets).Observe(score);
  auto& anomalies = anomalies_->Add({{"class", label}});
  if (flagged) anomalies.Increment();
}

void ServiceMetrics::SyncTextBank(const anomaly::TextBankStats& stats) {
  absl::MutexLock lock(&mutex_);
  text_hits_->Increment(static_cast<double>(stats.hits - synced_.hits));
  text_misses_->Increment(static_cast<double>(stats.misses - synced_.misses));
  text_builds_->Increment(static_cast<double>(stats.builds - synced_.builds));
  text_build_failures_->Increment(static_cast<double>(stats.build_failures - synced_.build_failures));
  text_builds_refused_->Increment(static_cast<double>(stats.builds_refused - synced_.builds_refused));
  text_cache_corrupt_->Increment(static_cast<double>(stats.cache_corrupt - synced_.cache_corrupt));
  text_cache_write_errors_->Increment(static_cast<double>(stats.cache_write_errors - synced_.cache_write_errors));
  text_entries_->Set(static_cast<double>(stats.entries));
  synced_ = stats;
}

std::string ServiceMetrics::Serialize() {
  auto families = registry_->Collect();
  for (auto& family : CollectProcessMetrics()) families.push_back(std::move(family));
  return prometheus::TextSerializer().Serialize(families);
}

absl::StatusOr<std::pair<std::string, int>> SplitHostPort(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return absl::InvalidArgumentError(absl::StrCat("address ", address, " needs :port"));
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  int port = 0;
  if (!absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("address ", address, " has an invalid port"));
  }
  return std::make_pair(host.empty() ? std::string("0.0.0.0") : host, port);
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(const std::string& address,
                                                                           std::function<std::string()> collect) {
  auto host_port = SplitHostPort(address);
  if (!host_port.ok()) return host_port.status();
  auto server = std::unique_ptr<MetricsHttpServer>(new MetricsHttpServer());
  server->http_ = std::make_unique<httplib::Server>();
  // SO_REUSEADDR only: httplib's default also sets SO_REUSEPORT, which lets a second server bind
  // the same port and silently share it.
  server->http_->set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  server->http_->Get("/metrics", [collect](const httplib::Request&, httplib::Response& response) {
    try {
      response.set_content(collect(), "text/plain; version=0.0.4");
    } catch (const std::exception& error) {
      response.status = 500;
      response.set_content(absl::StrCat("metrics failed: ", error.what(), "\n"), "text/plain");
    }
  });
  const auto& [host, port] = *host_port;
  server->port_ = port == 0 ? server->http_->bind_to_any_port(host) : (server->http_->bind_to_port(host, port) ? port : -1);
  if (server->port_ <= 0) return absl::UnavailableError(absl::StrCat("cannot listen for metrics on ", address));
  server->thread_ = std::thread([http = server->http_.get()] { http->listen_after_bind(); });
  return server;
}

MetricsHttpServer::~MetricsHttpServer() {
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace anoclip::server
