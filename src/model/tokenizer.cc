// CLIP's byte-level BPE (OpenAI SimpleTokenizer as OpenCLIP ships it). Text cleaning follows
// basic_clean + whitespace_clean: HTML-unescape twice, collapse Unicode whitespace, strip, then
// Unicode lower-casing (ICU, as Python's str.lower). ftfy's mojibake repair is not applied.
#include "model/tokenizer.h"

#include <unicode/locid.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utf8.h>
#include <zlib.h>

#include <algorithm>
#include <climits>
#include <map>
#include <unordered_map>

#include <re2/re2.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"

namespace anoclip::model {
namespace {

constexpr int kMerges = 49152 - 256 - 2;  // lines 1..48894 of the vocabulary file
constexpr size_t kMaxVocabBytes = 64 << 20;

absl::StatusOr<std::string> ReadGzip(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (file == nullptr) return absl::NotFoundError(absl::StrCat("cannot open BPE vocabulary ", path));
  std::string text;
  // Read in place into a buffer grown ahead (the 3.2 MB vocabulary fits the first): no
  // chunk-by-chunk copying, which was a good part of a server's start-up.
  text.resize(4 << 20);
  size_t size = 0;
  while (true) {
    if (text.size() - size < (1 << 16)) text.resize(std::min(2 * text.size(), kMaxVocabBytes + (1 << 16) + 1));
    const int n = gzread(file, text.data() + size, static_cast<unsigned>(text.size() - size));
    if (n < 0) {
      int error = 0;
      std::string message = gzerror(file, &error);
      gzclose(file);
      return absl::InvalidArgumentError(absl::StrCat("BPE vocabulary ", path, " is corrupt: ", message));
    }
    if (n == 0) {
      // A stream cut short reads as end of file; zlib flags it as Z_BUF_ERROR.
      int error = Z_OK;
      gzerror(file, &error);
      if (error == Z_BUF_ERROR) {
        gzclose(file);
        return absl::InvalidArgumentError(absl::StrCat("BPE vocabulary ", path, " is truncated"));
      }
      break;
    }
    size += n;
    if (size > kMaxVocabBytes) {
      gzclose(file);
      return absl::InvalidArgumentError(absl::StrCat("BPE vocabulary ", path, " is too large"));
    }
  }
  gzclose(file);
  text.resize(size);
  return text;
}

void AppendUtf8(std::string* out, UChar32 c) {
  char buffer[4];
  int32_t length = 0;
  UBool error = false;
  U8_APPEND(reinterpret_cast<uint8_t*>(buffer), length, 4, c, error);
  if (!error) out->append(buffer, length);
}

// bytes_to_unicode(): printable bytes map to themselves, the rest to 256+n, so BPE never sees
// whitespace or control characters.
std::vector<std::string> ByteSymbols(std::vector<int>* order) {
  std::vector<int> bytes;
  for (int b = '!'; b <= '~'; ++b) bytes.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) bytes.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) bytes.push_back(b);
  std::vector<int> codepoints = bytes;
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    if (std::find(bytes.begin(), bytes.end(), b) == bytes.end()) {
      bytes.push_back(b);
      codepoints.push_back(256 + n++);
    }
  }
  std::vector<std::string> symbols(256);
  for (size_t i = 0; i < bytes.size(); ++i) AppendUtf8(&symbols[bytes[i]], codepoints[i]);
  *order = bytes;
  return symbols;
}

// Python's html.unescape for numeric references and the common named ones.
std::string HtmlUnescape(const std::string& text) {
  static const auto* named = new std::map<std::string, std::string>{
      {"amp", "&"}, {"lt", "<"}, {"gt", ">"}, {"quot", "\""}, {"apos", "'"}, {"nbsp", "\xC2\xA0"},
      {"#39", "'"}};
  std::string out;
  for (size_t i = 0; i < text.size();) {
    if (text[i] == '&') {
      const size_t end = text.find(';', i + 1);
      if (end != std::string::npos && end - i <= 12) {
        const std::string name = text.substr(i + 1, end - i - 1);
        uint32_t code = 0;
        bool numeric = false;
        if (name.size() > 1 && name[0] == '#') {
          if (name[1] == 'x' || name[1] == 'X') {
            numeric = absl::SimpleHexAtoi(name.substr(2), &code);
          } else {
            numeric = absl::SimpleAtoi(name.substr(1), &code);
          }
        }
        if (numeric && code > 0 && code <= 0x10FFFF) {
          AppendUtf8(&out, static_cast<UChar32>(code));
          i = end + 1;
          continue;
        }
        if (auto it = named->find(name); it != named->end()) {
          out += it->second;
          i = end + 1;
          continue;
        }
      }
    }
    out += text[i++];
  }
  return out;
}

// whitespace_clean (Unicode whitespace runs -> one space, stripped) and str.lower().
std::string CleanAndLower(const std::string& text) {
  std::string collapsed;
  bool pending_space = false;
  int32_t i = 0;
  const int32_t length = static_cast<int32_t>(text.size());
  const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
  while (i < length) {
    const int32_t start = i;
    UChar32 c;
    U8_NEXT(bytes, i, length, c);
    if (c >= 0 && u_isUWhiteSpace(c)) {
      pending_space = !collapsed.empty();
      continue;
    }
    if (pending_space) collapsed += ' ';
    pending_space = false;
    collapsed.append(text, start, i - start);
  }
  std::string lowered;
  icu::UnicodeString::fromUTF8(collapsed).toLower(icu::Locale::getRoot()).toUTF8String(lowered);
  return lowered;
}

}  // namespace

struct BpeTokenizer::Impl {
  std::vector<std::string> byte_symbols;  // byte -> its unicode symbol (UTF-8)
  absl::flat_hash_map<std::string, int64_t> encoder;
  absl::flat_hash_map<std::string, int> merge_ranks;  // "a b" -> rank
  std::unique_ptr<RE2> pattern;
  mutable absl::Mutex cache_mutex;
  mutable absl::flat_hash_map<std::string, std::vector<int64_t>> cache ABSL_GUARDED_BY(cache_mutex);

  std::vector<int64_t> Bpe(const std::string& token) const;
};

std::vector<int64_t> BpeTokenizer::Impl::Bpe(const std::string& token) const {
  {
    absl::MutexLock lock(&cache_mutex);
    if (auto it = cache.find(token); it != cache.end()) return it->second;
  }
  // Split into symbols (one per UTF-8 code point), the last with the word-end marker.
  std::vector<std::string> word;
  const auto* bytes = reinterpret_cast<const uint8_t*>(token.data());
  const int32_t length = static_cast<int32_t>(token.size());
  for (int32_t i = 0; i < length;) {
    const int32_t start = i;
    UChar32 c;
    U8_NEXT(bytes, i, length, c);
    word.push_back(token.substr(start, i - start));
  }
  if (word.empty()) return {};
  word.back() += "</w>";
  while (word.size() > 1) {
    int best_rank = INT_MAX;
    size_t best = 0;
    for (size_t i = 0; i + 1 < word.size(); ++i) {
      auto it = merge_ranks.find(absl::StrCat(word[i], " ", word[i + 1]));
      if (it != merge_ranks.end() && it->second < best_rank) {
        best_rank = it->second;
        best = i;
      }
    }
    if (best_rank == INT_MAX) break;
    // Merge every occurrence of the best pair, left to right, as the reference does.
    const std::string first = word[best], second = word[best + 1];
    std::vector<std::string> merged;
    for (size_t i = 0; i < word.size();) {
      if (i + 1 < word.size() && word[i] == first && word[i + 1] == second) {
        merged.push_back(first + second);
        i += 2;
      } else {
        merged.push_back(word[i++]);
      }
    }
    word = std::move(merged);
  }
  std::vector<int64_t> ids;
  for (const auto& symbol : word) {
    auto it = encoder.find(symbol);
    if (it != encoder.end()) ids.push_back(it->second);
  }
  absl::MutexLock lock(&cache_mutex);
  if (cache.size() < 100000) cache.emplace(token, ids);
  return ids;
}

BpeTokenizer::BpeTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BpeTokenizer::~BpeTokenizer() = default;

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromFile(const std::string& vocab_path) {
  auto text = ReadGzip(vocab_path);
  if (!text.ok()) return text.status();
  // Only the first kMerges + 1 lines are read (the file has 262145).
  std::vector<absl::string_view> lines;
  lines.reserve(kMerges + 1);
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    if (lines.size() == static_cast<size_t>(kMerges) + 1) break;
    lines.push_back(line);
  }
  if (lines.size() < static_cast<size_t>(kMerges) + 1) {
    return absl::InvalidArgumentError(absl::StrCat("BPE vocabulary ", vocab_path, " has ", lines.size(),
                                                   " lines; expected at least ", kMerges + 1));
  }
  auto impl = std::make_unique<Impl>();
  std::vector<int> order;
  impl->byte_symbols = ByteSymbols(&order);
  std::vector<std::string> vocab;
  vocab.reserve(512 + kMerges + 2);
  impl->merge_ranks.reserve(kMerges);
  impl->encoder.reserve(512 + kMerges + 2);
  for (int b : order) vocab.push_back(impl->byte_symbols[b]);
  for (int i = 0; i < 256; ++i) vocab.push_back(vocab[i] + "</w>");
  for (int i = 0; i < kMerges; ++i) {
    std::vector<absl::string_view> pair = absl::StrSplit(lines[i + 1], ' ', absl::SkipEmpty());
    if (pair.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("BPE vocabulary ", vocab_path, " line ", i + 2, " is not a merge pair"));
    }
    impl->merge_ranks.emplace(absl::StrCat(pair[0], " ", pair[1]), i);
    vocab.push_back(absl::StrCat(pair[0], pair[1]));
  }
  vocab.push_back("<start_of_text>");
  vocab.push_back("<end_of_text>");
  for (size_t i = 0; i < vocab.size(); ++i) impl->encoder.emplace(vocab[i], static_cast<int64_t>(i));

  RE2::Options options;
  options.set_case_sensitive(false);
  impl->pattern = std::make_unique<RE2>(
      R"((<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+))",
      options);
  if (!impl->pattern->ok()) return absl::InternalError(impl->pattern->error());
  return std::unique_ptr<BpeTokenizer>(new BpeTokenizer(std::move(impl)));
}

std::vector<int64_t> BpeTokenizer::Encode(std::string_view text) const {
  const std::string cleaned = CleanAndLower(HtmlUnescape(HtmlUnescape(std::string(text))));
  std::vector<int64_t> ids;
  re2::StringPiece input(cleaned);
  std::string piece;
  while (RE2::FindAndConsume(&input, *impl_->pattern, &piece)) {
    if (piece == "<start_of_text>") {
      ids.push_back(kStartOfText);
      continue;
    }
    if (piece == "<end_of_text>") {
      ids.push_back(kEndOfText);
      continue;
    }
    std::string symbols;
    for (unsigned char byte : piece) symbols += impl_->byte_symbols[byte];
    auto token_ids = impl_->Bpe(symbols);
    ids.insert(ids.end(), token_ids.begin(), token_ids.end());
  }
  return ids;
}

std::vector<int64_t> BpeTokenizer::EncodeForModel(std::string_view text, int context_length) const {
  std::vector<int64_t> ids{kStartOfText};
  auto body = Encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  ids.push_back(kEndOfText);
  if (static_cast<int>(ids.size()) > context_length) {
    ids.resize(context_length);
    ids.back() = kEndOfText;
  }
  ids.resize(context_length, 0);
  return ids;
}

}  // namespace anoclip::model
