#include "server/anomaly_service.h"

#include <ATen/ATen.h>
#include <openssl/crypto.h>

#include <chrono>
#include <deque>

#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "anomaly/scorer.h"
#include "common/status_macros.h"
#include "image/preprocess.h"
#include "inspection/inspect.h"
#include "inspection/render.h"
#include "proto/inspection_proto.h"

namespace anoclip::server {
namespace {

using anoclip::v1::DetectRequest;
using anoclip::v1::DetectResponse;
using SteadyClock = std::chrono::steady_clock;

double SecondsSince(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::OK: return "OK";
    case grpc::CANCELLED: return "CANCELLED";
    case grpc::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::NOT_FOUND: return "NOT_FOUND";
    case grpc::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::UNAUTHENTICATED: return "UNAUTHENTICATED";
    case grpc::INTERNAL: return "INTERNAL";
    default: return "UNKNOWN";
  }
}

cv::Mat TensorToMat(const at::Tensor& map) {
  auto contiguous = map.to(at::kFloat).contiguous();
  return cv::Mat(static_cast<int>(contiguous.size(0)), static_cast<int>(contiguous.size(1)), CV_32F,
                 contiguous.data_ptr<float>())
      .clone();
}

anoclip::v1::Kind KindToProto(const std::string& kind) {
  return kind == "texture" ? anoclip::v1::KIND_TEXTURE : anoclip::v1::KIND_OBJECT;
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

anomaly::PromptSpec PromptSpecFromProto(const anoclip::v1::ClassSpec& proto) {
  anomaly::PromptSpec spec;
  spec.class_name = proto.name();
  switch (proto.kind()) {
    case anoclip::v1::KIND_OBJECT: spec.kind = "object"; break;
    case anoclip::v1::KIND_TEXTURE: spec.kind = "texture"; break;
    case anoclip::v1::KIND_UNSPECIFIED: spec.kind = anomaly::DefaultKindForClass(spec.class_name); break;
    default: spec.kind = "unknown kind " + std::to_string(proto.kind()); break;
  }
  spec.domains.assign(proto.domains().begin(), proto.domains().end());
  spec.normal_states.assign(proto.normal_states().begin(), proto.normal_states().end());
  spec.abnormal_states.assign(proto.abnormal_states().begin(), proto.abnormal_states().end());
  return spec;
}

// Everything one request carries through the pipeline.
struct AnomalyService::Request {
  std::shared_ptr<const DetectRequest> proto;
  DoneFn done;
  SteadyClock::time_point received = SteadyClock::now();
  anomaly::PromptSpec spec;
  cv::Mat rgb;
  at::Tensor input;
  std::shared_ptr<const anomaly::TextFeatures> text;
  anomaly::DetectOptions options;
  const inspection::Calibration* calibration = nullptr;
  std::optional<double> threshold;
  DetectResponse response;
};

absl::StatusOr<std::unique_ptr<AnomalyService>> AnomalyService::Create(const anomaly::Detector* detector,
                                                                       anomaly::TextBank* text_bank,
                                                                       ServiceMetrics* metrics,
                                                                       ServiceOptions options) {
  if (options.workers < 1) return absl::InvalidArgumentError(absl::StrCat("workers must be positive; was ", options.workers));
  auto service = std::unique_ptr<AnomalyService>(new AnomalyService(detector, text_bank, metrics, std::move(options)));
  ANOCLIP_ASSIGN_OR_RETURN(service->batcher_,
                           DynamicBatcher::Create(service->options_.batcher,
                                                  [s = service.get()](auto batch) { s->RunBatch(std::move(batch)); }));
  return service;
}

AnomalyService::AnomalyService(const anomaly::Detector* detector, anomaly::TextBank* text_bank,
                               ServiceMetrics* metrics, ServiceOptions options)
    : detector_(detector), text_bank_(text_bank), metrics_(metrics), options_(std::move(options)),
      workers_(std::make_unique<WorkerPool>(options_.workers)) {}

AnomalyService::~AnomalyService() { Stop(); }

void AnomalyService::Stop() {
  draining_ = true;
  if (batcher_) batcher_->Stop();
  workers_.reset();  // runs the post-processing still queued
}

absl::Status AnomalyService::Admit(const grpc::CallbackServerContext& context) const {
  if (!options_.auth_token.empty()) {
    const auto& metadata = context.client_metadata();
    auto it = metadata.find("authorization");
    const std::string expected = "Bearer " + options_.auth_token;
    const bool ok = it != metadata.end() && it->second.size() == expected.size() &&
                    CRYPTO_memcmp(it->second.data(), expected.data(), expected.size()) == 0;
    if (!ok) return absl::UnauthenticatedError("missing or wrong bearer token");
  }
  if (draining_) return absl::UnavailableError("the server is draining");
  return absl::OkStatus();
}

absl::Status AnomalyService::Prepare(Request& r) {
  const DetectRequest& proto = *r.proto;
  r.spec = PromptSpecFromProto(proto.class_spec());
  ANOCLIP_RETURN_IF_ERROR(anomaly::BuildPromptSet(r.spec, options_.prompt_limits).status());

  const auto& o = proto.options();
  r.options.views = o.views() == 0 ? 1 : o.views();
  if (r.options.views != 1 && r.options.views != anomaly::kDetectionViews) {
    return absl::InvalidArgumentError(absl::StrCat("views must be 1 or 22; was ", o.views()));
  }
  r.options.tta = o.tta();
  auto& tta = r.options.tta_options;
  const auto& t = o.tta_options();
  if (t.steps() != 0) tta.steps = t.steps();
  if (t.lr() != 0) tta.lr = t.lr();
  if (t.sigma() != 0) tta.sigma = t.sigma();
  tta.init = t.random_init() ? anomaly::TtaInit::kRandom : anomaly::TtaInit::kText;
  tta.seed = t.seed();
  if (r.options.tta) ANOCLIP_RETURN_IF_ERROR(anomaly::TestTimeAdapter::Create(tta).status());
  if (o.min_region_area() < 0) return absl::InvalidArgumentError("min_region_area must be >= 0");
  if (o.decision_case() == anoclip::v1::DetectOptions::kThreshold) {
    ANOCLIP_RETURN_IF_ERROR(inspection::ValidateThreshold(o.threshold()));
    r.threshold = o.threshold();
  } else if (o.decision_case() == anoclip::v1::DetectOptions::kUseCalibration && o.use_calibration()) {
    auto it = options_.calibrations.find(r.spec.class_name);
    if (it == options_.calibrations.end() || it->second.kind != r.spec.kind) {
      return absl::FailedPreconditionError(
          absl::StrCat("no calibration loaded for ", r.spec.class_name, " (", r.spec.kind, ")"));
    }
    r.calibration = &it->second;
  }

  const auto decode_start = SteadyClock::now();
  if (proto.image_case() == DetectRequest::kImageBytes) {
    ANOCLIP_ASSIGN_OR_RETURN(r.rgb, image::DecodeImage(proto.image_bytes(), options_.image_limits));
  } else if (proto.image_case() == DetectRequest::kRaw) {
    const auto& raw = proto.raw();
    std::vector<int64_t> shape(raw.shape().begin(), raw.shape().end());
    ANOCLIP_ASSIGN_OR_RETURN(r.rgb, image::ImageFromRawTensor(raw.data(), shape,
                                                              raw.layout() == anoclip::v1::RawTensor::LAYOUT_CHW
                                                                  ? image::TensorLayout::kCHW
                                                                  : image::TensorLayout::kHWC,
                                                              options_.image_limits));
  } else {
    return absl::InvalidArgumentError("the request carries no image (image_bytes or raw)");
  }
  const auto& config = detector_->config();
  r.input = image::PreprocessImage(r.rgb, config.vision.image_size,
                                   image::NormalizeOptions{config.preprocess.mean, config.preprocess.std});
  r.response.mutable_timings()->set_decode_seconds(SecondsSince(decode_start));
  ANOCLIP_ASSIGN_OR_RETURN(r.text, text_bank_->Get(r.spec));
  return absl::OkStatus();
}

void AnomalyService::Process(std::shared_ptr<const DetectRequest> proto, absl::Time deadline,
                             std::function<bool()> is_cancelled, DoneFn done) {
  auto state = std::make_shared<Request>();
  state->proto = std::move(proto);
  state->done = std::move(done);
  workers_->Post([this, state, deadline, is_cancelled = std::move(is_cancelled)]() mutable {
    if (auto status = Prepare(*state); !status.ok()) {
      state->done(status, {});
      return;
    }
    auto item = std::make_unique<BatchItem>();
    item->input = state->input;
    item->text = state->text;
    item->options = state->options;
    item->deadline = deadline;
    item->is_cancelled = std::move(is_cancelled);
    item->payload = state;
    item->on_dropped = [](std::unique_ptr<BatchItem> dropped, absl::Status reason) {
      auto request = std::static_pointer_cast<Request>(dropped->payload);
      request->done(reason, {});
    };
    if (auto status = batcher_->Submit(&item); !status.ok()) {
      state->done(status, {});
      return;
    }
    metrics_->SetQueueDepth(static_cast<double>(batcher_->queue_depth()));
  });
}

void AnomalyService::RunBatch(std::vector<std::unique_ptr<BatchItem>> batch) {
  const absl::Time now = absl::Now();
  std::vector<at::Tensor> inputs;
  std::vector<std::shared_ptr<const anomaly::TextFeatures>> texts;
  std::vector<anomaly::DetectOptions> options;
  for (auto& item : batch) {
    inputs.push_back(item->input);
    texts.push_back(item->text);
    options.push_back(item->options);
    const double queued = absl::ToDoubleSeconds(now - item->enqueued);
    metrics_->ObserveQueue(queued);
    std::static_pointer_cast<Request>(item->payload)->response.mutable_timings()->set_queue_seconds(queued);
  }
  metrics_->ObserveBatch(static_cast<int>(batch.size()));
  metrics_->SetQueueDepth(static_cast<double>(batcher_->queue_depth()));
  const auto start = SteadyClock::now();
  auto detections = detector_->Detect(at::stack(inputs), texts, options);
  metrics_->ObserveEncode(SecondsSince(start));
  for (size_t i = 0; i < batch.size(); ++i) {
    auto state = std::static_pointer_cast<Request>(batch[i]->payload);
    if (!detections.ok()) {
      state->done(detections.status(), {});
      continue;
    }
    state->response.mutable_timings()->set_batch_size(static_cast<int>(batch.size()));
    workers_->Post([this, state, detection = std::move((*detections)[i])] { Postprocess(*state, detection); });
  }
}

void AnomalyService::Postprocess(Request& r, const anomaly::Detection& detection) {
  const auto start = SteadyClock::now();
  const auto& o = r.proto->options();
  auto& response = r.response;
  const int model_size = detector_->config().vision.image_size;
  inspection::InspectOptions inspect_options;
  inspect_options.calibration = r.calibration;
  inspect_options.threshold = r.threshold;
  inspect_options.min_region_area = o.min_region_area();
  inspect_options.size = o.heatmap_size() == anoclip::v1::HEATMAP_SIZE_ORIGINAL ? r.rgb.size()
                                                                                : cv::Size(model_size, model_size);
  auto inspection = inspection::Inspect(detection.image_score, TensorToMat(detection.anomaly_map), inspect_options);
  if (!inspection.ok()) {
    r.done(inspection.status(), {});
    return;
  }
  response.set_request_id(r.proto->request_id());
  response.set_image_score(inspection->image_score);
  response.set_max_pixel_score(inspection->max_pixel_score);
  response.set_model_id(detector_->model_id());
  response.set_class_name(r.spec.class_name);
  response.set_kind(KindToProto(r.spec.kind));
  if (inspection->calibrated_image_score) response.set_calibrated_image_score(*inspection->calibrated_image_score);
  if (inspection->is_anomalous) response.set_is_anomalous(*inspection->is_anomalous);
  inspection::RegionsToProto(inspection->regions, response.mutable_regions());

  auto* out = response.mutable_heatmap();
  out->set_format(o.heatmap_format());
  out->set_width(inspection->scores.cols);
  out->set_height(inspection->scores.rows);
  absl::StatusOr<std::string> encoded = std::string();
  switch (o.heatmap_format()) {
    case anoclip::v1::HEATMAP_FLOAT32:
      encoded = std::string(reinterpret_cast<const char*>(inspection->scores.ptr<float>()),
                            inspection->scores.total() * sizeof(float));
      break;
    case anoclip::v1::HEATMAP_PNG:
      encoded = inspection::EncodePng(inspection->heatmap);
      break;
    case anoclip::v1::HEATMAP_OVERLAY_PNG:
      encoded = inspection::EncodePng(inspection::RenderOverlay(r.rgb, *inspection));
      break;
    default:
      break;
  }
  if (!encoded.ok()) {
    r.done(encoded.status(), {});
    return;
  }
  out->set_data(std::move(encoded).value());

  auto* timings = response.mutable_timings();
  timings->set_encode_seconds(detection.encode_seconds);
  timings->set_tta_seconds(detection.tta_seconds);
  const double postprocess = SecondsSince(start);
  timings->set_postprocess_seconds(postprocess);
  timings->set_total_seconds(SecondsSince(r.received));
  metrics_->ObservePostprocess(postprocess);
  if (r.options.tta) metrics_->ObserveTta(detection.tta_seconds);
  metrics_->ObserveScore(r.spec.class_name, detection.image_score, inspection->is_anomalous.value_or(false));
  r.done(absl::OkStatus(), std::move(response));
}

template <typename Body>
grpc::ServerUnaryReactor* AnomalyService::Unary(grpc::CallbackServerContext* context, const char* method, Body body) {
  const auto start = SteadyClock::now();
  auto* reactor = context->DefaultReactor();
  absl::Status status = Admit(*context);
  if (status.ok()) status = body();
  const grpc::Status answer = ToGrpcStatus(status);
  metrics_->ObserveRequest(method, CodeName(answer.error_code()), SecondsSince(start));
  reactor->Finish(answer);
  return reactor;
}

grpc::ServerUnaryReactor* AnomalyService::Detect(grpc::CallbackServerContext* context, const DetectRequest* request,
                                                 DetectResponse* response) {
  const auto start = SteadyClock::now();
  auto* reactor = context->DefaultReactor();
  if (auto status = Admit(*context); !status.ok()) {
    const grpc::Status answer = ToGrpcStatus(status);
    metrics_->ObserveRequest("Detect", CodeName(answer.error_code()), SecondsSince(start));
    reactor->Finish(answer);
    return reactor;
  }
  metrics_->in_flight().Increment();
  // The request outlives the pipeline: it is freed only after Finish.
  std::shared_ptr<const DetectRequest> borrowed(request, [](const DetectRequest*) {});
  Process(borrowed, absl::FromChrono(context->deadline()), [context] { return context->IsCancelled(); },
          [this, reactor, response, start](absl::Status status, DetectResponse result) {
            if (status.ok()) *response = std::move(result);
            const grpc::Status answer = ToGrpcStatus(status);
            metrics_->ObserveRequest("Detect", CodeName(answer.error_code()), SecondsSince(start));
            metrics_->in_flight().Decrement();
            reactor->Finish(answer);
          });
  return reactor;
}

namespace {

// One Inspect stream: reads requests as long as fewer than max_stream_in_flight are open,
// writes results in completion order (one write at a time), finishes when the client has
// closed its side and every result is written.
class InspectReactor : public grpc::ServerBidiReactor<DetectRequest, DetectResponse> {
 public:
  InspectReactor(AnomalyService* service, grpc::CallbackServerContext* context)
      : service_(service), context_(context) {
    if (auto status = service_->Admit(*context_); !status.ok()) {
      Finish(ToGrpcStatus(status));
      return;
    }
    StartRead(&incoming_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      absl::MutexLock lock(&mutex_);
      reads_done_ = true;
      MaybeFinishLocked();
      return;
    }
    auto request = std::make_shared<const DetectRequest>(std::move(incoming_));
    incoming_.Clear();
    {
      absl::MutexLock lock(&mutex_);
      ++in_flight_;
    }
    service_->metrics()->in_flight().Increment();
    const auto start = SteadyClock::now();
    const std::string id = request->request_id();
    service_->Process(request, absl::FromChrono(context_->deadline()), [c = context_] { return c->IsCancelled(); },
                      [this, id, start](absl::Status status, DetectResponse response) {
                        const grpc::Status answer = ToGrpcStatus(status);
                        service_->metrics()->ObserveRequest("Inspect", CodeName(answer.error_code()),
                                                            SecondsSince(start));
                        service_->metrics()->in_flight().Decrement();
                        if (!status.ok()) {
                          response = DetectResponse();
                          response.set_error_code(static_cast<int>(status.code()));
                          response.set_error_message(std::string(status.message()));
                        }
                        response.set_request_id(id);
                        Enqueue(std::move(response));
                      });
    absl::MutexLock lock(&mutex_);
    if (in_flight_ < service_->options().max_stream_in_flight) {
      StartRead(&incoming_);
    } else {
      read_paused_ = true;
    }
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mutex_);
    pending_.pop_front();
    if (!ok) write_failed_ = true;
    if (!pending_.empty() && !write_failed_) {
      StartWrite(&pending_.front());
    } else {
      if (write_failed_) pending_.clear();
      writing_ = false;
      MaybeFinishLocked();
    }
  }

  void OnDone() override { delete this; }

 private:
  void Enqueue(DetectResponse response) {
    absl::MutexLock lock(&mutex_);
    --in_flight_;
    if (read_paused_ && in_flight_ < service_->options().max_stream_in_flight) {
      read_paused_ = false;
      StartRead(&incoming_);
    }
    if (write_failed_) {
      MaybeFinishLocked();
      return;
    }
    pending_.push_back(std::move(response));
    if (!writing_) {
      writing_ = true;
      StartWrite(&pending_.front());
    }
  }

  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (reads_done_ && in_flight_ == 0 && !writing_ && !finished_) {
      finished_ = true;
      Finish(write_failed_ ? grpc::Status(grpc::CANCELLED, "the client stopped reading") : grpc::Status::OK);
    }
  }

  AnomalyService* service_;
  grpc::CallbackServerContext* context_;
  DetectRequest incoming_;
  absl::Mutex mutex_;
  std::deque<DetectResponse> pending_ ABSL_GUARDED_BY(mutex_);  // front is being written
  int in_flight_ ABSL_GUARDED_BY(mutex_) = 0;
  bool reads_done_ ABSL_GUARDED_BY(mutex_) = false;
  bool read_paused_ ABSL_GUARDED_BY(mutex_) = false;
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;
  bool write_failed_ ABSL_GUARDED_BY(mutex_) = false;
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace

grpc::ServerBidiReactor<DetectRequest, DetectResponse>* AnomalyService::Inspect(grpc::CallbackServerContext* context) {
  return new InspectReactor(this, context);
}

grpc::ServerUnaryReactor* AnomalyService::PrepareClass(grpc::CallbackServerContext* context,
                                                       const anoclip::v1::PrepareClassRequest* request,
                                                       anoclip::v1::PrepareClassResponse* response) {
  // Building text features takes seconds: it runs on a worker, and the reactor answers later.
  const auto start = SteadyClock::now();
  auto* reactor = context->DefaultReactor();
  if (auto status = Admit(*context); !status.ok()) {
    metrics_->ObserveRequest("PrepareClass", CodeName(ToGrpcStatus(status).error_code()), SecondsSince(start));
    reactor->Finish(ToGrpcStatus(status));
    return reactor;
  }
  workers_->Post([this, reactor, request, response, start] {
    auto spec = PromptSpecFromProto(request->class_spec());
    absl::Status status = anomaly::BuildPromptSet(spec, options_.prompt_limits).status();
    if (status.ok()) {
      bool cached = false;
      auto text = text_bank_->Get(spec, &cached);
      status = text.status();
      if (text.ok()) {
        response->set_cached(cached);
        response->set_prompts_per_state(static_cast<int>((*text)->prompts.size(0) / 2));
        response->set_build_seconds(SecondsSince(start));
      }
    }
    const grpc::Status answer = ToGrpcStatus(status);
    metrics_->ObserveRequest("PrepareClass", CodeName(answer.error_code()), SecondsSince(start));
    reactor->Finish(answer);
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
      out->set_key(entry.key);
      out->set_hits(entry.hits);
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AnomalyService::EvictClass(grpc::CallbackServerContext* context,
                                                     const anoclip::v1::EvictClassRequest* request,
                                                     anoclip::v1::EvictClassResponse* response) {
  return Unary(context, "EvictClass", [&] {
    response->set_evicted(text_bank_->Evict(PromptSpecFromProto(request->class_spec())));
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
    response->set_max_batch(options_.batcher.max_batch);
    response->set_version(options_.version);
    return absl::OkStatus();
  });
}

}  // namespace anoclip::server
