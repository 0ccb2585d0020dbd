#include "common/sha256.h"

#include <openssl/evp.h>

#include <algorithm>

#include "absl/strings/str_format.h"

namespace anoclip {

struct Sha256::Context {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~Context() { EVP_MD_CTX_free(ctx); }
};

Sha256::Sha256() : context_(std::make_unique<Context>()) {
  EVP_DigestInit_ex(context_->ctx, EVP_sha256(), nullptr);
}

Sha256::~Sha256() = default;

void Sha256::Update(const void* data, size_t size) { EVP_DigestUpdate(context_->ctx, data, size); }

std::string Sha256::HexDigest(size_t bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(context_->ctx, digest, &length);
  std::string hex;
  for (size_t i = 0; i < std::min<size_t>(bytes, length); ++i) absl::StrAppendFormat(&hex, "%02x", digest[i]);
  return hex;
}

std::string Sha256Hex(absl::string_view text, size_t bytes) {
  Sha256 hash;
  hash.Update(text);
  return hash.HexDigest(bytes);
}

}  // namespace anoclip
