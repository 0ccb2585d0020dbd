// TextBank: the text side of every class the service has seen, (class, kind or custom prompts)
// -> t±, T. An LRU of bounded capacity in memory, persisted under a cache directory keyed by
// the model id and the prompt set, so a restart does not re-encode.
//
// Thread model: Get may be called from many threads. A miss is built once even when many
// callers ask for the same key at the same time (single flight): the first caller builds, the
// others wait for its result. Builds run on the caller's thread, never under the bank's lock.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "anomaly/detector.h"
#include "anomaly/prompt_ensemble.h"

namespace anoclip::anomaly {

struct TextBankOptions {
  size_t capacity = 64;   // entries kept in memory; the least recently used is dropped
  std::string cache_dir;  // empty: no persistence
  std::string model_id;   // part of every disk key
};

struct TextBankStats {
  int64_t hits = 0;
  int64_t misses = 0;
  int64_t builds = 0;       // encoder runs
  int64_t disk_loads = 0;   // misses answered from the cache directory
  int64_t entries = 0;
};

struct TextBankEntryInfo {
  PromptSpec spec;
  std::string key;
  int64_t hits = 0;
};

class TextBank {
 public:
  using Builder = std::function<absl::StatusOr<TextFeatures>(const PromptSpec&)>;
  // Called after every encoder run with its duration, for metrics.
  using BuildObserver = std::function<void(double seconds)>;

  static absl::StatusOr<std::unique_ptr<TextBank>> Create(const TextBankOptions& options, Builder builder,
                                                          BuildObserver observer = nullptr);

  // The features for `spec`; `cached` (optional) says whether they were already in memory or
  // on disk.
  absl::StatusOr<std::shared_ptr<const TextFeatures>> Get(const PromptSpec& spec, bool* cached = nullptr);

  bool Evict(const PromptSpec& spec);
  std::vector<TextBankEntryInfo> List() const;
  TextBankStats stats() const;

 private:
  struct Flight;
  struct Entry {
    PromptSpec spec;
    std::shared_ptr<const TextFeatures> features;
    int64_t hits = 0;
    std::list<std::string>::iterator lru;
  };

  TextBank(TextBankOptions options, Builder builder, BuildObserver observer);
  std::string DiskPath(const std::string& key) const;
  absl::StatusOr<TextFeatures> LoadFromDisk(const std::string& key) const;
  void SaveToDisk(const std::string& key, const TextFeatures& features) const;
  void InsertLocked(const std::string& key, const PromptSpec& spec, std::shared_ptr<const TextFeatures> features)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const TextBankOptions options_;
  const Builder builder_;
  const BuildObserver observer_;
  mutable absl::Mutex mutex_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mutex_);
  std::list<std::string> lru_ ABSL_GUARDED_BY(mutex_);  // front = most recent
  std::map<std::string, std::shared_ptr<Flight>> flights_ ABSL_GUARDED_BY(mutex_);
  TextBankStats stats_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace anoclip::anomaly
