// TextBank: the text side of every class the service has seen, (class, kind or custom prompts)
// -> t±, T. An LRU of bounded capacity in memory, persisted under a cache directory keyed by
// the model id and the prompt set, so a restart does not re-encode.
//
// Thread model: GetAsync never blocks on a build. A key in memory is answered at once on the
// caller's thread; a key in the cache directory is loaded (checksum verified) on the caller's
// thread; any other key is built once (single flight) on the executor given at creation, and
// every caller waiting for it is answered from there. A build runs in chunks and stops early
// when every caller waiting for it has given up (cancelled, or past its deadline). New builds can
// be rate-limited, so names made up by a client cannot keep the encoder busy.
//
// Cache files: safetensors with the features and, in the header, the model id, a hash of the
// key and a SHA-256 of the tensor bytes. A file that fails any check is rebuilt with a warning
// and counted (stats().cache_corrupt); files are written to a temporary name, fsynced and
// renamed, and write errors are counted and reported, never ignored.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "anomaly/detector.h"
#include "anomaly/prompt_ensemble.h"

namespace anoclip::anomaly {

struct TextBankOptions {
  size_t capacity = 64;             // entries kept in memory; the least recently used is dropped
  std::string cache_dir;            // empty: no persistence
  std::string model_id;             // part of every disk key
  int max_builds_per_minute = 0;    // encoder runs for keys in neither memory nor disk; 0 = no limit
};

struct TextBankStats {
  int64_t hits = 0;
  int64_t misses = 0;
  int64_t builds = 0;              // encoder runs
  int64_t build_failures = 0;      // encoder runs that failed or were stopped
  int64_t builds_refused = 0;      // refused by the rate limit
  int64_t disk_loads = 0;          // misses answered from the cache directory
  int64_t cache_corrupt = 0;       // cache files that failed verification (rebuilt)
  int64_t cache_write_errors = 0;  // cache files that could not be written
  int64_t entries = 0;
};

struct TextBankEntryInfo {
  PromptSpec spec;
  std::string key;
  int64_t hits = 0;
};

using TextFeaturesPtr = std::shared_ptr<const TextFeatures>;

class TextBank {
 public:
  // Builds the features; calls `check` between chunks and stops with its error.
  using Builder = std::function<absl::StatusOr<TextFeatures>(const PromptSpec&, const std::function<absl::Status()>& check)>;
  // Runs a build off the caller's thread; null runs it on the caller's thread.
  using Executor = std::function<void(std::function<void()>)>;
  // Called after every encoder run with its duration, for metrics.
  using BuildObserver = std::function<void(double seconds)>;
  // True once the caller no longer wants the answer.
  using GaveUp = std::function<bool()>;
  // The answer; `cached` says whether it came from memory or disk rather than a build.
  using Done = std::function<void(absl::StatusOr<TextFeaturesPtr> features, bool cached)>;

  static absl::StatusOr<std::unique_ptr<TextBank>> Create(const TextBankOptions& options, Builder builder,
                                                          Executor executor = nullptr,
                                                          BuildObserver observer = nullptr);

  // The features in memory, or null; counts a hit.
  TextFeaturesPtr Lookup(const PromptSpec& spec);
  // Answers `done` exactly once: at once when in memory or on disk, else when the build ends.
  // A new build counts against max_builds_per_minute.
  void GetAsync(const PromptSpec& spec, GaveUp gave_up, Done done) {
    Fetch(spec, std::move(gave_up), std::move(done), /*rate_limited=*/true);
  }
  // Blocking, not rate-limited: for start-up (warm classes) and tools.
  absl::StatusOr<TextFeaturesPtr> Get(const PromptSpec& spec, bool* cached = nullptr);

  bool Evict(const PromptSpec& spec);
  std::vector<TextBankEntryInfo> List() const;
  TextBankStats stats() const;
  // Where the cache file of `spec` lives (for tools and tests); empty without a cache dir.
  std::string CachePath(const PromptSpec& spec) const;

 private:
  struct Waiter {
    GaveUp gave_up;
    Done done;
  };
  struct Flight {
    PromptSpec spec;
    std::vector<Waiter> waiters;
  };
  struct Entry {
    PromptSpec spec;
    TextFeaturesPtr features;
    int64_t hits = 0;
    std::list<std::string>::iterator lru;
  };

  TextBank(TextBankOptions options, Builder builder, Executor executor, BuildObserver observer);
  void Fetch(const PromptSpec& spec, GaveUp gave_up, Done done, bool rate_limited);
  std::string DiskPath(const std::string& key) const;
  absl::StatusOr<TextFeatures> LoadFromDisk(const std::string& key) const;
  absl::Status SaveToDisk(const std::string& key, const TextFeatures& features) const;
  void Build(const std::string& key);
  absl::Status CheckWaiters(const std::string& key);
  bool TakeBuildTokenLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void Finish(const std::string& key, absl::StatusOr<TextFeaturesPtr> result, bool cached);
  void InsertLocked(const std::string& key, const PromptSpec& spec, TextFeaturesPtr features)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const TextBankOptions options_;
  const Builder builder_;
  const Executor executor_;
  const BuildObserver observer_;
  mutable absl::Mutex mutex_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mutex_);
  std::list<std::string> lru_ ABSL_GUARDED_BY(mutex_);  // front = most recent
  std::map<std::string, Flight> flights_ ABSL_GUARDED_BY(mutex_);
  std::deque<absl::Time> recent_builds_ ABSL_GUARDED_BY(mutex_);  // starts within the last minute
  TextBankStats stats_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace anoclip::anomaly
