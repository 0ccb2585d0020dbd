#include "common/memo_file.h"

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace anoclip {
namespace {

constexpr std::uintmax_t kMaxMemoBytes = 64 << 10;  // a memo is a few hundred bytes

}  // namespace

std::optional<nlohmann::json> ReadMemo(const std::string& path, const nlohmann::json& key) {
  std::error_code error;
  const std::uintmax_t size = std::filesystem::file_size(path, error);
  if (error || size > kMaxMemoBytes) return std::nullopt;
  std::ifstream in(path);
  if (!in) return std::nullopt;
  const auto memo = nlohmann::json::parse(in, nullptr, false);
  if (!memo.is_object() || !memo.contains("key") || !memo.contains("value") || memo["key"] != key) {
    return std::nullopt;
  }
  return memo["value"];
}

void WriteMemo(const std::string& path, const nlohmann::json& key, const nlohmann::json& value) {
  std::error_code error;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), error);
  const std::string temp = absl::StrCat(path, ".tmp.", getpid());
  {
    std::ofstream out(temp, std::ios::trunc);
    out << nlohmann::json{{"key", key}, {"value", value}}.dump() << "\n";
    if (!out) error = std::make_error_code(std::errc::io_error);
  }
  if (!error) std::filesystem::rename(temp, path, error);
  if (error) {
    std::filesystem::remove(temp, error);
    std::cerr << "anoclip: warning: cannot write " << path << "; the next start computes it again\n";
  }
}

}  // namespace anoclip
