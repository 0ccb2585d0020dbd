// Request ids as the server and the client carry them in x-request-id metadata.
#pragma once

#include <random>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace anoclip {

inline constexpr size_t kMaxRequestIdLength = 128;

// 1..128 printable ASCII characters, no spaces: safe in logs and metadata as it is.
inline bool IsUsableRequestId(absl::string_view id) {
  if (id.empty() || id.size() > kMaxRequestIdLength) return false;
  for (char c : id) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

// 32 random hex digits.
inline std::string NewRequestId() {
  thread_local std::mt19937_64 random{std::random_device{}()};
  return absl::StrFormat("%016x%016x", random(), random());
}

}  // namespace anoclip
