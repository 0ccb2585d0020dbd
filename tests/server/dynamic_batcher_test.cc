// Batch forming, capacity, deadlines and cancellation, on a fake clock (no batcher thread).
#include "server/dynamic_batcher.h"

#include <gtest/gtest.h>

namespace anoclip::server {
namespace {

class FakeClock : public Clock {
 public:
  absl::Time Now() const override { return now; }
  absl::Time now = absl::FromUnixSeconds(1000);
};

struct Harness {
  FakeClock clock;
  std::vector<absl::Status> dropped;
  std::unique_ptr<DynamicBatcher> batcher;

  explicit Harness(BatcherOptions options) {
    options.start_thread = false;
    batcher = DynamicBatcher::Create(options, [](auto) {}, &clock).value();
  }
  absl::Status Submit(absl::Time deadline = absl::InfiniteFuture(), bool cancelled = false) {
    auto item = std::make_unique<BatchItem>();
    item->deadline = deadline;
    item->is_cancelled = [cancelled] { return cancelled; };
    item->on_dropped = [this](std::unique_ptr<BatchItem>, absl::Status status) { dropped.push_back(status); };
    auto status = batcher->Submit(&item);
    EXPECT_EQ(item == nullptr, status.ok()) << "ownership moves only on OK";
    return status;
  }
};

BatcherOptions Options(int max_batch, int delay_ms, size_t capacity) {
  BatcherOptions options;
  options.max_batch = max_batch;
  options.max_queue_delay = absl::Milliseconds(delay_ms);
  options.queue_capacity = capacity;
  return options;
}

TEST(DynamicBatcherTest, WaitsForTheDelayThenTakesWhatIsThere) {
  Harness h(Options(4, 10, 16));
  ASSERT_TRUE(h.Submit().ok());
  ASSERT_TRUE(h.Submit().ok());
  EXPECT_TRUE(h.batcher->TakeReadyBatch(h.clock.now + absl::Milliseconds(9)).empty());
  EXPECT_EQ(h.batcher->TakeReadyBatch(h.clock.now + absl::Milliseconds(10)).size(), 2u);
  EXPECT_EQ(h.batcher->queue_depth(), 0u);
}

TEST(DynamicBatcherTest, AFullBatchGoesAtOnceAndNeverExceedsMaxBatch) {
  Harness h(Options(4, 1000, 16));
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(h.Submit().ok());
  EXPECT_EQ(h.batcher->TakeReadyBatch(h.clock.now).size(), 4u);
  EXPECT_TRUE(h.batcher->TakeReadyBatch(h.clock.now).empty());  // 2 left, not yet due
  EXPECT_EQ(h.batcher->TakeReadyBatch(h.clock.now + absl::Seconds(1)).size(), 2u);
}

TEST(DynamicBatcherTest, AFullQueueIsResourceExhaustedAtOnce) {
  Harness h(Options(4, 10, 2));
  ASSERT_TRUE(h.Submit().ok());
  ASSERT_TRUE(h.Submit().ok());
  EXPECT_EQ(h.Submit().code(), absl::StatusCode::kResourceExhausted);
}

TEST(DynamicBatcherTest, ExpiredAndCancelledItemsAreAnsweredBeforeCompute) {
  Harness h(Options(8, 10, 16));
  ASSERT_TRUE(h.Submit(h.clock.now + absl::Milliseconds(5)).ok());
  ASSERT_TRUE(h.Submit(absl::InfiniteFuture(), /*cancelled=*/true).ok());
  ASSERT_TRUE(h.Submit().ok());
  auto batch = h.batcher->TakeReadyBatch(h.clock.now + absl::Milliseconds(10));
  EXPECT_EQ(batch.size(), 1u);
  ASSERT_EQ(h.dropped.size(), 2u);
  EXPECT_EQ(h.dropped[0].code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(h.dropped[1].code(), absl::StatusCode::kCancelled);
}

TEST(DynamicBatcherTest, StoppingRefusesNewItemsAndReleasesQueuedOnes) {
  Harness h(Options(8, 1000, 16));
  ASSERT_TRUE(h.Submit().ok());
  h.batcher->Stop();
  EXPECT_EQ(h.Submit().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(h.batcher->TakeReadyBatch(h.clock.now).size(), 1u);  // due at once when stopping
}

TEST(DynamicBatcherTest, RejectsBadOptions) {
  EXPECT_EQ(DynamicBatcher::Create(Options(0, 1, 1), [](auto) {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DynamicBatcher::Create(Options(1, 1, 0), [](auto) {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DynamicBatcher::Create(Options(1, -1, 1), [](auto) {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DynamicBatcherTest, TheThreadRunsBatchesOfMixedArrivals) {
  BatcherOptions options = Options(3, 20, 64);
  std::atomic<int> processed{0}, batches{0};
  auto batcher = DynamicBatcher::Create(options, [&](std::vector<std::unique_ptr<BatchItem>> batch) {
                   EXPECT_LE(batch.size(), 3u);
                   processed += static_cast<int>(batch.size());
                   ++batches;
                 }).value();
  for (int i = 0; i < 10; ++i) {
    auto item = std::make_unique<BatchItem>();
    ASSERT_TRUE(batcher->Submit(&item).ok());
  }
  batcher->Stop();
  EXPECT_EQ(processed, 10);
  EXPECT_GE(batches, 4);
}

}  // namespace
}  // namespace anoclip::server
