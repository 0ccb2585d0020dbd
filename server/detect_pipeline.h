// DetectPipeline: one image request from its parsed proto to its answer.
//
//   worker pool   decode within the image limits, preprocess
//   text bank     t±, T from memory or disk at once, or built on the text-build thread
//   batcher       one vision forward per batch, mixed classes (DynamicBatcher<DetectTask>)
//   worker pool   decision, regions, heatmap encoding, then the answer
//
// Every request is answered exactly once: its state carries a guard that answers INTERNAL if the
// state is dropped unanswered (an exception on any thread, a lost callback), and every stage
// catches what its code throws. `done` never runs on the caller's thread.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "anoclip/v1/anoclip.pb.h"
#include "anomaly/detector.h"
#include "anomaly/text_bank.h"
#include "image/decode.h"
#include "inspection/calibration.h"
#include "server/admission.h"
#include "server/dynamic_batcher.h"
#include "server/metrics.h"
#include "server/request_conversion.h"
#include "server/worker_pool.h"

namespace anoclip::server {

struct PipelineOptions {
  BatcherOptions batcher;
  int workers = 4;
  image::ImageLimits image_limits;
  RequestLimits request_limits;
  std::map<std::string, inspection::Calibration> calibrations;  // by class name
};

// The per-request state; defined in the .cc file.
struct DetectCall;

// What the batcher holds for one request.
class DetectTask {
 public:
  explicit DetectTask(std::shared_ptr<DetectCall> call) : call_(std::move(call)) {}
  absl::Time deadline() const;
  bool IsCancelled() const;
  void Fail(absl::Status status);
  std::shared_ptr<DetectCall> TakeCall() { return std::move(call_); }
  DetectCall& call() { return *call_; }

 private:
  std::shared_ptr<DetectCall> call_;
};

class DetectPipeline {
 public:
  using DoneFn = std::function<void(absl::Status, anoclip::v1::DetectResponse)>;

  static absl::StatusOr<std::unique_ptr<DetectPipeline>> Create(const anomaly::Detector* detector,
                                                                anomaly::TextBank* text_bank,
                                                                ServiceMetrics* metrics, PipelineOptions options);
  ~DetectPipeline();

  // Takes one admitted request (its slot is held until the answer). `done` runs exactly once.
  void Run(std::shared_ptr<const anoclip::v1::DetectRequest> request, Admission::Slot slot, absl::Time deadline,
           std::function<bool()> is_cancelled, DoneFn done);

  // Runs `task` on the worker pool.
  void Post(std::function<void()> task) { workers_->Post(std::move(task)); }

  // Runs what the batcher holds and joins the threads.
  void Stop();
  size_t queue_depth() const { return batcher_ ? batcher_->queue_depth() : 0; }

 private:
  DetectPipeline(const anomaly::Detector* detector, anomaly::TextBank* text_bank, ServiceMetrics* metrics,
                 PipelineOptions options);
  absl::Status Decode(DetectCall& call);
  void Submit(std::shared_ptr<DetectCall> call);
  void RunBatch(std::vector<std::unique_ptr<DetectTask>>& batch);
  absl::Status Postprocess(DetectCall& call, const anomaly::Detection& detection);

  const anomaly::Detector* detector_;
  anomaly::TextBank* text_bank_;
  ServiceMetrics* metrics_;
  const PipelineOptions options_;
  std::unique_ptr<WorkerPool> workers_;
  std::unique_ptr<DynamicBatcher<DetectTask>> batcher_;
};

}  // namespace anoclip::server
