// The BPE tokenizer on arbitrary text (invalid UTF-8, control characters, very long words): ids
// in the vocabulary, EncodeForModel exactly context_length long with end-of-text inside.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "model/tokenizer.h"

namespace {

const anoclip::model::BpeTokenizer& Tokenizer() {
  static const auto* tokenizer = [] {
    const char* dir = std::getenv("ANOCLIP_REFERENCE_DIR");
    auto loaded = anoclip::model::BpeTokenizer::FromFile(std::string(dir ? dir : ANOCLIP_REFERENCE_DIR) +
                                                         "/bpe_simple_vocab_16e6.txt.gz");
    if (!loaded.ok()) std::abort();
    return loaded->release();
  }();
  return *tokenizer;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto& tokenizer = Tokenizer();
  for (int64_t id : tokenizer.Encode(text)) {
    if (id < 0 || id > anoclip::model::BpeTokenizer::kEndOfText) std::abort();
  }
  const auto ids = tokenizer.EncodeForModel(text, 77);
  if (ids.size() != 77 || ids[0] != anoclip::model::BpeTokenizer::kStartOfText) std::abort();
  bool ended = false;
  for (int64_t id : ids) ended = ended || id == anoclip::model::BpeTokenizer::kEndOfText;
  if (!ended) std::abort();
  return 0;
}
