#include "anomaly/text_bank.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <future>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/sha256.h"
#include "io/state_dict.h"

namespace anoclip::anomaly {
namespace {

constexpr char kCacheFormat[] = "anoclip-text-cache/2";

// SHA-256 over the tensors' shapes and bytes, in a fixed order.
std::string ContentHash(const at::Tensor& features, const at::Tensor& prompts) {
  Sha256 hash;
  for (const auto* tensor : {&features, &prompts}) {
    const auto contiguous = tensor->contiguous();
    hash.Update(c10::str(contiguous.sizes()));
    hash.Update(contiguous.data_ptr(), contiguous.nbytes());
  }
  return hash.HexDigest();
}

absl::Status ErrnoError(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

// Flushes a file's bytes to the disk, so a rename never exposes a file the kernel has not written.
absl::Status Fsync(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open", path);
  const bool ok = fsync(fd) == 0;
  close(fd);
  return ok ? absl::OkStatus() : ErrnoError("cannot fsync", path);
}

void Warn(const std::string& message) { std::cerr << "anoclip: warning: " << message << std::endl; }

}  // namespace

absl::StatusOr<std::unique_ptr<TextBank>> TextBank::Create(const TextBankOptions& options, Builder builder,
                                                           Executor executor, BuildObserver observer) {
  if (options.capacity == 0) return absl::InvalidArgumentError("text bank capacity must be positive; was 0");
  if (options.max_builds_per_minute < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_builds_per_minute must be >= 0; was ", options.max_builds_per_minute));
  }
  if (!builder) return absl::InvalidArgumentError("text bank needs a builder");
  if (!options.cache_dir.empty()) {
    std::error_code error;
    std::filesystem::create_directories(options.cache_dir, error);
    if (error) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot create text bank cache dir ", options.cache_dir, ": ", error.message()));
    }
  }
  return std::unique_ptr<TextBank>(
      new TextBank(options, std::move(builder), std::move(executor), std::move(observer)));
}

TextBank::TextBank(TextBankOptions options, Builder builder, Executor executor, BuildObserver observer)
    : options_(std::move(options)),
      builder_(std::move(builder)),
      executor_(std::move(executor)),
      observer_(std::move(observer)) {}

std::string TextBank::DiskPath(const std::string& key) const {
  return options_.cache_dir + "/" + Sha256Hex(options_.model_id + "\n" + key, 16) + ".safetensors";
}

std::string TextBank::CachePath(const PromptSpec& spec) const {
  return options_.cache_dir.empty() ? "" : DiskPath(spec.CacheKey());
}

absl::StatusOr<TextFeatures> TextBank::LoadFromDisk(const std::string& key) const {
  const std::string path = DiskPath(key);
  std::error_code error;
  if (!std::filesystem::exists(path, error)) return absl::NotFoundError(path);
  std::map<std::string, std::string> meta;
  auto tensors = io::ReadSafetensors(path, &meta);
  if (!tensors.ok()) return absl::DataLossError(std::string(tensors.status().message()));
  auto field = [&meta](const char* name) { return meta.count(name) ? meta.at(name) : std::string(); };
  if (field("format") != kCacheFormat || field("model") != options_.model_id ||
      field("key_sha256") != Sha256Hex(key)) {
    return absl::DataLossError(absl::StrCat(path, " belongs to another format, model or key"));
  }
  auto features = tensors->find("features");
  auto prompts = tensors->find("prompts");
  if (features == tensors->end() || prompts == tensors->end()) {
    return absl::DataLossError(absl::StrCat(path, " is incomplete"));
  }
  const auto& f = features->second;
  const auto& p = prompts->second;
  if (f.dim() != 2 || f.size(0) != 2 || p.dim() != 2 || p.size(0) < 2 || p.size(0) % 2 != 0 ||
      p.size(1) != f.size(1) || f.scalar_type() != at::kFloat || p.scalar_type() != at::kFloat) {
    return absl::DataLossError(absl::StrCat(path, " has unexpected shapes or dtypes"));
  }
  if (field("sha256") != ContentHash(f, p)) {
    return absl::DataLossError(absl::StrCat(path, " fails its checksum"));
  }
  return TextFeatures{f.clone(), p.clone()};
}

absl::Status TextBank::SaveToDisk(const std::string& key, const TextFeatures& features) const {
  const auto f = features.features.cpu().contiguous();
  const auto p = features.prompts.cpu().contiguous();
  const std::string path = DiskPath(key);
  static std::atomic<uint64_t> counter{0};
  const std::string temp = absl::StrCat(path, ".tmp.", getpid(), ".", counter++);
  // Written aside, flushed and renamed: a crash never leaves a half file under the real name.
  absl::Status status = io::WriteSafetensors(
      temp, {{"features", f}, {"prompts", p}},
      {{"format", kCacheFormat}, {"model", options_.model_id}, {"key_sha256", Sha256Hex(key)},
       {"sha256", ContentHash(f, p)}});
  if (status.ok()) status = Fsync(temp);
  if (status.ok() && std::rename(temp.c_str(), path.c_str()) != 0) status = ErrnoError("cannot rename", temp);
  if (status.ok()) status = Fsync(options_.cache_dir);  // the rename itself
  if (!status.ok()) {
    std::error_code ignored;
    std::filesystem::remove(temp, ignored);
  }
  return status;
}

void TextBank::InsertLocked(const std::string& key, const PromptSpec& spec, TextFeaturesPtr features) {
  if (auto it = entries_.find(key); it != entries_.end()) {
    lru_.erase(it->second.lru);
    entries_.erase(it);
  }
  lru_.push_front(key);
  entries_[key] = Entry{spec, std::move(features), 0, lru_.begin()};
  while (entries_.size() > options_.capacity) {
    entries_.erase(lru_.back());
    lru_.pop_back();
  }
  stats_.entries = static_cast<int64_t>(entries_.size());
}

TextFeaturesPtr TextBank::Lookup(const PromptSpec& spec) {
  const std::string key = spec.CacheKey();
  absl::MutexLock lock(&mutex_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return nullptr;
  ++stats_.hits;
  ++it->second.hits;
  lru_.splice(lru_.begin(), lru_, it->second.lru);
  return it->second.features;
}

bool TextBank::TakeBuildTokenLocked(absl::Time now) {
  if (options_.max_builds_per_minute == 0) return true;
  while (!recent_builds_.empty() && recent_builds_.front() <= now - absl::Minutes(1)) recent_builds_.pop_front();
  if (static_cast<int>(recent_builds_.size()) >= options_.max_builds_per_minute) return false;
  recent_builds_.push_back(now);
  return true;
}

void TextBank::Fetch(const PromptSpec& spec, GaveUp gave_up, Done done, bool rate_limited) {
  const std::string key = spec.CacheKey();
  if (auto features = Lookup(spec)) {
    done(std::move(features), true);
    return;
  }
  {
    absl::MutexLock lock(&mutex_);
    if (entries_.count(key) == 0) ++stats_.misses;  // else it landed since Lookup: one more disk read
    auto [it, leader] = flights_.try_emplace(key);
    it->second.waiters.push_back({std::move(gave_up), std::move(done)});
    if (!leader) return;
    it->second.spec = spec;
  }

  if (!options_.cache_dir.empty()) {
    auto loaded = LoadFromDisk(key);
    if (loaded.ok()) {
      {
        absl::MutexLock lock(&mutex_);
        ++stats_.disk_loads;
      }
      Finish(key, std::make_shared<const TextFeatures>(std::move(loaded).value()), true);
      return;
    }
    if (loaded.status().code() == absl::StatusCode::kDataLoss) {
      Warn(absl::StrCat("rebuilding text features: ", loaded.status().message()));
      absl::MutexLock lock(&mutex_);
      ++stats_.cache_corrupt;
    }
  }
  bool allowed;
  {
    absl::MutexLock lock(&mutex_);
    allowed = !rate_limited || TakeBuildTokenLocked(absl::Now());
    if (!allowed) ++stats_.builds_refused;
  }
  if (!allowed) {
    Finish(key,
           absl::ResourceExhaustedError(absl::StrCat("too many new classes: at most ", options_.max_builds_per_minute,
                                                     " text builds a minute; retry later or warm the class")),
           false);
    return;
  }
  if (executor_) {
    executor_([this, key] { Build(key); });
  } else {
    Build(key);
  }
}

absl::Status TextBank::CheckWaiters(const std::string& key) {
  absl::MutexLock lock(&mutex_);
  const auto& waiters = flights_.at(key).waiters;
  for (const auto& waiter : waiters) {
    if (!waiter.gave_up || !waiter.gave_up()) return absl::OkStatus();
  }
  return absl::CancelledError("every request waiting for these text features was cancelled or timed out");
}

void TextBank::Build(const std::string& key) {
  PromptSpec spec;
  {
    absl::MutexLock lock(&mutex_);
    spec = flights_.at(key).spec;
  }
  absl::StatusOr<TextFeaturesPtr> result;
  const auto start = std::chrono::steady_clock::now();
  try {
    auto built = builder_(spec, [this, &key] { return CheckWaiters(key); });
    if (built.ok()) {
      if (!options_.cache_dir.empty()) {
        if (auto saved = SaveToDisk(key, *built); !saved.ok()) {
          Warn(absl::StrCat("text features not persisted: ", saved.message()));
          absl::MutexLock lock(&mutex_);
          ++stats_.cache_write_errors;
        }
      }
      result = std::make_shared<const TextFeatures>(std::move(built).value());
    } else {
      result = built.status();
    }
  } catch (const std::exception& error) {
    result = absl::InternalError(absl::StrCat("text build failed: ", error.what()));
  } catch (...) {
    result = absl::InternalError("text build failed with an unknown exception");
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (observer_) observer_(seconds);
  {
    absl::MutexLock lock(&mutex_);
    ++stats_.builds;
    if (!result.ok()) ++stats_.build_failures;
  }
  Finish(key, std::move(result), false);
}

void TextBank::Finish(const std::string& key, absl::StatusOr<TextFeaturesPtr> result, bool cached) {
  std::vector<Waiter> waiters;
  {
    absl::MutexLock lock(&mutex_);
    auto flight = flights_.find(key);
    if (result.ok()) InsertLocked(key, flight->second.spec, *result);
    waiters = std::move(flight->second.waiters);
    flights_.erase(flight);
  }
  for (auto& waiter : waiters) {
    try {
      waiter.done(result, cached);
    } catch (const std::exception& error) {
      Warn(absl::StrCat("a text-features callback threw: ", error.what()));
    } catch (...) {
      Warn("a text-features callback threw");
    }
  }
}

absl::StatusOr<TextFeaturesPtr> TextBank::Get(const PromptSpec& spec, bool* cached) {
  std::promise<std::pair<absl::StatusOr<TextFeaturesPtr>, bool>> answer;
  auto future = answer.get_future();
  Fetch(
      spec, nullptr,
      [&answer](absl::StatusOr<TextFeaturesPtr> features, bool from_cache) {
        answer.set_value({std::move(features), from_cache});
      },
      /*rate_limited=*/false);
  auto [features, from_cache] = future.get();
  if (cached) *cached = from_cache;
  return features;
}

bool TextBank::Evict(const PromptSpec& spec) {
  const std::string key = spec.CacheKey();
  absl::MutexLock lock(&mutex_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return false;
  lru_.erase(it->second.lru);
  entries_.erase(it);
  stats_.entries = static_cast<int64_t>(entries_.size());
  return true;
}

std::vector<TextBankEntryInfo> TextBank::List() const {
  absl::MutexLock lock(&mutex_);
  std::vector<TextBankEntryInfo> list;
  for (const auto& key : lru_) {
    const auto& entry = entries_.at(key);
    list.push_back({entry.spec, key, entry.hits});
  }
  return list;
}

TextBankStats TextBank::stats() const {
  absl::MutexLock lock(&mutex_);
  return stats_;
}

}  // namespace anoclip::anomaly
