#include "server/inspect_stream.h"

#include <chrono>
#include <deque>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/log.h"

namespace anoclip::server {
namespace {

using anoclip::v1::DetectRequest;
using anoclip::v1::DetectResponse;
using anoclip::v1::InspectRequest;
using anoclip::v1::InspectResponse;
using SteadyClock = std::chrono::steady_clock;

class InspectReactor : public grpc::ServerBidiReactor<InspectRequest, InspectResponse> {
 public:
  InspectReactor(grpc::CallbackServerContext* context, Admission* admission, DetectPipeline* pipeline,
                 ServiceMetrics* metrics, const StreamOptions& options)
      : context_(context),
        admission_(admission),
        pipeline_(pipeline),
        metrics_(metrics),
        options_(options),
        request_id_(TakeRequestId(*context)) {
    auto slot = admission_->AdmitCall(*context_);
    if (!slot.ok()) {
      metrics_->ObserveRequest("Inspect", StatusCodeName(slot.status().code()), 0);
      LogCall("Inspect", request_id_, slot.status(), 0);
      finished_ = true;
      Finish(ToGrpcStatus(slot.status()));
      return;
    }
    call_slot_ = std::move(slot).value();
    absl::MutexLock lock(&mutex_);
    ReadMoreLocked();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      absl::MutexLock lock(&mutex_);
      read_pending_ = false;
      reads_done_ = true;
      MaybeFinishLocked();
      return;
    }
    auto request = std::make_shared<const DetectRequest>(std::move(*incoming_.mutable_detect()));
    incoming_.Clear();
    {
      absl::MutexLock lock(&mutex_);
      read_pending_ = false;
      ++outstanding_;
    }
    const std::string id = request->request_id();
    const auto start = SteadyClock::now();
    auto done = [this, id, start](absl::Status status, DetectResponse response) {
      const double seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
      metrics_->ObserveRequest("Inspect", StatusCodeName(status.code()), seconds);
      LogCall("Inspect", request_id_, status, seconds, {{"item_id", id}});
      InspectResponse answer;
      answer.set_request_id(id);
      if (status.ok()) {
        *answer.mutable_detection() = std::move(response);
      } else {
        answer.mutable_error()->set_code(static_cast<int>(status.code()));
        answer.mutable_error()->set_message(std::string(status.message()));
      }
      Enqueue(std::move(answer));
    };
    if (auto slot = admission_->AdmitRequest(); !slot.ok()) {
      done(slot.status(), {});
    } else {
      metrics_->in_flight().Increment();
      pipeline_->Run(request, std::move(slot).value(), absl::FromChrono(context_->deadline()),
                     [c = context_] { return c->IsCancelled(); },
                     [this, done](absl::Status status, DetectResponse response) {
                       metrics_->in_flight().Decrement();
                       done(std::move(status), std::move(response));
                     });
    }
    absl::MutexLock lock(&mutex_);
    ReadMoreLocked();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mutex_);
    pending_.pop_front();
    --outstanding_;
    if (!ok) write_failed_ = true;
    if (write_failed_) {
      // The client is gone: what is left is never written.
      outstanding_ -= static_cast<int>(pending_.size());
      pending_.clear();
    }
    if (!pending_.empty()) {
      StartWrite(&pending_.front());
    } else {
      writing_ = false;
    }
    ReadMoreLocked();
    MaybeFinishLocked();
  }

  void OnDone() override { delete this; }

 private:
  void Enqueue(InspectResponse response) {
    absl::MutexLock lock(&mutex_);
    if (write_failed_) {
      --outstanding_;
      MaybeFinishLocked();
      return;
    }
    pending_.push_back(std::move(response));
    if (!writing_) {
      writing_ = true;
      StartWrite(&pending_.front());
    }
  }

  // Reads the next request unless the stream holds its bound of unwritten responses.
  void ReadMoreLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (reads_done_ || finished_ || read_pending_ || outstanding_ >= options_.max_unwritten) return;
    read_pending_ = true;
    StartRead(&incoming_);
  }

  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (finished_ || outstanding_ != 0 || writing_) return;
    if (!reads_done_ && !write_failed_) return;
    finished_ = true;
    call_slot_.Release();
    Finish(write_failed_ ? grpc::Status(grpc::CANCELLED, "the client stopped reading") : grpc::Status::OK);
  }

  grpc::CallbackServerContext* context_;
  Admission* admission_;
  DetectPipeline* pipeline_;
  ServiceMetrics* metrics_;
  const StreamOptions options_;
  const std::string request_id_;  // the stream's x-request-id; each message has its own id too
  Admission::Slot call_slot_;
  InspectRequest incoming_;
  absl::Mutex mutex_;
  std::deque<InspectResponse> pending_ ABSL_GUARDED_BY(mutex_);  // front is being written
  int outstanding_ ABSL_GUARDED_BY(mutex_) = 0;  // read and not yet written
  bool reads_done_ ABSL_GUARDED_BY(mutex_) = false;
  bool read_pending_ ABSL_GUARDED_BY(mutex_) = false;
  bool writing_ ABSL_GUARDED_BY(mutex_) = false;
  bool write_failed_ ABSL_GUARDED_BY(mutex_) = false;
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace

grpc::ServerBidiReactor<InspectRequest, InspectResponse>* StartInspectStream(grpc::CallbackServerContext* context,
                                                                             Admission* admission,
                                                                             DetectPipeline* pipeline,
                                                                             ServiceMetrics* metrics,
                                                                             const StreamOptions& options) {
  return new InspectReactor(context, admission, pipeline, metrics, options);
}

}  // namespace anoclip::server
