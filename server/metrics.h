// The service's Prometheus metrics (prefix anoclip_, base units) and the HTTP endpoint that
// serves them. prometheus-cpp's own Exposer (civetweb, 100 KiB thread stacks) cannot start once
// OpenBLAS and libtorch are loaded, so /metrics is served with cpp-httplib.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "anomaly/text_bank.h"

namespace httplib {
class Server;
}

namespace anoclip::server {

class ServiceMetrics {
 public:
  static constexpr size_t kMaxClassLabels = 32;  // further classes share the label "other"

  ServiceMetrics(const std::string& model_id, const std::string& device, const std::string& version);

  void ObserveRequest(const std::string& method, const std::string& code, double seconds);
  // A call that is a client's retry: an earlier attempt of it failed (grpc-previous-rpc-attempts).
  void ObserveRetry(const std::string& method) { retried_->Add({{"method", method}}).Increment(); }
  void ObserveQueue(double seconds) { queue_->Observe(seconds); }
  void ObserveEncode(double seconds) { encode_->Observe(seconds); }
  void ObserveTta(double seconds) { tta_->Observe(seconds); }
  void ObservePostprocess(double seconds) { postprocess_->Observe(seconds); }
  void ObserveBatch(int size) { batch_size_->Observe(size); }
  void ObserveTextBuild(double seconds) { text_build_->Observe(seconds); }
  void ObserveScore(const std::string& class_name, double score, bool flagged);
  void SetQueueDepth(double depth) { queue_depth_->Set(depth); }
  prometheus::Gauge& in_flight() { return *in_flight_; }

  // Text-bank counters follow the bank's own totals; called before each scrape.
  void SyncTextBank(const anomaly::TextBankStats& stats);
  std::string Serialize();

 private:
  std::string ClassLabel(const std::string& class_name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Counter>* retried_;
  prometheus::Family<prometheus::Histogram>* image_score_;
  prometheus::Family<prometheus::Counter>* anomalies_;
  prometheus::Family<prometheus::Histogram>* request_duration_;
  prometheus::Histogram *queue_, *encode_, *tta_, *postprocess_, *batch_size_, *text_build_;
  prometheus::Gauge *queue_depth_, *in_flight_, *text_entries_;
  prometheus::Counter *text_hits_, *text_misses_, *text_builds_;
  prometheus::Counter *text_build_failures_, *text_builds_refused_, *text_cache_corrupt_, *text_cache_write_errors_;
  absl::Mutex mutex_;
  std::set<std::string> class_labels_ ABSL_GUARDED_BY(mutex_);
  anomaly::TextBankStats synced_ ABSL_GUARDED_BY(mutex_);
};

// GET /metrics on its own port.
class MetricsHttpServer {
 public:
  // `host:port`; port 0 picks one. The collector is called for every scrape.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& address,
                                                                   std::function<std::string()> collect);
  ~MetricsHttpServer();
  int port() const { return port_; }

 private:
  MetricsHttpServer() = default;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
};

// Splits "host:port" (IPv6 in brackets).
absl::StatusOr<std::pair<std::string, int>> SplitHostPort(const std::string& address);

}  // namespace anoclip::server
