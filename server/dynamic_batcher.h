// DynamicBatcher<Task>: collects tasks into batches for one model call each. Knows nothing of
// the model: a task says when it expires, whether its caller gave up, and how to fail it.
//
//   absl::Time deadline() const;
//   bool IsCancelled() const;
//   void Fail(absl::Status status);  // answers the task; a no-op once it has been answered
//
// Policy. Submit never blocks: a full queue answers RESOURCE_EXHAUSTED at once and the caller
// keeps its task (ownership moves only on OK). One batcher thread runs the batches. Batches form
// because tasks arrive while the engine is busy, not by making a lone task wait: when the thread
// is idle it takes what is queued at once, up to `max_batch`. One exception keeps batches whole
// under steady load: right after a batch of n the callers it answered tend to come back together
// (closed-loop clients, cameras on one line), and the first of them would otherwise run alone
// while the rest queue behind it, so the next batch waits for them too: for the k tasks queued
// when the batch ended plus n (at most `max_batch`), at most `regroup_fraction` of the last
// batch's run time. Counting the k keeps callers from settling into groups that take turns (a
// batch of 4 running while the other 4 queue, for ever): the groups merge. After a batch of one
// with nothing queued, nothing waits.
// `max_queue_delay` > 0 lets the oldest task wait that long for the batch to fill (an upper
// bound on the added latency). Tasks
// whose deadline passed or whose caller cancelled are failed before any compute. Stop() refuses
// new tasks, runs everything accepted and joins.
//
// Completion guard. The process function receives the batch by reference and moves out the
// tasks it takes over; every task still in the batch when it returns or throws is failed with
// INTERNAL, so each task is answered exactly once on every path and an exception never ends the
// batcher thread.
#pragma once

#include <algorithm>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace anoclip::server {

// Time source; tests drive TakeReadyBatch with their own times instead of the thread.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  static const Clock* Real() {
    struct RealClock : Clock {
      absl::Time Now() const override { return absl::Now(); }
    };
    static const RealClock* clock = new RealClock();
    return clock;
  }
};

struct BatcherOptions {
  int max_batch = 8;
  absl::Duration max_queue_delay = absl::ZeroDuration();  // 0: never wait for a batch to fill
  double regroup_fraction = 0.1;  // after a batch: wait up to this share of its run time for its callers
  // Called on the batcher thread once the engine has had no work for `idle_after` since its last
  // batch (the server hands freed memory back to the system there); empty: nothing.
  std::function<void()> on_idle;
  absl::Duration idle_after = absl::Seconds(1);
  size_t queue_capacity = 256;
  bool start_thread = true;  // false: tests call TakeReadyBatch and RunBatch themselves
};

template <typename Task>
class DynamicBatcher {
 public:
  using Batch = std::vector<std::unique_ptr<Task>>;
  using ProcessFn = std::function<void(Batch& batch)>;

  static absl::StatusOr<std::unique_ptr<DynamicBatcher>> Create(const BatcherOptions& options, ProcessFn process,
                                                                const Clock* clock = Clock::Real()) {
    if (options.max_batch < 1) {
      return absl::InvalidArgumentError(absl::StrCat("max_batch must be positive; was ", options.max_batch));
    }
    if (options.queue_capacity < 1) return absl::InvalidArgumentError("queue_capacity must be positive; was 0");
    if (!(options.regroup_fraction >= 0 && options.regroup_fraction <= 1)) {
      return absl::InvalidArgumentError("regroup_fraction must be in [0, 1]");
    }
    if (options.max_queue_delay < absl::ZeroDuration()) {
      return absl::InvalidArgumentError("max_queue_delay must not be negative");
    }
    if (!process) return absl::InvalidArgumentError("the batcher needs a process function");
    auto batcher = std::unique_ptr<DynamicBatcher>(new DynamicBatcher(options, std::move(process), clock));
    if (options.start_thread) batcher->thread_ = std::thread([b = batcher.get()] { b->Loop(); });
    return batcher;
  }

  ~DynamicBatcher() { Stop(); }

  // Takes ownership of *task on OK. RESOURCE_EXHAUSTED when full, UNAVAILABLE once stopping.
  absl::Status Submit(std::unique_ptr<Task>* task) {
    absl::MutexLock lock(&mutex_);
    if (stopping_) return absl::UnavailableError("the server is draining");
    if (queue_.size() >= options_.queue_capacity) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the request queue is full (", options_.queue_capacity, " waiting); retry later"));
    }
    queue_.push_back({std::move(*task), clock_->Now()});
    return absl::OkStatus();
  }

  // The batch that is ready at `now` (possibly empty); expired and cancelled tasks are failed.
  Batch TakeReadyBatch(absl::Time now) {
    Batch batch, dropped;
    std::vector<absl::Status> reasons;
    {
      absl::MutexLock lock(&mutex_);
      if (!ReadyLocked(now)) return batch;
      while (!queue_.empty() && static_cast<int>(batch.size()) < options_.max_batch) {
        auto task = std::move(queue_.front().task);
        queue_.pop_front();
        if (now >= task->deadline()) {
          reasons.push_back(absl::DeadlineExceededError("the deadline passed while the request was queued"));
          dropped.push_back(std::move(task));
        } else if (task->IsCancelled()) {
          reasons.push_back(absl::CancelledError("the call was cancelled while queued"));
          dropped.push_back(std::move(task));
        } else {
          batch.push_back(std::move(task));
        }
      }
    }
    for (size_t i = 0; i < dropped.size(); ++i) FailQuietly(*dropped[i], reasons[i]);
    return batch;
  }

  // Runs one batch through the process function under the completion guard.
  void RunBatch(Batch batch) {
    const int size = static_cast<int>(batch.size());
    const absl::Time start = clock_->Now();
    absl::Status leftover = absl::InternalError("the batch ended without answering this request");
    try {
      process_(batch);
    } catch (const std::exception& error) {
      leftover = absl::InternalError(absl::StrCat("the batch failed: ", error.what()));
    } catch (...) {
      leftover = absl::InternalError("the batch failed with an unknown exception");
    }
    for (auto& task : batch) {
      if (task) FailQuietly(*task, leftover);
    }
    const absl::Time end = clock_->Now();
    absl::MutexLock lock(&mutex_);
    const int expected = std::min(options_.max_batch, size + static_cast<int>(queue_.size()));
    regroup_size_ = expected > 1 ? expected : 0;
    regroup_until_ = end + (end - start) * options_.regroup_fraction;
  }

  // Refuses new tasks, runs everything queued, joins the thread.
  void Stop() {
    {
      absl::MutexLock lock(&mutex_);
      stopping_ = true;
    }
    if (thread_.joinable()) thread_.join();
  }

  size_t queue_depth() const {
    absl::MutexLock lock(&mutex_);
    return queue_.size();
  }

 private:
  struct Queued {
    std::unique_ptr<Task> task;
    absl::Time enqueued;
  };

  DynamicBatcher(const BatcherOptions& options, ProcessFn process, const Clock* clock)
      : options_(options), process_(std::move(process)), clock_(clock) {}

  bool RegroupingLocked(absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return static_cast<int>(queue_.size()) < regroup_size_ && now < regroup_until_;
  }

  bool ReadyLocked(absl::Time now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    if (queue_.empty()) return false;
    if (stopping_ || static_cast<int>(queue_.size()) >= options_.max_batch) return true;
    return !RegroupingLocked(now) && now >= queue_.front().enqueued + options_.max_queue_delay;
  }

  // When the queue as it is becomes ready by time alone.
  absl::Time ReadyByTimeLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    absl::Time at = queue_.front().enqueued + options_.max_queue_delay;
    if (static_cast<int>(queue_.size()) < regroup_size_) at = std::max(at, regroup_until_);
    return at;
  }

  static void FailQuietly(Task& task, const absl::Status& status) {
    try {
      task.Fail(status);
    } catch (...) {
      // A failing answer must not end the batcher thread; the task's own guard still answers.
    }
  }

  void Loop() {
    bool idle_reported = true;  // nothing to report before the first batch
    while (true) {
      bool idle = false;
      {
        absl::MutexLock lock(&mutex_);
        auto has_work = [this]() { return stopping_ || !queue_.empty(); };
        if (!idle_reported && options_.on_idle) {
          idle = !mutex_.AwaitWithTimeout(absl::Condition(&has_work), options_.idle_after);
        } else {
          mutex_.Await(absl::Condition(&has_work));
        }
        if (!idle) {
          if (stopping_ && queue_.empty()) return;
          auto ready = [this]() { return ReadyLocked(clock_->Now()); };
          if (!ready()) mutex_.AwaitWithDeadline(absl::Condition(&ready), ReadyByTimeLocked());
        }
      }
      if (idle) {
        idle_reported = true;
        try {
          options_.on_idle();
        } catch (...) {
          // An idle hook must not end the batcher thread.
        }
        continue;
      }
      auto batch = TakeReadyBatch(clock_->Now());
      if (!batch.empty()) {
        RunBatch(std::move(batch));
        idle_reported = false;
      }
    }
  }

  const BatcherOptions options_;
  const ProcessFn process_;
  const Clock* clock_;
  mutable absl::Mutex mutex_;
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  int regroup_size_ ABSL_GUARDED_BY(mutex_) = 0;  // the batch the last one's end expects, when > 1
  absl::Time regroup_until_ ABSL_GUARDED_BY(mutex_);
  std::thread thread_;
};

}  // namespace anoclip::server
