// DynamicBatcher<Task>: batch forming, capacity, deadlines, cancellation and the completion
// guard, on a fake clock with the caller running batches (no batcher thread), plus the thread's
// policy with an engine stand-in that the test holds busy.
#include "server/dynamic_batcher.h"

#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>

namespace anoclip::server {
namespace {

class FakeClock : public Clock {
 public:
  absl::Time Now() const override { return now; }
  absl::Time now = absl::FromUnixSeconds(1000);
};

// A task that records every answer it gets, so "exactly once" can be checked.
struct Answers {
  absl::Mutex mutex;
  std::vector<std::pair<int, absl::Status>> list;  // (task id, status)
  void Add(int id, absl::Status status) {
    absl::MutexLock lock(&mutex);
    list.emplace_back(id, std::move(status));
  }
  size_t size() {
    absl::MutexLock lock(&mutex);
    return list.size();
  }
};

class FakeTask {
 public:
  FakeTask(int id, Answers* answers, absl::Time deadline = absl::InfiniteFuture(), bool cancelled = false)
      : id_(id), answers_(answers), deadline_(deadline), cancelled_(cancelled) {}
  absl::Time deadline() const { return deadline_; }
  bool IsCancelled() const { return cancelled_; }
  void Fail(absl::Status status) { Answer(std::move(status)); }
  void Answer(absl::Status status) {
    if (answered_.exchange(true)) return;
    answers_->Add(id_, std::move(status));
  }
  int id() const { return id_; }

 private:
  int id_;
  Answers* answers_;
  absl::Time deadline_;
  bool cancelled_;
  std::atomic<bool> answered_{false};
};

using Batcher = DynamicBatcher<FakeTask>;

BatcherOptions Options(int max_batch, int delay_ms, size_t capacity, bool thread = false) {
  BatcherOptions options;
  options.max_batch = max_batch;
  options.max_queue_delay = absl::Milliseconds(delay_ms);
  options.queue_capacity = capacity;
  options.start_thread = thread;
  return options;
}

struct Harness {
  FakeClock clock;
  Answers answers;
  std::unique_ptr<Batcher> batcher;
  int next_id = 0;

  explicit Harness(BatcherOptions options, Batcher::ProcessFn process = [](Batcher::Batch&) {}) {
    batcher = Batcher::Create(options, std::move(process), &clock).value();
  }
  absl::Status Submit(absl::Time deadline = absl::InfiniteFuture(), bool cancelled = false) {
    auto task = std::make_unique<FakeTask>(next_id++, &answers, deadline, cancelled);
    auto status = batcher->Submit(&task);
    EXPECT_EQ(task == nullptr, status.ok()) << "ownership moves only on OK";
    return status;
  }
};

// The policy tests' engine stand-in: each batch takes one second of the harness's clock and
// answers its tasks.
struct TimedHarness : Harness {
  explicit TimedHarness(BatcherOptions options)
      : Harness(options, [this](Batcher::Batch& batch) {
          clock.now += absl::Seconds(1);
          for (auto& task : batch) task->Answer(absl::OkStatus());
        }) {}
  void SubmitMany(int count) {
    for (int i = 0; i < count; ++i) ASSERT_TRUE(Submit().ok());
  }
};

TEST(DynamicBatcherTest, WithoutADelayWhatIsQueuedGoesAtOnce) {
  Harness h(Options(4, 0, 16));
  ASSERT_TRUE(h.Submit().ok());
  EXPECT_EQ(h.batcher->TakeReadyBatch(h.clock.now).size(), 1u);
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(h.Submit().ok());
  EXPECT_EQ(h.batcher->TakeReadyBatch(h.clock.now).size(), 4u);  // never more than max_batch
  EXPECT_EQ(h.batcher->TakeReadyBatch(h.clock.now).size(), 2u);
}

TEST(DynamicBatcherTest, ADelayIsAnUpperBoundOnTheWaitForABatchToFill) {
  Harness h(Options(4, 10, 16));
  ASSERT_TRUE(h.Submit().ok());
  ASSERT_TRUE(h.Submit().ok());
  EXPECT_TRUE(h.batcher->TakeReadyBatch(h.clock.now + absl::Milliseconds(9)).empty());
  EXPECT_EQ(h.batcher->TakeReadyBatch(h.clock.now + absl::Milliseconds(10)).size(), 2u);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(h.Submit().ok());
  EXPECT_EQ(h.batcher->TakeReadyBatch(h.clock.now).size(), 4u) << "a full batch does not wait";
}

// After a batch of several the next one waits, briefly, for as many tasks; after a batch of one
// nothing waits. The engine stand-in takes one second of the fake clock per batch.
TEST(DynamicBatcherTest, AfterABatchOfSeveralTheNextWaitsBrieflyForAsMany) {
  TimedHarness h(Options(8, 0, 16));
  h.SubmitMany(3);
  auto batch = h.batcher->TakeReadyBatch(h.clock.now);
  ASSERT_EQ(batch.size(), 3u);
  h.batcher->RunBatch(std::move(batch));  // 1 s: the next batch may wait up to 100 ms for 3
  h.SubmitMany(1);
  EXPECT_TRUE(h.batcher->TakeReadyBatch(h.clock.now).empty());
  EXPECT_TRUE(h.batcher->TakeReadyBatch(h.clock.now + absl::Milliseconds(99)).empty());
  h.SubmitMany(2);
  batch = h.batcher->TakeReadyBatch(h.clock.now);
  EXPECT_EQ(batch.size(), 3u) << "the batch is whole again";
  h.batcher->RunBatch(std::move(batch));
  h.SubmitMany(1);
  EXPECT_TRUE(h.batcher->TakeReadyBatch(h.clock.now).empty());
  batch = h.batcher->TakeReadyBatch(h.clock.now + absl::Milliseconds(100));
  ASSERT_EQ(batch.size(), 1u) << "the wait is bounded";
  h.batcher->RunBatch(std::move(batch));
  h.SubmitMany(1);
  batch = h.batcher->TakeReadyBatch(h.clock.now);
  ASSERT_EQ(batch.size(), 1u) << "after a batch of one nothing waits";
  h.batcher->RunBatch(std::move(batch));
  EXPECT_EQ(h.answers.size(), 8u);
}

// Callers split into two groups that take turns (one batch running while the other queues) merge
// again: the next batch waits for the queued group and the one just answered. The same holds
// for two lone callers; the wait stays bounded and capped at max_batch.
TEST(DynamicBatcherTest, GroupsThatTakeTurnsMergeIntoOneBatch) {
  TimedHarness h(Options(8, 0, 32));
  h.SubmitMany(4);
  auto batch = h.batcher->TakeReadyBatch(h.clock.now);
  ASSERT_EQ(batch.size(), 4u);
  h.SubmitMany(4);  // the other group arrives while the first runs
  h.batcher->RunBatch(std::move(batch));  // ends with 4 queued: the next batch expects 8
  EXPECT_TRUE(h.batcher->TakeReadyBatch(h.clock.now + absl::Milliseconds(99)).empty());
  h.SubmitMany(4);  // the first group comes back
  batch = h.batcher->TakeReadyBatch(h.clock.now);
  ASSERT_EQ(batch.size(), 8u) << "the two groups run as one batch";
  h.SubmitMany(6);  // six arrive during the batch of 8
  h.batcher->RunBatch(std::move(batch));  // it expects 8 + 6, capped at max_batch: 8
  EXPECT_TRUE(h.batcher->TakeReadyBatch(h.clock.now).empty());
  h.SubmitMany(2);
  batch = h.batcher->TakeReadyBatch(h.clock.now);
  ASSERT_EQ(batch.size(), 8u);
  h.batcher->RunBatch(std::move(batch));
  // Two lone callers taking turns: a batch of one that ends with one queued waits for two.
  h.SubmitMany(1);
  batch = h.batcher->TakeReadyBatch(h.clock.now + absl::Seconds(1));
  ASSERT_EQ(batch.size(), 1u);
  h.SubmitMany(1);
  h.batcher->RunBatch(std::move(batch));
  EXPECT_TRUE(h.batcher->TakeReadyBatch(h.clock.now).empty());
  batch = h.batcher->TakeReadyBatch(h.clock.now + absl::Milliseconds(100));
  ASSERT_EQ(batch.size(), 1u) << "the wait is bounded";
  h.batcher->RunBatch(std::move(batch));
  EXPECT_EQ(h.answers.size(), 4u + 8u + 8u + 1u + 1u);
}

TEST(DynamicBatcherTest, AFullQueueIsResourceExhaustedAtOnce) {
  Harness h(Options(2, 1000, 3));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(h.Submit().ok());
  EXPECT_EQ(h.Submit().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(h.answers.size(), 0u) << "a refused task is the caller's to answer";
}

TEST(DynamicBatcherTest, ExpiredAndCancelledTasksAreFailedBeforeCompute) {
  Harness h(Options(8, 0, 16));
  ASSERT_TRUE(h.Submit(h.clock.now - absl::Seconds(1)).ok());
  ASSERT_TRUE(h.Submit(absl::InfiniteFuture(), /*cancelled=*/true).ok());
  ASSERT_TRUE(h.Submit().ok());
  auto batch = h.batcher->TakeReadyBatch(h.clock.now);
  ASSERT_EQ(batch.size(), 1u);
  EXPECT_EQ(batch[0]->id(), 2);
  ASSERT_EQ(h.answers.size(), 2u);
  EXPECT_EQ(h.answers.list[0].second.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(h.answers.list[1].second.code(), absl::StatusCode::kCancelled);
}

TEST(DynamicBatcherTest, TasksTheProcessLeavesUnansweredAreFailedOnce) {
  // The process answers task 0, hands task 1 over (moves it out) and forgets task 2.
  std::unique_ptr<FakeTask> taken;
  Harness h(Options(8, 0, 16), [&](Batcher::Batch& batch) {
    batch[0]->Answer(absl::OkStatus());
    taken = std::move(batch[1]);
  });
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(h.Submit().ok());
  h.batcher->RunBatch(h.batcher->TakeReadyBatch(h.clock.now));
  ASSERT_EQ(h.answers.size(), 2u);
  EXPECT_EQ(h.answers.list[0], std::make_pair(0, absl::OkStatus()));
  EXPECT_EQ(h.answers.list[1].first, 2);
  EXPECT_EQ(h.answers.list[1].second.code(), absl::StatusCode::kInternal);
  ASSERT_NE(taken, nullptr) << "a task moved out is the process's to answer";
}

TEST(DynamicBatcherTest, AThrowingProcessFailsItsBatchWithInternalAndTheBatcherGoesOn) {
  int runs = 0;
  Harness h(Options(2, 0, 16), [&](Batcher::Batch& batch) {
    if (++runs == 1) throw std::runtime_error("engine blew up");
    for (auto& task : batch) task->Answer(absl::OkStatus());
  });
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(h.Submit().ok());
  h.batcher->RunBatch(h.batcher->TakeReadyBatch(h.clock.now));
  h.batcher->RunBatch(h.batcher->TakeReadyBatch(h.clock.now));
  ASSERT_EQ(h.answers.size(), 4u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(h.answers.list[i].second.code(), absl::StatusCode::kInternal);
    EXPECT_NE(h.answers.list[i].second.message().find("engine blew up"), std::string::npos);
  }
  EXPECT_TRUE(h.answers.list[2].second.ok());
  EXPECT_TRUE(h.answers.list[3].second.ok());
}

TEST(DynamicBatcherTest, RejectsBadOptions) {
  auto noop = [](Batcher::Batch&) {};
  EXPECT_EQ(Batcher::Create(Options(0, 1, 1), noop).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Batcher::Create(Options(1, 1, 0), noop).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Batcher::Create(Options(1, -1, 1), noop).status().code(), absl::StatusCode::kInvalidArgument);
  auto regroup = Options(1, 0, 1);
  regroup.regroup_fraction = 1.5;
  EXPECT_EQ(Batcher::Create(regroup, noop).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Batcher::Create(Options(1, 1, 1), nullptr).status().code(), absl::StatusCode::kInvalidArgument);
}

// The thread: a lone task runs at once; tasks arriving while the engine is busy form the next
// batch. The engine stand-in blocks until the test releases it, so the order is deterministic.
TEST(DynamicBatcherTest, TheThreadRunsALoneTaskAtOnceAndBatchesWhatArrivesWhileBusy) {
  absl::Mutex mutex;
  bool release = false;
  std::vector<size_t> sizes;
  Answers answers;
  auto batcher = Batcher::Create(Options(4, /*delay_ms=*/0, 64, /*thread=*/true), [&](Batcher::Batch& batch) {
                   absl::MutexLock lock(&mutex);
                   sizes.push_back(batch.size());
                   if (sizes.size() == 1) mutex.Await(absl::Condition(&release));  // hold the first batch
                   for (auto& task : batch) task->Answer(absl::OkStatus());
                 }).value();
  auto submit = [&](int id) {
    auto task = std::make_unique<FakeTask>(id, &answers);
    ASSERT_TRUE(batcher->Submit(&task).ok());
  };
  submit(0);
  {
    absl::MutexLock lock(&mutex);
    auto started = [&] { return sizes.size() == 1; };
    mutex.Await(absl::Condition(&started));  // with no delay, the lone task is already running
  }
  for (int i = 1; i <= 6; ++i) submit(i);  // the engine is busy: these queue
  {
    absl::MutexLock lock(&mutex);
    release = true;
  }
  batcher->Stop();
  EXPECT_EQ(sizes, (std::vector<size_t>{1, 4, 2}));
  EXPECT_EQ(answers.size(), 7u);
}

// The idle hook runs once per quiet spell after work, on the batcher thread, and a throwing hook
// does not end the thread.
TEST(DynamicBatcherTest, TheIdleHookRunsOnceAfterEachBurstAndMayThrow) {
  absl::Mutex mutex;
  int idles = 0;
  auto options = Options(4, 0, 16, /*thread=*/true);
  options.idle_after = absl::Milliseconds(20);
  options.on_idle = [&] {
    absl::MutexLock lock(&mutex);
    ++idles;
    throw std::runtime_error("hook failed");
  };
  Answers answers;
  auto batcher = Batcher::Create(options, [&](Batcher::Batch& batch) {
                   for (auto& task : batch) task->Answer(absl::OkStatus());
                 }).value();
  auto idle_count = [&](int expected) {
    absl::MutexLock lock(&mutex);
    auto reached = [&] { return idles >= expected; };
    return mutex.AwaitWithTimeout(absl::Condition(&reached), absl::Seconds(30)) ? idles : -1;
  };
  for (int burst = 1; burst <= 2; ++burst) {
    auto task = std::make_unique<FakeTask>(burst, &answers);
    ASSERT_TRUE(batcher->Submit(&task).ok());
    EXPECT_EQ(idle_count(burst), burst);
  }
  absl::SleepFor(absl::Milliseconds(100));  // five more idle periods: no further call
  EXPECT_EQ(idle_count(2), 2);
  batcher->Stop();
  EXPECT_EQ(answers.size(), 2u);
}

TEST(DynamicBatcherTest, StopRefusesNewTasksAndRunsQueuedOnes) {
  Answers answers;
  auto batcher = Batcher::Create(Options(2, 60000, 16, /*thread=*/true), [&](Batcher::Batch& batch) {
                   for (auto& task : batch) task->Answer(absl::OkStatus());
                 }).value();
  for (int i = 0; i < 3; ++i) {
    auto task = std::make_unique<FakeTask>(i, &answers);
    ASSERT_TRUE(batcher->Submit(&task).ok());
  }
  batcher->Stop();
  EXPECT_EQ(answers.size(), 3u);
  auto late = std::make_unique<FakeTask>(9, &answers);
  EXPECT_EQ(batcher->Submit(&late).code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace anoclip::server
