// SHA-256 over OpenSSL, for identifiers (model ids, cache keys) and cache-file checksums.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"

namespace anoclip {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t size);
  void Update(absl::string_view text) { Update(text.data(), text.size()); }
  // Lower-case hex of the first `bytes` bytes of the digest (at most 32). Ends the hash.
  std::string HexDigest(size_t bytes = 32);

 private:
  struct Context;
  std::unique_ptr<Context> context_;
};

// Hex SHA-256 of `text`, truncated to `bytes` bytes.
std::string Sha256Hex(absl::string_view text, size_t bytes = 32);

}  // namespace anoclip
