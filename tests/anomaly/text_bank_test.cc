// TextBank on its own, with a stand-in builder: single flight, persistence (every key length,
// unambiguous keys, checksums, atomic writes, write errors), cancellation of builds nobody waits
// for, the build-rate limit, and builders that fail or throw.
#include "anomaly/text_bank.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <future>
#include <stdexcept>
#include <thread>

#include "absl/synchronization/notification.h"

namespace anoclip::anomaly {
namespace {

// Features that depend on the spec, so a wrong cache entry shows.
TextFeatures FakeFeatures(const PromptSpec& spec) {
  const float seed = static_cast<float>(std::hash<std::string>()(spec.CacheKey()) % 1000) / 1000.f + 0.5f;
  return {at::full({2, 4}, seed), at::full({6, 4}, seed * 2)};
}

PromptSpec Spec(const std::string& name, std::vector<std::string> domains = {}) {
  PromptSpec spec;
  spec.class_name = name;
  spec.domains = std::move(domains);
  return spec;
}

struct Harness {
  std::atomic<int> builds{0};
  std::string dir;
  std::unique_ptr<TextBank> bank;

  explicit Harness(const std::string& name, TextBankOptions options = {}) {
    dir = ::testing::TempDir() + "/text_bank_" + name;
    std::filesystem::remove_all(dir);
    if (options.cache_dir.empty()) options.cache_dir = dir;
    if (options.model_id.empty()) options.model_id = "model-a";
    bank = Make(options);
  }
  std::unique_ptr<TextBank> Make(const TextBankOptions& options) {
    return TextBank::Create(options, [this](const PromptSpec& spec, const std::function<absl::Status()>&) {
             ++builds;
             return absl::StatusOr<TextFeatures>(FakeFeatures(spec));
           }).value();
  }
};

float First(const TextFeaturesPtr& f) { return f->features.flatten()[0].item<float>(); }

TEST(TextBankTest, PersistedEntriesAreReusedForEveryKeyLength) {
  // Names of 1..8 bytes give keys of every length modulo 4 and 8.
  Harness h("lengths");
  std::vector<std::string> names = {"a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg", "abcdefgh"};
  for (const auto& name : names) ASSERT_TRUE(h.bank->Get(Spec(name)).ok());
  EXPECT_EQ(h.builds, 8);
  auto restarted = h.Make({64, h.dir, "model-a"});
  for (const auto& name : names) {
    bool cached = false;
    auto features = restarted->Get(Spec(name), &cached);
    ASSERT_TRUE(features.ok()) << features.status();
    EXPECT_TRUE(cached) << name;
    EXPECT_FLOAT_EQ(First(*features), First(std::make_shared<TextFeatures>(FakeFeatures(Spec(name)))));
  }
  EXPECT_EQ(h.builds, 8) << "a restart rebuilt what was on disk";
  EXPECT_EQ(restarted->stats().disk_loads, 8);
}

TEST(TextBankTest, SpecsThatJoinToTheSameTextHaveDifferentKeys) {
  // With a plain separator join these two would share one key.
  PromptSpec a = Spec("x", {"p\x1eq"});
  PromptSpec b = Spec("x", {"p", "q"});
  EXPECT_NE(a.CacheKey(), b.CacheKey());
  PromptSpec c = Spec("x\x1f" "object");
  EXPECT_NE(c.CacheKey(), Spec("x").CacheKey());
  // And names with control characters are refused where specs are validated.
  EXPECT_EQ(BuildPromptSet(a).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BuildPromptSet(c).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BuildPromptSet(Spec("caf\xc3")).status().code(), absl::StatusCode::kInvalidArgument) << "bad UTF-8";
  EXPECT_TRUE(BuildPromptSet(Spec("caf\xc3\xa9")).ok());
}

TEST(TextBankTest, ACorruptedCacheFileIsRebuiltCountedAndRewritten) {
  Harness h("corrupt");
  const PromptSpec spec = Spec("bottle");
  auto built = h.bank->Get(spec);
  ASSERT_TRUE(built.ok());
  const std::string path = h.bank->CachePath(spec);
  ASSERT_TRUE(std::filesystem::exists(path));
  {
    // Flip bytes inside the tensor data (the end of the file).
    std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(-8, std::ios::end);
    file.write("\x7f\x7f\x7f\x7f", 4);
  }
  auto restarted = h.Make({64, h.dir, "model-a"});
  bool cached = true;
  auto features = restarted->Get(spec, &cached);
  ASSERT_TRUE(features.ok());
  EXPECT_FALSE(cached) << "a corrupted file must not be served";
  EXPECT_FLOAT_EQ(First(*features), First(*built));
  EXPECT_EQ(restarted->stats().cache_corrupt, 1);
  EXPECT_EQ(h.builds, 2);
  // The rebuild rewrote a good file.
  auto again = h.Make({64, h.dir, "model-a"});
  ASSERT_TRUE(again->Get(spec, &cached).ok());
  EXPECT_TRUE(cached);
  EXPECT_EQ(again->stats().cache_corrupt, 0);
}

TEST(TextBankTest, TruncatedOrForeignCacheFilesAreRebuilt) {
  Harness h("truncated");
  const PromptSpec spec = Spec("carpet");
  ASSERT_TRUE(h.bank->Get(spec).ok());
  const std::string path = h.bank->CachePath(spec);
  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  auto restarted = h.Make({64, h.dir, "model-a"});
  bool cached = true;
  ASSERT_TRUE(restarted->Get(spec, &cached).ok());
  EXPECT_FALSE(cached);
  EXPECT_EQ(restarted->stats().cache_corrupt, 1);
  // Another model's bank never reads this model's files: different names, and the model id
  // inside is checked too.
  auto other = h.Make({64, h.dir, "model-b"});
  ASSERT_TRUE(other->Get(spec, &cached).ok());
  EXPECT_FALSE(cached);
  std::filesystem::copy_file(h.bank->CachePath(spec), other->CachePath(spec),
                             std::filesystem::copy_options::overwrite_existing);
  auto other_again = h.Make({64, h.dir, "model-b"});
  ASSERT_TRUE(other_again->Get(spec, &cached).ok());
  EXPECT_FALSE(cached) << "a file copied from another model must not be served";
  EXPECT_EQ(other_again->stats().cache_corrupt, 1);
}

TEST(TextBankTest, AWriteErrorIsCounted) {
  // A cache "directory" whose files cannot be created: a file stands where the temp goes.
  Harness h("write_error");
  const PromptSpec spec = Spec("wood");
  std::filesystem::create_directories(h.bank->CachePath(spec));  // the final name is a directory
  auto features = h.bank->Get(spec);
  ASSERT_TRUE(features.ok());
  EXPECT_EQ(h.bank->stats().cache_write_errors, 1) << "rename over a directory must be reported";
  for (const auto& entry : std::filesystem::directory_iterator(h.dir)) {
    EXPECT_EQ(entry.path().string().find(".tmp."), std::string::npos) << "temp file left behind";
  }
}

TEST(TextBankTest, ConcurrentMissesBuildOnceAndEveryWaiterIsAnswered) {
  absl::Notification release;
  std::atomic<int> builds{0};
  std::vector<std::function<void()>> posted;
  absl::Mutex mutex;
  auto bank = TextBank::Create(
                  {}, [&](const PromptSpec& spec, const std::function<absl::Status()>&) {
                    ++builds;
                    release.WaitForNotification();
                    return absl::StatusOr<TextFeatures>(FakeFeatures(spec));
                  },
                  [&](std::function<void()> build) { std::thread(std::move(build)).detach(); })
                  .value();
  std::atomic<int> answered{0};
  for (int i = 0; i < 5; ++i) {
    bank->GetAsync(Spec("bottle"), nullptr, [&](absl::StatusOr<TextFeaturesPtr> f, bool) {
      EXPECT_TRUE(f.ok());
      ++answered;
    });
  }
  EXPECT_EQ(answered, 0) << "GetAsync must not block on a build";
  release.Notify();
  while (answered < 5) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(builds, 1);
  EXPECT_EQ(bank->stats().builds, 1);
}

TEST(TextBankTest, ABuildStopsWhenEveryWaiterGaveUp) {
  std::atomic<bool> gave_up{false};
  int chunks = 0;
  auto bank = TextBank::Create({}, [&](const PromptSpec& spec, const std::function<absl::Status()>& check) {
                absl::Status status;
                for (chunks = 0; chunks < 100; ++chunks) {
                  if (chunks == 3) gave_up = true;  // the caller cancels mid-build
                  status = check();
                  if (!status.ok()) return absl::StatusOr<TextFeatures>(status);
                }
                return absl::StatusOr<TextFeatures>(FakeFeatures(spec));
              }).value();
  absl::Status answer;
  bank->GetAsync(Spec("bottle"), [&] { return gave_up.load(); },
                 [&](absl::StatusOr<TextFeaturesPtr> f, bool) { answer = f.status(); });
  EXPECT_EQ(answer.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(chunks, 3);
  EXPECT_EQ(bank->stats().build_failures, 1);
  EXPECT_TRUE(bank->List().empty());
}

TEST(TextBankTest, NewBuildsAreRateLimitedButCachedClassesAndStartUpAreNot) {
  Harness h("rate", {64, "", "model-a", /*max_builds_per_minute=*/2});
  auto get = [&](const std::string& name) {
    absl::Status status;
    h.bank->GetAsync(Spec(name), nullptr, [&](absl::StatusOr<TextFeaturesPtr> f, bool) { status = f.status(); });
    return status;
  };
  EXPECT_TRUE(get("a").ok());
  EXPECT_TRUE(get("b").ok());
  EXPECT_EQ(get("c").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(get("a").ok()) << "a class in memory is never refused";
  EXPECT_TRUE(h.bank->Get(Spec("d")).ok()) << "start-up warming is not rate-limited";
  EXPECT_EQ(h.bank->stats().builds_refused, 1);
}

TEST(TextBankTest, AThrowingBuilderAnswersInternal) {
  auto bank = TextBank::Create({}, [](const PromptSpec&, const std::function<absl::Status()>&)
                                       -> absl::StatusOr<TextFeatures> { throw std::runtime_error("boom"); })
                  .value();
  auto features = bank->Get(Spec("bottle"));
  EXPECT_EQ(features.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(features.status().message().find("boom"), std::string::npos);
  EXPECT_EQ(bank->stats().build_failures, 1);
}

TEST(TextBankTest, TheLeastRecentlyUsedEntryIsDropped) {
  Harness h("lru", {2, "", "m"});
  ASSERT_TRUE(h.bank->Get(Spec("a")).ok());
  ASSERT_TRUE(h.bank->Get(Spec("b")).ok());
  ASSERT_NE(h.bank->Lookup(Spec("a")), nullptr);  // a is now the most recent
  ASSERT_TRUE(h.bank->Get(Spec("c")).ok());
  EXPECT_EQ(h.bank->Lookup(Spec("b")), nullptr);
  EXPECT_NE(h.bank->Lookup(Spec("a")), nullptr);
  EXPECT_TRUE(h.bank->Evict(Spec("a")));
  EXPECT_FALSE(h.bank->Evict(Spec("a")));
}

}  // namespace
}  // namespace anoclip::anomaly
