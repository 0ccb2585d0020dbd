// A fixed pool of threads for decode, preprocessing and post-processing (and, as a pool of its
// own, text builds), so the gRPC callbacks and the batcher thread never do that work themselves.
// A task that throws is logged and the thread goes on. The queue is bounded by admission: only
// admitted requests post tasks.
#pragma once

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace anoclip::server {

class WorkerPool {
 public:
  // `on_start` runs first on each thread, `after_task` after each task (neither may throw).
  struct Hooks {
    std::function<void()> on_start, after_task;
  };
  explicit WorkerPool(int threads, Hooks hooks = {});
  ~WorkerPool();  // runs what is queued, then joins

  void Post(std::function<void()> task);
  size_t pending() const;

 private:
  void Loop();
  mutable absl::Mutex mutex_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  const Hooks hooks_;
  std::vector<std::thread> threads_;
};

}  // namespace anoclip::server
