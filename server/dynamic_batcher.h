// DynamicBatcher: collects detection requests into batches for one vision forward each.
//
// Queue policy lives here; running a batch is the caller's ProcessFn. Submit never blocks: a full
// queue answers RESOURCE_EXHAUSTED at once and the caller keeps its item (ownership moves only
// on OK). One batcher thread forms a batch when `max_batch` items wait or the oldest has waited
// `max_queue_delay`; items whose deadline passed or whose call was cancelled are answered
// DEADLINE_EXCEEDED / CANCELLED before any compute. Stop() finishes everything accepted.
#pragma once

#include <ATen/core/Tensor.h>

#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "anomaly/detector.h"

namespace anoclip::server {

// Time source; tests drive TakeReadyBatch with their own times instead of the thread.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  static const Clock* Real();
};

struct BatchItem {
  at::Tensor input;  // [3,S,S] preprocessed
  std::shared_ptr<const anomaly::TextFeatures> text;
  anomaly::DetectOptions options;
  absl::Time deadline = absl::InfiniteFuture();
  std::function<bool()> is_cancelled;  // may be empty
  absl::Time enqueued;                 // set by Submit
  // Called exactly once, from the batcher thread: with the item itself when it is dropped
  // (status not OK), otherwise by ProcessFn's owner.
  std::function<void(std::unique_ptr<BatchItem>, absl::Status)> on_dropped;
  std::shared_ptr<void> payload;  // the caller's request state
};

struct BatcherOptions {
  int max_batch = 8;
  absl::Duration max_queue_delay = absl::Milliseconds(5);
  size_t queue_capacity = 256;
  bool start_thread = true;  // false: tests call TakeReadyBatch themselves
};

class DynamicBatcher {
 public:
  using ProcessFn = std::function<void(std::vector<std::unique_ptr<BatchItem>> batch)>;

  static absl::StatusOr<std::unique_ptr<DynamicBatcher>> Create(const BatcherOptions& options, ProcessFn process,
                                                                const Clock* clock = Clock::Real());
  ~DynamicBatcher();

  // Takes ownership of *item on OK. RESOURCE_EXHAUSTED when full, UNAVAILABLE once stopping.
  absl::Status Submit(std::unique_ptr<BatchItem>* item);

  // The batch that is ready at `now` (possibly empty); dropped items are answered first.
  std::vector<std::unique_ptr<BatchItem>> TakeReadyBatch(absl::Time now);

  // Refuses new items, runs everything queued, joins the thread.
  void Stop();

  size_t queue_depth() const;

 private:
  DynamicBatcher(const BatcherOptions& options, ProcessFn process, const Clock* clock);
  void Loop();
  bool ReadyLocked(absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const BatcherOptions options_;
  const ProcessFn process_;
  const Clock* clock_;
  mutable absl::Mutex mutex_;
  std::deque<std::unique_ptr<BatchItem>> queue_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread thread_;
};

}  // namespace anoclip::server
