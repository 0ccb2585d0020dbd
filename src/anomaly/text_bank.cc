#include "anomaly/text_bank.h"

#include <ATen/ATen.h>
#include <openssl/evp.h>

#include <chrono>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "io/state_dict.h"

namespace anoclip::anomaly {

// One build in progress; waiters block on `done`.
struct TextBank::Flight {
  bool done = false;
  absl::StatusOr<std::shared_ptr<const TextFeatures>> result = absl::UnknownError("pending");
};

namespace {

std::string Sha256Hex(const std::string& text) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(text.data(), text.size(), digest, &length, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned int i = 0; i < 16; ++i) absl::StrAppendFormat(&hex, "%02x", digest[i]);
  return hex;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TextBank>> TextBank::Create(const TextBankOptions& options, Builder builder,
                                                           BuildObserver observer) {
  if (options.capacity == 0) return absl::InvalidArgumentError("text bank capacity must be positive; was 0");
  if (!builder) return absl::InvalidArgumentError("text bank needs a builder");
  if (!options.cache_dir.empty()) {
    std::error_code error;
    std::filesystem::create_directories(options.cache_dir, error);
    if (error) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot create text bank cache dir ", options.cache_dir, ": ", error.message()));
    }
  }
  return std::unique_ptr<TextBank>(new TextBank(options, std::move(builder), std::move(observer)));
}

TextBank::TextBank(TextBankOptions options, Builder builder, BuildObserver observer)
    : options_(std::move(options)), builder_(std::move(builder)), observer_(std::move(observer)) {}

std::string TextBank::DiskPath(const std::string& key) const {
  return options_.cache_dir + "/" + Sha256Hex(options_.model_id + "\n" + key) + ".safetensors";
}

absl::StatusOr<TextFeatures> TextBank::LoadFromDisk(const std::string& key) const {
  if (options_.cache_dir.empty()) return absl::NotFoundError("no cache dir");
  const std::string path = DiskPath(key);
  std::error_code error;
  if (!std::filesystem::exists(path, error)) return absl::NotFoundError(path);
  auto tensors = io::ReadSafetensors(path);
  if (!tensors.ok()) return tensors.status();
  // The key and model id are stored beside the tensors and must match exactly.
  auto meta = tensors->find("meta/key");
  auto model = tensors->find("meta/model");
  auto features = tensors->find("features");
  auto prompts = tensors->find("prompts");
  if (meta == tensors->end() || model == tensors->end() || features == tensors->end() || prompts == tensors->end()) {
    return absl::DataLossError(absl::StrCat(path, " is incomplete"));
  }
  auto as_string = [](const at::Tensor& t) {
    return std::string(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  };
  if (as_string(meta->second) != key || as_string(model->second) != options_.model_id) {
    return absl::DataLossError(absl::StrCat(path, " belongs to another key or model"));
  }
  if (features->second.dim() != 2 || features->second.size(0) != 2 || prompts->second.dim() != 2 ||
      prompts->second.size(1) != features->second.size(1) || features->second.scalar_type() != at::kFloat) {
    return absl::DataLossError(absl::StrCat(path, " has unexpected shapes"));
  }
  return TextFeatures{features->second.clone(), prompts->second.clone()};
}

void TextBank::SaveToDisk(const std::string& key, const TextFeatures& features) const {
  if (options_.cache_dir.empty()) return;
  auto bytes = [](const std::string& s) {
    // Stored as I32 so safetensors can hold them; padded to whole elements.
    std::string padded = s;
    padded.append((4 - padded.size() % 4) % 4, '\0');
    auto t = at::empty({static_cast<int64_t>(padded.size() / 4)}, at::kInt);
    std::memcpy(t.data_ptr(), padded.data(), padded.size());
    return t;
  };
  const std::string path = DiskPath(key);
  const std::string temp = path + ".tmp" + std::to_string(reinterpret_cast<uintptr_t>(&features));
  // Written aside and renamed, so a crash never leaves a half file under the real name.
  if (io::WriteSafetensors(temp, {{"features", features.features.cpu()},
                                  {"prompts", features.prompts.cpu()},
                                  {"meta/key", bytes(key)},
                                  {"meta/model", bytes(options_.model_id)}})
          .ok()) {
    std::error_code error;
    std::filesystem::rename(temp, path, error);
  }
}

void TextBank::InsertLocked(const std::string& key, const PromptSpec& spec,
                            std::shared_ptr<const TextFeatures> features) {
  lru_.push_front(key);
  entries_[key] = Entry{spec, std::move(features), 0, lru_.begin()};
  while (entries_.size() > options_.capacity) {
    entries_.erase(lru_.back());
    lru_.pop_back();
  }
  stats_.entries = static_cast<int64_t>(entries_.size());
}

absl::StatusOr<std::shared_ptr<const TextFeatures>> TextBank::Get(const PromptSpec& spec, bool* cached) {
  // The key is the canonical spec: padded zeros or string quirks cannot alias two entries.
  const std::string key = spec.CacheKey();
  std::shared_ptr<Flight> flight;
  bool leader = false;
  {
    absl::MutexLock lock(&mutex_);
    if (auto it = entries_.find(key); it != entries_.end()) {
      ++stats_.hits;
      ++it->second.hits;
      lru_.splice(lru_.begin(), lru_, it->second.lru);
      if (cached) *cached = true;
      return it->second.features;
    }
    ++stats_.misses;
    auto& slot = flights_[key];
    if (!slot) {
      slot = std::make_shared<Flight>();
      leader = true;
    }
    flight = slot;
  }
  if (!leader) {
    absl::MutexLock lock(&mutex_);
    mutex_.Await(absl::Condition(&flight->done));
    if (cached) *cached = true;
    return flight->result;
  }

  bool from_disk = false;
  absl::StatusOr<std::shared_ptr<const TextFeatures>> result;
  if (auto loaded = LoadFromDisk(key); loaded.ok()) {
    from_disk = true;
    result = std::make_shared<const TextFeatures>(std::move(loaded).value());
  } else {
    const auto start = std::chrono::steady_clock::now();
    auto built = builder_(spec);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (built.ok()) {
      SaveToDisk(key, *built);
      result = std::make_shared<const TextFeatures>(std::move(built).value());
    } else {
      result = built.status();
    }
    if (observer_) observer_(seconds);
  }
  absl::MutexLock lock(&mutex_);
  if (from_disk) {
    ++stats_.disk_loads;
  } else {
    ++stats_.builds;
  }
  if (result.ok()) InsertLocked(key, spec, *result);
  flight->result = result;
  flight->done = true;
  flights_.erase(key);
  if (cached) *cached = from_disk;
  return result;
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
