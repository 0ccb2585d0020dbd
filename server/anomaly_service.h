// The anoclip.v1.AnomalyDetectionService service on gRPC's callback API: thin handlers. Each admits the
// call (server/admission.h), hands image requests to the DetectPipeline and Inspect streams to
// their reactor (server/inspect_stream.h), and answers; proto <-> core conversion lives in
// server/request_conversion.h. Handlers never block: text builds for PrepareClass run on the
// text bank's own thread.
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "anoclip/v1/anoclip.grpc.pb.h"
#include "anomaly/detector.h"
#include "anomaly/text_bank.h"
#include "common/stopwatch.h"
#include "server/admission.h"
#include "server/detect_pipeline.h"
#include "server/inspect_stream.h"
#include "server/metrics.h"

namespace anoclip::server {

struct ServiceOptions {
  PipelineOptions pipeline;
  AdmissionOptions admission;
  StreamOptions stream;
  std::string version;
};

class AnomalyService final : public anoclip::v1::AnomalyDetectionService::CallbackService {
 public:
  static absl::StatusOr<std::unique_ptr<AnomalyService>> Create(const anomaly::Detector* detector,
                                                                anomaly::TextBank* text_bank,
                                                                ServiceMetrics* metrics, ServiceOptions options);
  ~AnomalyService() override;

  // New calls are refused with UNAVAILABLE; accepted ones finish.
  void BeginDrain() { admission_->BeginDrain(); }
  // True once no call is open and none arrived for `quiet`; false after `timeout`.
  bool WaitForQuiet(absl::Duration quiet, absl::Duration timeout) const {
    return admission_->WaitForQuiet(quiet, timeout);
  }
  // Runs what the batcher holds and joins the threads.
  void Stop() { pipeline_->Stop(); }

  grpc::ServerUnaryReactor* Detect(grpc::CallbackServerContext* context, const anoclip::v1::DetectRequest* request,
                                   anoclip::v1::DetectResponse* response) override;
  grpc::ServerBidiReactor<anoclip::v1::InspectRequest, anoclip::v1::InspectResponse>* Inspect(
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

 private:
  AnomalyService(const anomaly::Detector* detector, anomaly::TextBank* text_bank, ServiceMetrics* metrics,
                 ServiceOptions options);
  // Counts the finished call in the metrics, writes its access log line and answers it.
  void Answer(grpc::ServerUnaryReactor* reactor, const char* method, const std::string& request_id,
              SteadyClock::time_point start, const absl::Status& status, nlohmann::ordered_json fields = {});
  // Admits, runs `body` on the callback thread (it must be quick) and answers.
  template <typename Body>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, const char* method, Body body);

  const anomaly::Detector* detector_;
  anomaly::TextBank* text_bank_;
  ServiceMetrics* metrics_;
  const ServiceOptions options_;
  std::unique_ptr<Admission> admission_;
  std::unique_ptr<DetectPipeline> pipeline_;
};

}  // namespace anoclip::server
