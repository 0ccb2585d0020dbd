#include "server/detect_pipeline.h"

#include <ATen/ATen.h>

#include <atomic>
#include <chrono>
#include <optional>


#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "common/stopwatch.h"
#include "image/preprocess.h"
#include "inspection/inspect.h"
#include "inspection/render.h"
#include "proto/inspection_proto.h"
#include "server/openmp_threads.h"

namespace anoclip::server {
namespace {

using anoclip::v1::DetectRequest;
using anoclip::v1::DetectResponse;
using anoclip::SteadyClock;

cv::Mat TensorToMat(const at::Tensor& map) {
  auto contiguous = map.to(at::kFloat).contiguous();
  return cv::Mat(static_cast<int>(contiguous.size(0)), static_cast<int>(contiguous.size(1)), CV_32F,
                 contiguous.data_ptr<float>())
      .clone();
}

}  // namespace

// Everything one request carries through the pipeline. Answers exactly once: Answer() is
// first-wins, and the destructor answers INTERNAL when nobody did.
struct DetectCall {
  std::shared_ptr<const DetectRequest> proto;
  DetectPipeline::DoneFn done;
  Admission::Slot slot;
  absl::Time deadline = absl::InfiniteFuture();
  std::function<bool()> is_cancelled;
  SteadyClock::time_point received = SteadyClock::now();
  absl::Time submitted;
  DetectInput input;
  anomaly::DetectOptions engine_options;
  const inspection::Calibration* calibration = nullptr;
  cv::Mat rgb;
  at::Tensor tensor;
  anomaly::TextFeaturesPtr text;
  DetectResponse response;
  std::atomic<bool> answered{false};

  bool Cancelled() const { return is_cancelled && is_cancelled(); }

  void Answer(absl::Status status, DetectResponse result = {}) {
    if (answered.exchange(true)) return;
    try {
      done(std::move(status), std::move(result));
    } catch (...) {
      // The answer callback belongs to the transport; nothing more can be said to this caller.
    }
    slot.Release();
  }

  ~DetectCall() { Answer(absl::InternalError("the request was dropped without an answer")); }
};

absl::Time DetectTask::deadline() const { return call_->deadline; }
bool DetectTask::IsCancelled() const { return call_->Cancelled(); }
void DetectTask::Fail(absl::Status status) {
  if (call_) call_->Answer(std::move(status));
}

namespace {

// Runs one stage of a request, turning anything it throws into that request's INTERNAL answer.
template <typename Stage>
void Guarded(DetectCall& call, const char* stage_name, Stage stage) {
  try {
    stage();
  } catch (const std::exception& error) {
    call.Answer(absl::InternalError(absl::StrCat(stage_name, " failed: ", error.what())));
  } catch (...) {
    call.Answer(absl::InternalError(absl::StrCat(stage_name, " failed")));
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<DetectPipeline>> DetectPipeline::Create(const anomaly::Detector* detector,
                                                                        anomaly::TextBank* text_bank,
                                                                        ServiceMetrics* metrics,
                                                                        PipelineOptions options) {
  if (options.workers < 1) {
    return absl::InvalidArgumentError(absl::StrCat("workers must be positive; was ", options.workers));
  }
  auto pipeline =
      std::unique_ptr<DetectPipeline>(new DetectPipeline(detector, text_bank, metrics, std::move(options)));
  ANOCLIP_ASSIGN_OR_RETURN(
      pipeline->batcher_,
      DynamicBatcher<DetectTask>::Create(pipeline->options_.batcher,
                                         [p = pipeline.get()](auto& batch) { p->RunBatch(batch); }));
  return pipeline;
}

DetectPipeline::DetectPipeline(const anomaly::Detector* detector, anomaly::TextBank* text_bank,
                               ServiceMetrics* metrics, PipelineOptions options)
    : detector_(detector),
      text_bank_(text_bank),
      metrics_(metrics),
      options_(std::move(options)),
      workers_(std::make_unique<WorkerPool>(options_.workers, WorkerPool::Hooks{RunTorchSeriallyOnThisThread, {}})) {}

DetectPipeline::~DetectPipeline() { Stop(); }

void DetectPipeline::Stop() {
  if (batcher_) batcher_->Stop();
  workers_.reset();  // runs the post-processing still queued
}

void DetectPipeline::Run(std::shared_ptr<const DetectRequest> request, Admission::Slot slot, absl::Time deadline,
                         std::function<bool()> is_cancelled, DoneFn done) {
  auto call = std::make_shared<DetectCall>();
  call->proto = std::move(request);
  call->slot = std::move(slot);
  call->deadline = deadline;
  call->is_cancelled = std::move(is_cancelled);
  call->done = std::move(done);
  workers_->Post([this, call] {
    Guarded(*call, "decoding", [&] {
      if (auto status = Decode(*call); !status.ok()) return call->Answer(status);
      std::weak_ptr<DetectCall> weak = call;
      text_bank_->GetAsync(
          call->input.spec,
          [weak] {
            auto c = weak.lock();
            return c == nullptr || c->answered || c->Cancelled() || absl::Now() >= c->deadline;
          },
          [this, call](absl::StatusOr<anomaly::TextFeaturesPtr> text, bool) {
            if (!text.ok()) return call->Answer(text.status());
            call->text = *std::move(text);
            Submit(call);
          });
    });
  });
}

absl::Status DetectPipeline::Decode(DetectCall& call) {
  const DetectRequest& proto = *call.proto;
  ANOCLIP_ASSIGN_OR_RETURN(call.input, ParseDetectRequest(proto, options_.request_limits));
  const DetectInput& input = call.input;
  call.engine_options.views = input.views;
  call.engine_options.tta = input.tta;
  call.engine_options.tta_options = input.tta_options;
  if (input.use_calibration) {
    auto it = options_.calibrations.find(input.spec.class_name);
    if (it == options_.calibrations.end() || it->second.kind != input.spec.kind) {
      return absl::FailedPreconditionError(
          absl::StrCat("no calibration loaded for ", input.spec.class_name, " (", input.spec.kind, ")"));
    }
    call.calibration = &it->second;
  }

  const auto decode_start = SteadyClock::now();
  if (proto.image_case() == DetectRequest::kImageBytes) {
    ANOCLIP_ASSIGN_OR_RETURN(call.rgb, image::DecodeImage(proto.image_bytes(), options_.image_limits));
  } else {
    const auto& raw = proto.raw();
    std::vector<int64_t> shape(raw.shape().begin(), raw.shape().end());
    const auto layout = raw.layout() == anoclip::v1::RawTensor::LAYOUT_CHW ? image::TensorLayout::kCHW
                                                                           : image::TensorLayout::kHWC;
    ANOCLIP_ASSIGN_OR_RETURN(call.rgb, image::ImageFromRawTensor(raw.data(), shape, layout, options_.image_limits));
  }
  const auto& config = detector_->config();
  call.tensor = image::PreprocessImage(call.rgb, config.vision.image_size,
                                       image::NormalizeOptions{config.preprocess.mean, config.preprocess.std});
  call.response.mutable_timings()->set_decode_seconds(SecondsSince(decode_start));
  return absl::OkStatus();
}

void DetectPipeline::Submit(std::shared_ptr<DetectCall> call) {
  call->submitted = absl::Now();
  auto task = std::make_unique<DetectTask>(call);
  if (auto status = batcher_->Submit(&task); !status.ok()) return call->Answer(status);
  metrics_->SetQueueDepth(static_cast<double>(batcher_->queue_depth()));
}

void DetectPipeline::RunBatch(std::vector<std::unique_ptr<DetectTask>>& batch) {
  const absl::Time now = absl::Now();
  std::vector<at::Tensor> inputs;
  std::vector<anomaly::TextFeaturesPtr> texts;
  std::vector<anomaly::DetectOptions> options;
  for (auto& task : batch) {
    DetectCall& call = task->call();
    inputs.push_back(call.tensor);
    texts.push_back(call.text);
    options.push_back(call.engine_options);
    const double queued = absl::ToDoubleSeconds(now - call.submitted);
    metrics_->ObserveQueue(queued);
    call.response.mutable_timings()->set_queue_seconds(queued);
  }
  metrics_->ObserveBatch(static_cast<int>(batch.size()));
  metrics_->SetQueueDepth(static_cast<double>(batcher_->queue_depth()));
  const auto start = SteadyClock::now();
  auto detections = detector_->Detect(at::stack(inputs), texts, options);
  metrics_->ObserveEncode(SecondsSince(start));
  if (!detections.ok()) {
    for (auto& task : batch) task->Fail(detections.status());
    return;
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    // Taken out of the batch: from here the post-processing task answers it.
    std::unique_ptr<DetectTask> task = std::move(batch[i]);
    auto call = task->TakeCall();
    call->response.mutable_timings()->set_batch_size(static_cast<int>(batch.size()));
    workers_->Post([this, call, detection = std::move((*detections)[i])] {
      Guarded(*call, "post-processing", [&] {
        if (auto status = Postprocess(*call, detection); !status.ok()) call->Answer(status);
      });
    });
  }
}

absl::Status DetectPipeline::Postprocess(DetectCall& call, const anomaly::Detection& detection) {
  const auto start = SteadyClock::now();
  const DetectInput& input = call.input;
  auto& response = call.response;
  const int model_size = detector_->config().vision.image_size;
  inspection::InspectOptions options;
  options.calibration = call.calibration;
  options.threshold = input.threshold;
  options.min_region_area = input.min_region_area;
  options.size = input.heatmap_at_input_size ? call.rgb.size() : cv::Size(model_size, model_size);
  ANOCLIP_ASSIGN_OR_RETURN(auto inspected,
                           inspection::Inspect(detection.image_score, TensorToMat(detection.anomaly_map), options));
  response.set_request_id(call.proto->request_id());
  response.set_image_score(inspected.image_score);
  response.set_max_pixel_score(inspected.max_pixel_score);
  response.set_model_id(detector_->model_id());
  response.set_class_name(input.spec.class_name);
  response.set_kind(KindToProto(input.spec.kind));
  if (inspected.calibrated_image_score) response.set_calibrated_image_score(*inspected.calibrated_image_score);
  if (inspected.is_anomalous) response.set_is_anomalous(*inspected.is_anomalous);
  inspection::RegionsToProto(inspected.regions, response.mutable_regions());

  auto* heatmap = response.mutable_heatmap();
  heatmap->set_format(input.heatmap_format);
  heatmap->set_width(inspected.scores.cols);
  heatmap->set_height(inspected.scores.rows);
  switch (input.heatmap_format) {
    case anoclip::v1::HEATMAP_FORMAT_FLOAT32:
      heatmap->set_data(inspected.scores.ptr<float>(), inspected.scores.total() * sizeof(float));
      break;
    case anoclip::v1::HEATMAP_FORMAT_PNG: {
      ANOCLIP_ASSIGN_OR_RETURN(auto png, inspection::EncodePng(inspected.heatmap));
      heatmap->set_data(std::move(png));
      break;
    }
    case anoclip::v1::HEATMAP_FORMAT_OVERLAY_PNG: {
      ANOCLIP_ASSIGN_OR_RETURN(auto png, inspection::EncodePng(inspection::RenderOverlay(call.rgb, inspected)));
      heatmap->set_data(std::move(png));
      break;
    }
    default:
      break;
  }

  auto* timings = response.mutable_timings();
  timings->set_encode_seconds(detection.encode_seconds);
  timings->set_tta_seconds(detection.tta_seconds);
  const double postprocess = SecondsSince(start);
  timings->set_postprocess_seconds(postprocess);
  timings->set_total_seconds(SecondsSince(call.received));
  metrics_->ObservePostprocess(postprocess);
  if (input.tta) metrics_->ObserveTta(detection.tta_seconds);
  metrics_->ObserveScore(input.spec.class_name, detection.image_score, inspected.is_anomalous.value_or(false));
  call.Answer(absl::OkStatus(), std::move(response));
  return absl::OkStatus();
}

}  // namespace anoclip::server
