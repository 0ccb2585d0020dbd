#include "server/worker_pool.h"

#include "server/log.h"

namespace anoclip::server {

WorkerPool::WorkerPool(int threads, Hooks hooks) : hooks_(std::move(hooks)) {
  for (int i = 0; i < std::max(1, threads); ++i) {
    threads_.emplace_back([this] {
      if (hooks_.on_start) hooks_.on_start();
      Loop();
    });
  }
}

WorkerPool::~WorkerPool() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  for (auto& thread : threads_) thread.join();
}

void WorkerPool::Post(std::function<void()> task) {
  absl::MutexLock lock(&mutex_);
  tasks_.push_back(std::move(task));
}

size_t WorkerPool::pending() const {
  absl::MutexLock lock(&mutex_);
  return tasks_.size();
}

void WorkerPool::Loop() {
  while (true) {
    std::function<void()> task;
    {
      absl::MutexLock lock(&mutex_);
      auto ready = [this] { return stopping_ || !tasks_.empty(); };
      mutex_.Await(absl::Condition(&ready));
      if (tasks_.empty()) return;
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    try {
      task();
    } catch (const std::exception& error) {
      // Tasks answer their own requests (their state's guard does when they cannot); the pool
      // only has to survive.
      LogLine("error", "a worker task threw", {{"what", error.what()}});
    } catch (...) {
      LogLine("error", "a worker task threw");
    }
    if (hooks_.after_task) hooks_.after_task();
  }
}

}  // namespace anoclip::server
