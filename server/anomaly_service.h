// The anoclip.v1.AnomalyDetection service on gRPC's callback API.
//
// Reactors never block: they parse nothing heavy and hand each request to the worker pool
// (decode, validation, preprocessing, text features), which submits it to the DynamicBatcher;
// the batcher thread runs one vision forward per batch and posts each image's post-processing
// (heatmap, regions, encoding) back to the worker pool, which answers the call. Errors are
// absl::Status until the answer, where they become gRPC codes.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <string>

#include "anoclip/v1/anoclip.grpc.pb.h"
#include "anomaly/detector.h"
#include "anomaly/prompt_ensemble.h"
#include "anomaly/text_bank.h"
#include "image/decode.h"
#include "inspection/calibration.h"
#include "server/dynamic_batcher.h"
#include "server/metrics.h"
#include "server/worker_pool.h"

namespace anoclip::server {

struct ServiceOptions {
  BatcherOptions batcher;
  int workers = 4;
  int max_stream_in_flight = 128;  // per Inspect stream; reading pauses beyond it
  image::ImageLimits image_limits;
  anomaly::PromptLimits prompt_limits;
  std::string auth_token;  // empty: no authentication
  std::map<std::string, inspection::Calibration> calibrations;  // by class name
  std::string version;
};

class AnomalyService final : public anoclip::v1::AnomalyDetection::CallbackService {
 public:
  using DoneFn = std::function<void(absl::Status, anoclip::v1::DetectResponse)>;

  static absl::StatusOr<std::unique_ptr<AnomalyService>> Create(const anomaly::Detector* detector,
                                                                anomaly::TextBank* text_bank,
                                                                ServiceMetrics* metrics, ServiceOptions options);
  ~AnomalyService() override;

  // New calls are refused with UNAVAILABLE; accepted ones finish.
  void BeginDrain() { draining_ = true; }
  // Runs what the batcher holds and joins the threads.
  void Stop();

  grpc::ServerUnaryReactor* Detect(grpc::CallbackServerContext* context, const anoclip::v1::DetectRequest* request,
                                   anoclip::v1::DetectResponse* response) override;
  grpc::ServerBidiReactor<anoclip::v1::DetectRequest, anoclip::v1::DetectResponse>* Inspect(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* PrepareClass(grpc::CallbackServerContext* context,
                                         const anoclip::v1::PrepareClassRequest* request,
                                         anoclip::v1::PrepareClassResponse* response) override;
  grpc::ServerUnaryReactor* ListClasses(grpc::CallbackServerContext* context,
                                        const anoclip::v1::ListClassesRequest* request,
                                        anoclip::v1::ListClassesResponse* response) override;
  grpc::ServerUnaryReactor* EvictClass(grpc::CallbackServerContext* context,
                                       const anoclip::v1::EvictClassRequest* request,
                                       anoclip::v1::EvictClassResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const anoclip::v1::GetModelInfoRequest* request,
                                         anoclip::v1::GetModelInfoResponse* response) override;

  // One request through the pipeline; `done` runs exactly once, on a worker thread.
  void Process(std::shared_ptr<const anoclip::v1::DetectRequest> request, absl::Time deadline,
               std::function<bool()> is_cancelled, DoneFn done);

  // Authentication and draining, checked when a call arrives.
  absl::Status Admit(const grpc::CallbackServerContext& context) const;
  ServiceMetrics* metrics() const { return metrics_; }
  const ServiceOptions& options() const { return options_; }

 private:
  struct Request;
  AnomalyService(const anomaly::Detector* detector, anomaly::TextBank* text_bank, ServiceMetrics* metrics,
                 ServiceOptions options);
  absl::Status Prepare(Request& state);
  void RunBatch(std::vector<std::unique_ptr<BatchItem>> batch);
  void Postprocess(Request& state, const anomaly::Detection& detection);
  // Answers a unary call and records it.
  template <typename Body>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, const char* method, Body body);

  const anomaly::Detector* detector_;
  anomaly::TextBank* text_bank_;
  ServiceMetrics* metrics_;
  const ServiceOptions options_;
  std::unique_ptr<WorkerPool> workers_;
  std::unique_ptr<DynamicBatcher> batcher_;
  std::atomic<bool> draining_{false};
};

// absl -> gRPC status, once, at the edge.
grpc::Status ToGrpcStatus(const absl::Status& status);

// The spec a request names: kind KIND_UNSPECIFIED takes the class's default.
anomaly::PromptSpec PromptSpecFromProto(const anoclip::v1::ClassSpec& spec);

}  // namespace anoclip::server
