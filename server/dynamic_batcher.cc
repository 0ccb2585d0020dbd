#include "server/dynamic_batcher.h"

#include "absl/strings/str_cat.h"

namespace anoclip::server {
namespace {

class RealClock : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
};

}  // namespace

const Clock* Clock::Real() {
  static const RealClock* clock = new RealClock();
  return clock;
}

absl::StatusOr<std::unique_ptr<DynamicBatcher>> DynamicBatcher::Create(const BatcherOptions& options,
                                                                      ProcessFn process, const Clock* clock) {
  if (options.max_batch < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_batch must be positive; was ", options.max_batch));
  }
  if (options.queue_capacity < 1) return absl::InvalidArgumentError("queue_capacity must be positive; was 0");
  if (options.max_queue_delay < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("max_queue_delay must not be negative");
  }
  if (!process) return absl::InvalidArgumentError("the batcher needs a process function");
  auto batcher = std::unique_ptr<DynamicBatcher>(new DynamicBatcher(options, std::move(process), clock));
  if (options.start_thread) batcher->thread_ = std::thread([b = batcher.get()] { b->Loop(); });
  return batcher;
}

DynamicBatcher::DynamicBatcher(const BatcherOptions& options, ProcessFn process, const Clock* clock)
    : options_(options), process_(std::move(process)), clock_(clock) {}

DynamicBatcher::~DynamicBatcher() { Stop(); }

absl::Status DynamicBatcher::Submit(std::unique_ptr<BatchItem>* item) {
  absl::MutexLock lock(&mutex_);
  if (stopping_) return absl::UnavailableError("the server is draining");
  if (queue_.size() >= options_.queue_capacity) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the request queue is full (", options_.queue_capacity, " waiting); retry later"));
  }
  (*item)->enqueued = clock_->Now();
  queue_.push_back(std::move(*item));
  return absl::OkStatus();
}

bool DynamicBatcher::ReadyLocked(absl::Time now) const {
  if (queue_.empty()) return false;
  return stopping_ || static_cast<int>(queue_.size()) >= options_.max_batch ||
         now >= queue_.front()->enqueued + options_.max_queue_delay;
}

std::vector<std::unique_ptr<BatchItem>> DynamicBatcher::TakeReadyBatch(absl::Time now) {
  std::vector<std::unique_ptr<BatchItem>> batch, dropped;
  std::vector<absl::Status> reasons;
  {
    absl::MutexLock lock(&mutex_);
    if (!ReadyLocked(now)) return batch;
    while (!queue_.empty() && static_cast<int>(batch.size()) < options_.max_batch) {
      auto item = std::move(queue_.front());
      queue_.pop_front();
      if (now >= item->deadline) {
        reasons.push_back(absl::DeadlineExceededError("the deadline passed while the request was queued"));
        dropped.push_back(std::move(item));
      } else if (item->is_cancelled && item->is_cancelled()) {
        reasons.push_back(absl::CancelledError("the call was cancelled while queued"));
        dropped.push_back(std::move(item));
      } else {
        batch.push_back(std::move(item));
      }
    }
  }
  for (size_t i = 0; i < dropped.size(); ++i) {
    auto callback = dropped[i]->on_dropped;
    if (callback) callback(std::move(dropped[i]), reasons[i]);
  }
  return batch;
}

void DynamicBatcher::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&mutex_);
      auto has_work = [this] { return stopping_ || !queue_.empty(); };
      mutex_.Await(absl::Condition(&has_work));
      if (stopping_ && queue_.empty()) return;
      auto full = [this] { return stopping_ || static_cast<int>(queue_.size()) >= options_.max_batch; };
      mutex_.AwaitWithDeadline(absl::Condition(&full), queue_.front()->enqueued + options_.max_queue_delay);
    }
    auto batch = TakeReadyBatch(clock_->Now());
    if (!batch.empty()) process_(std::move(batch));
  }
}

void DynamicBatcher::Stop() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

size_t DynamicBatcher::queue_depth() const {
  absl::MutexLock lock(&mutex_);
  return queue_.size();
}

}  // namespace anoclip::server
