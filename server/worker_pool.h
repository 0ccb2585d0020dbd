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
  explicit WorkerPool(int threads);
  ~WorkerPool();  // runs what is queued, then joins

  void Post(std::function<void()> task);
  size_t pending() const;

 private:
  void Loop();
  mutable absl::Mutex mutex_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace anoclip::server
