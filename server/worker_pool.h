// A fixed pool of threads for decode, preprocessing, text-bank builds and post-processing, so the
// gRPC callbacks and the batcher thread never do that work themselves.
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

 private:
  void Loop();
  absl::Mutex mutex_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace anoclip::server
