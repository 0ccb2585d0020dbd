#include "server/anomaly_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/stopwatch.h"
#include "server/log.h"

namespace anoclip::server {
namespace {

using anoclip::v1::DetectRequest;
using anoclip::v1::DetectResponse;
using anoclip::SteadyClock;

// A client's retry carries grpc-previous-rpc-attempts (gRFC A6): an earlier attempt of the same
// call failed, here or on a replica that died or drained with the call in it.
void CountRetry(const grpc::CallbackServerContext& context, const char* method, ServiceMetrics& metrics) {
  const auto& metadata = context.client_metadata();
  const auto attempts = metadata.find("grpc-previous-rpc-attempts");
  if (attempts != metadata.end() && attempts->second != "0") metrics.ObserveRetry(method);
}

}  // namespace

absl::StatusOr<std::unique_ptr<AnomalyService>> AnomalyService::Create(const anomaly::Detector* detector,
                                                                       anomaly::TextBank* text_bank,
                                                                       ServiceMetrics* metrics,
                                                                       ServiceOptions options) {
  auto service =
      std::unique_ptr<AnomalyService>(new AnomalyService(detector, text_bank, metrics, std::move(options)));
  ANOCLIP_ASSIGN_OR_RETURN(service->admission_, Admission::Create(service->options_.admission));
  ANOCLIP_ASSIGN_OR_RETURN(service->pipeline_,
                           DetectPipeline::Create(detector, text_bank, metrics, service->options_.pipeline));
  if (service->options_.stream.max_unwritten < 1) {
    return absl::InvalidArgumentError("the per-stream bound of unwritten responses must be positive");
  }
  return service;
}

AnomalyService::AnomalyService(const anomaly::Detector* detector, anomaly::TextBank* text_bank,
                               ServiceMetrics* metrics, ServiceOptions options)
    : detector_(detector), text_bank_(text_bank), metrics_(metrics), options_(std::move(options)) {}

AnomalyService::~AnomalyService() {
  if (admission_) admission_->BeginDrain();
  if (pipeline_) pipeline_->Stop();
}

void AnomalyService::Answer(grpc::ServerUnaryReactor* reactor, const char* method, const std::string& request_id,
                            SteadyClock::time_point start, const absl::Status& status, nlohmann::ordered_json fields) {
  const double seconds = SecondsSince(start);
  metrics_->ObserveRequest(method, StatusCodeName(status.code()), seconds);
  LogCall(method, request_id, status, seconds, std::move(fields));
  reactor->Finish(ToGrpcStatus(status));
}

template <typename Body>
grpc::ServerUnaryReactor* AnomalyService::Unary(grpc::CallbackServerContext* context, const char* method, Body body) {
  const auto start = SteadyClock::now();
  const std::string request_id = TakeRequestId(*context);
  CountRetry(*context, method, *metrics_);
  auto* reactor = context->DefaultReactor();
  auto slot = admission_->AdmitCall(*context);
  absl::Status status = slot.status();
  if (status.ok()) status = body();
  Answer(reactor, method, request_id, start, status);
  return reactor;
}

grpc::ServerUnaryReactor* AnomalyService::Detect(grpc::CallbackServerContext* context, const DetectRequest* request,
                                                 DetectResponse* response) {
  const auto start = SteadyClock::now();
  CountRetry(*context, "Detect", *metrics_);
  auto* reactor = context->DefaultReactor();
  auto finish = [this, reactor, start, request_id = TakeRequestId(*context), item = request->request_id()](
                    const absl::Status& status, nlohmann::ordered_json fields = {}) {
    if (!item.empty()) fields["item_id"] = item;
    Answer(reactor, "Detect", request_id, start, status, std::move(fields));
  };
  auto call = admission_->AdmitCall(*context);
  if (!call.ok()) {
    finish(call.status());
    return reactor;
  }
  auto slot = admission_->AdmitRequest();
  if (!slot.ok()) {
    finish(slot.status());
    return reactor;
  }
  metrics_->in_flight().Increment();
  // The request outlives the pipeline: gRPC frees it only after Finish.
  std::shared_ptr<const DetectRequest> borrowed(request, [](const DetectRequest*) {});
  auto call_slot = std::make_shared<Admission::Slot>(std::move(call).value());
  pipeline_->Run(borrowed, std::move(slot).value(), absl::FromChrono(context->deadline()),
                 [context] { return context->IsCancelled(); },
                 [this, response, finish, call_slot](absl::Status status, DetectResponse result) {
                   nlohmann::ordered_json fields;
                   if (status.ok()) {
                     fields = {{"class", result.class_name()}, {"image_score", result.image_score()}};
                     *response = std::move(result);
                   }
                   metrics_->in_flight().Decrement();
                   call_slot->Release();
                   finish(status, std::move(fields));
                 });
  return reactor;
}

grpc::ServerBidiReactor<anoclip::v1::InspectRequest, anoclip::v1::InspectResponse>* AnomalyService::Inspect(
    grpc::CallbackServerContext* context) {
  CountRetry(*context, "Inspect", *metrics_);
  return StartInspectStream(context, admission_.get(), pipeline_.get(), metrics_, options_.stream);
}

grpc::ServerUnaryReactor* AnomalyService::PrepareClass(grpc::CallbackServerContext* context,
                                                       const anoclip::v1::PrepareClassRequest* request,
                                                       anoclip::v1::PrepareClassResponse* response) {
  const auto start = SteadyClock::now();
  CountRetry(*context, "PrepareClass", *metrics_);
  auto* reactor = context->DefaultReactor();
  auto finish = [this, reactor, start, request_id = TakeRequestId(*context)](const absl::Status& status) {
    Answer(reactor, "PrepareClass", request_id, start, status);
  };
  auto call = admission_->AdmitCall(*context);
  auto spec = call.ok() ? PromptSpecFromProto(request->class_spec(), options_.pipeline.request_limits)
                        : absl::StatusOr<anomaly::PromptSpec>(call.status());
  if (!spec.ok()) {
    finish(spec.status());
    return reactor;
  }
  // Building takes seconds: it runs on the text bank's thread, and this reactor answers then.
  const auto deadline = absl::FromChrono(context->deadline());
  auto call_slot = std::make_shared<Admission::Slot>(std::move(call).value());
  text_bank_->GetAsync(
      *spec, [context, deadline] { return context->IsCancelled() || absl::Now() >= deadline; },
      [response, finish, start, call_slot](absl::StatusOr<anomaly::TextFeaturesPtr> text, bool cached) {
        if (text.ok()) {
          response->set_cached(cached);
          response->set_prompts_per_state(static_cast<int>((*text)->prompts.size(0) / 2));
          response->set_build_seconds(SecondsSince(start));
        }
        call_slot->Release();
        finish(text.status());
      });
  return reactor;
}

grpc::ServerUnaryReactor* AnomalyService::ListClasses(grpc::CallbackServerContext* context,
                                                      const anoclip::v1::ListClassesRequest*,
                                                      anoclip::v1::ListClassesResponse* response) {
  return Unary(context, "ListClasses", [&] {
    for (const auto& entry : text_bank_->List()) {
      auto* out = response->add_classes();
      out->set_name(entry.spec.class_name);
      out->set_kind(KindToProto(entry.spec.kind));
      out->set_key(Sha256Hex(entry.key, 8));  // a printable id of the whole spec
      out->set_hits(entry.hits);
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AnomalyService::EvictClass(grpc::CallbackServerContext* context,
                                                     const anoclip::v1::EvictClassRequest* request,
                                                     anoclip::v1::EvictClassResponse* response) {
  return Unary(context, "EvictClass", [&]() -> absl::Status {
    ANOCLIP_ASSIGN_OR_RETURN(auto spec, PromptSpecFromProto(request->class_spec(), options_.pipeline.request_limits));
    response->set_evicted(text_bank_->Evict(spec));
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AnomalyService::GetModelInfo(grpc::CallbackServerContext* context,
                                                       const anoclip::v1::GetModelInfoRequest*,
                                                       anoclip::v1::GetModelInfoResponse* response) {
  return Unary(context, "GetModelInfo", [&] {
    const auto& config = detector_->config();
    response->set_model_id(detector_->model_id());
    response->set_architecture(absl::StrCat("ViT ", config.vision.image_size, "/", config.vision.patch_size, " width ",
                                            config.vision.width, " x", config.vision.layers));
    response->set_image_size(config.vision.image_size);
    response->set_embed_dim(config.embed_dim);
    response->set_device(detector_->device_name());
    response->set_dtype("float32");
    response->set_max_batch(options_.pipeline.batcher.max_batch);
    response->set_version(options_.version);
    return absl::OkStatus();
  });
}

}  // namespace anoclip::server
