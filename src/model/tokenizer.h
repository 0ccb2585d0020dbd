// The CLIP byte-level BPE tokenizer (docs/algorithm.md §2), bit-exact with OpenAI/OpenCLIP's
// SimpleTokenizer. Immutable after construction; Encode is thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace anoclip::model {

class BpeTokenizer {
 public:
  static constexpr int64_t kStartOfText = 49406;
  static constexpr int64_t kEndOfText = 49407;

  // Reads `bpe_simple_vocab_16e6.txt.gz`. NotFound / InvalidArgument on a missing or bad file.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromFile(const std::string& vocab_path);

  // Token ids of the text, without start/end tokens.
  std::vector<int64_t> Encode(std::string_view text) const;

  // [start] + ids + [end], cut to context_length with end last, zero-padded to context_length.
  std::vector<int64_t> EncodeForModel(std::string_view text, int context_length) const;

  ~BpeTokenizer();

 private:
  struct Impl;
  explicit BpeTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace anoclip::model
